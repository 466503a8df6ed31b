"""tvm_hcprune.tune / schedule databases: tuning, saving, loading, validation, application.

One small tuning run (a pruned two-conv residual CNN, 2 trials per task) is shared by the
tests of this module; oracles are onnxruntime and the same model built without a database.
"""

from __future__ import annotations

import json
import tempfile

import numpy as np
import onnxruntime as ort
import pytest

import tvm_hcprune as hc
from tvm_hcprune.backend import database as dbm
from tvm_hcprune.errors import HCPruneError
from tvm_hcprune.testing.onnx_models import GraphBuilder
from tvm_hcprune.tuning import tune as hc_tune

TARGET = {"kind": "llvm", "mcpu": "znver3", "num-cores": 2}
IMAGE = 12


def tiny_cnn(width: int = 16, seed: int = 0):
    """conv-bn-relu -> conv-bn + residual -> relu -> GAP -> Gemm (5 fused tasks)."""
    g = GraphBuilder(seed)
    x = g.conv_bn("input", 3, width, 3)
    y = g.conv_bn(x, width, width, 3, act=None)
    x = g.op("Relu", [g.op("Add", [y, x])])
    out = g.head(x, width, 4)
    return g.model(out, [1, 3, IMAGE, IMAGE], [1, 4], "tiny_cnn")


def _run(ex, x):
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(ex, tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy()


@pytest.fixture(scope="module")
def model():
    return tiny_cnn()


@pytest.fixture(scope="module")
def pruned(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "tiny.onnx"
    import onnx

    onnx.save(model, path)
    mod = hc.load_onnx(str(path), log=lambda *a: None)
    pmod, report = hc.prune(mod, ratio=0.5, target=TARGET)
    assert report.macs_after < report.macs_before
    return pmod


@pytest.fixture(scope="module")
def tuned(pruned, tmp_path_factory):
    """One shared tuning run: (database, stats, path of the saved file)."""
    out = tmp_path_factory.mktemp("db") / "tiny.json"
    scratch = tmp_path_factory.mktemp("scratch")
    old, tempfile.tempdir = tempfile.tempdir, str(scratch)  # what tune leaves in /tmp
    try:
        db, stats = hc.tune(pruned, TARGET, trials=10, trials_per_task=2, output=out,
                            progress=False, return_stats=True)
    finally:
        tempfile.tempdir = old
    _LEFT_IN_TMP[:] = sorted(p.name for p in scratch.iterdir())
    return db, stats, out


_LEFT_IN_TMP: list = []


@pytest.mark.slow
@pytest.mark.tuning
def test_tune_leaves_nothing_in_tmp(tuned):
    """The candidates' build folders and the work folder are removed after tuning."""
    assert _LEFT_IN_TMP == []


@pytest.fixture(scope="module")
def measured(tuned, tmp_path_factory):
    """Every record the run measured, best per task (seeds included), saved as a file: a
    database with a record for every task, whatever the selection kept."""
    _, stats, _ = tuned
    path = tmp_path_factory.mktemp("db") / "measured.json"
    stats.measured.save(path, top_k=1)
    return path


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(3).standard_normal((1, 3, IMAGE, IMAGE)).astype("float32")


@pytest.mark.slow
@pytest.mark.tuning
def test_tuning_measures_every_task_and_saves_valid_json(tuned, measured):
    """Every extracted task is measured; the saved file is our format and holds exactly
    the records the selection kept, one per kept task."""
    db, stats, path = tuned
    assert stats.valid > 0 and not stats.errors
    assert set(stats.best) == set(stats.tasks)
    all_hashes = {str(r.workload.as_json()[0]) for r in stats.measured.records()}
    assert len(all_hashes) == len(stats.tasks)
    data = json.loads(path.read_text())
    assert data["format"] == dbm.FORMAT and data["target"]["mcpu"] == "znver3"
    assert data["family"] == "x86-avx2"
    assert len(data["records"]) == len(db) == len(data["workloads"])
    assert data["meta"]["model_check"] == stats.model
    assert len(json.loads(measured.read_text())["workloads"]) == len(stats.tasks)


@pytest.mark.slow
@pytest.mark.tuning
def test_tuning_never_ends_slower_than_the_rules(tuned):
    """Every task is seeded (conv kernels with the CPU rules' schedule, the rest
    unscheduled, as the pipeline builds them without a database). A task keeps a record
    only when it beat its seed re-measured side by side by >= 2%; then the model built with
    the records is kept only when it is >= 1% faster than the rules-only build, else the
    database is empty (the rules apply everywhere)."""
    db, stats, _ = tuned
    assert set(stats.seeds) == set(stats.tasks) and stats.unchecked == []
    assert any("hcp_conv" in t for t in stats.tasks)
    for name, ratio in stats.kept.items():
        assert ratio <= 0.98 and stats.rechecked[name] == ratio
    assert set(stats.kept) <= set(stats.rechecked)
    model = stats.model
    assert model["kept"] in ("tuned", "rules")
    if not stats.kept:
        assert len(db) == 0 and model["kept"] == "rules"
    elif model["kept"] == "tuned":
        assert model["ratio"] <= 0.99 and len(db) == len(stats.kept)
        kept_hashes = {str(r.workload.as_json()[0]) for r in db.records()}
        assert len(kept_hashes) == len(stats.kept)
    else:
        assert model["ratio"] > 0.99 and model["records"] == len(stats.kept)
        assert len(db) == 0


@pytest.mark.slow
@pytest.mark.tuning
def test_database_reloads_and_applies_with_equal_outputs(tuned, measured, pruned, x):
    """Loading a file and building with it schedules every task that has a record and gives
    the same outputs as the build without a database (the oracle)."""
    _, stats, _ = tuned
    db = dbm.load_database(measured, TARGET)
    applied = hc.apply_database(pruned, TARGET, db)
    assert len(dbm.scheduled_functions(applied)) == len(stats.tasks)
    with_db = _run(hc.build(pruned, TARGET, database=str(measured)), x)
    without = _run(hc.build(pruned, TARGET, database=False), x)
    np.testing.assert_allclose(with_db, without, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.tuning
def test_workload_without_record_falls_back_to_rules(measured, x, tmp_path):
    """A model of other widths finds no record: nothing is database-scheduled and it still
    builds and matches onnxruntime."""
    import onnx

    other = tiny_cnn(width=24, seed=1)
    onnx.save(other, tmp_path / "o.onnx")
    mod = hc.load_onnx(str(tmp_path / "o.onnx"), log=lambda *a: None)
    path = measured
    applied = hc.apply_database(mod, TARGET, path)
    assert dbm.scheduled_functions(applied) == []
    out = _run(hc.build(mod, TARGET, database=str(path)), x)
    sess = ort.InferenceSession(other.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(out, sess.run(None, {"input": x})[0], rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.tuning
def test_database_for_another_target_is_rejected(tuned, measured, tmp_path):
    """Records tuned for znver3 are refused for another CPU and for CUDA, with the fix
    (the selected database and the one of all measured records alike)."""
    _, _, selected = tuned
    with pytest.raises(HCPruneError, match="tuned for target 'llvm -mcpu=znver3'"):
        dbm.load_database(selected, {"kind": "llvm", "mcpu": "skylake"})
    path = measured
    with pytest.raises(HCPruneError, match="tuned for target 'llvm -mcpu=znver3'"):
        dbm.load_database(path, {"kind": "llvm", "mcpu": "skylake"})
    with pytest.raises(HCPruneError, match="re-tune"):
        dbm.load_database(path, "cuda -arch=sm_80")
    with pytest.raises(HCPruneError, match="re-tune"):
        hc.build(_tiny_mod(tmp_path), "cuda -arch=sm_80", database=str(path))


@pytest.mark.slow
@pytest.mark.tuning
def test_unseeded_tasks_and_a_custom_local_runner_get_the_model_check(pruned, x):
    """Without seeds no task is checked against the rules' schedule, and a runner passed
    as a MetaSchedule LocalRunner object used to skip the model check ("custom runner"):
    now the whole model built with the records is timed against the rules-only build on
    this machine, and the records survive only when that model is faster."""
    from tvm.s_tir import meta_schedule as ms

    runner = ms.runner.LocalRunner(evaluator_config=ms.runner.EvaluatorConfig(
        number=3, repeat=1, min_repeat_ms=10, enable_cpu_cache_flush=False))
    db, stats = hc.tune(pruned, TARGET, trials=5, trials_per_task=1, runner=runner,
                        seed_rules=False, progress=False, return_stats=True)
    assert stats.valid > 0 and not stats.seeds and not stats.kept
    assert set(stats.unchecked) == set(stats.best)  # every record: no per-task check
    model = stats.model
    assert "ratio" in model and model["timed_on"] == "this machine", model
    assert model["records"] == len(stats.unchecked)
    if model["kept"] == "tuned":
        assert model["ratio"] <= 0.99 and len(db) == len(stats.unchecked)
    else:
        assert model["ratio"] > 0.99 and len(db) == 0
    assert db.meta["model_check"] == model
    lines = hc_tune.summary_lines(stats, db)
    assert "0 record(s) beat the rules' schedule" in lines[1]
    assert f"{len(stats.unchecked)} record(s) kept WITHOUT that check" in lines[1]
    assert lines[2].startswith("model on this machine: tuned ")
    out = _run(hc.build(pruned, TARGET, database=db), x)
    np.testing.assert_allclose(out, _run(hc.build(pruned, TARGET, database=False), x),
                               rtol=1e-5, atol=1e-5)


class _Records:
    """A stand-in for a ScheduleDatabase of ``n`` records (only its length is read)."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n


def test_summary_tells_unchecked_records_from_checked_ones():
    """The old message said "0 tasks beat the rules' schedule" while writing records
    (kept without a seed, or never model-checked): the summary now counts records that
    beat the rules, records kept without that check and tasks that keep the rules, and
    says when the model check did not run."""
    stats = hc_tune.TuneStats(tasks=["a", "b", "c"], weights=[1, 1, 1], trials=3, valid=3,
                              unchecked=["a", "b"], seconds=1.0)
    lines = hc_tune.summary_lines(stats, _Records(2))
    assert lines[1] == ("per task: 0 record(s) beat the rules' schedule re-measured side by "
                        "side, 2 record(s) kept WITHOUT that check (no rules' schedule was "
                        "measured for them: --no-seed, or no rule fits); 1 task(s) keep the "
                        "rules")
    assert lines[2] == ("model check off: the 2 record(s) are NOT checked against the "
                        "rules-only model")
    assert lines[-1] == "2 record(s) returned"
    stats.model = {"kept": "tuned", "skipped": "a custom MetaSchedule runner times single "
                                               "functions, not a whole model: ..."}
    assert hc_tune.summary_lines(stats, _Records(2))[2].startswith(
        "model check skipped: a custom MetaSchedule runner")
    stats = hc_tune.TuneStats(tasks=["a", "b"], weights=[1, 1], kept={"a": 0.8},
                              seeds={"a": 1e-3, "b": 1e-3},
                              model={"tuned_ms": 1.0, "rules_ms": 1.2, "ratio": 0.83,
                                     "kept": "tuned", "timed_on": "RPC key 'k' at h:1"})
    lines = hc_tune.summary_lines(stats, _Records(1))
    assert "1 record(s) beat" in lines[1] and "WITHOUT" not in lines[1]
    assert lines[2] == ("model on RPC key 'k' at h:1: tuned 1.000 ms vs rules 1.200 ms -> "
                        "keeping the tuned")


def _tiny_mod(tmp_path):
    import onnx

    onnx.save(tiny_cnn(width=8), tmp_path / "t.onnx")
    return hc.load_onnx(str(tmp_path / "t.onnx"), log=lambda *a: None)


@pytest.mark.parametrize(
    "content, match",
    [
        ("{not json", "not JSON"),
        ('{"format": "something-else", "version": 1}', "format marker"),
        (json.dumps({"format": dbm.FORMAT, "version": 99}), "version 99"),
        (json.dumps({"format": dbm.FORMAT, "version": 1, "target": {"kind": "llvm"},
                     "workloads": [["1", "bm90IGEgbW9kdWxl"]], "records": []}),
         "does not parse"),
        (json.dumps({"format": dbm.FORMAT, "version": 1, "target": {"kind": "llvm"},
                     "workloads": [], "records": [[0, []]]}), "does not parse"),
    ],
)
def test_corrupt_database_raises(tmp_path, content, match):
    """Corrupt or foreign files raise HCPruneError naming the problem and the fix."""
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(HCPruneError, match=match) as err:
        dbm.load_database(path)
    assert "hcprune tune" in str(err.value)


def test_missing_database_raises(tmp_path):
    with pytest.raises(HCPruneError, match="does not exist"):
        dbm.load_database(tmp_path / "nope.json")


@pytest.mark.parametrize("trials", [0, -3, 2.5, True])
def test_bad_trials_raise_before_any_work(trials, tmp_path):
    out = tmp_path / "db.json"
    with pytest.raises(HCPruneError, match="positive integer"):
        hc.tune(None, TARGET, trials=trials, output=out)
    assert not out.exists()


def test_unknown_target_raises():
    with pytest.raises(HCPruneError):
        hc.tune(None, "no-such-target", trials=4)


@pytest.mark.slow
@pytest.mark.tuning
def test_shipped_database_lookup_by_family(tuned, measured, pruned, tmp_path, monkeypatch):
    """Databases under schedules/<family>/ are found for a target of that family and used
    by default; an empty folder gives none."""
    _, stats, _ = tuned
    db = dbm.load_database(measured)
    root = tmp_path / "schedules"
    (root / "x86-avx2").mkdir(parents=True)
    db.save(root / "x86-avx2" / "tiny.json")
    import tvm_hcprune._resources as res

    monkeypatch.setattr(res, "data_dir", lambda kind: root)
    monkeypatch.setattr(dbm, "_SHIPPED_CACHE", {})
    files = dbm.shipped_database_files(TARGET)
    assert [f.name for f in files] == ["tiny.json"]
    shipped = dbm.shipped_database(TARGET)
    assert shipped is not None and len(shipped) == len(db)
    applied = hc.apply_database(pruned, TARGET)  # default: "shipped"
    assert len(dbm.scheduled_functions(applied)) == len(stats.tasks)
    assert dbm.shipped_database("cuda -arch=sm_80") is None


def test_real_shipped_databases_are_valid():
    """Every file in the top-level schedules/ folder loads and sits in its family's folder."""
    from tvm_hcprune._resources import data_dir

    files = sorted(data_dir("schedules").glob("*/*.json"))
    for path in files:
        db = dbm.load_database(path)
        assert len(db) > 0
        assert db.meta.get("family") == path.parent.name


def _shipped_files():
    from tvm_hcprune._resources import data_dir

    return sorted((data_dir("schedules") / "x86-avx2").glob("*.json"))


# One case per shipped file (see schedules/README.md for which models have one).
@pytest.mark.slow
@pytest.mark.parametrize("path", _shipped_files(), ids=lambda p: p.name)
def test_shipped_database_applies_to_its_model(path):
    """Every record of a shipped file matches a function of the model it was tuned
    for (``meta["model"]``, dense or pruned at ``meta["prune_ratio"]``): a file gone stale
    after a kernel change fails here. By default build() applies them, with outputs equal to
    the rules-only build."""
    import tvm_hcprune.hardware as hw
    from tvm_hcprune.tuning.tune import model_inputs
    from tvm_hcprune.zoo.models import model_path

    host = hw.profile_for("llvm")
    raw = dbm.load_database(path)
    # the file's own target (its ISA, e.g. znver3 = AVX2): it runs on this host when the
    # host has that ISA, so an AVX-512 host checks the AVX2 files too
    target = hc.parse_target({k: v for k, v in raw.target.items() if k not in ("tag", "keys")})
    wanted = hw.profile_for(target)
    order = ["sse", "avx", "avx2", "avx512"]
    if host.kind != "llvm" or host.isa not in order or wanted.isa not in order or (
            order.index(host.isa) < order.index(wanted.isa)):
        pytest.skip(f"{path.name} is for {wanted.name}; this host is {host.name}")
    db = dbm.load_database(path, target)
    mod = hc.load_onnx(str(model_path(db.meta["model"])), log=lambda *a: None)
    ratio = float(db.meta["prune_ratio"])
    m = mod if ratio == 0 else hc.prune(mod, ratio=ratio, target=target)[0]
    workloads = {str(r.workload.as_json()[0]) for r in db.records()}
    applied = hc.apply_database(m, target, db)
    assert len(dbm.scheduled_functions(applied)) == len(workloads), path.name
    (x,) = model_inputs(m).values()
    shipped = _run(hc.build(m, target), x)  # default: the shipped records
    rules = _run(hc.build(m, target, database=False), x)
    np.testing.assert_allclose(shipped, rules, rtol=1e-4, atol=1e-4)


def _hook_functions(mod, target, preset=None) -> dict:
    """The PrimFuncs ``hc.build(mod, target, preset=preset)`` hands to its database hook
    (what the build compiles), by structural hash, the global symbol left out."""
    import tvm
    import tvm_ffi

    from tvm_hcprune.backend.steps import DATABASE_HOOK

    seen = []

    @tvm.instrument.pass_instrument
    class Capture:
        def run_before_pass(self, m, info):
            if info.name == DATABASE_HOOK:
                seen.append(m)

    with tvm.transform.PassContext(instruments=[Capture()]):
        hc.build(mod, target, preset=preset, database=False)
    (fused,) = seen
    return {tvm_ffi.structural_hash(f.without_attr("global_symbol")): gv.name_hint
            for gv, f in fused.functions_items()
            if isinstance(f, tvm.tirx.PrimFunc)
            and not (f.attrs is not None and f.attrs.get(dbm.SCHEDULED_ATTR, False))}


def _task_functions(mod, target, preset=None) -> set:
    import tvm_ffi

    return {tvm_ffi.structural_hash(t.dispatched[0]["main"].without_attr("global_symbol"))
            for t in hc_tune.extract_tasks(mod, target, preset)}


USER_TOML = ('target = { kind = "llvm" }\ncriterion = "l2"\nalign = 8\n'
             'schedule = ["database", "cpu-rules"]\n'
             'passes = ["FoldConstant", "PruneChannels", "CPURules"]\n')


@pytest.mark.parametrize("preset", [None, "llvm-avx2", "user"])
def test_tasks_are_the_functions_the_preset_build_compiles(pruned, tmp_path, preset):
    """The tuning tasks are exactly the unscheduled PrimFuncs the preset's build hands to
    its database hook: the target family's preset (the default), a shipped one named, and a
    user TOML without FoldBatchNorm, whose tasks keep the batch norms prepare() folds."""
    from tvm_hcprune.backend import pipeline

    if preset == "user":
        preset = tmp_path / "nofold.toml"
        preset.write_text(USER_TOML)
        preset = str(preset)
    built = _hook_functions(pruned, TARGET, preset)
    tasks = _task_functions(pruned, TARGET, preset)
    assert tasks and tasks == set(built), (sorted(built.values()), len(tasks))
    folded = _task_functions(pipeline.prepare(pruned, TARGET), TARGET)
    if preset is not None and preset.endswith(".toml"):
        assert tasks != folded  # prepare() folds BN: not what this preset compiles
        assert any("batch_norm" in n for n in built.values())
    else:
        assert tasks == folded


def test_tune_refuses_a_preset_without_a_database_hook(pruned):
    """A preset whose build applies no database (VTA offload) has nothing to tune."""
    with pytest.raises(HCPruneError, match="nothing to tune"):
        hc_tune.extract_tasks(pruned, TARGET, "vta")
