"""Op handlers for the ops that TVM 0.27's ONNX and TFLite importers emit.

Each handler declares how channel axes map from inputs to outputs (see ``registry``).
"""

from __future__ import annotations

import math

import numpy as np
from tvm import relax

from tvm_hcprune.ops.desc import Seg, desc_length, take_channels
from tvm_hcprune.ops.registry import OpHandler, register_op_handler
from tvm_hcprune.ops.weights import weight_axes
from tvm_hcprune.utils.relax import is_const, static_shape


def _out_shape(var):
    return static_shape(var)


def _new_shape_from_descs(rw, var):
    """The binding's output shape after pruning (channel axes shrunk)."""
    shape = list(_out_shape(var))
    for ax, d in enumerate(rw.out_desc(var)):
        idx = rw.axis_index(d)
        if idx is not None:
            shape[ax] = len(idx)
    return shape


# ---------------------------------------------------------------------------------------
# producers
# ---------------------------------------------------------------------------------------
@register_op_handler("relax.nn.conv2d", "relax.nn.conv1d", "relax.nn.conv3d")
class ConvHandler(OpHandler):
    """Convolution: output channels form a new space; depthwise passes channels through.

    Layouts are read from the attributes (NCHW/OIHW as ONNX imports, NHWC/HWIO/HWOI as
    TFLite imports). Grouped convolutions keep equal channel counts in every group: the
    output channels are pruned alike in each group, the input channels per group (balanced).
    """

    transpose = False

    def analyze(self, ctx, var, call):
        x, w = call.args[0], call.args[1]
        at = call.attrs
        op = call.op.name
        if not is_const(w):
            ctx.freeze(ctx.desc(x), var, op, "weight is not a constant")
            return self._plain_out(ctx, var, call)
        in_c = str(at.data_layout).index("C")
        out_c = str(at.out_layout or at.data_layout).index("C")
        ko, ki = weight_axes(call)
        wshape = static_shape(w)
        xdesc = ctx.desc(x)
        nd = len(_out_shape(var))
        out = [None] * nd
        for ax, d in enumerate(xdesc):  # batch and spatial axes are mixed or kept whole
            if ax != in_c and d is not None:
                ctx.freeze(d, var, op, f"convolution over axis {ax}, which carries channels "
                           "(a reshape or transpose moved them off the channel axis)")
        cin = static_shape(x)[in_c]
        groups = int(at.groups)
        cout = _out_shape(var)[out_c]
        kernel = math.prod(s for i, s in enumerate(wshape) if i not in (ko, ki))
        if self.transpose:  # every input pixel scatters into cout/groups x kernel outputs
            macs = math.prod(static_shape(x)) * (cout // groups) * kernel
        else:
            macs = math.prod(_out_shape(var)) * (cin // groups) * kernel
        if groups == 1:
            sid = ctx.new_space(cout, var, op)
            out[out_c] = ctx.one_space(sid, cout)
            ctx.add_macs(var, op, macs, (out[out_c], xdesc[in_c]))
            ctx.slice_const(var, 1, ko, out[out_c])
            ctx.slice_const(var, 1, ki, xdesc[in_c])
            ctx.add_member("producer", var, op, 1, ko, out[out_c])
            ctx.add_member("consumer", var, op, 1, ki, xdesc[in_c])
            return out
        depthwise = groups == cin == cout and wshape[ki] == 1 and not self.transpose
        if depthwise:
            d = xdesc[in_c]
            if d is None:
                d = ctx.one_space(ctx.new_space(cout, var, op), cout)
                ctx.freeze(d, var, op, "depthwise conv over channels that cannot be pruned")
            out[out_c] = d
            ctx.add_macs(var, op, macs, (d,))
            ctx.slice_const(var, 1, ko, d)
            ctx.add_member("producer", var, op, 1, ko, d)
            return out
        if self.transpose:
            reason = f"grouped transposed convolution (groups={groups}) is a barrier"
            ctx.freeze(xdesc[in_c], var, op, reason)
            ctx.add_macs(var, op, macs)
            sid = ctx.new_space(cout, var, op)
            out[out_c] = ctx.one_space(sid, cout)
            ctx.freeze(out[out_c], var, op, reason)
            return out
        return self._grouped(ctx, var, op, xdesc[in_c], out, out_c, ko, ki, groups, cin, cout,
                             macs)

    @staticmethod
    def _grouped(ctx, var, op, xd, out, out_c, ko, ki, groups, cin, cout, macs):
        """A grouped (not depthwise) convolution.

        Output: one space of ``cout/groups`` channels repeated in every group, so each group
        keeps the same output channels (the weight stays a grouped weight). Input: one space
        per group, balanced so every group keeps as many channels; the weight's input axis
        is then gathered per group at rewrite.
        """
        per_in, per_out = cin // groups, cout // groups
        t = [ctx.new_space(per_in, var, op) for _ in range(groups)]
        gin = tuple(Seg(s, per_in, 1) for s in t)
        if xd is None:
            ctx.freeze(gin, var, op, "grouped conv over channels that cannot be pruned")
            xd = gin
        else:
            xd = ctx.unify(xd, gin, var, op)
        ctx.group_inputs[var] = (ko, ki, groups, [ctx.one_space(s, per_in) for s in t])
        u = ctx.new_space(per_out, var, op)
        out[out_c] = tuple(Seg(u, per_out, 1) for _ in range(groups))
        ctx.add_macs(var, op, macs, (out[out_c], xd))
        ctx.slice_const(var, 1, ko, out[out_c])
        # the input axis shrinks by the same count in every group (params bookkeeping); the
        # per-group gather itself is done by ``rewrite``
        ctx.slice_const(var, 1, ki, ctx.one_space(t[0], per_in))
        ctx.add_member("producer", var, op, 1, ko, out[out_c])
        ctx.add_member("grouped_consumer", var, op, 1, ki, xd)
        ctx.account(var, xd)  # every group's input channels, gathered at rewrite
        return out

    def _plain_out(self, ctx, var, call):
        return [None] * len(_out_shape(var))

    def rewrite(self, rw, var, call, args):
        at = call.attrs
        groups = int(at.groups)
        grouped = rw.ctx.group_inputs.get(var)
        if grouped is not None:
            args = list(args)
            args[1] = _grouped_weight(rw, var, call, grouped)
        elif groups > 1:
            in_c = str(at.data_layout).index("C")
            new_cin = rw.new_shape(args[0])[in_c]
            old_cin = static_shape(call.args[0])[in_c]
            if new_cin != old_cin:  # depthwise: groups follow the channels
                groups = new_cin
        name = call.op.name.split(".")[-1]
        fn = getattr(relax.op.nn, name)
        kwargs = dict(strides=at.strides, padding=at.padding, dilation=at.dilation,
                      groups=groups, data_layout=at.data_layout, kernel_layout=at.kernel_layout,
                      out_layout=at.out_layout, out_dtype=at.out_dtype)
        if self.transpose:
            kwargs["output_padding"] = at.output_padding
        return fn(args[0], args[1], **kwargs)


def _grouped_weight(rw, var, call, grouped):
    """A grouped conv's weight for the kept channels: output rows sliced, input axis
    gathered per group (each group keeps its own input channels, equally many)."""
    ko, ki, groups, in_descs = grouped
    w = rw.ctx.array(call.args[1])
    idx_o = rw.axis_index(rw.out_desc(var)[str(call.attrs.out_layout or call.attrs.data_layout)
                                           .index("C")])
    if idx_o is not None:
        w = take_channels(w, idx_o, ko)
    per = w.shape[ko] // groups
    blocks = []
    for q, d in enumerate(in_descs):
        block = np.take(w, np.arange(q * per, (q + 1) * per), axis=ko)
        idx = rw.axis_index(d)
        blocks.append(block if idx is None else take_channels(block, idx, ki))
    w = np.concatenate(blocks, axis=ko)
    return relax.const(w, str(w.dtype))


@register_op_handler("relax.nn.conv2d_transpose", "relax.nn.conv1d_transpose")
class ConvTransposeHandler(ConvHandler):
    transpose = True


@register_op_handler("relax.matmul")
class MatmulHandler(OpHandler):
    """``x @ W`` with a constant 2-D ``W``: W's columns are a new space, rows follow x."""

    def analyze(self, ctx, var, call):
        a, b = call.args[0], call.args[1]
        op = call.op.name
        out_shape = _out_shape(var)
        nd = len(out_shape)
        adesc = ctx.desc(a)
        ashape = static_shape(a)
        macs = math.prod(out_shape) * ashape[-1]
        if is_const(b) and len(static_shape(b)) == 2 and not is_const(a):
            out = list(adesc[:-1]) + [None]
            out = [None] * (nd - len(out)) + out
            n = out_shape[-1]
            sid = ctx.new_space(n, var, op)
            out[-1] = ctx.one_space(sid, n)
            ctx.add_macs(var, op, macs, (out[-1], adesc[-1]))
            ctx.slice_const(var, 1, 0, adesc[-1])
            ctx.slice_const(var, 1, 1, out[-1])
            ctx.add_member("producer", var, op, 1, 1, out[-1])
            ctx.add_member("consumer", var, op, 1, 0, adesc[-1])
            return out
        if not is_const(a) and not is_const(b):
            out = self._batch_matmul(ctx, var, call, op, nd)
            ctx.add_macs(var, op, macs, tuple(out))
            return out
        ctx.add_macs(var, op, macs)
        ctx.freeze([ctx.desc(a), ctx.desc(b)], var, op,
                   "matmul with a constant left operand is a barrier")
        return [None] * nd

    @staticmethod
    def _batch_matmul(ctx, var, call, op, nd):
        """Attention's batch matmuls: batch axes (heads) couple, contraction must be free."""
        a, b = call.args[0], call.args[1]
        da, db = list(ctx.desc(a)), list(ctx.desc(b))
        if len(da) < 2 or len(db) < 2:
            ctx.freeze([da, db], var, op, "matmul of vectors over channels is a barrier")
            return [None] * nd
        for d in (da[-1], db[-2]):
            ctx.freeze(d, var, op, "matmul contracts over a channel axis of an activation")
        ba, bb = da[:-2], db[:-2]
        batch = [None] * (nd - 2)
        for src in (ba, bb):
            off = nd - 2 - len(src)
            for k, d in enumerate(src):
                ax = off + k
                shape_src = static_shape(a if src is ba else b)
                if shape_src[k] == 1 and _out_shape(var)[ax] != 1:
                    continue
                batch[ax] = d if batch[ax] is None else ctx.unify(batch[ax], d, var, op)
        return batch + [da[-2], db[-1]]


# ---------------------------------------------------------------------------------------
# channel-preserving ops
# ---------------------------------------------------------------------------------------
_UNARY = [
    "relax.nn.relu", "relax.nn.gelu", "relax.nn.gelu_tanh", "relax.nn.silu",
    "relax.nn.leakyrelu", "relax.nn.softplus", "relax.nn.selu", "relax.nn.elu",
    "relax.sigmoid", "relax.tanh", "relax.clip", "relax.astype", "relax.exp", "relax.erf",
    "relax.sqrt", "relax.rsqrt", "relax.negative", "relax.abs", "relax.square",
    "relax.round", "relax.floor", "relax.ceil", "relax.nn.dropout", "relax.log",
    "relax.sin", "relax.cos", "relax.nn.hardswish", "relax.nn.hardsigmoid",
    "relax.wrap_param", "relax.isnan", "relax.isinf",
]


@register_op_handler(*_UNARY)
class UnaryHandler(OpHandler):
    """Elementwise ops of one tensor: descriptors pass through (dropout: a tuple)."""

    def analyze(self, ctx, var, call):
        d = ctx.desc(call.args[0])
        if isinstance(var.ty, relax.TupleType):  # dropout returns (out, mask)
            return [list(d), list(d)]
        return list(d)


@register_op_handler(
    "relax.add", "relax.subtract", "relax.multiply", "relax.divide", "relax.maximum",
    "relax.minimum", "relax.power", "relax.floor_divide", "relax.where",
    "relax.broadcast_to",
)
class BroadcastHandler(OpHandler):
    """Broadcasting elementwise ops.

    Activations meeting on an axis are unified (residual add, SE gating); constant
    operands (bias, scales) are sliced along the axes they span.
    """

    def analyze(self, ctx, var, call):
        op = call.op.name
        out_shape = _out_shape(var)
        nd = len(out_shape)
        descs, seen = [None] * nd, [False] * nd
        tensor_args = [(i, a) for i, a in enumerate(call.args)
                       if isinstance(a.ty, relax.TensorType)]
        for _i, a in tensor_args:
            if is_const(a):
                continue
            shp = static_shape(a)
            d = ctx.desc(a)
            off = nd - len(shp)
            for k, s in enumerate(shp):
                ax = off + k
                if s == 1 and out_shape[ax] != 1:
                    continue
                if not seen[ax]:
                    descs[ax], seen[ax] = d[k], True
                else:
                    descs[ax] = ctx.unify(descs[ax], d[k], var, op)
        for i, a in tensor_args:
            if not is_const(a):
                continue
            shp = static_shape(a)
            off = nd - len(shp)
            for k, s in enumerate(shp):
                ax = off + k
                if s != 1 and s == out_shape[ax]:
                    ctx.slice_const(var, i, k, descs[ax])
                    if op == "relax.multiply":
                        ctx.add_member("scale", var, op, i, k, descs[ax])
        return descs

    def rewrite(self, rw, var, call, args):
        if call.op.name == "relax.broadcast_to":
            return relax.op.broadcast_to(args[0], _new_shape_from_descs(rw, var))
        return relax.Call(call.op, args, call.attrs, call.ty_args)


@register_op_handler("relax.nn.batch_norm")
class BatchNormHandler(OpHandler):
    """Inference batch-norm: parameters follow the channel axis; outputs a tuple."""

    def analyze(self, ctx, var, call):
        axis = int(call.attrs.axis)
        d = ctx.desc(call.args[0])
        axis = axis % len(d)
        for i in range(1, 5):
            ctx.slice_const(var, i, 0, d[axis])
        ctx.add_member("scale", var, call.op.name, 1, 0, d[axis])
        return [list(d), [d[axis]], [d[axis]]]


@register_op_handler("relax.nn.prelu")
class PReluHandler(OpHandler):
    def analyze(self, ctx, var, call):
        d = ctx.desc(call.args[0])
        axis = int(call.attrs.axis) % len(d)
        ctx.slice_const(var, 1, 0, d[axis])
        return list(d)


@register_op_handler("relax.nn.layer_norm", "relax.nn.group_norm", "relax.nn.rms_norm",
                     "relax.nn.instance_norm")
class NormHandler(OpHandler):
    """Normalisation over axes: a barrier on the normalised axes, pass-through elsewhere."""

    def analyze(self, ctx, var, call):
        d = list(ctx.desc(call.args[0]))
        axes = getattr(call.attrs, "axes", None)
        if axes is None or call.op.name == "relax.nn.group_norm":
            axes = range(len(d))
        for ax in axes:
            ax = int(ax) % len(d)
            ctx.freeze(d[ax], var, call.op.name, "normalisation over the channel axis")
        return d


@register_op_handler("relax.nn.softmax", "relax.nn.log_softmax")
class SoftmaxHandler(OpHandler):
    def analyze(self, ctx, var, call):
        d = list(ctx.desc(call.args[0]))
        ax = int(call.attrs.axis) % len(d)
        ctx.freeze(d[ax], var, call.op.name, "softmax over the channel axis")
        return d


@register_op_handler("relax.mean", "relax.sum", "relax.max", "relax.min", "relax.prod",
                     "relax.variance", "relax.std")
class ReduceHandler(OpHandler):
    """Reductions: a barrier on reduced channel axes; other axes pass through."""

    def analyze(self, ctx, var, call):
        d = list(ctx.desc(call.args[0]))
        nd = len(d)
        axes = call.attrs.axis
        axes = list(range(nd)) if axes is None else [int(a) % nd for a in axes]
        for ax in axes:
            ctx.freeze(d[ax], var, call.op.name, "reduction over the channel axis")
        if bool(call.attrs.keepdims):
            return [None if i in axes else d[i] for i in range(nd)]
        return [d[i] for i in range(nd) if i not in axes]


@register_op_handler("relax.nn.max_pool2d", "relax.nn.avg_pool2d", "relax.nn.max_pool1d",
                     "relax.nn.avg_pool1d", "relax.nn.adaptive_avg_pool2d",
                     "relax.nn.adaptive_avg_pool1d", "relax.image.resize2d")
class SpatialHandler(OpHandler):
    """Pooling and resizing: channels pass through (spatial axes carry none); the default
    rewrite suffices since no attribute (nor resize2d's spatial size) counts channels."""

    def analyze(self, ctx, var, call):
        d = list(ctx.desc(call.args[0]))
        layout = str(call.attrs.layout)
        out_layout = str(getattr(call.attrs, "out_layout", None) or layout)
        out = [None] * len(_out_shape(var))
        out[out_layout.index("C")] = d[layout.index("C")]
        for i, x in enumerate(d):
            if i != layout.index("C"):
                ctx.freeze(x, var, call.op.name, "pooling over a channel axis")
        return out


# ---------------------------------------------------------------------------------------
# layout ops
# ---------------------------------------------------------------------------------------
@register_op_handler("relax.permute_dims")
class PermuteHandler(OpHandler):
    def analyze(self, ctx, var, call):
        d = list(ctx.desc(call.args[0]))
        axes = call.attrs.axes
        axes = list(reversed(range(len(d)))) if axes is None else [int(a) for a in axes]
        return [d[a] for a in axes]


@register_op_handler("relax.concat")
class ConcatHandler(OpHandler):
    """Concatenation: the output axis lists each input's segments at its offset."""

    def analyze(self, ctx, var, call):
        op = call.op.name
        fields = call.args[0].fields
        nd = len(_out_shape(var))
        axis = int(call.attrs.axis) % nd
        segs, out = [], [None] * nd
        for k, f in enumerate(fields):
            d = ctx.desc(f)
            shp = static_shape(f)
            segs.extend(d[axis] if d[axis] is not None else ctx.fixed(shp[axis]))
            for ax in range(nd):
                if ax == axis:
                    continue
                out[ax] = d[ax] if k == 0 else ctx.unify(out[ax], d[ax], var, op)
            if is_const(f):
                ctx.freeze(out, var, op, "concatenation with a constant")
        out[axis] = tuple(segs) if any(s.space is not None for s in segs) else None
        return out


@register_op_handler("relax.stack")
class StackHandler(OpHandler):
    """Stacking along a new axis: inputs are unified axis by axis (ONNX Sum imports so)."""

    def analyze(self, ctx, var, call):
        op = call.op.name
        fields = call.args[0].fields
        nd = len(_out_shape(var))
        axis = int(call.attrs.axis) % nd
        merged = None
        for f in fields:
            d = list(ctx.desc(f))
            merged = d if merged is None else [ctx.unify(a, b, var, op)
                                               for a, b in zip(merged, d, strict=True)]
        return merged[:axis] + [None] + merged[axis:]


@register_op_handler("relax.split")
class SplitHandler(OpHandler):
    """Split: along a channel axis only at segment boundaries, else a barrier; except a
    projection split into pieces that are each reshaped into attention heads (a fused Q/K/V
    split first, then viewed as heads): its space is split into one space per piece."""

    def analyze(self, ctx, var, call):
        d = list(ctx.desc(call.args[0]))
        shape = static_shape(call.args[0])
        axis = int(call.attrs.axis) % len(d)
        ind = call.attrs.indices_or_sections
        if isinstance(ind, int) or hasattr(ind, "value"):
            n = int(ind)
            bounds = [shape[axis] // n * i for i in range(1, n)]
        else:
            bounds = [int(i) for i in ind]
        edges = [0, *bounds, shape[axis]]
        if d[axis] is not None and _head_pieces(ctx, var, d[axis], axis, edges):
            parts = ctx.split_space(d[axis][0].space, [b - a for a, b in zip(
                edges[:-1], edges[1:], strict=True)])
            d[axis] = tuple(Seg(p, ctx.sizes[p], 1) for p in parts)
        outs = []
        for lo, hi in zip(edges[:-1], edges[1:], strict=True):
            o = list(d)
            o[axis] = _sub_desc(d[axis], lo, hi) if d[axis] is not None else None
            if d[axis] is not None and o[axis] is None:
                ctx.freeze(d[axis], var, call.op.name,
                           "split inside a channel group (not at a concat boundary)")
                o[axis] = d[axis]
                outs = None
                break
            outs.append(o)
        if outs is None:
            return [[*d[:axis], None, *d[axis + 1:]] for _ in range(len(edges) - 1)]
        return outs

    def rewrite(self, rw, var, call, args):
        d = rw.in_desc(call.args[0])
        axis = int(call.attrs.axis) % len(d)
        idx = rw.axis_index(d[axis])
        if idx is None:
            return relax.Call(call.op, args, call.attrs, call.ty_args)
        shape = static_shape(call.args[0])
        ind = call.attrs.indices_or_sections
        if isinstance(ind, int) or hasattr(ind, "value"):
            n = int(ind)
            bounds = [shape[axis] // n * i for i in range(1, n)]
        else:
            bounds = [int(i) for i in ind]
        new_bounds = [int((idx < b).sum()) for b in bounds]
        return relax.op.split(args[0], new_bounds, axis)


def _head_pieces(ctx, var, desc, axis, edges) -> bool:
    """Whether a split cuts one projection's channels into pieces that are each only
    reshaped into attention heads (``q, k, v = split(x @ W_qkv, 3)``, each viewed as (H, hd)):
    the space is then split into one space per piece, which the heads' reshapes coarsen and
    the attention's batch matmuls tie together again."""
    if (len(desc) != 1 or desc[0].inner != 1 or desc[0].space is None
            or ctx.sizes[ctx.find(desc[0].space)] != edges[-1] or len(edges) < 3):
        return False
    read = set()
    for item, value in ctx.readers(var):
        if not isinstance(value, relax.TupleGetItem):
            return False
        read.add(int(value.index))
        for user, r in ctx.readers(item):
            if not (getattr(getattr(r, "op", None), "name", "") == "relax.reshape"
                    and _splits_heads(static_shape(item), static_shape(user), axis)):
                return False
        if not ctx.readers(item):
            return False
    return read == set(range(len(edges) - 1))


def _splits_heads(ishape, oshape, axis) -> bool:
    """Whether a reshape from ``ishape`` to ``oshape`` splits ``axis`` into (H, D/H, ..), H > 1."""
    pre = math.prod(ishape[:axis])
    hits = [j for j in range(len(oshape)) if math.prod(oshape[:j]) == pre and oshape[j] > 1]
    if not hits:
        return False
    j, n = hits[0], ishape[axis]
    return 1 < oshape[j] < n and n % oshape[j] == 0 and _span(oshape[j + 1:], n // oshape[j]) > 0


def _sub_desc(desc, lo, hi):
    """Segments of ``desc`` exactly covering [lo, hi), or None if a segment is cut."""
    out, off = [], 0
    for s in desc:
        a, b = off, off + s.length
        off = b
        if b <= lo or a >= hi:
            continue
        if a < lo or b > hi:
            return None
        out.append(s)
    return tuple(out)


@register_op_handler("relax.strided_slice")
class StridedSliceHandler(OpHandler):
    """Slicing a channel axis is allowed only at segment boundaries with stride 1."""

    def analyze(self, ctx, var, call):
        d = list(ctx.desc(call.args[0]))
        shape = static_shape(call.args[0])
        out = list(d)
        for ax, lo, hi, st in _slice_spec(call, shape):
            if d[ax] is None:
                continue
            sub = _sub_desc(d[ax], lo, hi) if st == 1 else None
            if sub is None:
                ctx.freeze(d[ax], var, call.op.name, "slice inside a channel group")
                out[ax] = None
            else:
                out[ax] = sub
                ctx.account(var, d[ax])  # the cut-off segments: the rewrite recounts bounds
        return out

    def rewrite(self, rw, var, call, args):
        d = rw.in_desc(call.args[0])
        shape = static_shape(call.args[0])
        axes, begins, ends, strides = [], [], [], []
        for ax, lo, hi, st in _slice_spec(call, shape):
            idx = rw.axis_index(d[ax])
            if idx is not None:
                lo, hi = int((idx < lo).sum()), int((idx < hi).sum())
            axes.append(ax)
            begins.append(lo)
            ends.append(hi)
            strides.append(st)
        return relax.op.strided_slice(args[0], axes, begins, ends, strides,
                                      assume_inbound=bool(call.attrs.assume_inbound))


@register_op_handler("relax.take")
class TakeHandler(OpHandler):
    """Gathering along an axis that carries no channels (``q, k, v = qkv[0], qkv[1],
    qkv[2]`` of a fused projection, as ONNX ``Gather`` imports) passes the other axes'
    channels through; gathering along a channel axis is a barrier."""

    def analyze(self, ctx, var, call):
        op = call.op.name
        d = list(ctx.desc(call.args[0]))
        ind = static_shape(call.args[1])
        if call.attrs.axis is None or ind is None:
            ctx.freeze(d, var, op, "take over the flattened tensor")
            return [None] * len(_out_shape(var))
        ctx.freeze(ctx.desc(call.args[1]), var, op, "channels used as gather indices")
        axis = int(call.attrs.axis) % len(d)
        ctx.freeze(d[axis], var, op, "take (gather) along a channel axis")
        return d[:axis] + [None] * len(ind) + d[axis + 1:]


def _ints(expr):
    return [int(f.value) for f in expr.fields]


def _slice_spec(call, shape):
    """(axis, begin, end, stride) per sliced axis, normalised to [0, dim]."""
    axes, begin, end = _ints(call.args[1]), _ints(call.args[2]), _ints(call.args[3])
    strides = _ints(call.args[4]) if len(call.args) > 4 else [1] * len(axes)
    out = []
    for ax, lo, hi, st in zip(axes, begin, end, strides, strict=True):
        ax = ax % len(shape)
        dim = shape[ax]
        lo = min(max(0, lo + dim if lo < 0 else lo), dim)
        hi = min(max(0, hi + dim if hi < 0 else hi), dim)
        out.append((ax, lo, hi, st))
    return out


@register_op_handler("relax.nn.pad")
class PadHandler(OpHandler):
    """Padding. Spatial padding passes channels through. Padding a channel axis (BlazeFace's
    residuals) appends zero channels; each padded run is a space of its own, so the channels
    a residual add couples to it can be pruned too: the pad width shrinks with them."""

    def analyze(self, ctx, var, call):
        d = list(ctx.desc(call.args[0]))
        shape = static_shape(call.args[0])
        pads = [int(p) for p in call.attrs.pad_width]
        out = list(d)
        for ax in range(len(d)):
            before, after = pads[2 * ax], pads[2 * ax + 1]
            if not (before or after):
                continue
            if d[ax] is None and str(call.attrs.pad_mode) != "constant":
                continue
            segs = list(d[ax]) if d[ax] is not None else [Seg(None, shape[ax], 1)]
            constant = str(call.attrs.pad_mode) == "constant"
            for n, at_front in ((before, True), (after, False)):
                if not n:
                    continue
                seg = Seg(ctx.new_space(n, var, call.op.name), n, 1)
                if not constant:  # edge/reflect padding copies channels: not free
                    ctx.freeze((seg,), var, call.op.name, "non-constant channel padding")
                segs.insert(0, seg) if at_front else segs.append(seg)
            out[ax] = tuple(segs)
        return out

    def rewrite(self, rw, var, call, args):
        """The kept padding before the input, and after it whatever the kept output width
        leaves: ``out - before - new input``. Pruning keeps part of each padded run; channel
        padding (``PadChannels``) may widen the input into channels the pad filled with
        zeros, so the pad after it shrinks (to nothing: the input itself)."""
        pads = [int(p) for p in call.attrs.pad_width]
        out_shape, new_in = static_shape(var), rw.new_shape(args[0])
        for ax, d in enumerate(rw.out_desc(var)):
            if not (pads[2 * ax] or pads[2 * ax + 1]):
                continue
            idx = rw.axis_index(d)
            if idx is not None:
                pads[2 * ax] = int((idx < pads[2 * ax]).sum())
            width = out_shape[ax] if idx is None else len(idx)
            pads[2 * ax + 1] = width - pads[2 * ax] - new_in[ax]
            if pads[2 * ax + 1] < 0:  # pragma: no cover - PadChannels checks the widths
                raise ValueError(f"padding axis {ax} to {width} from {new_in[ax]} channels")
        if not any(pads) and str(call.attrs.pad_mode) == "constant":
            return args[0]
        return relax.op.nn.pad(args[0], pads, str(call.attrs.pad_mode),
                               float(call.attrs.pad_value))


def _span(dims, total):
    """How many leading ``dims`` multiply to exactly ``total`` (0 if none do)."""
    acc = 1
    for k, d in enumerate(dims):
        acc *= d
        if acc == total:
            return k + 1
        if acc > total:
            return 0
    return 0


@register_op_handler("relax.squeeze", "relax.expand_dims", "relax.reshape", "relax.flatten")
class ReshapeHandler(OpHandler):
    """Reshapes that keep channel axes whole, or fold channels x trailing dims into one axis.

    A channel axis of size C preceded by the same number of elements in input and output is
    either kept (output dim C) or merged with trailing axes that carry no channels (output
    dim C*m, each channel repeated over m consecutive indices). Anything else splits a
    channel axis and is a barrier.
    """

    def analyze(self, ctx, var, call):
        d = list(ctx.desc(call.args[0]))
        ishape = static_shape(call.args[0])
        oshape = _out_shape(var)
        out = [None] * len(oshape)
        opre = [math.prod(oshape[:i]) for i in range(len(oshape))]
        for ax, desc in enumerate(d):
            if desc is None:
                continue
            pre = math.prod(ishape[:ax])
            hits = [j for j in range(len(oshape)) if opre[j] == pre and oshape[j] > 1]
            ok = False
            if hits:
                j = hits[0]
                m, k = oshape[j], ax + 1
                if m % ishape[ax] == 0:
                    rest = m // ishape[ax]
                    # the trailing input axes folded in must carry no channels
                    acc = 1
                    while acc < rest and k < len(ishape):
                        if d[k] is not None:
                            break
                        acc *= ishape[k]
                        k += 1
                    if acc == rest:
                        ok = True
                        out[j] = tuple(Seg(s.space, s.size, s.inner * rest) for s in desc)
            if not ok and hits:
                ok = _fused_split(ctx, var, call, desc, ishape[ax], hits[0], oshape, out)
            if not ok and hits and len(desc) == 1 and desc[0].inner == 1 \
                    and desc[0].space is not None and ishape[ax] % oshape[hits[0]] == 0:
                # (.., D, ..) -> (.., H, D/H, ..): a projection split into attention heads
                j, units = hits[0], oshape[hits[0]]
                rest = ishape[ax] // units
                if math.prod(oshape[j + 1:j + 1 + _span(oshape[j + 1:], rest)]) == rest:
                    unit_space = ctx.coarsen_space(desc[0].space, units)
                    out[j] = (Seg(unit_space, units, 1),)
                    ok = True
            if not ok and hits:
                ok = self._split_groups(desc, hits[0], oshape, out)
            if not ok and hits:
                ok = self._unfold(desc, ishape[ax], hits[0], oshape, out)
            if not ok:
                ctx.freeze(desc, var, call.op.name, "reshape splits a channel axis")
        for j, o in enumerate(out):
            if o is not None and desc_length(o) != oshape[j]:  # pragma: no cover - sanity
                ctx.freeze(o, var, call.op.name, "reshape bookkeeping mismatch")
                out[j] = None
        return out

    @staticmethod
    def _split_groups(desc, j, oshape, out) -> bool:
        """(.., G*n, ..) -> (.., G, n, ..) where the channels repeat once per group (a grouped
        conv's output, as channel shuffle reshapes it): the G axis carries no prunable
        channels, the n axis carries one group's."""
        groups = oshape[j]
        if j + 1 >= len(oshape) or groups < 2 or len(desc) % groups:
            return False
        period = len(desc) // groups
        chunk = tuple(desc[:period])
        if tuple(desc) != chunk * groups or desc_length(chunk) != oshape[j + 1]:
            return False
        out[j], out[j + 1] = None, chunk
        return True

    @staticmethod
    def _unfold(desc, n, j, oshape, out) -> bool:
        """(.., C*m, ..) -> (.., C, m, ..) where every channel spans a multiple of ``m``
        consecutive indices (the inverse of folding channels with trailing axes, e.g.
        attention scores merged to (heads*queries, keys) for a softmax and split back)."""
        if n % oshape[j]:
            return False
        rest = n // oshape[j]
        if rest == 1 or any(s.inner % rest for s in desc) \
                or _span(oshape[j + 1:], rest) == 0:
            return False
        out[j] = tuple(Seg(s.space, s.size, s.inner // rest) for s in desc)
        return True

    def rewrite(self, rw, var, call, args):
        name = call.op.name
        if name in ("relax.expand_dims", "relax.flatten") or (
                name == "relax.squeeze" and call.attrs.axis is not None):
            # no attribute counts channels (a squeeze of all unit axes would also drop an
            # axis pruned to one channel: that one becomes a reshape)
            return relax.Call(call.op, args, call.attrs, call.ty_args)
        return relax.op.reshape(args[0], _new_shape_from_descs(rw, var))


_SELECTORS = ("relax.strided_slice", "relax.take", "relax.split")


def _selections(ctx, var, axis: int) -> tuple[list, list]:
    """Who reads ``var``'s ``axis``, through transposes: ``(selectors, others)``, the
    bindings that select along it (strided_slice / take / split over that axis) and the
    others (each ``(var name, op name)``)."""
    sel, other = [], []
    for user, value in ctx.readers(var):
        name = getattr(getattr(value, "op", None), "name", type(value).__name__)
        if name == "relax.permute_dims" and value.args[0].same_as(var):
            axes = value.attrs.axes
            nd = len(static_shape(var))
            axes = list(reversed(range(nd))) if axes is None else [int(a) for a in axes]
            s, o = _selections(ctx, user, axes.index(axis))
            sel += s
            other += o
            continue
        if name in _SELECTORS and value.args[0].same_as(var) and _selects(value, axis):
            sel.append(user.name)
            continue
        other.append((user.name, name))
    return sel, other


def _selects(call, axis: int) -> bool:
    nd = len(static_shape(call.args[0]))
    if call.op.name == "relax.strided_slice":
        return axis in [int(a) % nd for a in _ints(call.args[1])]
    return call.attrs.axis is not None and int(call.attrs.axis) % nd == axis


def _fused_split(ctx, var, call, desc, n, j, oshape, out) -> bool:
    """A fused projection split by a reshape: (.., G*D, ..) -> (.., G, D, ..) or (.., G, H,
    D/H, ..), whose G-axis every reader selects along (strided_slice / take / split,
    through transposes): a fused Q/K/V (G=3, layout [3][H][hd]) or K/V projection.

    The G blocks of the projection's channels become copies of one space: channel ``c`` of
    every block goes together, and with (H, D/H) that space is coarsened into H heads, so
    removing head ``h`` removes its channels from each of q, k and v (the reshape's H then
    shrinks). A G-axis that some readers select along but others read whole is frozen,
    since the blocks would then meet unaligned channels; returns whether it matched.
    """
    groups = oshape[j]
    if (len(desc) != 1 or desc[0].inner != 1 or desc[0].space is None or groups < 2
            or n % groups or ctx.sizes[ctx.find(desc[0].space)] != n):
        return False
    rest = n // groups
    span = _span(oshape[j + 1:], rest)
    if span == 0:
        return False
    heads = oshape[j + 1]
    if span > 1 and heads == 1:
        return False
    sel, other = _selections(ctx, var, j)
    if not sel:
        return False  # not a split into blocks: read (.., G, ..) as G heads, if at all
    if other:
        who = ", ".join(f"{v} ({o})" for v, o in other[:3])
        ctx.freeze(desc, var, call.op.name,
                   f"fused projection reshaped to {list(oshape[j:j + 1 + span])}: its "
                   f"{groups}-axis is sliced by {', '.join(sel[:3])} but also read whole by "
                   f"{who}; only a split into blocks (strided_slice / take / split along "
                   "that axis, through transposes) prunes its heads")
        return False
    parts = ctx.split_space(desc[0].space, [rest] * groups)
    for p in parts[1:]:
        ctx.union(parts[0], p)
    if span > 1:
        out[j + 1] = (Seg(ctx.coarsen_space(parts[0], heads), heads, 1),)
    else:
        out[j + 1] = (Seg(parts[0], rest, 1),)
    return True
