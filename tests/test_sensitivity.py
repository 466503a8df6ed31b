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
