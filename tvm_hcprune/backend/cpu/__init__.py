"""Schedules: CPU schedule rules, MetaSchedule tuning and database handling.

CPU rules (imported lazily, nothing heavy at import):

``BlockChannelLayout``
    Relax pass keeping NCHW activations channel-blocked (``NCHW{lanes}c``) between convs,
    layout transforms only at the graph's boundaries (:mod:`.layout`).
``PackWeightsForCPU``
    Relax pass routing conv2d (NCHW/NHWC, grouped, depthwise) and matmul to channel-blocked
    kernels with weights packed at compile time (:mod:`.rewrite`).
``ApplyCPURules``
    TIR pass scheduling those kernels, epilogues fused, after FuseOps/FuseTIR
    (:mod:`.cpu_rules`); everything else keeps TVM's default.
"""

from __future__ import annotations

from tvm_hcprune.utils.lazy import lazy_exports

_EXPORTS = {
    "BlockChannelLayout": "tvm_hcprune.schedule.layout",
    "PackWeightsForCPU": "tvm_hcprune.schedule.rewrite",
    "ApplyCPURules": "tvm_hcprune.schedule.cpu_rules",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS, globals())
