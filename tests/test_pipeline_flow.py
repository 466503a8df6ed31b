"""Pruning inside TVM's flow: the plan travels with the module (the ``hcprune.plan``
attribute), so PruneChannels and Reconstruct compose in one ``tvm.transform.Sequential``,
and ``relax.get_pipeline("hcprune", budget=..., calibration=...)`` prunes, reconstructs and
compiles in one ``tvm.compile``."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import tvm
from tvm import relax

import tvm_hcprune as hc
from tvm_hcprune.backend.pipeline import resolve_preset
from tvm_hcprune.errors import HCPruneError
from tvm_hcprune.hardware.target import parse_target
from tvm_hcprune.planning.planner import input_conv_groups
from tvm_hcprune.recovery.reconstruct import Reconstruct
from tvm_hcprune.testing.onnx_models import GraphBuilder
from tvm_hcprune.testing.oracle import masked_reference
from tvm_hcprune.transform.fold_batch_norm import FoldBatchNorm
from tvm_hcprune.transform.prune_channels import PLAN_ATTR, PruneChannels, module_plan

IMAGE = 8


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import onnx

    g = GraphBuilder(5)
    x = g.conv_bn("input", 3, 32, 3)
    y = g.conv_bn(x, 32, 48, 3)
    y = g.conv_bn(y, 48, 32, 1, act=None)
    x = g.op("Relu", [g.op("Add", [y, x])])
    x = g.conv_bn(x, 32, 64, 3)
    out = g.head(x, 64, 6)
    path = tmp_path_factory.mktemp("flow") / "m.onnx"
    onnx.save(g.model(out, [1, 3, IMAGE, IMAGE], [1, 6], "flow_cnn"), path)
    mod = hc.load_onnx(path, log=lambda *_: None)
    rng = np.random.default_rng(0)
    samples = rng.standard_normal((24, 3, IMAGE, IMAGE)).astype("float32")
    x = rng.standard_normal((1, 3, IMAGE, IMAGE)).astype("float32")
    return mod, samples, x


def _out(mod_or_ex, x):
    """Outputs of a module (built for the host) or an executable on each row of ``x``."""
    ex = hc.build(mod_or_ex, "llvm") if isinstance(mod_or_ex, tvm.IRModule) else mod_or_ex
    vm = relax.VirtualMachine(ex, tvm.cpu())
    return np.stack([vm["main"](tvm.runtime.tensor(r[None])).numpy() for r in x])


def _folded(mod):
    fc = relax.transform.FoldConstant()
    return fc(FoldBatchNorm()(fc(mod)))


def test_pruned_module_carries_its_plan(setup):
    """PruneChannels(budget=...) attaches the plan as JSON; the pruned module equals the
    masked reference of the dense module under that plan, and prune() attaches it too."""
    mod, _samples, x = setup
    pc = PruneChannels(budget=hc.MACs(fraction=0.6), target="llvm")
    pruned = pc(mod)
    plan = module_plan(pruned)
    assert plan == pc.last_plan and plan.kept
    assert '"fingerprint"' in str(pruned.attrs[PLAN_ATTR])
    assert plan.config["budget"]["kind"] == "MACs"
    np.testing.assert_allclose(_out(pruned, x), _out(masked_reference(mod, plan), x),
                               rtol=1e-4, atol=1e-5)
    pruned2, report = hc.prune(mod, budget=hc.MACs(fraction=0.6), target="llvm")
    assert module_plan(pruned2) == report.plan
    assert "R.nn.conv2d" in pruned.script(show_meta=False)  # the attribute prints


def test_sequential_prune_then_reconstruct(setup):
    """Sequential([PruneChannels(budget), Reconstruct(samples)]) re-fits from the plan the
    module carries: the same module as prune(reconstruct=True) with that calibration, and
    closer to the dense outputs than plain pruning."""
    mod, samples, x = setup
    budget = hc.MACs(fraction=0.5)
    seq = tvm.transform.Sequential([PruneChannels(budget=budget, target="llvm"),
                                    Reconstruct(samples[:16])])
    rec = seq(mod)
    plan = module_plan(rec)
    graph = hc.analyze(mod)
    cal = hc.calibrate(graph.mod, samples[:16], progress=False)
    want, report = hc.prune(mod, budget=budget, target="llvm", calibration=cal,
                            reconstruct=True)
    assert report.plan == plan
    np.testing.assert_allclose(_out(rec, x), _out(want, x), rtol=1e-5, atol=1e-6)
    dense, fitted = _out(mod, samples[16:]), _out(rec, samples[16:])
    plain = _out(PruneChannels(plan=plan)(mod), samples[16:])
    assert np.abs(fitted - dense).mean() < np.abs(plain - dense).mean()


def test_reconstruct_without_plan_is_clear(setup):
    """Reconstruct on a module no PruneChannels ran on says what to do."""
    mod, samples, _x = setup
    with pytest.raises(HCPruneError, match="run PruneChannels before it"):
        Reconstruct(samples)(mod)


def test_hcprune_pipeline_equals_build_of_same_plan(setup):
    """tvm.compile with relax.get_pipeline("hcprune", budget=..., calibration=...) computes
    what hc.build computes for the same plan and reconstruction, done step by step (the
    preset folds BatchNorm before pruning, so the plan is made on the folded module)."""
    mod, samples, x = setup
    tgt = parse_target("llvm")
    budget = hc.MACs(fraction=0.5)
    pipe = relax.get_pipeline("hcprune", budget=budget, calibration=samples[:16])
    got = _out(tvm.compile(mod, tgt, relax_pipeline=pipe), x)
    folded = _folded(mod)
    graph = hc.analyze(folded)
    cal = hc.calibrate(graph.mod, samples[:16], progress=False)
    crit = resolve_preset(None, tgt).criterion
    want_mod, _report = hc.prune(folded, budget=budget, target=tgt, criterion=crit,
                                 calibration=cal, reconstruct=True)
    np.testing.assert_allclose(got, _out(hc.build(want_mod, tgt), x), rtol=1e-5, atol=1e-6)
    # without calibration: only pruning, like hc.build(prune=...) of the same budget
    plain = relax.get_pipeline("hcprune", budget=budget)
    np.testing.assert_allclose(_out(tvm.compile(mod, tgt, relax_pipeline=plain), x),
                               _out(hc.build(mod, tgt, prune=budget), x), rtol=1e-6,
                               atol=1e-7)
    with pytest.raises(HCPruneError, match="one of budget"):
        relax.get_pipeline("hcprune", budget=budget, ratio=0.5)


def test_latency_budget_inside_the_pipeline(setup, tmp_path):
    """A Latency budget in tvm.compile's pipeline: the table is measured and the plan
    corrected by timing the pruned model (compiles nested in the pass); the module carries
    the plan with its closed-loop steps and equals the masked reference."""
    mod, _samples, x = setup
    opts = {"widths": 3, "repeats": 2, "number": 2, "cache_dir": tmp_path, "progress": False}
    folded = _folded(mod)
    graph = hc.analyze(folded)
    table = hc.latency_table(graph, "llvm", **opts)
    # halfway to the smallest plan a budget may make (the first conv, which budgets protect,
    # at its full width): reachable on any machine (with the first conv at its smallest
    # width, a run whose table gave it a third of the time asked 0.2% below what is reachable)
    first = input_conv_groups(graph)
    low = table.cost(graph).total({**{g.id: g.size for g in graph.groups},
                                   **{g: w for g, w in table.low_widths.items()
                                      if g not in first}})
    fraction = round(0.5 * (1 + low / table.predict(graph)), 3)

    # every plan from the one table measured above: the cache keeps its kernels, but the
    # whole-model figures are measured again per table, and on a loaded machine a second
    # measurement made this budget unreachable (smallest plan 4.008 ms, dense 4.025 ms)
    @dataclass(frozen=True)
    class _Measured(hc.MeasuredLatency):
        def for_graph(self, graph, target, align, min_channels=1, **_kw):
            return table

    spec = _Measured(refine=1, **opts)
    pc = PruneChannels(budget=hc.Latency(fraction=fraction), target="llvm", latency_model=spec)
    pruned = pc(folded)
    plan = module_plan(pruned)
    assert 1 <= len(plan.config["closed_loop"]) <= 2
    np.testing.assert_allclose(_out(pruned, x), _out(masked_reference(folded, plan), x),
                               rtol=1e-4, atol=1e-5)
    # the table's plan (no correction) through tvm.compile equals its masked reference
    table_only = _Measured(refine=0, **opts)
    plan0 = module_plan(PruneChannels(budget=hc.Latency(fraction=fraction), target="llvm",
                                      latency_model=table_only)(folded))
    pipe = relax.get_pipeline("hcprune", budget=hc.Latency(fraction=fraction),
                              latency_model=table_only)
    ex = tvm.compile(mod, parse_target("llvm"), relax_pipeline=pipe)
    np.testing.assert_allclose(_out(ex, x), _out(masked_reference(folded, plan0), x),
                               rtol=1e-4, atol=1e-5)
