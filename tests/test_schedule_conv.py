"""CPU conv2d rules: numerics against TVM's default pipeline on odd shapes, and the
remainder-free path for channel-aligned layers."""

import numpy as np
import pytest
import tvm
from tvm import relax

from tvm_hcprune.backend.cpu import conv2d_nchwc as cw
from tvm_hcprune.backend.cpu import dense, pointwise
from tvm_hcprune.backend.cpu.pack import PackWeightsForCPU
from tvm_hcprune.backend.cpu.rules import ApplyCPURules
from tvm_hcprune.backend.pipeline import get_pipeline, scheduled_kernels
from tvm_hcprune.hardware import profile_for
from tvm_hcprune.testing import heap_workspaces

TARGET = tvm.target.Target({"kind": "llvm", "mcpu": "haswell", "num-cores": 2})
# 16-lane kernels (other tiles, other blocks); they run only where the host has AVX-512
TARGET_AVX512 = tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512", "num-cores": 2})
HOST_AVX512 = profile_for("llvm").isa == "avx512"


def conv_module(ic, oc, hw, k, stride=1, pad=0, groups=1, dilation=1, epilogue="bias_relu"):
    """conv2d (+ bias, relu / clip / residual / hardswish) with random constant weights."""
    rng = np.random.default_rng(ic * 131 + oc * 7 + k)
    h, w = hw
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, ic, h, w), "float32"))
    wt = rng.standard_normal((oc, ic // groups, k, k)).astype("float32")
    params = [x]
    with bb.function("main", params):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, relax.const(wt), strides=stride, padding=pad,
                                           dilation=dilation, groups=groups))
            b = rng.standard_normal((1, oc, 1, 1)).astype("float32")
            if "bias" in epilogue:
                y = bb.emit(relax.op.add(y, relax.const(b)))
            if "relu" in epilogue:
                y = bb.emit(relax.op.nn.relu(y))
            if "clip" in epilogue:
                y = bb.emit(relax.op.clip(y, 0.0, 6.0))
            if "hswish" in epilogue:
                t = bb.emit(relax.op.clip(relax.op.add(y, relax.const(3.0)), 0.0, 6.0))
                y = bb.emit(relax.op.divide(relax.op.multiply(y, t), relax.const(6.0)))
            if "residual" in epilogue:
                y = bb.emit(relax.op.add(y, relax.op.sigmoid(y)))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get()


def run(mod, pipeline, x, target=TARGET):
    ex = tvm.compile(mod, target, relax_pipeline=pipeline)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy()


def check_against_default(mod, blocked_layout=True, target=TARGET):
    shape = [int(s) for s in mod["main"].params[0].ty.shape]
    x = np.random.default_rng(1).standard_normal(shape).astype("float32")
    ref = run(mod, relax.get_default_pipeline(target), x, target)
    ours = run(mod, get_pipeline(target, strict=True, blocked_layout=blocked_layout), x, target)
    kernels = scheduled_kernels(mod, target, blocked_layout=blocked_layout)
    assert len(kernels) == 1
    assert "tirx.is_scheduled" in next(iter(kernels.values())).script()
    scale = max(1.0, float(np.abs(ref).max()))
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5 * scale)


CASES = {
    # ic, oc, (h, w), k, stride, pad, groups, dilation, epilogue
    "odd_channels_7x7_s2": (3, 13, (17, 19), 7, 2, 3, 1, 1, "bias_relu"),
    "one_channel": (1, 1, (9, 9), 3, 1, 1, 1, 1, "bias"),
    "1x1_spatial": (24, 40, (1, 1), 1, 1, 0, 1, 1, "bias_relu"),
    "1x1_conv_unaligned": (20, 36, (7, 7), 1, 1, 0, 1, 1, "clip"),
    "3x3_s2_pad": (16, 32, (15, 15), 3, 2, 1, 1, 1, "bias_relu_residual"),
    "depthwise_odd": (12, 12, (11, 11), 3, 2, 1, 12, 1, "bias_hswish"),
    "depthwise_5x5": (16, 16, (10, 10), 5, 1, 2, 16, 1, "relu"),
    "depthwise_1x1_spatial": (8, 8, (1, 1), 3, 1, 1, 8, 1, "relu"),
    "depthwise_dilated": (9, 9, (6, 21), 3, 1, 2, 9, 2, "bias"),
    "depthwise_rows_dilated_wide": (9, 9, (6, 58), 3, 1, 2, 9, 2, "bias"),
    "depthwise_rows_unaligned_wide": (8, 8, (5, 60), 3, 1, 1, 8, 1, "bias_hswish"),
    "grouped": (12, 18, (8, 8), 3, 1, 1, 3, 1, "bias_relu"),
    "dilated": (8, 16, (12, 12), 3, 1, 2, 1, 2, "bias"),
    "asymmetric_pad": (8, 8, (9, 10), 3, 2, (0, 1, 2, 0), 1, 1, "bias"),
    "depthwise_asymmetric_pad": (8, 8, (9, 10), 3, 2, (1, 0, 0, 2), 8, 1, "bias"),
}


@pytest.mark.parametrize("blocked", [True, False], ids=["blocked", "nchw"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_conv_rule_matches_default(case, blocked):
    """Each conv shape class gives TVM's default pipeline's output (rtol 1e-5), with
    channel-blocked activations between kernels and with NCHW ones."""
    ic, oc, hw, k, s, p, g, d, epi = CASES[case]
    check_against_default(conv_module(ic, oc, hw, k, s, p, g, d, epi), blocked_layout=blocked)


# channel counts that hit the 16-lane plans: 1, 2 and 3 output vectors, 11 vectors (odd),
# tiles capped by MAX_TILE_FLOATS, a short-reduction pointwise and a depthwise
CASES_16 = {
    "3x3_two_vectors_wide_row": (32, 64, (9, 30), 3, 1, 1, 1, 1, "bias_relu_residual"),
    "3x3_odd_vectors_short_row": (48, 176, (4, 4), 3, 1, 1, 1, 1, "bias_relu"),
    "1x1_short_reduction": (16, 96, (12, 13), 1, 1, 0, 1, 1, "clip"),
    "1x1_unaligned": (20, 40, (7, 9), 1, 1, 0, 1, 1, "bias"),
    "depthwise": (32, 32, (11, 12), 3, 2, 1, 32, 1, "bias_hswish"),
    "stem_7x7_s2": (3, 32, (23, 23), 7, 2, 3, 1, 1, "bias_relu"),
}


@pytest.mark.skipif(not HOST_AVX512, reason="the host CPU has no AVX-512 to run 16-lane code")
@pytest.mark.parametrize("case", sorted(CASES_16))
def test_conv_rule_matches_default_16_lanes(case):
    """The AVX-512 (16-lane) plans and tiles give TVM's default pipeline's output."""
    ic, oc, hw, k, s, p, g, d, epi = CASES_16[case]
    check_against_default(conv_module(ic, oc, hw, k, s, p, g, d, epi), target=TARGET_AVX512)


@pytest.mark.parametrize("lanes,registers", [(4, 32), (8, 16), (16, 32)])
def test_register_tiles_are_capped(lanes, registers):
    """Every conv and pointwise accumulator tile stays within ``MAX_TILE_FLOATS`` (larger
    AVX-512 tiles measured 3x slower), and every dense tile within its own cap."""
    for ic, oc, ow in [(3, 64, 112), (64, 64, 56), (128, 128, 28), (16, 96, 112),
                       (256, 176, 4), (512, 512, 7), (24, 144, 56)]:
        for short in (False, True):
            plan = cw.plan_conv(ic, oc, 1, ow, lanes, registers, short_pointwise=short)
            assert plan.tile_w * plan.ob <= cw.MAX_TILE_FLOATS
        pp = pointwise.plan_pointwise(oc, ow, ow, lanes, registers, ic=ic)
        assert pp.rows * pp.ty * pp.vecs * lanes <= cw.MAX_TILE_FLOATS
    for m, n in [(1, 1000), (128, 3072), (128, 768), (7, 48)]:
        nb, rows, _ = dense.plan_dense(m, n, lanes, registers)
        assert nb * rows <= dense.MAX_DENSE_TILE_FLOATS


@pytest.mark.parametrize("target", [TARGET, TARGET_AVX512], ids=["8_lanes", "16_lanes"])
@pytest.mark.parametrize("case", ["3x3_two_vectors_wide_row", "1x1_short_reduction",
                                  "depthwise"])
def test_register_tiles_are_stack_allocas(target, case):
    """No accumulator tile is a heap workspace (TVM 0.27 gives every local-scope buffer one,
    and a global one from 1024 bytes): the compiled code allocates workspaces only for the
    packed or padded inputs (and a Winograd conv's transformed input and GEMM results).
    Compile-only, so both ISAs are checked on any x86 host."""
    import re

    ic, oc, hw, k, s_, p, g, d, epi = CASES_16[case]
    # one kernel per layer: a chain's intermediates are workspaces by design (ChainKernels)
    ex = tvm.compile(conv_module(ic, oc, hw, k, s_, p, g, d, epi), target,
                     relax_pipeline=get_pipeline(target, strict=True, chain_kernels=False))
    calls = heap_workspaces(ex)
    assert all(re.fullmatch(r"hcp_(pack|pwpad|dwpad|wgv|wgm)", name) for name in calls), calls


def _scheduled(mod):
    with TARGET:
        seq = tvm.transform.Sequential(
            [PackWeightsForCPU(lanes=8, registers=16), relax.transform.LegalizeOps(),
             relax.transform.AnnotateTIROpPattern(), relax.transform.FoldConstant(),
             relax.transform.FuseOps(), relax.transform.FuseTIR(), ApplyCPURules(strict=True)]
        )
        return seq(mod)


def _kernels(mod):
    return [(gv.name_hint, f) for gv, f in mod.functions_items()
            if isinstance(f, tvm.tirx.PrimFunc) and "hcp" in gv.name_hint]


def test_aligned_layer_takes_remainder_free_path():
    """Channels that are multiples of the block and a width the tile divides: the scheduled
    kernel has no padded channels (packed weight = exact blocks), no channel guard in the
    packing and no predicate in the write-back."""
    mod = _scheduled(conv_module(32, 64, (14, 12), 3, 1, 1, epilogue="bias_relu"))
    (name, func), = _kernels(mod)
    script = func.script()
    assert "tirx.is_scheduled" in script
    assert "T.where" not in script, "write-back should not be predicated"
    assert "T.vectorized" in script and "T.parallel" in script
    # the packed weight buffer is [G, OCB, ICB, KH, KW, IB, OB] with exact blocks
    wshape = [int(s) for s in func.params[1].shape]
    assert wshape[0] * wshape[1] * wshape[6] == 64
    assert wshape[2] * wshape[5] == 32
    # fused epilogue: a single kernel, no separate add/relu functions
    assert not [gv for gv, f in mod.functions_items()
                if isinstance(f, tvm.tirx.PrimFunc) and "hcp" not in gv.name_hint]


def test_unaligned_layer_pads_and_predicates():
    """Unaligned output channels/width are padded inside the kernel and cropped on write."""
    mod = _scheduled(conv_module(20, 36, (7, 7), 3, 1, 1, epilogue="bias_relu"))
    (name, func), = _kernels(mod)
    wshape = [int(s) for s in func.params[1].shape]
    assert wshape[1] * wshape[6] > 36
    assert "T.where" in func.script()


def test_nchw_depthwise_uses_row_kernel():
    """Wide stride-1 NCHW depthwise convs take the row-vectorised kernel, epilogue fused, no
    packing; strided or narrow ones the channel-packed kernel."""
    mod = _scheduled(conv_module(16, 16, (10, 64), 3, 1, 1, groups=16, epilogue="bias_relu"))
    ((name, func),) = _kernels(mod)
    script = func.script()
    assert "hcp_dwrow" in script and "hcp_dwpack" not in script
    assert "T.vectorized" in script and "T.max" in script  # relu inlined in the write-back
    for hw, stride in (((10, 64), 2), ((10, 28), 1)):
        mod = _scheduled(conv_module(16, 16, hw, 3, stride, 1, groups=16))
        ((name, func),) = _kernels(mod)
        assert "hcp_dwpack" in func.script() and "hcp_dwrow" not in func.script()
