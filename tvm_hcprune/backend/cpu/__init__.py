"""The CPU backend: channel-blocked kernels (:mod:`.conv2d_nchwc`, :mod:`.pointwise`,
:mod:`.dense`), the Relax passes that route the model to them and the TIR rules that
schedule them (imported lazily):

``PadChannels``
    Relax pass giving channel groups off the block zero channels, so they stay blocked
    (:mod:`.pad_channels`).
``BlockChannelLayout``
    Relax pass keeping NCHW activations channel-blocked (``NCHW{lanes}c``) between convs,
    layout transforms only at the graph's boundaries (:mod:`.layout`).
``PackWeightsForCPU``
    Relax pass routing conv2d (NCHW/NHWC, grouped, depthwise) and matmul to channel-blocked
    kernels with weights packed at compile time (:mod:`.pack`).
``ApplyCPURules``
    TIR pass scheduling those kernels, epilogues fused, after FuseOps/FuseTIR
    (:mod:`.rules`); everything else keeps TVM's default.
"""

from __future__ import annotations

from tvm_hcprune.utils.lazy import lazy_exports

_EXPORTS = {
    "BlockChannelLayout": "tvm_hcprune.backend.cpu.layout",
    "PadChannels": "tvm_hcprune.backend.cpu.pad_channels",
    "PackWeightsForCPU": "tvm_hcprune.backend.cpu.pack",
    "ApplyCPURules": "tvm_hcprune.backend.cpu.rules",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS, globals())
