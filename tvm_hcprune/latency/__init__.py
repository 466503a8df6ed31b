"""Latency models of a model's prunable layers on a target: measured look-up tables
(:func:`latency_table`, cached on disk) and a roofline estimate (:class:`RooflineModel`).
They compile (``backend``) and time kernels; the budget allocation over them lives in
``planning.budget``."""

from tvm_hcprune.latency.measured import MeasuredLatency
from tvm_hcprune.latency.model import (
    LatencyModel,
    LatencyTable,
    RooflineModel,
    default_cache_dir,
    latency_table,
    target_key,
)

__all__ = ["LatencyModel", "LatencyTable", "MeasuredLatency", "RooflineModel",
           "default_cache_dir", "latency_table", "target_key"]
