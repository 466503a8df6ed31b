"""Testing helpers: model builders and the mask-equivalence oracle."""

from __future__ import annotations

from tvm_hcprune.utils.lazy import lazy_exports

_EXPORTS = {
    "masked_reference": "tvm_hcprune.testing.oracle",
    "run_relax": "tvm_hcprune.testing.oracle",
}


__getattr__ = lazy_exports(__name__, _EXPORTS, globals())
