"""calibrate(): statistics and reconstruction rows against onnxruntime / numpy oracles."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tvm_hcprune.errors import HCPruneError
from tvm_hcprune.recovery.calibration import Calibration, calibrate

N_SAMPLES = 12


def _tiny_cnn() -> onnx.ModelProto:
    """Conv(bias) -> Relu -> [depthwise dilated conv, 1x1 stride-2 conv] (shared input)
    -> Add -> Relu -> Conv 1x1 -> GAP -> Flatten -> Gemm."""
    rng = np.random.default_rng(0)
    inits, nodes = [], []

    def const(name, shape, scale=0.3):
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) * scale)
                                             .astype(np.float32), name))
        return name

    nodes.append(helper.make_node("Conv", ["input", const("w0", (8, 3, 3, 3)),
                                           const("b0", (8,))], ["c0"],
                                  kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1]))
    nodes.append(helper.make_node("Relu", ["c0"], ["r0"]))
    nodes.append(helper.make_node("Conv", ["r0", const("w1", (8, 1, 3, 3))], ["c1"],
                                  kernel_shape=[3, 3], pads=[2, 1, 2, 1], strides=[2, 2],
                                  dilations=[2, 1], group=8))
    nodes.append(helper.make_node("Conv", ["r0", const("w2", (8, 8, 1, 1))], ["c2"],
                                  kernel_shape=[1, 1], strides=[2, 2]))
    nodes.append(helper.make_node("Add", ["c1", "c2"], ["a"]))
    nodes.append(helper.make_node("Relu", ["a"], ["r1"]))
    nodes.append(helper.make_node("Conv", ["r1", const("w3", (16, 8, 1, 1))], ["c3"],
                                  kernel_shape=[1, 1]))
    nodes.append(helper.make_node("GlobalAveragePool", ["c3"], ["g"]))
    nodes.append(helper.make_node("Flatten", ["g"], ["f"], axis=1))
    nodes.append(helper.make_node("Gemm", ["f", const("wf", (5, 16)), const("bf", (5,))],
                                  ["logits"], transB=1))
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 9, 10])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@pytest.fixture(scope="module")
def tiny():
    from tvm.relax.frontend.onnx import from_onnx

    model = _tiny_cnn()
    samples = np.random.default_rng(1).standard_normal((N_SAMPLES, 1, 3, 9, 10)).astype(
        np.float32)
    cal = calibrate(from_onnx(model), samples, max_rows=40, progress=False)
    return model, samples, cal


def _ort_tensors(model, samples, names):
    """Run onnxruntime with ``names`` exposed as extra outputs; {name: [N, ...]}."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for n in names:
        m.graph.output.append(helper.make_tensor_value_info(n, TensorProto.FLOAT, None))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = [sess.run(names, {"input": x}) for x in samples]
    return {n: np.stack([o[i] for o in outs]) for i, n in enumerate(names)}


def _np_stats(t, axis):
    a = np.moveaxis(t, axis, 0).reshape(t.shape[axis], -1).astype(np.float64)
    return (np.abs(a).mean(1), (a <= 0).mean(1), a.mean(1), a.var(1), a.shape[1])


def test_statistics_equal_onnxruntime_intermediates(tiny):
    """Per-channel mean|x|, APoZ, mean, var of every conv/matmul input and output equal the
    same statistics computed from onnxruntime's intermediate tensors (conv/Gemm outputs
    without their bias: Relax's conv2d/matmul binding is pre-bias)."""
    model, samples, cal = tiny
    layer_nodes = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm")]
    assert [lc.op for lc in cal.layers.values()] == ["conv2d"] * 4 + ["matmul"]
    assert len(cal) == len(layer_nodes)
    names = sorted({t for n in layer_nodes for t in (n.input[0], n.output[0])} - {"input"})
    ref = _ort_tensors(model, samples, names)
    ref["input"] = samples
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for node, lc in zip(layer_nodes, cal.layers.values(), strict=True):
        x = ref[node.input[0]][:, 0]  # drop the batch-1 axis: [N, C, ...]
        y = ref[node.output[0]][:, 0]
        if len(node.input) > 2:  # remove the bias Relax adds after the binding
            bias = inits[node.input[2]]
            y = y - (bias.reshape(-1, 1, 1) if node.op_type == "Conv" else bias)
        for st, t in ((lc.input_stats, x), (lc.output_stats, y)):
            mean_abs, apoz, mean, var, count = _np_stats(t, 1)  # NCHW and [N, K]: axis 1
            assert st.count == count
            np.testing.assert_allclose(st.mean_abs, mean_abs, rtol=1e-4, atol=1e-6)
            np.testing.assert_allclose(st.apoz, apoz, atol=1e-9)
            np.testing.assert_allclose(st.mean, mean, rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(st.var, var, rtol=1e-3, atol=1e-5)
    # the ReLU output feeding two convs has real zeros; the raw input has APoZ ~ 0.5
    assert cal.layers[list(cal)[1]].input_stats.apoz.max() > 0.2
    assert cal.layers[list(cal)[1]].input_var == cal.layers[list(cal)[2]].input_var


def test_reconstruction_rows_are_real_patches(tiny):
    """Y rows are the layer's output at sampled positions, X rows the input patches that
    produce them: Y == conv(X, W) per group (numpy), and every Y row occurs in
    onnxruntime's output of that layer."""
    model, samples, cal = tiny
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    layer_nodes = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm")]
    ref = _ort_tensors(model, samples, [n.output[0] for n in layer_nodes])
    for node, lc in zip(layer_nodes, cal.layers.values(), strict=True):
        w = inits[node.input[1]]
        assert lc.X.shape[0] == lc.Y.shape[0] == lc.rows > 0
        if lc.op == "conv2d":
            g = lc.attrs["groups"]
            co, ci_g = w.shape[0], w.shape[1]
            pred = np.concatenate([
                lc.X[:, k * ci_g:(k + 1) * ci_g].reshape(lc.rows, -1)
                @ w[k * (co // g):(k + 1) * (co // g)].reshape(co // g, -1).T
                for k in range(g)], axis=1)
            bias = inits[node.input[2]] if len(node.input) > 2 else 0.0
            outs = np.moveaxis(ref[node.output[0]][:, 0], 1, -1).reshape(-1, co) - bias
        else:
            pred = lc.X @ w.T
            outs = ref[node.output[0]][:, 0] - inits[node.input[2]]
        np.testing.assert_allclose(lc.Y, pred, rtol=1e-4, atol=1e-4)
        dist = np.abs(lc.Y[:, None, :] - outs[None]).max(-1).min(1)
        assert dist.max() < 1e-4, lc.name
    # rows: min(max_rows=40, positions) per layer; the Gemm has 1 position per sample
    assert [lc.rows for lc in cal.layers.values()] == [40, 40, 40, 40, N_SAMPLES]
    assert cal[list(cal)[1]].attrs["dilation"] == [2, 1]


def test_nhwc_conv_patches_against_numpy():
    """NHWC data / HWIO kernel: patches are stored channels first and Y == X.W."""
    import tvm
    from tvm import relax

    rng = np.random.default_rng(3)
    w = rng.standard_normal((3, 3, 4, 6)).astype(np.float32)  # HWIO
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 7, 7, 4), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, relax.const(w), strides=(2, 2), padding=(1, 1),
                                           data_layout="NHWC", kernel_layout="HWIO"))
            out = bb.emit_output(relax.op.nn.relu(y))
        bb.emit_func_output(out)
    mod = bb.get()
    samples = rng.standard_normal((3, 1, 7, 7, 4)).astype(np.float32)
    cal = calibrate(mod, samples, max_rows=20, progress=False)
    (lc,) = cal.layers.values()
    assert lc.X.shape == (20, 4, 3, 3) and lc.Y.shape == (20, 6)
    w_oihw = w.transpose(3, 2, 0, 1)
    np.testing.assert_allclose(lc.Y, lc.X.reshape(20, -1) @ w_oihw.reshape(6, -1).T,
                               rtol=1e-4, atol=1e-4)
    mean_abs, apoz, *_ = _np_stats(samples[:, 0], 3)
    np.testing.assert_allclose(lc.input_stats.mean_abs, mean_abs, rtol=1e-5)
    np.testing.assert_allclose(lc.input_stats.apoz, apoz)
    assert isinstance(mod, tvm.IRModule)


def test_save_load_roundtrip(tiny, tmp_path):
    """save() then load() restores every array and attribute; no temporary file remains."""
    _, _, cal = tiny
    path = cal.save(tmp_path / "cal.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cal.npz"]
    back = Calibration.load(path)
    assert list(back) == list(cal) and back.n_samples == cal.n_samples
    assert back.fingerprint == cal.fingerprint and back.meta == cal.meta
    for name in cal:
        a, b = cal[name], back[name]
        assert (a.op, a.input_var, a.attrs, a.skipped) == (b.op, b.input_var, b.attrs,
                                                           b.skipped)
        np.testing.assert_array_equal(a.X, b.X)
        np.testing.assert_array_equal(a.Y, b.Y)
        for s1, s2 in ((a.input_stats, b.input_stats), (a.output_stats, b.output_stats)):
            assert s1.count == s2.count
            for k in ("mean_abs", "apoz", "mean", "var"):
                np.testing.assert_array_equal(getattr(s1, k), getattr(s2, k))
    with pytest.raises(HCPruneError, match="not found"):
        Calibration.load(tmp_path / "missing.npz")
    np.savez(tmp_path / "other.npz", a=np.zeros(2))
    with pytest.raises(HCPruneError, match="cannot read"):
        Calibration.load(tmp_path / "other.npz")


def test_memory_bound_and_fingerprint(tiny):
    """max_bytes bounds X+Y of all layers together; 0 keeps statistics only."""
    from tvm.relax.frontend.onnx import from_onnx

    model, samples, full = tiny
    mod = from_onnx(model)
    assert full.matches(mod)
    row_bytes = sum(lc.X[0].nbytes + lc.Y[0].nbytes for lc in full.layers.values())
    budget = 10 * row_bytes + row_bytes // 2
    small = calibrate(mod, samples[:4], max_rows=1000, max_bytes=budget, progress=False)
    assert small.nbytes <= budget
    assert small.meta["rows_per_layer"] == 10
    none = calibrate(mod, samples[:2], max_bytes=0, progress=False)
    assert none.nbytes == 0
    assert all(lc.X is None and "max_bytes" in lc.skipped for lc in none.layers.values())
    np.testing.assert_allclose(none[list(none)[0]].input_stats.mean_abs,
                               _np_stats(samples[:2, 0], 1)[0], rtol=1e-5)


def test_bad_samples(tiny):
    """Empty, wrongly shaped, wrongly typed or NaN samples and bad limits are refused."""
    from tvm.relax.frontend.onnx import from_onnx

    model, samples, _ = tiny
    mod = from_onnx(model)
    cases = [
        (samples[:0], "empty"),
        (np.zeros((2, 1, 3, 9, 9), np.float32), r"sample shape \[1, 3, 9, 9\]"),
        (samples.astype(np.float64), "float64 but the model input"),
        (np.where(np.arange(samples.size).reshape(samples.shape) == 7, np.nan, samples)
         .astype(np.float32), "NaN or Inf"),
        ([], "empty"),
    ]
    for bad, msg in cases:
        with pytest.raises(HCPruneError, match=msg):
            calibrate(mod, bad, progress=False)
    with pytest.raises(HCPruneError, match="max_rows"):
        calibrate(mod, samples, max_rows=0, progress=False)
    with pytest.raises(HCPruneError, match="no calibration for binding"):
        _ = tiny[2]["nope"]


def test_module_without_layers_is_refused():
    """A module with no conv2d/matmul has nothing to calibrate."""
    from tvm import relax

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 4), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.nn.relu(x))
        bb.emit_func_output(out)
    with pytest.raises(HCPruneError, match="no conv2d or matmul"):
        calibrate(bb.get(), np.ones((2, 1, 4), np.float32), progress=False)
