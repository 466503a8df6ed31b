"""Before/after structure of the rewrite, TVM-style: the pruned module is structurally equal
to the module written by hand with the sliced constants and shrunk shapes."""

import numpy as np
import pytest
import tvm
from tvm import relax

import tvm_hcprune as hc
from tvm_hcprune.errors import HCPruneError
from tvm_hcprune.planning.plan import PrunePlan

R = np.random.default_rng(0)


def _conv_chain(w1, b1, w2, groups2=1, dw=None):
    """input -> conv(w1) + b1 -> relu -> [depthwise(dw)] -> conv(w2)"""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, w1.shape[1], 5, 5), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, relax.const(w1), padding=[1, 1]))
            y = bb.emit(relax.op.add(y, relax.const(b1.reshape(1, -1, 1, 1))))
            y = bb.emit(relax.op.nn.relu(y))
            if dw is not None:
                y = bb.emit(relax.op.nn.conv2d(y, relax.const(dw), padding=[1, 1],
                                               groups=dw.shape[0]))
            y = bb.emit(relax.op.nn.conv2d(y, relax.const(w2), groups=groups2))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get()


def _plan_for(mod, kept):
    graph = hc.analyze(mod)
    gid = graph.prunable_groups[0].id
    size = graph.groups[gid].size
    return graph, PrunePlan.create(graph.fingerprint, {gid: kept}, {gid: size})


def test_conv_bias_relu_conv():
    """Producer rows, bias entries and consumer columns are sliced by the same indices."""
    w1 = R.normal(size=(6, 3, 3, 3)).astype("float32")
    b1 = R.normal(size=6).astype("float32")
    w2 = R.normal(size=(4, 6, 1, 1)).astype("float32")
    before = _conv_chain(w1, b1, w2)
    keep = [0, 2, 5]
    graph, plan = _plan_for(before, keep)
    after, _ = hc.prune(before, plan=plan, graph=graph)
    expected = _conv_chain(w1[keep], b1[keep], w2[:, keep])
    tvm.ir.assert_structural_equal(after["main"], expected["main"], map_free_vars=True)


def test_depthwise_follows_its_input_and_updates_groups():
    """A depthwise conv keeps the producer's channel set; `groups` becomes the kept count."""
    w1 = R.normal(size=(8, 3, 3, 3)).astype("float32")
    b1 = R.normal(size=8).astype("float32")
    dw = R.normal(size=(8, 1, 3, 3)).astype("float32")
    w2 = R.normal(size=(4, 8, 1, 1)).astype("float32")
    before = _conv_chain(w1, b1, w2, dw=dw)
    graph = hc.analyze(before)
    assert len(graph.prunable_groups) == 1  # conv1 and the depthwise share one group
    keep = [1, 3, 4, 7]
    graph, plan = _plan_for(before, keep)
    after, _ = hc.prune(before, plan=plan, graph=graph)
    expected = _conv_chain(w1[keep], b1[keep], w2[:, keep], dw=dw[keep])
    tvm.ir.assert_structural_equal(after["main"], expected["main"], map_free_vars=True)


def test_nothing_kept_changes_nothing():
    """A plan that prunes no group leaves the module structurally unchanged."""
    w1 = R.normal(size=(6, 3, 3, 3)).astype("float32")
    before = _conv_chain(w1, np.zeros(6, "float32"), R.normal(size=(4, 6, 1, 1)).astype(
        "float32"))
    graph = hc.analyze(before)
    plan = PrunePlan.create(graph.fingerprint, {}, {})
    after, report = hc.prune(before, plan=plan, graph=graph)
    tvm.ir.assert_structural_equal(after["main"], graph.mod["main"])
    assert report.macs_after == report.macs_before


def test_grouped_conv_gathers_its_weight_per_group():
    """A grouped consumer keeps its group count; its input groups keep equally many channels,
    each group its own ones, so the weight's input axis is gathered group by group."""
    w1 = R.normal(size=(8, 3, 3, 3)).astype("float32")
    b1 = R.normal(size=8).astype("float32")
    w2 = R.normal(size=(4, 4, 1, 1)).astype("float32")
    before = _conv_chain(w1, b1, w2, groups2=2)
    graph = hc.analyze(before)
    (members,) = graph.balanced_sets  # conv1's channels 0-3 and 4-7: one group per conv group
    assert [graph.groups[g].size for g in members] == [4, 4]
    plan = PrunePlan.create(graph.fingerprint, {members[0]: [0, 3], members[1]: [1, 2]},
                            {g: 4 for g in members})
    after, _ = hc.prune(before, plan=plan, graph=graph)
    keep = [0, 3, 5, 6]
    w2_new = np.concatenate([w2[:2][:, [0, 3]], w2[2:][:, [1, 2]]])
    expected = _conv_chain(w1[keep], b1[keep], w2_new, groups2=2)
    tvm.ir.assert_structural_equal(after["main"], expected["main"], map_free_vars=True)


def test_grouped_conv_nhwc_ohwi_equals_the_mask_oracle():
    """TFLite's layouts: NHWC data, OHWI grouped weight."""
    from tvm_hcprune.testing import masked_reference, run_relax

    w1 = R.normal(size=(12, 3, 3, 3)).astype("float32")  # OHWI
    w2 = R.normal(size=(6, 1, 1, 4)).astype("float32")  # OHWI, 3 groups of 4 inputs
    w3 = R.normal(size=(2, 1, 1, 6)).astype("float32")
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 5, 5, 3), "float32"))
    kw = dict(data_layout="NHWC", kernel_layout="OHWI")
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.relu(relax.op.nn.conv2d(x, relax.const(w1), padding=[1, 1],
                                                            **kw)))
            y = bb.emit(relax.op.nn.relu(relax.op.nn.conv2d(y, relax.const(w2), groups=3, **kw)))
            out = bb.emit_output(relax.op.nn.conv2d(y, relax.const(w3), **kw))
        bb.emit_func_output(out)
    mod = bb.get()
    pruned, report = hc.prune(mod, ratio=0.5, align=1, criterion="random", seed=1)
    assert report.macs_after < report.macs_before
    xs = R.normal(size=(1, 5, 5, 3)).astype("float32")
    np.testing.assert_allclose(run_relax(pruned, [xs]),
                               run_relax(masked_reference(mod, report.plan), [xs]),
                               rtol=1e-5, atol=1e-6)


def test_unbalanced_plan_for_a_grouped_conv_is_refused():
    w1 = R.normal(size=(8, 3, 3, 3)).astype("float32")
    before = _conv_chain(w1, np.zeros(8, "float32"), R.normal(size=(4, 4, 1, 1)).astype(
        "float32"), groups2=2)
    graph = hc.analyze(before)
    (members,) = graph.balanced_sets
    plan = PrunePlan.create(graph.fingerprint, {members[0]: [0, 3]}, {members[0]: 4})
    with pytest.raises(HCPruneError, match="must keep equal counts"):
        hc.prune(before, plan=plan, graph=graph)
