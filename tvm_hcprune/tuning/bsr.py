"""MetaSchedule tuning of the block-sparse (BSR) kernels.

The BSR kernel (:func:`tvm_hcprune.backend.cpu.bsr.bsr_kernel`) is hand-written TIR with
data-dependent loops over ``indptr``/``indices``: MetaSchedule's default space cannot
schedule it, and its runner's random arguments would index out of bounds. So a BSR task
gets

- its own search space (:func:`bsr_space`): a ``ScheduleFn`` sampling the kernel's knobs
  (rows per register tile, the parallel tasks' order, output blocks per task) with
  ``sample_categorical`` and annotating them on the kernel's root block. A record's trace is
  those samples and annotations; the build (and tuning's builder) regenerate the kernel
  with them (:func:`~tvm_hcprune.backend.cpu.bsr.expand_bsr_knobs`);
- a search that measures each knob combination at most once (:func:`bsr_strategy`);
- real arguments (:class:`BSRArguments`): the runner allocates the model's own ``data``,
  ``indices`` and ``indptr`` constants for a kernel of that signature
  (:func:`bsr_argument_table`), random values for the rest.
"""

from __future__ import annotations

import itertools

import numpy as np
import tvm
from tvm import relax
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms

from tvm_hcprune.backend.cpu.bsr import BSR_ATTR, KNOB_KEYS, bsr_knob_choices
from tvm_hcprune.utils.relax import const_value

__all__ = ["BSRArguments", "bsr_argument_table", "bsr_space", "bsr_strategy",
           "bsr_tune_context", "feed_runner", "is_bsr_func"]


def is_bsr_func(func) -> bool:
    """Whether ``func`` is a BSR kernel tuning can search (it carries
    :data:`~tvm_hcprune.backend.cpu.bsr.BSR_ATTR`).

    Examples
    --------
    >>> is_bsr_func(prepared["hcp_bsr_matmul"])  # doctest: +SKIP
    True
    """
    return (isinstance(func, tvm.tirx.PrimFunc) and func.attrs is not None
            and BSR_ATTR in func.attrs)


def _design_space(sch):
    """The knobs of the BSR kernel in ``sch`` sampled and annotated on its root block."""
    choices = bsr_knob_choices(sch.mod["main"])
    root = sch.get_sblock("root")
    for name, values in choices.items():
        value = sch.sample_categorical(values, [1.0 / len(values)] * len(values))
        sch.annotate(root, KNOB_KEYS[name], value)
    return sch


def bsr_space():
    """The BSR kernels' search space: a ``ScheduleFn`` sampling their knobs (no schedule
    rules, postprocessors or mutators: the knobs are the whole space).

    Examples
    --------
    >>> ctx = ms.TuneContext(mod, target, space_generator=bsr_space())  # doctest: +SKIP
    """
    return ms.space_generator.ScheduleFn(_design_space, sch_rules=[], postprocs=[],
                                         mutator_probs={})


def _make_strategy_class():
    @derived_object
    class BSRKnobSearch(ms.search_strategy.PySearchStrategy):
        """Every knob combination of the BSR task once, in a random order (the task's
        space is small: a few tiles x 2 orders x up to 3 groups)."""

        def __init__(self, seed: int = 0):
            super().__init__()
            self.seed = seed
            self.pending: list = []
            self.per_iter = 1
            self.mod = None

        def _initialize_with_tune_context(self, context) -> None:
            self.mod = context.mod

        def pre_tuning(self, max_trials, num_trials_per_iter, design_spaces, database,
                       cost_model) -> None:
            func = self.mod["main"]
            choices = bsr_knob_choices(func)
            combos = list(itertools.product(*[range(len(v)) for v in choices.values()]))
            np.random.default_rng(self.seed).shuffle(combos)
            self.pending = combos[:max_trials]
            self.per_iter = max(1, num_trials_per_iter)
            self.space = design_spaces[0]

        def post_tuning(self) -> None:
            self.pending = []

        def generate_measure_candidates(self):
            if not self.pending:
                return None
            batch, self.pending = self.pending[:self.per_iter], self.pending[self.per_iter:]
            out = []
            for combo in batch:
                trace = self.space.trace
                decisions = [inst for inst in trace.insts if inst.kind.name ==
                             "SampleCategorical"]
                for inst, index in zip(decisions, combo, strict=True):
                    trace = trace.with_decision(inst, index, remove_postproc=True)
                sch = tvm.s_tir.Schedule(self.mod)
                trace.apply_to_schedule(sch, remove_postproc=True)
                out.append(ms.MeasureCandidate(
                    sch, ms.arg_info.ArgInfo.from_entry_func(sch.mod, remove_preproc=True)))
            return out

        def notify_runner_results(self, measure_candidates, results) -> None:
            return None

        def clone(self):
            return BSRKnobSearch(self.seed)

    return BSRKnobSearch


_STRATEGY_CLASS = None


def bsr_strategy(seed: int = 0):
    """The BSR tasks' search strategy: each knob combination of the space measured once
    (random order, as many as the task's trial budget allows).

    Examples
    --------
    >>> ctx = ms.TuneContext(mod, target, bsr_space(), bsr_strategy())  # doctest: +SKIP
    """
    global _STRATEGY_CLASS
    if _STRATEGY_CLASS is None:
        _STRATEGY_CLASS = _make_strategy_class()
    return _STRATEGY_CLASS(seed)


def bsr_tune_context(ctx, seed: int = 0):
    """A copy of MetaSchedule tune context ``ctx`` (a BSR task) with the BSR space and
    strategy.

    Examples
    --------
    >>> ctxs = [bsr_tune_context(c) if is_bsr_func(c.mod["main"]) else c
    ...         for c in ctxs]  # doctest: +SKIP
    """
    return ms.TuneContext(mod=ctx.mod, target=ctx.target, space_generator=bsr_space(),
                          search_strategy=bsr_strategy(seed), task_name=ctx.task_name,
                          rand_state=seed,
                          num_threads=int(ctx.num_threads)).clone()


def _signature(shapes_dtypes) -> tuple:
    return tuple((str(dtype), tuple(int(d) for d in shape)) for dtype, shape in shapes_dtypes)


def bsr_argument_table(prepared: tvm.IRModule) -> dict:
    """The BSR kernels' constant arguments in ``prepared`` (the fused module tuning
    extracts tasks from): ``{signature: [array or None per parameter]}``, the signature
    being the parameters' ``(dtype, shape)``. Kernels of one signature are one tuning
    task; the first call's arrays stand for them.

    Examples
    --------
    >>> table = bsr_argument_table(prepare(mod, target))  # doctest: +SKIP
    """
    table: dict = {}
    call_tir = tvm.ir.Op.get("relax.call_tir")

    def visit(node):
        if not (isinstance(node, relax.Call) and node.op.same_as(call_tir)):
            return
        gvar = node.args[0]
        func = prepared[gvar] if gvar in prepared.get_global_vars() else None
        if not is_bsr_func(func):
            return
        params = [info.as_json() for info in ms.arg_info.ArgInfo.from_prim_func(func)]
        key = _signature((info[1], info[2]) for info in params)
        if key in table:
            return
        arrays = [const_value(a) for a in node.args[1].fields]
        arrays += [None] * (len(params) - len(arrays))  # the output
        table[key] = arrays

    for _, func in prepared.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func.body, visit)
    return table


class BSRArguments:
    """A runner's ``f_alloc_argument`` feeding the BSR kernels their real arrays.

    For a function whose arguments' signature is in ``table``
    (:func:`bsr_argument_table`) the constant arrays are copied to the device and the
    other arguments filled randomly; any other function gets MetaSchedule's default
    (random) arguments. Picklable: MetaSchedule's runner calls it in its worker process.

    Parameters
    ----------
    table : dict
        ``{signature: [array or None per parameter]}``.

    Examples
    --------
    >>> runner = ms.runner.LocalRunner(f_alloc_argument=BSRArguments(table))  # doctest: +SKIP
    """

    def __init__(self, table: dict):
        self.table = dict(table)

    def __call__(self, *args):
        """``(device, args_info, alloc_repeat)`` (``LocalRunner``) or ``(session, device,
        args_info, alloc_repeat)`` (``RPCRunner``, arrays copied to the remote device)."""
        from tvm.s_tir.meta_schedule.runner import local_runner, rpc_runner

        session = args[0] if len(args) == 4 else None
        device, args_info, alloc_repeat = args[-3:]
        key = _signature((info[1], info[2]) for info in args_info)
        fixed = self.table.get(key)
        if fixed is None:
            if session is None:
                return local_runner.default_alloc_argument(device, args_info, alloc_repeat)
            return rpc_runner.default_alloc_argument(session, device, args_info, alloc_repeat)
        name = "tvm.contrib.random.random_fill_for_measure"
        fill = tvm.get_global_func(name) if session is None else session.get_function(name)
        repeated = []
        for _ in range(alloc_repeat):
            tensors = []
            for (_, dtype, shape), array in zip(args_info, fixed, strict=True):
                if array is None:
                    arg = tvm.runtime.empty(shape=shape, dtype=dtype, device=device)
                    fill(arg)
                else:
                    arg = tvm.runtime.empty(shape=array.shape, dtype=str(array.dtype),
                                            device=device)
                    arg.copyfrom(array)
                tensors.append(arg)
            repeated.append(tensors)
        return repeated


def feed_runner(runner, table: dict) -> None:
    """Make MetaSchedule ``runner`` (a ``LocalRunner`` or ``RPCRunner``, e.g. from
    :func:`tvm_hcprune.tuning.rpc.make_rpc_runner`) allocate the BSR kernels' real arrays
    (:class:`BSRArguments`); its other allocations stay MetaSchedule's default. A runner
    that already has its own allocator is left as it is.

    Examples
    --------
    >>> feed_runner(runner, bsr_argument_table(prepared))  # doctest: +SKIP
    """
    inst = getattr(runner, "_inst", None)  # the derived object's Python instance
    if not table or inst is None or not hasattr(inst, "f_alloc_argument"):
        return
    if inst.f_alloc_argument is None:
        inst.f_alloc_argument = BSRArguments(table)
