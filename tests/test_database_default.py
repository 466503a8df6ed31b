"""build() applies the shipped schedule databases by default (like TVM's old TopHub logs).

The shipped folder is replaced by a temporary one holding a database made for a tiny model
without tuning: one record per conv task, the rules' own schedule with a marker annotation
(so a function scheduled from the database is recognisable). The oracle for outputs is the
rules-only build and onnxruntime.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import tvm_hcprune as hc
from tvm_hcprune.backend import database as dbm
from tvm_hcprune.errors import HCPruneError
from tvm_hcprune.testing.onnx_models import GraphBuilder
from tvm_hcprune.tuning import tune as tn

TARGET = {"kind": "llvm", "mcpu": "znver3", "num-cores": 2}
IMAGE = 10


def tiny_cnn(width: int, seed: int = 0):
    g = GraphBuilder(seed)
    x = g.conv_bn("input", 3, width, 3)
    x = g.conv_bn(x, width, width, 3)
    out = g.head(x, width, 4)
    return g.model(out, [1, 3, IMAGE, IMAGE], [1, 4], "tiny_cnn")


def _load(model, tmp_path, name):
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, path)
    return hc.load_onnx(str(path), log=lambda *a: None)


def _run(ex, x):
    import tvm
    from tvm import relax

    return relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()


def rules_records(mod, target) -> dbm.ScheduleDatabase:
    """A database with the rules' schedule of every conv task of ``mod`` (not measured)."""
    from tvm import s_tir
    from tvm.s_tir import meta_schedule as ms

    target = dbm.resolve_target(target)
    db = dbm.new_database(target, {"family": dbm.target_family(target)}, "test")
    for task in tn.extract_tasks(mod, target):
        func_mod = task.dispatched[0]
        if "hcp_conv" not in task.task_name:
            continue
        rule = tn.rule_schedule(func_mod["main"], target)
        sch = s_tir.Schedule(func_mod)
        rule.trace.apply_to_schedule(sch, remove_postproc=False)
        sch.annotate(sch.get_sblock("root"), "hcprune_test_record", 1)
        wl = db.ms_database.commit_workload(func_mod)
        db.ms_database.commit_tuning_record(ms.database.TuningRecord(
            sch.trace, wl, [1e-4], target, ms.arg_info.ArgInfo.from_entry_func(sch.mod, False)))
    assert len(db) > 0
    return db


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("models")
    return {w: (tiny_cnn(w, seed=w), _load(tiny_cnn(w, seed=w), tmp, f"w{w}")) for w in (8, 16)}


@pytest.fixture(scope="module")
def shipped_root(models, tmp_path_factory):
    """A schedules/ folder with records for the width-8 model only."""
    root = tmp_path_factory.mktemp("schedules")
    family = dbm.target_family(TARGET)
    (root / family).mkdir()
    rules_records(models[8][1], TARGET).save(root / family / "tiny-w8.json")
    return root


@pytest.fixture()
def shipped(shipped_root, monkeypatch):
    """Point the shipped-database lookup at ``shipped_root`` and spy on the pipeline's hook:
    the names of the functions each build scheduled from a database are appended to the
    returned list."""
    import tvm_hcprune._resources as res

    monkeypatch.setattr(res, "data_dir", lambda kind: shipped_root)
    dbm.clear_shipped_cache()
    seen: list = []
    real = dbm.apply_database_to_fused

    def spy(mod, database, target):
        out = real(mod, database, target)
        seen.append(dbm.scheduled_functions(out))
        return out

    monkeypatch.setattr(dbm, "apply_database_to_fused", spy)
    yield seen
    dbm.clear_shipped_cache()


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(1).standard_normal((1, 3, IMAGE, IMAGE)).astype("float32")


def test_build_applies_shipped_records_by_default(models, shipped, x):
    """build(mod, target) with no database schedules the matching conv functions from the
    shipped records; the outputs equal the rules-only build and onnxruntime."""
    onnx_model, mod = models[8]
    default = _run(hc.build(mod, TARGET), x)
    assert len(shipped) == 1 and sum("hcp_conv" in n for n in shipped[0]) == 2
    rules = _run(hc.build(mod, TARGET, database=False), x)
    assert len(shipped) == 1  # no database: the hook is not even entered
    np.testing.assert_allclose(default, rules, rtol=1e-5, atol=1e-5)
    sess = ort.InferenceSession(onnx_model.SerializeToString(),
                                providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(default, sess.run(None, {"input": x})[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("off", [False, "none"])
def test_opt_out(models, shipped, off):
    """database=False and database="none" build with the rules only."""
    hc.build(models[8][1], TARGET, database=off)
    assert shipped == []
    assert dbm.as_database(off, TARGET) is None


def test_rules_false_does_not_apply_shipped_records(models, shipped):
    """rules=False (TVM's default lowering, for comparison) takes no shipped record."""
    hc.build(models[8][1], TARGET, rules=False)
    assert shipped == []


def test_shipped_record_of_another_workload_is_not_used(models, shipped, x):
    """The width-16 model matches none of the width-8 records: nothing is scheduled from
    the database and it still equals onnxruntime."""
    onnx_model, mod = models[16]
    out = _run(hc.build(mod, TARGET), x)
    assert shipped == [[]]
    sess = ort.InferenceSession(onnx_model.SerializeToString(),
                                providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(out, sess.run(None, {"input": x})[0], rtol=1e-4, atol=1e-4)


def test_shipped_database_is_loaded_once_per_process(shipped, shipped_root, monkeypatch):
    """Later lookups reuse the loaded records (no file is parsed again); a changed file is
    loaded again."""
    calls = []
    real = dbm.load_database
    monkeypatch.setattr(dbm, "load_database", lambda *a, **k: calls.append(a) or real(*a, **k))
    first = dbm.shipped_database(TARGET)
    second = dbm.shipped_database(TARGET)
    assert len(calls) == 1
    assert first.ms_database.same_as(second.ms_database)
    assert second.source == "shipped" and second.target["mcpu"] == "znver3"
    path = next((shipped_root / dbm.target_family(TARGET)).glob("*.json"))
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    third = dbm.shipped_database(TARGET)
    assert len(calls) == 2 and len(third) == len(first)


def test_database_true_is_refused(models):
    """database=True could mean the shipped records or a tuning run: refused, naming both."""
    with pytest.raises(HCPruneError, match="ambiguous"):
        hc.build(models[8][1], TARGET, database=True)


def test_hcprune_error_crosses_tvm_passes():
    """tvm_hcprune.errors registers its error types with TVM's FFI: an HCPruneError raised
    inside a TVM pass reaches the caller as HCPruneError (not RuntimeError)."""
    import tvm
    import tvm_ffi

    from tvm_hcprune import errors

    assert errors.HCPruneError in tvm_ffi.core.ERROR_TYPE_TO_NAME
    assert errors.UnsupportedModelError in tvm_ffi.core.ERROR_TYPE_TO_NAME

    @tvm.transform.module_pass(opt_level=0, name="Boom")
    def boom(mod, _ctx):
        raise errors.UnsupportedModelError("op X is not handled; protect it")

    with pytest.raises(errors.UnsupportedModelError, match="protect it"):
        boom(tvm.IRModule())
