"""The ``VTAQuantize`` preset pass (``passes/vta.toml``): int8 quantisation on calibration
inputs and offload of the eligible layers to the VTA simulator, then TVM's default pipeline
for the host CPU, which runs the rest and calls the simulator for the offloaded layers."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from tvm_hcprune.errors import HCPruneError
from tvm_hcprune.hardware.presets import register_preset_pass
from tvm_hcprune.utils.relax import static_shape
from tvm_hcprune.vta.relax import offload, quantize

__all__ = ["split_samples"]


def split_samples(mod, samples) -> list:
    """``samples`` as a list of inputs of ``mod["main"]``'s (single) input shape: a list is
    kept, an array ``[N, *shape]`` or ``[N, *shape[1:]]`` (batch 1) is split.

    Examples
    --------
    >>> len(split_samples(mod, np.zeros((4, 1, 28, 28), "float32")))  # doctest: +SKIP
    4
    """
    if isinstance(samples, list | tuple):
        return [np.asarray(s, np.float32) for s in samples]
    shape = tuple(static_shape(mod["main"].params[0]))
    arr = np.asarray(getattr(samples, "samples", samples), np.float32)
    if arr.shape == shape:
        return [arr]
    if arr.shape[1:] == shape:
        return list(arr)
    if shape[0] == 1 and arr.shape[1:] == shape[1:]:
        return [arr[i:i + 1] for i in range(len(arr))]
    raise HCPruneError(f"calibration inputs of shape {arr.shape} do not fit the model input "
                       f"{shape}: give an array [N, {', '.join(map(str, shape[1:]))}] or a "
                       "list of inputs")


@register_preset_pass("VTAQuantize", schedule="vta", host_compiled=True)
def _vta_quantize(ctx):
    samples = ctx.calibration
    if samples is None:
        raise HCPruneError(
            "the VTA preset quantises the model to int8 on calibration inputs: pass a few real "
            "inputs, tvm_hcprune.build(mod, preset='vta', calibration=samples); the result "
            "runs with relax.VirtualMachine(ex, tvm.cpu()), the offloaded layers on the VTA "
            "simulator in this process")
    if hasattr(samples, "layers") and hasattr(samples, "meta"):
        raise HCPruneError("the VTA preset quantises on inputs, not on a Calibration: pass "
                           "the input samples as calibration=")

    @tvm.transform.module_pass(opt_level=0, name="VTAQuantize")
    def _offload(mod, _ctx):
        qmod, plan = quantize(mod, split_samples(mod, samples))
        return offload(qmod, plan, "vta")

    host = tvm.target.Target.current(allow_none=True) or tvm.target.Target({"kind": "llvm"})
    return [_offload, relax.get_default_pipeline(host)]
