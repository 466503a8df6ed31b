"""Relax pass :class:`PackWeightsForCPU`: route conv2d / matmul to tvm_hcprune's CPU kernels.

NCHW 1x1 stride-1 convs may take the pixel-vectorised kernel of
:mod:`tvm_hcprune.backend.cpu.pointwise` (no packing at all); the others the channel-blocked
kernels of :mod:`tvm_hcprune.backend.cpu.conv2d_nchwc`.

Every supported call (static shapes, float32, constant weight) becomes a ``call_tir`` of a
channel-blocked TE kernel whose weight was packed once, here, at compile time. Unsupported
calls are left alone and take TVM's default path.

Convs that :class:`~tvm_hcprune.backend.cpu.layout.BlockChannelLayout` moved to ``NCHW{b}c``
take the same kernels reading and writing the blocked layout (a 1x1 unpadded conv reads its
input in place); one the kernels cannot take is turned back into an NCHW conv between layout
transforms, since TVM 0.27 lowers conv2d only in NCHW/NHWC.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from tvm_hcprune.backend.cpu import conv2d_nchwc as cw
from tvm_hcprune.backend.cpu import pointwise as pw
from tvm_hcprune.backend.cpu import winograd as wg
from tvm_hcprune.backend.cpu.dense import rewrite_matmul
from tvm_hcprune.backend.cpu.layout import blocked_to_plain, plain_to_blocked
from tvm_hcprune.errors import HCPruneError
from tvm_hcprune.utils.relax import (
    clear_shape_cache,
    const_value,
    dtype_of,
    mutate_functions,
    static_shape,
)

_CONV = "relax.nn.conv2d"


@mutator
class _Rewriter(PyExprMutator):
    def __init__(self, mod, lanes: int, registers: int, enable_conv: bool, enable_dense: bool,
                 l2_bytes: int = 512 * 1024, pointwise: bool | str = True,
                 winograd: bool | str = True):
        super().__init__(mod)
        # NCHW[b]c 3x3 stride-1 convs: Winograd F(2x2, 3x3) where wg.prefer_winograd says it
        # is faster ("always": every such conv it can take)
        self.winograd = winograd
        # NCHW depthwise, stride 1, output >= 56 wide: row-vectorised kernel (no channel
        # packing; 0.75-0.93x the packed kernel's time on MobileNetV2's 112 and 56 layers).
        # Strided rows need gathers and short rows waste the vector: there the packed kernel
        # measured 1.7-4x faster (stride 2 at 112/56/14, stride 1 at 28/14/7). NHWC: packed.
        self.depthwise_rows = True
        # NCHW 1x1 stride-1 convs: pixel-vectorised GEMM kernel, no packing (pointwise.py),
        # where pointwise.prefer_pointwise says it is faster ("always": every such conv)
        self.pointwise = pointwise
        self.l2_bytes = l2_bytes
        self.lanes = lanes
        self.registers = registers
        self.enable_conv = enable_conv
        self.enable_dense = enable_dense
        self.rewritten = 0

    def visit_call_(self, call):
        call = super().visit_call_(call)
        op = getattr(call.op, "name", None)
        try:
            if op == _CONV and self.enable_conv:
                new = self._conv(call)
            elif op == "relax.matmul" and self.enable_dense:
                new = rewrite_matmul(self, call)
            else:
                new = None
        except (RuntimeError, ValueError, TypeError, IndexError):  # keep the op, never fail
            new = None
        if new is None:
            if op == _CONV and (cw.layout_block(str(call.attrs.data_layout))
                                or cw.layout_block(str(call.attrs.out_layout))):
                return _unblock(self.builder_, call)  # TVM has no NCHW[b]c conv lowering
            return call
        self.rewritten += 1
        return new

    def _conv(self, call):
        attrs = call.attrs
        data, weight = call.args[0], call.args[1]
        layout = str(attrs.data_layout)
        out_layout = str(attrs.out_layout)
        block = cw.layout_block(layout)
        if layout not in ("NCHW", "NHWC") and not block:
            return None
        # NCHW or NHWC in, NCHW[b]c out: the model's first conv writing the blocked layout
        # (BlockChannelLayout's entry fusion); otherwise the layouts are equal
        entry = layout in ("NCHW", "NHWC") and cw.layout_block(out_layout)
        if out_layout != layout and not entry:
            return None
        w = const_value(weight)
        dshape = static_shape(data)
        if w is None or dshape is None or len(dshape) != (5 if block else 4):
            return None
        if dtype_of(data) != "float32" or w.dtype != np.float32:
            return None
        out_dtype = attrs.out_dtype
        if out_dtype is not None and str(out_dtype) not in ("", "void", "float32"):
            return None
        w = oihw_weight(w, str(attrs.kernel_layout))
        if w is None:
            return None
        groups = int(attrs.groups)
        strides = [int(s) for s in attrs.strides]
        dilation = [int(s) for s in attrs.dilation]
        padding = [int(p) for p in attrs.padding]
        if len(padding) == 2:
            padding = padding * 2
        if layout == "NHWC":
            n, h, wd, ic = dshape
        elif block:
            n, icb, h, wd, _b = dshape
            ic = icb * block
        else:
            n, ic, h, wd = dshape
        oc, icg, kh, kw = w.shape
        if ic != icg * groups or oc % groups:
            return None
        ow = (wd + padding[1] + padding[3] - (kw - 1) * dilation[1] - 1) // strides[1] + 1
        if (self.pointwise and layout == out_layout == "NCHW" and groups == 1
                and (kh, kw) == (1, 1)
                and strides == [1, 1] and not any(padding)
                and (self.pointwise == "always"
                     or pw.prefer_pointwise(ic, oc, h, wd, self.lanes, self.registers))):
            return self._pointwise(data, w, dshape, oc)
        if (self.winograd and block and out_layout == layout and oc % block == 0
                and wg.winograd_geometry(kh, kw, strides, dilation, padding, groups)
                and (self.winograd == "always"
                     or wg.prefer_winograd(ic, oc, h, wd, self.lanes))):
            new = self._winograd(data, w, dshape, oc, block)
            if new is not None:
                return new
        plan = cw.plan_conv(ic, oc, groups, ow, self.lanes, self.registers,
                            short_pointwise=bool(block) and (kh, kw) == (1, 1))
        if plan.depthwise and w.shape[1] != 1:
            return None
        if entry and plan.depthwise:
            return None
        if (plan.depthwise and layout == out_layout == "NCHW" and self.depthwise_rows
                and strides == [1, 1] and ow >= 56):
            owp, per_tile = cw.plan_depthwise_rows(ow, self.lanes)
            wrow = np.ascontiguousarray(w[:, 0])

            def fn_rows(d, wr):
                return cw.depthwise_rows_te(
                    d, wr, strides=strides, padding=padding, dilation=dilation,
                    lanes=self.lanes, per_tile=per_tile, owp=owp,
                )

            return cw.kernel_call(self.builder_, "hcp_dwconv2d", fn_rows,
                              [data, relax.const(wrow)], [dshape, wrow.shape],
                              ["float32", "float32"])
        wpack = cw.pack_weight(w, plan)
        if not plan.depthwise:
            hp = (h + padding[0] + padding[2]) * n * ic * (wd + padding[1] + padding[3])
            plan = cw.with_loop_order(plan, 4 * hp, wpack.nbytes // groups, self.l2_bytes,
                                      input_factor=1 if block else 4)
        if plan.depthwise:
            def fn(d, wp):
                return cw.depthwise_nchwc_te(
                    d, wp, strides=strides, padding=padding, dilation=dilation, plan=plan,
                    layout=layout,
                )
            name = "hcp_dwconv2d"
        else:
            def fn(d, wp):
                return cw.conv2d_nchwc_te(
                    d, wp, strides=strides, padding=padding, dilation=dilation, oc=oc,
                    plan=plan, layout=layout, out_layout=out_layout,
                )
            name = "hcp_conv2d"
        return cw.kernel_call(
            self.builder_,
            name,
            fn,
            [data, relax.const(wpack)],
            [dshape, wpack.shape],
            ["float32", "float32"],
        )

    def _winograd(self, data, w, dshape, oc, block):
        _n, icb, h, wd, _b = dshape
        plan = wg.plan_winograd(icb * block, oc, h, wd, block, self.lanes, self.registers,
                                self.l2_bytes)
        if plan.ob % block:
            return None
        upack = wg.winograd_weight(w, plan)

        def fn(d, up):
            return wg.winograd_te(d, up, oc=oc, plan=plan)

        return cw.kernel_call(self.builder_, "hcp_wgconv2d", fn, [data, relax.const(upack)],
                              [dshape, upack.shape], ["float32", "float32"])

    def _pointwise(self, data, w, dshape, oc):
        plan = pw.plan_pointwise(oc, dshape[2], dshape[3], self.lanes, self.registers,
                                 ic=dshape[1], l2_bytes=self.l2_bytes)
        wpack = pw.pack_pointwise_weight(w, plan)

        def fn(d, wp):
            return pw.pointwise_te(d, wp, oc=oc, plan=plan)

        return cw.kernel_call(self.builder_, "hcp_pwconv2d", fn, [data, relax.const(wpack)],
                          [dshape, wpack.shape], ["float32", "float32"])


def oihw_weight(w: np.ndarray, kernel_layout: str) -> np.ndarray | None:
    """A conv weight in ``kernel_layout`` (a permutation of OIHW, or ``OIHW{b}o`` as
    :class:`~tvm_hcprune.backend.cpu.layout.BlockChannelLayout` leaves it) as OIHW, or None."""
    kb = cw.kernel_block(kernel_layout)
    if kb and w.ndim == 5 and w.shape[4] == kb:
        ob, i, kh, kw, b = w.shape
        return np.ascontiguousarray(w.transpose(0, 4, 1, 2, 3).reshape(ob * b, i, kh, kw))
    if sorted(kernel_layout) != sorted("OIHW") or w.ndim != 4:
        return None
    return np.transpose(w, [kernel_layout.index(ax) for ax in "OIHW"])


def _unblock(bb: relax.BlockBuilder, call):
    """A conv2d with an ``NCHW{b}c`` input or output that the kernels do not take, as an NCHW
    conv2d between layout transforms (TVM 0.27 lowers conv2d in NCHW/NHWC only)."""
    attrs = call.attrs
    data, weight = call.args
    b_in = cw.layout_block(str(attrs.data_layout))
    b_out = cw.layout_block(str(attrs.out_layout))
    if b_in:
        data = bb.normalize(relax.op.layout_transform(data, blocked_to_plain(1, b_in)))
    kl = str(attrs.kernel_layout)
    kb = cw.kernel_block(kl)
    wv = const_value(weight)
    w_const = oihw_weight(wv, kl) if wv is not None else None
    w_oihw, wlayout = weight, kl
    if w_const is not None:
        w_oihw, wlayout = relax.const(w_const), "OIHW"
    elif kb:
        w_oihw = relax.op.layout_transform(
            weight, index_map=lambda o, i, h, w, oi: (o * kb + oi, i, h, w))
        wlayout = "OIHW"
    # a plain input keeps its layout (NHWC: TFLite's stem writing NCHW[b]c)
    plain = "NCHW" if b_in else str(attrs.data_layout)
    out = relax.op.nn.conv2d(
        data, bb.normalize(w_oihw), strides=attrs.strides,
        padding=attrs.padding, dilation=attrs.dilation, groups=attrs.groups,
        data_layout=plain, kernel_layout=wlayout, out_layout=plain,
        out_dtype=attrs.out_dtype)
    if not b_out:
        return out
    return relax.op.layout_transform(bb.normalize(out),
                                     plain_to_blocked(plain.index("C"), b_out))


@tvm.transform.module_pass(opt_level=0, name="PackWeightsForCPU")
class PackWeightsForCPU:
    """Rewrite conv2d (NCHW, NHWC) and constant-weight matmul into blocked CPU kernels.

    Parameters
    ----------
    lanes : int
        fp32 SIMD lanes of the target (8 for AVX2, 16 for AVX-512, 4 for NEON).
    registers : int
        Vector registers available for the register tile.
    conv : bool
        Rewrite conv2d.
    dense : bool
        Rewrite matmul with a constant 2-D right operand.
    l2_bytes : int
        Per-core L2 size (chooses the conv's outer loop order).
    pointwise : bool or "always"
        NCHW 1x1 stride-1 convs take the pixel-vectorised kernel
        (:mod:`tvm_hcprune.backend.cpu.pointwise`) where it is the faster one (True), on every
        such conv ("always"), or never (False).
    winograd : bool or "always"
        ``NCHW{b}c`` 3x3 stride-1 convs with one pixel of padding take the Winograd
        F(2x2, 3x3) kernel (:mod:`tvm_hcprune.backend.cpu.winograd`) where it is expected to
        be faster (True), wherever it can (``"always"``), or never (False).
    """

    def __init__(self, lanes: int = 8, registers: int = 16, conv: bool = True, dense: bool = True,
                 l2_bytes: int = 512 * 1024, pointwise: bool | str = True,
                 winograd: bool | str = True):
        for name, value in (("pointwise", pointwise), ("winograd", winograd)):
            if value not in (True, False, "always"):
                raise HCPruneError(f"{name} must be True, False or 'always', got {value!r}")
        self.winograd = winograd
        self.pointwise = pointwise
        self.l2_bytes = int(l2_bytes)
        self.lanes = int(lanes)
        self.registers = int(registers)
        self.conv = conv
        self.dense = dense

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        rw = _Rewriter(mod, self.lanes, self.registers, self.conv, self.dense, self.l2_bytes,
                       self.pointwise, self.winograd)
        try:
            return mutate_functions(rw, mod)
        finally:
            clear_shape_cache()
