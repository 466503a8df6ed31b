"""Block-sparse (BSR) matmul on the CPU: the kernel and the Relax pass that uses it.

``UseBlockSparse`` rewrites ``matmul(x, W)`` whose constant ``W [K, N]`` has zero
``bk x bn`` blocks, and 1x1 convolutions (weight viewed as ``W [I, O]``; NCHW, NHWC or the
blocked ``NCHW{b}c`` layout of :class:`~tvm_hcprune.backend.cpu.layout.BlockChannelLayout`,
strided ones after slicing their input), into a ``call_tir`` of a BSR kernel when
:func:`tvm_hcprune.hardware.sparse_cost.choose_format` estimates BSR faster. The BSR arrays
(``data [nnz, bk, bn]``, ``indices [nnz]`` = input block of each kept block, ``indptr
[N/bn + 1]`` per output block) are constants of the call. The kernel is written in TIR:
one parallel loop over (output block, tile of rows), a register tile of rows x ``bn``
outputs (one vector, ``bn`` = the target's fp32 lanes by default) accumulated over the
block row's kept blocks (a data-dependent loop over ``indptr``). A matmul's rows are its
leading dimensions, a 1x1 conv's its pixels. ``N`` not a multiple of ``bn`` is padded with
zero columns and sliced back.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator
from tvm.script import tirx as T

from tvm_hcprune.backend.cpu.conv2d_nchwc import layout_block
from tvm_hcprune.backend.cpu.pack import oihw_weight
from tvm_hcprune.hardware.sparse_cost import choose_format
from tvm_hcprune.utils.relax import (
    clear_shape_cache,
    const_value,
    dtype_of,
    mutate_functions,
    static_shape,
    update_functions,
)

__all__ = ["BSR_ATTR", "BSR_KNOBS_ATTR", "KNOB_KEYS", "ORDERS", "UseBlockSparse", "bsr_kernel",
           "bsr_knob_choices", "conv1x1_weight_kn", "expand_bsr_knobs", "plan_rows",
           "tile_candidates", "to_bsr"]


def to_bsr(w_kn: np.ndarray, block: tuple[int, int]):
    """``(data, indices, indptr, n_padded)``: the BSR form of ``W [K, N]`` by output block.

    Blocks are ``bk`` input rows by ``bn`` output columns; ``K`` must be a multiple of
    ``bk``; ``N`` is padded with zero columns up to a multiple of ``bn``.
    """
    bk, bn = block
    k, n = w_kn.shape
    if k % bk:
        raise ValueError(f"K={k} is not a multiple of the block's {bk} input rows")
    npad = -(-n // bn) * bn
    w = np.zeros((k, npad), w_kn.dtype)
    w[:, :n] = w_kn
    blocks = w.reshape(k // bk, bk, npad // bn, bn).transpose(2, 0, 1, 3)  # [nb, kb, bk, bn]
    nz = np.any(blocks != 0, axis=(2, 3))
    indptr = np.concatenate([[0], np.cumsum(nz.sum(axis=1))]).astype("int32")
    ob, ib = np.nonzero(nz)
    data = blocks[ob, ib] if len(ob) else np.zeros((1, bk, bn), w_kn.dtype)
    indices = ib.astype("int32") if len(ib) else np.zeros(1, "int32")
    return np.ascontiguousarray(data), indices, indptr, npad


#: the PrimFunc attribute of a BSR kernel: its shape parameters and the knob candidates
#: (what :func:`expand_bsr_knobs` regenerates it from and what tuning samples)
BSR_ATTR = "hcprune.bsr"
#: the attribute of a kernel generated with tuned knobs (the knob values applied)
BSR_KNOBS_ATTR = "hcprune.bsr_knobs"
#: root-block annotation keys a tuning record's trace sets (one per knob)
KNOB_KEYS = {"tile": "hcprune.bsr_tile", "order": "hcprune.bsr_order",
             "group": "hcprune.bsr_group"}
#: ``order`` knob values: parallel tasks walk output blocks (rows inner) or row tiles
ORDERS = ("block", "rows")
#: row tiles from this many rows pack the input of a ``"rows"`` kernel (see
#: :func:`bsr_kernel`); a GEMV-like tile gains nothing from it
PACK_MIN_TILE = 4
#: kernel-local buffers of at least this many bytes are heap workspaces in TVM unless
#: annotated (``runtime::kMaxStackAlloca``)
STACK_LIMIT = 1024


def plan_rows(rows: int, bn: int, lanes: int, registers: int, cap: int = 16) -> int:
    """Rows per register tile: the most that fit (``rows x bn/lanes`` accumulators plus a
    weight vector and a broadcast, in ``registers``), capped at ``cap``, dividing ``rows``."""
    nvec = max(1, -(-bn // lanes))
    r = max(1, min(rows, cap, (registers - nvec - 2) // nvec))
    while r > 1 and rows % r:
        r -= 1
    return r


def tile_candidates(rows: int, bn: int, lanes: int, registers: int, cap: int = 16
                    ) -> list[int]:
    """The row tiles tuning may pick: the divisors of ``rows`` that fit the registers
    (:func:`plan_rows`'s bound) up to ``cap``, at most the 5 largest, the plan's own
    included."""
    top = plan_rows(rows, bn, lanes, registers, cap)
    nvec = max(1, -(-bn // lanes))
    bound = max(1, min(rows, cap, (registers - nvec - 2) // nvec))
    divisors = [d for d in range(1, bound + 1) if rows % d == 0]
    return sorted(set(divisors[-5:]) | {top})


def bsr_kernel(m: int, k: int, n: int, nnz: int, bk: int, bn: int, tile: int | None = None,
               layout: str = "rows", batch: int = 1, chan_block: int = 1, *,
               order: str = "block", group: int = 1, tiles=None) -> tvm.tirx.PrimFunc:
    """The scheduled TIR kernel ``y = x @ BSR(data, indices, indptr)``.

    ``layout`` says where the ``m`` rows (matmul rows, or pixels of a 1x1 conv) and the
    ``k`` inputs / ``n`` outputs live:

    ``"rows"``
        ``x [m, k]``, ``y [m, n]`` (a matmul).
    ``"nchw"``
        ``x [batch, k, m]``, ``y [batch, n, m]`` (a 1x1 conv, NCHW with ``m = H*W``).
    ``"nchwc"``
        ``x [batch, k/cb, m, cb]``, ``y [batch, n/cb, m, cb]`` (a 1x1 conv in the blocked
        ``NCHW{cb}c`` layout, ``cb = chan_block`` a multiple of ``bn``).

    One parallel loop over (batch, output-block group, row tile); per task a register tile
    of ``tile`` rows x ``bn`` outputs (one vector) accumulates over each output block's
    kept blocks (a data-dependent loop over ``indptr``), reading each weight vector once
    per tile and broadcasting the inputs. The knobs (what :mod:`tvm_hcprune.tuning` tunes):
    ``tile``; ``order`` (``"block"``: consecutive tasks share an output block's weights,
    ``"rows"``: they share the input rows); ``group`` (output blocks per task, a divisor
    of ``n / bn``: coarser parallel tasks). The accumulator tile is a stack buffer (a
    ``"global"``-scope allocation, annotated ``disable_lower_builtin`` at 1024 bytes and
    more), never a heap workspace. The function carries :data:`BSR_ATTR` (its parameters
    and the knob candidates ``tiles``), and its body is a root block the tuning records
    annotate (see :func:`expand_bsr_knobs`).
    """
    nb = n // bn
    tile = tile or plan_rows(m, bn, bn, 32)
    if m % tile:
        raise ValueError(f"tile {tile} does not divide the {m} rows")
    if order not in ORDERS:
        raise ValueError(f"unknown BSR task order {order!r}; use one of {ORDERS}")
    if group < 1 or nb % group:
        raise ValueError(f"group {group} does not divide the {nb} output blocks")
    nt = m // tile
    nbg = nb // group
    cb = chan_block
    # rows layout: the input is first packed to [row tile, k, tile] so a kept block's
    # broadcasts (``tile`` rows of one input column) come from one cache line instead of
    # ``tile`` rows ``k`` floats apart (3072x768 at 90%: 0.50 -> 0.28 ms, Zen 5, 2 threads)
    pack = layout == "rows" and tile >= PACK_MIN_TILE
    kc = next(c for c in (64, 48, 32, 16, 8, 4, 2, 1) if k % c == 0)  # columns per pack task
    if layout == "rows":
        x_shape, y_shape = (m, k), (m, n)

        if pack:
            def x_at(xb, _b, c, r):
                return xb[r // tile, c, r % tile]
        else:
            def x_at(xb, _b, c, r):
                return xb[r, c]
    elif layout == "nchw":
        x_shape, y_shape = (batch, k, m), (batch, n, m)

        def x_at(xb, b, c, r):
            return xb[b, c, r]
    elif layout == "nchwc":
        if cb % bn or k % cb or n % cb:
            raise ValueError(f"channel block {cb} must be a multiple of bn={bn} and divide "
                             f"k={k} and n={n}")
        x_shape, y_shape = (batch, k // cb, m, cb), (batch, n // cb, m, cb)

        def x_at(xb, b, c, r):
            return xb[b, c // cb, r, c % cb]
    else:
        raise ValueError(f"unknown BSR layout {layout!r}")
    rows_layout, nchw = layout == "rows", layout == "nchw"
    by_block = order == "block"

    # the task's (batch, output block, first row), inline (a TVMScript assignment would be
    # a one-element buffer: a heap workspace per task)
    def b_of(task):
        return task // (nbg * nt)

    def i_of(task, j):
        g = task // nt % nbg if by_block else task % nbg
        return g * group + j

    def r_of(task):
        return (task % nt if by_block else task // nbg % nt) * tile

    # the accumulator tile in two stack buffers: TVM gives a kernel-local buffer of
    # STACK_LIMIT bytes or more a heap workspace (and StorageRewrite drops the
    # ``disable_lower_builtin`` annotation that would prevent it)
    h0 = tile if tile * bn * 4 < STACK_LIMIT else -(-tile // 2)
    h1 = tile - h0
    split = h1 > 0

    @T.prim_func(s_tir=True)
    def bsr_matmul(x: T.Buffer(x_shape, "float32"), data: T.Buffer((nnz, bk, bn), "float32"),
                   indices: T.Buffer((nnz,), "int32"), indptr: T.Buffer((nb + 1,), "int32"),
                   y: T.Buffer(y_shape, "float32")):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        xp = T.alloc_buffer((nt, k, tile) if pack else (1,), "float32")
        if pack:
            for t in T.parallel(nt * (k // kc)):
                for c in range(kc):
                    for r in T.vectorized(tile):
                        xp[t // (k // kc), t % (k // kc) * kc + c, r] = x[
                            t // (k // kc) * tile + r, t % (k // kc) * kc + c]
        for task in T.parallel(batch * nbg * nt):
            with T.sblock("hcp_bsr"):
                T.reads()
                T.writes()
                acc = T.alloc_buffer((h0, bn), "float32", scope="global")
                acc1 = T.alloc_buffer((max(h1, 1), bn), "float32", scope="global")
                for j in T.serial(group):
                    for r in T.unroll(h0):
                        for v in T.vectorized(bn):
                            acc[r, v] = T.float32(0)
                    if split:
                        for r in T.unroll(h1):
                            for v in T.vectorized(bn):
                                acc1[r, v] = T.float32(0)
                    for e in T.serial(indptr[i_of(task, j) + 1] - indptr[i_of(task, j)]):
                        for kk in range(bk):
                            for r in T.unroll(h0):
                                for v in T.vectorized(bn):
                                    acc[r, v] = acc[r, v] + x_at(
                                        xp if pack else x, b_of(task),
                                        indices[indptr[i_of(task, j)] + e] * bk + kk,
                                        r_of(task) + r) * data[indptr[i_of(task, j)] + e, kk, v]
                            if split:
                                for r in T.unroll(h1):
                                    for v in T.vectorized(bn):
                                        acc1[r, v] = acc1[r, v] + x_at(
                                            xp if pack else x, b_of(task),
                                            indices[indptr[i_of(task, j)] + e] * bk + kk,
                                            r_of(task) + h0 + r) * data[indptr[i_of(task, j)] + e,
                                                                        kk, v]
                    if rows_layout:
                        for r in T.unroll(h0):
                            for v in T.vectorized(bn):
                                y[r_of(task) + r, i_of(task, j) * bn + v] = acc[r, v]
                        if split:
                            for r in T.unroll(h1):
                                for v in T.vectorized(bn):
                                    y[r_of(task) + h0 + r, i_of(task, j) * bn + v] = acc1[r, v]
                    elif nchw:
                        for v in range(bn):
                            for r in T.vectorized(h0):
                                y[b_of(task), i_of(task, j) * bn + v, r_of(task) + r] = acc[r, v]
                            if split:
                                for r in T.vectorized(h1):
                                    y[b_of(task), i_of(task, j) * bn + v,
                                      r_of(task) + h0 + r] = acc1[r, v]
                    else:
                        for r in T.unroll(h0):
                            for v in T.vectorized(bn):
                                y[b_of(task), i_of(task, j) * bn // cb, r_of(task) + r,
                                  i_of(task, j) * bn % cb + v] = acc[r, v]
                        if split:
                            for r in T.unroll(h1):
                                for v in T.vectorized(bn):
                                    y[b_of(task), i_of(task, j) * bn // cb, r_of(task) + h0 + r,
                                      i_of(task, j) * bn % cb + v] = acc1[r, v]

    params = {"m": m, "k": k, "n": n, "nnz": nnz, "bk": bk, "bn": bn, "tile": tile,
              "layout": layout, "batch": batch, "chan_block": chan_block,
              "tiles": [int(t) for t in (tiles or [tile])]}
    return bsr_matmul.with_attr(BSR_ATTR, params)


def bsr_knob_choices(func) -> dict:
    """The knob values tuning may pick for BSR kernel ``func`` (a :func:`bsr_kernel`):
    ``{"tile": [...], "order": [0, 1], "group": [...]}`` (``order`` indexes
    :data:`ORDERS`; ``group`` the divisors 1, 2, 4 of the output block count); the first
    value of ``order`` and ``group`` and the planned ``tile`` are the default kernel's."""
    params = func.attrs[BSR_ATTR]
    nb = int(params["n"]) // int(params["bn"])
    return {"tile": [int(t) for t in params["tiles"]], "order": list(range(len(ORDERS))),
            "group": [g for g in (1, 2, 4) if nb % g == 0]}


def _knobs_of(func) -> dict | None:
    """The knob values a tuning record's trace annotated on ``func``'s root block."""
    body = func.body
    block = getattr(body, "block", None)
    if block is None or block.annotations is None:
        return None
    ann = {name: int(block.annotations[key]) for name, key in KNOB_KEYS.items()
           if key in block.annotations}
    return ann or None


def expand_bsr_knobs(mod: tvm.IRModule) -> tvm.IRModule:
    """``mod`` with every BSR kernel whose root block carries tuned knob annotations (a
    tuning record's trace, replayed by MetaSchedule's database application or tuning's
    builder) regenerated with those knobs; it then carries :data:`BSR_KNOBS_ATTR`
    (``{"tile", "order", "group"}``). Kernels without annotations are left as they are
    (the default schedule).

    Examples
    --------
    >>> with target, database:  # doctest: +SKIP
    ...     mod = relax.transform.MetaScheduleApplyDatabase()(mod)
    >>> mod = expand_bsr_knobs(mod)  # doctest: +SKIP
    """
    updates = {}
    for gvar, func in mod.functions_items():
        if not isinstance(func, tvm.tirx.PrimFunc) or func.attrs is None \
                or BSR_ATTR not in func.attrs:
            continue
        knobs = _knobs_of(func)
        if knobs is None:
            continue
        p = func.attrs[BSR_ATTR]
        tile = int(knobs.get("tile", int(p["tile"])))
        order = ORDERS[int(knobs.get("order", 0))]
        group = int(knobs.get("group", 1))
        new = bsr_kernel(int(p["m"]), int(p["k"]), int(p["n"]), int(p["nnz"]), int(p["bk"]),
                         int(p["bn"]), tile, str(p["layout"]), int(p["batch"]),
                         int(p["chan_block"]), order=order, group=group,
                         tiles=[int(t) for t in p["tiles"]])
        for key, value in func.attrs.items():
            if key not in new.attrs:
                new = new.with_attr(key, value)
        updates[gvar] = new.with_attr(BSR_KNOBS_ATTR, {"tile": tile, "order": order,
                                                       "group": group})
    return update_functions(mod, updates)


def _block_density(w: np.ndarray, block) -> float:
    bk, bn = block
    k, n = w.shape
    npad = -(-n // bn) * bn
    p = np.zeros((k, npad), bool)
    p[:, :n] = w != 0
    return float(p.reshape(k // bk, bk, npad // bn, bn).any(axis=(1, 3)).mean())


def conv1x1_weight_kn(call) -> tuple[np.ndarray | None, str]:
    """``(W [K, N], "")`` of a 1x1 ungrouped unpadded conv2d with a constant float32 weight
    in NCHW, NHWC or ``NCHW{b}c`` (its kernel in any OIHW permutation or ``OIHW{b}o``), or
    ``(None, why not)``."""
    attrs = call.attrs
    wv = const_value(call.args[1])
    if wv is None or wv.dtype != np.float32 or dtype_of(call.args[0]) != "float32":
        return None, "not a float32 conv with a constant weight"
    if int(attrs.groups) != 1:
        return None, "grouped convolution"
    layout = str(attrs.data_layout)
    if str(attrs.out_layout) not in ("", layout) or not (
            layout in ("NCHW", "NHWC") or layout_block(layout)):
        return None, f"layout {layout} -> {attrs.out_layout}"
    if any(int(p) for p in attrs.padding) or any(int(d) != 1 for d in attrs.dilation):
        return None, "padded or dilated 1x1 convolution"
    w = oihw_weight(wv, str(attrs.kernel_layout))
    if w is None or w.shape[2:] != (1, 1):
        return None, "not a 1x1 convolution"
    return np.ascontiguousarray(w[:, :, 0, 0].T), ""


@mutator
class _Rewriter(PyExprMutator):
    def __init__(self, mod, block, profile, decide=None, kernel=None,
                 layouts=("rows", "nchw", "nchwc"), tile_cap: int = 16):
        super().__init__(mod)
        self.block = block
        self.profile = profile
        self.decide = decide
        self.kernel = kernel or bsr_kernel
        self.layouts = tuple(layouts)
        self.tile_cap = tile_cap
        self.converted = 0
        self.decisions: list[dict] = []

    def visit_call_(self, call):
        call = super().visit_call_(call)
        name = getattr(call.op, "name", None) if isinstance(call.op, tvm.ir.Op) else None
        if name == "relax.matmul":
            return self._matmul(call)
        if name == "relax.nn.conv2d":
            return self._conv(call)
        return call

    def _pays(self, w_kn: np.ndarray, rows: int, layout: str, batch: int = 1,
              chan_block: int = 1) -> bool:
        if w_kn.shape[0] % self.block[0] or layout not in self.layouts:
            return False
        density = _block_density(w_kn, self.block)
        if self.decide is None:
            fmt, why = choose_format(density, self.profile)
            extra = {}
        else:
            fmt, why, extra = self.decide(w_kn, self.block, rows, layout, batch, chan_block,
                                          density, self.profile)
        self.decisions.append({"shape": tuple(w_kn.shape), "rows": rows, "layout": layout,
                               "density": density, "format": fmt, "why": why, **extra})
        return fmt == "bsr"

    def _call(self, x, w_kn, rows, layout, batch=1, chan_block=1):
        """``call_tir`` of the BSR kernel on ``x`` (already in the kernel's ``layout``)."""
        bk, bn = self.block
        k = w_kn.shape[0]
        data, indices, indptr, npad = to_bsr(w_kn, self.block)
        tile = plan_rows(rows, bn, self.profile.lanes("float32"),
                         self.profile.vector_registers, self.tile_cap)
        extra = {}
        if self.kernel is bsr_kernel:  # the knob candidates tuning samples
            extra["tiles"] = tile_candidates(rows, bn, self.profile.lanes("float32"),
                                             self.profile.vector_registers, self.tile_cap)
        func = self.kernel(rows, k, npad, data.shape[0], bk, bn, tile, layout, batch,
                           chan_block, **extra)
        gv = self.builder_.add_func(func.without_attr("global_symbol"), "hcp_bsr_matmul")
        if layout == "rows":
            shape = [rows, npad]
        elif layout == "nchw":
            shape = [batch, npad, rows]
        else:
            shape = [batch, npad // chan_block, rows, chan_block]
        self.converted += 1
        return self.builder_.emit(relax.call_tir(
            gv, [x, relax.const(data), relax.const(indices), relax.const(indptr)],
            relax.TensorType(shape, "float32")))

    def _matmul(self, call):
        x, w = call.args
        wv = const_value(w)
        xs = static_shape(x)
        if wv is None or wv.ndim != 2 or xs is None or len(xs) < 2:
            return call
        k, n = wv.shape
        m = int(np.prod(xs[:-1]))
        if dtype_of(x) != "float32" or wv.dtype != np.float32 or not self._pays(wv, m, "rows"):
            return call
        y = self._call(self.builder_.emit(relax.op.reshape(x, [m, k])), wv, m, "rows")
        if int(y.ty.shape[1]) != n:
            y = self.builder_.emit(relax.op.strided_slice(y, axes=[1], begin=[0], end=[n]))
        return relax.op.reshape(y, [*xs[:-1], n])

    def _conv(self, call):
        w_kn, _ = conv1x1_weight_kn(call)
        xs = static_shape(call.args[0])
        if w_kn is None or xs is None:
            return call
        layout = str(call.attrs.data_layout)
        cb = layout_block(layout)
        if cb and cb % self.block[1]:
            return call  # an output block must lie inside one channel block
        sh, sw = (int(s) for s in call.attrs.strides)
        hw = (1, 2) if layout == "NHWC" else (2, 3)
        pixels = -(-xs[hw[0]] // sh) * -(-xs[hw[1]] // sw)
        kind = "rows" if layout == "NHWC" else "nchwc" if cb else "nchw"
        if not self._pays(w_kn, pixels * (xs[0] if kind == "rows" else 1), kind, xs[0],
                          cb or 1):
            return call
        x = call.args[0]
        if (sh, sw) != (1, 1):  # a strided 1x1 conv reads every s-th pixel: slice them first
            x = self.builder_.emit(relax.op.strided_slice(
                x, axes=list(hw), begin=[0, 0], end=[xs[hw[0]], xs[hw[1]]], strides=[sh, sw]))
            xs = static_shape(x)
        k, n = w_kn.shape
        bsz, h, w = xs[0], xs[hw[0]], xs[hw[1]]
        if layout == "NHWC":  # pixels are the rows of a matmul
            y = self._call(self.builder_.emit(relax.op.reshape(x, [bsz * h * w, k])), w_kn,
                           bsz * h * w, "rows")
            if int(y.ty.shape[1]) != n:
                y = self.builder_.emit(relax.op.strided_slice(y, axes=[1], begin=[0],
                                                              end=[n]))
            return relax.op.reshape(y, [bsz, h, w, n])
        if layout == "NCHW":
            y = self._call(self.builder_.emit(relax.op.reshape(x, [bsz, k, h * w])), w_kn,
                           h * w, "nchw", bsz)
            if int(y.ty.shape[1]) != n:
                y = self.builder_.emit(relax.op.strided_slice(y, axes=[1], begin=[0],
                                                              end=[n]))
            return relax.op.reshape(y, [bsz, n, h, w])
        y = self._call(self.builder_.emit(relax.op.reshape(x, [bsz, k // cb, h * w, cb])),
                       w_kn, h * w, "nchwc", bsz, cb)
        return relax.op.reshape(y, [bsz, n // cb, h, w, cb])


@tvm.transform.module_pass(opt_level=0, name="UseBlockSparse")
class UseBlockSparse:
    """Run block-sparse ``matmul`` layers and 1x1 convolutions on the BSR kernel where it is
    estimated faster.

    Runs after :class:`~tvm_hcprune.backend.cpu.layout.BlockChannelLayout`: a 1x1 conv in
    ``NCHW{b}c`` reads and writes the blocked layout (``b`` a multiple of ``bn``); NCHW and
    NHWC convs are rewritten too. Padded, dilated or grouped convs stay dense.

    Parameters
    ----------
    block : (int, int)
        ``(bk, bn)`` of the weights' zero blocks (what :func:`tvm_hcprune.sparsify` used).
    profile : HardwareProfile
        The target's profile (the format estimate).
    decide : callable, optional
        ``decide(w_kn, block, rows, layout, batch, chan_block, density, profile) -> (format,
        why, extra)`` instead of the estimate (e.g.
        :class:`~tvm_hcprune.backend.sparse_choice.MeasuredChoice`). After a run
        ``decisions`` lists every layer's choice.
    kernel : callable, optional
        The kernel factory (:func:`bsr_kernel`'s signature); default the CPU kernel
        (:func:`tvm_hcprune.backend.cuda_bsr.bsr_kernel_cuda` on CUDA).
    layouts : tuple of str
        The kernel layouts to convert (``"rows"`` matmuls, ``"nchw"``/``"nchwc"`` 1x1
        convs); the others stay dense.

    Examples
    --------
    >>> prof = tvm_hcprune.profile_for("llvm")  # doctest: +SKIP
    >>> mod = UseBlockSparse((1, prof.lanes()), prof)(sparse_mod)  # doctest: +SKIP
    """

    def __init__(self, block, profile, decide=None, kernel=None,
                 layouts=("rows", "nchw", "nchwc")):
        self.block = tuple(int(b) for b in block)
        self.profile = profile
        self.decide = decide
        self.kernel = kernel
        self.layouts = tuple(layouts)
        self.decisions: list[dict] = []

    def transform_module(self, mod, ctx):
        rw = _Rewriter(mod, self.block, self.profile, self.decide, self.kernel, self.layouts)
        try:
            out = mutate_functions(rw, mod)
        finally:
            clear_shape_cache()
        self.decisions = rw.decisions
        return out if rw.converted else mod
