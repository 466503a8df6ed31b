"""Sensitivity scan and greedy per-group allocation under a MACs budget."""

from __future__ import annotations

import math

import numpy as np
import pytest
from tvm.relax.frontend.onnx import from_onnx

import tvm_hcprune as hc
from tvm_hcprune.errors import HCPruneError
from tvm_hcprune.recovery.runner import output_error
from tvm_hcprune.recovery.sensitivity import (
    SensitivityTable,
    allocate,
    group_plan,
    onnx_runner_factory,
    select_plan,
    sensitivity_scan,
)
from tvm_hcprune.testing import onnx_models


def test_output_error_oracle():
    dense = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 1.0]])
    outs = dense.copy()
    outs[1] = [3.0, 2.0]  # arg-max flips on one sample of three
    rel, dis = output_error(outs, dense)
    den = np.square(dense - dense.mean(0)).sum()
    assert math.isclose(rel, 9.0 / den) and math.isclose(dis, 1 / 3)
    assert output_error(dense, dense) == (0.0, 0.0)
    assert output_error(np.full_like(dense, np.nan), dense) == (math.inf, 1.0)


@pytest.fixture(scope="module")
def small():
    model = onnx_models.small_resnet(width=16, image=16, num_classes=10)
    mod = from_onnx(model)
    graph = hc.analyze(mod)
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((16, 1, 3, 16, 16)).astype("float32")
    cal = hc.calibrate(mod, xs[:12], max_rows=512, progress=False)
    return model, mod, graph, cal, xs


def test_allocate_prefers_cheap_groups_and_meets_the_budget(small):
    """A hand-made table: one group is free to prune, the other expensive. The greedy
    allocation prunes the free one first, and the plan's exact MACs meet the target."""
    _, _, graph, _, _ = small
    groups = [g for g in graph.groups if not g.frozen and g.size >= 8][:2]
    cheap, costly = groups
    table = SensitivityTable((0.5,), criterion="l2")
    for g, cost in ((cheap, 0.0), (costly, 1.0)):
        n_keep = g.size // 2
        plan = group_plan(graph, {g.id: n_keep})
        table.kept[g.id] = {0.5: n_keep}
        table.cost[g.id] = {0.5: cost}
        table.macs_saved[g.id] = {0.5: graph.total_macs - graph.count_after(plan)[0]}
    only_cheap = 1 - table.macs_saved[cheap.id][0.5] / graph.total_macs
    plan, info = allocate(graph, table, only_cheap + 1e-9)
    assert info["reached"] and info["ratios"] == {cheap.id: 0.5}
    assert set(plan.kept) == {cheap.id} and len(plan.kept[cheap.id]) == cheap.size // 2
    assert math.isclose(info["macs_fraction"], graph.count_after(plan)[0] / graph.total_macs)
    plan, info = allocate(graph, table, only_cheap - 1e-3)  # needs the costly one too
    assert set(info["ratios"]) == {cheap.id, costly.id} and info["reached"]
    plan, info = allocate(graph, table, 0.01)  # unreachable with these steps
    assert not info["reached"]
    with pytest.raises(HCPruneError):
        allocate(graph, table, 0.0)


def test_scan_measures_real_errors_and_plan_prunes(small):
    """The scan's error of a single-group plan equals the error measured directly; the
    allocated plan meets its budget and runs."""
    model, mod, graph, cal, xs = small
    make = onnx_runner_factory(model, graph)
    table = sensitivity_scan(mod, graph, cal, xs[12:], ratios=(0.5,), criterion="l2",
                             align=1, reconstruct=False, runner_factory=make,
                             progress=False)
    assert table.cost and table.n_samples == 4
    gid = next(iter(table.cost))
    plan = group_plan(graph, {gid: table.kept[gid][0.5]})
    pruned, _ = hc.prune(mod, plan=plan, graph=graph)
    dense = np.stack([make(mod, None)(x) for x in xs[12:]])
    got = np.stack([make(pruned, plan)(x) for x in xs[12:]])
    rel, dis = output_error(got, dense)
    assert math.isclose(table.rel_mse[gid][0.5], rel, rel_tol=1e-6)
    assert table.cost[gid][0.5] == pytest.approx(rel + dis)
    plan, info = allocate(graph, table, 0.8, calibration=cal)
    assert info["reached"] and info["macs_fraction"] <= 0.8
    _, rep = hc.prune(mod, plan=plan, graph=graph)
    assert math.isclose(rep.macs_fraction, info["macs_fraction"])
    # select_plan: the candidate closest to dense on the samples, within the budget
    plan, info = select_plan(mod, graph, table, cal, xs[12:], 0.8, margins=(1.0, 0.9),
                             reconstruct=False, runner_factory=make)
    cands = info["candidates"]
    assert cands and all(c["macs_fraction"] <= 0.8 for c in cands)
    best = min((c["disagreement"], c["rel_mse"]) for c in cands)
    pruned, rep = hc.prune(mod, plan=plan, graph=graph)
    got = np.stack([make(pruned, plan)(x) for x in xs[12:]])
    assert output_error(got, dense)[::-1] == pytest.approx(best)
    with pytest.raises(HCPruneError):
        sensitivity_scan(mod, graph, cal, xs[12:], ratios=(1.5,), runner_factory=make)


def test_unit_scales_two_probes_fit_the_measured_errors(small):
    """With ``sensitivity_probes=2`` a unit with several candidates is pruned alone at two
    widths; each error is the output error of that single-group plan (recomputed here on
    the mask oracle), and the unit's importance curve is fitted through both: its loss at
    each probed width equals the measured error. One probe gives scalar factors."""
    from tvm_hcprune.planning.budget import macs_cost
    from tvm_hcprune.planning.config import PruneConfig
    from tvm_hcprune.planning.planner import make_budget_plan
    from tvm_hcprune.recovery.guided import CachedRunners, ProbeMemo, fitted_curve, unit_scales
    from tvm_hcprune.testing import masked_reference

    _, _, graph, cal, xs = small
    config = PruneConfig(prune_first_conv=False)
    cost = macs_cost(graph)
    _, alloc = make_budget_plan(graph, config, 4, cost, 0.6 * graph.total_macs, cal,
                                starts=("dense",))
    runners = CachedRunners()
    memo, samples = ProbeMemo(), xs[:8]
    scales, info = unit_scales(graph, alloc, config, cal, samples, runners, memo=memo)
    assert info["reused"] == 0
    two = [i for i, s in scales.items() if np.ndim(s) == 1]
    assert two, "no unit was probed at two widths"
    dense = runners.outputs(graph.mod, xs[:8])[0]
    for i in two:
        gid = alloc.units[i][0]
        probes = info["probes"][gid]
        assert len(probes) == 2 and min(probes) == min(
            c for c in alloc.candidates[i] if c < graph.groups[gid].size)
        curve = scales[i]
        assert curve[0] == 0 and np.all(np.diff(curve) >= 0)
        for w, err in probes.items():
            plan = group_plan(graph, {g: w for g in alloc.units[i]}, config.criterion, cal)
            outs = runners.outputs(masked_reference(graph.mod, plan), xs[:8], keep=False)[0]
            assert err == pytest.approx(sum(output_error(outs, dense)), rel=1e-3, abs=1e-6)
            # the fitted loss: the error, or a wider probe's when that measured more
            want = max(e for v, e in probes.items() if v >= w)
            assert curve[-1] - curve[w] == pytest.approx(want, rel=1e-9)
        np.testing.assert_allclose(curve, fitted_curve(alloc.curves[i], probes))
    # one probe per unit, with the memo of the first scan: each probe is one of the first
    # scan's, taken from the memo (nothing pruned and run again), with its error
    one, info1 = unit_scales(graph, alloc, PruneConfig(prune_first_conv=False,
                                                       sensitivity_probes=1),
                             cal, samples, runners, memo=memo)
    assert all(np.ndim(s) == 0 for s in one.values())
    assert all(len(p) == 1 for p in info1["probes"].values())
    assert info1["reused"] == len(info1["probes"]) > 0
    for gid, probes in info1["probes"].items():
        assert probes.items() <= info["probes"][gid].items()
    # other samples are another scope: measured again
    _, info2 = unit_scales(graph, alloc, PruneConfig(prune_first_conv=False,
                                                     sensitivity_probes=1),
                           cal, xs[8:12], runners, memo=memo)
    assert info2["reused"] == 0 and info2["probes"].keys() == info1["probes"].keys()
    with pytest.raises(HCPruneError, match="sensitivity_probes must be 1 or 2"):
        PruneConfig(sensitivity_probes=3)


def test_fitted_curve_oracle():
    """The loss of the fitted curve is the measured error at each probe, the probe's factor
    times the criterion's loss beyond the probes, and never rises with the kept count."""
    from tvm_hcprune.recovery.guided import fitted_curve

    curve = np.cumsum(np.arange(1.0, 11.0))[::-1].cumsum()  # concave, 10 channels
    curve = np.concatenate([[0.0], curve / curve[-1] * 10.0])
    loss = curve[-1] - curve
    c = fitted_curve(curve, {6: 0.5, 2: 4.0})
    got = c[-1] - c
    assert got[6] == pytest.approx(0.5) and got[2] == pytest.approx(4.0)
    np.testing.assert_allclose(got[6:], loss[6:] * 0.5 / loss[6])
    np.testing.assert_allclose(got[:3], loss[:3] * 4.0 / loss[2])
    assert np.all(np.diff(got) <= 1e-12) and c[0] == 0.0
    assert np.all((got[2:7] >= 0.5 - 1e-12) & (got[2:7] <= 4.0 + 1e-12))
    flat = fitted_curve(curve, {6: 3.0, 2: 1.0})  # the deeper probe measured less
    assert (flat[-1] - flat)[2] == pytest.approx(3.0)
    np.testing.assert_allclose(fitted_curve(curve, {6: 2.0}), curve * 2.0 / loss[6])
