"""Pass-list presets drive the build: every shipped TOML loads, names registered passes,
agrees with its hardware profile and builds a model whose output equals onnxruntime; a
user's own TOML runs exactly its pass list; bad files give errors naming file, key and
allowed values (and a non-zero exit in the CLI)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tvm
from tvm import relax

import tvm_hcprune as hc
from tvm_hcprune.backend.database import as_database
from tvm_hcprune.backend.pipeline import cpu_passes, resolve_preset
from tvm_hcprune.cli import main
from tvm_hcprune.errors import HCPruneError
from tvm_hcprune.hardware import profile_for
from tvm_hcprune.hardware.presets import (
    get_preset_pass,
    list_preset_passes,
    list_presets,
    load_preset,
    preset_for,
    register_preset_pass,
)
from tvm_hcprune.hardware.target import parse_target
from tvm_hcprune.testing.onnx_models import GraphBuilder
from tvm_hcprune.transform.fold_batch_norm import FoldBatchNorm

EXPECTED = {"llvm-avx2", "llvm-avx512", "llvm-neon", "cuda", "vta"}
IMAGE = 8


def _model():
    g = GraphBuilder(3)
    x = g.conv_bn("input", 3, 16, 3)
    y = g.conv_bn(x, 16, 32, 3)
    y = g.conv_bn(y, 32, 16, 1, act=None)
    x = g.op("Relu", [g.op("Add", [y, x])])
    out = g.head(x, 16, 5)
    return g.model(out, [1, 3, IMAGE, IMAGE], [1, 5], "preset_cnn")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    d = tmp_path_factory.mktemp("presets")
    m = _model()
    onnx.save(m, d / "m.onnx")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 3, IMAGE, IMAGE)).astype("float32")
    sess = ort.InferenceSession(str(d / "m.onnx"))
    ref = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    mod = hc.load_onnx(d / "m.onnx", log=lambda *_: None)
    return d, mod, x, ref


def _run(ex, x):
    return relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()


def _write(path, text):
    path.write_text(text)
    return path


AVX2_TOML = (
    'target = { kind = "llvm" }\ncriterion = "l2"\nalign = 8\n'
    'schedule = ["database", "cpu-rules"]\n'
)


def test_all_families_shipped():
    """The five target families have a preset."""
    assert EXPECTED <= set(list_presets())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_preset_align_matches_profile(name):
    """A preset's align equals the channel multiple of the profile of its own target, and
    every pass it lists resolves to a registered pass of the schedule source it declares."""
    p = load_preset(name)
    assert p.name == name
    assert p.align == profile_for(p.target).channel_multiple
    assert p.criterion and p.passes and p.schedule
    for step in p.passes:
        reg = get_preset_pass(step)
        assert reg.name == step
        assert reg.schedule is None or reg.schedule in p.schedule
    assert resolve_preset(name, parse_target(p.target)) == p


def test_builtin_schedule_table_matches_registrations():
    """Every built-in pass name resolves, and the schedule source load_preset checks without
    importing it equals the one its module registers."""
    from tvm_hcprune.hardware import presets

    for name in list_preset_passes():
        assert get_preset_pass(name).schedule == presets._BUILTIN_SCHEDULE.get(name)  # noqa: SLF001


def test_unknown_preset_lists_known_ones():
    """An unknown name raises HCPruneError that lists the available presets."""
    with pytest.raises(HCPruneError, match="llvm-avx2") as err:
        load_preset("llvm-avx1024")
    assert "llvm-avx1024" in str(err.value)


def test_host_preset_is_the_default_and_builds_as_before(model):
    """build() without a preset runs the host family's preset, and its executable computes
    bit for bit what the three-phase CPU pipeline (cpu_passes) compiles; both equal ORT."""
    _d, mod, x, ref = model
    tgt = parse_target("llvm")
    assert preset_for(tgt).name == {16: "llvm-avx512", 8: "llvm-avx2"}.get(
        profile_for(tgt).channel_multiple, preset_for(tgt).name)
    got = _run(hc.build(mod, "llvm"), x)
    db = as_database("shipped", tgt)
    with tgt:
        old = tvm.compile(mod, tgt, relax_pipeline=tvm.transform.Sequential(
            cpu_passes(tgt, db, True)))
    np.testing.assert_array_equal(got, _run(old, x))
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["llvm-avx2", "llvm-avx512", "llvm-neon"])
def test_cpu_presets_equal_onnxruntime(model, name):
    """A CPU preset's pass list, on its own target when this host can run it (else on the
    host target), builds the model and its output equals onnxruntime; llvm-neon also
    compiles for its aarch64 target."""
    _d, mod, x, ref = model
    p = load_preset(name)
    own = profile_for(p.target)
    host = profile_for("llvm")
    runnable = own.kind == "llvm" and own.isa in {"avx2", host.isa} and "mtriple" not in p.target
    ex = hc.build(mod, None if runnable else "llvm", preset=name)
    np.testing.assert_allclose(_run(ex, x), ref, rtol=1e-4, atol=1e-4)
    if not runnable:  # cross-compile: the executable exists for the preset's own target
        assert hc.build(mod, preset=name) is not None


def test_cuda_preset_compiles_kernels(model):
    """The cuda preset compiles through its DLight step to CUDA kernels; on a machine with
    a GPU its output equals onnxruntime."""
    _d, mod, x, ref = model
    ex = hc.build(mod, preset="cuda")
    def modules(m):
        yield m
        for sub in m.imports:
            yield from modules(sub)

    srcs = [m.inspect_source() for m in modules(ex.mod) if m.kind == "cuda"]
    assert srcs and "__global__" in srcs[0]
    if tvm.cuda().exist:
        dev = tvm.cuda()
        vm = relax.VirtualMachine(ex, dev)
        got = vm["main"](tvm.runtime.tensor(x, dev)).numpy()
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def test_vta_preset_offloads_and_matches_int8_reference(model):
    """The vta preset quantises on the calibration inputs and offloads layers to the VTA
    simulator: output equals the same int8 model on llvm bit for bit and onnxruntime within
    int8 quantisation error; without calibration inputs it says what to pass."""
    from tvm_hcprune.vta import relax as vr

    _d, mod, x, ref = model
    rng = np.random.default_rng(1)
    samples = [rng.standard_normal((1, 3, IMAGE, IMAGE)).astype("float32") for _ in range(4)]
    with pytest.raises(HCPruneError, match="calibration=samples"):
        hc.build(mod, preset="vta")
    ex = hc.build(mod, preset="vta", calibration=samples + [x])
    vr.clear_layer_log()
    got = _run(ex, x)
    assert len(vr.layer_log()) >= 2  # layers ran on the simulator
    folded = relax.transform.FoldConstant()(FoldBatchNorm()(relax.transform.FoldConstant()(mod)))
    qmod, plan = vr.quantize(folded, samples + [x])
    np.testing.assert_array_equal(got, vr.build_vta(qmod, plan, "llvm")(x))
    assert np.abs(got - ref).max() <= 0.1 * np.abs(ref).max()


def test_user_toml_runs_exactly_its_passes(model, tmp_path):
    """A user's own TOML file drives the build: a pass registered by the user runs once, in
    the listed place, and the output equals onnxruntime."""
    _d, mod, x, ref = model
    seen = []

    @register_preset_pass("TestRecordBatchNorms", override=True)
    def _record(_ctx):
        @tvm.transform.module_pass(opt_level=0, name="TestRecordBatchNorms")
        def _p(m, _c):
            seen.append("nn.batch_norm" in m.script(show_meta=False))
            return m
        return [_p]

    path = _write(tmp_path / "mine.toml", AVX2_TOML + (
        'passes = ["FoldConstant", "TestRecordBatchNorms", "FoldBatchNorm", '
        '"TestRecordBatchNorms", "CPURules"]\n'))
    ex = hc.build(mod, "llvm", preset=str(path))
    assert seen == [True, False]  # before and after FoldBatchNorm
    np.testing.assert_allclose(_run(ex, x), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("body", "key", "allowed"), [
    ('passes = ["FoldConstant", "VTAQuantise"]\n', "'passes' is 'VTAQuantise'", "CPURules"),
    ('passes = ["DLight"]\n', "'schedule'", "add 'dlight'"),
    ('passes = []\n', "'passes'", "FoldConstant"),
    ('passes = "CPURules"\n', "'passes'", "a list of strings"),
])
def test_bad_toml_names_file_key_and_allowed_values(tmp_path, body, key, allowed):
    """An invalid user TOML raises HCPruneError naming the file, the key and what is
    allowed."""
    path = _write(tmp_path / "bad.toml", AVX2_TOML + body)
    with pytest.raises(HCPruneError) as err:
        load_preset(str(path))
    msg = str(err.value)
    assert str(path) in msg and key in msg and allowed in msg


def test_bad_toml_values(tmp_path):
    """Bad align, schedule source, missing and unknown keys, a non-TOML file, a missing
    file and an unknown criterion each name the file and the key."""
    base = 'target = { kind = "llvm" }\ncriterion = "l2"\npasses = ["FoldConstant"]\n'
    cases = [
        (base + 'align = 0\nschedule = ["cpu-rules"]\n', "'align'", "positive integer"),
        (base + 'align = 8\nschedule = ["tophub"]\n', "'schedule' is 'tophub'", "dlight"),
        (base + 'align = 8\n', "lacks the keys ['schedule']", "criterion"),
        (base + 'align = 8\nschedule = []\npass = []\n', "unknown keys ['pass']", "passes"),
        ('target = [', "not valid TOML", ""),
    ]
    for i, (text, key, allowed) in enumerate(cases):
        path = _write(tmp_path / f"b{i}.toml", text)
        with pytest.raises(HCPruneError) as err:
            load_preset(path)
        assert str(path) in str(err.value) and key in str(err.value), str(err.value)
        assert allowed in str(err.value)
    with pytest.raises(HCPruneError, match="does not exist"):
        load_preset(tmp_path / "none.toml")
    path = _write(tmp_path / "crit.toml", AVX2_TOML.replace('"l2"', '"l7"')
                  + 'passes = ["CPURules"]\n')
    with pytest.raises(HCPruneError, match=r"crit\.toml: key 'criterion'.*l1"):
        resolve_preset(str(path), parse_target("llvm"))


def test_preset_target_mismatch_is_clear(model):
    """Running a CPU preset for a CUDA target says which preset to choose."""
    _d, mod, _x, _ref = model
    with pytest.raises(HCPruneError, match="CPURules.*preset_for"):
        hc.build(mod, {"kind": "cuda", "arch": "sm_80"}, preset="llvm-avx2")


def test_cli_presets(model, tmp_path, capsys):
    """hcprune compile --preset: a user TOML builds a library that runs like onnxruntime;
    a bad TOML and the vta preset exit non-zero with the reason and write nothing."""
    d, _mod, x, _ref = model
    good = _write(tmp_path / "cpu.toml", AVX2_TOML + 'passes = ["FoldConstant", '
                  '"FoldBatchNorm", "PruneChannels", "FoldConstant", "CPURules"]\n')
    out = tmp_path / "m.so"
    assert main(["compile", str(d / "m.onnx"), "--preset", str(good), "--target", "llvm",
                 "--prune-ratio", "0.0", "-o", str(out)]) == 0
    ex = tvm.runtime.load_module(str(out))
    sess = ort.InferenceSession(str(d / "m.onnx"))
    ref = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(_run(ex, x), ref, rtol=1e-4, atol=1e-4)
    bad = _write(tmp_path / "bad.toml", AVX2_TOML + 'passes = ["CPURulez"]\n')
    for preset, why in ((str(bad), "bad.toml: key 'passes'"), ("vta", "calibration=samples")):
        out2 = tmp_path / "x.so"
        assert main(["compile", str(d / "m.onnx"), "--preset", preset, "-o", str(out2)]) == 2
        assert why in capsys.readouterr().err
        assert not out2.exists()
    assert json.loads(json.dumps(load_preset(good).passes))[-1] == "CPURules"


def test_preset_for_other_members_of_a_family():
    """Any CUDA arch gets the cuda preset, any AArch64 CPU llvm-neon; an x86 CPU without
    AVX2 a CPU preset at its own profile's alignment; a target with no profile (rocm) the
    generic preset, which ends in TVM's default pipeline."""
    assert preset_for({"kind": "cuda", "arch": "sm_90"}).name == "cuda"
    arm = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a53"}
    assert preset_for(arm).name == "llvm-neon"
    old = {"kind": "llvm", "mcpu": "core2"}
    assert preset_for(old).passes[-1] == "CPURules"
    assert preset_for(old).align == profile_for(old).channel_multiple
    generic = preset_for({"kind": "vulkan"})
    assert generic.passes[-1] == "TVMDefault" and "default" in generic.schedule
