"""Everything that runs the model on data: running a module on samples (:mod:`.runner`),
calibration statistics (:mod:`.calibration`), least-squares reconstruction
(:mod:`.reconstruct`), batch-norm re-estimation (:mod:`.bn_reestimate`), sensitivity scans
and allocation (:mod:`.sensitivity`), fine-tuning (:mod:`.finetune`) and accuracy
(:mod:`.evaluation`). The Relax passes here (``Reconstruct``, ``ReestimateBatchNorm``) run
the model, which is why they are not in :mod:`tvm_hcprune.transform`. Imported lazily."""

from __future__ import annotations

from tvm_hcprune.utils.lazy import lazy_exports

_EXPORTS = {
    "Reconstruct": "tvm_hcprune.recovery.reconstruct",
    "ReconstructConfig": "tvm_hcprune.recovery.reconstruct",
    "ReestimateBatchNorm": "tvm_hcprune.recovery.bn_reestimate",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS, globals())
