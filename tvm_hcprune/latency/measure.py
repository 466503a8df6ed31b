"""Timing compiled models and single-layer kernels robustly on a shared machine:
interleaved rounds (every candidate is timed once per round, so a burst of load hits all of
them alike) and the median over rounds.

A *runner* says where: :class:`LocalRunner` times on this machine's CPU;
:class:`tvm_hcprune.tuning.rpc.RPCRunner` on a device of an RPC tracker. Both have
``device`` (what cached measurements are keyed by), ``layer(mod, inputs, target,
database) -> timer(number) -> ms`` and ``models(mods, target, ...) -> [ms]``."""

from __future__ import annotations

import time

import numpy as np
import tvm
from tvm import relax

from tvm_hcprune.backend.pipeline import build
from tvm_hcprune.utils.progress import progress_bar

__all__ = ["LAYER_KERNELS", "LocalRunner", "layer_kernel_ms", "measure_models", "measure_rounds",
           "random_inputs"]

# kernels that carry the layer's work (the layout transforms around a stand-alone layer
# are not part of it: in the whole model activations stay blocked between layers)
LAYER_KERNELS = ("conv", "dense", "matmul")


def random_inputs(mod, seed: int = 0) -> list:
    """Random tensors for every parameter of ``mod["main"]`` (static shapes)."""
    rng = np.random.default_rng(seed)
    out = []
    for p in mod["main"].params:
        shape = [int(s) for s in p.ty.shape.values]
        out.append(rng.standard_normal(shape).astype(str(p.ty.dtype)))
    return out


def layer_kernel_ms(vm, inputs, number: int = 10, epilogue: bool = False) -> float:
    """Milliseconds of the layer's own kernels in one run of ``vm["main"]``.

    With ``epilogue``, the kernels that run after the first layer kernel count too (but
    layout transforms): a BSR layer's bias and activation are kernels of their own, where
    a dense layer fuses them.

    Each kernel call is re-run ``number`` times and timed call by call; the fastest call
    counts. Interference only adds time: on a loaded machine a parallel kernel often waits a
    whole scheduler tick (4 ms here, against 20 us of work) for a core another process
    holds, so even the median call can be a stall.
    """
    calls: list[tuple[bool, float]] = []

    def _instrument(fn, symbol, before_run, _ret, *args):
        if before_run or symbol.startswith("vm."):
            return 0
        fn(*args)
        ts = []
        for _ in range(max(1, number)):
            t0 = time.perf_counter()
            fn(*args)
            ts.append(time.perf_counter() - t0)
        is_layer = any(k in symbol for k in LAYER_KERNELS)
        if epilogue and "layout_transform" not in symbol and any(c[0] for c in calls):
            is_layer = True
        calls.append((is_layer, float(np.min(ts)) * 1e3))
        return 0

    vm.set_instrument(_instrument)
    try:
        vm["main"](*inputs)
    finally:
        vm.set_instrument(None)
    picked = [ms for is_layer, ms in calls if is_layer]
    return float(sum(picked) if picked else sum(ms for _, ms in calls))


def _vm(ex):
    return relax.VirtualMachine(ex, tvm.cpu())


def measure_models(mods, target="llvm", database=None, repeats: int = 7, number: int = 5,
                   inputs=None, progress: bool = False, desc: str = "timing") -> list[float]:
    """Median whole-model latency (ms) of each module, timed in interleaved rounds.

    Parameters
    ----------
    mods : sequence of tvm.IRModule or compiled executables
        Modules are compiled with :func:`tvm_hcprune.build` (``database`` as there).
    repeats : int
        Rounds; each times every model ``number`` times, call by call, after one warm-up
        call, and keeps the fastest call; the result is the median over rounds.
    inputs : sequence of lists of numpy arrays, optional
        Per model; default random inputs of its parameters' shapes.

    Examples
    --------
    >>> dense_ms, pruned_ms = measure_models([mod, pruned])  # doctest: +SKIP
    """
    rounds = measure_rounds(mods, target, database, repeats, number, inputs, progress, desc)
    return [float(np.median(t)) for t in rounds]


def measure_rounds(mods, target="llvm", database=None, repeats: int = 7, number: int = 5,
                   inputs=None, progress: bool = False, desc: str = "timing") -> list[list]:
    """Every round's milliseconds of each module (``[model][round]``), the rounds of
    :func:`measure_models`. Ratios between models are best taken per round (the models of
    one round ran within milliseconds of each other) and then their median: on a VM whose
    speed changes for seconds at a time, that cancels what medians per model do not.

    Examples
    --------
    >>> dense, pruned = measure_rounds([mod, pruned])  # doctest: +SKIP
    >>> float(np.median(np.array(pruned) / np.array(dense)))  # doctest: +SKIP
    0.52
    """
    vms, args = [], []
    for i, m in enumerate(mods):
        ex = build(m, target, database=database) if isinstance(m, tvm.IRModule) else m
        vms.append(_vm(ex))
        x = inputs[i] if inputs is not None else random_inputs(m)
        args.append([tvm.runtime.tensor(a) for a in x])
    # per round: one call to warm up (the first calls after switching models are several
    # times slower: 1.3 ms vs 0.25 ms for a small MobileNetV2), then ``number`` calls timed
    # one by one, the fastest kept (interference only adds time); median over rounds
    evaluators = [vm.time_evaluator("main", tvm.cpu(), number=1, repeat=number + 1)
                  for vm in vms]
    for ev, a in zip(evaluators, args, strict=True):
        ev(*a)  # warm-up (thread pool, caches)
    times = [[] for _ in mods]
    for _ in progress_bar(range(repeats), enabled=progress, desc=desc):
        for i, (ev, a) in enumerate(zip(evaluators, args, strict=True)):
            times[i].append(min(ev(*a).results[1:]) * 1e3)
    return times


class LocalRunner:
    """Times layers and models on this machine's CPU (:func:`layer_kernel_ms`,
    :func:`measure_models`).

    Examples
    --------
    >>> dense_ms, pruned_ms = LocalRunner().models([mod, pruned], "llvm")  # doctest: +SKIP
    """

    device = "local"

    def layer(self, mod, inputs, target, database=None):
        """Compile one layer's module; returns ``timer(number) -> ms`` of its kernels."""
        # one kernel per layer (not chained): layer_kernel_ms finds the layer's kernels by name
        vm = _vm(build(mod, target, database=database, chain_kernels=False))
        args = [tvm.runtime.tensor(a) for a in inputs]
        layer_kernel_ms(vm, args, number=1)  # warm-up
        return lambda number: layer_kernel_ms(vm, args, number=number)

    def models(self, mods, target, database=None, repeats: int = 7, number: int = 5,
               progress: bool = False, desc: str = "timing", inputs=None) -> list[float]:
        """Whole-model milliseconds of each module or executable: the first one's median
        over the rounds of :func:`measure_rounds`, every other one that times the median
        of its per-round ratio to the first (so ratios hold through the VM's slow phases).
        """
        rounds = measure_rounds(mods, target, database=database, repeats=repeats,
                                number=number, inputs=inputs, progress=progress, desc=desc)
        base = np.array(rounds[0])
        first = float(np.median(base))
        return [first] + [first * float(np.median(np.array(t) / base)) for t in rounds[1:]]

