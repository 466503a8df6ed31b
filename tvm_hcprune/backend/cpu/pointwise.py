"""Pixel-vectorised 1x1 convolution (a GEMM) on NCHW, without any layout packing.

A 1x1, stride-1, unpadded, ungrouped conv2d on NCHW is ``out[o, p] = sum_i W[o, i] x[i, p]``
over the flattened pixels ``p = y * W + x``. Rows of ``x`` and of ``out`` are contiguous in
NCHW, so the kernel reads the input and writes the output in place: no packing of the input
to NCHWc and no transposing write-back (the channel-blocked kernel of
:mod:`tvm_hcprune.backend.cpu.conv2d_nchwc` needs both around every conv). Blocks:

``hcp_pwpad`` (only when W is not a multiple of the vector)
    copies the input to ``[N, IC, H, Wp]`` with zero columns appended,
``hcp_pw``
    ``[N, OCp, H, Wp]`` accumulators; the register tile is ``rows`` output channels x
    ``ty`` rows x ``vecs`` vectors of pixels (FMA of a broadcast weight with a vector of
    pixels); the weight is packed once at compile time to ``[OCB, IC, rows]`` so a tile's
    weights (``IC * rows`` floats) stay in L1 while the pixel tiles stream,
``hcp_pwout``
    the NCHW output, where the fused epilogue (bias, activation, residual add) is inlined;
    it reads the accumulators at the same (n, c, y, x), so the rule's per-tile write-back
    covers exactly the tile's pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from tvm import te, tirx

from tvm_hcprune.backend.cpu.conv2d_nchwc import MAX_TILE_FLOATS, i64

ROWS_ATTR = "hcp_rows"
TY_ATTR = "hcp_ty"
VECS_ATTR = "hcp_vecs"
LANES_ATTR = "hcp_lanes"
ORDER_ATTR = "hcp_spatial_major"


@dataclass(frozen=True)
class PointwisePlan:
    """Register tile of the pointwise kernel: ``rows`` output channels x ``ty`` image rows x
    ``vecs`` vectors of ``lanes`` pixels along W.

    Attributes
    ----------
    rows, ty, vecs, lanes : int
    oc_padded, w_padded : int
        Output channels / width rounded up to whole tiles.
    spatial_major : bool
        Outer loop over pixel tiles, output-channel blocks inside (each input tile read
        once; for inputs larger than L2 with small weights), else the reverse (each weight
        block stays in L1 while the pixels stream).
    """

    rows: int
    ty: int
    vecs: int
    lanes: int
    oc_padded: int
    w_padded: int
    spatial_major: bool = False


def plan_pointwise(oc: int, h: int, w: int, lanes: int, registers: int, ic: int = 0,
                   l2_bytes: int = 512 * 1024) -> PointwisePlan:
    """Tile with ``rows * ty * vecs`` accumulators, at most ``registers - 4`` (and under
    ``MAX_TILE_FLOATS`` floats, so the tile stays in registers).

    Pixels: two vectors along W when the (vector-padded) row holds an even number of them,
    else one vector on two image rows when H is even, else one vector. Rows: the largest
    divisor of ``oc`` that fits (channels aligned to the hardware profile's multiple divide
    exactly), else ``oc`` is padded.
    """
    nvec = math.ceil(w / lanes)
    vecs, ty = (2, 1) if nvec % 2 == 0 else ((1, 2) if h % 2 == 0 else (1, 1))
    max_rows = max(1, min((registers - 4) // (vecs * ty), MAX_TILE_FLOATS // (vecs * ty * lanes)))
    rows = next((r for r in range(max_rows, 2, -1) if oc % r == 0), None)
    if rows is None:
        rows = min(oc, max_rows) if oc <= max_rows else min(max_rows, 4)
    # measured on 1x1 layers at 112 and 56 (2 threads): pixel-tile-major is 1.2-1.5x
    # faster when the input overflows half of L2 and the weights are small, except for wide
    # expansions at 112x112, where the write stream into many large planes dominates (1.5x
    # slower)
    spatial = (4 * ic * h * w > l2_bytes // 2 and 4 * ic * oc <= l2_bytes // 16
               and (oc <= ic or h * w <= 4096))
    return PointwisePlan(rows, ty, vecs, lanes, math.ceil(oc / rows) * rows, nvec * lanes,
                         spatial)


def prefer_pointwise(ic: int, oc: int, h: int, w: int, lanes: int = 8,
                     registers: int = 16) -> bool:
    """Whether the pixel-vectorised kernel beats the channel-blocked one on this 1x1 conv.

    Measured on MobileNetV2's, PP-LCNet's and ResNet-50's 1x1 layers (AVX2): it wins where
    the output is large relative to the work per output (few input channels, or maps of
    14x14 and more with ``oc >= ic``, or any map at least 56 wide: no packing, vector
    stores instead of the transposing write-back), unless its weight-major loop re-reads a
    large input once per block of ``rows`` output channels (ResNet-50's 64->256 at 56x56 and
    128->512 at 28x28 ran 1.2-1.7x slower than the channel-blocked kernel); on 7x7 maps and
    channel reductions at 28x28 and below the channel-blocked tile is faster.
    """
    if h * w < 196 or (oc < ic and w < 56):
        return False
    plan = plan_pointwise(oc, h, w, lanes, registers, ic=ic)
    reread = (plan.oc_padded // plan.rows) * 4 * ic * h * w
    return ic <= 32 or plan.spatial_major or reread <= 8 * 2**20


def pack_pointwise_weight(w: np.ndarray, plan: PointwisePlan) -> np.ndarray:
    """``[OC, IC, 1, 1]`` -> ``[OCp / rows, IC, rows]`` (zero rows beyond ``OC``)."""
    oc, ic = w.shape[:2]
    out = np.zeros((plan.oc_padded, ic), dtype=w.dtype)
    out[:oc] = w[:, :, 0, 0]
    return np.ascontiguousarray(out.reshape(-1, plan.rows, ic).transpose(0, 2, 1))


def pointwise_te(data, wpack, *, oc: int, plan: PointwisePlan):
    """TE compute of the pointwise conv; returns the ``[N, OC, H, W]`` output."""
    n, ic, h, w = (int(s) for s in data.shape)
    wp, rows = plan.w_padded, plan.rows
    if wp != w:
        zero = tirx.const(0.0, data.dtype)
        src = te.compute(
            i64(n, ic, h, wp),
            lambda nn, i, y, x: tirx.if_then_else(x < w, data[nn, i, y, x], zero),
            name="hcp_pwpad",
        )
    else:
        src = data
    rk = te.reduce_axis(i64(0, ic), name="rk")
    acc = te.compute(
        i64(n, plan.oc_padded, h, wp),
        lambda nn, o, y, x: te.sum(src[nn, rk, y, x] * wpack[o // rows, rk, o % rows], axis=rk),
        name="hcp_pw",
        attrs={ROWS_ATTR: rows, TY_ATTR: plan.ty, VECS_ATTR: plan.vecs, LANES_ATTR: plan.lanes,
               ORDER_ATTR: int(plan.spatial_major)},
    )
    return te.compute(i64(n, oc, h, w), lambda nn, o, y, x: acc[nn, o, y, x], name="hcp_pwout")
