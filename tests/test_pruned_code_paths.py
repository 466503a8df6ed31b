"""A pruned model keeps the fast code paths of its dense original.

Issue #13 asks that a pruned model is never slower than its dense build, and that "where a
width makes a layer slower, the build must still pick the faster code path". Unit tests
are never timed here (the benchmark `benchmarks/peer.py` times the real models); this is
the structural check behind it: pruned to widths off every SIMD block (``align=1``), each
conv still runs on one of tvm_hcprune's scheduled kernels of the same kind as in the dense
build (none falls back to TVM's unscheduled default, 13-80x slower), and every conv the
dense build runs with Winograd still does (its input channels are padded to whole vectors
by ``PadChannels`` where needed). Compile-only, both ISAs.

A merged expansion + depthwise kernel (``FuseInvertedResidual``) counts as its two convs:
the pruned build may merge fewer pairs, where a group narrower than a block stays NCHW.

Not asserted: the number of layout transforms. A pruned group that reaches a flatten and
the classifier (ResNet's last stage, 512 -> 360 on 16 lanes) or is narrower than a block
is not padded and stays NCHW, so the blocked region can end one stage earlier.
"""

from collections import Counter

import pytest
import tvm
from tvm.relax.frontend.onnx import from_onnx

import tvm_hcprune as hc
from tvm_hcprune.backend.pipeline import prepare_passes, schedule_passes
from tvm_hcprune.testing import onnx_models
from tvm_hcprune.utils.relax import calls

TARGETS = {
    "8_lanes": tvm.target.Target({"kind": "llvm", "mcpu": "haswell", "num-cores": 2}),
    "16_lanes": tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512", "num-cores": 2}),
}
MODELS = {
    # stage 1 of the ResNet runs at 16x16 (64 Winograd tiles); MobileNetV2's 24/32-channel
    # stages are off the 16-lane block before pruning already
    "resnet18": lambda: onnx_models.resnet(18, image=64, num_classes=10),
    "mobilenet_v2": lambda: onnx_models.mobilenet_v2(0.5, image=64, num_classes=10),
}


def _kinds(mod, target) -> Counter:
    """Kernel kinds of the scheduled build's calls: ``hcp_<kind>`` for tvm_hcprune's kernels,
    ``layout_transform``, and ``tvm_conv`` for a conv left to TVM's default lowering."""
    passes = prepare_passes(target, True, True) + schedule_passes(target, None, True, True)
    with target:
        lowered = tvm.transform.Sequential(passes)(mod)
    kinds = Counter()
    for call in calls(lowered):  # call sites: identical kernels are one function
        if call.op.name != "relax.call_tir":
            continue
        name = call.args[0].name_hint
        if "hcp_" in name:  # a merged expansion + depthwise kernel counts as both convs
            for part in name.split("hcp_")[1:]:
                kinds["hcp_" + part.split("_")[0].rstrip("0123456789")] += 1
        elif "layout_transform" in name:
            kinds["layout_transform"] += 1
        elif "conv2d" in name:
            kinds["tvm_conv"] += 1
    return kinds


@pytest.mark.parametrize("target", sorted(TARGETS))
@pytest.mark.parametrize("model", sorted(MODELS))
def test_pruned_build_keeps_dense_code_paths(model, target):
    tgt = TARGETS[target]
    dense = from_onnx(MODELS[model]())
    pruned, report = hc.prune(dense, ratio=0.3, align=4)
    widths = [g.after for g in report.groups if g.after < g.before]
    assert widths and any(w % 16 for w in widths), "the test needs widths off the block"
    before, after = _kinds(dense, tgt), _kinds(pruned, tgt)
    assert before["tvm_conv"] == 0 and after["tvm_conv"] == 0, after
    assert after["hcp_wgconv2d"] == before["hcp_wgconv2d"], (before, after)
    convs = ("hcp_conv2d", "hcp_wgconv2d", "hcp_pwconv2d", "hcp_dwconv2d")
    assert sum(after[k] for k in convs) == sum(before[k] for k in convs), (before, after)
