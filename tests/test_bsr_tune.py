"""BSR kernels under MetaSchedule: hc.tune extracts them, searches their knobs with the
model's real index arrays, and the build applies a record's knobs (read back from the
database) with outputs equal to the dense module; the kernels' register tiles never become
heap workspaces."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.s_tir import meta_schedule as ms

import tvm_hcprune as hc
from tvm_hcprune.backend import database as dbm
from tvm_hcprune.backend.cpu.bsr import (
    BSR_ATTR,
    BSR_KNOBS_ATTR,
    KNOB_KEYS,
    ORDERS,
    PACK_MIN_TILE,
    bsr_kernel,
    tile_candidates,
    to_bsr,
)
from tvm_hcprune.backend.pipeline import apply_database
from tvm_hcprune.testing import heap_workspaces, run_relax
from tvm_hcprune.tuning.bsr import is_bsr_func

TARGET = {"kind": "llvm", "mcpu": "znver3", "num-cores": 2}  # AVX2: 8 lanes, (1, 8) blocks


@pytest.mark.parametrize("bn,mcpu", [(8, "znver3"), (16, "znver5")])
@pytest.mark.parametrize("layout", ["rows", "nchw", "nchwc"])
def test_bsr_tiles_are_never_heap_workspaces(bn, mcpu, layout):
    """Every tile tuning may pick, up to 16 rows x 16 floats (1024 B, the stack limit), and
    every knob: no TVMBackendAllocWorkspace in the kernel for the tile (it stays in
    registers); the only workspace is the packed input ``xp`` of a ``rows`` kernel."""
    tgt = tvm.target.Target({"kind": "llvm", "mcpu": mcpu})
    m = 48
    for tile in tile_candidates(m, bn, bn, 32):
        for order, group in (("block", 1), ("rows", 2)):
            func = bsr_kernel(m, 64, 4 * bn, 10, 1, bn, tile, layout, 2, 2 * bn,
                              order=order, group=group)
            found = heap_workspaces(tvm.compile(tvm.IRModule({"main": func}), tgt))
            packed = layout == "rows" and tile >= PACK_MIN_TILE
            assert found == (["xp"] if packed else []), (tile, order, group, found)
    assert 16 in tile_candidates(m, 16, 16, 32)  # the 1024-byte tile is among them


def sparse_matmul(rows=32, k=64, n=64, seed=0):
    """x [1, rows, k] @ W [k, n] with 1x8 blocks 85% zero and two empty output blocks."""
    rng = np.random.default_rng(seed)
    mask = rng.random((k, n // 8)) < 0.15
    mask[:, 0] = mask[:, 5] = False  # empty block rows of the BSR form
    w = rng.standard_normal((k, n)).astype("float32") * np.kron(mask, np.ones((1, 8), "f4"))
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, rows, k), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.matmul(x, relax.const(w)))
        bb.emit_func_output(out)
    return bb.get(), w


def _knobs_in_trace(record) -> dict:
    """The knob values a BSR record's trace annotates (replayed on its workload)."""
    sch = tvm.s_tir.Schedule(record.workload.mod)
    record.trace.apply_to_schedule(sch, remove_postproc=False)
    ann = sch.get(sch.get_sblock("root")).annotations
    return {name: int(ann[key]) for name, key in KNOB_KEYS.items() if key in ann}


@pytest.mark.tuning
def test_tune_searches_the_bsr_kernel_and_the_build_applies_its_record(tmp_path):
    """hc.tune sees the BSR kernel as a task, measures several knob choices on the real
    index arrays (random ones would crash the runner) besides the default (the seed); a
    record of another choice, saved and reloaded like any database, is applied by the
    build (the kernel regenerated with exactly the trace's knobs) and the output equals the
    dense module's (rtol 1e-5); returned records beat the rules side by side."""
    mod, w = sparse_matmul()
    db, stats = hc.tune(mod, TARGET, trials=10, trials_per_task=6, progress=False,
                        return_stats=True)
    bsr_tasks = [t for t in stats.tasks if "bsr" in t]
    assert len(bsr_tasks) == 1 and bsr_tasks[0] in stats.seeds
    records = [r for r in stats.measured.records() if is_bsr_func(r.workload.mod["main"])]
    tried = {tuple(sorted(_knobs_in_trace(r).items())) for r in records}
    assert len(tried) >= 4, tried  # the seed (no knobs) and several choices
    assert all(max(float(s) for s in r.run_secs) < 1e9 for r in records)
    for rec in db.records():  # what tune returns for the BSR task beat the seed
        if is_bsr_func(rec.workload.mod["main"]):
            assert stats.kept[bsr_tasks[0]] < 1.0

    # a non-default record, shipped as a database file, then applied by the build
    chosen = next(r for r in records if _knobs_in_trace(r).get("tile", 8) != 8
                  or _knobs_in_trace(r).get("order", 0) or _knobs_in_trace(r).get("group", 1)
                  != 1)
    one = dbm.new_database(TARGET)
    wl = one.ms_database.commit_workload(chosen.workload.mod)
    one.ms_database.commit_tuning_record(ms.database.TuningRecord(
        chosen.trace, wl, chosen.run_secs, chosen.target, chosen.args_info))
    path = one.save(tmp_path / "bsr.json")
    loaded = hc.load_database(path, TARGET)
    want = _knobs_in_trace(chosen)
    fused = apply_database(mod, TARGET, loaded)
    kernels = [f for _, f in fused.functions_items() if isinstance(f, tvm.tirx.PrimFunc)
               and f.attrs is not None and BSR_ATTR in f.attrs]
    assert len(kernels) == 1
    applied = dict(kernels[0].attrs[BSR_KNOBS_ATTR])
    assert int(applied["tile"]) == want["tile"]
    assert str(applied["order"]) == ORDERS[want["order"]]
    assert int(applied["group"]) == want["group"]
    query = loaded.ms_database.query_tuning_record(chosen.workload.mod, hc.parse_target(TARGET),
                                                   "main")
    assert query is not None and _knobs_in_trace(query) == want

    x = np.random.default_rng(1).standard_normal((1, 32, 64)).astype("float32")
    ref = run_relax(mod, [x])  # TVM's default pipeline, dense
    np.testing.assert_allclose(x[0] @ w, ref[0], rtol=1e-5, atol=1e-5)
    got = run_relax(mod, [x], target=TARGET,
                    build=lambda m, t: hc.build(m, t, database=loaded))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", ["rows", "nchw", "nchwc"])
def test_bsr_kernel_knobs_equal_the_dense_product(layout):
    """Knob combinations (every tile, both task orders, output-block groups on the matmul;
    a few on the 1x1 conv layouts) with empty block rows equal x @ W (rtol 1e-5)."""
    rng = np.random.default_rng(4)
    k, n, m, bn, batch, cb = 32, 64, 24, 8, 2, 16
    mask = rng.random((k, n // bn)) < 0.3
    mask[:, 2] = False
    w = rng.standard_normal((k, n)).astype("float32") * np.kron(mask, np.ones((1, bn), "f4"))
    data, indices, indptr, npad = to_bsr(w, (1, bn))
    x = rng.standard_normal((batch, m, k)).astype("float32")
    ref = x @ w
    if layout == "rows":
        xin, want = x[0], ref[0]
        combos = [(t, o, g) for t in tile_candidates(m, bn, 8, 16) for o in ORDERS
                  for g in (1, 2, 4)]
    else:
        if layout == "nchw":
            xin, want = x.transpose(0, 2, 1), ref.transpose(0, 2, 1)
        else:
            xin = x.reshape(batch, m, k // cb, cb).transpose(0, 2, 1, 3)
            want = ref.reshape(batch, m, n // cb, cb).transpose(0, 2, 1, 3)
        combos = [(8, "rows", 2), (3, "block", 4), (12, "rows", 1)]
    dev = tvm.cpu()
    for tile, order, group in combos:
        func = bsr_kernel(m, k, npad, data.shape[0], 1, bn, tile, layout,
                          1 if layout == "rows" else batch, cb, order=order, group=group)
        lib = tvm.compile(tvm.IRModule({"main": func}), tvm.target.Target(TARGET))
        y = tvm.runtime.empty(want.shape, "float32", dev)
        lib["main"](*[tvm.runtime.tensor(np.ascontiguousarray(a), dev)
                      for a in (xin, data, indices, indptr)], y)
        np.testing.assert_allclose(y.numpy(), want, rtol=1e-5, atol=1e-5,
                                   err_msg=str((tile, order, group)))
