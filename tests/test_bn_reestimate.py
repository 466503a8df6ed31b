"""Batch-norm re-estimation: new statistics against numpy/onnxruntime oracles."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from tvm.relax.frontend.onnx import from_onnx

import tvm_hcprune as hc
from tvm_hcprune.errors import HCPruneError
from tvm_hcprune.recovery.bn_reestimate import (
    ReestimateBatchNorm,
    batch_norm_bindings,
    batch_norm_input_stats,
    reestimate_batch_norm,
)
from tvm_hcprune.testing import onnx_models


@pytest.fixture(scope="module")
def small():
    model = onnx_models.small_resnet(width=8, image=8, num_classes=4)
    mod = from_onnx(model)
    graph = hc.analyze(mod)
    rng = np.random.default_rng(0)
    xs = (rng.standard_normal((12, 1, 3, 8, 8)) * 2 + 0.5).astype("float32")
    return model, mod, graph, xs


@pytest.fixture(scope="module")
def dense_stats(small):
    _, _, graph, xs = small
    return batch_norm_input_stats(graph.mod, xs)


def _bn_inputs_onnxruntime(model, xs):
    """Per-channel mean/var of every BatchNormalization input, by onnxruntime + numpy."""
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(model)
    names = [n.input[0] for n in m.graph.node if n.op_type == "BatchNormalization"]
    for nm in names:
        m.graph.output.append(onnx.helper.make_tensor_value_info(nm, onnx.TensorProto.FLOAT,
                                                                  None))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = [sess.run(names, {"input": x}) for x in xs]
    stats = []
    for k in range(len(names)):
        a = np.stack([o[k] for o in outs]).astype(np.float64)  # [n, 1, C, H, W]
        a = np.moveaxis(a, 2, 0).reshape(a.shape[2], -1)
        stats.append((a.mean(1), a.var(1)))
    return stats


def _bn_consts(mod):
    return [(v.name, c.args[3].value.numpy(), c.args[4].value.numpy())
            for v, c in batch_norm_bindings(mod["main"])]


def test_recompute_equals_onnxruntime_statistics(small):
    """'recompute' sets moving_mean/var to the per-channel mean/variance of each batch
    norm's input over the samples, computed independently with onnxruntime and numpy."""
    model, mod, _, xs = small
    new, rep = reestimate_batch_norm(mod, xs, mode="recompute")
    oracle = _bn_inputs_onnxruntime(model, xs)
    consts = _bn_consts(new)
    assert len(consts) == len(oracle) == len(rep.layers) > 0
    for (_, m, v), (om, ov) in zip(consts, oracle, strict=True):
        np.testing.assert_allclose(m, om, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(v, ov, rtol=1e-4, atol=1e-5)
    # the statistics moved (the samples are not the init distribution)
    before = _bn_consts(mod)
    assert any(not np.allclose(a[1], b[1]) for a, b in zip(before, consts, strict=True))


def test_match_after_pruning_reproduces_dense_normalised_statistics(small, dense_stats):
    """After pruning, (mean_p - m') / sqrt(v' + eps) and var_p / (v' + eps) equal the dense
    model's on the kept channels; outputs stay finite; the IR keeps its shapes."""
    _, mod, graph, xs = small
    pruned, rep = hc.prune(mod, ratio=0.5, align=1, graph=graph)
    new, brep = reestimate_batch_norm(pruned, xs, mode="match", graph=graph, plan=rep.plan,
                                      dense_stats=dense_stats)
    assert brep.mode == "match" and brep.n_samples == len(xs)
    pruned_stats = batch_norm_input_stats(pruned, xs)
    eps_of = {v.name: float(c.attrs.epsilon) for v, c in batch_norm_bindings(graph.mod["main"])}
    dense_consts = {n: (m, v) for n, m, v in _bn_consts(graph.mod)}
    from tvm_hcprune.recovery.bn_reestimate import kept_channels

    checked = 0
    for name, m1, v1 in _bn_consts(new):
        m0, v0 = dense_consts[name]
        keep = kept_channels(graph, rep.plan, name, 3, len(m0))
        md, vd, _ = dense_stats[name]
        mp, vp, _ = pruned_stats[name]
        eps = eps_of[name]
        ok = (vd[keep] > 1e-8) & (vp > 1e-8)
        s0, s1 = np.sqrt(v0[keep] + eps), np.sqrt(v1 + eps)
        np.testing.assert_allclose(((mp - m1) / s1)[ok], ((md[keep] - m0[keep]) / s0)[ok],
                                   rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose((vp / s1**2)[ok], (vd[keep] / s0**2)[ok], rtol=1e-3,
                                   atol=1e-5)
        checked += int(ok.sum())
    assert checked > 0
    assert pruned["main"].script(show_meta=False) == new["main"].script(show_meta=False)
    assert all(np.isfinite(m).all() and (v >= 0).all() for _, m, v in _bn_consts(new))


def test_pass_form_match_on_unpruned_module_changes_nothing(small, dense_stats):
    """'match' makes the pruned model's normalised statistics equal the dense model's; on
    the dense module itself (pass form, no plan) that is the identity. Bad input raises."""
    _, mod, graph, xs = small
    p = ReestimateBatchNorm(xs, mode="match", graph=graph, dense_stats=dense_stats)
    out = p(graph.mod)
    assert p.last_report is not None and len(p.last_report.layers) == len(dense_stats)
    for (_, m0, v0), (_, m1, v1) in zip(_bn_consts(graph.mod), _bn_consts(out), strict=True):
        np.testing.assert_allclose(m1, m0, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(v1, v0, rtol=1e-4, atol=1e-5)
    with pytest.raises(HCPruneError, match="mode"):
        reestimate_batch_norm(mod, xs, mode="ema")
    with pytest.raises(HCPruneError, match="passes"):
        reestimate_batch_norm(mod, xs, passes=0)
    with pytest.raises(HCPruneError, match="graph"):
        reestimate_batch_norm(mod, xs, mode="match")
    with pytest.raises(HCPruneError):
        reestimate_batch_norm(mod, xs[:, :, :2])  # wrong input shape
    bad = xs.copy()
    bad[0, 0, 0, 0, 0] = np.nan
    with pytest.raises(HCPruneError):
        reestimate_batch_norm(mod, bad)


def test_reconstruct_option_reestimates_after_the_fit(small):
    """prune(reconstruct=True) with reconstruct_options batch_norm='recompute' re-estimates
    the statistics of the reconstructed module: they equal a direct recompute of it."""
    _, mod, graph, xs = small
    cal = hc.calibrate(mod, xs, max_rows=256, progress=False)
    plain, rep = hc.prune(mod, ratio=0.5, align=1, graph=graph, calibration=cal,
                          reconstruct=True)
    both, rep2 = hc.prune(mod, ratio=0.5, align=1, graph=graph, calibration=cal,
                          reconstruct=True, reconstruct_options={
                              "batch_norm": "recompute", "batch_norm_samples": xs})
    bn = rep2.reconstruction.batch_norm
    assert bn is not None and bn["mode"] == "recompute" and bn["layers"]
    stats = batch_norm_input_stats(plain, xs)
    for name, m, v in _bn_consts(both):
        np.testing.assert_allclose(m, stats[name][0], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(v, stats[name][1], rtol=1e-4, atol=1e-5)
    with pytest.raises(HCPruneError, match="batch_norm_samples"):
        hc.prune(mod, ratio=0.5, align=1, graph=graph, calibration=cal, reconstruct=True,
                 reconstruct_options={"batch_norm": "recompute"})
