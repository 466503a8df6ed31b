"""Relax passes of tvm_hcprune, one per module (imported lazily)."""

from __future__ import annotations

import importlib

_EXPORTS = {
    "PruneChannels": "tvm_hcprune.transform.prune_channels",
    "ApplyPrunePlan": "tvm_hcprune.transform.apply_plan",
    "FoldBatchNorm": "tvm_hcprune.transform.fold_batch_norm",
    "Reconstruct": "tvm_hcprune.transform.reconstruct",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tvm_hcprune.transform' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
