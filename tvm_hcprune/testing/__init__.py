"""Testing helpers: ONNX model builders (:mod:`.onnx_models`), Relax ones
(:mod:`.relax_models`), the mask-equivalence
oracle (:func:`masked_reference`), what compiled code allocates on the heap
(:func:`heap_workspaces`) and ``run_relax`` (from :mod:`tvm_hcprune.recovery.runner`)."""

from __future__ import annotations

from tvm_hcprune.utils.lazy import lazy_exports

_EXPORTS = {
    "assert_matches_default": "tvm_hcprune.testing.codegen",
    "heap_workspaces": "tvm_hcprune.testing.codegen",
    "masked_reference": "tvm_hcprune.testing.oracle",
    "run_relax": "tvm_hcprune.recovery.runner",
}


__getattr__ = lazy_exports(__name__, _EXPORTS, globals())
