"""Data-driven criteria (activation, apoz, thinet) against numpy oracles."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from tvm.relax.frontend.onnx import from_onnx

import tvm_hcprune as hc
from tvm_hcprune.errors import HCPruneError
from tvm_hcprune.planning.criteria import get_criterion
from tvm_hcprune.planning.criteria.activation import member_index
from tvm_hcprune.planning.planner import group_views


def two_conv_model(seed=0):
    """input[1,3,8,8] -> Conv(8) -> Relu -> Conv(6) -> Relu -> GAP -> Flatten -> Gemm(4)."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype("float32"), "w1"),
        numpy_helper.from_array(rng.standard_normal(8).astype("float32"), "b1"),
        numpy_helper.from_array(rng.standard_normal((6, 8, 3, 3)).astype("float32") * 0.3,
                                "w2"),
        numpy_helper.from_array(rng.standard_normal((4, 6)).astype("float32"), "w3"),
        numpy_helper.from_array(rng.standard_normal(4).astype("float32"), "b3"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["out"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "two_conv",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def setup():
    mod = from_onnx(two_conv_model())
    graph = hc.analyze(mod)
    xs = np.random.default_rng(1).standard_normal((8, 1, 3, 8, 8)).astype("float32")
    cal = hc.calibrate(graph.mod, xs, max_rows=256, progress=False)
    g = next(g for g in graph.groups if g.size == 8)  # conv1's output channels
    return mod, graph, cal, g


def test_activation_and_apoz_equal_consumer_input_statistics(setup):
    """For a group with one consumer, the scores are that layer's per-channel input
    statistics (normalised to mean 1)."""
    _, graph, cal, g = setup
    views = group_views(graph, g, cal)
    consumer = next(m for m in g.members if m.kind == "consumer")
    stats = cal[consumer.var.name].input_stats
    act = get_criterion("activation")(views, np.random.default_rng(0))
    np.testing.assert_allclose(act, stats.mean_abs / stats.mean_abs.mean(), rtol=1e-10)
    ap = get_criterion("apoz")(views, np.random.default_rng(0))
    keep = 1 - stats.apoz
    np.testing.assert_allclose(ap, keep / keep.mean(), rtol=1e-10)


def test_thinet_matches_brute_force_greedy(setup):
    """ThiNet scores rank channels by a greedy removal computed here from scratch with the
    explicit per-channel contributions z_c to the consumer's output."""
    _, graph, cal, g = setup
    consumer = next(m for m in g.members if m.kind == "consumer")
    lc = cal[consumer.var.name]
    w = graph.ctx.values[consumer.var].args[1].value.numpy()  # OIHW
    X = lc.X.astype(np.float64)  # [rows, 8, 3, 3] (256 rows <= max_rows)
    z = np.einsum("rchw,ochw->roc", X, w.astype(np.float64))  # [rows, O, C]
    removed, order = [], []
    for _ in range(g.size):
        best = min((c for c in range(g.size) if c not in removed),
                   key=lambda c: np.square(z[:, :, removed + [c]].sum(-1)).sum())
        removed.append(best)
        order.append(best)
    scores = get_criterion("thinet")(group_views(graph, g, cal), np.random.default_rng(0))
    assert list(np.argsort(scores)) == order


def test_thinet_removes_a_silent_channel_first(setup):
    """A channel whose input is always zero contributes nothing: removed first (lowest)."""
    import dataclasses

    from tvm_hcprune.recovery.calibration import Calibration

    _, graph, cal, g = setup
    consumer = next(m for m in g.members if m.kind == "consumer")
    idx = member_index(graph, consumer, g.id)
    assert idx.shape == (8, 1)
    lc = cal[consumer.var.name]
    X = lc.X.copy()
    X[:, 5] = 0
    layers = dict(cal.layers)
    layers[lc.name] = dataclasses.replace(lc, X=X)
    silent = Calibration(layers, cal.n_samples, cal.fingerprint)
    scores = get_criterion("thinet")(group_views(graph, g, silent), np.random.default_rng(0))
    assert int(np.argmin(scores)) == 5


def test_prune_with_activation_keeps_the_most_active_channels(setup):
    mod, graph, cal, g = setup
    _, rep = hc.prune(mod, ratio=0.5, align=1, criterion="activation", graph=graph,
                      calibration=cal)
    consumer = next(m for m in g.members if m.kind == "consumer")
    act = cal[consumer.var.name].input_stats.mean_abs
    expected = np.sort(np.argsort(-act, kind="stable")[:4])
    assert list(rep.plan.kept[g.id]) == list(expected)
    # the plan's config stays JSON (the calibration is not stored in it)
    assert hc.PrunePlan.from_dict(rep.plan.to_dict()) == rep.plan


@pytest.mark.parametrize("name", ["activation", "apoz", "thinet"])
def test_data_criteria_without_calibration_raise(setup, name):
    mod, graph, _, _ = setup
    with pytest.raises(HCPruneError, match="needs calibration"):
        hc.prune(mod, ratio=0.5, align=1, criterion=name, graph=graph)


def test_weight_criteria_unchanged_by_calibration(setup):
    """Existing criteria ignore the new GroupViews fields."""
    mod, graph, cal, _ = setup
    _, a = hc.prune(mod, ratio=0.5, align=1, criterion="l2", graph=graph)
    _, b = hc.prune(mod, ratio=0.5, align=1, criterion="l2", graph=graph, calibration=cal)
    assert a.plan.kept == b.plan.kept
