"""FoldBatchNorm: fold inference batch_norm into the preceding conv2d's weight and bias.

Matches ``bn = nn.batch_norm(y, gamma, beta, mean, var, training=False); out = bn[0]`` where
``y`` is ``conv2d(x, W)`` or ``add(conv2d(x, W), b)`` with constant ``W``, ``b`` and BN
parameters, the BN axis is the conv's output-channel axis, and the conv (and its bias add)
has no other user. It becomes ``add(conv2d(x, W * s), b')`` with ``s = gamma / sqrt(var +
eps)`` and ``b' = (b - mean) * s + beta``, computed once in float64 at compile time. Anything
else (a BN after a non-conv, training-mode BN, shared convs) is left as it is.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from tvm_hcprune.utils.relax import update_functions, use_counts


def _const(expr) -> np.ndarray | None:
    if isinstance(expr, tvm.ir.expr.Constant):
        return expr.value.numpy()
    return None


def _op_name(expr) -> str | None:
    if isinstance(expr, relax.Call):
        return getattr(expr.op, "name", None)
    return None


@mutator
class _Folder(PyExprMutator):
    def __init__(self, mod, counts):
        super().__init__(mod)
        self.counts = counts
        self.folded = 0

    def _single_use(self, var) -> bool:
        # post_order_visit visits uses only (not the binding's own var)
        return self.counts.get(var, 0) <= 1

    def _binding_of(self, var):
        if not isinstance(var, relax.Var):
            return None
        try:
            return self.lookup_binding(var)
        except (RuntimeError, AttributeError):
            return None

    def visit_tuple_getitem_(self, op):
        new = self._try_fold(op)
        if new is not None:
            self.folded += 1
            return new
        return super().visit_tuple_getitem_(op)

    def _try_fold(self, op):
        if op.index != 0:
            return None
        bn = self._binding_of(op.tuple_value)
        if _op_name(bn) != "relax.nn.batch_norm" or bool(bn.attrs.training):
            return None
        if not self._single_use(op.tuple_value):
            return None
        y, gamma, beta, mean, var = bn.args
        params = [_const(a) for a in (gamma, beta, mean, var)]
        if any(p is None for p in params):
            return None
        gamma_v, beta_v, mean_v, var_v = (p.astype(np.float64) for p in params)
        if not bool(bn.attrs.scale):
            gamma_v = np.ones_like(gamma_v)
        if not bool(bn.attrs.center):
            beta_v = np.zeros_like(beta_v)
        eps = float(bn.attrs.epsilon)
        axis = int(bn.attrs.axis)

        if not self._single_use(y):
            return None
        src = self._binding_of(y)
        bias = None
        if _op_name(src) == "relax.add":
            lhs, rhs = src.args
            conv = self._binding_of(lhs)
            bias = _const(rhs)
            if _op_name(conv) != "relax.nn.conv2d" or bias is None or not self._single_use(lhs):
                return None
        elif _op_name(src) == "relax.nn.conv2d":
            conv = src
        else:
            return None
        weight = _const(conv.args[1])
        if weight is None or weight.dtype != np.float32:
            return None
        attrs = conv.attrs
        out_layout = str(attrs.out_layout)
        kernel_layout = str(attrs.kernel_layout)
        ndim = len(out_layout)
        if axis < 0:
            axis += ndim
        if out_layout.find("C") != axis or "O" not in kernel_layout:
            return None
        oc = weight.shape[kernel_layout.index("O")]
        if gamma_v.shape != (oc,):
            return None
        scale = gamma_v / np.sqrt(var_v + eps)
        bshape = [1] * weight.ndim
        bshape[kernel_layout.index("O")] = oc
        new_w = (weight.astype(np.float64) * scale.reshape(bshape)).astype(np.float32)
        if bias is not None:
            if bias.size != oc:
                return None
            b = bias.reshape(-1).astype(np.float64)
        else:
            b = np.zeros(oc)
        new_b = ((b - mean_v) * scale + beta_v).astype(np.float32)
        out_shape = [1] * ndim
        out_shape[axis] = oc
        x = self.visit_expr(conv.args[0])
        new_conv = relax.op.nn.conv2d(
            x,
            relax.const(new_w),
            strides=attrs.strides,
            padding=attrs.padding,
            dilation=attrs.dilation,
            groups=attrs.groups,
            data_layout=attrs.data_layout,
            kernel_layout=attrs.kernel_layout,
            out_layout=attrs.out_layout,
            out_dtype=attrs.out_dtype,
        )
        # named after the batch_norm var it replaces (which goes): names stay unique, as
        # calibration, which keys layers by name, needs
        conv_var = self.builder_.emit(new_conv, name_hint=op.tuple_value.name)
        return relax.op.add(conv_var, relax.const(new_b.reshape(out_shape)))


@tvm.transform.module_pass(opt_level=0, name="FoldBatchNorm")
class FoldBatchNorm:
    """Fold inference ``nn.batch_norm`` into the preceding conv2d (weights and bias).

    The folded module computes the same function up to float32 rounding; unmatched
    batch_norms are kept (TVM legalizes them as usual).

    Examples
    --------
    >>> folded = FoldBatchNorm()(relax.transform.FoldConstant()(mod))  # doctest: +SKIP
    """

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        updates = {}
        for gvar, func in mod.functions_items():
            if not isinstance(func, relax.Function):
                continue
            folder = _Folder(mod, use_counts(func))
            new = folder.visit_expr(func)
            if folder.folded:
                updates[gvar] = relax.analysis.remove_all_unused(new)
        return update_functions(mod, updates)
