"""Budgets (``prune(mod, budget=Latency|MACs|Params)``) and latency models: costs are exact,
budgets are met, pruned results match the mask oracle, tables are cached, bad input raises.
Nothing here asserts a timing: measured numbers are only compared with themselves."""

from __future__ import annotations

import json
import warnings

import numpy as np
import onnx
import pytest
from tvm.relax.frontend.onnx import from_onnx

import tvm_hcprune as hc
from tvm_hcprune.cli import main
from tvm_hcprune.errors import HCPruneError, HCPruneWarning
from tvm_hcprune.latency import LatencyTable, RooflineModel, latency_table
from tvm_hcprune.latency.layers import layer_module, layer_specs
from tvm_hcprune.planning.budget import (
    Allocation,
    CostTerm,
    SeparableCost,
    allocate_widths,
    candidate_widths,
    macs_cost,
    params_cost,
    uniform_start,
)
from tvm_hcprune.planning.plan import PrunePlan
from tvm_hcprune.planning.planner import (
    input_conv_groups,
    make_budget_plan,
    make_plan,
    pick_plan,
)
from tvm_hcprune.testing import masked_reference, onnx_models, run_relax
from tvm_hcprune.transform.prune_channels import PruneChannels


@pytest.fixture(scope="module")
def small():
    return from_onnx(onnx_models.small_resnet(width=32, image=16))


@pytest.fixture(scope="module")
def graph(small):
    return hc.analyze(small)


@pytest.fixture(scope="module")
def table(graph, tmp_path_factory):
    cache = tmp_path_factory.mktemp("latcache")
    return latency_table(graph, "llvm", align=8, widths=2, cache_dir=cache, repeats=2,
                         number=2, progress=False), cache


def _oracle(mod, pruned, plan, seed=0):
    x = np.random.default_rng(seed).normal(size=(1, 3, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(run_relax(pruned, [x]), run_relax(masked_reference(mod, plan),
                                                                 [x]), rtol=1e-5, atol=1e-5)


def _budget_lowest(tab, graph):
    """Every group a budget may prune at the table's smallest candidate (the first conv,
    which budgets protect, stays dense)."""
    first = input_conv_groups(graph)
    return {g: c[0] for g, c in tab.candidates.items() if g not in first}


def _plan_of(graph, widths):
    kept = {g: list(range(w)) for g, w in widths.items() if w < graph.groups[g].size}
    return PrunePlan.create(graph.fingerprint, kept,
                            {g: graph.groups[g].size for g in kept})


def test_macs_and_params_costs_equal_count_after(graph):
    """The separable MAC and parameter costs equal ChannelGraph.count_after for any widths."""
    rng = np.random.default_rng(0)
    mc, pc = macs_cost(graph), params_cost(graph)
    for _ in range(5):
        w = {g.id: (int(rng.integers(1, g.size + 1)) if g.prunable else g.size)
             for g in graph.groups}
        macs, params = graph.count_after(_plan_of(graph, w))
        assert mc.total(w) == macs
        assert pc.total(w) == params


@pytest.mark.parametrize("budget", [hc.MACs(fraction=0.5), hc.Params(fraction=0.4)])
def test_macs_params_budget_met_aligned_and_oracle(small, graph, budget):
    """The plan meets the budget, keeps aligned widths and matches the mask oracle."""
    pruned, report = hc.prune(small, budget=budget, graph=graph, align=8)
    frac = report.macs_fraction if isinstance(budget, hc.MACs) else report.params_fraction
    assert frac <= budget.fraction
    assert frac > budget.fraction - 0.25  # the budget is used, not overshot wildly
    for c in report.groups:
        assert c.after == c.before or c.after % 8 == 0
    assert report.plan.config["budget"]["kind"] == type(budget).__name__
    _oracle(small, pruned, report.plan)


def test_budget_respects_protect_and_min_channels(small, graph):
    _, report = hc.prune(small, budget=hc.MACs(fraction=0.5), graph=graph, align=8,
                         protect=("group:0",), min_channels=16)
    after = {c.id: c.after for c in report.groups}
    assert after[0] == graph.groups[0].size
    assert all(a >= 16 for a in after.values() if a != 10)
    assert report.macs_fraction <= 0.5


@pytest.mark.parametrize("budget", [hc.MACs(fraction=0.5), hc.Params(fraction=0.5),
                                    hc.Latency(fraction=0.5)])
def test_budgets_protect_the_first_conv(small, graph, budget):
    """Under every budget (criterion allocation, measured or estimated latency) the conv
    reading the input keeps its width by default, in prune() and in the PruneChannels pass;
    prune_first_conv=True lets the same budget prune it, and the plan records the rule."""
    from tvm_hcprune.planning.planner import input_conv_groups

    (first,) = input_conv_groups(graph)
    opts = {"graph": graph, "align": 8, "target": "llvm",
            "latency_model": RooflineModel("llvm")}
    pruned, report = hc.prune(small, budget=budget, **opts)
    assert first not in report.plan.kept and report.plan.config["prune_first_conv"] is False
    assert report.plan.kept  # the budget was met by pruning other groups
    _oracle(small, pruned, report.plan)
    seq = PruneChannels(budget=budget, align=8, target="llvm",
                        latency_model=RooflineModel("llvm"))
    seq(small)
    assert seq.last_plan.kept.keys() == report.plan.kept.keys()
    _, free = hc.prune(small, budget=budget, prune_first_conv=True, **opts)
    assert free.plan.config["prune_first_conv"] is True
    if isinstance(budget, hc.MACs):  # the cheapest importance per MAC is in the first conv
        assert first in free.plan.kept


def test_ratio_plans_keep_pruning_the_first_conv(small, graph):
    """A uniform ratio's plan is what it was before budgets protected the first conv: the
    default equals prune_first_conv=True (group for group, channel for channel), and
    prune_first_conv=False protects it on request."""
    from tvm_hcprune.planning.planner import input_conv_groups

    (first,) = input_conv_groups(graph)
    _, plain = hc.prune(small, ratio=0.5, graph=graph, align=8)
    _, free = hc.prune(small, ratio=0.5, graph=graph, align=8, prune_first_conv=True)
    _, kept = hc.prune(small, ratio=0.5, graph=graph, align=8, prune_first_conv=False)
    assert first in plain.plan.kept and plain.plan.config["prune_first_conv"] is None
    assert plain.plan.kept.keys() == free.plan.kept.keys()
    assert all(np.array_equal(plain.plan.kept[g], free.plan.kept[g]) for g in free.plan.kept)
    assert first not in kept.plan.kept
    assert set(kept.plan.kept) == set(plain.plan.kept) - {first}


def test_unreachable_budget_says_best_reachable(small, graph):
    with pytest.raises(HCPruneError, match=r"no plan meets the MACs budget.*reach"):
        hc.prune(small, budget=hc.MACs(fraction=0.01), graph=graph, align=8)


def test_bad_budget_records_and_mixing():
    for bad in (lambda: hc.Latency(), lambda: hc.Latency(fraction=0.5, ms=3.0),
                lambda: hc.Latency(fraction=1.5), lambda: hc.Latency(ms=-1.0),
                lambda: hc.MACs(fraction=0.0), lambda: hc.Params(fraction=1.0)):
        with pytest.raises(HCPruneError):
            bad()
    mod = from_onnx(onnx_models.small_resnet(width=16, image=16))
    with pytest.raises(HCPruneError, match="either ratio= or budget="):
        hc.prune(mod, ratio=0.5, budget=hc.MACs(fraction=0.5))
    with pytest.raises(HCPruneError, match="budget must be"):
        hc.prune(mod, budget=0.5)


def test_staircase_edges_only():
    """A width step that saves no cost is never the chosen width: with a flat stair from 32
    to 24 the allocation lands on 16 (where the cost drops), not on 24 or below 16."""
    stair = {8: 1.0, 16: 1.0, 24: 2.0, 32: 2.0}
    cost = SeparableCost([CostTerm((0,), lambda w: stair[w[0]]),
                          CostTerm((1,), lambda w: w[1] / 8.0)])
    imp = {0: np.arange(33, dtype=float), 1: np.arange(33, dtype=float) * 10}
    cands = {0: [8, 16, 24, 32], 1: [8, 16, 24, 32]}
    alloc = allocate_widths([[0], [1]], cands, imp, cost, limit=5.0, sizes={0: 32, 1: 32})
    assert alloc.widths == {0: 16, 1: 32}
    assert alloc.cost == 5.0


def _skewed_problem():
    """Four 64-channel groups at 1 ms per channel; group 0's channels are by far the least
    important (its scores fall off steeply), the others are flat."""
    cost = SeparableCost([CostTerm((g,), lambda w, g=g: float(w[g])) for g in range(4)])
    steep = np.sort(np.r_[np.full(16, 8.0), np.full(48, 0.2)])[::-1]
    curves = {0: np.r_[0.0, np.cumsum(steep)]}
    curves.update({g: np.arange(65, dtype=float) * 1.0 for g in (1, 2, 3)})
    cands = {g: candidate_widths(64, 8) for g in range(4)}
    return cost, curves, cands, {g: 64 for g in range(4)}


def test_allocation_floor():
    """No group is cut below ``min_fraction`` of its size, however cheap its channels; the
    limit is still met (by cutting the others more)."""
    cost, curves, cands, sizes = _skewed_problem()
    units = [[g] for g in range(4)]
    free = allocate_widths(units, cands, curves, cost, limit=160.0, sizes=sizes)
    assert free.widths[0] == 16  # the cheap group alone pays most of the cut
    for floor in (0.3, 0.5):
        alloc = allocate_widths(units, cands, curves, cost, limit=160.0, sizes=sizes,
                                min_fraction=floor)
        assert min(alloc.widths.values()) >= floor * 64
        assert alloc.cost <= 160.0
    with pytest.raises(HCPruneError, match="no plan meets"):
        allocate_widths(units, cands, curves, cost, limit=100.0, sizes=sizes,
                        min_fraction=0.5)
    with pytest.raises(HCPruneError, match="min_fraction"):
        allocate_widths(units, cands, curves, cost, limit=100.0, sizes=sizes,
                        min_fraction=1.0)


def test_allocation_concave_value_spreads_cuts():
    """Equal groups: summed importance (power 1) may cut one group deep, a concave value
    (power < 1) cuts them evenly; with one group half as important it still cuts that group
    most, but less deep than the sum does, at the cost of less importance kept in total."""
    cost = SeparableCost([CostTerm((g,), lambda w, g=g: float(w[g])) for g in range(4)])
    flat = {g: np.arange(65, dtype=float) for g in range(4)}
    cands = {g: candidate_widths(64, 8) for g in range(4)}
    sizes = {g: 64 for g in range(4)}
    units = [[g] for g in range(4)]
    summed = allocate_widths(units, cands, flat, cost, limit=128.0, sizes=sizes)
    assert max(summed.widths.values()) - min(summed.widths.values()) >= 32
    for power in (0.5, 0.0):
        even = allocate_widths(units, cands, flat, cost, limit=128.0, sizes=sizes,
                               power=power)
        assert set(even.widths.values()) == {32}
    half = {**flat, 0: np.arange(65, dtype=float) * 0.5}  # group 0 half as important
    summed = allocate_widths(units, cands, half, cost, limit=160.0, sizes=sizes)
    assert summed.widths[0] == 8  # cut to the smallest width first
    for power in (0.5, 0.0):
        concave = allocate_widths(units, cands, half, cost, limit=160.0, sizes=sizes,
                                  power=power)
        w = concave.widths
        assert w[0] == min(w.values()) and w[0] >= 16  # still cut most, not to the bone
        assert max(w.values()) - min(w.values()) < max(summed.widths.values()) - 8
        assert concave.cost <= 160.0
        assert concave.importance <= summed.importance  # the sum is what power 1 maximises


def test_uniform_start_and_allocation_from_it():
    """uniform_start keeps the candidate nearest (1 - r) of every size at the least ratio r
    meeting the limit; allocate_widths from it (floor applied) only gives channels back,
    and stops when no further step fits."""
    cost = SeparableCost([CostTerm((g,), lambda w, g=g: float(w[g])) for g in range(4)])
    cands = {g: candidate_widths(64, 8) for g in range(4)}
    sizes = {g: 64 for g in range(4)}
    units = [[g] for g in range(4)]
    flat = {g: np.arange(65, dtype=float) for g in range(4)}
    start = uniform_start(range(4), units, cands, sizes, cost, limit=150.0)
    assert start == {g: 32 for g in range(4)}  # 4 x 40 = 160 > 150 at the ratio before
    assert uniform_start(range(4), units, cands, sizes, cost, limit=16.0) is None
    alloc = allocate_widths(units, cands, flat, cost, limit=150.0, sizes=sizes, start=start)
    assert all(alloc.widths[g] >= 32 for g in range(4))
    assert 150.0 - 8 < alloc.cost <= 150.0 and alloc.cost == sum(alloc.widths.values())
    assert alloc.value == pytest.approx(alloc.importance - 4 * 64)  # power 1: importance
    floored = allocate_widths(units, cands, flat, cost, limit=150.0, sizes=sizes,
                              start={0: 8, 1: 64, 2: 64, 3: 8}, min_fraction=0.25)
    assert min(floored.widths.values()) >= 16 and floored.cost <= 150.0


def test_compare_uniform_picks_one_of_the_plans(graph):
    """With compare_uniform the planner offers the knapsack's plan, the uniform one and the
    uniform ratio (what ``ratio=`` keeps at the least ratio meeting the limit) to ``choose``
    and keeps the one it picks (recording the scores); without ``choose`` it keeps the
    higher value of the first two, which at power 1 is the knapsack's own objective; off,
    the knapsack's plan as before."""
    cost, limit = macs_cost(graph), 0.5 * graph.total_macs
    cfg = hc.PruneConfig(prune_first_conv=False)
    off, _ = make_budget_plan(graph, hc.PruneConfig(prune_first_conv=False,
                                                    compare_uniform=False), 8, cost, limit)
    assert off.config["allocation_start"] == "dense"
    offered = []

    def pick(i):
        def choose(plans):
            offered.append(plans)
            return i, [0.5, 0.25, 0.75][:len(plans)]
        return choose

    uni, ualloc = make_budget_plan(graph, cfg, 8, cost, limit, choose=pick(1))
    (knap, other, ratio), = offered  # with choose, the uniform ratio is the third
    assert knap.kept == off.kept and other.kept == uni.kept != off.kept
    assert uni.config["allocation_start"] == "uniform"
    assert uni.config["allocation_scores"] == {"dense": 0.5, "uniform": 0.25, "ratio": 0.75}
    # the oracle of the third: ratio= at the least ratio of the 1/100 grid meeting the limit
    r = next(k / 100 for k in range(1, 100) if graph.count_after(make_plan(
        graph, hc.PruneConfig(ratio=k / 100, prune_first_conv=False), 8))[0] <= limit)
    want = make_plan(graph, hc.PruneConfig(ratio=r, prune_first_conv=False), 8)
    assert ratio.config["allocation_start"] == "ratio"
    assert {g: len(k) for g, k in ratio.kept.items()} == {
        g: len(k) for g, k in want.kept.items()}
    picked, _ = make_budget_plan(graph, cfg, 8, cost, limit, choose=pick(2))
    assert picked.kept == ratio.kept and picked.config["allocation_start"] == "ratio"
    offered.clear()
    assert cost.total(ualloc.widths) <= limit
    sizes = {g.id: g.size for g in graph.groups}
    pruned = [g for g in uni.kept]
    shares = [len(uni.kept[g]) / sizes[g] for g in pruned]
    knap_shares = [len(off.kept[g]) / sizes[g] for g in off.kept]
    assert len(pruned) >= len(off.kept) and min(shares) >= min(knap_shares)  # cuts spread
    back, _ = make_budget_plan(graph, cfg, 8, cost, limit, choose=pick(0))
    assert back.kept == off.kept and back.config["allocation_start"] == "dense"
    by_value, valloc = make_budget_plan(graph, cfg, 8, cost, limit)
    assert by_value.kept == off.kept and "allocation_scores" not in by_value.config
    assert valloc.value >= ualloc.value
    # one allocation alone (a closed-loop family): no choice is asked
    asked = len(offered)
    alone, _ = make_budget_plan(graph, cfg, 8, cost, limit, choose=pick(0), starts=("uniform",))
    assert alone.kept == uni.kept and alone.config["allocation_start"] == "uniform"
    knap_alone, _ = make_budget_plan(graph, cfg, 8, cost, limit, choose=pick(1),
                                     starts=("dense",))
    assert knap_alone.kept == off.kept and len(offered) == asked
    with pytest.raises(HCPruneError, match="no plan meets"):
        make_budget_plan(graph, cfg, 8, cost, 1e-3 * limit, starts=("uniform",))
    ratio_alone, _ = make_budget_plan(graph, cfg, 8, cost, limit, starts=("ratio",))
    assert ratio_alone.kept == ratio.kept
    with pytest.raises(HCPruneError, match="starts must name"):
        make_budget_plan(graph, cfg, 8, cost, limit, starts=("knapsack",))


def test_pick_plan_by_choice_or_value():
    """pick_plan keeps what ``choose`` picks (scores recorded by allocation start), else the
    higher value, an earlier plan on a tie."""
    plans = [PrunePlan.create("f", {0: [0, 1]}, {0: 4}, {"allocation_start": s})
             for s in ("dense", "uniform")]
    allocs = [Allocation({0: 2}, 1.0, 1.0, 2.0, 3.0, value=v) for v in (-1.0, -1.0)]
    assert pick_plan(list(zip(plans, allocs, strict=True)))[0] is plans[0]  # tie: the earlier
    allocs[1].value = -0.5
    assert pick_plan(list(zip(plans, allocs, strict=True)))[0] is plans[1]
    chosen, al = pick_plan(list(zip(plans, allocs, strict=True)), lambda ps: (0, [0.2, 0.4]))
    assert al is allocs[0] and chosen.config["allocation_start"] == "dense"
    assert chosen.config["allocation_scores"] == {"dense": 0.2, "uniform": 0.4}
    with pytest.raises(HCPruneError, match="at least one"):
        pick_plan([])


def test_candidate_widths():
    assert candidate_widths(64, 16) == [16, 32, 48, 64]
    assert candidate_widths(20, 8, min_channels=9) == [16, 20]
    assert candidate_widths(64, 8, max_count=3) == [8, 40, 64]


def test_layer_specs_and_modules(graph):
    """Every conv/matmul is a layer; a layer's module has the asked widths and epilogue."""
    specs = layer_specs(graph)
    assert len(specs) == len(graph.ctx.macs)
    residual = [s for s in specs if any(k == "residual" for _, k, _ in s.chain)]
    assert residual  # the identity shortcuts' adds are fused into a layer
    mod, inputs = layer_module(residual[0], 8, 16)
    out = run_relax(mod, inputs)
    assert np.asarray(out).shape[1] == 16 and len(inputs) == 2


def test_layer_kernels_are_the_models_kernels(graph):
    """Each stand-alone layer compiles to a kernel with exactly the argument shapes of one
    of the whole model's kernels (blocked input, packed weights, the same fused epilogue
    operands), so the table times the kernels the model runs. The layer reading the model's
    input writes NCHW when it stands alone (blocked in the model): its input and packed
    weights match."""
    import tvm
    from tvm import relax

    from tvm_hcprune.backend.timing import kernel_times

    def layer_kernels(mod, inputs):
        vm = relax.VirtualMachine(hc.build(mod, "llvm", chain_kernels=False), tvm.cpu())
        rows = kernel_times(vm, [tvm.runtime.tensor(a) for a in inputs], number=1)
        return [r.shapes for r in rows if "conv" in r.name or "dense" in r.name]

    x = [np.zeros((1, 3, 16, 16), np.float32)]
    model = set(layer_kernels(graph.mod, x))
    first = {m[:2] for m in model}
    for spec in layer_specs(graph):
        got = layer_kernels(*layer_module(spec, spec.in_full, spec.out_full))
        assert len(got) == 1, spec.name
        if spec.reads_model_input:
            assert got[0][:2] in first, spec.name
        else:
            assert got[0] in model, spec.name


def test_latency_table_cached_and_consistent(graph, table):
    """A second build measures nothing and gives the same table; at the measured grid
    points the table returns the measured values; every group's candidates are aligned."""
    tab, cache = table
    again = latency_table(graph, "llvm", align=8, widths=2, cache_dir=cache, repeats=2,
                          number=2, progress=False)
    assert again.measured == 0 and tab.measured > 0
    assert again.to_dict() == tab.to_dict()
    specs = {s.name: s for s in layer_specs(graph)}
    for name, lt in tab.layers.items():
        ms = np.asarray(lt.ms)  # non-decreasing in both widths
        assert (np.diff(ms, axis=0) >= 0).all() and (np.diff(ms, axis=1) >= 0).all()
        for i, a in enumerate(lt.in_grid):
            for j, b in enumerate(lt.out_grid):
                if not lt.depthwise:
                    assert tab.layer_ms(specs[name], a, b) == pytest.approx(lt.ms[i][j])
    for g, c in tab.candidates.items():
        size = graph.groups[g].size
        assert c[-1] == size and all(w % 8 == 0 or w == size for w in c)


def test_latency_table_save_load_and_target_check(graph, table, tmp_path):
    tab, _ = table
    tab.save(tmp_path / "t.json")
    back = LatencyTable.load(tmp_path / "t.json")
    assert back.to_dict() == tab.to_dict()
    d = tab.to_dict()
    d["target"] = '{"kind":"llvm","mcpu":"cascadelake"}'
    (tmp_path / "o.json").write_text(json.dumps(d))
    foreign = LatencyTable.load(tmp_path / "o.json")
    with pytest.raises(HCPruneError, match="made for target"):
        hc.prune(graph.mod, budget=hc.Latency(fraction=0.5), graph=graph, align=8,
                 target="llvm", latency_model=foreign)


@pytest.mark.parametrize("q", [0.7, 0.3])
def test_latency_budget_with_table(small, graph, table, q):
    """The predicted latency meets the budget; the result matches the mask oracle.

    The budget is placed between the dense latency and the smallest the table can reach
    (measured figures vary between machines and runs; the test needs a reachable one)."""
    tab, _ = table
    low = _budget_lowest(tab, graph)
    dense_pred = tab.predict(graph)
    lowest = tab.cost(graph).total(low) / dense_pred
    fraction = lowest + q * (1.0 - lowest)
    pruned, report = hc.prune(small, budget=hc.Latency(fraction=fraction), graph=graph,
                              align=8, target="llvm", latency_model=tab)
    assert report.dense_predicted_ms == pytest.approx(dense_pred)
    assert report.predicted_ms <= fraction * dense_pred + 1e-12
    assert report.predicted_ms == pytest.approx(tab.predict(graph, report.plan))
    for c in report.groups:  # widths are the table's measured candidates
        assert c.after in tab.candidates[c.id]
    _oracle(small, pruned, report.plan, seed=1)


def test_latency_budget_errors(small, graph, table):
    tab, _ = table
    with pytest.raises(HCPruneError, match="not below the dense"):
        hc.prune(small, budget=hc.Latency(ms=tab.predict(graph) * 2), graph=graph, align=8,
                 target="llvm", latency_model=tab)
    with pytest.raises(HCPruneError, match="no plan meets the latency budget"):
        hc.prune(small, budget=hc.Latency(ms=tab.predict(graph) * 1e-3), graph=graph, align=8,
                 target="llvm", latency_model=tab)
    other = hc.analyze(from_onnx(onnx_models.small_resnet(width=16, image=16)))
    with pytest.raises(HCPruneError, match="different model"):
        tab.check(other)
    with pytest.raises(HCPruneError, match="made for target"):  # no target: the host's
        tab.check(graph, {"kind": "llvm", "mcpu": "cascadelake"})


def test_latency_budget_in_ms(small, graph, table):
    tab, _ = table
    low = _budget_lowest(tab, graph)
    ms = 0.5 * (tab.cost(graph).total(low) + tab.predict(graph))
    _, report = hc.prune(small, budget=hc.Latency(ms=ms), graph=graph, align=8,
                         latency_model=tab)
    assert report.predicted_ms <= ms
    assert report.budget.describe() == f"{ms:g} ms"


def test_roofline_budget(small, graph):
    """Without measurement the roofline model drives the budget; its estimate falls with
    channels and has the SIMD staircase (a width inside one vector costs a whole vector)."""
    model = RooflineModel("llvm")
    convs = [s for s in layer_specs(graph) if s.op == "relax.nn.conv2d"]
    lanes = model.lanes
    # a stride-2 conv: direct kernel at every width
    spec = next(s for s in convs if [int(v) for v in s.call.attrs.strides] == [2, 2])
    assert model.layer_ms(spec, 32, 32) > model.layer_ms(spec, 32, 16)
    assert model.layer_ms(spec, 32, lanes) >= model.layer_ms(spec, 32, 1)
    # a 3x3 stride-1 conv at 16x16 (64 tiles): Winograd from 16 channels on, as in the build,
    # so 16 output channels cost less than 1 (the direct kernel, a whole vector)
    spec = convs[1]
    assert model.layer_ms(spec, 32, 32) > model.layer_ms(spec, 32, 16)
    assert model.layer_ms(spec, 32, 16) < model.layer_ms(spec, 32, 1)
    pruned, report = hc.prune(small, budget=hc.Latency(fraction=0.5), graph=graph, align=8,
                              target="llvm", latency_model=model)
    assert report.predicted_ms <= 0.5 * report.dense_predicted_ms
    _oracle(small, pruned, report.plan, seed=2)


def test_cli_prune_budgets(tmp_path, capsys):
    path = tmp_path / "m.onnx"
    onnx.save(onnx_models.small_resnet(width=16, image=16), str(path))
    out = tmp_path / "p.onnx"
    assert main(["prune", str(path), "--macs-budget", "0.5x", "--align", "8", "-o",
                 str(out)]) == 0
    assert out.is_file() and "budget 0.5x MACs" in capsys.readouterr().out
    for flag, first_pruned in (([], False), (["--prune-first-conv"], True)):
        plan_path = tmp_path / f"plan{len(flag)}.json"
        assert main(["prune", str(path), "--macs-budget", "0.5x", "--align", "8", *flag,
                     "--plan-out", str(plan_path), "-o", str(out)]) == 0
        assert (0 in PrunePlan.load(plan_path).kept) == first_pruned  # group 0: first conv
    bad = tmp_path / "bad.onnx"
    assert main(["prune", str(path), "--macs-budget", "0.01x", "--align", "8", "-o",
                 str(bad)]) != 0
    assert not bad.exists()
    assert main(["prune", str(path), "--latency-budget", "fast", "-o", str(bad)]) != 0
    assert main(["prune", str(path), "--macs-budget", "0.5x", "--prune-ratio", "0.5", "-o",
                 str(bad)]) != 0
    assert not bad.exists()
    err = capsys.readouterr()
    assert "no plan meets the MACs budget" in err.out + err.err


def test_table_rest_calibration(graph, table):
    """The part outside the layers is fitted on the two whole-model measurements (dense and
    every group at its smallest candidate), clamped so that it is never negative and never
    grows when channels shrink."""
    tab, _ = table
    specs = layer_specs(graph)
    sg = graph.space_group
    dense = {g.id: g.size for g in graph.groups}
    low = {**dense, **tab.low_widths}

    def layers(w):
        return sum(tab.layer_ms(s, *s.lengths(sg, w)) for s in specs)

    cost = tab.cost(graph)
    assert tab.low_ms is not None
    rest_dense = max(0.0, tab.dense_ms - layers(dense))
    rest_low = max(0.0, tab.low_ms - layers(low))
    assert cost.total(dense) == pytest.approx(layers(dense) + rest_dense)
    if rest_dense > 0:
        assert cost.total(dense) == pytest.approx(tab.dense_ms)
    # the low-width measurement is met unless it is below the layers alone (rest 0) or
    # noise made the rest grow when channels shrank (rest kept at its dense value)
    assert cost.total(low) == pytest.approx(layers(low) + min(rest_low, rest_dense))
    assert cost.total(low) > 0


def test_cli_compile_budgets(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(onnx_models.small_resnet(width=16, image=16), str(path))
    out = tmp_path / "m.so"
    assert main(["compile", str(path), "--macs-budget", "0.6x", "-o", str(out)]) == 0
    assert out.is_file()
    bad = tmp_path / "bad.so"
    for flags in (["--latency-budget", "2x"], ["--latency-budget=-3ms"],
                  ["--macs-budget", "4ms"], ["--macs-budget", "0.5x", "--prune-ratio", "0.3"]):
        assert main(["compile", str(path), *flags, "-o", str(bad)]) != 0
        assert not bad.exists()


def test_report_markdown_and_layers(small, graph, table):
    """The report lists every layer with its widths and the model's milliseconds before and
    after, the totals (with a measured row when given) and the frozen groups."""
    tab, _ = table
    low = _budget_lowest(tab, graph)
    frac = 0.5 * (1.0 + tab.cost(graph).total(low) / tab.predict(graph))
    _, report = hc.prune(small, budget=hc.Latency(fraction=frac), graph=graph, align=8,
                         target="llvm", latency_model=tab)
    specs = {s.name: s for s in layer_specs(graph)}
    assert [c.name for c in report.layers] == list(specs)
    kept = {c.id: c.after for c in report.groups}
    for c in report.layers:
        spec = specs[c.name]
        assert (c.cin_after, c.cout_after) == spec.lengths(graph.space_group, kept)
        assert c.ms_after == pytest.approx(tab.layer_ms(spec, c.cin_after, c.cout_after))
        assert c.ms_before == pytest.approx(tab.layer_ms(spec, c.cin_before, c.cout_before))
    md = report.to_markdown(measured_ms=(2.0, 1.0))
    assert md.startswith("# Pruning report")
    assert f"Budget: **{frac:g}x latency** (latency from the table)" in md
    assert "| latency, measured (ms) | 2.0000 | 1.0000 | 0.500 |" in md
    assert "## Layers" in md and "## Frozen groups" in md
    assert all(f"| {name} |" in md for name in specs)
    assert "model output shape must not change" in md
    d = json.loads(json.dumps(report.to_dict()))
    assert len(d["layers"]) == len(specs) and d["latency_source"] == "table"


def test_cli_latency_budget_roofline(tmp_path, capsys):
    """--latency-model roofline needs no measurement; the report shows the prediction."""
    path = tmp_path / "m.onnx"
    onnx.save(onnx_models.small_resnet(width=32, image=16), str(path))
    out, md = tmp_path / "p.onnx", tmp_path / "r.md"
    assert main(["prune", str(path), "--latency-budget", "0.6x", "--latency-model",
                 "roofline", "--align", "8", "-o", str(out), "--report", str(md)]) == 0
    assert out.is_file()
    d = json.loads((tmp_path / "r.json").read_text())
    assert d["latency_source"] == "roofline model"
    assert d["predicted_ms"] <= 0.6 * d["dense_predicted_ms"]
    assert "budget 0.6x latency" in capsys.readouterr().out


def test_cli_prune_report(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(onnx_models.small_resnet(width=16, image=16), str(path))
    out, md = tmp_path / "p.onnx", tmp_path / "r.md"
    assert main(["prune", str(path), "--macs-budget", "0.6x", "-o", str(out),
                 "--report", str(md)]) == 0
    text = md.read_text()
    assert "Budget: **0.6x MACs**" in text and "## Channel groups" in text
    d = json.loads((tmp_path / "r.json").read_text())
    assert d["macs_after"] / d["macs_before"] <= 0.6


def test_cli_latency_table_from_another_target(graph, table, tmp_path, capsys):
    """--latency-table with a table measured for another target: exit 2 naming both
    targets, nothing written; the same table for this target prunes."""
    tab, _ = table
    path = tmp_path / "m.onnx"
    onnx.save(onnx_models.small_resnet(width=32, image=16), str(path))
    tab.save(tmp_path / "here.json")
    d = tab.to_dict()
    d["target"] = '{"kind":"llvm","mcpu":"cascadelake"}'
    (tmp_path / "other.json").write_text(json.dumps(d))
    out, md = tmp_path / "p.onnx", tmp_path / "r.md"
    low = _budget_lowest(tab, graph)
    frac = round(0.5 * (1.0 + tab.cost(graph).total(low) / tab.predict(graph)), 3)
    assert main(["prune", str(path), "--latency-budget", f"{frac}x", "--latency-table",
                 str(tmp_path / "other.json"), "--align", "8", "-o", str(out), "--report",
                 str(md)]) == 2
    assert "made for target" in capsys.readouterr().err
    assert not out.exists() and not md.exists()
    assert main(["prune", str(path), "--latency-budget", f"{frac}x", "--latency-table",
                 str(tmp_path / "here.json"), "--align", "8", "-o", str(out)]) == 0
    assert out.is_file()


def test_cli_prune_target(graph, table, tmp_path, capsys):
    """``prune --target`` is parsed as ``compile --target`` is: a table made for that target
    is accepted (the plan's budget names the target; the host's table is refused), the
    default alignment comes from its profile (znver3: AVX2, 8 channels), and a bad target
    exits 2 naming it with nothing written."""
    from tvm_hcprune.hardware.target import parse_target

    tab, _ = table
    znver3 = '{"kind":"llvm","mcpu":"znver3"}'
    key = str(parse_target(znver3))
    path = tmp_path / "m.onnx"
    onnx.save(onnx_models.small_resnet(width=32, image=16), str(path))
    d = tab.to_dict()
    d["target"] = key
    (tmp_path / "z3.json").write_text(json.dumps(d))
    low = _budget_lowest(tab, graph)
    frac = round(0.5 * (1.0 + tab.cost(graph).total(low) / tab.predict(graph)), 3)
    out, plan = tmp_path / "p.onnx", tmp_path / "plan.json"
    args = ["prune", str(path), "--latency-budget", f"{frac}x", "--latency-table",
            str(tmp_path / "z3.json"), "--align", "8", "-o", str(out), "--plan-out", str(plan)]
    assert main(args) == 2  # no --target: the host's, and the table is znver3's
    assert "made for target" in capsys.readouterr().err and not out.exists()
    assert main([*args, "--target", znver3]) == 0
    budget = PrunePlan.load(plan).config["budget"]
    assert budget["kind"] == "Latency" and budget["target"] == key
    assert main(["prune", str(path), "--macs-budget", "0.5x", "--target", znver3,
                 "--plan-out", str(plan), "-o", str(out)]) == 0
    assert PrunePlan.load(plan).config["align_resolved"] == 8
    bad, bad_plan = tmp_path / "bad.onnx", tmp_path / "bad.json"
    for target, message in (("no-such-kind", "unknown target"),
                            ('{"kind":"llvm","mcpu":"no-such-cpu"}', "unknown LLVM CPU")):
        assert main(["prune", str(path), "--macs-budget", "0.5x", "--target", target,
                     "--plan-out", str(bad_plan), "-o", str(bad)]) == 2
        assert message in capsys.readouterr().err
        assert not bad.exists() and not bad_plan.exists()


class _FixedRunner:
    """Measures every pruned model at ``fraction`` of the dense one (a stand-in device)."""

    device = "fixed"

    def __init__(self, fraction):
        self.fraction = fraction

    def models(self, mods, target, database=None, **_):
        return [1.0] + [self.fraction] * (len(mods) - 1)


def test_closed_loop_measures_what_the_table_calls_unreachable(small, graph, table):
    """A latency budget below the table's smallest prediction is not refused on the table's
    word when the closed loop can measure: the smallest plan is measured and kept when it
    meets the budget; when it does not, the error names both figures."""
    import dataclasses
    from dataclasses import dataclass

    from tvm_hcprune.latency import MeasuredLatency

    measured, _ = table

    class _Monotone(type(measured)):
        """The measured table made monotone in the widths (each layer's dense time scaled by
        its kept area), so the plan with every group at its smallest width is the cheapest
        whatever the timing noise of a loaded machine made of the small widths."""

        def layer_ms(self, spec, cin, cout):
            dense = super().layer_ms(spec, spec.in_full, spec.out_full)
            return dense * (cin * cout) / (spec.in_full * spec.out_full)

    tab = _Monotone(**{f.name: getattr(measured, f.name)
                       for f in dataclasses.fields(measured)})

    @dataclass(frozen=True)
    class _Spec(MeasuredLatency):
        def for_graph(self, graph, target, align, min_channels=1):
            return tab

    lowest = tab.cost(graph).total({**{g.id: g.size for g in graph.groups},
                                    **_budget_lowest(tab, graph)}) / tab.predict(graph)
    fraction = round(0.8 * lowest, 4)
    with pytest.raises(HCPruneError, match="no plan meets the latency budget"):
        hc.prune(small, budget=hc.Latency(fraction=fraction), graph=graph, align=8,
                 latency_model=tab)  # the table alone: refused
    spec = _Spec(runner=_FixedRunner(fraction), refine=2, progress=False)
    pruned, report = hc.prune(small, budget=hc.Latency(fraction=fraction), graph=graph,
                              align=8, latency_model=spec)
    loop = report.plan.config["closed_loop"]
    assert loop[report.plan.config["closed_loop_pick"]]["measured_fraction"] == fraction
    assert {c.id: c.after for c in report.groups} == {
        g: w for g, w in {**{g.id: g.size for g in graph.groups},
                          **_budget_lowest(tab, graph)}.items()
        if g in {c.id for c in report.groups}}
    _oracle(small, pruned, report.plan, seed=3)
    slow = _Spec(runner=_FixedRunner(1.3 * fraction), refine=2, progress=False)
    with pytest.raises(HCPruneError, match=r"measured, the smallest plan runs at 0\.\d+x"):
        hc.prune(small, budget=hc.Latency(fraction=fraction), graph=graph, align=8,
                 latency_model=slow)


class _ScaledRunner:
    """Times the dense model at ``dense_ms`` and every pruned one at ``fraction`` of it."""

    device = "scaled"

    def __init__(self, dense_ms, fraction):
        self.dense_ms, self.fraction = dense_ms, fraction

    def models(self, mods, target, database=None, **_):
        return [self.dense_ms] + [self.fraction * self.dense_ms] * (len(mods) - 1)


def test_closed_loop_warns_when_the_host_is_busy(small, graph, table, tmp_path):
    """The closed loop times the dense model again: far slower than the table timed it (the
    host busy, TVM's pool oversubscribed) or far faster (the table timed on a busy host and
    cached) it warns, naming both figures and the fix; at the table's speed it does not.
    Far faster, the target's cache file is removed (the next run measures again); the other
    cases leave it."""
    import shutil
    from dataclasses import dataclass

    from tvm_hcprune.latency import MeasuredLatency
    from tvm_hcprune.latency.measured import BUSY_FACTOR

    measured, cached = table
    cache = tmp_path / "cache"
    shutil.copytree(cached, cache)  # the table's own cache file, "llvm" on this machine
    files = sorted(cache.iterdir())
    assert len(files) == 1

    class _Local(_ScaledRunner):
        device = "local"

    @dataclass(frozen=True)
    class _Spec(MeasuredLatency):
        def for_graph(self, graph, target, align, min_channels=1):
            return measured

    dense = measured.predict(graph)
    for factor in (1.0, 1.1 * BUSY_FACTOR, 1.0 / (1.1 * BUSY_FACTOR)):
        spec = _Spec(runner=_Local(factor * dense, 0.7), refine=1, progress=False,
                     cache_dir=cache)
        with warnings.catch_warnings(record=True) as got:
            warnings.simplefilter("always")
            _, report = hc.prune(small, budget=hc.Latency(fraction=0.7), graph=graph, align=8,
                                 latency_model=spec)
        busy = [str(w.message) for w in got if issubclass(w.category, HCPruneWarning)]
        # attributed to the caller's line (here), not to a line inside the package
        assert all(w.filename == __file__ for w in got if issubclass(w.category, HCPruneWarning))
        step = report.plan.config["closed_loop"][0]
        assert step["dense_ms"] == pytest.approx(factor * dense)
        if factor == 1.0:
            assert busy == [] and files[0].is_file()
        elif factor > 1.0:  # the host busy now: the cache kept
            assert len(busy) == 1 and f"the latency table at {dense:.4g} ms " in busy[0]
            assert f"({1.1 * BUSY_FACTOR:.1f}x slower now)" in busy[0]
            assert "TVM_NUM_THREADS" in busy[0] and files[0].is_file()
        else:  # the table timed on a busy host: its cache file removed, and said so
            assert len(busy) == 1 and f"({1.1 * BUSY_FACTOR:.1f}x slower then)" in busy[0]
            assert f"its cache file {files[0]} was removed" in busy[0]
            assert not files[0].exists() and cached.is_dir()  # the fixture's own cache kept


def test_closed_loop_warns_when_it_ends_off_the_goal(small, graph, table):
    """A device where every pruned plan runs at 0.9x the dense model: a 0.6x budget's loop
    cannot land within its tolerance, and prune says by how much (the plan is returned)."""
    from dataclasses import dataclass

    from tvm_hcprune.latency import MeasuredLatency

    measured, _ = table

    @dataclass(frozen=True)
    class _Spec(MeasuredLatency):
        def for_graph(self, graph, target, align, min_channels=1):
            return measured

    spec = _Spec(runner=_ScaledRunner(measured.predict(graph), 0.9), refine=1, progress=False)
    with pytest.warns(HCPruneWarning, match=r"the closed loop ended \+50\.0% from the goal of "
                      r"the budget 0\.6x latency \(tolerance 5%\) after [12] measured "
                      r"step\(s\): the plan runs at 0\.900x") as got:
        _, report = hc.prune(small, budget=hc.Latency(fraction=0.6), graph=graph, align=8,
                             latency_model=spec)
    assert [w.filename for w in got] == [__file__]  # the caller's line, not the package's
    assert report.plan.kept and 1 <= len(report.plan.config["closed_loop"]) <= 2


def test_plan_choice_is_scored_on_held_out_samples(small, monkeypatch):
    """With calibration data, the knapsack's plan, the uniform one and the uniform ratio are
    compared on the held-out slice (the reconstruction is fitted on the rest, where deep
    cuts look better than they are), not on the fit samples; the report names the plan
    kept and every candidate's error."""
    import tvm_hcprune.api as api
    from tvm_hcprune.recovery.guided import prepare_calibration

    x = np.random.default_rng(3).standard_normal((40, 3, 16, 16)).astype("float32")
    seen = []
    real = api.choose_plan

    def spy(graph, plans, samples, runners, make=None):
        seen.append(np.asarray(samples))
        return real(graph, plans, samples, runners, make)

    monkeypatch.setattr(api, "choose_plan", spy)
    _, rep = hc.prune(small, budget=hc.MACs(fraction=0.5), calibration=x,
                      allocation="criterion")
    scores, start = rep.plan.config["allocation_scores"], rep.plan.config["allocation_start"]
    names = {"dense": "knapsack", "uniform": "uniform allocation", "ratio": "uniform ratio"}
    want = (f"the {names[start]}'s plan kept (error against the dense output: "
            + ", ".join(f"{names[k]} {v:.3f}" for k, v in scores.items()) + ")")
    assert rep.choice() == want and want in rep.summary() and want in rep.to_markdown()
    _cal, fit, held = prepare_calibration(x, hc.analyze(small).mod, None, seed=0)
    assert seen and len(held) >= api.MIN_CHOICE_SAMPLES
    np.testing.assert_array_equal(seen[0], held.samples[:api.MAX_CHOICE_SAMPLES])
    assert not any(np.array_equal(seen[0][:1], f[None]) for f in fit.samples)
