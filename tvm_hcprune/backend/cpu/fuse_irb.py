"""FuseInvertedResidual: an expansion 1x1 conv and the depthwise conv that reads it, one kernel.

In an inverted-residual block (MobileNetV2: ``1x1 expand -> 3x3 depthwise -> 1x1 project``)
the expanded tensor is the largest of the block: the pruned MobileNetV2's 16 -> 48 expansion
at 112x112 writes 2.4 MB, more than L2, and the depthwise conv reads it back from L3; the
two kernels ran at a memory-bound 56 + 16 us. This pass runs after FuseOps and before
FuseTIR and merges the two fused groups (the expansion with its epilogue, e.g. bias and
ReLU6, and the depthwise conv with its own) into one primitive function, so FuseTIR makes one
PrimFunc of both. The CPU rule :func:`tvm_hcprune.backend.cpu.rules.schedule_irb` then
computes the expanded rows each band of depthwise output rows needs (the expansion's register
tile, its epilogue, the band's rows in a per-task buffer that stays in L2) and the depthwise
conv on them, in one parallel loop; bands overlap by the depthwise window's halo, which is
recomputed.

A pair is merged when the expansion is a ``hcp_conv2d`` kernel reading its ``NCHW{b}c`` input
in place (1x1, no padding, one group) with one output vector per channel block, followed
only by elementwise ops, and its result is used once, by a channel-vectorised
``hcp_dwconv2d`` kernel of the same channel block.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.utils import copy_with_new_vars

from tvm_hcprune.backend.cpu.conv2d_nchwc import KERNEL_ATTR
from tvm_hcprune.backend.cpu.rules import block_names
from tvm_hcprune.utils.relax import clear_shape_cache, is_primitive, static_shape, use_counts

__all__ = ["FuseInvertedResidual"]


def _calls(mod: tvm.IRModule, group: relax.Function) -> list:
    """``(PrimFunc, call, var)`` of each ``call_tir`` binding of a fused group, in order, or
    None when the group holds anything else."""
    out = []
    if len(group.body.blocks) != 1:
        return None
    for b in group.body.blocks[0].bindings:
        v = getattr(b, "value", None)
        if not (isinstance(v, relax.Call) and isinstance(v.op, tvm.ir.Op)
                and v.op.name == "relax.call_tir"):
            return None
        out.append((mod[v.args[0]], v, b.var))
    return out


def _kernel(func) -> str | None:
    attrs = func.attrs
    return str(attrs[KERNEL_ATTR]) if attrs is not None and KERNEL_ATTR in attrs else None


def _chain(calls) -> bool:
    """Whether each call after the first reads the previous call's result (an elementwise
    chain: bias add, ReLU6), so the group has no fork the rule would have to keep."""
    for (_f, _c, prev), (_g, call, _v) in zip(calls, calls[1:], strict=False):
        if not any(a.same_as(prev) for a in call.args[1]):
            return False
    return True


class _Group:
    """Matching of one group: the expansion (``kind="expand"``) or depthwise (``"dw"``)."""

    def __init__(self, mod, group, lanes):
        self.ok = False
        calls = _calls(mod, group)
        if not calls:
            return
        func, call, _var = calls[0]
        kind = _kernel(func)
        names = set(block_names(func))
        data = call.args[1][0]
        dshape = static_shape(data)
        if dshape is None or len(dshape) != 5 or dshape[4] != lanes:
            return
        if not data.same_as(group.params[0]):
            return
        if kind == "hcp_conv2d" and "hcp_conv" in names and "hcp_pack" not in names:
            wshape = static_shape(call.args[1][1])  # [G, OCB, ICB, KH, KW, IB, OB]
            if wshape and wshape[0] == 1 and wshape[3:5] == [1, 1] and wshape[6] == lanes:
                self.kind = "expand"
                self.ok = True
        elif kind == "hcp_dwconv2d" and "hcp_dwconv" in names and "hcp_dwpack" in names:
            wshape = static_shape(call.args[1][1])  # [CB, KH, KW, CBI]
            if wshape and len(wshape) == 4 and wshape[3] == lanes:
                self.kind = "dw"
                self.ok = True
        # the group's other calls must be elementwise on the kernel's output
        out = static_shape(group.body.body)
        self.ok = self.ok and _chain(calls) and out == static_shape(call)


def merge_groups(expand: relax.Function, dw: relax.Function) -> relax.Function:
    """One primitive function computing ``dw(expand(...))``: the expansion group's bindings,
    then the depthwise group's with its first parameter bound to the expansion's result."""
    f1, f2 = copy_with_new_vars(expand), copy_with_new_vars(dw)
    f2 = f2.bind_params({f2.params[0]: f1.body.body})
    block = relax.DataflowBlock(list(f1.body.blocks[0].bindings)
                                + list(f2.body.blocks[0].bindings))
    return relax.Function(list(f1.params) + list(f2.params),
                          relax.SeqExpr([block], f2.body.body), f2.ret_ty, attrs=f1.attrs)


@tvm.transform.module_pass(opt_level=0, name="FuseInvertedResidual")
class FuseInvertedResidual:
    """Merge each expansion 1x1 conv group with the depthwise conv group that reads it.

    Runs between FuseOps and FuseTIR (see the module docstring).

    Parameters
    ----------
    lanes : int
        The SIMD width of the blocked layout (``NCHW{lanes}c``) the kernels use.

    Examples
    --------
    >>> from tvm import relax
    >>> passes = [relax.transform.FuseOps(), FuseInvertedResidual(16),
    ...           relax.transform.FuseTIR()]
    """

    def __init__(self, lanes: int):
        self.lanes = int(lanes)

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        bb = relax.BlockBuilder(mod)
        cache: dict = {}
        merged: dict = {}
        changed = False
        try:
            for gvar, func in list(mod.functions_items()):
                if not isinstance(func, relax.Function) or is_primitive(func):
                    continue
                new = self._rewrite(mod, bb, func, cache, merged)
                if new is not None:
                    bb.update_func(gvar, bb.normalize(new))
                    changed = True
        finally:
            clear_shape_cache()
        return relax.transform.Normalize()(bb.get()) if changed else mod

    def _group(self, mod, cache, expr):
        if not (isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.GlobalVar)):
            return None
        key = expr.op.name_hint
        if key not in cache:
            f = mod[expr.op]
            cache[key] = _Group(mod, f, self.lanes) if (isinstance(f, relax.Function)
                                                       and is_primitive(f)) else None
        pair = cache[key]
        return pair if pair is not None and pair.ok else None

    def _rewrite(self, mod, bb, func, cache, merged):
        uses = use_counts(func)
        changed = False
        blocks = []
        for block in func.body.blocks:
            defs = {b.var: b for b in block.bindings}
            drop, new_bindings = set(), []
            for b in block.bindings:
                v = getattr(b, "value", None)
                dw = self._group(mod, cache, v)
                src = v.args[0] if dw is not None and dw.kind == "dw" and v.args else None
                prev = defs.get(src) if isinstance(src, relax.Var) else None
                ex = self._group(mod, cache, prev.value) if prev is not None else None
                if ex is None or ex.kind != "expand" or uses.get(src, 0) != 1:
                    new_bindings.append(b)
                    continue
                key = (prev.value.op.name_hint, v.op.name_hint)
                if key not in merged:
                    fn = merge_groups(mod[prev.value.op], mod[v.op])
                    merged[key] = bb.add_func(fn, f"{key[0]}__{key[1]}")
                call = bb.normalize(relax.Call(merged[key], list(prev.value.args)
                                               + list(v.args[1:])))
                new_bindings.append(relax.VarBinding(b.var, call))
                drop.add(prev.var)
                changed = True
            kept = [b for b in new_bindings if b.var not in drop]
            blocks.append(type(block)(kept))
        if not changed:
            return None
        return relax.Function(func.params, relax.SeqExpr(blocks, func.body.body), func.ret_ty,
                              func.is_pure, func.attrs, func.span)

