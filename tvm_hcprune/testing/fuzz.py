"""Random ONNX graphs over the handled ops, pruned and checked against the mask oracle.

:func:`random_model` draws a chain of blocks on a 1x4x8x8 input: plain, batch-normed,
depthwise and grouped convs, residuals, SE gates, concat, split, channel slices and
padding, channel shuffles, reshapes that split or merge the channel axis, NHWC round
trips, softmax over channels, GELU, a self-attention block over the pixels, a YOLOv8-style
DFL head, conv_transpose and resize (each followed by pooling back to 8x8). It ends in a
classifier (GlobalAveragePool + Gemm) or a conv. :func:`check_model` prunes it at a random
ratio and compares the pruned module with :func:`~tvm_hcprune.testing.masked_reference`.
``benchmarks/fuzz.py`` runs many; the test suite runs a seeded slice.
"""

from __future__ import annotations

import traceback

import numpy as np
import tvm
from tvm import relax

import tvm_hcprune as hc
from tvm_hcprune.testing import oracle
from tvm_hcprune.testing.onnx_models import GraphBuilder

H = 8  # spatial size, restored after every block
BLOCKS = ["conv", "conv_bn_relu", "depthwise", "residual", "se", "concat", "split", "slice",
          "channel_pad", "grouped", "shuffle", "split_reshape", "merge_reshape", "nhwc",
          "softmax", "gelu", "attention", "dfl", "conv_transpose", "resize", "pool",
          "hardswish"]


def _i64(*v):
    return np.array(v, np.int64)


def _block(g: GraphBuilder, kind: str, x: str, c: int, w: int) -> tuple[str, int]:
    """Append one block to ``g``; returns the new tensor and its channel count."""
    if kind == "conv":
        return g.conv(x, c, w, 3, bias=True), w
    if kind == "conv_bn_relu":
        return g.conv_bn(x, c, w, 1), w
    if kind == "depthwise":
        return g.conv_bn(x, c, c, 3, groups=c, act="relu6"), c
    if kind == "residual":
        y = g.conv_bn(x, c, c, 3, act=None, gamma=0.3)
        return g.op("Relu", [g.op("Add", [x, y])]), c
    if kind == "se":
        s = g.op("GlobalAveragePool", [x])
        s = g.op("Relu", [g.conv(s, c, max(2, c // 2), 1, bias=True)])
        s = g.op("Sigmoid", [g.conv(s, max(2, c // 2), c, 1, bias=True)])
        return g.op("Mul", [x, s]), c
    if kind == "concat":
        y = g.conv_bn(x, c, w, 1)
        return g.op("Concat", [x, y], axis=1), c + w
    if kind == "split":
        a = g.conv(x, c, w, 1, bias=True)
        b = g.conv(x, c, w, 1, bias=True)
        both = g.op("Concat", [a, b], axis=1)
        parts = [f"{both}_a", f"{both}_b"]
        g.nodes.append(_node("Split", [both, g.const(_i64(w, w))], parts, axis=1))
        return g.op("Add", [g.op("Relu", [parts[0]]), parts[1]]), w
    if kind == "slice":
        y = g.op("Concat", [g.conv(x, c, w, 1, bias=True), g.conv(x, c, w, 1, bias=True)],
                 axis=1)
        return g.op("Slice", [y, g.const(_i64(w)), g.const(_i64(2 * w)), g.const(_i64(1))]), w
    if kind == "channel_pad":
        p = g.op("Pad", [x, g.const(_i64(0, 0, 0, 0, 0, 2, 0, 0))])
        return g.op("Add", [p, g.conv(x, c, c + 2, 1, bias=True)]), c + 2
    if kind == "grouped" and c % 2 == 0:
        return g.conv_bn(x, c, 2 * w, 3, groups=2), 2 * w
    if kind == "shuffle" and c % 2 == 0:
        y = g.op("Reshape", [x, g.const(_i64(1, 2, c // 2, H, H))])
        y = g.op("Transpose", [y], perm=[0, 2, 1, 3, 4])
        return g.op("Reshape", [y, g.const(_i64(1, c, H, H))]), c
    if kind == "split_reshape" and c % 2 == 0:  # channels split into (2, c/2), merged back
        y = g.op("Reshape", [x, g.const(_i64(1, 2, c // 2, H * H))])
        y = g.op("Relu", [y])
        return g.op("Reshape", [y, g.const(_i64(1, c, H, H))]), c
    if kind == "merge_reshape":  # channels merged with rows, a conv over the merged axis
        y = g.op("Reshape", [x, g.const(_i64(1, c * H, H, 1))])
        y = g.conv(y, c * H, w, 1, bias=True)
        return g.op("Expand", [y, g.const(_i64(1, w, H, H))]), w
    if kind == "nhwc":
        y = g.op("Transpose", [x], perm=[0, 2, 3, 1])
        y = g.op("Relu", [y])
        return g.op("Transpose", [y], perm=[0, 3, 1, 2]), c
    if kind == "softmax":
        return g.conv(g.op("Softmax", [x], axis=1), c, w, 1, bias=True), w
    if kind == "gelu":
        root2 = g.const(np.array(np.sqrt(2.0), np.float32))
        half, one = g.const(np.array(0.5, np.float32)), g.const(np.array(1.0, np.float32))
        erf = g.op("Erf", [g.op("Div", [x, root2])])
        return g.op("Mul", [g.op("Mul", [x, half]), g.op("Add", [one, erf])]), c
    if kind == "attention":
        return _attention(g, x, c), c
    if kind == "dfl":
        return _dfl(g, x, c), 4
    if kind == "conv_transpose":
        wt = g.rng.normal(0, 0.3, (c, w, 2, 2)).astype(np.float32)
        y = g.op("ConvTranspose", [x, g.const(wt)], kernel_shape=[2, 2], strides=[2, 2])
        return g.op("MaxPool", [g.op("Relu", [y])], kernel_shape=[2, 2], strides=[2, 2]), w
    if kind == "resize":
        y = g.op("Resize", [x, "", g.const(np.array([1, 1, 2, 2], np.float32))], mode="nearest")
        return g.op("AveragePool", [y], kernel_shape=[2, 2], strides=[2, 2]), c
    if kind == "pool":
        return g.op("MaxPool", [x], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1]), c
    if kind == "hardswish":
        return g.op("HardSwish", [x]), c
    return x, c  # grouped / shuffle / split_reshape on an odd channel count: no-op


def _node(op_type, inputs, outputs, **attrs):
    from onnx import helper  # deferred: onnx is slow to import

    return helper.make_node(op_type, inputs, outputs, **attrs)


def _attention(g: GraphBuilder, x: str, c: int, heads: int = 2, dh: int = 4) -> str:
    """Self-attention over the 64 pixels: projections to ``heads`` heads of ``dh``, batch
    MatMuls, softmax over keys, output projection back to ``c`` channels, residual."""
    d, t = heads * dh, H * H
    seq = g.op("Transpose", [g.op("Reshape", [x, g.const(_i64(1, c, t))])], perm=[0, 2, 1])

    def proj(inp, n_in, n_out):
        wm = g.rng.normal(0, 0.3, (n_in, n_out)).astype(np.float32)
        return g.op("Add", [g.op("MatMul", [inp, g.const(wm)]),
                            g.const(g.rng.normal(0, 0.1, n_out).astype(np.float32))])

    def split_heads(y):
        return g.op("Transpose", [g.op("Reshape", [y, g.const(_i64(1, t, heads, dh))])],
                    perm=[0, 2, 1, 3])

    q, k, v = (split_heads(proj(seq, c, d)) for _ in range(3))
    att = g.op("Softmax", [g.op("MatMul", [q, g.op("Transpose", [k], perm=[0, 1, 3, 2])])],
               axis=-1)
    y = g.op("Transpose", [g.op("MatMul", [att, v])], perm=[0, 2, 1, 3])
    y = proj(g.op("Reshape", [y, g.const(_i64(1, t, d))]), d, c)
    y = g.op("Reshape", [g.op("Transpose", [y], perm=[0, 2, 1]), g.const(_i64(1, c, H, H))])
    return g.op("Add", [x, y])


def _dfl(g: GraphBuilder, x: str, c: int, bins: int = 4) -> str:
    """A YOLOv8 DFL head mid-graph: (1, 4*bins, H, W) -> (1, 4, bins, HW) -> softmax over
    the bins (after a transpose) -> fixed 1x1 conv over the bins -> (1, 4, H, W)."""
    box = g.conv(x, c, 4 * bins, 1, bias=True)
    y = g.op("Reshape", [box, g.const(_i64(1, 4, bins, H * H))])
    y = g.op("Softmax", [g.op("Transpose", [y], perm=[0, 2, 1, 3])], axis=1)
    proj = np.arange(bins, dtype=np.float32).reshape(1, bins, 1, 1)
    y = g.op("Conv", [y, g.const(proj, "dfl")], kernel_shape=[1, 1])
    return g.op("Reshape", [y, g.const(_i64(1, 4, H, H))])


def random_model(seed: int):
    """A random graph (``onnx.ModelProto``, input ``"input"`` of shape 1x4x8x8) and a short
    description of its blocks."""
    rng = np.random.default_rng(seed)
    g = GraphBuilder(seed)
    blocks = [str(b) for b in rng.choice(BLOCKS, size=int(rng.integers(2, 7)))]
    x, c = "input", 4
    for kind in blocks:
        x, c = _block(g, kind, x, c, int(rng.integers(2, 13)))
    if rng.random() < 0.5:
        out = g.head(x, c, 5)
        return g.model(out, [1, 4, H, H], [1, 5], "fuzz"), blocks + ["classifier"]
    out = g.conv(x, c, 3, 1)
    return g.model(out, [1, 4, H, H], [1, 3, H, H], "fuzz"), blocks + ["conv_out"]


def check_model(model, seed: int) -> dict:
    """Prune ``model`` at a random ratio and alignment and compare with the mask oracle.

    Returns
    -------
    dict
        ``outcome`` ("ok", "crash" or "oracle"), ``frozen_only`` (no group was prunable),
        ``error`` (the exception or the largest difference) and the options used.
    """
    rng = np.random.default_rng(seed + 1_000_003)
    ratio, align = float(rng.uniform(0.1, 0.8)), int(rng.choice([1, 2, 4]))
    rec = {"seed": seed, "ratio": ratio, "align": align, "outcome": "ok",
           "frozen_only": False, "error": ""}
    x = rng.normal(size=(1, 4, H, H)).astype(np.float32)
    try:
        # deferred: TVM's ONNX frontend imports onnx (slow)
        from tvm.relax.frontend.onnx import from_onnx

        mod = from_onnx(model)
        graph = hc.analyze(mod)
        rec["frozen_only"] = not graph.prunable_groups
        pruned, report = hc.prune(mod, ratio=ratio, align=align, graph=graph, seed=seed)
        masked = oracle.masked_reference(mod, report.plan)["main"]  # looked up here: tests swap it
        # one compile for both functions (compilation is most of a graph's time)
        both = tvm.IRModule({"main": pruned["main"],
                             "reference": masked.with_attr("global_symbol", "reference")})
        vm = relax.VirtualMachine(tvm.compile(both, tvm.target.Target({"kind": "llvm"})),
                                  tvm.cpu())
        out, ref = (vm[f](tvm.runtime.tensor(x)).numpy() for f in ("main", "reference"))
    except Exception as err:  # noqa: BLE001 - a fuzzer records every failure
        rec["outcome"] = "crash"
        rec["error"] = "".join(traceback.format_exception_only(err)).strip()[-600:]
        return rec
    scale = max(1.0, float(np.abs(ref).max()))
    diff = float(np.abs(out - ref).max())
    if not diff <= 1e-4 * scale:  # NaN counts as a failure
        rec["outcome"] = "oracle"
        rec["error"] = f"max |pruned - masked reference| = {diff:.3g} (scale {scale:.3g})"
    return rec
