"""Mixed budgets (#15 item 3): one latency budget that cuts channels in some layers and makes
others block-sparse (BSR), chosen in one knapsack; the plan records both, the build runs the
sparse layers on the BSR kernel, and the result equals the masked oracle (removed channels
and zeroed blocks in the original module)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from tvm import relax

import tvm_hcprune as hc
from tvm_hcprune.backend.pipeline import prepare
from tvm_hcprune.cli import main
from tvm_hcprune.errors import HCPruneError
from tvm_hcprune.latency import LatencyTable, RooflineModel, latency_table
from tvm_hcprune.latency.layers import layer_specs
from tvm_hcprune.planning.mixed import SparseOptions, block_scores
from tvm_hcprune.planning.plan import PrunePlan
from tvm_hcprune.testing import masked_reference, onnx_models, run_relax
from tvm_hcprune.testing.onnx_models import bert_encoder
from tvm_hcprune.transform import ApplyPrunePlan
from tvm_hcprune.transform.apply_plan import apply_plan
from tvm_hcprune.transform.prune_channels import PruneChannels
from tvm_hcprune.transform.sparsify_blocks import block_mask, sparsifiable_layers
from tvm_hcprune.utils.relax import bindings

TARGET = {"kind": "llvm", "mcpu": "znver3", "num-cores": 2}  # AVX2: block 1x8
SEQ, HIDDEN, FFN = 16, 64, 256


def _bert(tmp_path, shaped: bool = True):
    """``(onnx model, Relax module, W1 names, W2 names)``: a 2-layer BERT-style encoder.

    ``shaped``: the first FFN's W1 keeps 20% of its 1x16 blocks (the others scaled by 1e-3:
    block sparsity costs it little importance), the second FFN keeps 25% of its channels
    (W1 columns and W2 rows of the others scaled by 1e-3: channel cuts cost it little).
    """
    model = bert_encoder(layers=2, hidden=HIDDEN, heads=4, ffn=FFN, seq=SEQ)
    if shaped:
        inits = {i.name: i for i in model.graph.initializer}
        mats = [n.input[1] for n in model.graph.node if n.op_type == "MatMul"
                and n.input[1] in inits]
        shapes = {m: tuple(inits[m].dims) for m in mats}
        w1 = [m for m in mats if shapes[m] == (HIDDEN, FFN)]
        w2 = [m for m in mats if shapes[m] == (FFN, HIDDEN)]
        rng = np.random.default_rng(1)
        arr = {m: onnx.numpy_helper.to_array(inits[m]).copy() for m in (*w1, *w2)}
        keep = np.kron(rng.random((HIDDEN, FFN // 16)) < 0.2, np.ones((1, 16), bool))
        arr[w1[0]] *= np.where(keep, 1.0, 1e-3).astype(np.float32)
        ch = rng.random(FFN) < 0.25
        arr[w1[1]][:, ~ch] *= 1e-3
        arr[w2[1]][~ch, :] *= 1e-3
        for m, a in arr.items():
            inits[m].CopyFrom(onnx.numpy_helper.from_array(a, m))
    path = tmp_path / "bert.onnx"
    onnx.save(model, str(path))
    mod = hc.load_onnx(str(path))
    layers = sparsifiable_layers(mod)
    return (model, mod, [n for n, _, s in layers if s == (HIDDEN, FFN)],
            [n for n, _, s in layers if s == (FFN, HIDDEN)])


def _ffn_group(graph, w1_name):
    spec = next(s for s in layer_specs(graph) if s.name == w1_name)
    (gid,) = spec.out_groups(graph.space_group)
    return gid


def _x():
    return np.random.default_rng(0).standard_normal((1, SEQ, HIDDEN)).astype("float32")


def _bsr_calls(mod) -> int:
    return prepare(mod, hc.parse_target(TARGET))["main"].script().count("hcp_bsr_matmul")


def test_mixed_budget_bsr_for_some_layers_channel_cuts_for_others(tmp_path):
    """At 0.7x latency (roofline model with the BSR estimate) the block-structured FFN goes
    BSR and keeps its channels while the channel-structured FFN loses channels; the build
    runs exactly the plan's sparse layers on the BSR kernel; the output equals the masked
    oracle (rtol 1e-5); the report names which layer got which; the plan JSON round-trips
    and re-applies (ApplyPrunePlan) to the same module."""
    _, mod, w1, _w2 = _bert(tmp_path)
    graph = hc.analyze(mod)
    pruned, report = hc.prune(mod, budget=hc.Latency(fraction=0.7), target=TARGET,
                              latency_model=RooflineModel(TARGET), sparse=True, graph=graph)
    plan = report.plan
    sparse = plan.sparse_layers
    assert w1[0] in sparse, sparse  # block-structured FFN: BSR
    assert _ffn_group(graph, w1[0]) not in plan.kept  # ... and all its channels
    assert len(plan.kept[_ffn_group(graph, w1[1])]) < FFN  # channel-structured FFN: cut
    assert w1[1] not in sparse
    assert tuple(plan.sparse["block"]) == (1, 8) and set(sparse.values()) <= {0.5, 0.7, 0.9}
    assert report.predicted_ms <= 0.7 * report.dense_predicted_ms * (1 + 1e-9)
    # the build runs the sparse layers (only those) as BSR
    assert _bsr_calls(pruned) == len(sparse)
    x = _x()
    got = run_relax(pruned, [x], target=TARGET, build=hc.build)
    ref = run_relax(masked_reference(mod, plan), [x], target=TARGET,
                    build=lambda m, t: hc.build(m, t, sparse=False))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    # without the zeroed blocks the oracle differs: the blocks really are gone
    channels_only = PrunePlan.create(plan.fingerprint, dict(plan.kept), dict(plan.sizes))
    other = run_relax(masked_reference(mod, channels_only), [x], target=TARGET,
                      build=lambda m, t: hc.build(m, t, sparse=False))
    assert np.abs(other - ref).max() > 1e-3
    # the report: per layer width, sparsity, format and why
    rows = {c.name: c for c in report.layers}
    assert rows[w1[0]].format == "bsr" and rows[w1[0]].sparsity == sparse[w1[0]]
    assert rows[w1[0]].cout_after == FFN and "BSR" in rows[w1[0]].why
    assert rows[w1[1]].format == "dense" and rows[w1[1]].cout_after < FFN
    md = report.to_markdown()
    assert "Mixed budget: block-sparse (BSR) layers:" in md and "| format | why |" in md
    line = next(ln for ln in md.splitlines() if ln.startswith(f"| {w1[0]} |"))
    assert "| BSR |" in line and f"{sparse[w1[0]]:.0%}" in line
    d = json.loads(json.dumps(report.to_dict()))
    assert {r["name"]: r["format"] for r in d["layers"]}[w1[0]] == "bsr"
    # plan JSON round trip, re-applied by the pass
    loaded = PrunePlan.from_dict(json.loads(plan.to_json()))
    assert loaded.sparse_layers == sparse and loaded.to_dict() == plan.to_dict()
    again = ApplyPrunePlan(loaded)(mod)
    np.testing.assert_allclose(run_relax(again, [x], target=TARGET, build=hc.build), got,
                               rtol=1e-6, atol=1e-6)


def test_mixed_budget_pass_form_and_default_off(tmp_path):
    """PruneChannels(budget=..., sparse=True) gives the same plan as prune(); without
    sparse= a latency budget is channel-only, as before (no "sparse" in the plan JSON)."""
    _, mod, _w1, _w2 = _bert(tmp_path)
    kw = {"budget": hc.Latency(fraction=0.7), "target": TARGET,
          "latency_model": RooflineModel(TARGET)}
    p = PruneChannels(sparse=True, **kw)
    p(mod)
    _, report = hc.prune(mod, sparse=True, **kw)
    assert p.last_plan.to_dict() == report.plan.to_dict() and p.last_plan.sparse_layers
    _, plain = hc.prune(mod, **kw)
    assert plain.plan.sparse is None and "sparse" not in plain.plan.to_dict()
    assert all(c.format == "dense" and c.why == "" for c in plain.layers)
    assert "Mixed budget" not in plain.to_markdown()


def test_plan_sparse_entry_backward_compatible_and_checked():
    """Plans written before mixed budgets (no "sparse") load unchanged; a malformed sparse
    entry is a clear error."""
    old = {"version": 1, "fingerprint": "f", "config": {},
           "groups": [{"id": 0, "size": 4, "kept": [0, 2]}]}
    plan = PrunePlan.from_dict(old)
    assert plan.sparse is None and plan.sparse_layers == {} and plan.to_dict() == old
    mixed = PrunePlan.from_dict({**old, "sparse": {"block": [1, 8], "criterion": "l2",
                                                   "layers": {"lv3": 0.9}}})
    assert mixed.sparse_layers == {"lv3": 0.9}
    assert PrunePlan.from_dict(json.loads(mixed.to_json())).to_dict() == mixed.to_dict()
    for bad, match in (({"block": [1], "layers": {"a": 0.5}}, "block"),
                       ({"block": [1, 8], "layers": {"a": 1.5}}, "in \\(0, 1\\)"),
                       ({"layers": {"a": 0.5}}, "malformed")):
        with pytest.raises(HCPruneError, match=match):
            PrunePlan.from_dict({**old, "sparse": bad})


def test_block_scores_are_sparsify_s_criterion():
    """The knapsack's block importance is the norm sparsify ranks blocks by."""
    w = np.random.default_rng(0).standard_normal((12, 20))
    for crit in ("l2", "l1"):
        s = block_scores(w, (2, 8), crit)
        assert s.shape == (6, 3)
        keep = block_mask(w, (2, 8), 0.5, crit)
        assert s[keep].min() >= s[~keep].max()


def test_latency_table_bsr_entries_measured_and_cached(tmp_path):
    """sparse_levels= times each BSR-able layer on the BSR kernel the build uses (cached:
    a second table measures nothing; saved tables keep the entries); a mixed budget over the
    table reports its BSR figures as measured."""
    rng = np.random.default_rng(0)
    x = relax.Var("x", relax.TensorType((32, 64), "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            h = bb.emit(relax.op.nn.relu(relax.op.matmul(x, relax.const(
                rng.standard_normal((64, 128)).astype("float32")))))
            y = bb.emit_output(relax.op.matmul(h, relax.const(
                rng.standard_normal((128, 64)).astype("float32"))))
        bb.emit_func_output(y)
    mod = bb.get()
    graph = hc.analyze(mod)
    opts = {"widths": 2, "repeats": 1, "number": 2, "cache_dir": tmp_path, "progress": False,
            "sparse_levels": (0.9,)}
    table = latency_table(graph, TARGET, **opts)
    assert len(table.sparse) == 2
    for entry in table.sparse.values():
        assert entry["block"] == [1, 8] and entry["ms"]["0.9"] > 0
    assert latency_table(graph, TARGET, **opts).measured == 0
    table.save(tmp_path / "t.json")
    loaded = LatencyTable.load(tmp_path / "t.json")
    assert loaded.sparse == table.sparse
    spec = layer_specs(graph)[0]
    assert loaded.bsr_source(spec) == "measured"
    assert loaded.bsr_ms(spec, 0.9, 64, 64) == pytest.approx(
        table.sparse[spec.name]["ms"]["0.9"] / 2)  # half the outputs: half the blocks
    _, report = hc.prune(mod, budget=hc.Latency(fraction=0.9), target=TARGET,
                         latency_model=table, sparse={"levels": (0.9,)})
    assert all("(measured)" in c.why for c in report.layers if c.format == "bsr")


@pytest.mark.parametrize("kwargs, match", [
    ({"budget": hc.MACs(fraction=0.5), "sparse": True}, "latency budget"),
    ({"ratio": 0.5, "sparse": True}, "latency budget"),
    ({"budget": hc.Latency(fraction=0.5), "sparse": {"levels": (1.2,)}}, "sparsities in"),
    ({"budget": hc.Latency(fraction=0.5), "sparse": {"layers": ["nope"]}}, "not matmul"),
    ({"budget": hc.Latency(fraction=0.5), "sparse": "yes"}, "sparse= must be"),
])
def test_bad_mixed_budget_input(tmp_path, kwargs, match):
    _, mod, _w1, _w2 = _bert(tmp_path, shaped=False)
    with pytest.raises(HCPruneError, match=match):
        hc.prune(mod, target=TARGET, latency_model=RooflineModel(TARGET), **kwargs)


def test_bad_mixed_budget_target_and_pass(tmp_path):
    _, mod, _w1, _w2 = _bert(tmp_path, shaped=False)
    with pytest.raises(HCPruneError, match="llvm"):
        hc.prune(mod, budget=hc.Latency(fraction=0.5), sparse=True,
                 target={"kind": "cuda", "arch": "sm_80"},
                 latency_model=RooflineModel({"kind": "cuda", "arch": "sm_80"}))
    with pytest.raises(HCPruneError, match="latency budget"):
        PruneChannels(ratio=0.5, sparse=True)
    assert SparseOptions.of(False) is None and SparseOptions.of(True) == SparseOptions()


def _conv_net():
    """conv 3x3 (16 -> 32), relu, 1x1 conv (32 -> 64), relu, 1x1 conv (64 -> 32) + bias; the
    last conv's weight is block-structured (block sparsity costs it little importance)."""
    rng = np.random.default_rng(0)

    def const(*shape):
        return relax.const((rng.standard_normal(shape) * 0.2).astype("float32"))

    x = relax.Var("x", relax.TensorType((1, 16, 16, 16), "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            h = bb.emit(relax.op.nn.relu(relax.op.nn.conv2d(x, const(32, 16, 3, 3),
                                                            padding=1)))
            h = bb.emit(relax.op.nn.relu(relax.op.nn.conv2d(h, const(64, 32, 1, 1))))
            w = const(32, 64, 1, 1).value.numpy()  # 80% of its 1x8 blocks faint
            keep = np.kron(rng.random((64, 4)) < 0.2, np.ones((1, 8), bool)).T
            w[:, :, 0, 0] *= np.where(keep, 1.0, 1e-3).astype("float32")
            y = bb.emit_output(relax.op.add(relax.op.nn.conv2d(h, relax.const(w)),
                                            const(1, 32, 1, 1)))
        bb.emit_func_output(y)
    return bb.get()


def test_mixed_budget_on_1x1_convs_equals_the_masked_oracle():
    """1x1 convs made block-sparse (their OIHW weights zeroed by the oracle at the original
    positions) next to channel cuts: the build of the pruned+sparsified module equals the
    masked oracle (rtol 1e-5); layers outside ``layers=`` stay dense with that reason."""
    mod = _conv_net()
    convs = [n for n, _, _ in sparsifiable_layers(mod)]
    assert len(convs) == 2
    pruned, report = hc.prune(mod, budget=hc.Latency(fraction=0.7), target=TARGET,
                              latency_model=RooflineModel(TARGET),
                              sparse={"layers": convs[1:]})
    assert report.plan.sparse_layers.keys() == {convs[1]}
    rows = {c.name: c for c in report.layers}
    assert rows[convs[1]].format == "bsr" and rows[convs[1]].cin_after < 64
    assert rows[convs[0]].why == "not among the layers allowed to go block-sparse"
    assert _bsr_calls(pruned) == 1
    x = np.random.default_rng(0).standard_normal((1, 16, 16, 16)).astype("float32")
    got = run_relax(pruned, [x], target=TARGET, build=hc.build)
    ref = run_relax(masked_reference(mod, report.plan), [x], target=TARGET,
                    build=lambda m, t: hc.build(m, t, sparse=False))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_cli_allow_sparse_exports_verified_onnx(tmp_path, capsys):
    """hcprune prune --latency-budget 0.6x --allow-sparse: the ONNX export carries the zeroed
    blocks (verified against the pruned TVM module by onnxruntime) and the report names the
    BSR layers; --allow-sparse without a latency budget is refused."""
    src = tmp_path / "m.onnx"
    onnx.save(onnx_models.mobilenet_v2(width_mult=0.5, image=32, num_classes=10), str(src))
    out, md = tmp_path / "p.onnx", tmp_path / "r.md"
    assert main(["prune", str(src), "--latency-budget", "0.6x", "--latency-model", "roofline",
                 "--allow-sparse", "-o", str(out), "--report", str(md)]) == 0
    assert "verified" in capsys.readouterr().out
    d = json.loads((tmp_path / "r.json").read_text())
    bsr = [r["name"] for r in d["layers"] if r["format"] == "bsr"]
    assert bsr and d["plan"]["sparse"]["layers"].keys() == set(bsr)
    assert f"block-sparse (BSR) layers: {', '.join(bsr)}" in md.read_text()
    zeros = [onnx.numpy_helper.to_array(i) for i in onnx.load(str(out)).graph.initializer]
    assert any(a.ndim == 4 and a.shape[2:] == (1, 1) and (a == 0).mean() >= 0.5
               for a in zeros)
    assert main(["prune", str(src), "--macs-budget", "0.7x", "--allow-sparse",
                 "-o", str(tmp_path / "q.onnx")]) != 0
    assert not (tmp_path / "q.onnx").exists()


def test_reconstruction_output_gets_the_blocks_zeroed_again(tmp_path, monkeypatch):
    """Re-fitted weights are dense: apply_and_reconstruct zeroes a mixed plan's blocks again
    after the reconstruction (here a stand-in returning the channel-only pruned module)."""
    from tvm_hcprune.recovery import reconstruct as rec  # noqa: PLC0415

    _, mod, _w1, _w2 = _bert(tmp_path)
    graph = hc.analyze(mod)
    _, report = hc.prune(mod, budget=hc.Latency(fraction=0.7), target=TARGET,
                         latency_model=RooflineModel(TARGET), sparse=True, graph=graph)
    plan = report.plan
    refit = apply_plan(graph, PrunePlan.create(plan.fingerprint, dict(plan.kept),
                                               dict(plan.sizes)))
    monkeypatch.setattr(rec, "reconstruct", lambda *_a, **_k: (refit, "fits"))
    out, fits = rec.apply_and_reconstruct(graph, plan, calibration=object(), enabled=True)
    assert fits == "fits"
    weights = {b.var.name: b.value.args[1].value.numpy() for b in bindings(out["main"])
               if b.var.name in plan.sparse_layers}
    assert weights.keys() == plan.sparse_layers.keys()
    for name, s in plan.sparse_layers.items():
        w = weights[name]
        zero = 1.0 - np.any(w.reshape(w.shape[0], -1, 8) != 0, axis=2).mean()
        assert zero == pytest.approx(s, abs=0.01), (name, zero, s)
