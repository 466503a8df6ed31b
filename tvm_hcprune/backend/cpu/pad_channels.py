"""Relax pass :class:`PadChannels`: give channel counts off the SIMD block zero channels.

:class:`~tvm_hcprune.backend.cpu.layout.BlockChannelLayout` moves a conv to the blocked
``NCHW{b}c`` layout only when its channels are multiples of the block ``b`` (16 floats on
AVX-512). A tensor of, say, 24 channels stays NCHW: layout transforms around it, and its
convs fall to the unblocked kernels. On MobileNetV2 at 224 (AVX-512) the 24-channel stage
alone cost about a quarter of the model's kernel time. This pass pads such channel
groups to the next multiple of ``b`` with zero channels before the layout pass: every
producer conv gets zero output channels (zero weights, zero bias), every consumer conv zero
input channels, per-channel constants zeros. The added channels never reach a
non-convolution consumer, so the model computes the same function.

The channel groups are the pruning analysis's (:func:`tvm_hcprune.analyze`): channels tied
by residual adds and elementwise ops pad together, and the rewrite is pruning's
(:func:`tvm_hcprune.transform.apply_plan.rewrite_channels`), with kept indices past a group's
size meaning "a zero channel". Only groups whose channels pass through convolutions,
elementwise ops and pooling are padded (:data:`PADDABLE_OPS`); a group reaching a reshape,
a concat, a matmul, a reduction over channels or the model's output keeps its width.
"""

from __future__ import annotations

import numpy as np
import tvm

from tvm_hcprune.analysis import analyze
from tvm_hcprune.ops.desc import desc_spaces
from tvm_hcprune.transform.apply_plan import rewrite_channels
from tvm_hcprune.utils.relax import calls, op_name, static_shape

__all__ = ["PADDABLE_OPS", "SHARED_AXIS", "PadChannels", "group_ops", "padded_groups"]

#: ops a padded group's channels may pass through: each either reads only its own channel
#: (elementwise, pooling, inference batch norm and the tuple item that takes its result;
#: the zero channels' values never leave them) or multiplies the channels by a weight that
#: is zero on the added ones (convolutions)
PADDABLE_OPS = frozenset(
    f"relax.{op}" for op in (
        "nn.conv2d", "add", "subtract", "multiply", "divide", "maximum", "minimum", "clip",
        "nn.relu", "nn.relu6", "nn.leakyrelu", "nn.prelu", "sigmoid", "tanh", "nn.silu",
        "nn.gelu", "nn.max_pool2d", "nn.avg_pool2d", "nn.batch_norm")) | {"TupleGetItem"}


#: what :func:`group_ops` records for a group whose channels share an axis with other
#: channels (a concat, a channel pad, a flatten): added channels there would shift the others
SHARED_AXIS = "shared axis"


def group_ops(graph) -> dict[int, set[str]]:
    """The ops whose inputs or outputs carry each group's channels (plus
    :data:`SHARED_AXIS` where they share an axis with other channels)."""
    ctx = graph.ctx
    found: dict[int, set[str]] = {}

    def axes_of(d):
        if isinstance(d, list):
            return [a for x in d for a in axes_of(x)]
        return [] if d is None else [d]

    for var, call in ctx.values.items():
        op = getattr(getattr(call, "op", None), "name", None) or type(call).__name__
        axes = axes_of(ctx.descs.get(var)) + [
            a for arg in getattr(call, "args", ()) for a in axes_of(ctx.desc(arg))]
        for desc in axes:
            shared = len(desc) > 1 or any(seg.inner != 1 for seg in desc)
            for s in desc_spaces(desc):
                if s in graph.space_group:
                    ops = found.setdefault(graph.space_group[s], set())
                    ops.add(op)
                    if shared:
                        ops.add(SHARED_AXIS)
    return found


def _convs_off_block(mod: tvm.IRModule, block: int) -> bool:
    """Whether some conv2d writes a channel count that is not a multiple of ``block`` (a
    group off the block starts at such a conv; without one there is nothing to pad and the
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


def padded_groups(graph, block: int, max_pad: float = 0.5) -> dict[int, int]:
    """``{group id: padded size}`` of the groups :class:`PadChannels` pads.

    A group is padded when its size is not a multiple of ``block``, it is larger than
    ``block``, the zero channels add at most ``max_pad`` of its size, it can be pruned (not
    frozen: frozen groups reach the model's outputs or ops the analysis cannot follow), it
    feeds no grouped (non-depthwise) convolution, its channels never share an axis with
    other channels (concat, channel padding, flatten) and every op they pass through is in
    :data:`PADDABLE_OPS`.
    """
    ops = group_ops(graph)
    grouped = {graph.space_group[s] for var, (_ko, _ki, _g, descs) in
               graph.ctx.group_inputs.items() for d in descs for s in desc_spaces(d)
               if s in graph.space_group}
    out = {}
    for g in graph.groups:
        size = g.size
        padded = -(-size // block) * block
        if (size % block == 0 or size < block or padded - size > max_pad * size or g.frozen
                or g.unit != 1 or g.id in grouped or g.balance is not None):
            continue
        if not ops.get(g.id) or not ops[g.id] <= PADDABLE_OPS:
            continue
        out[g.id] = padded
    return out


@tvm.transform.module_pass(opt_level=0, name="PadChannels")
class PadChannels:
    """Pad channel groups whose width is not a multiple of ``block`` with zero channels.

    Parameters
    ----------
    block : int
        The channel block of the blocked layout (the target's fp32 lanes).
    max_pad : float
        Largest share of added channels (0.5: 24 -> 32 is padded, 20 -> 32 is not).

    Notes
    -----
    Runs before :class:`~tvm_hcprune.backend.cpu.layout.BlockChannelLayout`. The module it
    returns computes the same outputs (the zero channels meet zero weights); a module the
    channel analysis cannot read is returned unchanged. ``padded`` holds the last run's
    ``{group: (old size, new size)}``.

    Examples
    --------
    >>> mod = PadChannels(block=16)(mod)  # doctest: +SKIP
    """

    def __init__(self, block: int = 16, max_pad: float = 0.5):
        self.block = int(block)
        self.max_pad = float(max_pad)
        self.padded: dict[int, tuple[int, int]] = {}

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
        sizes = padded_groups(graph, self.block, self.max_pad)
        if not sizes:
            return mod
        space_group = graph.space_group

        def kept_of(space):
            g = space_group.get(space)
            return None if g not in sizes else np.arange(sizes[g])

        out = rewrite_channels(graph, kept_of)
        self.padded = {g: (graph.groups[g].size, n) for g, n in sizes.items()}
        return out
