"""Attention heads under budgets (#14): a head (a prunable unit of head_dim channels) weighs
as its channels in the budget allocation, not as one channel, so a budget keeps the heads
that carry the attention instead of cutting every layer down to one head."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import tvm
from tvm import relax

import tvm_hcprune as hc
from tvm_hcprune.latency import RooflineModel
from tvm_hcprune.planning.budget import macs_cost
from tvm_hcprune.planning.config import PruneConfig
from tvm_hcprune.planning.criteria import GroupViews, get_criterion, importance_curve, normalise
from tvm_hcprune.planning.planner import group_views, make_budget_plan
from tvm_hcprune.testing import masked_reference
from tvm_hcprune.testing.onnx_models import bert_encoder
from tvm_hcprune.transform.apply_plan import apply_plan
from tvm_hcprune.transform.prune_channels import budget_plan

TARGET = {"kind": "llvm", "mcpu": "znver3", "num-cores": 2}  # the roofline's profile
LAYERS, HIDDEN, HEADS, FFN, SEQ = 2, 96, 12, 384, 16
DIM = HIDDEN // HEADS
WEIGHT_CRITERIA = ("l1", "l2", "redundancy", "bn_scale", "fpgm")


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    """``(module, graph, strong heads per layer)``: a 2-layer BERT-style encoder (12 heads of
    8) where 3 heads per layer carry the attention: the Q/K/V columns and output-projection
    rows of the other 9 are scaled by 0.05 (as in trained models, where a few heads matter)."""
    model = bert_encoder(layers=LAYERS, hidden=HIDDEN, heads=HEADS, ffn=FFN, seq=SEQ)
    inits = {i.name: i for i in model.graph.initializer}
    mats = [n.input[1] for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits]
    assert len(mats) == 6 * LAYERS  # per layer: q, k, v, output projection, FFN in, FFN out
    rng = np.random.default_rng(3)
    strong = []
    for layer in range(LAYERS):
        keep = np.sort(rng.choice(HEADS, 3, replace=False))
        strong.append(keep.tolist())
        scale = np.full(HEADS, 0.05, np.float32)
        scale[keep] = 1.0
        per_channel = np.repeat(scale, DIM)
        q, k, v, o = mats[6 * layer:6 * layer + 4]
        for name, axis in ((q, 1), (k, 1), (v, 1), (o, 0)):
            a = onnx.numpy_helper.to_array(inits[name]) * np.expand_dims(per_channel, 1 - axis)
            inits[name].CopyFrom(onnx.numpy_helper.from_array(a.astype(np.float32), name))
    path = tmp_path_factory.mktemp("heads") / "encoder.onnx"
    onnx.save(model, str(path))
    mod = hc.load_onnx(str(path))
    graph = hc.analyze(mod)
    return mod, graph, strong


def _head_groups(graph):
    heads = [g for g in graph.groups if g.unit > 1]
    assert [(g.size, g.unit, g.frozen) for g in heads] == [(HEADS, DIM, False)] * LAYERS
    return heads


def _channel_views(views: GroupViews, unit: int) -> GroupViews:
    """The same members seen per channel: row ``h`` of a head group's matrix holds its
    ``unit`` channels one after the other."""

    def split(ms):
        return [m.reshape(m.shape[0] * unit, -1) for m in ms]

    return GroupViews(views.size * unit, split(views.producers), split(views.consumers),
                      split(views.scales))


def test_head_importance_is_the_sum_of_its_channels(encoder):
    """Under a budget a head's importance is the aggregate of its channels' (l1: exactly the
    sum of its channels' normalised scores), and every group's importance totals its
    channel count, whatever the criterion: a head no longer weighs as much as one FFN
    channel. make_budget_plan's curves are these."""
    _, graph, _ = encoder
    heads = _head_groups(graph)
    rng = np.random.default_rng(0)
    for g in heads:
        views = group_views(graph, g)
        per_head = get_criterion("l1")(views, rng)
        per_channel = normalise(get_criterion("l1")(_channel_views(views, DIM), rng))
        sums = per_channel.reshape(HEADS, DIM).sum(1)
        np.testing.assert_allclose(np.diff(importance_curve(per_head, g.unit)),
                                   np.sort(sums)[::-1], rtol=1e-6)  # float32 weights
    ffn = [g for g in graph.groups if g.unit == 1 and not g.frozen]
    assert [g.size for g in ffn] == [FFN] * LAYERS
    for name in WEIGHT_CRITERIA:
        for g in heads + ffn:
            curve = importance_curve(get_criterion(name)(group_views(graph, g), rng), g.unit)
            assert curve[-1] == pytest.approx(g.size * g.unit) and np.all(np.diff(curve) >= 0)
    config = PruneConfig(prune_first_conv=False, compare_uniform=False)
    _, alloc = make_budget_plan(graph, config, 8, macs_cost(graph), 0.5 * graph.total_macs)
    for i, unit in enumerate(alloc.units):
        g = graph.groups[unit[0]]
        scores = get_criterion("l2")(group_views(graph, g), np.random.default_rng(0))
        np.testing.assert_allclose(alloc.curves[i], importance_curve(scores, g.unit))


def _outputs(mod, xs):
    vm = relax.VirtualMachine(tvm.compile(mod, tvm.target.Target("llvm")), tvm.cpu())
    return np.stack([vm["main"](tvm.runtime.tensor(x, tvm.cpu())).numpy() for x in xs])


def _corr(a, b) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


@pytest.mark.parametrize("budget", [hc.MACs(fraction=0.5), hc.Latency(fraction=0.7)],
                         ids=["macs-0.5", "latency-0.7"])
def test_budget_keeps_the_heads_that_carry_attention(encoder, budget):
    """With a MAC budget and a latency budget (roofline model), prune() keeps exactly the 3
    strong heads of each layer (more than one) and cuts FFN channels instead; the former
    weighting (a head worth one channel, reproduced by rescaling each head unit by
    1/head_dim) kept one head in some layer. The pruned module equals the masked oracle,
    and its output agrees with the dense model's at least as well as the former plan's."""
    mod, graph, strong = encoder
    heads = _head_groups(graph)
    kw = {}
    if isinstance(budget, hc.Latency):
        kw = {"target": TARGET, "latency_model": RooflineModel(TARGET)}
    pruned, report = hc.prune(mod, budget=budget, graph=graph, align=8, **kw)
    plan = report.plan
    assert [list(plan.kept[g.id]) for g in heads] == strong
    config = PruneConfig.of(None, align=8)

    def former(alloc):
        return {i: 1.0 / graph.groups[u[0]].unit for i, u in enumerate(alloc.units)}, None

    old, *_ = budget_plan(graph, config, 8, budget, rescale=former, **kw)
    old_heads = [len(old.kept.get(g.id, range(HEADS))) for g in heads]
    assert min(old_heads) == 1, old_heads
    xs = np.random.default_rng(0).standard_normal((8, 1, SEQ, HIDDEN)).astype("float32")
    dense = _outputs(mod, xs)
    got = _outputs(pruned, xs)
    if isinstance(budget, hc.MACs):  # one oracle check (each build costs seconds)
        ref = _outputs(masked_reference(mod, plan), xs)
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    before = _corr(_outputs(apply_plan(graph, old), xs), dense)
    after = _corr(got, dense)
    assert after >= before, (before, after)
