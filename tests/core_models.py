"""Small ONNX graphs, one per handled op family, for the mask oracle tests."""

from __future__ import annotations

import numpy as np
from onnx import helper

from tvm_hcprune.testing.onnx_models import GraphBuilder

H = 6  # spatial size: small so builds stay fast


def _finish(g, out, shape, name, cin=4):
    return g.model(out, [1, cin, H, H], shape, name)


def conv_chain(g, x, cin, cout):
    y = g.conv_bn(x, cin, cout, 3)
    return y


def build(kind: str, seed: int = 0):
    """Return (onnx model, expected_prunable) for a named pattern."""
    g = GraphBuilder(seed)
    x = "input"
    if kind == "conv_bias":
        y = g.op("Relu", [g.conv(x, 4, 12, 3, bias=True)])
        out = g.conv(y, 12, 5, 1, bias=True)
        return _finish(g, out, [1, 5, H, H], kind), True
    if kind == "batchnorm_relu_conv":
        y = g.conv_bn(x, 4, 16, 3)
        out = g.conv(y, 16, 3, 3)
        return _finish(g, out, [1, 3, H, H], kind), True
    if kind == "depthwise":
        y = g.conv_bn(x, 4, 16, 1, act="relu6")
        y = g.conv_bn(y, 16, 16, 3, groups=16, act="relu6")
        out = g.conv(y, 16, 3, 1)
        return _finish(g, out, [1, 3, H, H], kind), True
    if kind == "grouped":  # ResNeXt: 1x1 -> grouped 3x3 -> 1x1
        y = g.conv_bn(x, 4, 16, 1)
        y = g.conv_bn(y, 16, 24, 3, groups=4)
        out = g.conv(y, 24, 3, 1)
        return _finish(g, out, [1, 3, H, H], kind), True
    if kind == "channel_shuffle":  # ShuffleNet unit: gconv -> shuffle -> dw -> gconv, residual
        s = g.conv_bn(x, 4, 16, 1)
        y = g.conv_bn(s, 16, 32, 1, groups=4)
        y = g.op("Reshape", [y, g.const(np.array([1, 4, 8, H, H], np.int64))])
        y = g.op("Transpose", [y], perm=[0, 2, 1, 3, 4])
        y = g.op("Reshape", [y, g.const(np.array([1, 32, H, H], np.int64))])
        y = g.conv_bn(y, 32, 32, 3, groups=32, act=None)
        y = g.conv_bn(y, 32, 16, 1, groups=4, act=None)
        y = g.op("Relu", [g.op("Add", [s, y])])
        out = g.conv(y, 16, 3, 1)
        return _finish(g, out, [1, 3, H, H], kind), True
    if kind == "residual":
        a = g.conv_bn(x, 4, 12, 3)
        b = g.conv_bn(a, 12, 12, 3, act=None)
        y = g.op("Relu", [g.op("Add", [a, b])])
        out = g.conv(y, 12, 3, 1)
        return _finish(g, out, [1, 3, H, H], kind), True
    if kind == "se_gate":
        a = g.conv_bn(x, 4, 16, 3)
        s = g.op("GlobalAveragePool", [a])
        s = g.op("Relu", [g.conv(s, 16, 8, 1, bias=True)])
        s = g.op("Sigmoid", [g.conv(s, 8, 16, 1, bias=True)])
        y = g.op("Mul", [a, s])
        out = g.conv(y, 16, 3, 1)
        return _finish(g, out, [1, 3, H, H], kind), True
    if kind == "hardswish":
        a = g.conv(x, 4, 16, 3, bias=True)
        y = g.op("HardSwish", [a])
        y = g.op("HardSigmoid", [y], alpha=0.2, beta=0.5)
        out = g.conv(y, 16, 3, 1)
        return _finish(g, out, [1, 3, H, H], kind), True
    if kind == "silu_tanh":
        a = g.conv(x, 4, 16, 3, bias=True)
        y = g.op("Mul", [a, g.op("Sigmoid", [a])])
        y = g.op("Tanh", [y])
        out = g.conv(y, 16, 3, 1)
        return _finish(g, out, [1, 3, H, H], kind), True
    if kind == "prelu":
        a = g.conv(x, 4, 16, 3)
        slope = g.const(np.linspace(0.05, 0.3, 16).reshape(16, 1, 1).astype(np.float32))
        y = g.op("PRelu", [a, slope])
        out = g.conv(y, 16, 3, 1)
        return _finish(g, out, [1, 3, H, H], kind), True
    if kind == "concat":
        a = g.conv_bn(x, 4, 8, 3)
        b = g.conv_bn(x, 4, 12, 1)
        y = g.op("Concat", [a, b, x], axis=1)
        out = g.conv(y, 24, 3, 1)
        return _finish(g, out, [1, 3, H, H], kind), True
    if kind == "split":
        a = g.conv_bn(x, 4, 8, 3)
        b = g.conv_bn(x, 4, 12, 1)
        y = g.op("Concat", [a, b], axis=1)
        s1, s2 = "split_a", "split_b"
        g.nodes.append(helper.make_node(
            "Split", [y, g.const(np.array([8, 12], np.int64))], [s1, s2], axis=1))
        out = g.op("Add", [g.conv(s1, 8, 3, 1), g.conv(s2, 12, 3, 1)])
        return _finish(g, out, [1, 3, H, H], kind), True
    if kind == "slice_channels":
        a = g.conv_bn(x, 4, 8, 3)
        b = g.conv_bn(x, 4, 12, 1)
        y = g.op("Concat", [a, b], axis=1)
        s = g.op("Slice", [y, g.const(np.array([8], np.int64)),
                           g.const(np.array([20], np.int64)), g.const(np.array([1], np.int64))])
        out = g.conv(s, 12, 3, 1)
        return _finish(g, out, [1, 3, H, H], kind), True
    if kind == "pad_pool_resize":
        a = g.conv_bn(x, 4, 16, 3)
        y = g.op("Pad", [a, g.const(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))])
        y = g.op("MaxPool", [y], kernel_shape=[2, 2], strides=[2, 2])
        y = g.op("AveragePool", [y], kernel_shape=[2, 2], strides=[1, 1], pads=[1, 1, 0, 0])
        y = g.op("Resize", [y, "", g.const(np.array([1, 1, 2, 2], np.float32))],
                 mode="nearest")
        out = g.conv(y, 16, 3, 1)
        shape = [1, 3, 8, 8]
        return g.model(out, [1, 4, H, H], shape, kind), True
    if kind == "channel_pad":
        # BlazeFace-style residual: the shortcut is zero-padded along channels
        a = g.conv_bn(x, 4, 8, 3)
        p = g.op("Pad", [a, g.const(np.array([0, 0, 0, 0, 0, 4, 0, 0], np.int64))])
        b = g.conv(a, 8, 12, 1, bias=True)
        y = g.op("Relu", [g.op("Add", [p, b])])
        out = g.conv(y, 12, 3, 1)
        return _finish(g, out, [1, 3, H, H], kind), True
    if kind == "flatten_gemm":
        a = g.conv_bn(x, 4, 16, 3, stride=2)
        y = g.op("Flatten", [a], axis=1)
        w = g.rng.normal(0, 0.1, (10, 16 * 3 * 3)).astype(np.float32)
        out = g.op("Gemm", [y, g.const(w), g.const(np.zeros(10, np.float32))], transB=1)
        return g.model(out, [1, 4, H, H], [1, 10], kind), True
    if kind == "transpose":
        a = g.conv_bn(x, 4, 16, 3)
        y = g.op("Transpose", [a], perm=[0, 2, 3, 1])  # NHWC
        y = g.op("Relu", [y])
        y = g.op("Transpose", [y], perm=[0, 3, 1, 2])
        out = g.conv(y, 16, 3, 1)
        return _finish(g, out, [1, 3, H, H], kind), True
    if kind == "conv_transpose":
        a = g.conv_bn(x, 4, 16, 3)
        w = g.rng.normal(0, 0.2, (16, 6, 2, 2)).astype(np.float32)
        y = g.op("ConvTranspose", [a, g.const(w)], strides=[2, 2], kernel_shape=[2, 2])
        y = g.op("Relu", [y])
        out = g.conv(y, 6, 3, 1)
        return g.model(out, [1, 4, H, H], [1, 3, 2 * H, 2 * H], kind), True
    if kind == "ffn":
        w1 = g.rng.normal(0, 0.3, (8, 32)).astype(np.float32)
        w2 = g.rng.normal(0, 0.3, (32, 8)).astype(np.float32)
        h = g.op("Add", [g.op("MatMul", ["input", g.const(w1)]),
                         g.const(g.rng.normal(0, 0.1, 32).astype(np.float32))])
        h = g.op("Gelu", [h]) if False else g.op(
            "Mul", [g.op("Mul", [h, g.const(np.array(0.5, np.float32))]),
                    g.op("Add", [g.op("Erf", [g.op("Div", [h, g.const(
                        np.array(1.4142135, np.float32))])]),
                        g.const(np.array(1.0, np.float32))])])
        out = g.op("MatMul", [h, g.const(w2)])
        ln_s = g.const(np.ones(8, np.float32))
        ln_b = g.const(np.zeros(8, np.float32))
        out = g.op("LayerNormalization", [out, ln_s, ln_b], axis=-1)
        return g.model(out, [1, 5, 8], [1, 5, 8], kind), True
    if kind == "attention":
        return attention(g), True
    if kind == "softmax_barrier":
        a = g.conv(x, 4, 16, 3)
        y = g.op("Softmax", [a], axis=1)
        out = g.conv(y, 16, 3, 1)
        return _finish(g, out, [1, 3, H, H], kind), False
    if kind == "clip_tensor_bounds":
        a = g.conv_bn(x, 4, 16, 3, act="relu6")
        out = g.conv(a, 16, 3, 1)
        return _finish(g, out, [1, 3, H, H], kind), True
    raise KeyError(kind)


def attention(g, t=5, d=16, heads=4, ffn=24):
    """A transformer encoder block as exporters write it: MatMul projections, Reshape to
    heads, Transpose, batch MatMuls, Softmax, output projection, residuals, LayerNorm, FFN."""
    dh = d // heads
    x = "input"

    def lin(inp, n_in, n_out):
        w = g.rng.normal(0, 0.3, (n_in, n_out)).astype(np.float32)
        b = g.rng.normal(0, 0.1, n_out).astype(np.float32)
        return g.op("Add", [g.op("MatMul", [inp, g.const(w)]), g.const(b)])

    def heads_of(y, perm):
        y = g.op("Reshape", [y, g.const(np.array([1, t, heads, dh], np.int64))])
        return g.op("Transpose", [y], perm=perm)

    q = heads_of(lin(x, d, d), [0, 2, 1, 3])
    k = heads_of(lin(x, d, d), [0, 2, 3, 1])
    v = heads_of(lin(x, d, d), [0, 2, 1, 3])
    s = g.op("Mul", [g.op("MatMul", [q, k]), g.const(np.array(dh**-0.5, np.float32))])
    a = g.op("MatMul", [g.op("Softmax", [s], axis=-1), v])
    a = g.op("Reshape", [g.op("Transpose", [a], perm=[0, 2, 1, 3]),
                         g.const(np.array([1, t, d], np.int64))])
    y = g.op("Add", [x, lin(a, d, d)])
    ones, zeros = g.const(np.ones(d, np.float32)), g.const(np.zeros(d, np.float32))
    y = g.op("LayerNormalization", [y, ones, zeros], axis=-1)
    h = g.op("Relu", [lin(y, d, ffn)])
    out = g.op("Add", [y, lin(h, ffn, d)])
    return g.model(out, [1, t, d], [1, t, d], "attention")


KINDS = ["conv_bias", "batchnorm_relu_conv", "depthwise", "grouped", "channel_shuffle",
         "residual", "se_gate",
         "hardswish", "silu_tanh", "prelu", "concat", "split", "slice_channels",
         "pad_pool_resize", "channel_pad", "flatten_gemm", "transpose", "conv_transpose",
         "ffn", "attention",
         "softmax_barrier", "clip_tensor_bounds"]
