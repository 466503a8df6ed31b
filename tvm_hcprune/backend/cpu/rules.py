"""CPU schedule rules for tvm_hcprune's blocked kernels, applied to fused PrimFuncs.

:class:`ApplyCPURules` walks the PrimFuncs of a module after FuseOps/FuseTIR. A function that
contains one of tvm_hcprune's kernels (blocks ``hcp_conv``, ``hcp_dwconv``, ``hcp_dense``,
see :mod:`tvm_hcprune.backend.cpu.pack`) gets its rule; every other function, and any
function whose rule raises, keeps TVM's default lowering, so the build never fails because of
a rule. Functions already marked ``tirx.is_scheduled`` (e.g. by a MetaSchedule database) are
left alone.

The conv rule: register tile of ``tile_w`` output pixels x ``OB`` output channels (``OB``
vectorised, tile unrolled), reduction over (input-channel block, kh, kw, channel) outside
the tile, parallel over (batch, group, oc block, output row, tile column); the packing of the
input runs first, in parallel; the NCHW write-back, with the fused elementwise epilogue
inlined, happens per tile while the accumulators are in registers.
"""

from __future__ import annotations

import logging

import tvm
from tvm import s_tir

from tvm_hcprune.backend.cpu import pointwise as pw
from tvm_hcprune.backend.cpu import winograd as wg
from tvm_hcprune.utils.relax import schedule_unscheduled

log = logging.getLogger(__name__)

# TVM 0.27 raises schedule and internal errors as RuntimeError subclasses (ScheduleError,
# InternalError); a rule that trips over anything else is also a reason to fall back.
_RULE_ERRORS = (RuntimeError, ValueError, TypeError, AttributeError, IndexError, KeyError)

TILE_ATTR = "hcp_tile"
ORDER_ATTR = "hcp_spatial_major"
WRITEBACK_ATTR = "hcp_tile_writeback"


def block_names(func) -> list[str]:
    """Names of the top-level blocks of an unscheduled (fused) PrimFunc."""
    sch = s_tir.Schedule(tvm.IRModule({"main": func}))
    try:
        root = sch.get_sblock("root")
    except _RULE_ERRORS:
        return []
    return [sch.get(b).name_hint for b in sch.get_child_blocks(root)]


def _find(names: list[str], prefix: str) -> str | None:
    hits = [n for n in names if n == prefix or _is_suffixed(n, prefix)]
    return hits[0] if len(hits) == 1 else None


def _is_suffixed(name: str, prefix: str) -> bool:
    """``prefix`` plus a uniquifying numeric suffix added by FuseTIR (``hcp_conv_1``)."""
    rest = name[len(prefix):]
    return name.startswith(prefix) and rest.startswith("_") and rest[1:].isdigit()


def _inline_epilogue(sch, block) -> None:
    """Reverse-inline the chain of elementwise consumers of ``block`` into it.

    Intermediate elementwise blocks are first inlined into their consumers, so an epilogue
    that reads the conv's result twice (hardswish ``x * clip(x + 3, 0, 6) / 6``, SiLU) becomes
    one block too; otherwise everything after the first fork ran as separate single-threaded
    passes over the whole output.
    """
    root = sch.get_sblock("root")
    for other in sch.get_child_blocks(root):
        if sch.get(other).name_hint.startswith("hcp_") or other.same_as(block):
            continue
        if not sch.get_producers(other):  # nothing computed here feeds it
            continue
        try:
            sch.compute_inline(other)
        except _RULE_ERRORS:
            pass
    while True:
        consumers = sch.get_consumers(block)
        if len(consumers) != 1:
            return
        try:
            sch.reverse_compute_inline(consumers[0])
        except _RULE_ERRORS:
            # a consumer over a larger domain (an SE gate: the 1x1 conv's per-channel result
            # times the whole feature map) stays its own loop nest after the kernel's
            if _is_spatial(sch, consumers[0]):
                _parallel_vectorized(sch, consumers[0])
            return


def _inline_producers(sch, block) -> None:
    """Inline injective producers (other than the packing) computed inside the function."""
    for prod in sch.get_producers(block):
        try:
            sch.compute_inline(prod)
        except _RULE_ERRORS:
            pass


def _vectorize_writeback(sch, block, channel_block: int) -> None:
    """NHWC and NCHW[b]c write-back: vectorise the innermost (channel) loop of a tile's
    write-back (``channel_block`` channels in NHWC; the layout's block ``b`` in NCHW[b]c).

    In NCHW the innermost write-back loop runs over the tile's pixels (a few floats per
    channel row); vectorising it measured no gain, so it is left to LLVM.
    """
    loops = sch.get_loops(block)
    inner = [lp for lp in loops[1:] if _extent(sch, lp) > 1]
    blocked_out = len(sch.get(block).writes[0].region) == 5  # NCHW[b]c: innermost is b
    if not inner or not (blocked_out or _extent(sch, inner[-1]) == channel_block):
        return
    try:
        sch.vectorize(inner[-1])
        for lp in inner[:-1]:
            sch.unroll(lp)
    except _RULE_ERRORS:
        pass


def _vectorize_row_writeback(sch, block, lanes: int) -> None:
    """Per-tile write-back along W (NCHW rows): vectorise it in ``lanes`` when the tile's
    width is whole vectors and nothing is cropped (no predicate), unroll the loops above."""
    loops = sch.get_loops(block)
    if len(loops) < 2 or _extent(sch, loops[-1]) % lanes or "where" in str(sch.get(block)):
        return
    wv, wl = sch.split(loops[-1], [None, lanes])
    sch.vectorize(wl)
    for lp in (*loops[1:-1], wv):
        sch.unroll(lp)


def _schedule_separate_writeback(sch, unpack) -> None:
    """Write-back as its own parallel loop nest after the whole blocked output is computed.

    Used for grouped convs whose per-group output channels are not a multiple of the output
    block: a block then straddles two groups, the channel index ``c -> (c // ocg,
    c % ocg // ob)`` is not invertible per tile, and ``reverse_compute_at`` widens the tile's
    write-back to the neighbouring group's channels (read from registers this tile never
    computed, and written concurrently with the tile that owns them: the intermittent wrong
    outputs of grouped NHWC convs seen once in CI).
    """
    loops = sch.get_loops(unpack)
    sch.parallel(sch.fuse(*loops[:-1]) if len(loops) > 2 else loops[0])


def _schedule_pack(sch, pack, n_outer: int) -> None:
    """Parallel over the outer loops; the channel block vectorised when the source is
    channel-blocked (contiguous), else unrolled (a gather from NCHW / NHWC)."""
    loops = sch.get_loops(pack)
    outer = sch.fuse(*loops[:n_outer])
    sch.parallel(outer)
    if _reads_blocked(sch, pack):
        sch.vectorize(loops[-1])
    else:
        sch.unroll(loops[-1])


def _reads_blocked(sch, block) -> bool:
    """Whether ``block``'s first input is channel-blocked (``NCHW[b]c``, 5-D)."""
    return len(sch.get(block).reads[0].region) == 5


def _blocked_kernel(sch, names: list[str], prefix: str):
    """(kernel, pack, unpack, tile) blocks of ``hcp_{prefix}pack/conv/unpack``, or None.

    ``pack`` is None when the kernel reads an already blocked, unpadded input in place."""
    found = [_find(names, f"hcp_{prefix}{part}") for part in ("conv", "pack", "unpack")]
    if not (found[0] and found[2]):
        return None
    conv, pack, unpack = (sch.get_sblock(n) if n else None for n in found)
    _inline_epilogue(sch, unpack)
    return conv, pack, unpack, int(sch.get(conv).annotations[TILE_ATTR])


def _finish_tile(sch, conv, pack, unpack, outer, channel_block, first_reduction, n_pack_outer,
                 tile_writeback=True) -> None:
    """Common tail of the blocked conv rules: accumulators of the register tile in
    registers (``channel_block`` output channels per tile), the write-back (with the inlined
    epilogue) per tile, the initialisation split off and vectorised, the input packing
    parallel."""
    if tile_writeback:
        _registers_and_writeback(sch, conv, unpack, outer, first_reduction,
                                 lambda: _vectorize_writeback(sch, unpack, channel_block))
    else:
        _schedule_separate_writeback(sch, unpack)
        _decompose_init(sch, conv, first_reduction)
    if pack is not None:
        _schedule_pack(sch, pack, n_pack_outer)


# storage scope of the register tiles (see _registers_and_writeback)
TILE_SCOPE = "global"


def _registers_and_writeback(sch, acc, out, outer, first_reduction, vectorize_writeback):
    """Accumulators of the register tile in registers, the write-back ``out`` (with the
    inlined epilogue) computed per tile at ``outer`` and vectorised by
    ``vectorize_writeback()``, the initialisation split off and vectorised."""
    # "global" scope: TVM 0.27's LowerTVMBuiltin keeps a global-scope CPU buffer under 1024
    # bytes as a stack alloca, while any "local" one becomes a TVMBackendAllocWorkspace call
    # per parallel task; MobileNetV2's kernels summed 6-18% less time with global tiles
    # (ResNet-18 ~1%; Zen 5, 1 and 2 threads)
    sch.set_scope(acc, 0, TILE_SCOPE)
    sch.reverse_compute_at(out, outer)
    vectorize_writeback()
    _decompose_init(sch, acc, first_reduction)


def _decompose_init(sch, acc, first_reduction) -> None:
    init = sch.decompose_reduction(acc, first_reduction)
    sch.vectorize(sch.get_loops(init)[-1])


def schedule_conv(sch, names: list[str]) -> bool:
    """Schedule a fused function holding ``hcp_pack``/``hcp_conv``/``hcp_unpack``."""
    found = _blocked_kernel(sch, names, "")
    if found is None:
        return False
    conv, pack, unpack, tile = found
    n, g, cb, y, x, co, rc, ry, rx, ri = sch.get_loops(conv)
    xo, xi = sch.split(x, [None, tile])
    ann = sch.get(conv).annotations
    if int(ann.get(ORDER_ATTR, 0)):  # spatial-major: big input
        sch.reorder(n, g, y, xo, cb, rc, ry, rx, ri, xi, co)
        outer = sch.fuse(n, g, y, xo, cb)
    else:
        sch.reorder(n, g, cb, y, xo, rc, ry, rx, ri, xi, co)
        outer = sch.fuse(n, g, cb, y, xo)
    sch.parallel(outer)
    _unroll_reduction(sch, ri)
    sch.unroll(xi)
    ob, lanes = _extent(sch, co), int(ann.get("hcp_lanes", 0))
    if lanes and ob > lanes:
        # one vector per register: a 3-vector <24 x float> left to LLVM ran 2-4x slower
        vecs, co = sch.split(co, [None, lanes])
        sch.unroll(vecs)
    sch.vectorize(co)
    _finish_tile(sch, conv, pack, unpack, outer, ob, rc, 4,
                 tile_writeback=bool(int(ann.get(WRITEBACK_ATTR, 1))))
    return True


def schedule_winograd(sch, names: list[str]) -> bool:
    """Schedule ``hcp_wgv``/``hcp_wgm``/``hcp_wgy`` (Winograd F(2x2, 3x3), see
    :mod:`tvm_hcprune.backend.cpu.winograd`).

    The output transform (with the inlined epilogue) runs per register tile of the GEMM
    stage: for each (output channel block, tile row, ``tile_w`` tiles) the 16 GEMMs are
    computed one after the other into a small buffer (each in a ``tile_w`` x ``OB``
    register tile over all input channels), then transformed to the 2x2 output tiles. The
    input transform runs per tile row (spatial-major: the row's 16 transformed planes stay in
    L2 while every output channel block reads them) or over the whole image first.
    """
    found = [_find(names, f"hcp_wg{part}") for part in "vmy"]
    if not all(found):
        return False
    vb, mb, yb = (sch.get_sblock(n) for n in found)
    ann = sch.get(mb).annotations
    tile, lanes = int(ann[wg.TILE_ATTR]), int(ann.get(wg.LANES_ATTR, 0))
    spatial = bool(int(ann.get(wg.SPATIAL_ATTR, 0)))
    # the GEMM block's iteration domain: (n, e, ocb, ty, tx, ob | icb, ib)
    ob, icb = (int(sch.get(mb).iter_vars[i].dom.extent) for i in (5, 6))
    _inline_epilogue(sch, yb)
    n, c, y, x, ci = sch.get_loops(yb)
    cbo, kk = sch.split(c, [None, ob // _extent(sch, ci)])
    tyo, r = sch.split(y, [None, 2])
    xo, cc = sch.split(x, [None, 2])
    txo, txi = sch.split(xo, [None, tile])
    if spatial:
        sch.reorder(n, tyo, cbo, txo, txi, kk, r, cc, ci)
        row = sch.fuse(n, tyo)
        sch.parallel(row)
        outer, depth = txo, 3
    else:
        sch.reorder(n, cbo, tyo, txo, txi, kk, r, cc, ci)
        outer = row = sch.fuse(n, cbo, tyo, txo)
        sch.parallel(outer)
        depth = 1
    for lp in (kk, r, cc):
        sch.unroll(lp)
    sch.vectorize(ci)
    sch.compute_at(mb, outer)
    acc = sch.cache_write(mb, 0, TILE_SCOPE)
    # compute_at leaves no loop for a unit extent (one tile, one input channel block)
    e, tx, co, rc, ri = _named_loops(sch, sch.get_loops(mb)[depth:],
                                     (16, tile, ob, icb, _extent(sch, ci)))
    sch.reorder(*(lp for lp in (e, rc, ri, tx, co) if lp is not None))
    ri = _unroll_reduction(sch, ri)
    if tx is not None:
        sch.unroll(tx)
    if lanes and ob > lanes:
        vecs, co = sch.split(co, [None, lanes])
        sch.unroll(vecs)
    sch.vectorize(co)
    sch.reverse_compute_at(acc, e)
    sch.vectorize(sch.get_loops(acc)[-1])
    _decompose_init(sch, mb, rc if rc is not None else ri)
    twp = int(sch.get(vb).iter_vars[4].dom.extent)
    if spatial:
        sch.compute_at(vb, row)
        e, cb, tx, ci = _named_loops(sch, sch.get_loops(vb)[1:], (16, icb, twp, None))
        sch.reorder(*(lp for lp in (cb, tx, e, ci) if lp is not None))
    else:
        nv, e, cb, ty, tx, ci = sch.get_loops(vb)
        sch.reorder(nv, cb, ty, tx, e, ci)
        sch.parallel(sch.fuse(nv, cb, ty))
    sch.unroll(e)
    sch.vectorize(ci)
    return True


def _named_loops(sch, loops, extents) -> list:
    """``loops`` matched to the expected ``extents`` in order (None: any extent), where a
    loop of extent 1 may be missing (``compute_at`` creates none): a list with None for the
    missing ones."""
    out, it = [], iter(loops)
    pending = next(it, None)
    for want in extents:
        if pending is not None and (want is None or want == _extent(sch, pending)):
            out.append(pending)
            pending = next(it, None)
        elif want == 1 or want is None:
            out.append(None)
        else:
            raise ValueError(f"unexpected loop nest {[_extent(sch, lp) for lp in loops]} "
                             f"for extents {extents}")
    if pending is not None:
        raise ValueError(f"unexpected extra loops in {[_extent(sch, lp) for lp in loops]}")
    return out


# input channels of a block unrolled per step of the reduction loop
REDUCTION_UNROLL = 4


def _unroll_reduction(sch, ri):
    """Unroll the in-block input-channel loop by ``REDUCTION_UNROLL``, not whole: with all
    16 channels of an AVX-512 block unrolled, LLVM hoisted the broadcasts of the whole body
    ahead of the FMAs and spilled them to the stack; 4 at a time measured 1.15-1.25x faster
    on ResNet's 3x3 and 1x1 layers (one Zen 5 core), e.g. 64->64 3x3 at 56x56 1000 -> 845 us.
    Returns the loop left outside the unrolled part (``ri`` itself when not split).
    """
    outer = ri
    if _extent(sch, ri) > REDUCTION_UNROLL and _extent(sch, ri) % REDUCTION_UNROLL == 0:
        outer, ri = sch.split(ri, [None, REDUCTION_UNROLL])
    sch.unroll(ri)
    return outer


def schedule_dwconv(sch, names: list[str]) -> bool:
    """Schedule a fused function holding ``hcp_dwpack``/``hcp_dwconv``/``hcp_dwunpack``."""
    found = _blocked_kernel(sch, names, "dw")
    if found is None:
        return False
    conv, pack, unpack, tile = found
    n, cb, y, x, ci, ry, rx = sch.get_loops(conv)
    xo, xi = sch.split(x, [None, tile])
    sch.reorder(n, cb, y, xo, ry, rx, xi, ci)
    sch.unroll(rx)
    sch.unroll(xi)
    sch.vectorize(ci)
    if pack is not None and not _reads_blocked(sch, pack):
        # NCHW / NHWC source: packed (a gather) in its own parallel pass first
        outer = tile = sch.fuse(n, cb, y, xo)
    else:
        # NCHW[b]c source: read in place, the zero padding a guarded read in the kernel (a
        # padded copy of the input cost as much as the 3x3 depthwise conv itself), one
        # parallel region over output rows (measured 1.5-2x faster than a padding pass then
        # a parallel loop over tiles, on MobileNetV2's depthwise layers)
        if pack is not None:
            sch.compute_inline(pack)
            pack = None
        outer, tile = sch.fuse(n, cb, y), xo
    sch.parallel(outer)
    _finish_tile(sch, conv, pack, unpack, tile, _extent(sch, ci), ry, 3)
    return True


# inverted-residual kernels: aim for this many parallel tasks (channel blocks x row bands)
IRB_TASKS = 8
# and for a band's expanded rows to take at most this many bytes (a quarter of Zen 5's L2)
IRB_BAND_BYTES = 256 * 1024


def irb_band_rows(channel_blocks: int, out_rows: int, stride: int, in_width: int,
                  lanes: int) -> int:
    """Depthwise output rows per band of a merged expansion + depthwise kernel: the fewest
    bands that give ``IRB_TASKS`` tasks over the channel blocks and keep a band's expanded
    rows (``rows * stride + 2`` input rows of ``in_width`` pixels x ``lanes`` floats) under
    ``IRB_BAND_BYTES``. Bands overlap by the window's halo, recomputed, so fewer is better.
    """
    bands = 1
    while bands < out_rows:
        rows = -(-out_rows // bands)
        if (channel_blocks * bands >= IRB_TASKS
                and (rows * stride + 2) * in_width * lanes * 4 <= IRB_BAND_BYTES):
            break
        bands += 1
    return -(-out_rows // bands)


def _vectorize_tile_writeback(sch, block) -> None:
    """A register tile's NCHW[b]c write-back: the channel block vectorised, the tile's
    pixels unrolled (the loops above it are left rolled)."""
    loops = sch.get_loops(block)
    sch.vectorize(loops[-1])
    sch.unroll(loops[-2])


def schedule_irb(sch, names: list[str]) -> bool:
    """Schedule a merged expansion 1x1 conv + depthwise conv (``FuseInvertedResidual``).

    Parallel over (channel block, band of depthwise output rows); in each task the
    expansion computes the band's input rows (its register tile of ``tile`` pixels x one
    vector, the epilogue inlined into the write-back) into a per-task buffer, then the
    depthwise conv reads them (zero padding as guarded reads) in its register tile, its
    own epilogue inlined into its write-back.
    """
    found = [_find(names, p) for p in ("hcp_conv", "hcp_unpack", "hcp_dwpack", "hcp_dwconv",
                                        "hcp_dwunpack")]
    if not all(found):
        return False
    conv, unpack, dwpack, dw, dwunpack = (sch.get_sblock(n) for n in found)
    lanes = int(sch.get(conv).annotations.get("hcp_lanes", 0))
    if lanes and _extent(sch, sch.get_loops(conv)[5]) != lanes:
        return False  # the expansion's tile must be the depthwise conv's one vector
    # the expansion's epilogue into its write-back: its blocks sit between the two kernels;
    # intermediate ones first go into their consumers (hardswish reads the conv's result
    # twice), then the chain left is inlined into the write-back
    order = [sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))]
    for name in order[order.index(found[1]) + 1:order.index(found[2]) - 1]:
        try:
            sch.compute_inline(sch.get_sblock(name))
        except _RULE_ERRORS:
            pass
    while True:
        consumers = sch.get_consumers(unpack)
        if len(consumers) != 1:
            return False
        if sch.get(consumers[0]).name_hint == found[2]:
            break
        sch.reverse_compute_inline(consumers[0])
    sch.compute_inline(dwpack)
    _inline_epilogue(sch, dwunpack)
    ann = sch.get(dw).annotations
    n, cb, y, x, ci, ry, rx = sch.get_loops(dw)
    in_h, in_w = (_extent(sch, lp) for lp in sch.get_loops(unpack)[2:4])
    out_h = _extent(sch, y)
    stride = max(1, in_h // out_h)
    rows = irb_band_rows(_extent(sch, cb), out_h, stride, in_w, _extent(sch, ci))
    yo, yi = sch.split(y, [None, rows])
    xo, xi = sch.split(x, [None, int(ann[TILE_ATTR])])
    sch.reorder(n, cb, yo, yi, xo, ry, rx, xi, ci)
    outer = sch.fuse(n, cb, yo)
    sch.parallel(outer)
    sch.unroll(rx)
    sch.unroll(xi)
    sch.vectorize(ci)
    _registers_and_writeback(sch, dw, dwunpack, xo, ry,
                             lambda: _vectorize_tile_writeback(sch, dwunpack))
    # the band's expanded rows, computed in the task
    sch.compute_at(unpack, outer, preserve_unit_loops=True)
    uloops = sch.get_loops(unpack)
    uxo, uxi = sch.split(uloops[-2], [None, int(sch.get(conv).annotations[TILE_ATTR])])
    sch.compute_at(conv, uxo, preserve_unit_loops=True)
    k = len(sch.get_loops(unpack)) - 2  # conv's loops below the write-back's tile loop
    _nn, _gg, _cb, _y, cx, co, rc, cry, crx, ri = sch.get_loops(conv)[k:]
    sch.reorder(rc, cry, crx, ri, cx, co)
    _unroll_reduction(sch, ri)
    sch.unroll(cx)
    sch.vectorize(co)
    sch.set_scope(conv, 0, TILE_SCOPE)
    _decompose_init(sch, conv, rc)
    sch.unroll(uxi)
    sch.vectorize(sch.get_loops(unpack)[-1])
    return True


def schedule_pointwise(sch, names: list[str]) -> bool:
    """Schedule ``hcp_pwpad``/``hcp_pw``/``hcp_pwout`` (pixel-vectorised 1x1 conv).

    Register tile ``rows`` output channels x ``ty`` image rows x ``vecs`` vectors along W,
    reduction over the input channels outside it, parallel over the tiles; the write-back
    (with the inlined epilogue) per tile, vectorised along W when the tile has no padding.
    """
    acc_name, out_name = _find(names, "hcp_pw"), _find(names, "hcp_pwout")
    if not (acc_name and out_name):
        return False
    acc, out = sch.get_sblock(acc_name), sch.get_sblock(out_name)
    ann = sch.get(acc).annotations
    rows, ty, vecs, lanes = (int(ann[k]) for k in (pw.ROWS_ATTR, pw.TY_ATTR, pw.VECS_ATTR,
                                                    pw.LANES_ATTR))
    _inline_epilogue(sch, out)
    n, o, y, x, rk = sch.get_loops(acc)
    oo, oi = sch.split(o, [None, rows])
    yo, yi = sch.split(y, [None, ty])
    xo, xv, xl = sch.split(x, [None, vecs, lanes])
    if int(ann.get(pw.ORDER_ATTR, 0)):
        sch.reorder(n, yo, xo, oo, rk, oi, yi, xv, xl)
        outer = sch.fuse(n, yo, xo, oo)
    else:
        sch.reorder(n, oo, yo, xo, rk, oi, yi, xv, xl)
        outer = sch.fuse(n, oo, yo, xo)
    sch.parallel(outer)
    for lp in (oi, yi, xv):
        sch.unroll(lp)
    sch.vectorize(xl)
    _registers_and_writeback(sch, acc, out, outer, rk,
                             lambda: _vectorize_row_writeback(sch, out, lanes))
    pad_name = _find(names, "hcp_pwpad")
    if pad_name:
        ploops = sch.get_loops(sch.get_sblock(pad_name))
        sch.parallel(sch.fuse(*ploops[:3]))
        sch.vectorize(ploops[-1])
    return True


def schedule_dwrows(sch, names: list[str]) -> bool:
    """Schedule ``hcp_dwpad``/``hcp_dwrow``/``hcp_dwcrop`` (row-vectorised depthwise)."""
    row_name, pad_name, crop_name = (
        _find(names, "hcp_dwrow"), _find(names, "hcp_dwpad"), _find(names, "hcp_dwcrop"))
    if not (row_name and pad_name and crop_name):
        return False
    row = sch.get_sblock(row_name)
    pad = sch.get_sblock(pad_name)
    crop = sch.get_sblock(crop_name)
    ann = sch.get(row).annotations
    per_tile, lanes = int(ann[TILE_ATTR]), int(ann["hcp_lanes"])
    _inline_epilogue(sch, crop)
    n, c, y, x, ry, rx = sch.get_loops(row)
    xo, xt, xi = sch.split(x, [None, per_tile, lanes])
    sch.reorder(n, c, y, xo, ry, rx, xt, xi)
    outer = sch.fuse(n, c, y, xo)
    sch.parallel(outer)
    sch.unroll(rx)
    sch.unroll(xt)
    sch.vectorize(xi)
    _registers_and_writeback(sch, row, crop, outer, ry,
                             lambda: _vectorize_row_writeback(sch, crop, lanes))
    ploops = sch.get_loops(pad)
    sch.parallel(sch.fuse(*ploops[:3]))
    return True


def schedule_dense(sch, names: list[str]) -> bool:
    """Schedule a fused function holding ``hcp_dense``/``hcp_dense_unpack``."""
    dense_name, unpack_name = _find(names, "hcp_dense"), _find(names, "hcp_dense_unpack")
    if not (dense_name and unpack_name):
        return False
    dense = sch.get_sblock(dense_name)
    unpack = sch.get_sblock(unpack_name)
    rows = int(sch.get(dense).annotations[TILE_ATTR])
    _inline_epilogue(sch, unpack)
    *lead, m, jb, ji, rk = sch.get_loops(dense)
    mo, mi = sch.split(m, [None, rows])
    sch.reorder(*lead, mo, jb, rk, mi, ji)
    outer = sch.fuse(*lead, mo, jb)
    sch.parallel(outer)
    ko, ki = sch.split(rk, [None, 4]) if _extent(sch, rk) % 4 == 0 else (rk, None)
    if ki is not None:
        sch.unroll(ki)
    sch.unroll(mi)
    lanes = int(sch.get(dense).annotations.get("hcp_lanes", 0))
    if lanes and _extent(sch, ji) > lanes and _extent(sch, ji) % lanes == 0:
        # one vector per register (a <48 x float> left to LLVM ran 6x slower)
        vecs, ji = sch.split(ji, [None, lanes])
        sch.unroll(vecs)
    sch.vectorize(ji)
    sch.set_scope(dense, 0, TILE_SCOPE)
    sch.reverse_compute_at(unpack, outer)
    init = sch.decompose_reduction(dense, ko)
    sch.vectorize(sch.get_loops(init)[-1])
    pack_name = _find(names, "hcp_bmm_pack")
    if pack_name:  # run-time packing of a batched matmul's right operand
        pack = sch.get_sblock(pack_name)
        loops = sch.get_loops(pack)
        sch.parallel(sch.fuse(*loops[:-2]))
        sch.vectorize(loops[-1])
    return True


def _is_layout_transform(names: list[str]) -> bool:
    return len(names) == 1 and "layout_transform" in names[0]


def schedule_layout_transform(sch, names: list[str]) -> bool:
    """Parallelise a standalone layout transform (the model's boundaries in and out of the
    channel-blocked layout): parallel over the outer loops, the innermost unrolled when
    short; TVM's default lowering runs them on one thread."""
    if not _is_layout_transform(names):
        return False
    block = sch.get_sblock(names[0])
    loops = sch.get_loops(block)
    if len(loops) < 3:
        return False
    if _elements(sch, loops) < POOL_MIN_ELEMENTS:
        return False
    sch.parallel(sch.fuse(*loops[:-2]))
    if _extent(sch, loops[-1]) <= 16:
        sch.unroll(loops[-1])
    return True


_POOL_BLOCKS = ("pad_temp", "pool_max", "pool_sum", "pool_avg")


def _is_pool(names: list[str]) -> bool:
    """TVM's legalized 2-D pooling (optionally padded; average pooling's division last)."""
    return bool(names) and all(any(n == b or _is_suffixed(n, b) for b in _POOL_BLOCKS)
                               for n in names) and any("pool_" in n for n in names)


def schedule_pool(sch, names: list[str]) -> bool:
    """Channel-blocked (``NCHW[b]c``) max / average pooling: the padding read in place
    (guarded), parallel over (batch, channel block, output row), the window reduced with
    the channel block vectorised; TVM's default lowering runs it on one thread with a
    padded copy first (ResNet@224's stem pool: 136 us on one Zen 5 core)."""
    if not _is_pool(names):
        return False
    acc_name = _find(names, "pool_max") or _find(names, "pool_sum")
    if acc_name is None:
        return False
    acc = sch.get_sblock(acc_name)
    if len(sch.get(acc).writes[0].region) != 5:
        return False  # NCHW pooling: left to TVM
    loops = sch.get_loops(acc)
    if len(loops) != 7 or _extent(sch, loops[4]) > 64:
        return False
    if _elements(sch, loops[:5]) < POOL_MIN_ELEMENTS:
        return False
    pad = _find(names, "pad_temp")
    if pad:
        sch.compute_inline(sch.get_sblock(pad))
    n, c, y, x, ci, r0, r1 = loops
    sch.reorder(n, c, y, x, r0, r1, ci)
    sch.parallel(sch.fuse(n, c, y))
    sch.unroll(r1)
    sch.vectorize(ci)
    avg = _find(names, "pool_avg")
    if avg:
        out = sch.get_sblock(avg)
        sch.reverse_compute_at(out, x)
        sch.vectorize(sch.get_loops(out)[-1])
    init = sch.decompose_reduction(acc, r0)
    sch.vectorize(sch.get_loops(init)[-1])
    return True


def _is_spatial(sch, block) -> bool:
    """Whether every iteration variable of ``block`` is data-parallel (no reduction)."""
    return all(int(iv.iter_type) == 0 for iv in sch.get(block).iter_vars)


def schedule_injective(sch, names: list[str]) -> bool:
    """Elementwise / injective functions that FuseOps left outside every kernel (a residual
    add whose operands changed layout, a channel pad, an activation after pooling): the
    producers inlined, parallel over the outer loops, the innermost loop vectorised where
    it splits into whole vectors. TVM's default lowering runs them on one thread, scalar: in
    a pruned BlazeFace-style NHWC detector one such residual add took 3.2 of 7.8 ms."""
    root = sch.get_sblock("root")
    blocks = list(sch.get_child_blocks(root))
    if not blocks or not all(_is_spatial(sch, b) for b in blocks):
        return False
    for b in blocks[:-1]:
        try:
            sch.compute_inline(b)
        except _RULE_ERRORS:
            return False
    block = blocks[-1]
    loops = sch.get_loops(block)
    if len(loops) < 2 or _elements(sch, loops) < POOL_MIN_ELEMENTS:
        return False
    _parallel_vectorized(sch, block)
    return True


def _parallel_vectorized(sch, block) -> None:
    """A root-level elementwise loop nest: parallel over its outer loops (from
    ``POOL_MIN_ELEMENTS`` iterations), the innermost loop vectorised where it splits into
    whole vectors. Left to TVM's default, the SE gate multiply after PP-LCNet's excitation
    conv (hardsigmoid of 512 channels times a 512x7x7 map) ran on one thread, scalar: that
    kernel took 16.8 us, 5.7 us with this (Zen 5, 2 threads)."""
    loops = sch.get_loops(block)
    if not loops:
        return
    extents = [_extent(sch, lp) for lp in loops]
    inner = loops[-1]
    lanes = next((v for v in (16, 8, 4) if extents[-1] % v == 0), 0)
    if len(loops) > 1 and _elements(sch, loops) >= POOL_MIN_ELEMENTS:
        sch.parallel(sch.fuse(*loops[:-1]))
    if lanes and extents[-1] > lanes:
        inner = sch.split(inner, [None, lanes])[1]
    if lanes:
        sch.vectorize(inner)


def _extent(sch, loop) -> int:
    return int(sch.get(loop).extent)


# elementwise functions (layout transforms, pooling, leftovers) of fewer elements than this
# stay on one thread: too small to pay for waking the thread pool
POOL_MIN_ELEMENTS = 1 << 14


def _elements(sch, loops) -> int:
    """Iterations of the loop nest ``loops`` (the product of their extents)."""
    n = 1
    for lp in loops:
        n *= _extent(sch, lp)
    return n


_RULES = (schedule_irb, schedule_conv, schedule_winograd, schedule_dwconv, schedule_dwrows,
          schedule_pointwise, schedule_dense)


def rule_schedule(func, strict: bool = False):
    """The rules' ``Schedule`` of ``func`` (its trace replays on the function), or None
    where no rule applies and TVM's default lowering is kept.

    This is exactly what :func:`apply_rules` compiles, so tuning starts from, and is
    compared against, the schedules a build without a database uses. With ``strict``, a
    rule's error propagates and a function holding tvm_hcprune's blocks that no rule
    matches raises, instead of falling back to TVM's default.
    """
    names = block_names(func)
    ours = any(n.startswith("hcp_") for n in names)
    if not names:
        return None
    # functions without our kernels: layout transforms, pooling, elementwise leftovers; a
    # merged expansion + depthwise kernel is schedule_irb's alone (the conv rule would take
    # its expansion and leave the depthwise conv on TVM's default)
    merged = _find(names, "hcp_conv") and _find(names, "hcp_dwconv")
    for rule in ((schedule_irb,) if merged else _RULES) if ours else (
            schedule_layout_transform, schedule_pool, schedule_injective):
        sch = s_tir.Schedule(tvm.IRModule({"main": func}))
        try:
            if rule(sch, names):
                return sch
        except _RULE_ERRORS as err:
            if strict:
                raise
            log.warning("tvm_hcprune rule %s failed (%s); using TVM's default", rule.__name__,
                        str(err).splitlines()[0] if str(err) else err)
    if strict and ours:
        raise RuntimeError(f"no tvm_hcprune rule matched blocks {names}")
    return None


def apply_rules(func, strict: bool = False):
    """Return ``func`` scheduled by the first matching rule, or None (keep the default);
    see :func:`rule_schedule`."""
    sch = rule_schedule(func, strict)
    return None if sch is None else sch.mod["main"].with_attr("tirx.is_scheduled", True)


@tvm.transform.module_pass(opt_level=0, name="ApplyCPURules")
class ApplyCPURules:
    """Apply tvm_hcprune's CPU schedule rules to every unscheduled PrimFunc that matches.

    Parameters
    ----------
    strict : bool
        Raise instead of falling back when a rule fails (for tests).
    """

    def __init__(self, strict: bool = False):
        self.strict = strict

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return schedule_unscheduled(mod, lambda func: apply_rules(func, self.strict))
