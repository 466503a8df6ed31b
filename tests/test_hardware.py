"""Hardware profiles: channel multiples per ISA, host detection, immutability."""

import dataclasses

import pytest

from tvm_hcprune.errors import HCPruneError
from tvm_hcprune.hardware import HardwareProfile, host_physical_cores, profile_for


@pytest.mark.parametrize(
    ("target", "isa", "multiple", "lanes"),
    [
        ({"kind": "llvm", "mcpu": "haswell"}, "avx2", 8, 8),
        ({"kind": "llvm", "mcpu": "znver3"}, "avx2", 8, 8),
        ({"kind": "llvm", "mcpu": "skylake-avx512"}, "avx512", 16, 16),
        ("llvm -mcpu=znver3 -mattr=+avx512f", "avx512", 16, 16),
        ("llvm -mtriple=aarch64-linux-gnu -mcpu=cortex-a72", "neon", 4, 4),
        # a target that names its ISA but no CPU gets that ISA, whatever the host has
        ({"kind": "llvm", "mattr": ["+avx2", "+fma"]}, "avx2", 8, 8),
        ({"kind": "llvm", "mattr": ["+avx512f"]}, "avx512", 16, 16),
        ({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}, "neon", 4, 4),
    ],
)
def test_llvm_profiles_by_mcpu_and_mattr(target, isa, multiple, lanes):
    """The ISA, channel multiple and fp32 lanes follow the target's mcpu/mattr."""
    prof = profile_for(target)
    assert prof.kind == "llvm"
    assert prof.isa == isa
    assert prof.channel_multiple == multiple
    assert prof.lanes("float32") == lanes
    assert prof.lanes("int8") == lanes * 4


def test_mattr_target_is_not_given_the_host_cpu():
    """parse_target adds the host's mcpu only to a target that names neither a CPU nor an
    ISA: an AVX2 target stays AVX2 code on an AVX-512 host."""
    from tvm_hcprune.hardware.target import parse_target

    tgt = parse_target({"kind": "llvm", "mattr": ["+avx2", "+fma"]})
    assert "mcpu" not in dict(tgt.attrs)
    assert "mcpu" in dict(parse_target("llvm").attrs)


def test_host_profile_uses_host_cpu():
    """profile_for(None) describes this machine: its LLVM CPU name and physical cores."""
    from tvm.target import codegen

    prof = profile_for(None)
    assert prof.mcpu == codegen.llvm_get_system_cpu()
    assert prof.cores == host_physical_cores()
    assert prof.peak_gflops() == pytest.approx(
        2 * prof.lanes() * prof.fma_units * prof.cores * prof.freq_ghz
    )


def test_cuda_and_vta_profiles():
    """CUDA profiles come from arch (multiple 8); VTA from its 16x16 GEMM core."""
    cuda = profile_for("cuda -arch=sm_80")
    assert (cuda.kind, cuda.mcpu, cuda.channel_multiple) == ("cuda", "sm_80", 8)
    assert profile_for("nvidia/nvidia-a100").l2_bytes == 41943040
    vta = profile_for("vta")
    assert (vta.kind, vta.channel_multiple) == ("vta", 16)
    big = profile_for("vta", vta_config={"LOG_BLOCK_IN": 5, "LOG_BLOCK_OUT": 5})
    assert big.channel_multiple == 32
    from tvm_hcprune.hardware.vta import DEFAULT_CONFIG

    assert profile_for("vta", vta_config=DEFAULT_CONFIG).channel_multiple == DEFAULT_CONFIG.block_in
    assert profile_for("vta", vta_config={"LOG_BLOCK": 5}).channel_multiple == 32


def test_profile_is_frozen_and_serialisable():
    """Profiles are immutable records with a dict form."""
    prof = profile_for({"kind": "llvm", "mcpu": "haswell"})
    assert isinstance(prof, HardwareProfile)
    with pytest.raises(dataclasses.FrozenInstanceError):
        prof.channel_multiple = 4  # type: ignore[misc]
    assert prof.to_dict()["channel_multiple"] == 8


def test_bad_inputs_raise():
    """Unknown kinds and dtypes raise HCPruneError naming them."""
    with pytest.raises(HCPruneError, match="opencl"):
        profile_for("opencl")
    with pytest.raises(HCPruneError, match="float64"):
        profile_for({"kind": "llvm", "mcpu": "haswell"}).lanes("float64")


def test_registered_profile_for_a_new_target_key():
    """register_profile(key) gives targets carrying that key their own profile, which the
    pruner's default align follows; a second registration needs override=True."""
    from tvm.relax.frontend.onnx import from_onnx

    import tvm_hcprune as hc
    from tvm_hcprune.hardware import register_profile
    from tvm_hcprune.testing import onnx_models

    def npu(target):
        return HardwareProfile(name="test-npu", kind="llvm", isa="npu", vector_bits=256,
                               fma_units=1, vector_registers=32, channel_multiple=32,
                               l1_bytes=65536, l2_bytes=0, cores=1, freq_ghz=1.0)

    target = {"kind": "llvm", "keys": ["test-npu", "cpu"]}
    register_profile("test-npu", override=True)(npu)  # override: the test may run twice
    assert profile_for(target).name == "test-npu"
    with pytest.raises(HCPruneError, match="already registered"):
        register_profile("test-npu")(npu)
    mod = from_onnx(onnx_models.small_resnet(width=64, image=8, num_classes=4))
    _, report = hc.prune(mod, ratio=0.5, target=target)
    assert report.align == 32
    assert all(len(k) % 32 == 0 for k in report.plan.kept.values())
