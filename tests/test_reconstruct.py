"""Least-squares reconstruction: the fit itself, its fallbacks, and the pass on a model."""

from __future__ import annotations

import numpy as np
import pytest
from tvm.relax.frontend.onnx import from_onnx

import tvm_hcprune as hc
from tvm_hcprune.errors import HCPruneError
from tvm_hcprune.recovery.reconstruct import Reconstruct, fit_layer, reconstruct
from tvm_hcprune.recovery.sensitivity import onnx_runner_factory
from tvm_hcprune.testing import onnx_models


def _lstsq_problem(rows=400, feats=12, outs=5, keep=7, seed=0):
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((feats, feats)) * 0.5 + np.eye(feats)
    X = rng.standard_normal((rows, feats)) @ mix + 0.3  # correlated, non-zero mean
    W = rng.standard_normal((outs, feats))
    Y = X @ W.T
    return X[:, :keep], Y, W[:, :keep]


def test_fit_layer_matches_numpy_lstsq_and_beats_slicing():
    """With tiny ridge the fit equals numpy's least squares with an intercept column."""
    X, Y, W0 = _lstsq_problem()
    W, b, status, reason, e0, e1 = fit_layer(X, Y, W0, intercept=True, ridge=1e-9,
                                             holdout=0.0)
    assert status == "reconstructed", reason
    A = np.hstack([X, np.ones((len(X), 1))])
    sol, *_ = np.linalg.lstsq(A, Y, rcond=None)
    np.testing.assert_allclose(W, sol[:-1].T, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b, sol[-1], rtol=1e-5, atol=1e-6)
    assert e1 < 0.5 * e0


def test_fit_layer_without_intercept_has_zero_bias():
    X, Y, W0 = _lstsq_problem(seed=1)
    W, b, status, _, e0, e1 = fit_layer(X, Y, W0, intercept=False)
    assert status == "reconstructed" and not b.any() and e1 <= e0


def test_fit_layer_ill_conditioned_falls_back_to_sliced_weights():
    """Duplicate input columns without ridge: refused, the sliced weights come back."""
    X, Y, W0 = _lstsq_problem(seed=2)
    Xd = np.hstack([X, X[:, :1]])
    W0d = np.hstack([W0, np.zeros((W0.shape[0], 1))])
    W, b, status, reason, e0, e1 = fit_layer(Xd, Y, W0d, ridge=0.0)
    assert status == "fallback" and "ill-conditioned" in reason
    assert W is not None and np.array_equal(W, W0d) and not b.any() and e0 == e1


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_fit_layer_nonfinite_data_falls_back(bad):
    X, Y, W0 = _lstsq_problem(seed=3)
    X = X.copy()
    X[5, 2] = bad
    W, b, status, reason, *_ = fit_layer(X, Y, W0)
    assert status == "fallback" and "NaN" in reason
    assert np.isfinite(W).all() and np.isfinite(b).all()


def test_fit_layer_never_worse_on_held_out_rows():
    """Pure-noise targets: the fit cannot generalise, so the sliced weights are kept."""
    rng = np.random.default_rng(4)
    X = rng.standard_normal((30, 25))
    Y = rng.standard_normal((30, 3))
    W0 = np.zeros((3, 25))
    *_, status, reason, e0, e1 = fit_layer(X, Y, W0, ridge=1e-6)
    assert e1 <= e0
    if status == "fallback":
        assert "not better" in reason or "ill-conditioned" in reason


# ------------------------------------------------------------------ the pass on a model


@pytest.fixture(scope="module")
def small():
    model = onnx_models.small_resnet(width=16, image=16, num_classes=10)
    mod = from_onnx(model)
    graph = hc.analyze(mod)
    rng = np.random.default_rng(0)
    cal_x = rng.standard_normal((24, 1, 3, 16, 16)).astype("float32")
    test_x = rng.standard_normal((6, 1, 3, 16, 16)).astype("float32")
    # the raw imported module is calibrated: its layer names must line up with graph.mod's
    cal = hc.calibrate(mod, cal_x, max_rows=1024, progress=False)
    return model, mod, graph, cal, test_x


def outputs(model, graph, plan, pruned, xs):
    """Outputs of the pruned module, run through its ONNX export with onnxruntime (fast
    here; tests/test_export_onnx.py checks export == TVM module)."""
    import onnxruntime as ort

    out = hc.PrunePlan.apply_to_onnx(plan, model, graph, pruned) if plan is not None else model
    sess = ort.InferenceSession(out.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.stack([sess.run(None, {"input": x})[0] for x in xs])


def test_reconstruction_moves_outputs_towards_dense(small):
    """On inputs not used for calibration, reconstructed outputs are closer to the dense
    model's than plainly pruned ones, and finite."""
    _, mod, graph, cal, test_x = small
    plain, rep = hc.prune(mod, ratio=0.5, align=1, graph=graph)
    recon, rrep = hc.prune(mod, ratio=0.5, align=1, graph=graph, calibration=cal,
                           reconstruct=True)
    assert rrep.plan.kept == rep.plan.kept
    fits = rrep.reconstruction.layers
    assert fits and any(f.status == "reconstructed" for f in fits)
    assert {f.intercept for f in fits} & {"batch_norm", "bias"}
    model = small[0]
    dense_y = outputs(model, graph, None, mod, test_x)
    plain_y = outputs(model, graph, rep.plan, plain, test_x)
    recon_y = outputs(model, graph, rrep.plan, recon, test_x)
    assert np.isfinite(recon_y).all()
    err_plain = np.linalg.norm(plain_y - dense_y)
    err_recon = np.linalg.norm(recon_y - dense_y)
    assert err_recon < 0.8 * err_plain, (err_recon, err_plain)


def test_reconstructed_layer_equals_its_fit(small):
    """The module's new weights reproduce fit_layer's solution (the layer-level oracle)."""
    _, mod, graph, cal, _ = small
    pruned, rep = hc.prune(mod, ratio=0.5, align=1, graph=graph)
    out, rrep = reconstruct(pruned, graph, rep.plan, cal)
    fit = next(f for f in rrep.layers if f.status == "reconstructed")
    from tvm import relax

    def weight(m, name):
        for blk in m["main"].body.blocks:
            for b in blk.bindings:
                if b.var.name == name and isinstance(b.value, relax.Call):
                    return b.value.args[1].value.numpy()
        raise AssertionError(name)

    w_new, w_old = weight(out, fit.name), weight(pruned, fit.name)
    assert w_new.shape == w_old.shape and not np.allclose(w_new, w_old)
    assert fit.err_after <= fit.err_before


def test_calibration_of_raw_module_lines_up_with_analysed_names(small):
    """calibrate(mod) keys layers by the names of the conv/matmul bindings of
    analyze(mod).mod (canonicalisation keeps them), with matching channel counts."""
    from tvm import relax

    _, mod, graph, cal, _ = small
    names = {}
    for var, call in graph.ctx.values.items():
        if isinstance(call, relax.Call) and getattr(call.op, "name", "") in (
                "relax.nn.conv2d", "relax.matmul"):
            names[var.name] = call.args[1].value.numpy().shape
    assert sorted(names) == sorted(cal.layers)
    for name, wshape in names.items():
        if cal[name].op == "conv2d":
            assert cal[name].X.shape[1:] == (wshape[1], *wshape[2:])


def test_pass_form_and_bad_input(small):
    model, mod, graph, cal, _ = small
    pruned, rep = hc.prune(mod, ratio=0.5, align=1, graph=graph)
    p = Reconstruct(cal, graph, rep.plan)
    out = p(pruned)
    assert p.last_report is not None and out is not pruned
    with pytest.raises(HCPruneError, match="calibration"):
        hc.prune(mod, ratio=0.5, align=1, graph=graph, reconstruct=True)
    # a calibration whose layers have other channel counts (another model's)
    import dataclasses

    from tvm_hcprune.recovery.calibration import Calibration

    other_cal = Calibration({n: dataclasses.replace(lc, X=lc.X[:, :1]) if lc.X is not None
                             else lc for n, lc in cal.layers.items()}, 2, "x")
    with pytest.raises(HCPruneError, match="different model"):
        reconstruct(pruned, graph, rep.plan, other_cal)
    with pytest.raises(HCPruneError, match="no layer"):
        reconstruct(pruned, graph, rep.plan, Calibration({}, 1, "x"))


# ------------------------------------------------------------------ model-level guard


def test_model_guard_keeps_a_good_reconstruction(small):
    """Calibrated on the input distribution: the guard measures the reconstruction no worse
    than plain pruning on held-out inputs and keeps it."""
    model, mod, graph, cal, test_x = small
    plain, rep = hc.prune(mod, ratio=0.5, align=1, graph=graph)
    recon, g = reconstruct(plain, graph, rep.plan, cal, guard_samples=test_x,
                           runner_factory=onnx_runner_factory(model, graph))
    assert g.guard is not None and g.guard["n"] == len(test_x) and not g.reverted
    p, r = g.guard["plain"], g.guard["reconstructed"]
    assert (r["disagreement"], r["rel_mse"]) <= (p["disagreement"], p["rel_mse"])
    assert recon is not plain
    assert "kept" in g.summary()


def test_model_guard_reverts_a_harmful_reconstruction(small):
    """Calibrated on inputs unlike the real ones (near-constant images around 2): layer fits
    pass their own held-out check on calibration rows, but on real held-out inputs the
    model is worse than plain pruning, so the guard returns the plainly pruned module."""
    model, mod, graph, _, test_x = small
    rng = np.random.default_rng(5)
    rng.uniform(-3, 3, (24, 1, 3, 1, 1))
    odd = (rng.standard_normal((24, 1, 3, 16, 16)) * 0.05 + 2).astype(np.float32)
    bad_cal = hc.calibrate(mod, odd, max_rows=1024, progress=False)
    plain, rep = hc.prune(mod, ratio=0.1, align=1, graph=graph)
    unguarded, urep = reconstruct(plain, graph, rep.plan, bad_cal)
    make = onnx_runner_factory(model, graph)
    from tvm_hcprune.recovery.runner import output_error, outputs

    dense = outputs(make(mod, None), test_x)
    worse = output_error(outputs(make(unguarded, rep.plan), test_x), dense)
    base = output_error(outputs(make(plain, rep.plan), test_x), dense)
    assert worse[::-1] > base[::-1]  # the unguarded reconstruction is worse here
    out, grep_rep = reconstruct(plain, graph, rep.plan, bad_cal, guard_samples=test_x,
                             runner_factory=make)
    assert grep_rep.reverted and out is plain
    assert "REVERTED" in grep_rep.summary()
    assert grep_rep.to_dict()["reverted"] is True


def test_reconstruct_and_plain_compile_to_the_same_program(small):
    """Reconstruction only changes constant values: the pruned and the reconstructed
    modules print the same (latency differences between them are measurement noise)."""
    _, mod, graph, cal, _ = small
    plain, rep = hc.prune(mod, ratio=0.5, align=1, graph=graph)
    recon, _ = reconstruct(plain, graph, rep.plan, cal)
    assert plain["main"].script(show_meta=False) == recon["main"].script(show_meta=False)
    import tvm_ffi

    # ... while the constants differ (structural hashes include constant contents)
    assert tvm_ffi.structural_hash(plain["main"]) != tvm_ffi.structural_hash(recon["main"])
