"""Mask oracle per op handler: pruned == original with removed consumer inputs zeroed."""

import numpy as np
import onnxruntime as ort
import pytest
from core_models import KINDS, build
from tvm.relax.frontend.onnx import from_onnx

import tvm_hcprune as hc
from tvm_hcprune.testing import masked_reference, run_relax
from tvm_hcprune.testing.onnx_models import GraphBuilder


def _input(model, seed=0):
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _ort(model, x):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


@pytest.mark.parametrize("kind", KINDS)
def test_mask_oracle(kind):
    """The pruned module equals the masked reference, and the dense import equals ORT."""
    model, prunable = build(kind)
    mod = from_onnx(model)
    x = _input(model)
    dense = run_relax(mod, [x])
    np.testing.assert_allclose(dense, _ort(model, x), rtol=1e-4, atol=1e-5)
    pruned, report = hc.prune(mod, ratio=0.4, criterion="l2", align=1)
    changed = [g for g in report.groups if g.after < g.before]
    if prunable:
        assert changed, report.summary()
        assert report.macs_after < report.macs_before
    else:
        assert not changed
    out = run_relax(pruned, [x])
    ref = run_relax(masked_reference(mod, report.plan), [x])
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
    # the report's counts (computed from the plan) equal a count of the pruned IR
    after = hc.analyze(pruned, canonicalize=False, fingerprint=False)
    assert (report.macs_after, report.params_after) == (after.total_macs, after.total_params)


def _convs(mod):
    return [b.value for b in mod["main"].body.blocks[0].bindings
            if getattr(getattr(b.value, "op", None), "name", "") == "relax.nn.conv2d"]


def test_grouped_conv_keeps_equal_counts_per_group():
    """ResNeXt-style 1x1 -> grouped 3x3: each conv group is a group of the plan that keeps
    as many channels as the others; the grouped weight stays grouped, gathered per group."""
    model, _ = build("grouped")
    mod = from_onnx(model)
    graph = hc.analyze(mod)
    assert len(graph.balanced_sets) == 1 and len(graph.balanced_sets[0]) == 4
    assert {graph.groups[i].size for i in graph.balanced_sets[0]} == {4}
    pruned, report = hc.prune(mod, ratio=0.5, align=1, criterion="random", seed=3)
    kept = [tuple(report.plan.kept_indices(i)) for i in graph.balanced_sets[0]]
    assert {len(k) for k in kept} == {2} and len(set(kept)) > 1  # per-group choices differ
    grouped = [c for c in _convs(pruned) if int(c.attrs.groups) == 4]
    assert [int(v) for v in grouped[0].args[1].ty.shape.values] == [12, 2, 3, 3]
    x = _input(model)
    np.testing.assert_allclose(run_relax(pruned, [x]),
                               run_relax(masked_reference(mod, report.plan), [x]),
                               rtol=1e-5, atol=1e-6)


def test_channel_shuffle_prunes_the_bottleneck():
    model, _ = build("channel_shuffle")
    mod = from_onnx(model)
    pruned, _ = hc.prune(mod, ratio=0.5, align=1)
    shapes = [[int(v) for v in c.args[1].ty.shape.values] + [int(c.attrs.groups)]
              for c in _convs(pruned)]
    # stem 1x1, gconv1 (4 groups), depthwise (shuffled), gconv2 (4 groups), head
    assert shapes[1][0] < 32 and shapes[1][0] % 4 == 0 and shapes[1][-1] == 4
    assert shapes[2][0] == shapes[1][0] == shapes[2][-1]  # depthwise follows the shuffle
    assert shapes[3][1] * 4 == shapes[1][0] and shapes[3][-1] == 4


def test_grouped_conv_with_unbalanceable_input_is_frozen_with_reason():
    """Concat of 6 + 10 channels into 4 groups of 4: the groups see differently structured
    channels, so they cannot keep equal counts: frozen, with the reason."""
    g = GraphBuilder(0)
    a = g.conv_bn("input", 4, 6, 1)
    b = g.conv_bn("input", 4, 10, 1)
    y = g.conv(g.op("Concat", [a, b], axis=1), 16, 8, 3, groups=4)
    model = g.model(g.conv(y, 8, 3, 1), [1, 4, 6, 6], [1, 3, 6, 6], "unbalanced")
    graph = hc.analyze(from_onnx(model))
    reasons = {f.reason for f in graph.frozen}
    assert any("grouped conv whose groups" in r for r in reasons), reasons
    pruned, report = hc.prune(from_onnx(model), ratio=0.5, align=1)
    x = _input(model)
    np.testing.assert_allclose(run_relax(pruned, [x]),
                               run_relax(masked_reference(from_onnx(model), report.plan), [x]),
                               rtol=1e-5, atol=1e-6)


def test_grouped_conv_on_the_model_input_is_frozen():
    g = GraphBuilder(0)
    y = g.conv("input", 4, 8, 3, groups=2)
    model = g.model(g.conv(y, 8, 3, 1), [1, 4, 6, 6], [1, 3, 6, 6], "grouped_input")
    graph = hc.analyze(from_onnx(model))
    assert any("grouped conv over channels that cannot be pruned" in f.reason
               for f in graph.frozen)
    assert any(g.prunable and g.size == 4 for g in graph.groups)  # its output still prunes


def test_softmax_freezes_with_reason():
    model, _ = build("softmax_barrier")
    graph = hc.analyze(from_onnx(model))
    assert any(f.reason == "softmax over the channel axis" for f in graph.frozen)
    assert all(g.frozen for g in graph.groups)


def test_layer_norm_freezes_ffn_output_but_not_intermediate():
    model, _ = build("ffn")
    graph = hc.analyze(from_onnx(model))
    sizes = {g.size: g.frozen for g in graph.groups}
    assert sizes == {32: False, 8: True}


def test_residual_couples_producers():
    model, _ = build("residual")
    graph = hc.analyze(from_onnx(model))
    coupled = [g for g in graph.groups if len(g.producers) == 2]
    assert len(coupled) == 1 and coupled[0].size == 12


def test_concat_offsets_slice_the_consumer():
    """Concat of two prunable groups and the raw input: consumer weight rows follow offsets."""
    model, _ = build("concat")
    mod = from_onnx(model)
    pruned, report = hc.prune(mod, ratio=0.5, align=2)
    conv_in = [b.value.args[1].value.numpy().shape for blk in pruned["main"].body.blocks
               for b in blk.bindings
               if getattr(getattr(b.value, "op", None), "name", "") == "relax.nn.conv2d"]
    # 8 -> 4 and 12 -> 6 kept, the 4 input channels stay: the last conv reads 14
    assert conv_in[-1][1] == 4 + 6 + 4


def test_clip_with_tensor_bounds_is_reemitted():
    """The importer's call_tir maximum/minimum for Clip become Relax ops with new shapes."""
    model, _ = build("clip_tensor_bounds")
    pruned, report = hc.prune(from_onnx(model), ratio=0.5, align=4)
    text = pruned.script(show_meta=False)
    assert "call_tir" not in text and "R.maximum" in text and "R.minimum" in text


def test_channel_padding_shrinks_with_the_pruned_channels():
    """A residual whose shortcut is zero-padded along channels: the pad width follows."""
    model, _ = build("channel_pad")
    mod = from_onnx(model)
    graph = hc.analyze(mod)
    assert not graph.frozen or all(f.op == "return" for f in graph.frozen)
    pruned, report = hc.prune(mod, ratio=0.5, align=2, graph=graph)
    pads = [b.value for blk in pruned["main"].body.blocks for b in blk.bindings
            if getattr(getattr(b.value, "op", None), "name", "") == "relax.nn.pad"]
    assert [int(p) for p in pads[0].attrs.pad_width][3] == 2  # 4 padded channels -> 2


def test_attention_heads_are_pruned_as_units():
    """Q, K, V of a head and the output projection's rows go together; heads stay whole."""
    model, _ = build("attention")
    mod = from_onnx(model)
    graph = hc.analyze(mod)
    heads = [g for g in graph.groups if g.unit == 4]
    assert len(heads) == 1 and heads[0].size == 4 and heads[0].prunable
    assert len(heads[0].producers) == 3  # the Q, K and V projections
    pruned, report = hc.prune(mod, ratio=0.5, align=1, graph=graph)
    assert sorted(report.plan.kept[heads[0].id]) != [] and len(report.plan.kept[heads[0].id]) == 2
    shapes = [[int(s) for s in b.var.ty.shape] for blk in pruned["main"].body.blocks
              for b in blk.bindings if getattr(getattr(b.value, "op", None), "name", "")
              == "relax.reshape"]
    assert [1, 5, 2, 4] in shapes and [1, 5, 8] in shapes  # 2 heads of 4 kept
    x = np.random.default_rng(0).normal(size=(1, 5, 16)).astype(np.float32)
    np.testing.assert_allclose(run_relax(pruned, [x]),
                               run_relax(masked_reference(mod, report.plan), [x]),
                               rtol=1e-5, atol=1e-5)
