"""Relax passes that rewrite the IR and never run it, one per module: ``PruneChannels``
(score, plan and remove channels), ``ApplyPrunePlan`` (a saved plan), ``SparsifyBlocks``
(zero weight blocks) and ``FoldBatchNorm``.
The passes that run the model on data (``Reconstruct``, ``ReestimateBatchNorm``) live in
:mod:`tvm_hcprune.recovery`. Imported lazily."""

from __future__ import annotations

from tvm_hcprune.utils.lazy import lazy_exports

_EXPORTS = {
    "PruneChannels": "tvm_hcprune.transform.prune_channels",
    "ApplyPrunePlan": "tvm_hcprune.transform.apply_plan",
    "FoldBatchNorm": "tvm_hcprune.transform.fold_batch_norm",
    "SparsifyBlocks": "tvm_hcprune.transform.sparsify_blocks",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS, globals())
