"""The mask-equivalence oracle and a helper to run Relax modules on llvm."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from tvm_hcprune.analysis import analyze, check_plan, kept_lookup
from tvm_hcprune.ops.desc import axis_index, desc_length
from tvm_hcprune.planning.mixed import layer_weight_kn
from tvm_hcprune.transform.sparsify_blocks import block_mask
from tvm_hcprune.utils.relax import bindings, op_name, static_shape


@mutator
class _Masker(PyExprMutator):
    def __init__(self, mod, masks):
        super().__init__(mod)
        self.masks = masks  # var -> [(arg, axis, removed indices)]
        self.current = None

    def visit_var_binding_(self, binding):
        self.current = binding.var
        super().visit_var_binding_(binding)

    def visit_call_(self, call):
        masks = self.masks.get(self.current) if self.current is not None else None
        if not masks:
            return super().visit_call_(call)
        args = [self.visit_expr(a) for a in call.args]
        for arg, indices in masks:
            arr = args[arg].value.numpy().copy()
            for index in indices:
                arr[index] = 0
            args[arg] = relax.const(arr, str(arr.dtype))
        return relax.Call(call.op, args, call.attrs, call.ty_args)


def masked_reference(mod, plan):
    """The original module with every consumer's input-channel slice of removed channels zeroed,
    and (a mixed plan) the weight blocks ``plan.sparse`` drops zeroed: each such layer's
    weight restricted to its kept channels is scored block by block
    (:func:`~tvm_hcprune.transform.sparsify_blocks.block_mask`) and the entries of the
    dropped blocks are set to zero at their original positions.

    For any plan, the pruned module computes the same outputs as this module (up to float
    rounding): it is the oracle the tests check every rewrite against, public so that users
    can check a plan on their own models.

    Parameters
    ----------
    mod : tvm.IRModule
        The module the plan was made for.
    plan : PrunePlan

    Returns
    -------
    tvm.IRModule
    """
    graph = analyze(mod)
    check_plan(graph, plan)
    kept_of = kept_lookup(graph, plan)
    masks = {}
    for m in graph.ctx.members:
        if m.kind not in ("consumer", "grouped_consumer"):
            continue
        idx = axis_index(m.desc, kept_of)
        if idx is None:
            continue
        length = sum(s.length for s in m.desc)
        removed = np.setdiff1d(np.arange(length), idx)
        ndim = len(static_shape(graph.ctx.values[m.var].args[m.arg]))
        masks.setdefault(m.var, []).append((m.arg, _mask_indices(graph, m, removed, ndim)))
    for var, index in _block_masks(graph, plan, kept_of):
        masks.setdefault(var, []).append((1, [index]))
    func = graph.mod["main"]
    new = _Masker(graph.mod, masks).visit_expr(func)
    out = tvm.IRModule(dict(graph.mod.functions.items()), attrs=graph.mod.attrs)
    out["main"] = new
    return out


def _block_masks(graph, plan, kept_of):
    """``(layer var, index)`` pairs: the weight entries of a mixed plan's dropped blocks."""
    if not plan.sparse:
        return []
    block, criterion = tuple(plan.sparse["block"]), plan.sparse["criterion"]
    levels = plan.sparse_layers
    out = []
    for b in bindings(graph.mod["main"]):
        if b.var.name not in levels:
            continue
        call = b.value
        w_kn = layer_weight_kn(call)
        data, res = static_shape(call.args[0]), static_shape(b.var)
        if op_name(call) == "relax.nn.conv2d":
            layout = str(call.attrs.data_layout)
            in_axis, out_axis = layout.index("C"), str(call.attrs.out_layout or layout).index("C")
        else:
            in_axis, out_axis = len(data) - 1, len(res) - 1
        kin, kout = (_kept_axis(graph, expr, axis, n, kept_of) for expr, axis, n in (
            (call.args[0], in_axis, w_kn.shape[0]), (b.var, out_axis, w_kn.shape[1])))
        sliced = w_kn[np.ix_(kin, kout)]
        mask = block_mask(sliced, block, levels[b.var.name], criterion)
        full = np.kron(mask, np.ones(block, bool))[:sliced.shape[0], :sliced.shape[1]]
        rows, cols = np.nonzero(~full)
        rows, cols = kin[rows], kout[cols]
        if op_name(call) == "relax.nn.conv2d":  # the 1x1 kernel in its own layout
            klayout = str(call.attrs.kernel_layout)
            index = [np.zeros_like(rows)] * 4
            index[klayout.index("O")], index[klayout.index("I")] = cols, rows
            out.append((b.var, tuple(index)))
        else:
            out.append((b.var, (rows, cols)))
    return out


def _kept_axis(graph, expr, axis, n, kept_of) -> np.ndarray:
    d = graph.ctx.desc(expr)
    idx = None if d is None or axis >= len(d) or d[axis] is None else axis_index(d[axis],
                                                                                 kept_of)
    return np.arange(n) if idx is None else np.asarray(idx)


def _mask_indices(graph, member, removed, ndim):
    """Index tuples that zero a consumer weight's removed input channels.

    A grouped conv's weight holds one block of output rows per group, each reading its own
    group's input channels: channel ``q * cin_g + r`` is entry ``r`` of block ``q``.
    """
    if member.kind != "grouped_consumer":
        index = [slice(None)] * ndim
        index[member.axis] = removed
        return [tuple(index)]
    ko, ki, groups, descs = graph.ctx.group_inputs[member.var]
    cout = static_shape(graph.ctx.values[member.var].args[member.arg])[ko]
    per_in = desc_length(descs[0])
    per_out = cout // groups
    out = []
    for q in range(groups):
        rel = removed[(removed >= q * per_in) & (removed < (q + 1) * per_in)] - q * per_in
        if len(rel):
            index = [slice(None)] * ndim
            index[ko] = slice(q * per_out, (q + 1) * per_out)
            index[ki] = rel
            out.append(tuple(index))
    return out
