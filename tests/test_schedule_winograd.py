"""Winograd F(2x2, 3x3) kernel: the transform math against direct convolution (numpy), the
routing decision, the schedule rule, and numerics against TVM's default pipeline on odd
shapes, both block widths."""

import re

import numpy as np
import pytest
import tvm

from tvm_hcprune.backend.cpu import winograd as wg
from tvm_hcprune.backend.cpu.pack import PackWeightsForCPU
from tvm_hcprune.backend.pipeline import get_pipeline, scheduled_kernels
from tvm_hcprune.errors import HCPruneError
from tvm_hcprune.hardware import profile_for
from tvm_hcprune.testing import assert_matches_default, heap_workspaces
from tvm_hcprune.testing.relax_models import blocked_conv3x3 as winograd_module

TARGET_8 = tvm.target.Target({"kind": "llvm", "mcpu": "haswell", "num-cores": 2})
TARGET_16 = tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512", "num-cores": 2})
HOST_AVX512 = profile_for("llvm").isa == "avx512"


def _direct(x, w):
    """3x3, stride 1, pad 1 convolution of ``x`` [C, H, W] by ``w`` [O, C, 3, 3] (float64)."""
    c, h, wd = x.shape
    xp = np.zeros((c, h + 2, wd + 2))
    xp[:, 1:-1, 1:-1] = x
    out = np.zeros((w.shape[0], h, wd))
    for ky in range(3):
        for kx in range(3):
            out += np.einsum("oc,chw->ohw", w[:, :, ky, kx], xp[:, ky:ky + h, kx:kx + wd])
    return out


def test_transforms_equal_direct_convolution():
    """``A^T [ (G g G^T) . (B^T d B) ] A`` with the packed weight of ``winograd_weight`` and
    the additions of ``_bt``/``_at`` written out equals direct convolution on every 2x2 tile
    of an odd-sized image (float64 transforms, so any wrong sign or index shows)."""
    rng = np.random.default_rng(0)
    c, o, h, w = 8, 16, 5, 7
    x = rng.standard_normal((c, h, w))
    wt = rng.standard_normal((o, c, 3, 3)).astype(np.float32)
    plan = wg.WinogradPlan(ib=8, ob=16, tile_w=4, th=3, tw_padded=4, spatial_major=True,
                           lanes=8)
    u = wg.winograd_weight(wt, plan).astype(np.float64)  # [16, OCB, ICB, IB, OB]
    u = u.transpose(0, 1, 4, 2, 3).reshape(16, o, c)
    bt = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float64)
    at = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64)
    xp = np.zeros((c, 2 * plan.th + 2, 2 * plan.tw_padded + 2))
    xp[:, 1:h + 1, 1:w + 1] = x
    ref = _direct(x, wt.astype(np.float64))
    for ty in range(plan.th):
        for tx in range((w + 1) // 2):
            d = xp[:, 2 * ty:2 * ty + 4, 2 * tx:2 * tx + 4]
            v = np.einsum("ia,cab,jb->ijc", bt, d, bt).reshape(16, c)
            m = np.einsum("eoc,ec->eo", u, v).reshape(4, 4, o)
            y = np.einsum("ri,ijo,sj->ors", at, m, at)
            ys, xs = slice(2 * ty, min(2 * ty + 2, h)), slice(2 * tx, min(2 * tx + 2, w))
            np.testing.assert_allclose(y[:, :ys.stop - ys.start, :xs.stop - xs.start],
                                       ref[:, ys, xs], rtol=1e-5, atol=1e-5)


def test_prefer_winograd_decisions():
    """Large images with enough tiles take Winograd; 7x7 (16 tiles: the 16/9 larger weight
    is not paid back), unaligned input channels and tiny widths do not."""
    assert wg.prefer_winograd(64, 64, 56, 56, 16)
    assert wg.prefer_winograd(256, 256, 14, 14, 16)
    assert wg.prefer_winograd(16, 48, 56, 56, 16)
    assert not wg.prefer_winograd(512, 512, 7, 7, 16)
    assert not wg.prefer_winograd(24, 24, 56, 56, 16)
    assert not wg.prefer_winograd(8, 8, 56, 56, 8)


def test_bad_option_is_refused():
    with pytest.raises(HCPruneError, match="winograd must be True, False or 'always'"):
        PackWeightsForCPU(winograd="yes")


CASES = {
    # ic, oc, (h, w), epilogue[, batch]: odd sizes (partial tiles in both directions), one
    # input channel block, more output blocks than input ones, a residual epilogue, batch 2
    "odd_hw_bias_relu": (16, 16, (11, 13), "bias_relu"),
    "batch2": (32, 48, (12, 13), "bias_relu", 2),
    "wide_out_residual": (32, 32, (12, 15), "residual"),
    "widen_hswish": (16, 48, (9, 15), "hswish"),
    "narrow_out": (48, 32, (14, 9), "bias_relu"),
}


def _check(case, target):
    ic, oc, hw, epi, *batch = CASES[case]
    batch = batch[0] if batch else 1
    mod = winograd_module(ic, oc, hw, epi, batch)
    kernels = scheduled_kernels(mod, target)
    wino = [f for name, f in kernels.items() if "wgconv" in name]
    assert len(wino) == 1, list(kernels)
    assert "tirx.is_scheduled" in wino[0].script()
    x = np.random.default_rng(1).standard_normal((batch, ic, *hw)).astype("float32")
    assert_matches_default(mod, target, x)


@pytest.mark.parametrize("case", sorted(CASES))
def test_winograd_matches_default_8_lanes(case):
    """The Winograd kernel (AVX2 blocks) gives TVM's default pipeline's output."""
    _check(case, TARGET_8)


@pytest.mark.skipif(not HOST_AVX512, reason="the host CPU has no AVX-512 to run 16-lane code")
@pytest.mark.parametrize("case", sorted(CASES))
def test_winograd_matches_default_16_lanes(case):
    """The Winograd kernel (AVX-512 blocks) gives TVM's default pipeline's output."""
    _check(case, TARGET_16)


@pytest.mark.parametrize("target", [TARGET_8, TARGET_16], ids=["8_lanes", "16_lanes"])
def test_winograd_register_tile_is_stack_alloca(target):
    """Only the transformed input and the 16 GEMM results are workspaces; the register tile
    of each GEMM is a stack alloca (compile-only, both ISAs)."""
    # one kernel per layer (a chain's intermediates are workspaces by design)
    ex = tvm.compile(winograd_module(32, 32, (12, 15), "bias_relu"), target,
                     relax_pipeline=get_pipeline(target, strict=True,
                                                  chain_kernels=False))
    calls = heap_workspaces(ex)
    assert any(name.startswith("hcp_wgm") for name in calls), calls
    assert all(re.fullmatch(r"hcp_wg[vm]|hcp_pwpad|hcp_pack", name) for name in calls), calls


def test_winograd_off_keeps_direct_kernel():
    """``PackWeightsForCPU(winograd=False)`` routes the same conv to the direct kernel."""
    from tvm_hcprune.backend.cpu.layout import BlockChannelLayout

    mod = winograd_module(16, 16, (11, 13), "bias_relu")
    names = {}
    for option in (True, False):
        with TARGET_8:
            out = tvm.transform.Sequential([BlockChannelLayout(8), PackWeightsForCPU(
                lanes=8, registers=16, winograd=option)])(mod)
        names[option] = sorted(gv.name_hint for gv, f in out.functions_items()
                               if isinstance(f, tvm.tirx.PrimFunc))
    assert any("wgconv" in n for n in names[True]) and not any("wgconv" in n
                                                                 for n in names[False])
