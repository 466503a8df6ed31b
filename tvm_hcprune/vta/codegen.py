"""Schedule generators for packed int8 conv2d and dense on VTA, with an ALU epilogue.

Layouts (BATCH = 1, BLOCK = 16 by default):

* activations NCHW1n16c: ``(N/B, C/16, H, W, B, 16)`` int8
* conv weights OIHW16o16i: ``(O/16, I/16, kh, kw, 16, 16)`` int8
* dense input ``(M/B, K/16, B, 16)``, weights ``(N/16, K/16, 16, 16)``, output
  ``(M/B, N/16, B, 16)``
* bias ``(O/16, B, 16)`` int32 (loaded into the accumulator)

The loop nest follows the published tutorial schedule: tiles over (batch, output-channel,
output-row, output-column); inside each tile a reduction over input-channel blocks with one
input and one weight load per step; GEMM micro-op kernels with the output-channel and
output-row loops as the hardware's two loops; then the epilogue ``acc += bias;
acc >>= shift; acc = max(acc, lo); acc = min(acc, hi)`` and an int8 store. Virtual threads
give each thread its own input, weight and accumulator regions and interleave the threads'
instructions so loads of one overlap the compute of the other; dependency tokens guard every
buffer reuse.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from tvm_hcprune.errors import HCPruneError
from tvm_hcprune.hardware.vta import DEFAULT_CONFIG, VTAConfig
from tvm_hcprune.vta import isa
from tvm_hcprune.vta.runtime import COMPUTE_STAGE, LOAD_STAGE, STORE_STAGE, CommandQueue, kernel


@dataclasses.dataclass(frozen=True)
class Epilogue:
    """The ALU epilogue applied to the int32 accumulator before the int8 store.

    Parameters
    ----------
    shift : int
        Arithmetic right shift (negative: left shift). 0 emits no SHR.
    clip : (int, int) or None
        ``(lo, hi)``: MAX with lo then MIN with hi. ``(0, 127)`` is a fused ReLU.
    bias : bool
        Add a per-output-channel int32 bias (tensor ALU ADD) before the shift.
    """

    shift: int = 0
    clip: tuple[int, int] | None = None
    bias: bool = False

    def __post_init__(self):
        if self.clip is not None:
            lo, hi = self.clip
            if not -(1 << 15) <= lo <= hi < (1 << 15):
                raise HCPruneError(f"clip {self.clip} must satisfy -32768 <= lo <= hi < 32768.")
        if not -(1 << 15) <= self.shift < (1 << 15):
            raise HCPruneError("the shift must fit the 16-bit ALU immediate.")


@dataclasses.dataclass(frozen=True)
class Conv2DSchedule:
    """Tiling of a packed conv2d (tile sizes in blocks for channels, elements for H, W).

    Parameters
    ----------
    tile_h, tile_w : int
        Output rows and columns per tile.
    tile_ci, tile_co : int
        Input and output channel blocks per tile.
    oc_nthread, h_nthread : int
        Virtual threads over output-channel tiles and over row tiles (1 or 2 each).
    """

    tile_h: int
    tile_w: int
    tile_ci: int = 1
    tile_co: int = 1
    oc_nthread: int = 1
    h_nthread: int = 1

    @property
    def nthread(self) -> int:
        return self.oc_nthread * self.h_nthread


@dataclasses.dataclass(frozen=True)
class DenseSchedule:
    """Tiling of a packed dense layer (all in blocks)."""

    tile_b: int = 1
    tile_ci: int = 1
    tile_co: int = 1
    oc_nthread: int = 1


@dataclasses.dataclass(frozen=True)
class Conv2DShape:
    """Shape of a packed conv2d in blocks (``n`` in batch blocks, channels in 16-blocks)."""

    n: int
    cib: int
    h: int
    w: int
    cob: int
    kh: int
    kw: int
    stride: tuple[int, int] = (1, 1)
    pad: tuple[int, int] = (0, 0)  # top, left; bottom/right follow from the output size

    @property
    def ho(self) -> int:
        return (self.h + 2 * self.pad[0] - self.kh) // self.stride[0] + 1

    @property
    def wo(self) -> int:
        return (self.w + 2 * self.pad[1] - self.kw) // self.stride[1] + 1

    def gemm_uops(self) -> int:
        """The gemm_counter of this conv: N * Cib * Cob * Ho * Wo * kh * kw."""
        return self.n * self.cib * self.cob * self.ho * self.wo * self.kh * self.kw


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def _tile_cfg_checks(cfg: VTAConfig, nthread: int, inp: int, wgt: int, acc: int, name: str):
    for mem, need, depth in (("input", inp, cfg.inp_depth), ("weight", wgt, cfg.wgt_depth),
                             ("accumulator", acc, cfg.acc_depth)):
        if nthread * need > depth:
            raise HCPruneError(
                f"{name}: the tile needs {need} {mem} SRAM elements per thread x {nthread} "
                f"thread(s) > {depth}; choose smaller tiles or fewer virtual threads.")


class _Tokens:
    """Per-thread buffer-reuse tokens between two stages (producer -> consumer -> back)."""

    def __init__(self, rt: CommandQueue, consumer: int, producer: int):
        self.rt, self.consumer, self.producer = rt, consumer, producer
        self.used: set = set()

    def acquire(self, t) -> None:
        """``consumer`` waits until ``producer`` released thread t's buffer (if it used it)."""
        if t in self.used:
            self.rt.dep_pop(self.producer, self.consumer)
        self.used.add(t)

    def drain(self) -> None:
        """Consume every outstanding release so the operator leaves no tokens behind."""
        for _ in self.used:
            self.rt.dep_pop(self.producer, self.consumer)
        self.used = set()


def _epilogue(rt: CommandQueue, ep: Epilogue, acc_base: int, bias_base: int, outer: int,
              inner: int, bias_loops) -> None:
    """Emit bias/shift/clip ALU ops over ``outer x inner`` contiguous accumulator elements."""
    loops = ((outer, inner, inner, 0), (inner, 1, 1, 0))
    if ep.bias:
        rt.push_alu(kernel("alu_bias", [(acc_base, bias_base, 0)], bias_loops), isa.ALU_ADD)
    if ep.shift:
        rt.push_alu(kernel("alu_shr", [(acc_base, acc_base, 0)], loops), isa.ALU_SHR, ep.shift)
    if ep.clip is not None:
        rt.push_alu(kernel("alu_max", [(acc_base, acc_base, 0)], loops), isa.ALU_MAX,
                    ep.clip[0])
        rt.push_alu(kernel("alu_min", [(acc_base, acc_base, 0)], loops), isa.ALU_MIN,
                    ep.clip[1])


def conv2d_packed(rt: CommandQueue, shape: Conv2DShape, sched: Conv2DSchedule,
                  data_addr: int, weight_addr: int, out_addr: int,
                  bias_addr: int | None = None, epilogue: Epilogue = Epilogue(),
                  nonzero: np.ndarray | None = None) -> None:
    """Emit a packed conv2d into ``rt`` (does not synchronise).

    Addresses are DRAM byte addresses of the packed tensors (see the module docstring).
    The operator leaves no dependency tokens outstanding, so several operators can share a
    stream; synchronise between an operator and one that reads its output.
    ``nonzero`` (bool ``[cob, cib, kh, kw]``): the weight blocks that are not all zero;
    GEMM micro-ops of zero blocks are left out of the stream (the result is the same, the
    ``gemm_counter`` smaller). None: every block is used.
    """
    cfg = rt.cfg
    s = shape
    sh, sw = s.stride
    ph, pw = s.pad
    ho, wo = s.ho, s.wo
    if ho < 1 or wo < 1:
        raise HCPruneError(f"conv2d {s}: empty output; check kernel, stride and padding.")
    if max(ph, pw) > 15:
        raise HCPruneError("conv2d padding above 15 does not fit the LOAD pad fields.")
    if epilogue.bias and bias_addr is None:
        raise HCPruneError("Epilogue(bias=True) needs bias_addr.")
    th_, tw_ = min(sched.tile_h, ho), min(sched.tile_w, wo)
    tci_, tco_ = min(sched.tile_ci, s.cib), min(sched.tile_co, s.cob)
    n_co, n_h, n_w = _ceil(s.cob, tco_), _ceil(ho, th_), _ceil(wo, tw_)
    n_ci = _ceil(s.cib, tci_)
    T_oc, T_h = sched.oc_nthread, sched.h_nthread
    if T_oc not in (1, 2) or T_h not in (1, 2):
        raise HCPruneError("oc_nthread and h_nthread must be 1 or 2.")
    if n_co % T_oc or n_h % T_h:
        raise HCPruneError(
            f"conv2d: {n_co} output-channel tiles / {n_h} row tiles are not divisible by the "
            f"virtual threads ({T_oc}, {T_h}); change tile_co/tile_h or use one thread.")
    T = T_oc * T_h
    in_rows = (th_ - 1) * sh + s.kh
    in_cols = (tw_ - 1) * sw + s.kw
    inp_sz = tci_ * in_rows * in_cols
    wgt_sz = tco_ * tci_ * s.kh * s.kw
    acc_sz = tco_ * th_ * tw_
    bias_sz = tco_ if epilogue.bias else 0
    _tile_cfg_checks(cfg, T, inp_sz, wgt_sz, acc_sz + bias_sz, "conv2d")

    d_elem = rt.elem_addr(data_addr, "inp")
    w_elem = rt.elem_addr(weight_addr, "wgt")
    o_elem = rt.elem_addr(out_addr, "out")
    b_elem = rt.elem_addr(bias_addr, "acc") if epilogue.bias else 0
    khw = s.kh * s.kw
    inp_tok = _Tokens(rt, LOAD_STAGE, COMPUTE_STAGE)   # load waits for compute to free inp/wgt
    acc_tok = _Tokens(rt, COMPUTE_STAGE, STORE_STAGE)  # compute waits for store to free acc

    for n in range(s.n):
        for cog in range(n_co // T_oc):
            for hg in range(n_h // T_h):
                for wt in range(n_w):
                    threads = []
                    for t_oc in range(T_oc):
                        for t_h in range(T_h):
                            t = t_oc * T_h + t_h
                            co0 = (cog * T_oc + t_oc) * tco_
                            oh0 = (hg * T_h + t_h) * th_
                            ow0 = wt * tw_
                            threads.append(dict(
                                t=t, nb=n, co0=co0, tco=min(tco_, s.cob - co0), oh0=oh0,
                                th=min(th_, ho - oh0), ow0=ow0, tw=min(tw_, wo - ow0),
                                inp=t * inp_sz, wgt=t * wgt_sz, acc=t * (acc_sz + bias_sz)))
                    # reset (and bias) per thread
                    for p in threads:
                        acc_tok.acquire(p["t"])
                        rt.push_gemm(kernel(
                            "gemm_reset", [(p["acc"] + x, 0, 0) for x in range(p["tw"])],
                            [(p["tco"], p["th"] * p["tw"], 0, 0), (p["th"], p["tw"], 0, 0)]),
                            reset=True)
                        if epilogue.bias:
                            rt.load_2d(isa.MEM_ACC, p["acc"] + acc_sz, b_elem + p["co0"], 1,
                                       p["tco"], p["tco"])
                    for ci in range(n_ci):
                        c0 = ci * tci_
                        tci = min(tci_, s.cib - c0)
                        geo = []
                        for p in threads:
                            inp_tok.acquire(p["t"])
                            geo.append(_load_conv_tile(rt, s, p, c0, tci, d_elem, w_elem))
                            rt.dep_push(LOAD_STAGE, COMPUTE_STAGE)
                        for p, (rows, cols) in zip(threads, geo, strict=True):
                            rt.dep_pop(LOAD_STAGE, COMPUTE_STAGE)
                            sparse = None if nonzero is None else nonzero[
                                p["co0"]:p["co0"] + p["tco"], c0:c0 + tci]
                            if sparse is not None and not sparse.all() and sparse.any():
                                # zero weight blocks: one explicit micro-op per kept block
                                uops = [
                                    (p["acc"] + co * p["th"] * p["tw"] + x,
                                     p["inp"] + c * rows * cols + dy * cols + dx + x * sw,
                                     p["wgt"] + co * tci * khw + c * khw + dy * s.kw + dx)
                                    for co in range(p["tco"]) for c in range(tci)
                                    for dy in range(s.kh) for dx in range(s.kw)
                                    if sparse[co, c, dy, dx] for x in range(p["tw"])]
                                rt.push_gemm(kernel("gemm_sparse", uops,
                                                    [(p["th"], p["tw"], sh * cols, 0)]))
                            else:
                                uops = [
                                    (p["acc"] + x,
                                     p["inp"] + c * rows * cols + dy * cols + dx + x * sw,
                                     p["wgt"] + c * khw + dy * s.kw + dx)
                                    for c in range(tci) for dy in range(s.kh)
                                    for dx in range(s.kw) for x in range(p["tw"])]
                                rt.push_gemm(kernel(
                                    "gemm", uops,
                                    [(p["tco"], p["th"] * p["tw"], 0, tci * khw),
                                     (p["th"], p["tw"], sh * cols, 0)]))
                            rt.dep_push(COMPUTE_STAGE, LOAD_STAGE)
                    for p in threads:
                        inner = p["th"] * p["tw"]
                        _epilogue(rt, epilogue, p["acc"], p["acc"] + acc_sz, p["tco"], inner,
                                  [(p["tco"], inner, 1, 0), (inner, 1, 0, 0)])
                        rt.dep_push(COMPUTE_STAGE, STORE_STAGE)
                    for p in threads:
                        rt.dep_pop(COMPUTE_STAGE, STORE_STAGE)
                        for co in range(p["tco"]):
                            rt.store_2d(
                                p["acc"] + co * p["th"] * p["tw"],
                                o_elem + ((n * s.cob + p["co0"] + co) * ho + p["oh0"]) * wo
                                + p["ow0"], p["th"], p["tw"], wo)
                        rt.dep_push(STORE_STAGE, COMPUTE_STAGE)
    inp_tok.drain()
    acc_tok.drain()


def _load_conv_tile(rt, s: Conv2DShape, p: dict, c0: int, tci: int, d_elem: int,
                    w_elem: int) -> tuple[int, int]:
    """Input tile (with zero padding at the borders) and weight tile loads for one step."""
    sh, sw = s.stride
    rows = (p["th"] - 1) * sh + s.kh
    cols = (p["tw"] - 1) * sw + s.kw
    ih0 = p["oh0"] * sh - s.pad[0]
    iw0 = p["ow0"] * sw - s.pad[1]
    yp0, xp0 = max(0, -ih0), max(0, -iw0)
    yp1, xp1 = max(0, ih0 + rows - s.h), max(0, iw0 + cols - s.w)
    ys, xs = rows - yp0 - yp1, cols - xp0 - xp1
    if ys <= 0 or xs <= 0 or max(yp0, yp1, xp0, xp1) > 15:
        raise HCPruneError("conv2d: a tile lies in the padding only; use larger tiles.")
    for c in range(tci):
        rt.load_2d(isa.MEM_INP, p["inp"] + c * rows * cols,
                   d_elem + ((p["nb"] * s.cib + c0 + c) * s.h + ih0 + yp0) * s.w + iw0 + xp0,
                   ys, xs, s.w, yp0, yp1, xp0, xp1)
    khw = s.kh * s.kw
    rt.load_2d(isa.MEM_WGT, p["wgt"], w_elem + (p["co0"] * s.cib + c0) * khw, p["tco"],
               tci * khw, s.cib * khw)
    return rows, cols


def dense_packed(rt: CommandQueue, m: int, kb: int, nb: int, sched: DenseSchedule,
                 data_addr: int, weight_addr: int, out_addr: int,
                 bias_addr: int | None = None, epilogue: Epilogue = Epilogue(),
                 nonzero: np.ndarray | None = None) -> None:
    """Emit a packed dense ``out = data @ weight.T`` (``m`` batch blocks, ``kb``/``nb``
    input/output channel blocks) into ``rt``; leaves no tokens outstanding. ``nonzero``
    (bool ``[nb, kb]``): the weight blocks that are not all zero; the GEMM micro-ops of the
    others are left out (same result, smaller ``gemm_counter``)."""
    cfg = rt.cfg
    if epilogue.bias and bias_addr is None:
        raise HCPruneError("Epilogue(bias=True) needs bias_addr.")
    tb_, tci_, tco_ = min(sched.tile_b, m), min(sched.tile_ci, kb), min(sched.tile_co, nb)
    n_b, n_ci, n_co = _ceil(m, tb_), _ceil(kb, tci_), _ceil(nb, tco_)
    T = sched.oc_nthread
    if T not in (1, 2):
        raise HCPruneError("oc_nthread must be 1 or 2.")
    if n_co % T:
        raise HCPruneError(f"dense: {n_co} output tiles are not divisible by {T} threads; "
                           "change tile_co or use one thread.")
    inp_sz, wgt_sz, acc_sz = tb_ * tci_, tco_ * tci_, tb_ * tco_
    bias_sz = tco_ if epilogue.bias else 0
    _tile_cfg_checks(cfg, T, inp_sz, wgt_sz, acc_sz + bias_sz, "dense")
    d_elem = rt.elem_addr(data_addr, "inp")
    w_elem = rt.elem_addr(weight_addr, "wgt")
    o_elem = rt.elem_addr(out_addr, "out")
    b_elem = rt.elem_addr(bias_addr, "acc") if epilogue.bias else 0
    inp_tok = _Tokens(rt, LOAD_STAGE, COMPUTE_STAGE)
    acc_tok = _Tokens(rt, COMPUTE_STAGE, STORE_STAGE)
    for bt in range(n_b):
        b0 = bt * tb_
        tb = min(tb_, m - b0)
        for cog in range(n_co // T):
            threads = []
            for t in range(T):
                co0 = (cog * T + t) * tco_
                threads.append(dict(t=t, co0=co0, tco=min(tco_, nb - co0), inp=t * inp_sz,
                                    wgt=t * wgt_sz, acc=t * (acc_sz + bias_sz)))
            for p in threads:
                acc_tok.acquire(p["t"])
                rt.push_gemm(kernel("gemm_reset", [(p["acc"] + b * p["tco"], 0, 0)
                                                   for b in range(tb)],
                                    [(p["tco"], 1, 0, 0)]), reset=True)
                if epilogue.bias:
                    rt.load_2d(isa.MEM_ACC, p["acc"] + acc_sz, b_elem + p["co0"], 1, p["tco"],
                               p["tco"])
            for ci in range(n_ci):
                c0 = ci * tci_
                tci = min(tci_, kb - c0)
                for p in threads:
                    inp_tok.acquire(p["t"])
                    rt.load_2d(isa.MEM_INP, p["inp"], d_elem + b0 * kb + c0, tb, tci, kb)
                    rt.load_2d(isa.MEM_WGT, p["wgt"], w_elem + p["co0"] * kb + c0, p["tco"],
                               tci, kb)
                    rt.dep_push(LOAD_STAGE, COMPUTE_STAGE)
                for p in threads:
                    rt.dep_pop(LOAD_STAGE, COMPUTE_STAGE)
                    sparse = None if nonzero is None else nonzero[
                        p["co0"]:p["co0"] + p["tco"], c0:c0 + tci]
                    if sparse is not None and not sparse.all() and sparse.any():
                        rt.push_gemm(kernel(
                            "gemm_sparse",
                            [(p["acc"] + b * p["tco"] + co, p["inp"] + b * tci + c,
                              p["wgt"] + co * tci + c)
                             for co in range(p["tco"]) for c in range(tci) if sparse[co, c]
                             for b in range(tb)]))
                    else:
                        rt.push_gemm(kernel(
                            "gemm", [(p["acc"] + b * p["tco"], p["inp"] + b * tci, p["wgt"])
                                     for b in range(tb)],
                            [(p["tco"], 1, 0, tci), (tci, 0, 1, 1)]))
                    rt.dep_push(COMPUTE_STAGE, LOAD_STAGE)
            for p in threads:
                _epilogue(rt, epilogue, p["acc"], p["acc"] + acc_sz, tb, p["tco"],
                          [(tb, p["tco"], 0, 0), (p["tco"], 1, 1, 0)])
                rt.dep_push(COMPUTE_STAGE, STORE_STAGE)
            for p in threads:
                rt.dep_pop(COMPUTE_STAGE, STORE_STAGE)
                rt.store_2d(p["acc"], o_elem + b0 * nb + p["co0"], tb, p["tco"], nb)
                rt.dep_push(STORE_STAGE, COMPUTE_STAGE)
    inp_tok.drain()
    acc_tok.drain()


# ---- schedule selection ---------------------------------------------------------------------
def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@functools.lru_cache(maxsize=512)
def default_conv2d_schedule(shape: Conv2DShape, cfg: VTAConfig = DEFAULT_CONFIG) -> Conv2DSchedule:
    """A schedule that fits the SRAMs and minimises the estimated DRAM traffic.

    Traffic = input bytes (re-read once per output-channel tile, with halos) + weight bytes
    (re-read once per spatial tile). Two virtual threads are preferred when they fit.
    """
    s = shape
    ho, wo = s.ho, s.wo
    best = None
    tws = sorted({wo} | {d for d in _divisors(wo)})
    ths = sorted({ho} | {d for d in _divisors(ho)} | {min(ho, 7), min(ho, 8)})
    for T_oc in (2, 1):
        for tco in _divisors(s.cob):
            n_co = s.cob // tco
            if n_co % T_oc:
                continue
            for tci in _divisors(s.cib):
                for tw in tws:
                    for th in ths:
                        rows = (th - 1) * s.stride[0] + s.kh
                        cols = (tw - 1) * s.stride[1] + s.kw
                        inp = tci * rows * cols
                        wgt = tco * tci * s.kh * s.kw
                        acc = tco * th * tw + tco
                        if (T_oc * inp > cfg.inp_depth or T_oc * wgt > cfg.wgt_depth
                                or T_oc * acc > cfg.acc_depth):
                            continue
                        if tci * s.kh * s.kw * tw > cfg.uop_depth // 8:
                            continue
                        n_h, n_w = _ceil(ho, th), _ceil(wo, tw)
                        traffic = (n_co * n_h * n_w * s.cib * rows * cols * 16
                                   + n_h * n_w * s.cob * s.cib * s.kh * s.kw * 256)
                        steps = n_co * n_h * n_w * (s.cib // tci)
                        key = (traffic + 64 * steps, -T_oc, -tw, -th)
                        if best is None or key < best[0]:
                            best = (key, Conv2DSchedule(th, tw, tci, tco, T_oc, 1))
    if best is None:
        raise HCPruneError(f"no VTA tiling of conv2d {s} fits the SRAMs of {cfg.bitstream}.")
    return best[1]


@functools.lru_cache(maxsize=512)
def default_dense_schedule(m: int, kb: int, nb: int, cfg: VTAConfig = DEFAULT_CONFIG
                           ) -> DenseSchedule:
    """A dense tiling that fits the SRAMs and minimises the estimated DRAM traffic."""
    best = None
    for T in (2, 1):
        for tco in _divisors(nb):
            if (nb // tco) % T:
                continue
            for tci in _divisors(kb):
                for tb in _divisors(m):
                    if (T * tb * tci > cfg.inp_depth or T * tco * tci > cfg.wgt_depth
                            or T * (tb * tco + tco) > cfg.acc_depth):
                        continue
                    traffic = (nb // tco) * m * kb * 16 + (m // tb) * nb * kb * 256
                    steps = (m // tb) * (nb // tco) * (kb // tci)
                    key = (traffic + 64 * steps, -T)
                    if best is None or key < best[0]:
                        best = (key, DenseSchedule(tb, tci, tco, T))
    if best is None:
        raise HCPruneError(f"no VTA tiling of dense {m}x{kb}x{nb} blocks fits the SRAMs.")
    return best[1]


def conv2d_traffic(shape: Conv2DShape, sched: Conv2DSchedule) -> dict:
    """Closed-form inp/wgt/out bytes of :func:`conv2d_packed` (padding excluded)."""
    s = shape
    ho, wo = s.ho, s.wo
    th_, tw_ = min(sched.tile_h, ho), min(sched.tile_w, wo)
    tci_, tco_ = min(sched.tile_ci, s.cib), min(sched.tile_co, s.cob)
    inp = 0
    for oh0 in range(0, ho, th_):
        th = min(th_, ho - oh0)
        rows = (th - 1) * s.stride[0] + s.kh
        ih0 = oh0 * s.stride[0] - s.pad[0]
        ys = min(s.h, ih0 + rows) - max(0, ih0)
        for ow0 in range(0, wo, tw_):
            tw = min(tw_, wo - ow0)
            cols = (tw - 1) * s.stride[1] + s.kw
            iw0 = ow0 * s.stride[1] - s.pad[1]
            xs = min(s.w, iw0 + cols) - max(0, iw0)
            inp += ys * xs
    n_co = _ceil(s.cob, tco_)
    n_sp = _ceil(ho, th_) * _ceil(wo, tw_)
    del tci_
    return {
        "inp_load_nbytes": s.n * n_co * s.cib * inp * 16,
        "wgt_load_nbytes": s.n * n_sp * s.cob * s.cib * s.kh * s.kw * 256,
        "out_store_nbytes": s.n * s.cob * ho * wo * 16,
        "gemm_counter": s.gemm_uops(),
    }
