"""Inverted-residual fusion: FuseInvertedResidual merges an expansion 1x1 conv with the
depthwise conv that reads it (before/after on the fused module), schedule_irb schedules the
merged kernel, and the model's output equals TVM's default pipeline on odd shapes, both
strides, a 5x5 window, batch 2 and bands of rows, on both block widths."""

import numpy as np
import pytest
import tvm
from tvm import relax

from tvm_hcprune.backend.cpu import rules
from tvm_hcprune.backend.cpu.fuse_irb import FuseInvertedResidual
from tvm_hcprune.backend.pipeline import prepare_passes, scheduled_kernels
from tvm_hcprune.hardware import profile_for
from tvm_hcprune.testing import assert_matches_default
from tvm_hcprune.testing.relax_models import inverted_residual

TARGET_8 = tvm.target.Target({"kind": "llvm", "mcpu": "haswell", "num-cores": 2})
TARGET_16 = tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512", "num-cores": 2})
HOST_AVX512 = profile_for("llvm").isa == "avx512"

CASES = {
    # ic, expand, (h, w), stride, kernel, batch[, activation]
    "odd_s1": (16, 48, (13, 11), 1, 3, 1),
    "odd_s2": (16, 32, (15, 13), 2, 3, 1),
    "bands_s2": (16, 48, (40, 24), 2, 3, 1),  # several row bands per channel block
    "window5_batch2": (16, 32, (12, 9), 1, 5, 2),
    "hswish": (16, 32, (11, 13), 2, 3, 1, "hswish"),  # reads the conv's result twice
}


def _merged(kernels: dict) -> list:
    return [f for name, f in kernels.items() if "dwconv" in name and "__" in name]


def _check(case, target):
    ic, expand, hw, stride, kernel, batch, *act = CASES[case]
    mod = inverted_residual(ic, expand, hw, stride, kernel, batch,
                            activation=act[0] if act else "relu6")
    merged = _merged(scheduled_kernels(mod, target))
    assert len(merged) == 1
    # one parallel region: the bands of rows, the expansion computed inside each task
    assert merged[0].script().count("T.parallel") == 1
    x = np.random.default_rng(1).standard_normal((batch, ic, *hw)).astype("float32")
    assert_matches_default(mod, target, x)


@pytest.mark.parametrize("case", sorted(CASES))
def test_irb_matches_default_8_lanes(case):
    """The merged expansion + depthwise kernel (AVX2 blocks) gives TVM's default output."""
    _check(case, TARGET_8)


@pytest.mark.skipif(not HOST_AVX512, reason="the host CPU has no AVX-512 to run 16-lane code")
@pytest.mark.parametrize("case", sorted(CASES))
def test_irb_matches_default_16_lanes(case):
    """The merged expansion + depthwise kernel (AVX-512 blocks) gives TVM's default output."""
    _check(case, TARGET_16)


def _fused(mod, target, lanes, merge: bool):
    passes = prepare_passes(target)
    fuse_tir = [p.info.name for p in passes].index("FuseTIR")
    passes = [p for p in passes[:fuse_tir] if p.info.name != "FuseInvertedResidual"]
    with target:
        out = tvm.transform.Sequential(passes)(mod)
        if merge:
            out = FuseInvertedResidual(lanes)(out)
        assert relax.analysis.check_well_formed(out)
        return out


def _group_calls(mod) -> list[str]:
    return [b.value.op.name_hint for b in mod["main"].body.blocks[0].bindings
            if isinstance(b.value, relax.Call) and isinstance(b.value.op, tvm.ir.GlobalVar)]


def test_pass_merges_expansion_with_depthwise():
    """Before: the expansion group and the depthwise group are two calls; after: one call of
    a primitive function holding both kernels, the other groups unchanged."""
    mod = inverted_residual(16, 48, (13, 11))
    before = _group_calls(_fused(mod, TARGET_8, 8, False))
    after = _group_calls(_fused(mod, TARGET_8, 8, True))
    assert len(after) == len(before) - 1
    merged = [n for n in after if n not in before]
    assert len(merged) == 1
    expand, dw = merged[0].split("__")
    assert expand in before and dw in before and "dwconv" in dw and "dwconv" not in expand


def test_pass_keeps_an_expansion_used_twice():
    """An expansion whose result is read by something else too stays its own kernel."""
    mod = inverted_residual(16, 48, (13, 11), share_expansion=True)
    assert _group_calls(_fused(mod, TARGET_8, 8, True)) == _group_calls(
        _fused(mod, TARGET_8, 8, False))


def test_pass_leaves_other_lanes_alone():
    """A module blocked for 8 lanes is not merged by a pass told the blocks are 16 wide."""
    mod = inverted_residual(16, 48, (13, 11))
    assert _group_calls(_fused(mod, TARGET_8, 16, True)) == _group_calls(
        _fused(mod, TARGET_8, 8, False))


def test_pipeline_option_off_keeps_two_kernels():
    """``inverted_residual=False`` (prepare_passes / cpu_kernel_passes) keeps the pair apart."""
    mod = inverted_residual(16, 48, (13, 11))
    names = [p.info.name for p in prepare_passes(TARGET_8, inverted_residual=False)]
    assert "FuseInvertedResidual" not in names
    assert "FuseInvertedResidual" in [p.info.name for p in prepare_passes(TARGET_8)]
    assert _merged(scheduled_kernels(mod, TARGET_8))


@pytest.mark.parametrize("blocks, rows, stride, width, lanes, want", [
    (3, 56, 2, 112, 16, 14),   # 3 bands of 19 would take 280 KB: 4 bands of 14
    (13, 14, 1, 14, 16, 14),   # enough blocks: one band
    (1, 56, 1, 56, 16, 7),     # one block: 8 bands
    (2, 100, 1, 400, 16, 8),   # a band's rows must fit IRB_BAND_BYTES
])
def test_band_rows(blocks, rows, stride, width, lanes, want):
    got = rules.irb_band_rows(blocks, rows, stride, width, lanes)
    assert got == want
    assert (got * stride + 2) * width * lanes * 4 <= rules.IRB_BAND_BYTES or got == 1
