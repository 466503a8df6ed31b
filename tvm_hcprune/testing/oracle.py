"""The mask-equivalence oracle and a helper to run Relax modules on llvm."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from ..analysis import analyze
from ..ops.desc import axis_index
from ..transform.apply_plan import check_plan, kept_lookup


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
        for arg, axis, removed in masks:
            arr = args[arg].value.numpy().copy()
            index = [slice(None)] * arr.ndim
            index[axis] = removed
            arr[tuple(index)] = 0
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
        if m.kind != "consumer":
            continue
        idx = axis_index(m.desc, kept_of)
        if idx is None:
            continue
        length = sum(s.length for s in m.desc)
        removed = np.setdiff1d(np.arange(length), idx)
        masks.setdefault(m.var, []).append((m.arg, m.axis, removed))
    func = graph.mod["main"]
    new = _Masker(graph.mod, masks).visit_expr(func)
    out = tvm.IRModule(dict(graph.mod.functions.items()), attrs=graph.mod.attrs)
    out["main"] = new
    return out


def run_relax(mod, inputs, target=None):
    """Compile ``mod`` for llvm (TVM's default pipeline) and run ``main`` on numpy inputs."""
    target = tvm.target.Target(target or {"kind": "llvm"})
    ex = tvm.compile(mod, target)
    dev = tvm.cpu()
    vm = relax.VirtualMachine(ex, dev)
    out = vm["main"](*[tvm.runtime.tensor(np.asarray(x), dev) for x in inputs])
    return _to_numpy(out)


def _to_numpy(out):
    if hasattr(out, "numpy"):
        return out.numpy()
    return [_to_numpy(o) for o in out]
