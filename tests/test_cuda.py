"""CUDA: pruned models build for sm_80 and sm_90 with dlight rules; the generated source
compiles offline with nvcc (no GPU needed) and the kernels follow the pruned widths.
Tests that run CUDA code skip cleanly without a GPU."""

from __future__ import annotations

import numpy as np
import pytest

import tvm_hcprune as hc
from tvm_hcprune.backend import cuda as hcuda
from tvm_hcprune.errors import HCPruneError
from tvm_hcprune.testing.onnx_models import GraphBuilder

WIDTH = 16
IMAGE = 8


def tiny_cnn(width: int = WIDTH):
    g = GraphBuilder(0)
    x = g.conv_bn("input", 3, width, 3)
    y = g.conv_bn(x, width, width, 3, act=None)
    x = g.op("Relu", [g.op("Add", [y, x])])
    out = g.head(x, width, 4)
    return g.model(out, [1, 3, IMAGE, IMAGE], [1, 4], "tiny_cnn")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    import onnx

    path = tmp_path_factory.mktemp("m") / "tiny.onnx"
    onnx.save(tiny_cnn(), path)
    dense = hc.load_onnx(str(path), log=lambda *a: None)
    pruned, report = hc.prune(dense, ratio=0.5, target=hcuda.cuda_target("sm_80"))
    return dense, pruned, report


def _conv_weight_shapes(shapes: dict) -> set:
    """4-D parameter shapes of kernels whose last dims are a 3x3 window: conv weights."""
    return {s for params in shapes.values() for s in params if len(s) == 4 and s[2:] == (3, 3)}


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.skipif(not hcuda.have_nvcc(), reason="nvcc not installed")
def test_pruned_model_builds_and_nvcc_compiles(models, arch):
    """Every __global__ kernel of the pruned build appears as a PTX entry after nvcc."""
    _, pruned, _ = models
    ex = hcuda.build_cuda(pruned, hcuda.cuda_target(arch))
    src = hcuda.cuda_source(ex)
    names = hcuda.kernel_names(src)
    assert names and any("conv2d" in n for n in names)
    ptx = hcuda.nvcc_compile(src, arch, "ptx")
    assert f".target {arch}" in ptx.decode()
    assert sorted(hcuda.ptx_entries(ptx)) == sorted(names)


def test_kernel_shapes_follow_pruned_widths(models):
    """The conv kernels of the pruned model take weights of the kept widths (the dense ones
    take the full widths) after the GPU pipeline's scheduling."""
    dense, pruned, report = models
    target = hcuda.cuda_target("sm_80")
    assert report.macs_after < report.macs_before
    dense_w = _conv_weight_shapes(hcuda.kernel_param_shapes(hcuda.lowered_module(dense, target)))
    pruned_w = _conv_weight_shapes(
        hcuda.kernel_param_shapes(hcuda.lowered_module(pruned, target)))
    assert dense_w == {(WIDTH, 3, 3, 3), (WIDTH, WIDTH, 3, 3)}
    half = WIDTH // 2
    assert pruned_w == {(half, 3, 3, 3), (half, half, 3, 3)}


def test_cuda_target_has_metaschedule_limits():
    t = hcuda.cuda_target("sm_90")
    attrs = dict(t.attrs)
    assert int(attrs["max_threads_per_block"]) == 1024
    assert int(attrs["max_shared_memory_per_block"]) > 0
    assert t.host is not None and t.host.kind.name == "llvm"
    tagged = hcuda.with_limits("nvidia/nvidia-a100")
    assert str(dict(tagged.attrs)["arch"]) == "sm_80"


@pytest.mark.parametrize("arch", ["80", "sm80", "compute_80", ""])
def test_bad_arch_raises(arch):
    with pytest.raises(HCPruneError, match="sm_80"):
        hcuda.cuda_target(arch)


@pytest.mark.skipif(not hcuda.have_nvcc(), reason="nvcc not installed")
def test_nvcc_error_is_reported():
    with pytest.raises(HCPruneError, match="nvcc rejected"):
        hcuda.nvcc_compile('extern "C" __global__ void k() { this is not cuda; }', "sm_80")


@pytest.mark.gpu
@pytest.mark.skipif(not hcuda.has_gpu(), reason="no CUDA device on this machine")
def test_pruned_model_runs_on_gpu_like_cpu(models):
    import tvm
    from tvm import relax

    _, pruned, _ = models
    x = np.random.default_rng(0).standard_normal((1, 3, IMAGE, IMAGE)).astype("float32")
    ex = hcuda.build_cuda(pruned, hcuda.cuda_target("sm_80"))
    dev = tvm.cuda(0)
    gpu = relax.VirtualMachine(ex, dev)["main"](tvm.runtime.tensor(x, dev)).numpy()
    cpu = relax.VirtualMachine(hc.build(pruned, "llvm"), tvm.cpu())["main"](
        tvm.runtime.tensor(x)).numpy()
    np.testing.assert_allclose(gpu, cpu, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not hcuda.have_nvcc(), reason="nvcc not installed")
def test_cuda_database_applies_and_compiles(models, tmp_path):
    """Records for CUDA workloads (written here from dlight's schedules, as a GPU-less
    stand-in for tuned ones) are saved, reloaded for the same arch only, applied to the
    fused functions by the pipeline, and the result still compiles with nvcc."""
    from tvm.s_tir import meta_schedule as ms

    from tvm_hcprune.backend import database as dbm
    from tvm_hcprune.tuning.tune import extract_tasks, rule_schedule

    _, pruned, _ = models
    target = hcuda.cuda_target("sm_80")
    db = dbm.new_database(target)
    for task in extract_tasks(pruned, target):
        func = task.dispatched[0]["main"]
        sch = rule_schedule(func, target)
        assert sch is not None
        wl = db.ms_database.commit_workload(task.dispatched[0])
        rec = ms.database.TuningRecord(sch.trace, wl, [1e-5], target,
                                       ms.arg_info.ArgInfo.from_prim_func(func))
        if dbm.serializable(rec):
            db.ms_database.commit_tuning_record(rec)
    assert len(db) > 0
    path = db.save(tmp_path / "cuda.json")
    with pytest.raises(HCPruneError, match="arch"):
        dbm.load_database(path, hcuda.cuda_target("sm_90"))
    applied = hc.apply_database(pruned, target, path)
    assert len(dbm.scheduled_functions(applied)) == len(db)
    ex = hcuda.build_cuda(pruned, target, database=str(path))
    src = hcuda.cuda_source(ex)
    ptx = hcuda.nvcc_compile(src, "sm_80")
    assert sorted(hcuda.ptx_entries(ptx)) == sorted(hcuda.kernel_names(src))
