"""Dense (matmul with a constant right operand) kernel with the weight packed at compile time.

``matmul(x[..., M, K], W[K, N])`` with constant ``W`` (ONNX Gemm after FoldConstant folds its
``permute_dims``) becomes three blocks: ``hcp_dense`` computes ``[..., M, NB, nb]`` against
``W`` packed to ``[NB, K, nb]`` (``nb`` = one or two vectors, so each output block reads one
contiguous weight panel), ``hcp_dense_unpack`` writes ``[..., M, N]`` (where the fused bias /
activation epilogue is inlined by the rule in :mod:`tvm_hcprune.backend.cpu.rules`).
"""

from __future__ import annotations

import math

import numpy as np
from tvm import relax, te, tirx

from tvm_hcprune.backend.cpu.conv2d_nchwc import i64, kernel_call
from tvm_hcprune.utils.relax import const_value, dtype_of, static_shape

TILE_ATTR = "hcp_tile"
# accumulator floats per register tile: on AVX-512 at M=128, 8 rows x 2 vectors ran as fast
# as 12 rows and 5-15% faster than 14 (register pressure), Zen 5
MAX_DENSE_TILE_FLOATS = 256


def plan_dense(m: int, n: int, lanes: int, registers: int) -> tuple[int, int, int]:
    """(output-column block, rows per register tile, rows computed).

    The column block is one or two vectors. The tile's ``rows x vectors`` accumulators plus
    one weight register per vector and two spare registers fit the register file (and at
    most ``MAX_DENSE_TILE_FLOATS`` accumulator floats); among
    those the rows minimise the instructions per reduction step over all tiles (FMAs plus
    weight loads and broadcasts: ``ceil(m / rows) * (rows * vectors + vectors + rows)``).
    When ``rows`` does not divide ``m`` the kernel computes ``rows computed`` rows (the last
    tile's extra rows repeat row ``m - 1`` and are never stored): at M=128 on AVX-512 an
    8-row tile ran 768x3072 1.3-1.5x faster than the 4 rows a divisor of 128 allowed with
    seven, and on AVX2 six padded rows beat four by ~10% (Zen 5, 2 threads)."""
    nb = 2 * lanes if (n % (2 * lanes) == 0 or (n % lanes and n > lanes)) else lanes
    nvec = nb // lanes
    max_rows = max(1, min(m, (registers - nvec - 2) // nvec, MAX_DENSE_TILE_FLOATS // nb))

    def cost(r):
        return math.ceil(m / r) * (r * nvec + nvec + r)

    rows = min(range(1, max_rows + 1), key=lambda r: (cost(r), -r))
    return nb, rows, math.ceil(m / rows) * rows


def pack_dense_weight(w: np.ndarray, nb: int) -> np.ndarray:
    """``[K, N]`` -> ``[ceil(N/nb), K, nb]`` (zero-padded columns)."""
    k, n = w.shape
    nblk = math.ceil(n / nb)
    out = np.zeros((k, nblk * nb), dtype=w.dtype)
    out[:, :n] = w
    return np.ascontiguousarray(out.reshape(k, nblk, nb).transpose(1, 0, 2))


def dense_te(x, wpack, *, n: int, rows: int, nb: int | None = None, lanes: int = 0,
             m_pad: int | None = None):
    """TE compute of ``x @ W``; returns the ``[..., M, N]`` output.

    ``wpack`` is either the constant weight packed to ``[NB, K, nb]`` or, for the batched
    matmuls of attention (both operands computed at run time), the right operand
    ``[..., K, N]`` itself, which is then packed inside the kernel (block ``hcp_bmm_pack``).
    """
    xshape = [int(s) for s in x.shape]
    lead, (m, k) = xshape[:-2], xshape[-2:]
    if nb is None:
        nblk, _, nb = (int(s) for s in wpack.shape)

        def _w(pre, kk, jb, ji):
            return wpack[jb, kk, ji]
    else:
        nblk = math.ceil(n / nb)
        b = wpack

        def _pack(*idx):
            *pre, jb, kk, ji = idx
            j = jb * nb + ji
            val = b[(*pre, kk, j)]
            if nblk * nb == n:
                return val
            return tirx.if_then_else(j < n, val, tirx.const(0.0, b.dtype))

        bp = te.compute(i64(*lead, nblk, k, nb), _pack, name="hcp_bmm_pack")

        def _w(pre, kk, jb, ji):
            return bp[(*pre, jb, kk, ji)]

    rk = te.reduce_axis(i64(0, k), name="rk")
    m_pad = m if m_pad is None else m_pad

    def _row(mm):
        # rows past M (padding up to a whole register tile) recompute row M-1; never stored
        return mm if m_pad == m else tirx.min(mm, tirx.const(m - 1, "int64"))

    def _dense(*idx):
        *pre, mm, jb, ji = idx
        return te.sum(x[(*pre, _row(mm), rk)] * _w(pre, rk, jb, ji), axis=rk)

    cpack = te.compute(
        i64(*lead, m_pad, nblk, nb), _dense, name="hcp_dense",
        attrs={TILE_ATTR: rows, "hcp_lanes": lanes}
    )

    def _unpack(*idx):
        *pre, mm, j = idx
        return cpack[(*pre, mm, j // nb, j % nb)]

    return te.compute(i64(*lead, m, n), _unpack, name="hcp_dense_unpack")


def rewrite_matmul(rewriter, call):
    """Replacement ``call_tir`` for ``matmul(x, const W[K, N])`` in float32, or None."""
    x, w = call.args
    wv = const_value(w)
    xshape = static_shape(x)
    if wv is None:
        return _rewrite_batched(rewriter, call)
    if xshape is None or wv.ndim != 2 or len(xshape) < 2:
        return None
    if dtype_of(x) != "float32" or wv.dtype != np.float32:
        return None
    out_dtype = call.attrs.out_dtype
    if out_dtype is not None and str(out_dtype) not in ("", "void", "float32"):
        return None
    k, n = wv.shape
    if xshape[-1] != k:
        return None
    m = xshape[-2]
    nb, rows, m_pad = plan_dense(m, n, rewriter.lanes, rewriter.registers)
    wpack = pack_dense_weight(wv, nb)

    def fn(xx, wp):
        return dense_te(xx, wp, n=n, rows=rows, lanes=rewriter.lanes, m_pad=m_pad)

    return kernel_call(
        rewriter.builder_, "hcp_dense", fn, [x, relax.const(wpack)],
        [xshape, wpack.shape], ["float32", "float32"],
    )


def _rewrite_batched(rewriter, call):
    """``matmul(A[..., M, K], B[..., K, N])`` with both operands computed at run time
    (attention's QK^T and PV) and equal batch dimensions, or None."""
    a, b = call.args
    ashape, bshape = static_shape(a), static_shape(b)
    if ashape is None or bshape is None or len(ashape) < 2 or len(ashape) != len(bshape):
        return None
    if ashape[:-2] != bshape[:-2] or ashape[-1] != bshape[-2]:
        return None
    if dtype_of(a) != "float32" or dtype_of(b) != "float32":
        return None
    out_dtype = call.attrs.out_dtype
    if out_dtype is not None and str(out_dtype) not in ("", "void", "float32"):
        return None
    m, n = ashape[-2], bshape[-1]
    nb, rows, m_pad = plan_dense(m, n, rewriter.lanes, rewriter.registers)

    def fn(aa, bb):
        return dense_te(aa, bb, n=n, rows=rows, nb=nb, lanes=rewriter.lanes, m_pad=m_pad)

    return kernel_call(
        rewriter.builder_, "hcp_bmm", fn, [a, b], [ashape, bshape], ["float32", "float32"]
    )
