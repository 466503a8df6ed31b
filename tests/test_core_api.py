"""Public API: plans, passes in Sequential, criteria, alignment, MAC counting, bad input."""

import json

import numpy as np
import onnx
import pytest
import tvm
from tvm import relax
from tvm.relax.frontend.onnx import from_onnx

import tvm_hcprune as hc
from tvm_hcprune.errors import HCPruneError
from tvm_hcprune.testing import masked_reference, onnx_models, run_relax
from tvm_hcprune.transform import ApplyPrunePlan, PruneChannels


@pytest.fixture(scope="module")
def small():
    return from_onnx(onnx_models.small_resnet(width=16, image=16))


def test_plan_roundtrip_and_apply(small, tmp_path):
    """A saved plan re-applied with ApplyPrunePlan gives the same module as prune()."""
    pruned, report = hc.prune(small, ratio=0.5, align=4)
    path = tmp_path / "plan.json"
    report.plan.save(path)
    loaded = hc.PrunePlan.load(path)
    assert loaded == report.plan
    again = ApplyPrunePlan(loaded)(small)
    tvm.ir.assert_structural_equal(again["main"], pruned["main"], map_free_vars=True)
    data = json.loads(path.read_text())
    assert data["version"] == 1 and data["config"]["ratio"] == 0.5


def test_plan_for_another_model_is_refused(small):
    other = from_onnx(onnx_models.small_resnet(width=16, image=16, seed=1))
    _, report = hc.prune(small, ratio=0.5, align=4)
    with pytest.raises(HCPruneError, match="different model"):
        hc.prune(other, plan=report.plan)


def test_prune_channels_in_sequential_builds_for_llvm_and_cuda(small):
    """PruneChannels composes with TVM passes; the result is well formed and compiles."""
    seq = tvm.transform.Sequential([
        relax.transform.Normalize(),
        PruneChannels(ratio=0.5, align=8),
        relax.transform.FoldConstant(),
    ])
    pruned = seq(small)
    assert relax.analysis.check_well_formed(pruned)
    x = np.random.default_rng(0).normal(size=(1, 3, 16, 16)).astype(np.float32)
    assert run_relax(pruned, [x]).shape == (1, 10)
    cuda = tvm.target.Target({"kind": "cuda", "arch": "sm_80", "host": {"kind": "llvm"}})
    ex = tvm.compile(pruned, cuda)
    _check_cuda_build(pruned, ex, cuda)


def _check_cuda_build(pruned, ex, target):
    """The executable holds a CUDA kernel for every conv of ``pruned``, each taking that
    conv's pruned weight, and nvcc compiles the source to PTX with exactly those kernels.

    No GPU is needed (TVM keeps CUDA source until a module is loaded on a device)."""
    from tvm_hcprune.backend import cuda as hcuda
    from tvm_hcprune.utils.relax import bindings, op_name

    convs = sorted(tuple(int(d) for d in b.value.args[1].ty.shape)
                   for b in bindings(pruned["main"]) if op_name(b.value) == "relax.nn.conv2d")
    assert convs and any(w[0] < 16 for w in convs)  # some convs were pruned
    source = hcuda.cuda_source(ex)
    kernels = hcuda.kernel_names(source)
    # the same pipeline tvm.compile ran: its scheduled PrimFuncs name the kernels
    with target:
        lowered = relax.get_default_pipeline(target)(pruned)
    conv_kernels = []
    for gv, func in lowered.functions.items():
        if isinstance(func, tvm.tirx.PrimFunc) and "conv2d" in gv.name_hint:
            weights = [tuple(int(d) for d in p.shape) for p in func.params
                       if getattr(p, "shape", None) is not None and len(p.shape) == 4]
            conv_kernels.append((gv.name_hint, weights))
    # one kernel per distinct conv (convs of equal shapes share a PrimFunc), each on the
    # pruned weight of its conv
    kernel_weights = [[w for w in ws if w in convs] for _, ws in conv_kernels]
    assert all(len(ws) == 1 for ws in kernel_weights), conv_kernels
    assert sorted(ws[0] for ws in kernel_weights) == sorted(set(convs)), conv_kernels
    for name, _ in conv_kernels:
        assert any(k.startswith(name) for k in kernels), (name, kernels)
    if hcuda.have_nvcc():
        ptx = hcuda.nvcc_compile(source, "sm_80", "ptx")
        assert sorted(hcuda.ptx_entries(ptx)) == sorted(kernels)


def test_kept_counts_are_aligned_and_never_zero(small):
    graph = hc.analyze(small)
    for align in (1, 4, 8):
        for ratio in (0.1, 0.5, 0.9):
            _, report = hc.prune(small, ratio=ratio, align=align, graph=graph)
            for g in report.groups:
                assert g.after >= 1
                if g.after != g.before:
                    assert g.after % align == 0


def test_default_align_comes_from_the_host_profile(small):
    _, report = hc.prune(small, ratio=0.5)
    assert report.align == hc.profile_for("llvm").channel_multiple


def test_protect_keeps_a_group(small):
    graph = hc.analyze(small)
    target = graph.prunable_groups[0]
    _, report = hc.prune(small, ratio=0.5, align=1, protect=[f"group:{target.id}"])
    assert report.groups[target.id].after == target.size


@pytest.mark.parametrize("criterion", ["l1", "l2", "redundancy", "bn_scale", "fpgm", "random"])
def test_every_criterion_passes_the_oracle(small, criterion):
    pruned, report = hc.prune(small, ratio=0.5, criterion=criterion, align=4)
    x = np.random.default_rng(3).normal(size=(1, 3, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(run_relax(pruned, [x]),
                               run_relax(masked_reference(small, report.plan), [x]),
                               rtol=1e-5, atol=1e-6)


def _one_conv_model(weights, gamma=None):
    g = onnx_models.GraphBuilder(0)
    w = g.const(weights.astype(np.float32))
    y = g.op("Conv", ["input", w], kernel_shape=[1, 1])
    c = weights.shape[0]
    if gamma is not None:
        names = [g.const(np.asarray(p, np.float32)) for p in
                 (gamma, np.zeros(c), np.zeros(c), np.ones(c))]
        y = g.op("BatchNormalization", [y, *names])
    out = g.op("Conv", [g.op("Relu", [y]), g.const(np.ones((2, c, 1, 1), np.float32))],
               kernel_shape=[1, 1])
    return from_onnx(g.model(out, [1, 3, 2, 2], [1, 2, 2, 2], "one"))


def test_l1_and_l2_keep_the_largest_filters():
    w = np.zeros((4, 3, 1, 1))
    w[:, :, 0, 0] = [[1, 1, 1], [3, 0, 0], [0.1, 0, 0], [2, 2, 2]]
    mod = _one_conv_model(w)
    _, r1 = hc.prune(mod, ratio=0.5, criterion="l1", align=1)
    _, r2 = hc.prune(mod, ratio=0.5, criterion="l2", align=1)
    # l1 of rows: 3, 3, 0.1, 6 (tie between 0 and 1 keeps the lower index)
    assert list(r1.plan.kept[0]) == [0, 3]
    # l2: 1.73, 3, 0.1, 3.46
    assert list(r2.plan.kept[0]) == [1, 3]


def test_bn_scale_keeps_the_largest_gammas():
    w = np.ones((4, 3, 1, 1))
    mod = _one_conv_model(w, gamma=[0.1, 2.0, -3.0, 0.5])
    _, report = hc.prune(mod, ratio=0.5, criterion="bn_scale", align=1)
    assert list(report.plan.kept[0]) == [1, 2]


def test_redundancy_score_formula():
    from tvm_hcprune.planning.criteria import GroupViews, get_criterion

    m = np.array([[1.0, 0.0], [0.0, 0.1], [2.0, 2.0]])
    scores = get_criterion("redundancy")(GroupViews(3, [m], [], []), None, lam=0.5)
    n = (m**2).sum(1)
    r = n / (n + 0.5)
    np.testing.assert_allclose(scores, r / r.mean())


def test_macs_match_an_independent_count():
    """ChannelGraph's MACs equal a count from ONNX shape inference (ResNet-18)."""
    model = onnx_models.resnet(18, image=64, num_classes=10)
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    expect = 0
    for node in model.graph.node:
        if node.op_type == "Conv":
            w = inits[node.input[1]]
            expect += int(np.prod(shapes[node.output[0]])) * int(np.prod(w.shape[1:]))
        elif node.op_type == "Gemm":
            w = inits[node.input[1]]
            expect += int(np.prod(w.shape))
    graph = hc.analyze(from_onnx(model))
    assert graph.total_macs == expect


# ---- bad input ----------------------------------------------------------------------------
def test_bad_ratio_and_criterion(small):
    for ratio in (-0.1, 1.0, 1.5):
        with pytest.raises(HCPruneError, match=r"ratio must be in \[0, 1\)"):
            hc.prune(small, ratio=ratio)
    with pytest.raises(HCPruneError, match="unknown criterion 'nope'"):
        hc.prune(small, criterion="nope")


def test_not_onnx_and_missing_file(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"this is not a protobuf \x00\x01\x02")
    with pytest.raises(HCPruneError, match="not a readable ONNX model"):
        hc.load_onnx(bad)
    with pytest.raises(HCPruneError, match="does not exist"):
        hc.load_onnx(tmp_path / "missing.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def _dynamic_model(batch="N", height="H"):
    model = onnx_models.small_resnet(width=8, image=8)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[0].Clear()
    dims[0].dim_param = batch
    dims[2].Clear()
    dims[2].dim_param = height
    return model


def test_dynamic_dims(tmp_path):
    path = tmp_path / "dyn.onnx"
    onnx.save(_dynamic_model(), path)
    with pytest.raises(HCPruneError, match=r"dynamic dimension\(s\) 'H' \(axis 2\)"):
        hc.load_onnx(path)
    notes = []
    mod = hc.load_onnx(path, {"input": [1, 3, 8, 8]}, log=notes.append)
    assert [int(s) for s in mod["main"].params[0].ty.shape] == [1, 3, 8, 8]
    model = onnx_models.small_resnet(width=8, image=8)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[0].Clear()
    dims[0].dim_param = "batch"
    onnx.save(model, path)
    mod = hc.load_onnx(path, log=notes.append)
    assert any("dynamic batch dimension 'batch'; using 1" in n for n in notes)


def test_empty_model(tmp_path):
    graph = onnx.helper.make_graph([], "empty", [], [])
    path = tmp_path / "empty.onnx"
    onnx.save(onnx.helper.make_model(graph), path)
    with pytest.raises(HCPruneError, match="empty ONNX model"):
        hc.load_onnx(path)


def test_plan_file_errors(tmp_path):
    p = tmp_path / "plan.json"
    p.write_text("{ not json")
    with pytest.raises(HCPruneError, match="not valid JSON"):
        hc.PrunePlan.load(p)
    p.write_text(json.dumps({"version": 99, "fingerprint": "x", "groups": []}))
    with pytest.raises(HCPruneError, match="version 99 is not supported"):
        hc.PrunePlan.load(p)


def test_compiling_the_analysed_module_does_not_change_the_analysis(small):
    """Regression: tvm.compile may update a module in place; graph.mod must stay intact."""
    graph = hc.analyze(small)
    tvm.compile(graph.mod, tvm.target.Target({"kind": "llvm"}))
    hc.build(graph.mod)
    pruned, report = hc.prune(small, ratio=0.5, align=4, graph=graph)
    x = np.random.default_rng(5).normal(size=(1, 3, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(run_relax(pruned, [x]),
                               run_relax(masked_reference(small, report.plan), [x]),
                               rtol=1e-5, atol=1e-6)


def test_per_group_counts_follow_grouped_conv_balance():
    """Per-group budgets (sensitivity allocation) give every input group of a grouped conv
    the same count, and the default align is divided over the conv's groups."""
    from core_models import build

    from tvm_hcprune.planning.planner import group_align
    from tvm_hcprune.recovery.sensitivity import balanced_counts, group_plan

    model, _ = build("grouped")
    mod = from_onnx(model)
    graph = hc.analyze(mod)
    (members,) = graph.balanced_sets
    plan = group_plan(graph, {members[2]: 2})
    assert {len(plan.kept_indices(g)) for g in members} == {2}
    assert group_align(graph, graph.groups[members[0]], 8) == 2  # 4 groups x 2 = 8 channels
    with pytest.raises(HCPruneError, match="equal counts"):
        balanced_counts(graph, {members[0]: 1, members[1]: 3})
    pruned, _ = hc.prune(mod, plan=plan, graph=graph)
    x = np.random.default_rng(0).normal(size=(1, 4, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(run_relax(pruned, [x]),
                               run_relax(masked_reference(mod, plan), [x]),
                               rtol=1e-5, atol=1e-6)
