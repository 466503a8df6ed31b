"""Per-kernel CPU time of a compiled Relax model (where the latency goes).

TVM 0.27's Relax VM has no profiler; :func:`kernel_times` uses the VM's instrument hook:
after each call of a compiled PrimFunc it re-runs that call ``number`` times with the same
arguments and records the mean. Kernels are pure functions of their arguments (destination
passing), so re-running one leaves the model's result unchanged. VM built-ins (allocation,
shape checks) are not timed. Build with ``tvm_hcprune.build(..., chain_kernels=False)`` to
see one kernel per layer: by default consecutive small kernels run as one
(:class:`~tvm_hcprune.backend.cpu.chain.ChainKernels`).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class KernelTime:
    """One call of a compiled kernel.

    Attributes
    ----------
    name : str
        The PrimFunc's symbol (e.g. ``fused_hcp_conv2d3_add4``).
    ms : float
        Mean wall time of one call in milliseconds.
    shapes : tuple of tuple of int
        Shapes of its tensor arguments (inputs, then outputs).
    """

    name: str
    ms: float
    shapes: tuple

    @property
    def family(self) -> str:
        """The name without the numeric suffixes that make fused functions unique."""
        return re.sub(r"\d+", "", self.name)


def kernel_times(vm, inputs, number: int = 10, func: str = "main") -> list[KernelTime]:
    """Run ``vm[func](*inputs)`` once and time every kernel call in it.

    Parameters
    ----------
    vm : tvm.runtime.vm.VirtualMachine
    inputs : sequence of tvm.runtime.Tensor
    number : int
        Re-runs per kernel call (after one warm-up) whose mean is recorded.
    func : str
        The VM function to run.

    Returns
    -------
    list of KernelTime
        In call order.
    """
    rows: list[KernelTime] = []

    def _instrument(fn, symbol, before_run, _ret, *args):
        if before_run or symbol.startswith("vm."):
            return 0
        fn(*args)
        t0 = time.perf_counter()
        for _ in range(number):
            fn(*args)
        ms = (time.perf_counter() - t0) / number * 1e3
        shapes = tuple(tuple(int(s) for s in a.shape) for a in args if hasattr(a, "shape"))
        rows.append(KernelTime(symbol, ms, shapes))
        return 0

    vm.set_instrument(_instrument)
    try:
        vm[func](*inputs)
    finally:
        vm.set_instrument(None)
    return rows


def by_family(times: list[KernelTime]) -> dict[str, float]:
    """Total milliseconds per kernel family, largest first."""
    out: dict[str, float] = {}
    for t in times:
        out[t.family] = out.get(t.family, 0.0) + t.ms
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))
