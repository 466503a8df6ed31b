"""Relax passes of tvm_hcprune, one per module (imported lazily)."""

from __future__ import annotations

from tvm_hcprune.utils.lazy import lazy_exports

_EXPORTS = {
    "PruneChannels": "tvm_hcprune.transform.prune_channels",
    "ApplyPrunePlan": "tvm_hcprune.transform.apply_plan",
    "FoldBatchNorm": "tvm_hcprune.transform.fold_batch_norm",
    "Reconstruct": "tvm_hcprune.transform.reconstruct",
    "ReestimateBatchNorm": "tvm_hcprune.transform.bn_reestimate",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS, globals())
