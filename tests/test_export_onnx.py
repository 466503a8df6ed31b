"""Pruned ONNX export: onnx.checker passes, onnxruntime == the pruned TVM module, refusals."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from tvm.relax.frontend.onnx import from_onnx

import tvm_hcprune as hc
from tvm_hcprune.errors import HCPruneError
from tvm_hcprune.planning.export_onnx import apply_to_onnx
from tvm_hcprune.recovery.runner import run_relax
from tvm_hcprune.testing import onnx_models


def _ort(model, x):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _input(model, seed=0):
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    return np.random.default_rng(seed).standard_normal(dims).astype("float32")


def _initializer_shapes(model):
    return {i.name: list(i.dims) for i in model.graph.initializer}


def _shuffle_model():
    from core_models import build as build_core

    return build_core("channel_shuffle")[0]


@pytest.mark.parametrize("build", [
    lambda: onnx_models.small_resnet(width=16, image=16, num_classes=10),
    pytest.param(lambda: onnx_models.mobilenet_v2(width_mult=0.35, image=32, num_classes=10),
                 marks=pytest.mark.slow),
    _shuffle_model,
], ids=["small_resnet", "mobilenet_v2_depthwise", "grouped_channel_shuffle"])
def test_export_equals_pruned_tvm_module(build):
    """BN, residual adds, depthwise and grouped convs (group counts kept, weights gathered
    per group), channel shuffle's Reshapes, Gemm: the exported model passes the checker and
    onnxruntime reproduces the pruned TVM module (rtol 1e-4); initializers shrank."""
    model = build()
    mod = from_onnx(model)
    graph = hc.analyze(mod)
    pruned, rep = hc.prune(mod, ratio=0.5, align=1, graph=graph)
    out = rep.plan.apply_to_onnx(model, graph, pruned)
    onnx.checker.check_model(out)
    x = _input(model)
    np.testing.assert_allclose(_ort(out, x), run_relax(pruned, [x]), rtol=1e-4, atol=1e-5)
    before, after = _initializer_shapes(model), _initializer_shapes(out)
    assert sum(np.prod(s) for s in after.values()) < 0.6 * sum(np.prod(s)
                                                               for s in before.values())
    assert _initializer_shapes(model) == before  # the input model is not modified
    shapes = _initializer_shapes(model)
    for old, new in zip(model.graph.node, out.graph.node, strict=True):
        group = {a.name: a.i for a in old.attribute}.get("group", 1)
        if old.op_type == "Conv" and group > 1 and shapes[old.input[1]][1] > 1:
            assert {a.name: a.i for a in new.attribute}["group"] == group  # not depthwise


@pytest.mark.slow
def test_export_carries_reconstructed_weights():
    """Re-fitted weights and the intercept folded into batch-norm means reach the ONNX
    model: onnxruntime == the reconstructed TVM module, != the plainly pruned one."""
    model = onnx_models.small_resnet(width=16, image=16, num_classes=10)
    mod = from_onnx(model)
    graph = hc.analyze(mod)
    xs = np.random.default_rng(3).standard_normal((12, 1, 3, 16, 16)).astype("float32")
    cal = hc.calibrate(graph.mod, xs, max_rows=512, progress=False)
    plain, rep = hc.prune(mod, ratio=0.5, align=1, graph=graph)
    recon, rrep = hc.prune(mod, ratio=0.5, align=1, graph=graph, calibration=cal,
                           reconstruct=True)
    assert any(f.status == "reconstructed" for f in rrep.reconstruction.layers)
    out = apply_to_onnx(model, graph, rrep.plan, recon)
    onnx.checker.check_model(out)
    x = _input(model, seed=7)
    got = _ort(out, x)
    np.testing.assert_allclose(got, run_relax(recon, [x]), rtol=1e-4, atol=1e-5)
    plain_out = _ort(apply_to_onnx(model, graph, rep.plan, plain), x)
    assert not np.allclose(got, plain_out, rtol=1e-3)


def _computed_weight_model():
    """Conv whose weight is Mul(w, 2) - computed in the graph, not stored."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype("float32"), "w"),
             numpy_helper.from_array(np.array(2.0, "float32"), "two"),
             numpy_helper.from_array(rng.standard_normal((4, 8, 1, 1)).astype("float32"),
                                     "w2")]
    nodes = [helper.make_node("Mul", ["w", "two"], ["w_scaled"]),
             helper.make_node("Conv", ["input", "w_scaled"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["out"])]
    g = helper.make_graph(nodes, "computed",
                          [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                         [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT,
                                                         [1, 4, 8, 8])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_refuses_constants_not_stored_in_the_graph():
    model = _computed_weight_model()
    mod = from_onnx(model)
    graph = hc.analyze(mod)
    pruned, rep = hc.prune(mod, ratio=0.5, align=1, graph=graph)
    with pytest.raises(HCPruneError, match="not stored in the ONNX graph"):
        apply_to_onnx(model, graph, rep.plan, pruned)


def test_refuses_wrong_plan_and_module():
    model = onnx_models.small_resnet(width=16, image=16, num_classes=10)
    mod = from_onnx(model)
    graph = hc.analyze(mod)
    pruned, rep = hc.prune(mod, ratio=0.5, align=1, graph=graph)
    other = hc.analyze(from_onnx(_computed_weight_model()))
    with pytest.raises(HCPruneError, match="different model"):
        apply_to_onnx(model, other, rep.plan, pruned)
    with pytest.raises(HCPruneError, match="ModelProto"):
        apply_to_onnx(b"not a model", graph, rep.plan, pruned)
