"""ONNX models built with ``onnx.helper``: the shapes of real networks with seeded weights.

They stand in for real checkpoints where only the topology matters (schedules, analysis
speed, structure tests). Every builder returns an ``onnx.ModelProto`` (opset 17) whose
single input is named ``"input"`` with shape ``[1, C, H, W]`` float32, with BatchNorm left
unfused as exporters emit it.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


class GraphBuilder:
    """Accumulates nodes and initializers; names are generated and unique."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._count = 0

    def _name(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}{self._count}"

    def const(self, value: np.ndarray, prefix: str = "c") -> str:
        name = self._name(prefix)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], prefix: str | None = None, **attrs) -> str:
        out = self._name(prefix or op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def conv(self, x, cin, cout, k, stride=1, groups=1, bias=False, pad=None):
        fan_in = cin // groups * k * k
        w = self.rng.normal(0, np.sqrt(2.0 / fan_in), (cout, cin // groups, k, k))
        inputs = [x, self.const(w.astype(np.float32), "w")]
        if bias:
            inputs.append(self.const(self.rng.normal(0, 0.1, cout).astype(np.float32), "b"))
        p = k // 2 if pad is None else pad
        return self.op("Conv", inputs, "conv", kernel_shape=[k, k], strides=[stride, stride],
                       pads=[p, p, p, p], group=groups)

    def bn(self, x, c, gamma=1.0):
        r = self.rng
        params = [r.uniform(0.5, 1.5, c) * gamma, r.normal(0, 0.1, c), r.normal(0, 0.1, c),
                  r.uniform(0.5, 1.5, c)]
        names = [self.const(p.astype(np.float32), "bn") for p in params]
        return self.op("BatchNormalization", [x, *names], "bn", epsilon=1e-5)

    def conv_bn(self, x, cin, cout, k, stride=1, groups=1, act="relu", gamma=1.0):
        # residual branches end with a small gamma (as with zero-init BN) so that
        # activations stay O(1) through deep random networks
        y = self.bn(self.conv(x, cin, cout, k, stride, groups), cout, gamma)
        if act == "relu":
            y = self.op("Relu", [y])
        elif act == "relu6":
            lo = self.const(np.array(0.0, np.float32), "lo")
            hi = self.const(np.array(6.0, np.float32), "hi")
            y = self.op("Clip", [y, lo, hi])
        return y

    def head(self, x, cin, num_classes):
        y = self.op("GlobalAveragePool", [x])
        y = self.op("Flatten", [y], axis=1)
        w = self.rng.normal(0, np.sqrt(1.0 / cin), (num_classes, cin)).astype(np.float32)
        b = np.zeros(num_classes, np.float32)
        return self.op("Gemm", [y, self.const(w, "fc_w"), self.const(b, "fc_b")], "logits",
                       transB=1)

    def model(self, out: str, in_shape, out_shape, name: str) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, name,
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(in_shape))],
            [helper.make_tensor_value_info(out, TensorProto.FLOAT, list(out_shape))],
            self.inits,
        )
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="tvm_hcprune.testing")
        m.ir_version = 8
        onnx.checker.check_model(m)
        return m


def resnet(depth: int = 18, width: int = 64, image: int = 224, num_classes: int = 1000,
           in_channels: int = 3, seed: int = 0) -> onnx.ModelProto:
    """ResNet-18/34 (basic blocks) or ResNet-50 (bottlenecks), torchvision's layout."""
    layers = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3]}
    if depth not in layers:
        raise ValueError(f"resnet depth must be one of {sorted(layers)}, got {depth}")
    bottleneck = depth >= 50
    g = GraphBuilder(seed)
    x = g.conv_bn("input", in_channels, width, 7, stride=2)
    x = g.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    cin = width
    for stage, blocks in enumerate(layers[depth]):
        planes = width * 2**stage
        cout = planes * 4 if bottleneck else planes
        for b in range(blocks):
            stride = 2 if (stage > 0 and b == 0) else 1
            if bottleneck:
                y = g.conv_bn(x, cin, planes, 1)
                y = g.conv_bn(y, planes, planes, 3, stride)
                y = g.conv_bn(y, planes, cout, 1, act=None, gamma=0.2)
            else:
                y = g.conv_bn(x, cin, planes, 3, stride)
                y = g.conv_bn(y, planes, cout, 3, act=None, gamma=0.2)
            short = x if (stride == 1 and cin == cout) else g.conv_bn(x, cin, cout, 1, stride,
                                                                      act=None)
            x = g.op("Relu", [g.op("Add", [y, short])])
            cin = cout
    out = g.head(x, cin, num_classes)
    return g.model(out, [1, in_channels, image, image], [1, num_classes], f"resnet{depth}")


def mobilenet_v2(width_mult: float = 1.0, image: int = 224, num_classes: int = 1000,
                 seed: int = 0) -> onnx.ModelProto:
    """MobileNetV2: inverted residuals with depthwise 3x3 and ReLU6 (Clip)."""

    def rnd(c):
        return max(8, int(c * width_mult + 4) // 8 * 8)

    cfg = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
           (6, 160, 3, 2), (6, 320, 1, 1)]
    g = GraphBuilder(seed)
    cin = rnd(32)
    x = g.conv_bn("input", 3, cin, 3, stride=2, act="relu6")
    for t, c, n, s in cfg:
        cout = rnd(c)
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = cin * t
            y = x if t == 1 else g.conv_bn(x, cin, hidden, 1, act="relu6")
            y = g.conv_bn(y, hidden, hidden, 3, stride, groups=hidden, act="relu6")
            y = g.conv_bn(y, hidden, cout, 1, act=None, gamma=0.3)
            x = g.op("Add", [x, y]) if (stride == 1 and cin == cout) else y
            cin = cout
    last = max(1280, rnd(1280))
    x = g.conv_bn(x, cin, last, 1, act="relu6")
    out = g.head(x, last, num_classes)
    return g.model(out, [1, 3, image, image], [1, num_classes], "mobilenet_v2")


def small_resnet(width: int = 32, image: int = 32, num_classes: int = 10,
                 in_channels: int = 3, seed: int = 0) -> onnx.ModelProto:
    """A small ResNet-style CNN (three stages, residuals, BN, Gemm head) for the demo."""
    g = GraphBuilder(seed)
    x = g.conv_bn("input", in_channels, width, 3)
    cin = width
    for stage in range(3):
        cout = width * 2**stage
        stride = 1 if stage == 0 else 2
        y = g.conv_bn(x, cin, cout, 3, stride)
        y = g.conv_bn(y, cout, cout, 3, act=None)
        short = x if (stride == 1 and cin == cout) else g.conv_bn(x, cin, cout, 1, stride,
                                                                  act=None)
        x = g.op("Relu", [g.op("Add", [y, short])])
        cin = cout
    out = g.head(x, cin, num_classes)
    return g.model(out, [1, in_channels, image, image], [1, num_classes], "small_resnet")


def dfl_head(image: int = 8, bins: int = 16, width: int = 16, seed: int = 0) -> onnx.ModelProto:
    """A YOLOv8-style distribution-focal-loss box head on a small conv stem.

    A conv's ``4 * bins`` output channels are reshaped to (1, 4, bins, N), transposed so the
    bins become the channel axis, softmaxed over them, reduced by a fixed 1x1 conv whose
    ``bins`` input channels are the bins (the expectation over bin positions), and reshaped
    to the (1, 4, N) box distances.
    """
    g = GraphBuilder(seed)
    x = g.op("Relu", [g.conv("input", 3, width, 3, bias=True)])
    x = g.op("Relu", [g.conv(x, width, width, 3, bias=True)])
    box = g.conv(x, width, 4 * bins, 1, bias=True)
    n = image * image
    y = g.op("Reshape", [box, g.const(np.array([1, 4, bins, n], np.int64))])
    y = g.op("Transpose", [y], perm=[0, 2, 1, 3])
    y = g.op("Softmax", [y], axis=1)
    proj = np.arange(bins, dtype=np.float32).reshape(1, bins, 1, 1)
    y = g.op("Conv", [y, g.const(proj, "dfl")], kernel_shape=[1, 1])
    out = g.op("Reshape", [y, g.const(np.array([1, 4, n], np.int64))])
    return g.model(out, [1, 3, image, image], [1, 4, n], "dfl_head")


def anchor_grid_head(image: int = 8, grid: bool = True, seed: int = 0) -> onnx.ModelProto:
    """A detection head that decodes boxes against anchor points computed from the feature
    map's own shape (``Shape -> Gather -> Range -> Cast``, a ``Concat``-built target shape
    for ``Reshape``), as exported detectors do.

    ``grid=True``: (x + 0.5, y + 0.5) anchor grid of shape (1, 2, H*W) added to the two box
    channels; ``grid=False``: one ``Range`` over H*W added to every channel. TVM 0.27 imports
    both without error but with run-time shapes that it cannot compile.
    """
    g = GraphBuilder(seed)
    x = g.op("Relu", [g.conv("input", 3, 8, 3, bias=True)])
    box = g.conv(x, 8, 2, 1, bias=True)
    shp = g.op("Shape", [box])
    h = g.op("Gather", [shp, g.const(np.array(2, np.int64))], axis=0)
    w = g.op("Gather", [shp, g.const(np.array(3, np.int64))], axis=0)
    zero, one = g.const(np.array(0, np.int64)), g.const(np.array(1, np.int64))
    half = g.const(np.array(0.5, np.float32))
    axis0, axis1 = g.const(np.array([0], np.int64)), g.const(np.array([1], np.int64))
    n = g.op("Mul", [h, w])
    target = g.op("Concat", [g.const(np.array([1, 2], np.int64)), g.op("Unsqueeze", [n, axis0])],
                  axis=0)
    flat = g.op("Reshape", [box, target])

    def points(count):
        return g.op("Add", [g.op("Cast", [g.op("Range", [zero, count, one])], to=1), half])

    if grid:
        ys = g.op("Mul", [g.op("Unsqueeze", [points(h), axis1]),
                          g.const(np.ones((1, image), np.float32))])
        xs = g.op("Mul", [g.op("Unsqueeze", [points(w), axis0]),
                          g.const(np.ones((image, 1), np.float32))])
        anchors = g.op("Concat", [g.op("Unsqueeze", [xs, axis0]), g.op("Unsqueeze", [ys, axis0])],
                       axis=0)
        anchors = g.op("Reshape", [anchors, target])
    else:
        anchors = points(n)
    out = g.op("Add", [flat, anchors])
    return g.model(out, [1, 3, image, image], [1, 2, image * image], "anchor_grid_head")


def dbnet_like(image: int = 32, seed: int = 0) -> onnx.ModelProto:
    """A DBNet-style text-detection network in miniature: GELU (as its Erf formula) and SE
    gates (hard-sigmoid) in the backbone, an FPN with a nearest-neighbour ``Resize`` and a
    lateral add, and a head of two stride-2 ``ConvTranspose`` layers up to a one-channel
    probability map. The conv feeding the first ConvTranspose has 12 channels (not a SIMD
    multiple), so pruning can change whether it is converted to a blocked layout."""
    g = GraphBuilder(seed)

    def gelu(x):
        root2 = g.const(np.array(np.sqrt(2.0), np.float32))
        half, one = g.const(np.array(0.5, np.float32)), g.const(np.array(1.0, np.float32))
        erf = g.op("Erf", [g.op("Div", [x, root2])])
        return g.op("Mul", [g.op("Mul", [x, half]), g.op("Add", [one, erf])])

    def se(x, c):
        s = g.op("GlobalAveragePool", [x])
        s = g.op("Relu", [g.conv(s, c, c // 4, 1, bias=True)])
        return g.op("Mul", [x, g.op("HardSigmoid", [g.conv(s, c // 4, c, 1, bias=True)])])

    c1 = gelu(g.bn(g.conv("input", 3, 16, 3, stride=2), 16))
    c2 = se(gelu(g.bn(g.conv(c1, 16, 32, 3, stride=2), 32)), 32)
    c3 = se(gelu(g.bn(g.conv(c2, 32, 64, 3, stride=2), 64)), 64)
    up = g.op("Resize", [g.conv(c3, 64, 24, 1), "", g.const(np.array([1, 1, 2, 2], np.float32))],
              mode="nearest")
    p2 = g.op("Add", [g.conv(c2, 32, 24, 1), up])
    f = g.op("Relu", [g.bn(g.conv(p2, 24, 12, 3), 12)])
    w = g.rng.normal(0, 0.3, (12, 8, 2, 2)).astype(np.float32)
    f = g.op("Relu", [g.bn(g.op("ConvTranspose", [f, g.const(w)], kernel_shape=[2, 2],
                                strides=[2, 2]), 8)])
    w = g.rng.normal(0, 0.3, (8, 1, 2, 2)).astype(np.float32)
    f = g.op("ConvTranspose", [f, g.const(w)], kernel_shape=[2, 2], strides=[2, 2])
    out = g.op("Sigmoid", [f])
    return g.model(out, [1, 3, image, image], [1, 1, image, image], "dbnet_like")


def tf_style_resnet(image: int = 16, width: int = 16, num_classes: int = 10,
                    shape_in_constant_node: bool = False, seed: int = 0) -> onnx.ModelProto:
    """A small ResNet as TensorFlow converters export it: NHWC input transposed to NCHW,
    global average pooling as ``ReduceMean(axes=[2, 3])``, a ``Reshape`` to ``[-1, C]``
    (its shape an initializer, or a ``Constant`` node), then ``MatMul`` + ``Add`` +
    ``Softmax``."""
    g = GraphBuilder(seed)
    x = g.op("Transpose", ["input"], perm=[0, 3, 1, 2])
    x = g.op("Relu", [g.conv(x, 3, width, 3, bias=True)])
    y = g.op("Relu", [g.conv(x, width, width, 3, bias=True)])
    x = g.op("Relu", [g.op("Add", [x, g.conv(y, width, width, 3, bias=True)])])
    x = g.op("Relu", [g.conv(x, width, 2 * width, 3, stride=2, bias=True)])
    pooled = g.op("ReduceMean", [x], axes=[2, 3], keepdims=1)
    target = np.array([-1, 2 * width], np.int64)
    if shape_in_constant_node:
        shape = g.op("Constant", [], "shape", value=numpy_helper.from_array(target))
    else:
        shape = g.const(target, "shape")
    flat = g.op("Reshape", [pooled, shape])
    w = g.rng.normal(0, np.sqrt(1.0 / (2 * width)), (2 * width, num_classes)).astype(np.float32)
    b = g.rng.normal(0, 0.1, num_classes).astype(np.float32)
    logits = g.op("Add", [g.op("MatMul", [flat, g.const(w, "fc_w")]), g.const(b, "fc_b")])
    out = g.op("Softmax", [logits], axis=-1)
    return g.model(out, [1, image, image, 3], [1, num_classes], "tf_style_resnet")


def bert_encoder(layers: int = 4, hidden: int = 384, heads: int = 12, ffn: int = 1536,
                 seq: int = 128, seed: int = 0) -> onnx.ModelProto:
    """A BERT-style encoder stack as exporters emit it: input hidden states ``[1, seq,
    hidden]`` (named ``"input"``); per layer Q/K/V ``MatMul`` + ``Add``, heads split with
    ``Reshape`` + ``Transpose``, scaled ``Softmax`` attention, output projection, residual
    ``Add`` + ``LayerNormalization``, then the FFN (``MatMul`` + ``Add``, GELU written with
    ``Erf``, ``MatMul`` + ``Add``) and a second residual + LayerNorm. Defaults: 4 layers,
    hidden 384, 12 heads, FFN 1536, 128 tokens (MiniLM-sized)."""
    if hidden % heads:
        raise ValueError(f"hidden {hidden} is not a multiple of heads {heads}")
    g = GraphBuilder(seed)
    d = hidden // heads

    def linear(x, n_in, n_out):
        w = g.rng.normal(0, np.sqrt(1.0 / n_in), (n_in, n_out)).astype(np.float32)
        b = g.rng.normal(0, 0.02, n_out).astype(np.float32)
        return g.op("Add", [g.op("MatMul", [x, g.const(w, "w")]), g.const(b, "b")])

    def layer_norm(x):
        gamma = g.rng.uniform(0.8, 1.2, hidden).astype(np.float32)
        beta = g.rng.normal(0, 0.02, hidden).astype(np.float32)
        return g.op("LayerNormalization", [x, g.const(gamma, "ln"), g.const(beta, "ln")],
                    axis=-1, epsilon=1e-12)

    split = g.const(np.array([1, seq, heads, d], np.int64), "shape")
    merge = g.const(np.array([1, seq, hidden], np.int64), "shape")
    scale = g.const(np.array(d ** -0.5, np.float32), "scale")
    half, one = (g.const(np.array(v, np.float32), "c") for v in (0.5, 1.0))
    rsqrt2 = g.const(np.array(2 ** -0.5, np.float32), "c")
    x = "input"
    for _ in range(layers):
        q, k, v = (g.op("Reshape", [linear(x, hidden, hidden), split]) for _ in range(3))
        q = g.op("Transpose", [q], perm=[0, 2, 1, 3])
        k = g.op("Transpose", [k], perm=[0, 2, 3, 1])
        v = g.op("Transpose", [v], perm=[0, 2, 1, 3])
        att = g.op("Softmax", [g.op("Mul", [g.op("MatMul", [q, k]), scale])], axis=-1)
        y = g.op("Transpose", [g.op("MatMul", [att, v])], perm=[0, 2, 1, 3])
        y = linear(g.op("Reshape", [y, merge]), hidden, hidden)
        x = layer_norm(g.op("Add", [x, y]))
        h = linear(x, hidden, ffn)
        erf = g.op("Erf", [g.op("Mul", [h, rsqrt2])])
        h = g.op("Mul", [g.op("Mul", [h, half]), g.op("Add", [erf, one])])
        x = layer_norm(g.op("Add", [x, linear(h, ffn, hidden)]))
    return g.model(x, [1, seq, hidden], [1, seq, hidden], "bert_encoder")


def fused_qkv_attention(tokens: int = 6, dim: int = 24, heads: int = 4, split: str = "slice",
                        layout: str = "qkv", read_whole: bool = False,
                        seed: int = 0) -> onnx.ModelProto:
    """An attention block whose Q, K and V come from one fused ``MatMul`` (as SVTR,
    PP-OCR's recogniser, and ``timm`` ViTs export it): input ``[1, tokens, dim]`` (named
    ``"input"``), the ``3 * dim`` projection reshaped to heads, split into q, k, v, scaled
    softmax attention (scores merged to ``(heads * tokens, tokens)`` around the
    ``Softmax``, as PaddlePaddle exports it), output projection and a residual ``Add``.

    Parameters
    ----------
    split : str
        How q, k and v are taken apart: ``"slice"`` (``Slice`` + ``Squeeze`` along the
        3-axis, as SVTR), ``"gather"`` (``Transpose`` to ``[3, B, H, N, hd]`` then ``Gather``
        0, 1, 2, as PyTorch's ``qkv[0]``), ``"split"`` (``Split`` along the 3-axis), or
        ``"chunk"`` (``Split`` of the projection into thirds, each reshaped to heads, as
        ``qkv.chunk(3, -1)``; ``layout`` must be ``"qkv"``).
    layout : str
        ``"qkv"``: the fused channels laid out ``[3][heads][hd]`` (reshape to ``[1, N, 3, H,
        hd]``); ``"heads"``: ``[heads][3][hd]`` (reshape to ``[1, N, H, 3, hd]``, as
        Megatron lays it out).
    read_whole : bool
        Also read the reshaped projection whole (its mean over the 3-axis is added to the
        values): a near miss of the pattern, whose heads stay frozen.

    Examples
    --------
    >>> model = fused_qkv_attention(split="gather")
    >>> [n.op_type for n in model.graph.node][:3]
    ['MatMul', 'Add', 'Reshape']
    """
    if (dim % heads or split not in ("slice", "gather", "split", "chunk")
            or layout not in ("qkv", "heads")
            or (split == "chunk" and (layout != "qkv" or read_whole))):
        raise ValueError(f"fused_qkv_attention: dim {dim} must be a multiple of heads {heads}, "
                         f"split one of slice/gather/split/chunk (got {split!r}), layout qkv "
                         f"or heads (got {layout!r}); chunk only with layout qkv, without "
                         "read_whole")
    g = GraphBuilder(seed)
    hd, t = dim // heads, tokens

    def linear(x, n_in, n_out):
        w = g.rng.normal(0, np.sqrt(1.0 / n_in), (n_in, n_out)).astype(np.float32)
        b = g.rng.normal(0, 0.1, n_out).astype(np.float32)
        return g.op("Add", [g.op("MatMul", [x, g.const(w, "w")]), g.const(b, "b")])

    def ints(*v):
        return g.const(np.array(v, np.int64), "i")

    shape = [1, t, 3, heads, hd] if layout == "qkv" else [1, t, heads, 3, hd]
    ax = shape.index(3)
    fused = linear("input", dim, 3 * dim)
    qkv = g.op("Reshape", [fused, ints(*shape)])
    if split == "chunk":  # split the projection first, then view each third as heads
        node = helper.make_node("Split", [fused, ints(dim, dim, dim)],
                                [g._name("chunk") for _ in range(3)], axis=2)
        g.nodes.append(node)
        g.nodes.remove(next(n for n in g.nodes if n.output[0] == qkv))
        q, k, v = (g.op("Transpose", [g.op("Reshape", [p, ints(1, t, heads, hd)])],
                        perm=[0, 2, 1, 3]) for p in node.output)
    elif split == "gather":  # -> [3, 1, H, N, hd]
        perm = [2, 0, 3, 1, 4] if layout == "qkv" else [3, 0, 2, 1, 4]
        qkv_t = g.op("Transpose", [qkv], perm=perm)
        q, k, v = (g.op("Gather", [qkv_t, g.const(np.array(i, np.int64), "i")], axis=0)
                   for i in range(3))
    else:
        if split == "slice":
            parts = [g.op("Slice", [qkv, ints(i), ints(i + 1), ints(ax)]) for i in range(3)]
        else:
            node = helper.make_node("Split", [qkv, ints(1, 1, 1)],
                                    [g._name("split") for _ in range(3)], axis=ax)
            g.nodes.append(node)
            parts = list(node.output)
        order = [0, 2, 1, 3] if layout == "qkv" else [0, 1, 2, 3]
        q, k, v = (g.op("Transpose", [g.op("Squeeze", [p, ints(ax)])], perm=order)
                   for p in parts)  # [1, H, N, hd]
    later = layout == "heads" and split != "gather"  # q, k, v still [1, N, H, hd]
    if read_whole:
        v = g.op("Add", [v, g.op("Transpose", [g.op("ReduceMean", [qkv], axes=[ax], keepdims=0)],
                                 perm=[0, 1, 2, 3] if later else [0, 2, 1, 3])])
    if later:  # [1, N, H, hd] -> [1, H, N, hd]
        q, k, v = (g.op("Transpose", [y], perm=[0, 2, 1, 3]) for y in (q, k, v))
    k = g.op("Transpose", [k], perm=[0, 1, 3, 2])
    s = g.op("Mul", [g.op("MatMul", [q, k]), g.const(np.array(hd ** -0.5, np.float32), "c")])
    s = g.op("Reshape", [s, ints(heads * t, t)])
    s = g.op("Reshape", [g.op("Softmax", [s], axis=-1), ints(1, heads, t, t)])
    y = g.op("Transpose", [g.op("MatMul", [s, v])], perm=[0, 2, 1, 3])
    y = linear(g.op("Reshape", [y, ints(1, t, dim)]), dim, dim)
    out = g.op("Add", ["input", y])
    return g.model(out, [1, t, dim], [1, t, dim], "fused_qkv_attention")
