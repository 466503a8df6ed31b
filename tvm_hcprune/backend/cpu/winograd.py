"""Winograd F(2x2, 3x3) conv2d on the channel-blocked layout (``NCHW{b}c`` in and out).

A 3x3, stride-1, ``pad=1`` conv computes each 2x2 output tile from a 4x4 input tile with 16
multiplies per (input, output) channel pair instead of 36 (Lavin & Gray, "Fast Algorithms
for Convolutional Neural Networks", 2016). The kernel has three blocks, named so that the
CPU rule (:func:`tvm_hcprune.backend.cpu.rules.schedule_winograd`) finds them:

``hcp_wgv``
    the input transform ``V = B^T d B`` of every 4x4 tile, ``[16, ICB, TH, TWp, IB]`` (the
    zero padding read as guarded loads),
``hcp_wgm``
    16 independent GEMMs over the input channels, ``M[e] = V[e] . U[e]``, against the weight
    transformed once at compile time, ``U = G g G^T`` (numpy, float64, then float32),
    packed to ``[16, OCB, ICB, IB, OB]``,
``hcp_wgy``
    the output transform ``Y = A^T M A`` into ``NCHW{b}c``, where FuseOps' elementwise
    epilogue (bias, ReLU, residual add) is inlined by the rule.

The transforms are written with additions only (the matrices' entries are 0 and +-1): the
element ``e = 4*xi + nu`` selects its combination through ``Select`` chains that fold to one
expression once the rule unrolls ``e``. With F(2x2, 3x3) the float32 result differs from
direct convolution by a few ulp of the output's magnitude (the transformed weights hold
exact halves).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from tvm import te, tirx

from tvm_hcprune.backend.cpu.conv2d_nchwc import choose_tile_w, i64, plan_conv

__all__ = ["WinogradPlan", "plan_winograd", "prefer_winograd", "winograd_geometry", "winograd_te",
           "winograd_weight"]

# F(2x2, 3x3): G (4x3) transforms the filter; B^T and A^T are applied by _bt/_at below
_G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])
# the tile elements of one 4x4 transformed tile
TILE_ELEMENTS = 16
SPATIAL_ATTR = "hcp_spatial_major"
TILE_ATTR = "hcp_tile"
LANES_ATTR = "hcp_lanes"


@dataclass(frozen=True)
class WinogradPlan:
    """Blocking of one Winograd conv.

    Attributes
    ----------
    ib, ob : int
        Input channel block (the layout's block) and output channels per register tile.
    tile_w : int
        Transformed tiles along W per register tile.
    th, tw_padded : int
        Tile rows, and tile columns rounded up to ``tile_w``.
    spatial_major : bool
        One tile row at a time (its input transform kept in cache, then every output
        channel block) rather than each output channel block over the whole image after one
        input-transform pass.
    lanes : int
    """

    ib: int
    ob: int
    tile_w: int
    th: int
    tw_padded: int
    spatial_major: bool
    lanes: int


def plan_winograd(ic: int, oc: int, h: int, w: int, block: int, lanes: int, registers: int,
                  l2_bytes: int) -> WinogradPlan:
    """The register tile of the GEMM stage (as a ``tw``-wide direct conv's: output vectors
    and tile width from :func:`~tvm_hcprune.backend.cpu.conv2d_nchwc.plan_conv`) and the
    loop order: spatial-major when the transformed weights fit in half of L2 (they are then
    re-read from cache for every tile row), else output-channel-block major."""
    th, tw = math.ceil(h / 2), math.ceil(w / 2)
    conv = plan_conv(ic, oc, 1, tw, lanes, registers)
    tile = choose_tile_w(tw, conv.tile_w)
    u_bytes = 4 * TILE_ELEMENTS * ic * math.ceil(oc / conv.ob) * conv.ob
    return WinogradPlan(block, conv.ob, tile, th, math.ceil(tw / tile) * tile,
                        u_bytes <= l2_bytes // 2, lanes)


# Winograd pays where the GEMM stage's 16 products per tile replace 36; measured on a Zen 5
# core pair (AVX-512, 2 threads) against the direct blocked kernel, each kernel timed alone:
# 64->64 at 56x56 459 -> 263 us, 128->128 at 28x28 534 -> 246 us, 256->256 at 14x14 511 ->
# 291 us. But the transformed weight is 16/9 the size, read once per image: at 7x7 (16
# tiles per weight element) the model ran slower end to end (ResNet-18 6.2 -> 7.6 ms with
# its three 512->512 7x7 layers on Winograd), so a conv needs this many tiles
WINOGRAD_MIN_TILES = 32
WINOGRAD_MIN_CHANNELS = 16


def winograd_geometry(kh: int, kw: int, strides, dilation, padding, groups: int) -> bool:
    """Whether a conv has the geometry F(2x2, 3x3) computes: a 3x3 kernel, stride 1,
    dilation 1, one pixel of padding on every side (``padding`` as 2 or 4 numbers), one
    group.

    Examples
    --------
    >>> winograd_geometry(3, 3, [1, 1], [1, 1], [1, 1], 1)
    True
    >>> winograd_geometry(3, 3, [2, 2], [1, 1], [1, 1, 1, 1], 1)
    False
    """
    pad = [int(p) for p in padding]
    pad = pad * 2 if len(pad) == 2 else pad
    return ((int(kh), int(kw)) == (3, 3) and [int(s) for s in strides] == [1, 1]
            and [int(d) for d in dilation] == [1, 1] and pad == [1, 1, 1, 1]
            and int(groups) == 1)


def prefer_winograd(ic: int, oc: int, h: int, w: int, lanes: int) -> bool:
    """Whether the Winograd kernel is expected to beat the direct one for this conv: input
    channels whole vectors, at least ``WINOGRAD_MIN_CHANNELS`` each way, and at least
    ``WINOGRAD_MIN_TILES`` 2x2 output tiles (enough reuse of the larger transformed
    weight)."""
    return (ic % lanes == 0 and min(ic, oc) >= WINOGRAD_MIN_CHANNELS
            and math.ceil(h / 2) * math.ceil(w / 2) >= WINOGRAD_MIN_TILES)


def winograd_weight(w: np.ndarray, plan: WinogradPlan) -> np.ndarray:
    """OIHW 3x3 weight -> ``U = G g G^T`` packed to ``[16, OCB, ICB, IB, OB]`` (zeros past
    ``OC``)."""
    oc, ic, kh, kw = w.shape
    if (kh, kw) != (3, 3):
        raise ValueError(f"Winograd F(2x2, 3x3) needs a 3x3 kernel, got {kh}x{kw}")
    u = np.einsum("ak,oikl,bl->aboi", _G, w.astype(np.float64), _G)  # [4, 4, OC, IC]
    u = u.reshape(TILE_ELEMENTS, oc, ic)
    ocb = math.ceil(oc / plan.ob)
    out = np.zeros((TILE_ELEMENTS, ocb * plan.ob, ic), dtype=np.float64)
    out[:, :oc] = u
    out = out.reshape(TILE_ELEMENTS, ocb, plan.ob, ic // plan.ib, plan.ib)
    return np.ascontiguousarray(out.transpose(0, 1, 3, 4, 2).astype(np.float32))


def _bt(k, f):
    """Row ``k`` of ``B^T d`` for the 4 values ``f(0..3)``."""
    v = [f(i) for i in range(4)]
    return tirx.Select(k == 0, v[0] - v[2], tirx.Select(
        k == 1, v[1] + v[2], tirx.Select(k == 2, v[2] - v[1], v[1] - v[3])))


def _at(k, f):
    """Row ``k`` of ``A^T m`` for the 4 values ``f(0..3)``."""
    v = [f(i) for i in range(4)]
    return tirx.Select(k == 0, v[0] + v[1] + v[2], v[1] - v[2] - v[3])


def winograd_te(data, upack, *, oc: int, plan: WinogradPlan):
    """TE compute of the Winograd conv of an ``NCHW{b}c`` input (``b == plan.ib``), 3x3,
    stride 1, one pixel of zero padding on every side; returns ``NCHW{b}c`` output."""
    n, icb_n, h, w, b = (int(x) for x in data.shape)
    _, ocb_n, _, ib, ob = (int(x) for x in upack.shape)
    th, twp = plan.th, plan.tw_padded
    zero = tirx.const(0.0, "float32")

    def d(nn, cb, ty, tx, a, c, ci):
        """Input pixel ``(a, c)`` of tile ``(ty, tx)``, zero outside the image; a bound is
        tested only where some tile can cross it (row 0 of a tile the top, the last rows
        the bottom when the tiles overhang), which keeps the expression small."""
        y, x = ty * 2 - 1 + a, tx * 2 - 1 + c
        conds = ([y >= 0] if a == 0 else []) + ([y < h] if 2 * th - 3 + a >= h else [])
        conds += ([x >= 0] if c == 0 else []) + ([x < w] if 2 * twp - 3 + c >= w else [])
        val = data[nn, cb, y, x, ci]
        return tirx.if_then_else(tirx.all(*conds), val, zero) if conds else val

    v = te.compute(
        i64(n, TILE_ELEMENTS, icb_n, th, twp, ib),
        lambda nn, e, cb, ty, tx, ci: _bt(e // 4, lambda a: _bt(
            e % 4, lambda c: d(nn, cb, ty, tx, a, c, ci))),
        name="hcp_wgv")
    rc = te.reduce_axis(i64(0, icb_n), name="rc")
    ri = te.reduce_axis(i64(0, ib), name="ri")
    m = te.compute(
        i64(n, TILE_ELEMENTS, ocb_n, th, twp, ob),
        lambda nn, e, cb, ty, tx, co: te.sum(v[nn, e, rc, ty, tx, ri] * upack[e, cb, rc, ri, co],
                                             axis=[rc, ri]),
        name="hcp_wgm",
        attrs={TILE_ATTR: plan.tile_w, SPATIAL_ATTR: int(plan.spatial_major),
               LANES_ATTR: plan.lanes})
    k = ob // b
    return te.compute(
        i64(n, oc // b, h, w, b),
        lambda nn, c, y, x, ci: _at(y % 2, lambda a: _at(x % 2, lambda e: m[
            nn, a * 4 + e, c // k, y // 2, x // 2, (c % k) * b + ci])),
        name="hcp_wgy")
