"""parse_target: every accepted spelling gives the expected TVM 0.27 target."""

import json

import pytest
import tvm

from tvm_hcprune.errors import HCPruneError
from tvm_hcprune.hardware import host_physical_cores
from tvm_hcprune.hardware.target import parse_target


def _d(t):
    return json.loads(str(t))


def test_bare_llvm_gets_host_cpu_and_physical_cores():
    """'llvm' alone names the host CPU (so LLVM emits AVX2/FMA) and the physical cores."""
    from tvm.target import codegen

    d = _d(parse_target("llvm"))
    assert d["mcpu"] == codegen.llvm_get_system_cpu()
    assert d["num-cores"] == host_physical_cores()


def test_tvmc_style_strings():
    """'kind -key=value' strings translate to the JSON form, lists and ints included."""
    d = _d(parse_target("llvm -mcpu=znver3 -num-cores=2 -mattr=+avx2,+fma"))
    assert (d["kind"], d["mcpu"], d["num-cores"], d["mattr"]) == (
        "llvm", "znver3", 2, ["+avx2", "+fma"])
    c = _d(parse_target("cuda -arch=sm_80"))
    assert (c["kind"], c["arch"], c["host"]["kind"]) == ("cuda", "sm_80", "llvm")


def test_dict_json_tag_and_target_forms():
    """Dicts, JSON strings, tags and Target objects are all accepted."""
    a = parse_target({"kind": "llvm", "mcpu": "haswell", "num-cores": 4})
    b = parse_target('{"kind": "llvm", "mcpu": "haswell", "num-cores": 4}')
    assert str(a) == str(b)
    t = tvm.target.Target({"kind": "llvm", "mcpu": "haswell"})
    assert parse_target(t) is t
    assert _d(parse_target("nvidia/nvidia-a100"))["arch"] == "sm_80"
    assert "vta" in [str(k) for k in parse_target("vta").keys]
    assert _d(parse_target("cuda"))["kind"] == "cuda"


def test_foreign_triple_is_not_given_host_cpu():
    """A cross target (aarch64) keeps its own CPU and gets no host core count."""
    d = _d(parse_target("llvm -mtriple=aarch64-linux-gnu -mcpu=cortex-a72"))
    assert d["mcpu"] == "cortex-a72"
    assert "num-cores" not in d


@pytest.mark.parametrize(
    ("bad", "needle"),
    [("foo", "foo"), ("foo -x=1", "foo"), ("llvm -mcpu=bogus", "bogus"),
     ("nvidia/bogus", "nvidia/bogus"), ("{not json", "JSON"), ("", "empty"), (3, "int")],
)
def test_unknown_targets_raise_naming_them(bad, needle):
    """Unknown kinds, tags, CPUs and malformed input raise HCPruneError naming the culprit."""
    with pytest.raises(HCPruneError, match=needle):
        parse_target(bad)
