"""The mask-equivalence oracle and a helper to run Relax modules on llvm."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from tvm_hcprune.analysis import analyze, check_plan, kept_lookup
from tvm_hcprune.ops.desc import axis_index, desc_length
from tvm_hcprune.utils.relax import static_shape


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
    """The original module with every consumer's input-channel slice of removed channels zeroed.

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
    func = graph.mod["main"]
    new = _Masker(graph.mod, masks).visit_expr(func)
    out = tvm.IRModule(dict(graph.mod.functions.items()), attrs=graph.mod.attrs)
    out["main"] = new
    return out


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
