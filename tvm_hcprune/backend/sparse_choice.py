"""Measured format choice: time a block-sparse layer's BSR kernel and its dense kernel.

``hc.build(mod, sparse="measure")`` hands :class:`MeasuredChoice` to
:class:`~tvm_hcprune.backend.cpu.bsr.UseBlockSparse`: for each block-sparse layer it compiles
the BSR kernel (:func:`~tvm_hcprune.backend.cpu.bsr.bsr_kernel`, the layer's own arrays) and
the dense build of the same layer (a one-layer module through the dense pipeline), times
both in interleaved rounds on this machine (fastest of ``rounds``), and keeps the faster. A
layer denser than ``measure_up_to`` stays dense without being timed. Timings are cached per
process by layer shape, layout and zero pattern, so a model whose layers repeat pays once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import numpy as np
import tvm
from tvm import relax

from tvm_hcprune.backend.cpu.bsr import bsr_kernel, plan_rows, to_bsr

__all__ = ["MeasuredChoice"]

_CACHE: dict = {}


def _layer_module(w_kn: np.ndarray, rows: int, layout: str, batch: int) -> tvm.IRModule:
    """The dense layer alone: ``x [rows, K] @ W`` or a 1x1 conv over ``rows`` pixels."""
    k, n = w_kn.shape
    bb = relax.BlockBuilder()
    if layout == "rows":
        x = relax.Var("x", relax.TensorType((rows, k), "float32"))
        with bb.function("main", [x]):
            with bb.dataflow():
                out = bb.emit_output(relax.op.matmul(x, relax.const(w_kn)))
            bb.emit_func_output(out)
    else:
        x = relax.Var("x", relax.TensorType((batch, k, rows, 1), "float32"))
        w = np.ascontiguousarray(w_kn.T[:, :, None, None])
        with bb.function("main", [x]):
            with bb.dataflow():
                out = bb.emit_output(relax.op.nn.conv2d(x, relax.const(w)))
            bb.emit_func_output(out)
    return bb.get()


class MeasuredChoice:
    """``decide`` for :class:`~tvm_hcprune.backend.cpu.bsr.UseBlockSparse` by timing.

    Parameters
    ----------
    target : tvm.target.Target
        The CPU target the kernels are compiled for (this machine).
    build_dense : callable
        ``build_dense(mod, blocked_layout) -> executable``: the dense build of a one-layer
        module (``hc.build(..., sparse=False)``).
    number, rounds : int
        Calls per timing and interleaved rounds (the fastest round is kept).
    measure_up_to : float
        Layers whose kept blocks are a larger fraction than this stay dense untimed.

    Examples
    --------
    >>> ex = tvm_hcprune.build(sparse_mod, sparse="measure")  # doctest: +SKIP
    """

    def __init__(self, target, build_dense: Callable, number: int = 10, rounds: int = 3,
                 measure_up_to: float = 0.8):
        self.target = target
        self.build_dense = build_dense
        self.number = int(number)
        self.rounds = int(rounds)
        self.measure_up_to = float(measure_up_to)

    def __call__(self, w_kn, block, rows, layout, batch, chan_block, density, profile):
        if density <= 0.0:
            return "dense", "every block is zero (the layer computes its bias only)", {}
        if density > self.measure_up_to:
            return "dense", (f"{density:.0%} of the blocks kept > {self.measure_up_to:.0%}: "
                             "too dense to time"), {}
        key = (layout, rows, batch, chan_block, tuple(block), w_kn.shape,
               hashlib.sha1(np.ascontiguousarray(w_kn)).hexdigest(), str(self.target))
        if key not in _CACHE:
            _CACHE[key] = self._time(w_kn, block, rows, layout, batch, profile)
        bsr_ms, dense_ms = _CACHE[key]
        fmt = "bsr" if bsr_ms < dense_ms else "dense"
        return fmt, f"measured: BSR {bsr_ms:.3f} ms, dense {dense_ms:.3f} ms", {
            "bsr_ms": bsr_ms, "dense_ms": dense_ms}

    def _time(self, w_kn, block, rows, layout, batch, profile) -> tuple[float, float]:
        dev = tvm.cpu()
        rng = np.random.default_rng(0)
        k = w_kn.shape[0]
        # the BSR kernel reads NCHW here; the blocked layout's kernel is the same loop nest
        kernel_layout = "nchw" if layout == "nchwc" else layout
        data, indices, indptr, npad = to_bsr(w_kn, block)
        tile = plan_rows(rows, block[1], profile.lanes("float32"), profile.vector_registers)
        lib = tvm.compile(tvm.IRModule({"main": bsr_kernel(
            rows, k, npad, data.shape[0], block[0], block[1], tile, kernel_layout, batch)}),
            self.target)
        x_shape = (rows, k) if kernel_layout == "rows" else (batch, k, rows)
        y_shape = (rows, npad) if kernel_layout == "rows" else (batch, npad, rows)
        bufs = [tvm.runtime.tensor(a, dev) for a in
                (rng.standard_normal(x_shape).astype("float32"), data, indices, indptr)]
        bufs.append(tvm.runtime.empty(y_shape, "float32", dev))
        bsr_eval = lib.mod.time_evaluator("main", dev, number=self.number)
        mod = _layer_module(w_kn, rows, "rows" if layout == "rows" else "conv", batch)
        vm = relax.VirtualMachine(self.build_dense(mod, False), dev)
        xd = tvm.runtime.tensor(rng.standard_normal(
            [int(d) for d in mod["main"].params[0].ty.shape]).astype("float32"), dev)
        dense_eval = vm.time_evaluator("main", dev, number=self.number)
        best_b = best_d = float("inf")
        for _ in range(self.rounds):
            best_b = min(best_b, float(np.median(bsr_eval(*bufs).results)))
            best_d = min(best_d, float(np.median(dense_eval(xd).results)))
        return best_b * 1e3, best_d * 1e3
