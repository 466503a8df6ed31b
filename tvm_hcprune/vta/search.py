"""Search VTA tilings per layer on the simulator's cycle estimate.

The default tilings (:func:`~tvm_hcprune.vta.codegen.default_conv2d_schedule`,
``default_dense_schedule``) minimise a DRAM-traffic formula. Here the candidates (tile
sizes and virtual threads that fit the SRAMs, the ``limit`` best by that formula plus the
default) each run the layer on the simulator with random int8 data, and the one with the
fewest estimated cycles (:func:`~tvm_hcprune.vta.cycles.estimate_cycles`) wins; every
candidate's output is checked equal to the default's, so a schedule that changed the
result would raise. The default is always a candidate, so the searched schedule is never
slower by the estimate. Results go to a :class:`~tvm_hcprune.vta.schedule_db.VTAScheduleDB`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tvm_hcprune.errors import HCPruneError
from tvm_hcprune.hardware.vta import DEFAULT_CONFIG, VTAConfig
from tvm_hcprune.vta import ops
from tvm_hcprune.vta.codegen import (
    Conv2DSchedule,
    Conv2DShape,
    DenseSchedule,
    default_conv2d_schedule,
    default_dense_schedule,
)
from tvm_hcprune.vta.cycles import estimate_cycles
from tvm_hcprune.vta.runtime import CommandQueue
from tvm_hcprune.vta.schedule_db import VTAScheduleDB, conv2d_key, dense_key
from tvm_hcprune.vta.sim import Simulator

__all__ = ["SearchResult", "conv2d_candidates", "dense_candidates", "search_conv2d",
           "search_dense", "search_model_layers"]


@dataclass(frozen=True)
class SearchResult:
    """The winner, its estimated cycles, the default's, and how many candidates ran."""

    schedule: object
    cycles: int
    default_cycles: int
    tried: int


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def conv2d_candidates(shape: Conv2DShape, cfg: VTAConfig = DEFAULT_CONFIG,
                      limit: int = 12) -> list[Conv2DSchedule]:
    """Tilings with virtual threads (1 or 2 over output channels and over rows) that fit the
    SRAMs, best ``limit`` by the traffic formula; the default first."""
    s = shape
    ho, wo = s.ho, s.wo
    scored = []
    for t_oc in (1, 2):
        for t_h in (1, 2):
            for tco in _divisors(s.cob):
                if (s.cob // tco) % t_oc:
                    continue
                for tci in _divisors(s.cib):
                    for tw in _divisors(wo):
                        for th in _divisors(ho):
                            if (ho // th) % t_h:
                                continue
                            t = t_oc * t_h
                            rows = (th - 1) * s.stride[0] + s.kh
                            cols = (tw - 1) * s.stride[1] + s.kw
                            inp, wgt = tci * rows * cols, tco * tci * s.kh * s.kw
                            acc = tco * th * tw + tco
                            if (t * inp > cfg.inp_depth or t * wgt > cfg.wgt_depth
                                    or t * acc > cfg.acc_depth
                                    or tci * s.kh * s.kw * tw > cfg.uop_depth // 8):
                                continue
                            n_co, n_h, n_w = s.cob // tco, ho // th, wo // tw
                            traffic = (n_co * n_h * n_w * s.cib * rows * cols * 16
                                       + n_h * n_w * s.cob * s.cib * s.kh * s.kw * 256)
                            steps = n_co * n_h * n_w * (s.cib // tci)
                            scored.append((traffic + 64 * steps, -t,
                                           Conv2DSchedule(th, tw, tci, tco, t_oc, t_h)))
    scored.sort(key=lambda x: x[:2])
    default = default_conv2d_schedule(shape, cfg)
    out = [default] + [c for _, _, c in scored if c != default]
    return out[:max(1, limit)]


def dense_candidates(m: int, kb: int, nb: int, cfg: VTAConfig = DEFAULT_CONFIG,
                     limit: int = 12) -> list[DenseSchedule]:
    """Dense tilings that fit the SRAMs, best ``limit`` by traffic; the default first."""
    scored = []
    for t in (1, 2):
        for tco in _divisors(nb):
            if (nb // tco) % t:
                continue
            for tci in _divisors(kb):
                for tb in _divisors(m):
                    if (t * tb * tci > cfg.inp_depth or t * tco * tci > cfg.wgt_depth
                            or t * (tb * tco + tco) > cfg.acc_depth):
                        continue
                    traffic = (nb // tco) * m * kb * 16 + (m // tb) * nb * kb * 256
                    steps = (m // tb) * (nb // tco) * (kb // tci)
                    scored.append((traffic + 64 * steps, -t, DenseSchedule(tb, tci, tco, t)))
    scored.sort(key=lambda x: x[:2])
    default = default_dense_schedule(m, kb, nb, cfg)
    out = [default] + [c for _, _, c in scored if c != default]
    return out[:max(1, limit)]


def _best(run, candidates) -> SearchResult:
    """Run every candidate; the fewest estimated cycles wins (the first is the default)."""
    ref, best, default_cycles, tried = None, None, None, 0
    for sched in candidates:
        rt = CommandQueue(Simulator(run.cfg))
        try:
            y = run(sched, rt)
        except HCPruneError:
            continue  # the tiling does not fit after all (micro-op buffer, tokens)
        cycles = int(estimate_cycles(rt.last_program, rt.cfg)["cycles"])
        tried += 1
        if ref is None:
            ref, default_cycles = y, cycles
        elif not np.array_equal(y, ref):
            raise HCPruneError(f"VTA schedule {sched} changed the layer's result; this is a "
                               "bug in the code generator")
        if best is None or cycles < best[1]:
            best = (sched, cycles)
    if best is None:
        raise HCPruneError("no VTA schedule candidate ran for this layer")
    return SearchResult(best[0], best[1], default_cycles, tried)


class _Runner:
    def __init__(self, fn, cfg):
        self.fn, self.cfg = fn, cfg

    def __call__(self, sched, rt):
        return self.fn(sched, rt)


def search_conv2d(x_shape, w_shape, stride=(1, 1), padding=(0, 0),
                  cfg: VTAConfig = DEFAULT_CONFIG, limit: int = 12, seed: int = 0,
                  weight: np.ndarray | None = None, bias: np.ndarray | None = None,
                  shift: int = 6) -> tuple[str, SearchResult]:
    """``(workload key, result)`` of the search for an int8 NCHW conv2d.

    ``weight`` (int8 OIHW, optional): the layer's own weights, whose zero blocks the
    generated stream skips; random otherwise. ``bias`` (int32) and ``shift``: the layer's
    epilogue (the bias load and ALU work count in the estimate).

    Examples
    --------
    >>> key, res = search_conv2d((1, 32, 8, 8), (32, 32, 3, 3), padding=(1, 1))
    >>> res.cycles <= res.default_cycles
    True
    """
    rng = np.random.default_rng(seed)
    x = rng.integers(-8, 8, x_shape, dtype=np.int8)
    w = weight if weight is not None else rng.integers(-8, 8, w_shape, dtype=np.int8)
    n, c, h, wd = x_shape
    blk = cfg.block_in
    shape = Conv2DShape(-(-n // cfg.batch), -(-c // blk), h, wd, -(-w_shape[0] // blk),
                        w_shape[2], w_shape[3], tuple(stride), tuple(padding))
    run = _Runner(lambda s, rt: ops.conv2d(x, w, bias, stride, padding, shift, (-127, 127),
                                           schedule=s, rt=rt), cfg)
    return conv2d_key(shape), _best(run, conv2d_candidates(shape, cfg, limit))


def search_dense(m: int, k: int, n: int, cfg: VTAConfig = DEFAULT_CONFIG, limit: int = 12,
                 seed: int = 0, weight: np.ndarray | None = None,
                 bias: np.ndarray | None = None, shift: int = 6) -> tuple[str, SearchResult]:
    """``(workload key, result)`` of the search for an int8 dense ``[m, k] x [n, k]`` (the
    other arguments as in :func:`search_conv2d`)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-8, 8, (m, k), dtype=np.int8)
    w = weight if weight is not None else rng.integers(-8, 8, (n, k), dtype=np.int8)
    mb, kb, nb = -(-m // cfg.batch), k // cfg.block_in, -(-n // cfg.block_out)
    run = _Runner(lambda s, rt: ops.dense(x, w, bias, shift, (-127, 127), schedule=s, rt=rt),
                  cfg)
    return dense_key(mb, kb, nb), _best(run, dense_candidates(mb, kb, nb, cfg, limit))


def search_model_layers(plan, cfg: VTAConfig | None = None, limit: int = 12,
                        db: VTAScheduleDB | None = None) -> VTAScheduleDB:
    """Search every layer of a :class:`~tvm_hcprune.vta.relax.QuantPlan` (with its own int8
    weights, so its zero blocks are skipped as in the build) into ``db`` (a new one by
    default); save it with ``db.save(path)`` (``schedule_db.shipped_path(cfg)`` ships it).

    Examples
    --------
    >>> db = search_model_layers(plan)  # doctest: +SKIP
    >>> db.save(shipped_path(plan.config))  # doctest: +SKIP
    """
    cfg = cfg or plan.config
    db = db or VTAScheduleDB(cfg.bitstream)
    for q in plan.layers.values():
        w = np.asarray(q.weight, np.int8)
        shape = tuple(int(d) for d in q.input_shape)
        if q.kind == "conv2d":
            key, res = search_conv2d(shape, w.shape, tuple(q.strides), tuple(q.padding), cfg,
                                     limit, weight=w, bias=q.bias, shift=q.shift)
        else:
            key, res = search_dense(int(np.prod(shape[:-1])), w.shape[1], w.shape[0], cfg,
                                    limit, weight=w, bias=q.bias, shift=q.shift)
        db.put(key, q.kind, res.schedule, res.cycles, res.default_cycles, res.tried)
    return db
