"""Block sparsity: sparsify() zeroes the least important weight blocks (structure and
report), the BSR kernel equals the dense layer with the same zero blocks (random patterns,
empty and full block rows, widths not a multiple of the block, property-based), and the
build picks BSR only where the estimate says it pays, with outputs unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from hypothesis import given, settings
from hypothesis import strategies as st
from tvm import relax

import tvm_hcprune as hc
from tvm_hcprune.backend.cpu.bsr import bsr_kernel, to_bsr
from tvm_hcprune.backend.pipeline import prepare, prepare_passes
from tvm_hcprune.errors import HCPruneError
from tvm_hcprune.testing import run_relax
from tvm_hcprune.transform import SparsifyBlocks
from tvm_hcprune.transform.sparsify_blocks import block_mask, sparsifiable_layers

TARGET = {"kind": "llvm", "mcpu": "znver3", "num-cores": 2}  # AVX2: runs on every x86 host


def _run_kernel(x, w, block):
    data, indices, indptr, npad = to_bsr(w, block)
    func = bsr_kernel(x.shape[0], w.shape[0], npad, data.shape[0], *block)
    lib = tvm.compile(tvm.IRModule({"main": func}), tvm.target.Target(TARGET))
    dev = tvm.cpu()
    y = tvm.runtime.empty((x.shape[0], npad), "float32", dev)
    lib["main"](*[tvm.runtime.tensor(a, dev) for a in (x, data, indices, indptr)], y)
    return y.numpy()[:, :w.shape[1]]


def _blocky(rng, k, n, block, density, empty_rows=(), full_rows=()):
    bk, bn = block
    nb = -(-n // bn)
    mask = rng.random((k // bk, nb)) < density
    for r in empty_rows:
        mask[:, r] = False
    for r in full_rows:
        mask[:, r] = True
    w = rng.standard_normal((k, nb * bn)).astype("float32")
    w *= np.kron(mask, np.ones(block, "float32"))
    return w[:, :n]


@pytest.mark.parametrize("block", [(1, 8), (1, 16), (4, 8), (2, 4)])
def test_bsr_kernel_equals_dense_with_zero_blocks(block):
    """Random block patterns with an empty and a full output block row, N not a multiple
    of the block (padded): the BSR kernel equals x @ W (rtol 1e-5)."""
    rng = np.random.default_rng(sum(block))
    w = _blocky(rng, 64, 8 * block[1] - 3, block, 0.25, empty_rows=(0,), full_rows=(2,))
    x = rng.standard_normal((5, 64)).astype("float32")
    np.testing.assert_allclose(_run_kernel(x, w, block), x @ w, rtol=1e-5, atol=1e-5)


@settings(max_examples=12, deadline=None)
@given(m=st.integers(1, 6), kb=st.integers(1, 8), n=st.integers(1, 40),
       bk=st.sampled_from([1, 2, 4]), bn=st.sampled_from([4, 8, 16]),
       density=st.floats(0.0, 1.0), seed=st.integers(0, 2**16))
def test_bsr_kernel_property(m, kb, n, bk, bn, density, seed):
    """Any shape, block and density (all-zero weights included) equals the dense product."""
    rng = np.random.default_rng(seed)
    w = _blocky(rng, kb * bk, n, (bk, bn), density)
    x = rng.standard_normal((m, kb * bk)).astype("float32")
    np.testing.assert_allclose(_run_kernel(x, w, (bk, bn)), x @ w, rtol=1e-5, atol=1e-5)


def _ffn(d=64, h=256, t=8, seed=0):
    """x [1, t, d] -> matmul -> +bias -> gelu -> matmul -> conv-free FFN (N = d + 3)."""
    rng = np.random.default_rng(seed)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, t, d), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            w1 = relax.const(rng.standard_normal((d, h)).astype("float32"))
            b1 = relax.const(rng.standard_normal((h,)).astype("float32"))
            w2 = relax.const(rng.standard_normal((h, d + 3)).astype("float32"))
            y = bb.emit(relax.op.matmul(x, w1))
            y = bb.emit(relax.op.nn.gelu(relax.op.add(y, b1)))
            out = bb.emit_output(relax.op.matmul(y, w2))
        bb.emit_func_output(out)
    return bb.get()


def test_sparsify_zeroes_the_weakest_blocks_and_reports():
    """Each layer keeps round((1 - s) * blocks) blocks, the ones of highest L2 norm; shapes
    are unchanged and the report names block, sparsity, format and why."""
    mod = _ffn()
    sparse, report = hc.sparsify(mod, sparsity=0.75, block=(1, 8), target=TARGET)
    assert relax.analysis.check_well_formed(sparse)
    assert [tuple(p.ty.shape) for p in sparse["main"].params] == [(1, 8, 64)]
    weights = [b.value.args[1].value.numpy() for blk in sparse["main"].body.blocks
               for b in blk.bindings
               if isinstance(b.value, relax.Call) and b.value.op.name == "relax.matmul"]
    dense = [b.value.args[1].value.numpy() for blk in mod["main"].body.blocks
             for b in blk.bindings
             if isinstance(b.value, relax.Call) and b.value.op.name == "relax.matmul"]
    for w, w0, layer in zip(weights, dense, report.layers, strict=True):
        kept = block_mask(w0, (1, 8), 0.75)
        assert layer.zero_blocks == kept.size - round(0.25 * kept.size)
        assert layer.format == "bsr" and "estimated" in layer.why
        pad = np.zeros((w.shape[0], kept.shape[1] * 8), np.float32)
        pad[:, :w.shape[1]] = w
        nonzero = np.abs(pad).reshape(w.shape[0], -1, 8).sum(-1) > 0
        assert (nonzero <= kept).all()  # only kept blocks hold weights
        norms = np.sqrt(np.square(np.pad(w0, ((0, 0), (0, pad.shape[1] - w0.shape[1]))))
                        .reshape(w.shape[0], -1, 8).sum(-1))
        assert norms[kept].min() >= norms[~kept].max()
    assert "blocks zero" in report.summary()


def test_build_picks_bsr_only_where_it_pays_and_outputs_do_not_change():
    """90% zero blocks: matmuls run on the BSR kernel (same outputs as the module run
    dense); 30% (70% of the blocks kept, above BSR_RELATIVE_EFFICIENCY): they stay dense;
    sparse=False: always dense."""
    mod = _ffn()
    x = np.random.default_rng(3).standard_normal((1, 8, 64)).astype("float32")
    tgt = hc.parse_target(TARGET)
    for sparsity, expect in ((0.9, 2), (0.3, 0)):
        sparse, report = hc.sparsify(mod, sparsity=sparsity, target=TARGET)
        assert sum(layer.format == "bsr" for layer in report.layers) == expect
        kernels = [gv.name_hint for gv in prepare(sparse, tgt).get_global_vars()
                   if "hcp_bsr" in gv.name_hint]
        assert len(kernels) == expect, kernels
        ref = run_relax(sparse, [x])  # TVM's default pipeline, dense
        for use_sparse in (True, False):
            got = run_relax(sparse, [x], target=TARGET,
                            build=lambda m, t, s=use_sparse: hc.build(m, t, sparse=s))
            np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_sparsify_pass_on_a_1x1_conv():
    """SparsifyBlocks works in Sequential; a 1x1 conv's weight is sparsified through its
    [I, O] view and the report picks BSR for it; outputs equal the dense build."""
    rng = np.random.default_rng(0)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 32, 6, 6), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            w = relax.const(rng.standard_normal((48, 32, 1, 1)).astype("float32"))
            out = bb.emit_output(relax.op.nn.conv2d(x, w))
        bb.emit_func_output(out)
    mod = bb.get()
    p = SparsifyBlocks(sparsity=0.9, block=(4, 8), target=TARGET)
    sparse = tvm.transform.Sequential([p])(mod)
    (layer,) = p.last_report.layers
    assert layer.shape == (32, 48) and layer.zero_blocks == 43 and layer.format == "bsr"
    w_new = sparse["main"].body.blocks[0].bindings[0].value.args[1].value.numpy()
    assert (w_new[:, :, 0, 0].T.reshape(8, 4, 6, 8).any(axis=(1, 3))).sum() == 5
    xv = rng.standard_normal((1, 32, 6, 6)).astype("float32")
    np.testing.assert_allclose(run_relax(sparse, [xv], build=hc.build), run_relax(sparse, [xv]),
                               rtol=1e-4, atol=1e-4)


def _conv_net(c=32, hw=10, seed=0):
    """3x3 conv (c -> c) -> relu -> 1x1 (c -> 2c) -> relu -> 1x1 stride 2 (2c -> c + 4,
    not a multiple of the vector) -> relu -> 1x1 (c + 4 -> c), NCHW."""
    rng = np.random.default_rng(seed)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((2, c, hw, hw), "float32"))

    def w(o, i, k=1):
        return relax.const((rng.standard_normal((o, i, k, k)) / np.sqrt(i * k * k))
                           .astype("float32"))

    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.relu(relax.op.nn.conv2d(x, w(c, c, 3), padding=1)))
            y = bb.emit(relax.op.nn.relu(relax.op.nn.conv2d(y, w(2 * c, c))))
            y = bb.emit(relax.op.nn.relu(relax.op.nn.conv2d(y, w(c + 4, 2 * c), strides=2)))
            out = bb.emit_output(relax.op.nn.conv2d(y, w(c, c + 4)))
        bb.emit_func_output(out)
    return bb.get()


@pytest.mark.parametrize("blocked", [True, False])
def test_1x1_convs_run_on_the_bsr_kernel(blocked):
    """90% zero blocks: every 1x1 conv (stride 1 and 2, channels a multiple of the vector
    or not) runs on the BSR kernel, in the blocked NCHW{8}c layout where the layout pass
    keeps the chain blocked and in NCHW otherwise; outputs equal the dense build's
    (rtol 1e-5)."""
    sparse, report = hc.sparsify(_conv_net(), sparsity=0.9, target=TARGET)
    assert [layer.format for layer in report.layers] == ["bsr"] * 3
    tgt = hc.parse_target(TARGET)
    prepared = prepare_passes(tgt, blocked_layout=blocked)
    with tgt:
        lowered = tvm.transform.Sequential(prepared)(sparse)
    shapes = sorted(len(f.params[0].ty.shape) if hasattr(f.params[0], "ty") else
                    len(f.buffer_map[f.params[0]].shape)
                    for gv, f in lowered.functions_items() if "hcp_bsr" in gv.name_hint)
    # every conv reads the blocked layout (x [B, C/8, HW, 8]): the c + 4 channels, no
    # multiple of the block, are padded to it by PadChannels; without the layout, NCHW
    assert shapes == ([4, 4, 4] if blocked else [3, 3, 3]), shapes
    x = np.random.default_rng(1).standard_normal((2, 32, 10, 10)).astype("float32")
    got = run_relax(sparse, [x], target=TARGET,
                    build=lambda m, t: hc.build(m, t, blocked_layout=blocked))
    ref = run_relax(sparse, [x], target=TARGET,
                    build=lambda m, t: hc.build(m, t, blocked_layout=blocked, sparse=False))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


@pytest.mark.parametrize("kwargs, match", [
    ({"sparsity": 1.0}, "sparsity must be in"),
    ({"sparsity": 0.5, "criterion": "fpgm"}, "unknown block criterion"),
    ({"sparsity": 0.5, "block": (0, 8)}, "block must be"),
])
def test_bad_sparsify_input(kwargs, match):
    with pytest.raises(HCPruneError, match=match):
        hc.sparsify(_ffn(), **kwargs)


def test_bert_style_encoder_ffn_on_bsr_equals_the_dense_build(tmp_path):
    """A small BERT-style encoder (ONNX) with its FFN layers at 90% block sparsity: the
    build runs exactly those on the BSR kernel and its outputs equal the dense build of the
    same sparsified module (rtol 1e-4); the dense model built (FastMath's erf and softmax
    included) equals onnxruntime."""
    import onnx
    import onnxruntime as ort

    from tvm_hcprune.testing.onnx_models import bert_encoder

    model = bert_encoder(layers=2, hidden=64, heads=4, ffn=256, seq=16)
    onnx.save(model, tmp_path / "bert.onnx")
    mod = hc.load_onnx(str(tmp_path / "bert.onnx"))
    x = np.random.default_rng(0).standard_normal((1, 16, 64)).astype("float32")
    ort_out = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"]).run(None, {"input": x})
    dense = run_relax(mod, [x], target=TARGET, build=hc.build)
    np.testing.assert_allclose(dense, ort_out[0], rtol=1e-4, atol=1e-4)
    sparse, report = hc.sparsify(mod, sparsity=0.9, target=TARGET,
                                 layers=lambda _name, _op, shape: 256 in shape)
    assert len(report.layers) == 4 and {layer.format for layer in report.layers} == {"bsr"}
    calls = prepare(sparse, hc.parse_target(TARGET))["main"].script().count("hcp_bsr_matmul")
    assert calls == 4, calls
    got = run_relax(sparse, [x], target=TARGET, build=hc.build)
    ref = run_relax(sparse, [x], target=TARGET,
                    build=lambda m, t: hc.build(m, t, sparse=False))
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_sparsify_per_layer_sparsity_and_layer_selection():
    """A mapping gives each named layer its own sparsity (others stay dense); ``layers``
    selects by name or predicate; unknown names are clear errors."""
    mod = _ffn()
    names = [name for name, _, _ in sparsifiable_layers(mod)]
    assert len(names) == 2
    _, report = hc.sparsify(mod, sparsity={names[0]: 0.5, names[1]: 0.75}, block=(1, 8))
    assert [round(layer.sparsity, 2) for layer in report.layers] == [0.5, 0.75]
    blocks = [layer.blocks for layer in report.layers]  # the mean is weighted by blocks
    assert report.sparsity == pytest.approx((0.5 * blocks[0] + 0.75 * blocks[1]) / sum(blocks))
    _, report = hc.sparsify(mod, sparsity=0.5, block=(1, 8), layers=[names[1]])
    assert [layer.name for layer in report.layers] == [names[1]]
    _, report = hc.sparsify(mod, sparsity=0.5, block=(1, 8),
                            layers=lambda _n, _op, shape: shape[0] == 64)
    assert [layer.name for layer in report.layers] == [names[0]]
    with pytest.raises(HCPruneError, match="not sparsifiable"):
        hc.sparsify(mod, sparsity={"nope": 0.5})
    with pytest.raises(HCPruneError, match="not sparsifiable"):
        hc.sparsify(mod, layers=["nope"])


def _sensitive_chain(seed=0):
    """x [1, 8, 32] -> W1 (32x64, a few strong blocks, many near zero) -> relu -> W2 (64x64,
    every block alike) -> relu -> W3 (64x16, a few strong blocks)."""
    rng = np.random.default_rng(seed)

    def peaked(k, n):
        w = rng.standard_normal((k, n)) * 0.02
        mask = rng.random((k, n // 8)) < 0.15
        return (w + np.kron(mask, np.ones((1, 8))) * rng.standard_normal((k, n))).astype(
            "float32") / np.sqrt(k)

    flat = (np.sign(rng.standard_normal((64, 64))) / 8).astype("float32")
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 8, 32), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.relu(relax.op.matmul(x, relax.const(peaked(32, 64)))))
            y = bb.emit(relax.op.nn.relu(relax.op.matmul(y, relax.const(flat))))
            out = bb.emit_output(relax.op.matmul(y, relax.const(peaked(64, 16))))
        bb.emit_func_output(out)
    return bb.get()


def test_sparsify_with_calibration_gives_sensitive_layers_less_sparsity():
    """With calibration samples the evenly-weighted W2 (every block matters) gets less
    sparsity than the peaked W1 and W3, the zeroed fraction of all blocks is the sparsity
    asked for, and the output error is below the uniform allocation's."""
    from tvm_hcprune.recovery.runner import output_error

    mod = _sensitive_chain()
    samples = np.random.default_rng(1).standard_normal((6, 1, 8, 32)).astype("float32")
    sparse, report = hc.sparsify(mod, sparsity=0.7, block=(1, 8), target=TARGET,
                                 calibration=samples, levels=(0.5, 0.7, 0.85, 0.95))
    s1, s2, s3 = (layer.sparsity for layer in report.layers)
    assert s2 < s1 and s2 < s3, (s1, s2, s3)
    assert report.sparsity == 0.7 and report.sensitivity["n_samples"] == 6
    total = sum(layer.blocks for layer in report.layers)
    assert abs(report.zero_fraction - 0.7) <= len(report.layers) / total
    uniform, _ = hc.sparsify(mod, sparsity=0.7, block=(1, 8), target=TARGET)
    dense = np.stack([run_relax(mod, [x]) for x in samples])
    err = {name: output_error(np.stack([run_relax(m, [x]) for x in samples]), dense)[0]
           for name, m in (("calibrated", sparse), ("uniform", uniform))}
    assert err["calibrated"] < err["uniform"], err


def test_allocate_sparsity_keeps_the_mean():
    """The block-weighted mean of the allocation is the target exactly; a target above the
    highest level scanned and a mapping with calibration are clear errors."""
    from tvm_hcprune.recovery.sparse_sensitivity import BlockSensitivity, allocate_sparsity

    table = BlockSensitivity((0.5, 0.9), blocks={"a": 100, "b": 300, "c": 50},
                             error={"a": {0.5: 0.01, 0.9: 0.05}, "b": {0.5: 0.2, 0.9: 0.9},
                                    "c": {0.5: 0.001, 0.9: 0.002}})
    alloc = allocate_sparsity(table, 0.6)
    mean = (alloc["a"] * 100 + alloc["b"] * 300 + alloc["c"] * 50) / 450
    assert mean == pytest.approx(0.6, abs=1e-9)
    assert alloc["c"] == pytest.approx(0.9) and alloc["a"] == pytest.approx(0.9)
    assert alloc["b"] < 0.6
    with pytest.raises(HCPruneError, match="above the highest level"):
        allocate_sparsity(table, 0.95)
    with pytest.raises(HCPruneError, match="not a mapping"):
        hc.sparsify(_ffn(), sparsity={"lv": 0.5}, calibration=np.zeros((1, 1, 8, 64), "f4"))


def test_build_measures_the_format_per_layer():
    """sparse="measure": each block-sparse layer's BSR and dense kernels are timed and the
    faster one is kept (the decision says both times); outputs equal the dense build."""
    from tvm_hcprune.backend.cpu.bsr import UseBlockSparse
    from tvm_hcprune.backend.sparse_choice import MeasuredChoice

    sparse, _ = hc.sparsify(_ffn(d=64, h=256, t=32), sparsity=0.9, target=TARGET)
    tgt = hc.parse_target(TARGET)
    choice = MeasuredChoice(tgt, lambda m, b: hc.build(m, tgt, database=False, sparse=False,
                                                       blocked_layout=b), number=5, rounds=2)
    prof = hc.profile_for(tgt)
    pas = UseBlockSparse((1, 8), prof, choice)
    with tgt:
        out = pas(sparse)
    assert len(pas.decisions) == 2
    for d in pas.decisions:
        assert d["why"].startswith("measured")
        assert d["format"] == ("bsr" if d["bsr_ms"] < d["dense_ms"] else "dense")
    assert out["main"].script().count("hcp_bsr") == sum(d["format"] == "bsr"
                                                        for d in pas.decisions)
    x = np.random.default_rng(3).standard_normal((1, 32, 64)).astype("float32")
    got = run_relax(sparse, [x], target=TARGET,
                    build=lambda m, t: hc.build(m, t, sparse="measure"))
    ref = run_relax(sparse, [x], target=TARGET, build=lambda m, t: hc.build(m, t, sparse=False))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def _cuda_sparse_build():
    from tvm_hcprune.backend.cuda import build_cuda, cuda_target

    tgt = cuda_target("sm_80")
    sparse, report = hc.sparsify(_ffn(), sparsity=0.95, target=tgt)
    return sparse, report, build_cuda(sparse, tgt)


def test_cuda_bsr_kernel_builds_and_nvcc_compiles():
    """On a cuda target the 95%-sparse matmuls become the CUDA BSR kernel (thread-bound
    TIR, left alone by dlight) and the generated source compiles with nvcc."""
    from tvm_hcprune.backend.cuda import cuda_source, have_nvcc, kernel_names, nvcc_compile

    _, report, ex = _cuda_sparse_build()
    assert report.block == (16, 16) and {la.format for la in report.layers} == {"bsr"}
    src = cuda_source(ex)
    assert sum("bsr_matmul" in name for name in kernel_names(src)) == 2, kernel_names(src)
    if have_nvcc():  # CI without the CUDA toolkit still checks the source above
        assert nvcc_compile(src, "sm_80")


def test_cuda_bsr_kernel_runs_like_the_cpu():
    """On a GPU the CUDA BSR build equals the dense CPU run of the sparsified module."""
    from tvm_hcprune.backend.cuda import has_gpu

    if not has_gpu():
        pytest.skip("no GPU on this machine (the build is checked by the test above)")
    sparse, _, ex = _cuda_sparse_build()
    x = np.random.default_rng(3).standard_normal((1, 8, 64)).astype("float32")
    dev = tvm.cuda(0)
    got = relax.VirtualMachine(ex, dev)["main"](tvm.runtime.tensor(x, dev)).numpy()
    np.testing.assert_allclose(got, run_relax(sparse, [x]), rtol=1e-4, atol=1e-4)
