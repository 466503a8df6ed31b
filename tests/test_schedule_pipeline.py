"""tvm_hcprune.build / the "hcprune" pipeline: whole models match TVM's default, the pipeline
registers once, and anything the rules do not cover (or a failing rule) falls back."""

import importlib

import numpy as np
import tvm
from tvm import relax

from tvm_hcprune.backend import pipeline as pl
from tvm_hcprune.backend.cpu import rules as cpu_rules

TARGET = tvm.target.Target({"kind": "llvm", "mcpu": "haswell", "num-cores": 2})


def _small_resnet():
    from tvm.relax.frontend.onnx import from_onnx

    from tvm_hcprune.testing import onnx_models

    return from_onnx(onnx_models.small_resnet())


def _tiny():
    rng = np.random.default_rng(0)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 5, 8, 8), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            w = relax.const(rng.standard_normal((8, 5, 3, 3)).astype("float32"))
            y = relax.op.nn.relu(relax.op.nn.conv2d(x, w, padding=1))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get()


def _out(ex, x):
    return relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()


def _x(mod, seed=0):
    shape = [int(s) for s in mod["main"].params[0].ty.shape]
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


def test_build_small_resnet_matches_default_pipeline():
    """build() on an ONNX ResNet (BN, residual adds, Gemm head) equals TVM's default."""
    mod = _small_resnet()
    x = _x(mod)
    ref = _out(tvm.compile(mod, TARGET, relax_pipeline=relax.get_default_pipeline(TARGET)), x)
    ours = _out(pl.build(mod, TARGET), x)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    kernels = pl.scheduled_kernels(mod, TARGET)
    assert any("dense" in k for k in kernels) and sum("conv" in k for k in kernels) >= 3


def test_registered_pipeline_and_double_registration():
    """tvm.compile(relax_pipeline="hcprune") works; re-importing does not re-register."""
    importlib.reload(pl)
    assert "hcprune" in relax.pipeline.PIPELINE_MAP
    mod = _tiny()
    x = _x(mod, 1)
    ours = _out(tvm.compile(mod, TARGET, relax_pipeline="hcprune"), x)
    np.testing.assert_allclose(ours, _out(pl.build(mod, TARGET), x), rtol=1e-6, atol=1e-6)


def test_unmatched_ops_fall_back():
    """A conv whose weight is a runtime input is not rewritten and still builds correctly."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 4, 6, 6), "float32"))
    w = relax.Var("w", relax.TensorType((8, 4, 3, 3), "float32"))
    with bb.function("main", [x, w]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.nn.relu(relax.op.nn.conv2d(x, w, padding=1)))
        bb.emit_func_output(out)
    mod = bb.get()
    assert pl.scheduled_kernels(mod, TARGET) == {}
    rng = np.random.default_rng(0)
    xv = rng.standard_normal((1, 4, 6, 6)).astype("float32")
    wv = rng.standard_normal((8, 4, 3, 3)).astype("float32")
    vm = relax.VirtualMachine(pl.build(mod, TARGET), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(xv), tvm.runtime.tensor(wv)).numpy()
    vm0 = relax.VirtualMachine(tvm.compile(mod, TARGET), tvm.cpu())
    ref = vm0["main"](tvm.runtime.tensor(xv), tvm.runtime.tensor(wv)).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_failing_rule_falls_back_to_default(monkeypatch):
    """If a rule raises, the kernel keeps TVM's default lowering and the build succeeds."""

    def broken(sch, names):
        if not any(n.startswith("hcp_") for n in names):
            return False
        raise RuntimeError("rule exploded")

    monkeypatch.setattr(cpu_rules, "_RULES", (broken,))
    mod = _tiny()
    assert pl.scheduled_kernels(mod, TARGET, strict=False)  # the kernel exists, unscheduled
    x = _x(mod, 2)
    ours = _out(pl.build(mod, TARGET), x)
    ref = _out(tvm.compile(mod, TARGET), x)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_avx512_and_neon_targets_schedule_and_compile():
    """The rules adapt to AVX-512 (16 lanes: the 8 output channels pad to one vector) and
    NEON (4 lanes: two vectors cover them) and the result compiles (not run: this host has
    neither)."""
    mod = _tiny()
    for target, lanes in (("llvm -mcpu=skylake-avx512 -num-cores=4", 16),
                          ("llvm -mtriple=aarch64-linux-gnu -mcpu=cortex-a72", 8)):
        (func,) = pl.scheduled_kernels(mod, target).values()
        script = func.script()
        assert "tirx.is_scheduled" in script and f"T.vectorized(T.int64({lanes}))" in script
        assert pl.build(mod, target) is not None


def test_pruned_model_cross_compiles_for_neon():
    """A model pruned for an aarch64 NEON target builds there (cross-compiled, not run):
    widths are multiples of the NEON profile's 4 lanes, every conv/dense runs on one of
    tvm_hcprune's scheduled kernels, and the code is AArch64 with 4-lane NEON FMAs. The
    pruned module itself is checked against the mask oracle on this host."""
    import re

    from tvm.relax.frontend.onnx import from_onnx

    import tvm_hcprune as hc
    from tvm_hcprune.backend.pipeline import scheduled_kernels
    from tvm_hcprune.recovery.runner import run_relax
    from tvm_hcprune.testing import masked_reference, onnx_models

    neon = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}
    mod = from_onnx(onnx_models.small_resnet(width=16, image=16, num_classes=4))
    pruned, report = hc.prune(mod, ratio=0.5, target=neon)
    assert report.align == 4 and report.macs_after < report.macs_before
    assert all(len(k) % 4 == 0 for k in report.plan.kept.values())

    kernels = scheduled_kernels(pruned, neon)
    assert len(kernels) == 10  # 9 convs and the classifier
    assert all("tirx.is_scheduled" in f.script() for f in kernels.values())
    ex = hc.build(pruned, neon)
    asm = ex.mod.imports[0].inspect_source("asm")
    assert re.search(r"fmla\s+v\d+\.4s", asm), "no 4-lane NEON FMA in the AArch64 code"

    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype("float32")
    ref = run_relax(masked_reference(mod, report.plan), [x])
    np.testing.assert_allclose(run_relax(pruned, [x]), ref, rtol=1e-4, atol=1e-4)
