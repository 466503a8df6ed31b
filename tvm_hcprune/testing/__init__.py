"""Testing helpers: model builders and the mask-equivalence oracle."""

from __future__ import annotations

import importlib

_EXPORTS = {
    "masked_reference": "tvm_hcprune.testing.oracle",
    "run_relax": "tvm_hcprune.testing.oracle",
}


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tvm_hcprune.testing' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
