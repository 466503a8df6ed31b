"""Channel-blocked conv2d kernels (NCHW[x]c inside the kernel) with pre-packed weights.

:class:`PackConv2dNCHW` rewrites every ``relax.nn.conv2d`` that has an NCHW float32 input, a
constant OIHW weight and static shapes into a ``call_tir`` of a TE kernel made of three
blocks, named so the CPU schedule rule (:mod:`tvm_hcprune.backend.cpu.rules`) finds them:

``hcp_pack``
    pads the input and packs it to ``[N, G, ICB, Hp, Wp, IB]`` (zeros beyond the channels),
``hcp_conv``
    the blocked convolution ``[N, G, OCB, OH, OWp, OB]`` against the weight packed once at
    compile time to ``[G, OCB, ICB, KH, KW, IB, OB]`` (numpy, so no run-time cost),
``hcp_unpack``
    back to NCHW (cropping padded channels and the padded width).

The kernel's ``op_pattern`` is ``kOutEWiseFusable`` so FuseOps fuses the elementwise
epilogue (bias, relu, clip, hardswish, residual add) into it; the schedule rule then inlines
the epilogue into the tile write-back. Depthwise convolutions (``groups == C_in == C_out``) use
a kernel vectorised along the output row in NCHW (``hcp_dwpad``/``hcp_dwrow``/``hcp_dwcrop``)
and, in NHWC, one vectorised over the channel block (``hcp_dwpack``/``hcp_dwconv``/
``hcp_dwunpack``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace

import numpy as np
from tvm import relax, te, tirx

# relax's OpPatternKind
OUT_EWISE_FUSABLE = 4
# PrimFunc attribute naming which of tvm_hcprune's kernels a function is ("hcp_conv2d", ...)
KERNEL_ATTR = "hcprune.kernel"
# a one-vector register tile narrower than this many pixels has too few independent
# accumulators to hide the FMA latency
SHORT_ROW = 6
# Accumulator floats per conv / pointwise register tile. On AVX-512 a 14-pixel x 2-vector
# tile (448 floats) ran a 128->128 3x3 conv at 28x28 in 3.2 ms on one Zen 5 core; capped
# to 7 pixels: 1.0 ms. (The cap was first explained by TVM's stack limit: LowerTVMBuiltin
# keeps only *global*-scope buffers under 1024 bytes (``runtime::kMaxStackAlloca``) as
# allocas. But the tiles were ``local``-scope buffers, which it always turns into workspace
# calls, capped or not; they are global-scope now (``rules.TILE_SCOPE``). The cap bounds
# register pressure.)
MAX_TILE_FLOATS = 255


@dataclass(frozen=True)
class ConvPlan:
    """Blocking of one conv2d.

    Attributes
    ----------
    groups : int
    ib, ob : int
        Input / output channel block (the input block up to one vector; the output block
        one to three vectors).
    tile_w : int
        Output pixels along W in one register tile.
    ow_padded : int
        Output width rounded up to ``tile_w``.
    depthwise : bool
    spatial_major : bool
        Loop order: spatial tiles outside the output-channel blocks.
    lanes : int
        The SIMD width the plan was made for (the rule keeps one vector per register).
    """

    groups: int
    ib: int
    ob: int
    tile_w: int
    ow_padded: int
    depthwise: bool
    spatial_major: bool = False
    lanes: int = 0



def choose_tile_w(ow: int, max_tile: int, min_tile: int = 3) -> int:
    """Register-tile width: the smallest padded width, larger tile on ties."""
    if ow <= max_tile:
        return ow
    best = None
    for t in range(max_tile, min_tile - 1, -1):
        padded = math.ceil(ow / t) * t
        if best is None or padded < best[0]:
            best = (padded, t)
    return best[1]


def _largest_divisor(n: int, limit: int) -> int:
    return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)


def plan_conv(ic: int, oc: int, groups: int, ow: int, lanes: int, registers: int,
              short_pointwise: bool = False) -> ConvPlan:
    """Choose channel blocks and the register tile for a conv2d on a ``lanes``-wide SIMD.

    The output block is two vectors when the group's output channels are a multiple of two
    vectors, one vector when they are a multiple of one (so channels aligned to the hardware
    profile's ``channel_multiple`` need no padding), else padded. An odd number of vectors
    on a short output row (one-vector tile under ``SHORT_ROW`` pixels, e.g. 360 channels at
    4x4 in a pruned ResNet-18) takes three vectors when they divide it: 12 accumulators
    instead of 4, measured 1.8x faster there. The input block is the largest divisor of the
    group's input channels up to ``lanes`` (never padded).

    ``short_pointwise`` (a 1x1 conv on a channel-blocked input with at most three vectors of
    input channels, e.g. MobileNet's expansions): one output vector and a pixel tile as wide
    as the registers allow; with so short a reduction the write-back dominates and the wide
    tile measured 1.2-1.5x faster than 4 pixels x 2 vectors (16->96 at 112x112, 24->144 at
    56x56), while it was slower on 3x3 and on long reductions.
    """
    icg, ocg = ic // groups, oc // groups
    if groups > 1 and groups == ic and groups == oc:
        # depthwise: vectorise over channels; accumulators = tile_w vectors
        t = choose_tile_w(ow, min(max(1, registers - 4), 8))
        return ConvPlan(groups, lanes, lanes, t, math.ceil(ow / t) * t, True, lanes=lanes)
    if short_pointwise and icg <= 3 * lanes and ocg % lanes == 0:
        ob = lanes
    elif ocg % (2 * lanes) == 0 or (ocg % lanes and ocg > lanes):
        ob = 2 * lanes
    elif ocg % (3 * lanes) == 0 and choose_tile_w(ow, registers - 2) < SHORT_ROW:
        ob = 3 * lanes
    else:
        ob = lanes
    nvec = ob // lanes
    max_tile = max(1, min((registers - nvec - 1) // nvec, MAX_TILE_FLOATS // ob))
    t = choose_tile_w(ow, max_tile)
    ib = _largest_divisor(icg, lanes)
    return ConvPlan(groups, ib, ob, t, math.ceil(ow / t) * t, False, lanes=lanes)


def with_loop_order(plan: ConvPlan, input_bytes: int, weight_bytes: int, l2_bytes: int,
                    input_factor: int = 4):
    """Pick the outer loop order: output-channel-block major (the weight block stays in L1/L2
    while the input streams) unless the input is ``input_factor`` times L2 or more and the
    weights of a group fit in half of it; then spatial-major, so each input tile is read once
    and reused by every output-channel block (NCHW input: measured 1.4x faster on 256->64 1x1
    at 56x56, 1.1-1.3x slower on the other ResNet layers, hence the factor 4; a blocked
    NCHW[b]c input read in place takes factor 1)."""
    spatial = input_bytes > input_factor * l2_bytes and weight_bytes <= l2_bytes // 2
    return replace(plan, spatial_major=bool(spatial))


def pack_weight(w: np.ndarray, plan: ConvPlan) -> np.ndarray:
    """OIHW weight -> ``[G, OCB, ICB, KH, KW, IB, OB]`` (depthwise: ``[CB, KH, KW, CBI]``)."""
    oc, icg, kh, kw = w.shape
    if plan.depthwise:
        cb = math.ceil(oc / plan.ob)
        out = np.zeros((cb * plan.ob, kh, kw), dtype=w.dtype)
        out[:oc] = w[:, 0]
        return np.ascontiguousarray(out.reshape(cb, plan.ob, kh, kw).transpose(0, 2, 3, 1))
    g = plan.groups
    ocg = oc // g
    ocb = math.ceil(ocg / plan.ob)
    icb = math.ceil(icg / plan.ib)
    out = np.zeros((g, ocb * plan.ob, icb * plan.ib, kh, kw), dtype=w.dtype)
    out[:, :ocg, :icg] = w.reshape(g, ocg, icg, kh, kw)
    out = out.reshape(g, ocb, plan.ob, icb, plan.ib, kh, kw)
    return np.ascontiguousarray(out.transpose(0, 1, 3, 5, 6, 4, 2))


def i64(*dims):
    """int64 shape (Relax's legalized kernels use int64 shapes; FuseTIR needs them equal)."""
    return tuple(tirx.IntImm("int64", int(d)) for d in dims)


_BLOCKED = re.compile(r"^NCHW(\d+)c$")


def layout_block(layout: str) -> int | None:
    """Channel block ``b`` of an ``NCHW{b}c`` layout, None for NCHW/NHWC."""
    m = _BLOCKED.match(str(layout))
    return int(m.group(1)) if m else None


_BLOCKED_KERNEL = re.compile(r"OIHW(\d+)o")


def kernel_block(kernel_layout: str) -> int | None:
    """Output-channel block ``b`` of an ``OIHW{b}o`` kernel layout, None otherwise."""
    m = _BLOCKED_KERNEL.fullmatch(str(kernel_layout))
    return int(m.group(1)) if m else None


def _dims(data, layout: str):
    shape = [int(x) for x in data.shape]
    if layout == "NHWC":
        n, h, w, c = shape
    elif layout_block(layout):
        n, cb, h, w, b = shape
        c = cb * b
    else:
        n, c, h, w = shape
    return n, c, h, w


def _read(data, layout: str, nn, c, y, x, block=None):
    """``data`` at channel ``c``; ``block=(first_block, cb, ci, width)`` names ``c`` as
    ``first_block * width + cb * width + ci`` so that an ``NCHW{width}c`` input is read
    without division."""
    if layout == "NHWC":
        return data[nn, y, x, c]
    b = layout_block(layout)
    if b and block is not None and block[3] == b:
        first, cb, ci, _ = block
        return data[nn, first + cb, y, x, ci]
    if b:
        return data[nn, c // b, y, x, c % b]
    return data[nn, c, y, x]


def _guarded(val, conds: list, y, x, hw, pad_tl, padded_hw):
    """``val`` where the padded coordinates ``(y, x)`` fall inside the ``hw`` image (and
    ``conds`` hold), else 0; no guard where the padding cannot be reached."""
    (h, w), (pt, pl), (hp, wp) = hw, pad_tl, padded_hw
    conds = list(conds)
    if pt or hp - pt > h:
        conds.extend([y >= 0, y < h])
    if pl or wp - pl > w:
        conds.extend([x >= 0, x < w])
    if not conds:
        return val
    return tirx.if_then_else(tirx.all(*conds), val, tirx.const(0.0, val.dtype))


def _out_shape(layout: str, n, c, oh, ow):
    if layout == "NHWC":
        return i64(n, oh, ow, c)
    b = layout_block(layout)
    return i64(n, c // b, oh, ow, b) if b else i64(n, c, oh, ow)


def _write(layout: str, name: str, n, c, oh, ow, value, blocked=None):
    """The kernel's output block: ``value(nn, c, y, x)`` written in ``layout``.

    ``blocked=(acc, ob)``: the accumulator ``acc[nn, cb, y, x, co]`` holds ``ob`` channels
    per block (a multiple of the layout's block); an ``NCHW{b}c`` output then reads it
    without division (``value`` is used otherwise)."""
    shape = _out_shape(layout, n, c, oh, ow)
    if layout == "NHWC":
        return te.compute(shape, lambda nn, y, x, ch: value(nn, ch, y, x), name=name)
    b = layout_block(layout)
    if b and blocked is not None and blocked[1] % b == 0:
        acc, ob = blocked
        k = ob // b
        return te.compute(
            shape, lambda nn, cb, y, x, ci: acc(nn, cb // k, y, x, (cb % k) * b + ci)
            if k > 1 else acc(nn, cb, y, x, ci), name=name)
    if b:
        return te.compute(shape, lambda nn, cb, y, x, ci: value(nn, cb * b + ci, y, x),
                          name=name)
    return te.compute(shape, value, name=name)


def conv2d_nchwc_te(data, wpack, *, strides, padding, dilation, oc, plan: ConvPlan,
                    layout: str = "NCHW", out_layout: str | None = None):
    """TE compute of the blocked grouped conv2d; returns the output in ``out_layout``.

    ``layout`` is the data layout, ``"NCHW"`` (ONNX), ``"NHWC"`` (TFLite) or ``NCHW{b}c``;
    ``out_layout`` (default: ``layout``) the output's. The kernel is the same, only the
    packing reads and the write-back differ.
    """
    out_layout = out_layout or layout

    n, ic, h, w = _dims(data, layout)
    g = plan.groups
    _, ocb_n, icb_n, kh, kw, ib, ob = (int(x) for x in wpack.shape)
    sh, sw = strides
    dh, dw = dilation
    pt, pl = padding[0], padding[1]
    icg, ocg = ic // g, oc // g
    oh = (h + padding[0] + padding[2] - (kh - 1) * dh - 1) // sh + 1
    ow = (w + padding[1] + padding[3] - (kw - 1) * dw - 1) // sw + 1
    owp = plan.ow_padded
    hp = (oh - 1) * sh + (kh - 1) * dh + 1
    wp = (owp - 1) * sw + (kw - 1) * dw + 1

    def _pack(nn, gg, cb, hh, ww, ci):
        c = cb * ib + ci
        y, x = hh - pt, ww - pl
        conds = [c < icg] if icb_n * ib != icg else []
        aligned = icg % ib == 0 and (g == 1 or icg % (layout_block(layout) or 1) == 0)
        first = gg * (icg // ib) if g > 1 else 0
        val = _read(data, layout, nn, gg * icg + c if g > 1 else c, y, x,
                    block=(first, cb, ci, ib) if aligned else None)
        return _guarded(val, conds, y, x, (h, w), (pt, pl), (hp, wp))

    if (layout_block(layout) == ib and g == 1 and not any(padding) and hp <= h and wp <= w):
        # blocked input already in the kernel's packed form, nothing to pad: read it in place
        def dpack_at(nn, _gg, cb, yy, xx, ci):
            return data[nn, cb, yy, xx, ci]
    else:
        dpack = te.compute(i64(n, g, icb_n, hp, wp, ib), _pack, name="hcp_pack")

        def dpack_at(nn, gg, cb, yy, xx, ci):
            return dpack[nn, gg, cb, yy, xx, ci]

    rc = te.reduce_axis(i64(0, icb_n), name="rc")
    ry = te.reduce_axis(i64(0, kh), name="ry")
    rx = te.reduce_axis(i64(0, kw), name="rx")
    ri = te.reduce_axis(i64(0, ib), name="ri")
    cpack = te.compute(
        i64(n, g, ocb_n, oh, owp, ob),
        lambda nn, gg, cb, y, x, co: te.sum(
            dpack_at(nn, gg, rc, y * sh + ry * dh, x * sw + rx * dw, ri)
            * wpack[gg, cb, rc, ry, rx, ri, co],
            axis=[rc, ry, rx, ri],
        ),
        name="hcp_conv",
        attrs={"hcp_tile": plan.tile_w, "hcp_spatial_major": int(plan.spatial_major),
               "hcp_tile_writeback": int(g == 1 or ocg % ob == 0), "hcp_lanes": plan.lanes},
    )

    def _unpack(nn, c, y, x):
        if g == 1:
            return cpack[nn, 0, c // ob, y, x, c % ob]
        cg = c % ocg
        return cpack[nn, c // ocg, cg // ob, y, x, cg % ob]

    blocked = ((lambda nn, cb, y, x, co: cpack[nn, 0, cb, y, x, co]), ob) if g == 1 else None
    return _write(out_layout, "hcp_unpack", n, oc, oh, ow, _unpack, blocked)


def depthwise_nchwc_te(data, wpack, *, strides, padding, dilation, plan: ConvPlan,
                       layout: str = "NCHW"):
    """TE compute of the channel-vectorised depthwise conv2d; returns the output in
    ``layout`` (``"NCHW"`` or ``"NHWC"``)."""
    n, c, h, w = _dims(data, layout)
    cb_n, kh, kw, cbi = (int(x) for x in wpack.shape)
    sh, sw = strides
    dh, dw = dilation
    pt, pl = padding[0], padding[1]
    oh = (h + padding[0] + padding[2] - (kh - 1) * dh - 1) // sh + 1
    ow = (w + padding[1] + padding[3] - (kw - 1) * dw - 1) // sw + 1
    owp = plan.ow_padded
    hp = (oh - 1) * sh + (kh - 1) * dh + 1
    wp = (owp - 1) * sw + (kw - 1) * dw + 1

    def _pack(nn, cb, hh, ww, ci):
        ch = cb * cbi + ci
        y, x = hh - pt, ww - pl
        conds = [ch < c] if cb_n * cbi != c else []
        val = _read(data, layout, nn, ch, y, x, block=None if conds else (0, cb, ci, cbi))
        return _guarded(val, conds, y, x, (h, w), (pt, pl), (hp, wp))

    dpack = te.compute(i64(n, cb_n, hp, wp, cbi), _pack, name="hcp_dwpack")
    ry = te.reduce_axis(i64(0, kh), name="ry")
    rx = te.reduce_axis(i64(0, kw), name="rx")
    cpack = te.compute(
        i64(n, cb_n, oh, owp, cbi),
        lambda nn, cb, y, x, ci: te.sum(
            dpack[nn, cb, y * sh + ry * dh, x * sw + rx * dw, ci] * wpack[cb, ry, rx, ci],
            axis=[ry, rx],
        ),
        name="hcp_dwconv",
        attrs={"hcp_tile": plan.tile_w},
    )
    return _write(layout, "hcp_dwunpack", n, c, oh, ow,
                  lambda nn, ch, y, x: cpack[nn, ch // cbi, y, x, ch % cbi],
                  ((lambda nn, cb, y, x, ci: cpack[nn, cb, y, x, ci]), cbi))


def plan_depthwise_rows(ow: int, lanes: int, max_vectors: int = 8) -> tuple[int, int]:
    """Row-vectorised depthwise: (padded output width, vectors per register tile)."""
    nvec = math.ceil(ow / lanes)
    per_tile = max(d for d in range(1, min(nvec, max_vectors) + 1) if nvec % d == 0)
    return nvec * lanes, per_tile


def depthwise_rows_te(data, weight, *, strides, padding, dilation, lanes: int, per_tile: int,
                      owp: int):
    """Depthwise conv2d on NCHW vectorised along the output row (no channel packing).

    ``hcp_dwpad`` pads the input (contiguous row copies), ``hcp_dwrow`` computes
    ``[N, C, OH, OWp]`` with ``OWp`` the output width rounded up to whole vectors, and
    ``hcp_dwcrop`` writes the NCHW output (where the epilogue is inlined). ``weight`` is
    ``[C, KH, KW]``.
    """
    n, c, h, w = (int(x) for x in data.shape)
    _, kh, kw = (int(x) for x in weight.shape)
    sh, sw = strides
    dh, dw = dilation
    pt, pl = padding[0], padding[1]
    oh = (h + padding[0] + padding[2] - (kh - 1) * dh - 1) // sh + 1
    ow = (w + padding[1] + padding[3] - (kw - 1) * dw - 1) // sw + 1
    hp = (oh - 1) * sh + (kh - 1) * dh + 1
    wp = (owp - 1) * sw + (kw - 1) * dw + 1

    def _pad(nn, ch, hh, ww):
        y, x = hh - pt, ww - pl
        return _guarded(data[nn, ch, y, x], [], y, x, (h, w), (pt, pl), (hp, wp))

    pad = te.compute(i64(n, c, hp, wp), _pad, name="hcp_dwpad")
    ry = te.reduce_axis(i64(0, kh), name="ry")
    rx = te.reduce_axis(i64(0, kw), name="rx")
    row = te.compute(
        i64(n, c, oh, owp),
        lambda nn, ch, y, x: te.sum(
            pad[nn, ch, y * sh + ry * dh, x * sw + rx * dw] * weight[ch, ry, rx], axis=[ry, rx]
        ),
        name="hcp_dwrow",
        attrs={"hcp_tile": per_tile, "hcp_lanes": lanes},
    )
    return te.compute(
        i64(n, c, oh, ow), lambda nn, ch, y, x: row[nn, ch, y, x], name="hcp_dwcrop"
    )


def kernel_call(bb: relax.BlockBuilder, name: str, te_fn, args, arg_shapes, dtypes):
    """Create the PrimFunc from TE, register it and return the call_tir expression."""
    placeholders = [
        te.placeholder(i64(*shape), dtype, name=f"arg{i}")
        for i, (shape, dtype) in enumerate(zip(arg_shapes, dtypes, strict=True))
    ]
    out = te_fn(*placeholders)
    func = te.create_prim_func([*placeholders, out])
    func = func.with_attr("op_pattern", OUT_EWISE_FUSABLE).with_attr(KERNEL_ATTR, name)
    func = func.without_attr("global_symbol")
    gvar = bb.add_func(func, name)
    out_ty = relax.TensorType([int(s) for s in out.shape], out.dtype)
    return relax.call_tir(gvar, args, out_ty)
