"""Host-side operators: pack NCHW/OIHW tensors, run conv2d/dense on the simulator, unpack.

Also the numpy int32 references that the simulator must match bit for bit.
"""

from __future__ import annotations

import numpy as np

from tvm_hcprune.errors import HCPruneError
from tvm_hcprune.hardware.vta import VTAConfig
from tvm_hcprune.vta.codegen import (
    Conv2DSchedule,
    Conv2DShape,
    DenseSchedule,
    Epilogue,
    conv2d_packed,
    default_conv2d_schedule,
    default_dense_schedule,
    dense_packed,
)
from tvm_hcprune.vta.runtime import CommandQueue
from tvm_hcprune.vta.schedule_db import tuned_conv2d_schedule, tuned_dense_schedule


def _pad_to(x: np.ndarray, axis: int, multiple: int) -> np.ndarray:
    extra = (-x.shape[axis]) % multiple
    if not extra:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, extra)
    return np.pad(x, widths)


def pack_nchw(x: np.ndarray, cfg: VTAConfig) -> np.ndarray:
    """NCHW int8 -> NCHW1n16c ``(N/B, C/16, H, W, B, 16)``; C must be a multiple of 16."""
    n, c, h, w = x.shape
    if c % cfg.block_in:
        raise HCPruneError(f"cannot pack {c} input channels for VTA: the channel count must "
                           f"be a multiple of {cfg.block_in}; prune with align={cfg.block_in}.")
    x = _pad_to(x, 0, cfg.batch)
    n = x.shape[0]
    return np.ascontiguousarray(
        x.reshape(n // cfg.batch, cfg.batch, c // cfg.block_in, cfg.block_in, h, w)
        .transpose(0, 2, 4, 5, 1, 3))


def unpack_nchw(y: np.ndarray, n: int, c: int) -> np.ndarray:
    """Inverse of :func:`pack_nchw`, slicing away batch and channel padding."""
    nb, cb, h, w, b, blk = y.shape
    return y.transpose(0, 4, 1, 5, 2, 3).reshape(nb * b, cb * blk, h, w)[:n, :c]


def pack_oihw(wt: np.ndarray, cfg: VTAConfig) -> np.ndarray:
    """OIHW int8 -> OIHW16o16i ``(O/16, I/16, kh, kw, 16, 16)``; O is zero-padded to 16."""
    o, i, kh, kw = wt.shape
    if i % cfg.block_in:
        raise HCPruneError(f"cannot pack a kernel with {i} input channels for VTA: it must be a "
                           f"multiple of {cfg.block_in}; prune with align={cfg.block_in}.")
    wt = _pad_to(wt, 0, cfg.block_out)
    o = wt.shape[0]
    return np.ascontiguousarray(
        wt.reshape(o // cfg.block_out, cfg.block_out, i // cfg.block_in, cfg.block_in, kh, kw)
        .transpose(0, 2, 4, 5, 1, 3))


def pack_bias(b: np.ndarray, cfg: VTAConfig) -> np.ndarray:
    """(C,) int32 -> ``(C/16, B, 16)``, broadcast over the batch rows, zero-padded."""
    b = _pad_to(np.asarray(b, np.int32), 0, cfg.block_out)
    blocks = b.reshape(-1, 1, cfg.block_out)
    return np.ascontiguousarray(np.repeat(blocks, cfg.batch, axis=1))


def requantize_ref(acc: np.ndarray, bias, shift: int, clip) -> np.ndarray:
    """The epilogue in numpy: int32 wraparound add, arithmetic shift, clip, int8 truncation."""
    a = acc.astype(np.int64)
    if bias is not None:
        a = a + np.asarray(bias, np.int64).reshape((1, -1) + (1,) * (acc.ndim - 2))
        a = (a + (1 << 31)) % (1 << 32) - (1 << 31)
    if shift > 0:
        a = a >> shift
    elif shift < 0:
        a = ((a << -shift) + (1 << 31)) % (1 << 32) - (1 << 31)
    if clip is not None:
        a = np.clip(a, clip[0], clip[1])
    return a.astype(np.int32).astype(np.int8)


def conv2d_ref(x, wt, bias=None, stride=(1, 1), padding=(0, 0), shift=0, clip=None):
    """numpy int32 conv2d (NCHW, OIHW) followed by bias, shift, clip and int8."""
    x = x.astype(np.int32)
    wt = wt.astype(np.int32)
    n, c, h, w = x.shape
    o, _, kh, kw = wt.shape
    ph, pw = padding
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    ho = (h + 2 * ph - kh) // stride[0] + 1
    wo = (w + 2 * pw - kw) // stride[1] + 1
    acc = np.zeros((n, o, ho, wo), np.int64)
    for dy in range(kh):
        for dx in range(kw):
            patch = xp[:, :, dy: dy + stride[0] * (ho - 1) + 1: stride[0],
                       dx: dx + stride[1] * (wo - 1) + 1: stride[1]]
            acc += np.einsum("nchw,oc->nohw", patch, wt[:, :, dy, dx], dtype=np.int64)
    acc = ((acc + (1 << 31)) % (1 << 32) - (1 << 31)).astype(np.int32)
    return requantize_ref(acc, bias, shift, clip)


def dense_ref(x, wt, bias=None, shift=0, clip=None):
    """numpy int32 ``x @ wt.T`` followed by bias, shift, clip and int8."""
    acc = (x.astype(np.int64) @ wt.astype(np.int64).T)
    acc = ((acc + (1 << 31)) % (1 << 32) - (1 << 31)).astype(np.int32)
    return requantize_ref(acc, bias, shift, clip)


def conv2d(x: np.ndarray, wt: np.ndarray, bias: np.ndarray | None = None,
           stride=(1, 1), padding=(0, 0), shift: int = 0, clip=None,
           schedule: Conv2DSchedule | None = None, rt: CommandQueue | None = None
           ) -> np.ndarray:
    """Run an int8 NCHW conv2d on the VTA simulator; returns int8 NCHW.

    Parameters
    ----------
    x : (N, C, H, W) int8
    wt : (O, C, kh, kw) int8
    bias : (O,) int32, optional
    stride, padding : pairs
        Padding is symmetric (top = bottom, left = right).
    shift, clip
        The epilogue (see :class:`~tvm_hcprune.vta.codegen.Epilogue`).
    schedule : Conv2DSchedule, optional
        Default: the searched schedule of this shape in the VTA schedule database
        (:mod:`tvm_hcprune.vta.schedule_db`), else
        :func:`~tvm_hcprune.vta.codegen.default_conv2d_schedule`.
    rt : CommandQueue, optional
        Runtime (and simulator) to use; a fresh one by default.
    """
    rt = rt or CommandQueue()
    cfg = rt.cfg
    x = np.asarray(x, np.int8)
    wt = np.asarray(wt, np.int8)
    n, c, h, w = x.shape
    o, ci, kh, kw = wt.shape
    if ci != c:
        raise HCPruneError(f"conv2d: data has {c} channels but the kernel expects {ci}.")
    xp, wp = pack_nchw(x, cfg), pack_oihw(wt, cfg)
    shape = Conv2DShape(xp.shape[0], xp.shape[1], h, w, wp.shape[0], kh, kw,
                        tuple(stride), tuple(padding))
    sched = (schedule or tuned_conv2d_schedule(shape, cfg)
             or default_conv2d_schedule(shape, cfg))
    ep = Epilogue(shift=shift, clip=None if clip is None else tuple(clip),
                  bias=bias is not None)
    out_shape = (shape.n, shape.cob, shape.ho, shape.wo, cfg.batch, cfg.block_out)
    d, wa = rt.put(xp), rt.put(wp)
    ba = rt.put(pack_bias(bias, cfg)) if bias is not None else None
    oa = rt.alloc(int(np.prod(out_shape)))
    nonzero = np.any(wp != 0, axis=(4, 5))  # [cob, cib, kh, kw]: zero blocks are skipped
    conv2d_packed(rt, shape, sched, d, wa, oa, ba, ep, nonzero=nonzero)
    rt.synchronize()
    return unpack_nchw(rt.get(oa, np.int8, out_shape), n, o)


def dense(x: np.ndarray, wt: np.ndarray, bias: np.ndarray | None = None, shift: int = 0,
          clip=None, schedule: DenseSchedule | None = None, rt: CommandQueue | None = None
          ) -> np.ndarray:
    """Run an int8 dense ``x @ wt.T`` ((M, K) x (N, K)) on the simulator; returns int8 (M, N)."""
    rt = rt or CommandQueue()
    cfg = rt.cfg
    x = np.asarray(x, np.int8)
    wt = np.asarray(wt, np.int8)
    m, k = x.shape
    nout, k2 = wt.shape
    if k != k2:
        raise HCPruneError(f"dense: data has {k} features but the weight expects {k2}.")
    if k % cfg.block_in:
        raise HCPruneError(f"dense: {k} input features is not a multiple of {cfg.block_in}; "
                           f"prune with align={cfg.block_in}.")
    xb = _pad_to(x, 0, cfg.batch)
    mb, kb = xb.shape[0] // cfg.batch, k // cfg.block_in
    xp = np.ascontiguousarray(xb.reshape(mb, cfg.batch, kb, cfg.block_in).transpose(0, 2, 1, 3))
    wpad = _pad_to(wt, 0, cfg.block_out)
    nb = wpad.shape[0] // cfg.block_out
    wp = np.ascontiguousarray(
        wpad.reshape(nb, cfg.block_out, kb, cfg.block_in).transpose(0, 2, 1, 3))
    sched = (schedule or tuned_dense_schedule(mb, kb, nb, cfg)
             or default_dense_schedule(mb, kb, nb, cfg))
    ep = Epilogue(shift=shift, clip=None if clip is None else tuple(clip),
                  bias=bias is not None)
    out_shape = (mb, nb, cfg.batch, cfg.block_out)
    d, wa = rt.put(xp), rt.put(wp)
    ba = rt.put(pack_bias(bias, cfg)) if bias is not None else None
    oa = rt.alloc(int(np.prod(out_shape)))
    nonzero = np.any(wp != 0, axis=(2, 3))  # [nb, kb]: zero blocks are skipped
    dense_packed(rt, mb, kb, nb, sched, d, wa, oa, ba, ep, nonzero=nonzero)
    rt.synchronize()
    y = rt.get(oa, np.int8, out_shape).transpose(0, 2, 1, 3).reshape(mb * cfg.batch,
                                                                      nb * cfg.block_out)
    return y[:m, :nout]
