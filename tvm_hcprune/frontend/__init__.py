"""Models in: ONNX, TFLite and PyTorch (``torch.export``) import with static shapes and
constant weights, and the clean-up of the importers' output
(:class:`~tvm_hcprune.frontend.normalize.NormalizeImport`) that makes it uniform for the
analysis and the CPU backend."""

from tvm_hcprune.frontend.load import load_onnx, load_tflite
from tvm_hcprune.frontend.pytorch import load_torch

__all__ = ["load_onnx", "load_tflite", "load_torch"]
