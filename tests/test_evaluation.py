"""evaluate(): TVM vs onnxruntime on the bundled model, numbers vs numpy, bad input."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from tvm_hcprune.errors import HCPruneError
from tvm_hcprune.recovery.evaluation import EvalResult, evaluate
from tvm_hcprune.recovery.runner import OnnxRuntimeModel, compile_module, module_input
from tvm_hcprune.zoo.datasets import Dataset, mnist_test
from tvm_hcprune.zoo.models import bundled_model

N = 100


@pytest.fixture(scope="module")
def mnist():
    """The bundled model compiled once (tests share the executable: compiling takes 5-25 s
    on the shared 2-core machine)."""
    from tvm.relax.frontend.onnx import from_onnx

    mod = from_onnx(onnx.load(bundled_model("mnist_resnet")))
    ds = mnist_test(N)
    ort_model = OnnxRuntimeModel(bundled_model("mnist_resnet"))
    ort_logits = np.stack([ort_model(x)[0] for x in ds.samples])
    return mod, compile_module(mod), ds, ort_model, ort_logits


def _tiny_module():
    """x[1, 4] @ W[4, 3] -> logits [1, 3]: compiles in about a second."""
    from tvm import relax

    w = np.arange(12, dtype=np.float32).reshape(4, 3) - 5.0
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 4), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.matmul(x, relax.const(w)))
        bb.emit_func_output(out)
    return bb.get(), w


def test_tvm_agrees_with_onnxruntime_on_bundled_model(mnist):
    """The bundled model compiled by TVM gives onnxruntime's logits (1e-4) and the same
    top-1 on every sample: agreement 1.0."""
    import tvm
    from tvm import relax

    mod, ex, ds, ort_model, ort_logits = mnist
    vm = relax.VirtualMachine(ex, tvm.cpu())
    tvm_logits = np.stack([vm["main"](tvm.runtime.tensor(x)).numpy()[0]
                           for x in ds.samples[:40]])
    np.testing.assert_allclose(tvm_logits, ort_logits[:40], rtol=1e-4, atol=1e-4)

    res = evaluate(ex, ds, reference=ort_model, progress=False)
    ort_pred = ort_logits.argmax(1)
    assert res.agreement == 1.0
    np.testing.assert_array_equal(res.predictions, ort_pred)
    assert res.top1 == res.top1_reference == float((ort_pred == ds.labels).mean())
    assert res.top1 >= 0.97  # the bundled model's card says 98.4% on all 1,000
    assert res.nonfinite == 0 and res.n == N


def test_numbers_equal_numpy(mnist):
    """top1, correct, agreement and top1_reference equal the numpy computation from
    onnxruntime's predictions, with shuffled labels and a perturbed reference so that
    none of them is trivially 0 or 1."""
    _, ex, ds, ort_model, ort_logits = mnist
    rng = np.random.default_rng(0)
    labels = ds.labels.copy()
    flip = rng.random(N) < 0.3
    labels[flip] = rng.integers(0, 10, flip.sum())
    ref = ort_logits.argmax(1).copy()
    change = rng.random(N) < 0.2
    ref[change] = (ref[change] + 1) % 10
    res = evaluate(ex, (ds.samples, labels), reference=ref, progress=False)
    pred = ort_logits.argmax(1)
    assert res.correct == int((pred == labels).sum())
    assert res.top1 == pytest.approx((pred == labels).mean())
    assert res.agreement == pytest.approx((pred == ref).mean())
    assert res.top1_reference == pytest.approx((ref == labels).mean())
    assert 0.05 < res.top1 < 0.95 and 0.05 < res.agreement < 0.95
    # reference given as an EvalResult; samples without the batch axis (needs a model that
    # declares its input shape: an IRModule or onnxruntime, not a bare executable)
    again = evaluate(ort_model, (ds.samples[:, 0], labels), reference=res, progress=False)
    assert again.agreement == 1.0 and again.top1 == res.top1
    d = again.to_dict()
    assert d["n"] == N and d["top1"] == res.top1 and d["agreement"] == 1.0


def test_bad_input(mnist):
    """Empty data, wrong shape or dtype, NaN, bad labels and weight parameters raise
    HCPruneError naming the problem."""
    _, ex, ds, ort_model, _ = mnist
    x, y = ds.samples[:4], ds.labels[:4]
    nan = x.copy()
    nan[2, 0, 0, 5, 5] = np.nan
    # (data, message for a bare executable, message for a model that declares its input)
    cases = [
        ((x[:0], y[:0]), "empty", "empty"),
        ((x.astype(np.float64), y), "rejected a sample .* dtype float64",
         "float64 but the model input 'input' is float32"),
        ((np.zeros((2, 1, 1, 28, 27), np.float32), y[:2]), "rejected a sample of shape",
         r"sample shape \[1, 1, 28, 27\] does not match the model input 'input'"),
        ((nan, y), *["1 of 4 samples contain NaN or Inf .first: sample 2"] * 2),
        ((x, np.array([0, 1, 2, 10])), *["labels go up to 10 but the model outputs 10"] * 2),
        ((x, y[:3]), *["one integer label per sample"] * 2),
        ((x, y.astype(np.float32)), *["labels must be integers"] * 2),
        ((x, np.array([0, -1, 2, 3])), *[">= 0"] * 2),
        (x, *["needs labels"] * 2),
    ]
    for data, msg_ex, msg_declared in cases:
        with pytest.raises(HCPruneError, match=msg_ex):
            evaluate(ex, data, progress=False)
        with pytest.raises(HCPruneError, match=msg_declared):
            evaluate(ort_model, data, progress=False)
    with pytest.raises(HCPruneError, match="reference predictions have shape"):
        evaluate(ex, (x, y), reference=np.zeros(3, np.int64), progress=False)
    with pytest.raises(HCPruneError, match="load it first"):
        evaluate(str(bundled_model()), (x, y), progress=False)
    calls = []

    def shrinking(s):
        calls.append(1)
        return np.zeros((1, 10 if len(calls) == 1 else 3))

    with pytest.raises(HCPruneError, match="one score per class"):
        evaluate(shrinking, (x, y), progress=False)
    with pytest.raises(HCPruneError, match="samples but"):
        Dataset("bad", x, y[:2], ("a",))


def test_module_input_refuses_weight_parameters():
    """A module that takes its weights as parameters cannot be evaluated as is."""
    from tvm.relax.frontend.onnx import from_onnx

    mod = from_onnx(onnx.load(bundled_model()), keep_params_in_input=True)
    with pytest.raises(HCPruneError, match="keep_params_in_input=False"):
        module_input(mod)
    name, shape, dtype = module_input(from_onnx(onnx.load(bundled_model())))
    assert (name, shape, dtype) == ("input", (1, 1, 28, 28), "float32")


def test_irmodule_is_compiled_and_checked():
    """evaluate() compiles an IRModule, checks samples against its declared input, and
    its numbers equal numpy's x @ W arg-max."""
    mod, w = _tiny_module()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((30, 1, 4)).astype(np.float32)
    labels = rng.integers(0, 3, 30)
    res = evaluate(mod, (x, labels), reference=lambda s: -(s @ w), progress=False)
    pred = (x[:, 0] @ w).argmax(1)
    np.testing.assert_array_equal(res.predictions, pred)
    assert res.top1 == pytest.approx((pred == labels).mean())
    assert res.agreement == pytest.approx((pred == (-(x[:, 0] @ w)).argmax(1)).mean())
    msg = (r"sample shape \[1, 5\] does not match the model input 'x' of shape \[1, 4\]; "
           r"give samples as an array \[N, 1, 4\]")
    with pytest.raises(HCPruneError, match=msg):
        evaluate(mod, (np.zeros((2, 1, 5), np.float32), labels[:2]), progress=False)


def test_callable_and_result_type():
    """A plain callable works as a model; EvalResult counts non-finite outputs."""
    x = np.zeros((3, 1, 2), np.float32)
    x[1] = 1.0

    def model(s):
        return np.array([[0.0, 1.0]]) if s.sum() > 0 else np.array([[np.nan, 0.0]])

    res = evaluate(model, (x, np.array([0, 1, 0])), progress=False)
    assert isinstance(res, EvalResult)
    # numpy's argmax of [nan, 0] is 0, the label of samples 0 and 2: still counted wrong
    assert res.nonfinite == 2 and res.correct == 1
    assert res.predictions.tolist() == [-1, 1, -1]
    nan_ref = evaluate(model, (x, np.array([0, 1, 0])), reference=model, progress=False)
    assert nan_ref.agreement == pytest.approx(1 / 3)  # two NaN outputs never agree


@pytest.mark.slow
def test_text_direction_classifier_tvm_agrees_with_onnxruntime():
    """rapidocr's direction classifier imported by load_onnx and compiled by TVM predicts
    what onnxruntime predicts on the rendered text lines, with >= 95% top-1 (~45 s)."""
    from tvm_hcprune.frontend.load import load_onnx
    from tvm_hcprune.zoo.datasets import text_direction
    from tvm_hcprune.zoo.models import model_path

    ds = text_direction(40)
    path = model_path("text_direction")
    mod = load_onnx(path, {"x": [1, 3, 48, 192]}, log=lambda msg: None)
    res = evaluate(mod, ds, reference=OnnxRuntimeModel(path), progress=False)
    assert res.agreement == 1.0
    assert res.top1 == res.top1_reference >= 0.95
