"""Pixel-vectorised 1x1 conv kernel (tvm_hcprune.backend.cpu.pointwise): numerics against TVM's
default pipeline, every output written exactly once, routing and the remainder-free path."""

import numpy as np
import pytest
import tvm
from test_schedule_conv import check_against_default, conv_module
from test_schedule_grouped import write_counts

from tvm_hcprune.backend.cpu import pointwise as pw
from tvm_hcprune.backend.cpu.pack import PackWeightsForCPU
from tvm_hcprune.backend.pipeline import scheduled_kernels
from tvm_hcprune.errors import HCPruneError
from tvm_hcprune.hardware import profile_for

TARGET = tvm.target.Target({"kind": "llvm", "mcpu": "haswell", "num-cores": 2})

CASES = {
    # ic, oc, (h, w), epilogue
    "aligned_16x16": (16, 48, (16, 16), "bias_relu"),
    "odd_channels_w14": (20, 36, (14, 14), "bias_clip"),  # W not a multiple of the vector
    "odd_h_w28": (8, 13, (15, 28), "bias_hswish"),  # H odd, OC prime
    "reduction_w56": (40, 8, (4, 56), "bias_residual"),  # oc < ic at W >= 56
    "one_output_channel": (24, 1, (4, 64), "bias"),
    # input 2.3 MB: over half of the L2 of every host seen (Zen 3-5 1 MB or less, Intel
    # Sapphire/Emerald Rapids 2 MB); the schedules size their loop order by the host's L2
    "spatial_major_large_input": (64, 20, (80, 112), "bias_relu"),
}


def _module(case):
    ic, oc, hw, epi = CASES[case]
    return conv_module(ic, oc, hw, 1, epilogue=epi)


def _kernel(mod):
    # the pixel-vectorised kernel serves NCHW activations (channel-blocked ones take the
    # blocked kernel), so these tests compile without the blocked layout
    kernels = scheduled_kernels(mod, TARGET, blocked_layout=False)
    assert len(kernels) == 1 and "pwconv2d" in next(iter(kernels)), kernels
    return next(iter(kernels.values()))


@pytest.mark.parametrize("case", sorted(CASES))
def test_pointwise_matches_default(case):
    """1x1 convs on the pixel-vectorised kernel give TVM's default output (rtol 1e-5)."""
    mod = _module(case)
    _kernel(mod)
    check_against_default(mod, blocked_layout=False)


@pytest.mark.parametrize(
    "case", ["odd_channels_w14", "odd_h_w28", "reduction_w56", "spatial_major_large_input"])
def test_pointwise_writes_every_output_once(case):
    """Per-tile write-back covers exactly the tile: each output element written once."""
    np.testing.assert_array_equal(write_counts(_kernel(_module(case))), 1.0)


def test_aligned_pointwise_is_remainder_free():
    """Channels a multiple of the tile rows and W a multiple of the vector: no input copy,
    no padded weight rows, vectorised unpredicated write-back, epilogue inlined."""
    func = _kernel(conv_module(16, 48, (16, 16), 1, epilogue="bias_relu"))
    script = func.script()
    assert "hcp_pwpad" not in script and "T.where" not in script
    wshape = [int(s) for s in func.params[1].shape]  # [OC / rows, IC, rows]
    assert wshape[0] * wshape[2] == 48 and wshape[1] == 16
    assert script.count("T.vectorized") >= 3 and "T.max" in script


def test_routing_between_kernels():
    """Small maps with a channel reduction keep the channel-blocked kernel."""
    assert pw.prefer_pointwise(32, 192, 28, 28) and pw.prefer_pointwise(144, 24, 56, 56)
    assert not pw.prefer_pointwise(960, 160, 7, 7) and not pw.prefer_pointwise(384, 64, 14, 14)
    assert pw.prefer_pointwise(16, 96, 112, 112)  # few input channels, large output
    assert not pw.prefer_pointwise(64, 256, 56, 56)  # input re-read per channel block
    kernels = scheduled_kernels(conv_module(64, 32, (7, 7), 1), TARGET, blocked_layout=False)
    assert [k for k in kernels if "pwconv2d" not in k] == list(kernels)


def test_plan_pointwise_fits_registers():
    """The tile's accumulators leave room for the loaded vectors and the broadcast."""
    for oc, h, w in [(48, 16, 16), (13, 15, 28), (1, 14, 16), (1280, 7, 7), (64, 56, 56)]:
        plan = pw.plan_pointwise(oc, h, w, 8, 16)
        assert plan.rows * plan.ty * plan.vecs <= 12
        assert plan.oc_padded % plan.rows == 0 and plan.oc_padded >= oc
        assert plan.w_padded % 8 == 0 and plan.w_padded - w < 8


def test_loop_order_follows_cache_sizes():
    """Pixel-tile-major for inputs over half of L2 with small weights, else weight-major."""
    assert pw.plan_pointwise(20, 40, 56, 8, 16, ic=64).spatial_major
    assert not pw.plan_pointwise(192, 28, 28, 8, 16, ic=32).spatial_major  # input fits L2
    assert not pw.plan_pointwise(96, 112, 112, 8, 16, ic=16).spatial_major  # wide expansion
    ic, _oc, (h, w), _ = CASES["spatial_major_large_input"]
    l2 = profile_for(TARGET).l2_bytes
    assert 4 * ic * h * w > l2 // 2, f"the case's input fits this host's L2 ({l2} bytes)"
    ann = _kernel(_module("spatial_major_large_input")).script()
    assert '"hcp_spatial_major": 1' in ann


def test_bad_pointwise_option():
    with pytest.raises(HCPruneError, match="pointwise"):
        PackWeightsForCPU(pointwise="sometimes")
