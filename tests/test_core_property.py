"""Property-based: random graphs built from the handled ops, pruned at random ratios,
always equal the mask oracle."""

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tvm.relax.frontend.onnx import from_onnx

import tvm_hcprune as hc
from tvm_hcprune.testing import masked_reference, run_relax
from tvm_hcprune.testing.onnx_models import GraphBuilder

BLOCKS = ["conv", "conv_bn_relu", "depthwise", "residual", "se", "concat", "hardswish",
          "pool", "channel_pad", "grouped", "shuffle"]


def _random_model(blocks, widths, seed):
    g = GraphBuilder(seed)
    x, c = "input", 4
    for kind, w in zip(blocks, widths, strict=False):
        if kind == "conv":
            x, c = g.conv(x, c, w, 3, bias=True), w
        elif kind == "conv_bn_relu":
            x, c = g.conv_bn(x, c, w, 1), w
        elif kind == "depthwise":
            x = g.conv_bn(x, c, c, 3, groups=c, act="relu6")
        elif kind == "residual":
            y = g.conv_bn(x, c, c, 3, act=None)
            x = g.op("Relu", [g.op("Add", [x, y])])
        elif kind == "se":
            s = g.op("GlobalAveragePool", [x])
            s = g.op("Relu", [g.conv(s, c, max(2, c // 2), 1, bias=True)])
            s = g.op("Sigmoid", [g.conv(s, max(2, c // 2), c, 1, bias=True)])
            x = g.op("Mul", [x, s])
        elif kind == "concat":
            y = g.conv_bn(x, c, w, 1)
            x, c = g.op("Concat", [x, y], axis=1), c + w
        elif kind == "hardswish":
            x = g.op("HardSwish", [x])
        elif kind == "pool":
            x = g.op("MaxPool", [x], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1])
        elif kind == "channel_pad":
            p = g.op("Pad", [x, g.const(np.array([0, 0, 0, 0, 0, 2, 0, 0], np.int64))])
            y = g.conv(x, c, c + 2, 1, bias=True)
            x, c = g.op("Add", [p, y]), c + 2
        elif kind == "grouped" and c % 2 == 0:
            x, c = g.conv_bn(x, c, 2 * w, 3, groups=2), 2 * w
        elif kind == "shuffle" and c % 2 == 0:
            x = g.op("Reshape", [x, g.const(np.array([1, 2, c // 2, 6, 6], np.int64))])
            x = g.op("Transpose", [x], perm=[0, 2, 1, 3, 4])
            x = g.op("Reshape", [x, g.const(np.array([1, c, 6, 6], np.int64))])
    out = g.head(x, c, 5)
    return g.model(out, [1, 4, 6, 6], [1, 5], "random")


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    blocks=st.lists(st.sampled_from(BLOCKS), min_size=2, max_size=5),
    widths=st.lists(st.integers(2, 12), min_size=5, max_size=5),
    ratio=st.floats(0.0, 0.9),
    align=st.sampled_from([1, 2, 4]),
    criterion=st.sampled_from(["l1", "l2", "fpgm", "random", "bn_scale"]),
    seed=st.integers(0, 1000),
)
def test_random_graphs_equal_the_mask_oracle(blocks, widths, ratio, align, criterion, seed):
    mod = from_onnx(_random_model(blocks, widths, seed))
    pruned, report = hc.prune(mod, ratio=ratio, align=align, criterion=criterion, seed=seed)
    x = np.random.default_rng(seed).normal(size=(1, 4, 6, 6)).astype(np.float32)
    out = run_relax(pruned, [x])
    ref = run_relax(masked_reference(mod, report.plan), [x])
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    assert report.macs_after <= report.macs_before
    after = hc.analyze(pruned, canonicalize=False, fingerprint=False)
    assert (report.macs_after, report.params_after) == (after.total_macs, after.total_params)
    for g in report.groups:
        assert 1 <= g.after <= g.before


def test_padding_of_frozen_channels_still_shrinks():
    """Regression (found by the property test): the pad's own channels are pruned while
    its input's channels are frozen, so the pad must be rewritten though its input is not."""
    test_random_graphs_equal_the_mask_oracle.hypothesis.inner_test(
        blocks=["depthwise", "channel_pad"], widths=[2, 2, 2, 2, 2], ratio=0.5, align=1,
        criterion="l1", seed=0)
