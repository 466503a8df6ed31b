"""NormalizeImport: make importer output uniform before channel analysis.

* Bindings computed only from constants by simple ops (``permute_dims`` of a Gemm weight,
  ``broadcast_to`` of a constant, the ``isnan``/``where`` clutter the ONNX importer emits
  for Clip bounds, bias ``reshape``, a ``layout_transform`` into channel blocks) are
  evaluated with numpy and become constants.
* Shape-specialised ``R.call_tir`` calls of single-block elementwise PrimFuncs that the
  ONNX importer emits for Clip with tensor bounds (``T_maximum``/``T_minimum``) are
  re-emitted as the equivalent Relax ops, which infer their shapes again when channels
  are removed. Any other ``call_tir`` stays, and the analysis treats it as a barrier.
* TVM's TFLite importer writes PReLU on a flattened tensor (``reshape(x, [-1])``, a
  flattened broadcast alpha, ``prelu(axis=0)``, ``reshape`` back), which hides the channel
  axis; it is re-expressed as a PReLU on ``x``'s channel axis.
"""

from __future__ import annotations

import re

import numpy as np
import tvm
import tvm.s_tir
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from tvm_hcprune.utils.relax import is_const, static_shape

_NUMPY_OPS = {
    "relax.permute_dims": lambda c, a: np.transpose(
        a[0], None if c.attrs.axes is None else [int(x) for x in c.attrs.axes]),
    "relax.reshape": lambda c, a: a[0].reshape(static_shape(c)),
    "relax.broadcast_to": lambda c, a: np.broadcast_to(a[0], static_shape(c)).copy(),
    "relax.astype": lambda c, a: a[0].astype(str(c.attrs.dtype)),
    "relax.isnan": lambda c, a: np.isnan(a[0]),
    "relax.where": lambda c, a: np.where(a[0], a[1], a[2]),
    "relax.add": lambda c, a: a[0] + a[1],
    "relax.subtract": lambda c, a: a[0] - a[1],
    "relax.multiply": lambda c, a: a[0] * a[1],
    "relax.divide": lambda c, a: a[0] / a[1],
    "relax.sqrt": lambda c, a: np.sqrt(a[0]),
    "relax.less": lambda c, a: a[0] < a[1],
    "relax.take": lambda c, a: _take(c, a),
    "relax.squeeze": lambda c, a: a[0].reshape(static_shape(c)),
    "relax.expand_dims": lambda c, a: a[0].reshape(static_shape(c)),
    # weights and biases moved to a channel-blocked layout (FoldConstant would compile one
    # kernel per constant: seconds on a 50-conv model)
    "relax.layout_transform": lambda c, a: _layout_transform(c, a[0]),
}

def _take(call, arrays):
    """``take`` of constants with an in-range index (an out-of-range one is left to TVM)."""
    data, index = arrays
    axis = call.attrs.axis
    axis = None if axis is None else int(axis)
    n = data.size if axis is None else data.shape[axis]
    if str(call.attrs.mode) == "wrap":
        index = np.mod(index, n)
    elif str(call.attrs.mode) == "clip":
        index = np.clip(index, 0, n - 1)
    elif not ((index >= 0) & (index < n)).all():
        raise ValueError("take index out of range")
    return np.take(data, index, axis=axis)


_ELEMENTWISE_TIR = {
    "T_maximum": relax.op.maximum,
    "T_minimum": relax.op.minimum,
    "T_add": relax.op.add,
    "T_multiply": relax.op.multiply,
    "T_subtract": relax.op.subtract,
    "T_divide": relax.op.divide,
}


def _single_block(func):
    """The only block of a single-block PrimFunc, else None."""
    try:
        sch = tvm.s_tir.Schedule(func)
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
    except Exception:  # noqa: BLE001 - unknown TIR shapes are simply not recognised
        return None
    if len(blocks) != 1:
        return None
    return sch.get(blocks[0])


_READ = re.compile(r"T\.reads\(\w+\[([^\]]*)\]\)")
_ELSE = re.compile(r"T\.if_then_else\(.*, T\.float32\(([^)]*)\)\)\s*$", re.M)


def _immediate_operand(block):
    """The number ``s`` of a block ``out[i] = op(x[i], s)`` whose second operand is an
    immediate (``topi.maximum(x, 0.0)``), else None."""
    operand = getattr(getattr(block.body, "value", None), "b", None)
    if isinstance(operand, (tvm.tirx.FloatImm, tvm.tirx.IntImm)):
        return operand.value
    return None


def split_axis(index_map, ndim: int) -> tuple[int, int] | None:
    """``(axis, b)`` when ``index_map`` splits ``axis`` of an ``ndim``-D tensor into
    ``axis // b`` (in place) and ``axis % b`` (appended last), every other axis unchanged
    (``NCHW -> NCHW{b}c``, ``OIHW -> OIHW{b}o``), else None."""
    final = list(index_map.final_indices)
    if len(index_map.initial_indices) != ndim or len(final) != ndim + 1:
        return None
    b = getattr(getattr(final[-1], "b", None), "value", None)
    if not isinstance(b, int) or b < 2:
        return None
    for axis in range(ndim):
        if index_map.is_equivalent_to(tvm.tirx.IndexMap.from_func(_splitter(axis, b),
                                                                  ndim=ndim)):
            return axis, b
    return None


def _splitter(axis: int, b: int):
    def split(*idx):
        out = list(idx)
        out[axis] = idx[axis] // b
        return (*out, idx[axis] % b)

    return split


def block_axis(value: np.ndarray, axis: int, b: int) -> np.ndarray:
    """``value`` with ``axis`` split as :func:`split_axis` describes."""
    shape = (*value.shape[:axis], value.shape[axis] // b, b, *value.shape[axis + 1:])
    return np.ascontiguousarray(np.moveaxis(value.reshape(shape), axis + 1, -1))


def _layout_transform(call, value: np.ndarray) -> np.ndarray:
    found = None if call.attrs.pad_value is not None else split_axis(
        call.attrs.index_map, value.ndim)
    if found is None or value.shape[found[0]] % found[1]:
        raise ValueError("not a split of one axis into blocks")  # left to FoldConstant
    return block_axis(value, *found)


def _constant_pad(func, in_shape, out_shape):
    """(pad_width, value) of TOPI's constant-mode pad PrimFunc, or None if not recognised."""
    if in_shape is None or out_shape is None or len(in_shape) != len(out_shape):
        return None
    text = func.script()
    reads, other = _READ.search(text), _ELSE.search(text)
    if reads is None or other is None:
        return None
    idx = [t.strip() for t in reads.group(1).split(",")]
    if len(idx) != len(in_shape):
        return None
    width = []
    for k, expr in enumerate(idx):
        m = re.fullmatch(r"v_\w+(?: - T\.int64\((\d+)\))?", expr)
        if m is None:
            return None
        before = int(m.group(1) or 0)
        after = out_shape[k] - in_shape[k] - before
        if after < 0:
            return None
        width += [before, after]
    try:
        value = float(other.group(1))
    except ValueError:
        return None
    return width, value


def _static_shape_value(name, call):
    """``shape_of`` a tensor of static shape as that shape, and ``shape_to_tensor`` of a
    known shape as an int64 constant (the ONNX importer's ``Gather`` index normalisation
    reads the data's shape), else None."""
    if name == "relax.shape_of":
        shape = static_shape(call.args[0])
        return None if shape is None else relax.ShapeExpr(shape)
    if name == "relax.shape_to_tensor" and isinstance(call.args[0], relax.ShapeExpr):
        try:
            values = [int(v) for v in call.args[0].values]
        except (TypeError, ValueError):
            return None
        return relax.const(np.array(values, np.int64), "int64")
    return None


@mutator
class _Canonicalizer(PyExprMutator):
    def __init__(self, mod):
        super().__init__(mod)
        self.mod_ = mod
        self.consts = {}
        self.values = {}  # var -> its original bound value

    def visit_var_binding_(self, binding):
        self.values[binding.var] = binding.value
        # a binding that folds to a constant is dropped and its uses see the constant
        if isinstance(binding.var, relax.DataflowVar) and isinstance(binding.value, relax.Call):
            new = self.visit_expr(binding.value)
            if is_const(new) or isinstance(new, relax.ShapeExpr):
                self.consts[binding.var] = new
                return
        super().visit_var_binding_(binding)

    def visit_dataflow_var_(self, var):
        const = self.consts.get(var)
        if const is not None:
            return const
        return super().visit_dataflow_var_(var)

    def visit_call_(self, call):
        new = super().visit_call_(call)
        if not isinstance(new, relax.Call) or not hasattr(new.op, "name"):
            return new
        name = new.op.name
        static = _static_shape_value(name, new)
        if static is not None:
            return static
        if name == "relax.reshape":
            prelu = self._flattened_prelu(call)
            if prelu is not None:
                return prelu
        if name in _NUMPY_OPS and all(
            is_const(a) or isinstance(a, relax.ShapeExpr) for a in new.args
        ) and any(is_const(a) for a in new.args) and static_shape(call) is not None:
            try:
                arrays = [a.value.numpy() for a in new.args if is_const(a)]
                value = np.asarray(_NUMPY_OPS[name](call, arrays))
                dtype = str(call.ty.dtype)
                return relax.const(value.astype(dtype), dtype)
            except Exception:  # noqa: BLE001 - leave anything numpy cannot evaluate
                return new
        if name == "relax.call_tir":
            gvar = new.args[0]
            func = self.mod_[gvar] if gvar in self.mod_.get_global_vars() else None
            if func is None:
                return new
            sblock = _single_block(func)
            block = sblock.name_hint if sblock is not None else None
            if block == "PadInput" and len(new.args[1].fields) == 1:
                pad = _constant_pad(func, static_shape(new.args[1].fields[0]),
                                    static_shape(call))
                if pad is not None:
                    width, value = pad
                    return relax.op.nn.pad(new.args[1].fields[0], width, "constant", value)
                return new
            op = _ELEMENTWISE_TIR.get(block)
            fields = list(new.args[1].fields)
            if op is None or len(fields) not in (1, 2):
                return new
            out_shape = static_shape(call)
            if out_shape is None or static_shape(fields[0]) != out_shape:
                return new
            if len(fields) == 1:  # Clip with attribute bounds: the scalar is an immediate
                imm = _immediate_operand(sblock)
                if imm is None:
                    return new
                dtype = str(call.ty.dtype)
                return op(fields[0], relax.const(np.asarray(imm, dtype), dtype))
            if static_shape(fields[1]) not in ([], [1]):
                return new
            return op(fields[0], fields[1])
        return new

    def _flattened_prelu(self, call):
        """``reshape(prelu(reshape(x, [-1]), alpha, axis=0), shape(x))`` (TVM's TFLite PReLU,
        alpha broadcast to ``x`` and flattened) as a PReLU on ``x`` itself, or None.

        Alpha constant along every axis but one becomes ``prelu(x, alpha_c, axis=c)`` (the
        last such axis: NHWC's channels); any other alpha the elementwise
        ``relu(x) + alpha * minimum(x, 0)`` with alpha in ``x``'s shape. Both keep the
        channel axis whole, so the channels through it stay prunable.
        """
        inner = call.args[0]
        p = self.values.get(inner) if isinstance(inner, relax.Var) else None
        if not (isinstance(p, relax.Call) and getattr(p.op, "name", "") == "relax.nn.prelu"):
            return None
        flat = p.args[0]
        r = self.values.get(flat) if isinstance(flat, relax.Var) else None
        if not (isinstance(r, relax.Call) and getattr(r.op, "name", "") == "relax.reshape"):
            return None
        x = r.args[0]
        shape, pshape = static_shape(x), static_shape(p)
        alpha = self.consts.get(p.args[1], p.args[1])
        if (shape is None or shape != static_shape(call) or pshape is None
                or len(pshape) != 1 or not is_const(alpha)):
            return None
        a = alpha.value.numpy()
        if a.size != int(np.prod(shape)):
            return None
        a = a.reshape(shape)
        x_new = self.visit_expr(x)
        for axis in reversed(range(len(shape))):
            rows = np.moveaxis(a, axis, 0).reshape(shape[axis], -1)  # one row per index
            if (rows == rows[:, :1]).all():
                vec = np.ascontiguousarray(rows[:, 0])
                return relax.op.nn.prelu(x_new, relax.const(vec, str(vec.dtype)), axis)
        dtype = str(a.dtype)
        zero = relax.const(np.zeros((), dtype), dtype)
        return relax.op.add(relax.op.nn.relu(x_new),
                            relax.op.multiply(relax.const(a, dtype),
                                              relax.op.minimum(x_new, zero)))


@tvm.transform.module_pass(opt_level=0, name="NormalizeImport")
class NormalizeImport:
    """Fold constant-only bindings and re-express elementwise ``call_tir`` as Relax ops."""

    def transform_module(self, mod, ctx):
        updates = {}
        for gv, func in mod.functions.items():
            if isinstance(func, relax.Function):
                new = _Canonicalizer(mod).visit_expr(func)
                updates[gv] = relax.analysis.remove_all_unused(new)
        for gv, func in updates.items():
            mod[gv] = func
        mod = relax.transform.DeadCodeElimination()(mod)
        return mod
