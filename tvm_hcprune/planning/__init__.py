"""Deciding what to remove: options (:class:`PruneConfig`), criteria (scores per channel),
the planner (scores -> kept channels, aligned to the hardware) and the JSON
:class:`PrunePlan`, the only contract between scoring and rewriting; also the plan's
application to the source ONNX model (:mod:`.export_onnx`). Nothing here runs the model."""

from tvm_hcprune.planning.config import PruneConfig
from tvm_hcprune.planning.plan import PrunePlan

__all__ = ["PruneConfig", "PrunePlan"]
