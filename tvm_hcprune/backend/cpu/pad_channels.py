"""Relax pass :class:`PadChannels`: give channel counts off the SIMD block zero channels.

:class:`~tvm_hcprune.backend.cpu.layout.BlockChannelLayout` moves a conv to the blocked
``NCHW{b}c`` layout only when its channels are multiples of the block ``b`` (16 floats on
AVX-512). A tensor of, say, 24 channels stays NCHW: layout transforms around it, and its
convs fall to the unblocked kernels. On MobileNetV2 at 224 (AVX-512) the 24-channel stage
alone cost about a quarter of the model's kernel time. This pass pads such channel axes
to the next multiple of ``b`` with zero channels at their end, before the layout pass:
every producer conv gets zero output channels (zero weights, zero bias), every consumer conv
zero input channels, per-channel constants zeros. The added channels never reach a
non-convolution consumer, so the model computes the same function.

What is padded is a *channel layout*: the sequence of channel groups of the pruning
analysis (:func:`tvm_hcprune.analyze`) an axis carries. A residual add, an elementwise op
or a pool keeps the layout, so all its tensors pad alike; a conv starts a new one. A
BlazeFace block appends zero channels to its shortcut (``nn.pad`` on C, 24 -> 28) and adds
the conv path's 28 channels, so the 28-channel layout is (the 24's group, the pad's group):
it pads to 32 as a whole, and the channel pad becomes a pad from the padded input's width
to the padded output's (here 32 -> 32, i.e. no pad at all). The zero channels the padded
input brings land on channels the original pad filled with zeros, so they must be exactly
zero: every op between the layout's convs and the pad must map zeros to zeros
(:data:`ZERO_PRESERVING`).

The rewrite is pruning's (:func:`tvm_hcprune.transform.apply_plan.rewrite_channels`), with
kept indices past an axis's length meaning "a zero channel". Only layouts whose channels
pass through convolutions, elementwise ops, pooling and zero channel pads are padded
(:data:`PADDABLE_OPS`); a layout reaching a reshape, a concat, a matmul, a reduction over
channels or the model's output keeps its width.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from tvm_hcprune.analysis import analyze
from tvm_hcprune.ops.desc import desc_spaces
from tvm_hcprune.transform.apply_plan import rewrite_channels
from tvm_hcprune.utils.relax import calls, is_const, op_name, static_shape

__all__ = ["PADDABLE_OPS", "ZERO_PRESERVING", "PadChannels", "channel_layout",
           "padded_widths"]

#: ops a padded layout's channels may pass through: each either reads only its own channel
#: (elementwise, pooling, inference batch norm and the tuple item that takes its result;
#: the zero channels' values never leave them) or multiplies the channels by a weight that
#: is zero on the added ones (convolutions). ``relax.nn.pad`` is allowed on other axes and
#: as a zero channel pad (zeros appended to the channels, see the module docstring).
PADDABLE_OPS = frozenset(
    f"relax.{op}" for op in (
        "nn.conv2d", "add", "subtract", "multiply", "divide", "maximum", "minimum", "clip",
        "nn.relu", "nn.relu6", "nn.leakyrelu", "nn.prelu", "sigmoid", "tanh", "nn.silu",
        "nn.gelu", "nn.max_pool2d", "nn.avg_pool2d", "nn.batch_norm", "nn.pad")) | {
    "TupleGetItem"}

#: one-input ops whose output is zero where their input is (with zero per-channel
#: parameters: prelu's slope, batch norm's statistics); with convolutions (zero weight rows)
#: and the binary ops checked in :func:`_exact`, what keeps the added channels exactly zero
ZERO_PRESERVING = frozenset(
    f"relax.{op}" for op in (
        "nn.relu", "nn.relu6", "nn.leakyrelu", "nn.prelu", "tanh", "nn.silu", "nn.gelu",
        "nn.max_pool2d", "nn.avg_pool2d", "nn.batch_norm", "nn.pad")) | {"TupleGetItem"}

_BINARY = frozenset(f"relax.{op}" for op in (
    "add", "subtract", "multiply", "divide", "maximum", "minimum"))


def channel_layout(graph, desc) -> tuple[int, ...] | None:
    """The channel layout of an axis descriptor: the ids of the groups its segments carry,
    in order; None for an axis without channels or with channels that cannot be padded
    (unprunable, interleaved ``inner > 1`` or outside every group)."""
    if not desc:
        return None
    key = []
    for seg in graph.ctx.expand(desc):
        g = graph.space_group.get(seg.space) if seg.space is not None else None
        if g is None or seg.inner != 1:
            return None
        key.append(g)
    return tuple(key)


def _axes(d):
    """The axis descriptors in a value's descriptors (nested for tuples)."""
    if d is None:
        return []
    if isinstance(d, list):
        return [a for x in d for a in _axes(x)]
    return [d]


def _arg_axes(ctx, arg):
    """Per-axis descriptors of an argument (tuple arguments give their fields' axes)."""
    d = ctx.desc(arg)
    if isinstance(d, list) and d and isinstance(d[0], list):
        return [a for x in d for a in (x or [])]
    return list(d or [])


def _convs_off_block(mod: tvm.IRModule, block: int) -> bool:
    """Whether some conv2d writes a channel count that is not a multiple of ``block`` (a
    layout off the block starts at such a conv; without one there is nothing to pad and the
    analysis, 0.6 s on a ResNet-50, is skipped)."""
    for call in calls(mod):
        if op_name(call) != "relax.nn.conv2d":
            continue
        shape = static_shape(call)
        layout = str(call.attrs.out_layout or call.attrs.data_layout)
        if shape is None or len(shape) != len(layout) or "C" not in layout:
            return True  # unknown: let the analysis decide
        if shape[layout.index("C")] % block:
            return True
    return False


class _Layouts:
    """The channel layouts of one analysed module, and the ops each one meets."""

    def __init__(self, graph):
        self.graph = graph
        ctx = graph.ctx
        self.length: dict[tuple, int] = {}
        self.frozen: set[tuple] = set()
        grouped = {graph.space_group[s] for _ko, _ki, _g, descs in ctx.group_inputs.values()
                   for d in descs for s in desc_spaces(d) if s in graph.space_group}
        self.calls = []  # (var, call, op, [(arg or None, axis, key)])
        for var in ctx.var_order:
            call = ctx.values.get(var)
            if call is None:
                continue
            op = getattr(getattr(call, "op", None), "name", None) or type(call).__name__
            axes = []
            out = ctx.descs.get(var)
            tensors = out if isinstance(out, list) and out and isinstance(out[0], list) \
                else [out]
            for t in tensors:
                for ax, d in enumerate(t or []):
                    axes.append((None, ax, channel_layout(graph, d)))
            for i, arg in enumerate(getattr(call, "args", ())):
                for ax, d in enumerate(_arg_axes(ctx, arg)):
                    axes.append((i, ax, channel_layout(graph, d)))
            for _i, _ax, key in axes:
                if key is None:
                    continue
                desc_len = sum(graph.groups[g].size for g in key)
                self.length[key] = desc_len
                if any(graph.groups[g].frozen or graph.groups[g].unit != 1
                       or graph.groups[g].balance is not None or g in grouped for g in key):
                    self.frozen.add(key)
            self.calls.append((var, call, op, axes))

    def widths(self, block: int, max_pad: float) -> dict[tuple, int]:
        """``{layout: padded width}`` (see :func:`padded_widths`)."""
        sizes = {}
        for key, n in self.length.items():
            p = -(-n // block) * block
            if n % block and n > block and p - n <= max_pad * n and key not in self.frozen:
                sizes[key] = p
        # one layout at a time, the first in program order: whether a later channel pad
        # is right depends on which layouts before it stay padded
        while sizes:
            bad = self._first_invalid(sizes)
            if bad is None:
                break
            sizes.pop(bad)
        return sizes

    def _first_invalid(self, sizes):
        """The first layout of ``sizes`` (in program order) that meets an op the padding
        would get wrong, or None."""
        ctx = self.graph.ctx
        exact = {}

        def width(key):
            return sizes.get(key, self.length.get(key))

        for var, call, op, axes in self.calls:
            touched = {k for _i, _ax, k in axes if k in sizes}
            exact[var] = _exact(ctx, var, call, op, axes, sizes, exact)
            if not touched:
                continue
            bad = set()
            if op not in PADDABLE_OPS:
                bad = touched
            elif op == "relax.divide":  # 0 / 0 in an added channel would be NaN
                bad = {k for i, _ax, k in axes if i == 1 and k in sizes}
                if any(a == 1 for a, _ax, _d in ctx.const_slices.get(var, ())):
                    bad = touched
            elif op == "relax.nn.batch_norm" and not float(call.attrs.epsilon) > 0:
                bad = touched
            elif op == "relax.nn.pad":
                bad = _bad_channel_pad(call, axes, sizes, width, exact)
            if bad:
                return min(bad)  # deterministic among one op's layouts
        return None

    def padded(self, sizes):
        """``index_of(desc)`` for :func:`rewrite_channels`: the padded layouts' zero channels
        appended, every other axis kept whole."""
        graph = self.graph

        def index_of(desc):
            key = channel_layout(graph, desc)
            return np.arange(sizes[key]) if key in sizes else None

        return index_of


def _bad_channel_pad(call, axes, sizes, width, exact) -> set:
    """The padded layouts a ``nn.pad`` would get wrong: one that pads a padded layout's axis
    other than with zeros appended at its end, or whose padded input is wider than its
    output or not exactly zero in its added channels."""
    pads = [int(p) for p in call.attrs.pad_width]
    out = {ax: k for i, ax, k in axes if i is None}
    inp = {ax: k for i, ax, k in axes if i == 0}
    bad = set()
    for ax in set(out) | set(inp):
        before, after = pads[2 * ax], pads[2 * ax + 1]
        kin, kout = inp.get(ax), out.get(ax)
        if not (before or after) or not ({kin, kout} & set(sizes)):
            continue
        zero_append = (before == 0 and str(call.attrs.pad_mode) == "constant"
                       and float(call.attrs.pad_value or 0.0) == 0.0)
        if not zero_append or kin is None or kout is None or kout[:len(kin)] != kin:
            bad |= {kin, kout} & set(sizes)
            continue
        if width(kin) > width(kout):
            bad |= {kin, kout} & set(sizes)
        elif kin in sizes and not exact.get(call.args[0], False):
            bad.add(kin)
    return bad


def _exact(ctx, var, call, op, axes, sizes, exact) -> bool:
    """Whether the added channels of ``var`` (the result of ``call``) are exactly zero;
    also True when it has none."""
    if not any(i is None and k in sizes for i, _ax, k in axes):
        return True
    if op == "TupleGetItem":
        return bool(exact.get(call.tuple_value, False))
    args = list(call.args)
    if op == "relax.nn.conv2d":
        return True  # zero weight rows: any finite input gives zeros
    if op == "relax.clip":
        lo, hi = (_scalar(a) for a in args[1:3])
        return lo <= 0.0 <= hi and bool(exact.get(args[0], False))
    if op in ZERO_PRESERVING:
        return bool(exact.get(args[0], False))
    if op in _BINARY and op != "relax.divide":
        sliced = {a for a, _ax, _d in ctx.const_slices.get(var, ())}
        carried = {i for i, _ax, k in axes if i is not None and k in sizes}
        ok = [(i in sliced or not np.any(ctx.array(a))) if is_const(a)
              else (i in carried and bool(exact.get(a, False))) for i, a in enumerate(args)]
        return any(ok) if op == "relax.multiply" else all(ok)
    return False


def _scalar(expr) -> float:
    """The value of a clip bound (a ``PrimValue`` or a number)."""
    value = getattr(expr, "value", expr)
    return float(getattr(value, "value", value))


def padded_widths(graph, block: int, max_pad: float = 1.0) -> dict[tuple[int, ...], int]:
    """``{channel layout: padded width}`` of the axes :class:`PadChannels` pads.

    A layout (:func:`channel_layout`) is padded when its width is not a multiple of
    ``block``, it is wider than ``block``, the zero channels add at most ``max_pad`` of its
    width, none of its groups is frozen (frozen groups reach the model's outputs or ops the
    analysis cannot follow) or feeds a grouped (non-depthwise) convolution, every op it
    meets is in :data:`PADDABLE_OPS` (no divisor carries it) and every channel pad it meets
    appends zeros to a padded input no wider than the padded output, whose added channels
    are exactly zero.

    Examples
    --------
    >>> padded_widths(tvm_hcprune.analyze(mod), 16)  # doctest: +SKIP
    {(0,): 32, (0, 1): 32}
    """
    return _Layouts(graph).widths(block, max_pad)


@tvm.transform.module_pass(opt_level=0, name="PadChannels")
class PadChannels:
    """Pad channel axes whose width is not a multiple of ``block`` with zero channels.

    Parameters
    ----------
    block : int
        The channel block of the blocked layout (the target's fp32 lanes).
    max_pad : float
        Largest share of added channels (1.0, the default: every width wider than a block,
        20 -> 32 too; 0.5: 24 -> 32 but not 20 -> 32). An unblocked tensor costs layout
        transforms and kernels several times slower per MAC (1x1 24->24 convs at 128x128 ran
        at 18 GMAC/s, blocked ones at 150 and more): BlazeFace's front detector pruned at
        ratio 0.3 (an axis of 16 channels and 4 pad zeros) kept 5 layout transforms with 0.5
        and ran 0.637 ms, with 1.0 it has the dense build's 4 and ran 0.604 ms (dense 0.658
        ms; one interleaved run, loaded machine).

    Notes
    -----
    Runs before :class:`~tvm_hcprune.backend.cpu.layout.BlockChannelLayout`. The module it
    returns computes the same outputs (the zero channels meet zero weights); a module the
    channel analysis cannot read is returned unchanged. ``padded`` holds the last run's
    ``{channel layout: (old width, new width)}``.

    Examples
    --------
    >>> mod = PadChannels(block=16)(mod)  # doctest: +SKIP
    """

    def __init__(self, block: int = 16, max_pad: float = 1.0):
        self.block = int(block)
        self.max_pad = float(max_pad)
        self.padded: dict[tuple[int, ...], tuple[int, int]] = {}

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        self.padded = {}
        if self.block < 2 or "main" not in [gv.name_hint for gv in mod.get_global_vars()]:
            return mod
        if not _convs_off_block(mod, self.block):
            return mod
        try:
            graph = analyze(mod)
        except Exception:  # noqa: BLE001 - a module the analysis cannot read keeps its widths
            return mod
        layouts = _Layouts(graph)
        sizes = layouts.widths(self.block, self.max_pad)
        if not sizes:
            return mod
        out = rewrite_channels(graph, lambda _space: None, index_of=layouts.padded(sizes))
        # a channel pad the padding made empty is its input now (``lv2 = lv1``): the layout
        # pass would treat the alias as a boundary
        out = relax.transform.CanonicalizeBindings()(out)
        self.padded = {key: (layouts.length[key], n) for key, n in sizes.items()}
        return out
