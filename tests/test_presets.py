"""Pass-list presets: every shipped TOML loads and agrees with its hardware profile."""

import pytest

from tvm_hcprune.errors import HCPruneError
from tvm_hcprune.hardware import profile_for
from tvm_hcprune.hardware.presets import list_presets, load_preset

EXPECTED = {"llvm-avx2", "llvm-avx512", "llvm-neon", "cuda", "vta"}


def test_all_families_shipped():
    """The five target families have a preset."""
    assert EXPECTED <= set(list_presets())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_preset_align_matches_profile(name):
    """A preset's align equals the channel multiple of the profile of its own target."""
    p = load_preset(name)
    assert p.name == name
    assert p.align == profile_for(p.target).channel_multiple
    assert p.criterion and p.passes and p.schedule


def test_unknown_preset_lists_known_ones():
    """An unknown name raises HCPruneError that lists the available presets."""
    with pytest.raises(HCPruneError, match="llvm-avx2") as err:
        load_preset("llvm-avx1024")
    assert "llvm-avx1024" in str(err.value)
