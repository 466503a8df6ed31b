"""``prune(mod, calibration=data)``: data in any form is read and checked, the analysed module
is calibrated internally, the allocation is sensitivity-guided, reconstruction with its guard
is on, and the report measures agreement with the dense model on held-out samples."""

from __future__ import annotations

import json
import types
import warnings

import numpy as np
import onnx
import pytest
from PIL import Image
from tvm import relax
from tvm.relax.frontend.onnx import from_onnx

import tvm_hcprune as hc
from tvm_hcprune.cli import main
from tvm_hcprune.errors import HCPruneError, HCPruneWarning
from tvm_hcprune.planning.planner import input_conv_groups
from tvm_hcprune.recovery.calibration import Calibration
from tvm_hcprune.recovery.data import ImagePreprocess, calibration_data, split_holdout
from tvm_hcprune.recovery.guided import (
    CachedRunners,
    centred_correlation,
    choose_plan,
    collapse_reason,
    output_agreement,
)
from tvm_hcprune.recovery.runner import output_error
from tvm_hcprune.testing import masked_reference, onnx_models, run_relax


@pytest.fixture(scope="module")
def small():
    return from_onnx(onnx_models.small_resnet(width=16, image=16))


@pytest.fixture(scope="module")
def samples():
    return np.random.default_rng(0).normal(size=(16, 1, 3, 16, 16)).astype(np.float32)


@pytest.mark.slow
def test_data_default_path(small, samples):
    """With data: sensitivity allocation within the budget, reconstruction kept or reverted
    by the guard, agreement on the held-out quarter in the report (markdown and JSON); the
    plan itself matches the mask oracle (reconstruction only changes kept weights)."""
    pruned, report = hc.prune(small, budget=hc.MACs(fraction=0.6), calibration=samples,
                              align=8)
    assert report.allocation == "sensitivity"
    assert report.macs_fraction <= 0.6
    assert 0 not in report.plan.kept  # the first conv is protected on this path
    assert report.plan.config["budget"]["allocation"] == "sensitivity"
    assert set(report.sensitivity["errors"]) and report.sensitivity["samples"] == 12
    assert report.calibration == {"source": "samples", "fit_samples": 12,
                                  "held_out_samples": 4}
    rec = report.reconstruction
    assert rec is not None and rec.guard is not None and rec.guard["n"] == 4
    a = report.agreement
    assert a["n"] == 4 and -1 <= a["correlation"] <= 1 and "top1_agreement" in a
    assert a["collapsed"] is None and report.collapse_warning() is None
    # the agreement is what the returned module does on the held-out samples
    _, held = split_holdout(calibration_data(samples, small))
    dense = np.stack([run_relax(small, [x]) for x in held.samples])
    got = np.stack([run_relax(pruned, [x]) for x in held.samples])
    assert a["max_abs_error"] == pytest.approx(float(np.abs(dense - got).max()), rel=1e-4)
    md = report.to_markdown()
    assert "## Agreement with the dense model" in md and "allocation by sensitivity" in md
    d = json.loads(json.dumps(report.to_dict()))
    assert d["agreement"]["n"] == 4 and d["reconstruction"]["guard"]["n"] == 4
    if not rec.reverted:
        return
    x = samples[0]
    np.testing.assert_allclose(run_relax(pruned, [x]),
                               run_relax(masked_reference(small, report.plan), [x]),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_ratio_with_data_spends_the_uniform_macs(small, samples):
    """A ratio with data becomes the MACs of its uniform plan, reallocated by sensitivity;
    reconstruct=False and allocation='criterion' turn the parts off."""
    _, uni = hc.prune(small, ratio=0.5, align=8, prune_first_conv=False)
    _, rep = hc.prune(small, ratio=0.5, align=8, calibration=samples, reconstruct=False)
    assert rep.allocation == "sensitivity" and rep.reconstruction is None
    assert rep.macs_after <= uni.macs_after and rep.agreement is not None
    _, crit = hc.prune(small, ratio=0.5, align=8, calibration=samples,
                       allocation="criterion", reconstruct=False, prune_first_conv=False)
    assert crit.plan.kept.keys() == uni.plan.kept.keys()
    assert all(np.array_equal(crit.plan.kept[g], uni.plan.kept[g]) for g in uni.plan.kept)


def test_choose_plan_by_output_error(small, samples):
    """choose_plan keeps the plan whose output is closer to the dense model's on the
    samples (min(rel_mse, 1) + top-1 disagreement of the first output, recomputed here)."""
    graph = hc.analyze(small)
    _, deep = hc.prune(small, ratio=0.75, graph=graph, align=8)
    _, mild = hc.prune(small, ratio=0.25, graph=graph, align=8)
    x = samples  # (random weights: both rel_mse > 1, the disagreement decides)
    runners = CachedRunners()
    i, errors = choose_plan(graph, [deep.plan, mild.plan], x, runners)
    dense = runners.outputs(graph.mod, x)[0].reshape(len(x), -1)
    want = []
    for plan in (deep.plan, mild.plan):  # the oracle: the dense model with channels masked
        out = runners.outputs(masked_reference(graph.mod, plan), x)[0].reshape(len(x), -1)
        rel = np.square(out - dense).sum() / np.square(dense - dense.mean(0)).sum()
        want.append(min(rel, 1.0) + np.mean(out.argmax(1) != dense.argmax(1)))
    np.testing.assert_allclose(errors, want, rtol=1e-3, atol=1e-6)
    assert i == int(np.argmin(want)) == 1


def _linear(weight, bias):
    """A Relax module ``x @ weight + bias`` (x: [1, 4])."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 4), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.matmul(x, relax.const(weight.astype("float32"))))
            out = bb.emit_output(relax.op.add(y, relax.const(bias.astype("float32"))))
        bb.emit_func_output(out)
    return bb.get()


def test_choose_plan_prefers_agreement_over_a_collapsed_output():
    """An output collapsed to a constant (the dense output's mean: rel_mse 1) is not chosen
    over one that keeps every top-1 decision at three times the scale (rel_mse > 1): past a
    relative MSE of 1 the disagreement decides (the sum kept the constant)."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3))
    x = rng.standard_normal((24, 1, 4)).astype("float32")
    dense = _linear(w, np.zeros(3))
    mean = (x[:, 0] @ w).mean(0)
    modules = {"constant": _linear(0 * w, mean), "scaled": _linear(3 * w, np.zeros(3))}
    graph = types.SimpleNamespace(mod=dense)
    i, errors = choose_plan(graph, ["constant", "scaled"], x, CachedRunners(),
                            make=modules.__getitem__)
    d = x[:, 0] @ w
    rel_scaled = np.square(2 * d).sum() / np.square(d - d.mean(0)).sum()
    dis_constant = np.mean(d.argmax(1) != mean.argmax())
    assert rel_scaled > 1 + dis_constant and dis_constant > 0  # the sum would keep "constant"
    np.testing.assert_allclose(errors, [1 + dis_constant, 1.0], rtol=1e-4)
    assert i == 1


def test_choose_plan_breaks_a_tie_by_centred_correlation():
    """Two plans tied at ``1 + disagreement`` (both relative MSEs past 1, the same top-1
    decisions: a two-class model whose outputs never cross) are told apart by the centred
    correlation with the dense output: the one that still follows it (correlation 1) is
    chosen over the constant (0), though the constant comes first and ties kept it."""
    rng = np.random.default_rng(1)
    v = rng.standard_normal((4, 1))
    w = np.concatenate([v, -v], 1)  # dense: [s, -s], class 0 where s > 0
    x = rng.standard_normal((24, 1, 4)).astype("float32")
    s = x[:, 0] @ v[:, 0]
    b = 4 * np.abs(s).max()
    modules = {"constant": _linear(0 * w, np.array([b, -b])),  # always class 0
               "follows": _linear(0.5 * w, np.array([b, -b]))}  # always class 0, tracks s
    graph = types.SimpleNamespace(mod=_linear(w, np.zeros(2)))
    i, errors = choose_plan(graph, ["constant", "follows"], x, CachedRunners(),
                            make=modules.__getitem__)
    dis = np.mean(s <= 0)
    assert 0 < dis < 1
    np.testing.assert_allclose(errors, [1 + dis, 1 + dis], rtol=1e-6)  # the tie
    assert i == 1
    d = np.stack([s, -s], 1)
    assert centred_correlation(0.5 * d + b, d) == pytest.approx(1.0)
    assert centred_correlation(np.full_like(d, b), d) == 0.0


def test_choose_plan_keeps_the_uniform_plan_when_every_plan_collapsed():
    """When every plan's output collapsed on the samples (one class for every sample of a
    balanced two-class model), nothing tells them apart: the uniform allocation (the uniform
    ratio, where it is a candidate) is kept, though
    the knapsack's plan comes first, scores the same and follows the dense output more
    closely (the tie-break would keep it). With one plan still live the usual choice holds."""
    rng = np.random.default_rng(1)
    v = rng.standard_normal((4, 1))
    w = np.concatenate([v, -v], 1)  # dense: [s, -s], class 0 where s > 0
    x = rng.standard_normal((24, 1, 4)).astype("float32")
    sign = np.sign(x[:, 0] @ v[:, 0]) * np.where(np.arange(24) < 12, 1, -1)
    x[:, 0] *= sign[:, None]  # 12 samples of each class
    s = x[:, 0] @ v[:, 0]
    assert (s > 0).sum() == 12
    b = 4 * np.abs(s).max()
    modules = {"dense": _linear(0.5 * w, np.array([b, -b])),  # class 0 always, tracks s
               "uniform": _linear(0 * w, np.array([b, -b])),  # class 0 always, constant
               "live": _linear(w, np.zeros(2))}
    plans = [types.SimpleNamespace(config={"allocation_start": k}) for k in modules]
    graph = types.SimpleNamespace(mod=_linear(w, np.zeros(2)))

    def make(p):
        return modules[p.config["allocation_start"]]
    dense = CachedRunners().outputs(graph.mod, x)
    for p in plans[:2]:
        assert collapse_reason(dense, CachedRunners().outputs(make(p), x)) is not None
    i, errors = choose_plan(graph, plans[:2], x, CachedRunners(), make=make)
    np.testing.assert_allclose(errors, [1.5, 1.5], rtol=1e-6)
    assert i == 1  # the uniform plan
    ratio = types.SimpleNamespace(config={"allocation_start": "ratio"})
    modules["ratio"] = modules["uniform"]
    i, _ = choose_plan(graph, [*plans[:2], ratio], x, CachedRunners(), make=make)
    assert i == 2  # the uniform ratio, where it is a candidate
    i, errors = choose_plan(graph, plans, x, CachedRunners(), make=make)
    assert i == 2 and errors[2] == pytest.approx(0.0, abs=1e-9)


def test_choose_plan_scores_a_one_class_output_as_dead():
    """An output giving one class to every sample (the dense model: 15 of 24 one class, 9 the
    other, so :func:`collapse_reason` does not call it collapsed) scores ``1 + disagreement``
    though its relative MSE is below 1, and a live plan that agrees as often is kept over it
    (text direction at 0.32x latency: the knapsack's one-class plan, MSE 0.984, scored below
    the live uniform ratio by its MSE alone and 0.500 on 1,000 test lines, where the uniform
    ratio kept 0.635)."""
    rng = np.random.default_rng(0)
    v = rng.standard_normal((4, 1))
    w = np.concatenate([v, -v], 1)  # dense: [s, -s], class 0 where s > 0
    x = rng.standard_normal((24, 4))
    x *= (np.sign(x @ v[:, 0]) * np.where(np.arange(24) < 15, 1, -1))[:, None]
    s = x @ v[:, 0]
    d = np.stack([s, -s], 1)
    b = 0.3 * np.abs(s).max() + 1e-3
    noise = np.random.default_rng(123).standard_normal((4, 2))
    modules = {"one class": _linear(0.3 * w, 0.7 * d.mean(0) + [b, -b]),  # class 0 always
               "as often": _linear(w + 1.5 * noise, np.zeros(2))}  # 9 disagreements, live
    graph = types.SimpleNamespace(mod=_linear(w, np.zeros(2)))
    x = x[:, None].astype("float32")
    runners = CachedRunners()
    dense = runners.outputs(graph.mod, x)
    outs = {k: runners.outputs(m, x)[0].reshape(24, 2) for k, m in modules.items()}
    assert np.unique(outs["one class"].argmax(1)).tolist() == [0]
    assert len(np.unique(outs["as often"].argmax(1))) == 2
    assert collapse_reason(dense, [outs["one class"]]) is None  # the dense classes: 15/9
    rel, dis = output_error(outs["one class"], dense[0])
    assert rel < 1 and dis == pytest.approx(9 / 24)  # min(rel, 1) + dis would keep it
    assert output_error(outs["as often"], dense[0])[1] == pytest.approx(9 / 24)
    i, errors = choose_plan(graph, ["one class", "as often"], x, runners,
                            make=modules.__getitem__)
    np.testing.assert_allclose(errors, [1 + 9 / 24] * 2, rtol=1e-6)
    assert i == 1  # the tie goes to the live plan
    i, errors = choose_plan(graph, ["one class"], x, runners, make=modules.__getitem__)
    assert i == 0  # alone: nothing else to choose


def test_calibration_of_another_module_is_redone(samples):
    """``calibrate(mod)`` then ``prune(mod, criterion="thinet", calibration=cal)`` works when
    the calibrated module is not the analysed one (its samples are recalibrated); a
    calibration read from a file (no samples) says what to pass instead."""
    a = from_onnx(onnx_models.small_resnet(width=16, image=16))
    b = from_onnx(onnx_models.small_resnet(width=16, image=16, seed=1))
    cal = hc.calibrate(a, samples, progress=False)
    graph = hc.analyze(b)
    assert not cal.matches(graph.mod)
    _, rep = hc.prune(b, ratio=0.5, align=8, criterion="thinet", calibration=cal,
                      reconstruct=True)
    assert rep.plan.kept and len(rep.reconstruction.layers) > 0


def test_file_calibration_of_another_module_raises(samples, tmp_path):
    a = from_onnx(onnx_models.small_resnet(width=16, image=16))
    b = from_onnx(onnx_models.small_resnet(width=16, image=16, seed=1))
    path = hc.calibrate(a, samples, progress=False).save(tmp_path / "c.npz")
    with pytest.raises(HCPruneError, match="pass the samples instead"):
        hc.prune(b, ratio=0.5, criterion="thinet", calibration=Calibration.load(path))


def test_data_forms_and_bad_data(small, samples, tmp_path):
    """Arrays, lists, {name: array}, .npz (named or one unnamed array), .npy all give the
    same samples; a wrong name, shape or dtype is a clear error."""
    want = calibration_data(samples, small).samples
    np.savez(tmp_path / "named.npz", input=samples, labels=np.arange(16) % 10)
    np.savez(tmp_path / "one.npz", samples)
    np.save(tmp_path / "a.npy", samples)
    for src in (list(samples), {"input": samples}, tmp_path / "named.npz",
                str(tmp_path / "one.npz"), tmp_path / "a.npy", samples[:, 0]):
        np.testing.assert_array_equal(calibration_data(src, small).samples, want)
    assert calibration_data(tmp_path / "named.npz", small).labels.tolist()[:3] == [0, 1, 2]
    np.savez(tmp_path / "wrong.npz", image=samples)
    bad = [({"image": samples}, "model input is 'input'"),
           (tmp_path / "wrong.npz", "named 'input'"),
           (samples[:, :, :, :8], "does not match the model input"),
           (samples.astype(np.float64), "astype"),
           (tmp_path / "missing.npz", "not found"),
           (tmp_path, "no image")]
    for src, msg in bad:
        with pytest.raises(HCPruneError, match=msg):
            calibration_data(src, small)
    with pytest.raises(HCPruneError, match="does not match the model input"):
        hc.prune(small, ratio=0.5, calibration=samples[:, :, :2])


def test_image_folder_preprocessing(tmp_path):
    """A folder of images becomes (pixel/255 - mean)/std in the model's layout; 'pad' keeps
    the aspect ratio and zero-pads on the right."""
    mod = from_onnx(onnx_models.small_resnet(width=16, image=16))
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, size=(3, 16, 16, 3), dtype=np.uint8)
    for i, im in enumerate(imgs):
        Image.fromarray(im).save(tmp_path / f"{i}.png")
    pre = ImagePreprocess(mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    got = calibration_data(tmp_path, mod, pre).samples
    ref = ((imgs / 255.0 - pre.mean) / pre.std).transpose(0, 3, 1, 2)[:, None]
    np.testing.assert_allclose(got, ref, atol=1e-5)
    bgr = calibration_data(tmp_path, mod, {"channels": "bgr"}).samples
    np.testing.assert_allclose(bgr[:, 0, ::-1], imgs.transpose(0, 3, 1, 2) / 255.0,
                               atol=1e-6)
    (tmp_path / "w").mkdir()
    Image.fromarray(np.full((8, 4, 3), 255, np.uint8)).save(tmp_path / "w" / "x.png")
    pad = calibration_data(tmp_path / "w", mod, {"resize": "pad"}).samples[0, 0]
    assert np.allclose(pad[:, :, :8], 1.0) and np.allclose(pad[:, :, 8:], 0.0)
    with pytest.raises(HCPruneError, match="size"):
        calibration_data(tmp_path, mod, {"size": (32, 32)})


def test_output_agreement():
    d = [np.array([[[1.0, 2.0, 3.0]], [[3.0, 2.0, 1.0]]])]
    p = [np.array([[[1.0, 2.5, 3.0]], [[1.0, 2.0, 3.0]]])]
    a = output_agreement(d, p, labels=np.array([2, 0]))
    assert a["top1_agreement"] == 0.5 and a["max_abs_error"] == 2.0
    assert a["top1_dense"] == 1.0 and a["top1_pruned"] == 0.5
    assert a["correlation"] == pytest.approx(np.corrcoef(d[0].ravel(), p[0].ravel())[0, 1])


def test_collapse_reason():
    """Collapsed: an output the same for every sample, or a classifier giving one class to
    every sample where the dense model's most frequent class covers at most half."""
    d = [np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0], [0.0, 3.0]])]  # classes 0, 1, 0, 1
    assert collapse_reason(d, d) is None
    assert collapse_reason(d, [d[0] * 0.5 + 1.0]) is None  # scaled, still input-dependent
    assert collapse_reason(d, [np.ones_like(d[0])]) == (
        "output 0 is the same for every sample: it no longer depends on the input")
    one_class = d[0] * [1.0, 0.0] + [0.0, 9.0]  # varies, but arg-max 1 everywhere
    assert collapse_reason(d, [one_class]) == (
        "every sample is given class 1 (the dense model: 2 classes, the most frequent on 2 "
        "of 4): it no longer tells the classes apart")
    skewed = [np.array([[1.0, 0.0]] * 3 + [[0.0, 1.0]])]  # the dense model: 3 of 4 class 0
    assert collapse_reason(skewed, [skewed[0] * [1.0, 0.0] + [0.5, 0.0]]) is None
    # a second output collapsed is named; constant dense outputs are not a collapse
    assert collapse_reason(d + d, d + [np.zeros_like(d[0])]).startswith(
        "output 1 is the same for every sample")
    assert collapse_reason([np.ones((4, 3))], [np.zeros((4, 3))]) is None


def _dead_channel_onnx():
    """conv(4 -> 16, bias) -> relu -> pool -> linear(3): channels 0-7 have the largest weights
    (an L2 criterion keeps them) and a bias of -1e4 (dead after the relu); 8-15 carry the
    signal. Pruning half by L2 leaves a model whose logits are the linear bias."""
    g = onnx_models.GraphBuilder(3)
    y = g.op("Relu", [g.conv("input", 4, 16, 3, bias=True)])
    return _kill_channels(g.model(g.head(y, 16, 3), [1, 4, 6, 6], [1, 3], "dead_channels"),
                          (16, 4, 3, 3))


def _kill_channels(m, *weight_shapes):
    """``m`` with output channels 0-7 of the convs of weights ``weight_shapes`` (the model's
    16-element biases are theirs) ten times larger and dead after a relu (bias -1e4), 8-15
    bias 0."""
    for t in m.graph.initializer:
        a = onnx.numpy_helper.to_array(t).copy()
        if a.shape in weight_shapes:
            a[:8] *= 10.0
        elif a.shape == (16,):
            a[:8], a[8:] = -1e4, 0.0
        else:
            continue
        t.CopyFrom(onnx.numpy_helper.from_array(a, t.name))
    return m


def _dead_second_conv_onnx():
    """conv(4 -> 16) -> relu -> conv(16 -> 16, 1x1, bias) -> relu -> pool -> linear(2): the
    second conv's channels 0-7 are dead after the relu and have the largest weights (as in
    :func:`_dead_channel_onnx`), 8-15 carry the signal. With the first conv kept whole, a
    budget met by halving the second conv keeps only dead channels (a constant output);
    halving the first conv meets it with the second whole."""
    g = onnx_models.GraphBuilder(5)
    y = g.op("Relu", [g.conv("input", 4, 16, 3)])
    z = g.op("Relu", [g.conv(y, 16, 16, 1, bias=True)])
    return _kill_channels(g.model(g.head(z, 16, 2), [1, 4, 6, 6], [1, 2], "dead_second_conv"),
                          (16, 16, 1, 1))


def _dead_both_convs_onnx():
    """:func:`_dead_second_conv_onnx` with the first conv's channels 0-7 dead too (and
    largest): halving either conv keeps only dead channels."""
    g = onnx_models.GraphBuilder(5)
    y = g.op("Relu", [g.conv("input", 4, 16, 3, bias=True)])
    z = g.op("Relu", [g.conv(y, 16, 16, 1, bias=True)])
    return _kill_channels(g.model(g.head(z, 16, 2), [1, 4, 6, 6], [1, 2], "dead_both_convs"),
                          (16, 4, 3, 3), (16, 16, 1, 1))


def _retry_case(model, seed):
    """``(module, its analysis, 32 samples, prune's keywords)`` of a dead-channel ``model``
    pruned to 0.85x MACs at align 8 with the samples, without reconstruction (the first-conv
    retry's tests)."""
    mod = from_onnx(model)
    graph = hc.analyze(mod)
    x = np.random.default_rng(seed).normal(size=(32, 1, 4, 6, 6)).astype(np.float32)
    return mod, graph, x, {"budget": hc.MACs(fraction=0.85), "align": 8, "calibration": x,
                           "reconstruct": False, "graph": graph}


def test_budget_retry_that_collapses_too_is_named_in_the_warning():
    """When the plan made with the first conv prunable collapses as well, prune returns the
    first plan, and the collapse warning (and the plan's config) says the retry was tried."""
    mod, graph, x, kw = _retry_case(_dead_both_convs_onnx(), 3)
    _, held = split_holdout(calibration_data(x, mod))
    dense = CachedRunners().outputs(mod, held.samples)[0]
    assert np.ptp(dense, axis=0).max() > 1e-3  # the dense model's output depends on x
    with pytest.warns(hc.CollapsedModelWarning,
                      match="planned again with the first conv pruned too: that plan has "
                            "collapsed too"):
        _, report = hc.prune(mod, allocation="criterion", **kw)
    first = sorted(input_conv_groups(graph))
    assert first[0] not in report.plan.kept  # the first plan (first conv whole) returned
    assert "first_conv_retry" not in report.plan.config
    assert report.plan.config["first_conv_retry_failed"].startswith("that plan has collapsed")
    assert report.agreement["collapsed"].startswith("output 0 is the same")


def test_progress_shows_the_sensitivity_scan_and_the_retry(capsys):
    """``progress=True`` (what the CLI passes): the sensitivity scan's bar and the retry's
    line on stderr; the default is silent."""
    mod, graph, _, kw = _retry_case(_dead_second_conv_onnx(), 2)
    _, report = hc.prune(mod, progress=True, **kw)
    err = capsys.readouterr().err
    assert report.allocation == "sensitivity" and "first_conv_retry" in report.plan.config
    # the retry's scan measured the first conv alone; the second conv's probe (the first
    # scan's only one) was taken from the first scan
    assert report.sensitivity["reused"] == 1 and report.sensitivity["probes"].keys() == {0, 1}
    assert "sensitivity" in err and "%|" in err  # the scan's tqdm bar
    assert "planning the budget again with the first conv prunable" in err
    hc.prune(mod, **kw)
    assert capsys.readouterr().err == ""
    first = sorted(input_conv_groups(graph))[0]
    with pytest.warns(hc.CollapsedModelWarning):  # first conv protected: no retry, no line
        hc.prune(mod, progress=True, protect=(f"group:{first}",), **kw)
    assert "planning the budget again" not in capsys.readouterr().err


def test_budget_retries_with_the_first_conv_when_every_plan_collapsed():
    """A MACs budget that, with the first conv protected (the default), only the second conv
    can meet: both candidates keep its dead channels and collapse; prune then plans the
    budget again with the first conv prunable and keeps that plan (live output, no warning),
    saying why. With ``prune_first_conv=False`` asked for, the collapsed plan stays."""
    mod, graph, x, kw = _retry_case(_dead_second_conv_onnx(), 2)
    kw["allocation"] = "criterion"
    first = sorted(input_conv_groups(graph))
    assert len(first) == 1 and len(graph.groups) >= 2
    with warnings.catch_warnings():
        warnings.simplefilter("error", HCPruneWarning)  # no collapse warning
        pruned, report = hc.prune(mod, **kw)
    assert first[0] in report.plan.kept  # the first conv is pruned now
    assert report.plan.config["first_conv_retry"].startswith("output 0 is the same")
    assert report.agreement["collapsed"] is None and report.macs_fraction <= 0.85
    assert "the first conv is pruned too: with it kept whole, output 0" in report.summary()
    _, held = split_holdout(calibration_data(x, mod))
    runners = CachedRunners()
    out = runners.outputs(pruned, held.samples)[0]
    np.testing.assert_allclose(out, runners.outputs(masked_reference(mod, report.plan),
                                                    held.samples)[0], rtol=1e-4, atol=1e-4)
    with pytest.warns(hc.CollapsedModelWarning, match="collapsed at 0.85x MACs"):
        _, kept = hc.prune(mod, prune_first_conv=False, **kw)
    assert first[0] not in kept.plan.kept and "first_conv_retry" not in kept.plan.config
    assert kept.agreement["collapsed"].startswith("output 0 is the same")


def test_collapsed_model_is_reported_and_warned():
    """A plan that keeps only dead channels: prune warns (HCPruneWarning, the ratio named),
    and the report's summary and markdown say so; the mask oracle holds for the plan."""
    mod = from_onnx(_dead_channel_onnx())
    x = np.random.default_rng(1).normal(size=(16, 1, 4, 6, 6)).astype(np.float32)
    with pytest.warns(hc.CollapsedModelWarning, match=r"collapsed at ratio 0\.5: on the 4 held-out "
                      r"calibration samples output 0 is the same for every sample: it no "
                      r"longer depends on the input; prune less") as got:
        pruned, report = hc.prune(mod, ratio=0.5, align=8, calibration=x,
                                  allocation="criterion", reconstruct=False)
    assert {w.filename for w in got} == {__file__}  # the caller's line
    assert sorted(report.plan.kept[0]) == list(range(8))  # the dead (largest) channels
    _, held = split_holdout(calibration_data(x, mod))
    runners = CachedRunners()
    out = runners.outputs(pruned, held.samples)[0]
    assert np.allclose(out, out[:1]) and not np.allclose(
        runners.outputs(mod, held.samples)[0], out[:1])  # the dense model's do vary
    np.testing.assert_allclose(out, runners.outputs(masked_reference(mod, report.plan),
                                                    held.samples)[0], rtol=1e-4, atol=1e-4)
    assert report.agreement["collapsed"].startswith("output 0 is the same for every sample")
    assert "WARNING: the pruned model has collapsed at ratio 0.5" in report.summary()
    assert "**Warning**: the pruned model has collapsed" in report.to_markdown()
    assert json.loads(json.dumps(report.to_dict()))["agreement"]["collapsed"]


def test_cli_prints_the_collapse_warning(tmp_path, capsys):
    """``hcprune prune`` prints the collapse warning with the summary (once: not also as a
    Python warning on stderr) and still writes the model the user asked for (exit 0)."""
    path, out = tmp_path / "dead.onnx", tmp_path / "p.onnx"
    onnx.save(_dead_channel_onnx(), str(path))
    np.savez(tmp_path / "cal.npz", input=np.random.default_rng(1).normal(
        size=(16, 1, 4, 6, 6)).astype(np.float32))
    assert main(["prune", str(path), "--prune-ratio", "0.5", "--align", "8", "-o", str(out),
                 "--calibration", str(tmp_path / "cal.npz"), "--allocation", "criterion",
                 "--no-reconstruct"]) == 0
    cap = capsys.readouterr()
    assert cap.out.count("WARNING: the pruned model has collapsed at ratio 0.5") == 1
    assert "collapsed" not in cap.err and out.exists()


def test_cli_prints_library_warnings_once(capsys):
    """The CLI prints each HCPruneWarning once as ``hcprune CMD: warning: ...`` on stderr,
    leaves a collapsed model's warning to the report lines, and shows other warnings as
    Python does."""
    from tvm_hcprune.cli import print_warnings
    from tvm_hcprune.errors import CollapsedModelWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            warnings.warn("the host is busy", HCPruneWarning, stacklevel=1)
        warnings.warn("collapsed", CollapsedModelWarning, stacklevel=1)
        warnings.warn("a library's own", DeprecationWarning, stacklevel=1)
    print_warnings(caught, "prune")
    err = capsys.readouterr().err
    assert err.count("hcprune prune: warning: the host is busy\n") == 1
    assert "collapsed" not in err and "DeprecationWarning: a library's own" in err


def test_cli_calibration_npz_and_warning(tmp_path, capsys, samples):
    path = tmp_path / "m.onnx"
    onnx.save(onnx_models.small_resnet(width=16, image=16), str(path))
    out, md = tmp_path / "p.onnx", tmp_path / "r.md"
    assert main(["prune", str(path), "--macs-budget", "0.7x", "--align", "8", "-o",
                 str(out)]) == 0
    assert "outputs may change a lot" in capsys.readouterr().out
    np.savez(tmp_path / "cal.npz", input=samples)
    assert main(["prune", str(path), "--macs-budget", "0.7x", "--align", "8", "-o", str(out),
                 "--calibration", str(tmp_path / "cal.npz"), "--allocation", "criterion",
                 "--report", str(md)]) == 0
    text = capsys.readouterr().out
    assert "outputs may change a lot" not in text and "agreement with dense" in text
    assert json.loads((tmp_path / "r.json").read_text())["agreement"]["n"] == 4
    np.savez(tmp_path / "bad.npz", input=samples[:, :, :1])
    never = tmp_path / "never.onnx"
    assert main(["prune", str(path), "--macs-budget", "0.7x", "-o", str(never),
                 "--calibration", str(tmp_path / "bad.npz")]) == 2
    assert "does not match the model input" in capsys.readouterr().err
    assert not never.exists()


def test_first_conv_protect_rule(small):
    """The conv reading the model input produces group 0; prune_first_conv=False keeps it
    whole (the default of the sensitivity allocation), True lets budgets prune it."""
    from tvm_hcprune.planning.planner import input_conv_groups

    graph = hc.analyze(small)
    assert input_conv_groups(graph) == {0}
    _, kept = hc.prune(small, budget=hc.MACs(fraction=0.6), graph=graph, align=8,
                       prune_first_conv=False)
    _, free = hc.prune(small, ratio=0.5, graph=graph, align=8, prune_first_conv=True)
    assert 0 not in kept.plan.kept and kept.macs_fraction <= 0.6
    assert 0 in free.plan.kept
    _, plain = hc.prune(small, ratio=0.5, graph=graph, align=8)  # None: as before
    assert 0 in plain.plan.kept


@pytest.mark.parametrize("cmd, extra", [("prune", ["-o"]), ("compile", ["-o"])])
def test_cli_bad_input_exits_2_writes_nothing(tmp_path, capsys, samples, cmd, extra):
    """Calibration arrays with the wrong name, dtype or shape, a budget no plan meets (with
    the best reachable figure) and a latency budget above the dense model's: exit 2 with
    the reason, and neither the model, nor the report, nor its JSON is written."""
    path = tmp_path / "m.onnx"
    onnx.save(onnx_models.small_resnet(width=16, image=16), str(path))
    np.savez(tmp_path / "name.npz", image=samples)
    np.savez(tmp_path / "dtype.npz", input=samples.astype(np.float64))
    np.savez(tmp_path / "shape.npz", input=samples[:, :, :1])
    out = tmp_path / ("never.onnx" if cmd == "prune" else "never.so")
    md = tmp_path / "never.md"
    cases = [(["--macs-budget", "0.7x", "--calibration", str(tmp_path / "name.npz")],
              "the model input is named 'input'"),
             (["--macs-budget", "0.7x", "--calibration", str(tmp_path / "dtype.npz")],
              "astype"),
             (["--macs-budget", "0.7x", "--calibration", str(tmp_path / "shape.npz")],
              "does not match the model input"),
             (["--macs-budget", "0.01x", "--align", "8"][: 2 if cmd == "compile" else 4],
              "no plan meets the MACs budget"),
             (["--latency-budget", "1000ms", "--latency-model", "roofline"],
              "not below the dense")]
    for flags, msg in cases:
        assert main([cmd, str(path), *flags, *extra, str(out), "--report", str(md)]) == 2
        err = capsys.readouterr().err
        assert msg in err, err
        if "no plan meets" in msg:
            assert "reach" in err  # the best reachable figure
        assert not out.exists() and not md.exists() and not md.with_suffix(".json").exists()


@pytest.mark.slow
def test_cli_plot_pareto_and_staircase(tmp_path, capsys, samples):
    """--plot with data writes the Pareto PNG (one point per budget that could be met) and
    the staircase PNG; without data only the staircase, and says why."""
    pytest.importorskip("matplotlib")
    path = tmp_path / "m.onnx"
    onnx.save(onnx_models.small_resnet(width=16, image=16), str(path))
    np.save(tmp_path / "cal.npy", samples)
    out = tmp_path / "p.onnx"
    assert main(["prune", str(path), "--macs-budget", "0.7x", "--align", "8", "-o", str(out),
                 "--calibration", str(tmp_path / "cal.npy"), "--allocation", "criterion",
                 "--no-reconstruct", "--plot", str(tmp_path / "fig")]) == 0
    for name in ("fig.pareto.png", "fig.staircase.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert main(["prune", str(path), "--macs-budget", "0.7x", "--align", "8", "-o", str(out),
                 "--plot", str(tmp_path / "nodata.png")]) == 0
    assert "no Pareto plot without --calibration" in capsys.readouterr().out
    assert (tmp_path / "nodata.staircase.png").is_file()
    assert not (tmp_path / "nodata.pareto.png").exists()
