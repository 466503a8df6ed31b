"""ChainKernels: consecutive parallel CPU kernels as one kernel with one thread-pool launch.

Each compiled kernel starts its own parallel region: TVM's thread pool wakes the workers,
hands out the tasks and waits at the end. On the 2-core VMs we measure that costs about
0.7-3 us per kernel (an empty 2-task parallel loop), so a pruned MobileNetV2 of ~40 kernels
of 5-30 us each spends 10-15% of its run in launches. Pruning makes kernels smaller but not
fewer, so the fixed cost weighs more the more is pruned.

This pass runs after the schedules are applied (the PrimFuncs are final) and before the
dataflow lowering. It finds runs of consecutive ``call_tir`` bindings whose kernels are
made only of parallel loop nests (tvm_hcprune's scheduled kernels are), each reading the
previous one's result, and whose intermediate results are used nowhere else; each run
becomes one primitive function that :class:`tvm.relax.transform.FuseTIR` turns into one
PrimFunc (the intermediates become its local buffers). That PrimFunc's loop nests are then
put in one parallel launch (``pragma_parallel_launch_point``) with a barrier after each
nest (``pragma_parallel_barrier_when_finish``): TVM's LLVM codegen splits each nest's
iterations over the tasks as it does for a stand-alone parallel loop and calls
``TVMBackendParallelBarrier`` between them, so every nest still reads only finished
results. The kernels' code is unchanged.

An intermediate larger than ``max_bytes`` ends a run, and a kernel with more than
``max_macs`` of work stays on its own: around such kernels a launch does not matter, and
outside a run Relax's memory planner reuses the storage.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, s_tir, tirx

from tvm_hcprune.utils.relax import is_primitive

__all__ = ["ChainKernels", "parallel_stages"]

LAUNCH_POINT = "pragma_parallel_launch_point"
BARRIER = "pragma_parallel_barrier_when_finish"
#: name prefix of the PrimFuncs this pass makes
CHAIN_PREFIX = "hcp_chain"


def _flatten(stmt) -> list:
    if isinstance(stmt, tirx.SeqStmt):
        return [s for part in stmt.seq for s in _flatten(part)]
    return [stmt]


def parallel_stages(func) -> list | None:
    """The loop nests of a scheduled PrimFunc's root block when every one of them is a
    parallel loop, else None (a serial statement would run on every task of a shared
    launch).

    Examples
    --------
    >>> parallel_stages(mod["fused_hcp_conv2d_add"])  # doctest: +SKIP
    [For(...)]
    """
    if not isinstance(func, tirx.PrimFunc) or not isinstance(func.body, s_tir.SBlockRealize):
        return None
    stmts = _flatten(func.body.block.body)
    if not stmts or not all(isinstance(s, tirx.For) and s.kind == tirx.ForKind.PARALLEL
                            and _extent(s) >= 2 for s in stmts):
        return None  # an extent-1 loop is lowered away: its body would run on every task
    return stmts


def _extent(loop) -> int:
    try:
        return int(loop.extent)
    except (TypeError, ValueError):
        return 0


def _one_launch(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """``func`` (root block of parallel loop nests) with all nests in one parallel launch,
    a barrier after each nest but the last."""
    stmts = parallel_stages(func)
    root = func.body.block
    seq = [tirx.AttrStmt(0, BARRIER, 1, s) for s in stmts[:-1]] + [stmts[-1]]
    body = tirx.AttrStmt(0, LAUNCH_POINT, 1, tirx.SeqStmt(seq))
    new_root = s_tir.SBlock(root.iter_vars, root.reads, root.writes, root.name_hint, body,
                            root.init, root.alloc_buffers, root.match_buffers, root.annotations)
    realize = s_tir.SBlockRealize(func.body.iter_values, func.body.predicate, new_root)
    return func.with_body(realize).with_attr("tirx.is_scheduled", True)


def _call_tir(binding):
    v = getattr(binding, "value", None)
    if (isinstance(v, relax.Call) and isinstance(v.op, tvm.ir.Op)
            and v.op.name == "relax.call_tir" and len(v.args) == 2
            and isinstance(v.ty, relax.TensorType)):
        return v
    return None


def _static(ty) -> list | None:
    try:
        return [int(d) for d in ty.shape]
    except (TypeError, ValueError, AttributeError):
        return None


def _macs(call) -> float | None:
    """A kernel's work, roughly: its largest constant argument (a conv's or matmul's weight)
    times the output's spatial size (``NCHW{b}c``: H*W; 4-D: the trailing two); a kernel
    without constants (layout transforms, elementwise ops) counts its output's size."""
    out = _static(call.ty)
    if out is None:
        return None
    consts = [_static(a.ty) for a in call.args[1] if isinstance(a, tvm.ir.expr.Constant)]
    if not consts or any(c is None for c in consts):
        return float(np.prod(out))
    spatial = out[2:-1] if len(out) == 5 else out[2:] if len(out) == 4 else []
    return float(max(int(np.prod(c)) for c in consts)) * float(np.prod(spatial))


def _nbytes(call) -> int | None:
    shape = _static(call.ty)
    if shape is None:
        return None
    return int(np.prod(shape)) * tvm.runtime.DataType(call.ty.dtype).bits // 8


class _Runs:
    """The runs of one dataflow block: consecutive chainable calls, each reading the
    previous one's result, split so that no intermediate is used outside its run."""

    def __init__(self, mod, block, reach: dict, max_bytes: int, max_macs: float):
        self.mod, self.reach, self.max_bytes, self.max_macs = mod, reach, max_bytes, max_macs
        self.pos = {b.var: i for i, b in enumerate(block.bindings)}
        self.runs = [r for run in self._adjacent(block.bindings) for r in self._split(run)]

    def _chainable(self, call) -> bool:
        f = self.mod[call.args[0]]
        work = _macs(call)
        return (parallel_stages(f) is not None and work is not None
                and work <= self.max_macs)

    def _adjacent(self, bindings) -> list:
        runs, cur = [], []
        for b in bindings:
            call = _call_tir(b)
            ok = call is not None and self._chainable(call)
            if ok and cur:
                prev = _call_tir(cur[-1])
                size = _nbytes(prev)
                if (size is not None and size <= self.max_bytes
                        and any(a.same_as(cur[-1].var) for a in call.args[1])):
                    cur.append(b)
                    continue
            if cur:
                runs.append(cur)
            cur = [b] if ok else []
            if not ok:
                runs.append([b])
        if cur:
            runs.append(cur)
        return runs

    def _split(self, run) -> list:
        """The longest prefixes of ``run`` whose inner results have all their uses inside."""
        out, start = [], 0
        while start < len(run):
            best, last_use = start, -1
            for end in range(start + 1, len(run)):
                last_use = max(last_use, self.reach.get(run[end - 1].var, 1 << 62))
                if last_use <= self.pos[run[end].var]:
                    best = end
            out.append(run[start:best + 1])
            start = best + 1
        return out


def _last_uses(func: relax.Function, block) -> dict:
    """Binding index of each var's last use in ``block`` (a use after the block: huge)."""
    pos = {b.var: i for i, b in enumerate(block.bindings)}
    reach: dict = {}

    def note(i):
        def _visit(e):
            if isinstance(e, relax.Var) and e in pos:
                reach[e] = max(reach.get(e, -1), i)
        return _visit

    for i, b in enumerate(block.bindings):
        relax.analysis.post_order_visit(b.value, note(i))
    after = 1 << 62
    for other in func.body.blocks:
        if other.same_as(block):
            continue
        for b in other.bindings:
            relax.analysis.post_order_visit(b.value, note(after))
    relax.analysis.post_order_visit(func.body.body, note(after))
    return reach


def _wiring(run) -> tuple:
    """What makes two runs' primitive functions the same: the kernels called and where each
    argument comes from (an earlier call of the run, or the n-th outside argument)."""
    inner = {b.var: i for i, b in enumerate(run)}
    outside: dict = {}
    key = []
    for b in run:
        call = _call_tir(b)
        src = []
        for a in call.args[1]:
            if isinstance(a, relax.Var) and a in inner:
                src.append(("call", inner[a]))
            else:
                src.append(("arg", outside.setdefault(a, len(outside))))
        key.append((call.args[0].name_hint, tuple(src)))
    return tuple(key)


def _primitive(run) -> tuple[relax.Function, list]:
    """A primitive function of ``run``'s calls and the arguments to call it with."""
    inner = {b.var for b in run}
    params, args, memo = [], [], {}
    for b in run:
        for a in _call_tir(b).args[1]:
            if (isinstance(a, relax.Var) and a in inner) or a in memo:
                continue
            memo[a] = relax.Var(f"p{len(params)}", a.ty)
            params.append(memo[a])
            args.append(a)
    bb = relax.BlockBuilder()
    with bb.function("chain", params, attrs={"Primitive": True}, private=True):
        with bb.dataflow():
            sub, out = {}, None
            for b in run:
                call = _call_tir(b)
                new_args = [sub[a] if isinstance(a, relax.Var) and a in sub else memo[a]
                            for a in call.args[1]]
                out = bb.emit(relax.call_tir(call.args[0], new_args, call.ty))
                sub[b.var] = out
            out = bb.emit_output(out)
        bb.emit_func_output(out)
    return bb.get()["chain"], args


@tvm.transform.module_pass(opt_level=0, name="ChainKernels")
class ChainKernels:
    """Run consecutive parallel kernels in one thread-pool launch (see the module docstring).

    Parameters
    ----------
    max_bytes : int
        An intermediate result larger than this ends a run (default 1 MiB).
    max_macs : float
        A kernel with more work than this (roughly its weight's size times its output's
        spatial size; default 20 M) stays on its own: at ~100 us or more, a launch is noise
        and a run through it would only add code (ResNet-50 built 50% slower when its big
        convs were chained, for no measurable gain).

    Examples
    --------
    >>> from tvm_hcprune.backend.steps import lower_passes
    >>> passes = [ApplyCPURules(), ChainKernels()] + lower_passes(target, chain=False)
    ... # doctest: +SKIP
    """

    def __init__(self, max_bytes: int = 1 << 20, max_macs: float = 20e6):
        self.max_bytes = int(max_bytes)
        self.max_macs = float(max_macs)

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        bb = relax.BlockBuilder(mod)
        made: dict = {}
        for gvar, func in list(mod.functions_items()):
            if not isinstance(func, relax.Function) or is_primitive(func):
                continue
            new = self._rewrite(mod, bb, func, made)
            if new is not None:
                bb.update_func(gvar, new)
        if not made:
            return mod
        out = relax.transform.FuseTIR()(bb.get())
        out = relax.transform.DeadCodeElimination()(out)
        names = {g.name_hint for g in made.values()}
        for gvar, func in list(out.functions_items()):
            if gvar.name_hint in names and isinstance(func, tirx.PrimFunc):
                out[gvar] = _one_launch(func)
        return out

    def _rewrite(self, mod, bb, func, made):
        blocks, changed = [], False
        for block in func.body.blocks:
            if not isinstance(block, relax.DataflowBlock):
                blocks.append(block)
                continue
            runs = _Runs(mod, block, _last_uses(func, block), self.max_bytes,
                         self.max_macs).runs
            bindings = []
            for run in runs:
                if len(run) < 2:
                    bindings += run
                    continue
                prim, args = _primitive(run)
                key = _wiring(run)  # identical runs (repeated blocks) share one function
                if key not in made:
                    made[key] = bb.add_func(prim, f"{CHAIN_PREFIX}{len(made)}")
                gvar = made[key]
                bindings.append(relax.VarBinding(run[-1].var, relax.Call(gvar, args)))
                changed = True
            blocks.append(relax.DataflowBlock(bindings))
        if not changed:
            return None
        return relax.Function(func.params, relax.SeqExpr(blocks, func.body.body), func.ret_ty,
                              func.is_pure, func.attrs, func.span)

