"""CPU dense rule: numerics against TVM's default pipeline on odd shapes."""

import numpy as np
import pytest
import tvm
from tvm import relax

from tvm_hcprune.backend.cpu import dense
from tvm_hcprune.backend.pipeline import get_pipeline
from tvm_hcprune.hardware import profile_for

TARGET = tvm.target.Target({"kind": "llvm", "mcpu": "haswell", "num-cores": 2})
# 16-lane plans (one- and two-vector column blocks, padded tiles): AVX-512 hosts only
TARGET_AVX512 = tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512", "num-cores": 2})


def dense_module(xshape, n, bias=True, act=None):
    rng = np.random.default_rng(sum(xshape) + n)
    k = xshape[-1]
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(xshape, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            w = rng.standard_normal((n, k)).astype("float32")
            # ONNX Gemm imports as permute_dims(W) + matmul + add
            y = bb.emit(relax.op.matmul(x, relax.op.permute_dims(relax.const(w))))
            if bias:
                y = bb.emit(relax.op.add(y, relax.const(rng.standard_normal(n).astype("float32"))))
            if act == "relu":
                y = bb.emit(relax.op.nn.relu(y))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get()


def _run(mod, pipeline, x, target=TARGET):
    vm = relax.VirtualMachine(tvm.compile(mod, target, relax_pipeline=pipeline), tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy()


@pytest.mark.parametrize(
    ("xshape", "n", "bias", "act"),
    [
        ((1, 512), 1000, True, None),  # classifier head
        ((3, 7), 5, True, "relu"),  # nothing aligned
        ((2, 5, 24), 40, False, "relu"),  # batched rows, 3-D input
        ((1, 1), 1, True, None),  # degenerate
        ((8, 64), 32, True, None),  # aligned: full register tiles
        ((13, 32), 48, True, "relu"),  # 5-row tiles over 15 rows: the last tile padded
        ((2, 11, 24), 32, False, None),  # batched rows, padded tile in each batch
    ],
)
def test_dense_rule_matches_default(xshape, n, bias, act):
    """The packed dense kernel gives TVM's default pipeline's output (rtol 1e-5)."""
    mod = dense_module(xshape, n, bias, act)
    x = np.random.default_rng(2).standard_normal(xshape).astype("float32")
    ref = _run(mod, relax.get_default_pipeline(TARGET), x)
    ours = _run(mod, get_pipeline(TARGET, strict=True), x)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(ref).max()))


@pytest.mark.skipif(profile_for("llvm").isa != "avx512",
                    reason="the host CPU has no AVX-512 to run 16-lane code")
@pytest.mark.parametrize(("xshape", "n"), [((128, 40), 96), ((12, 33), 48), ((1, 70), 1000),
                                           ((2, 9, 16), 80)])
def test_dense_rule_matches_default_16_lanes(xshape, n):
    """The AVX-512 plans (16-lane blocks, padded tiles) give the default's
    output."""
    mod = dense_module(xshape, n, True, "relu")
    x = np.random.default_rng(3).standard_normal(xshape).astype("float32")
    ref = _run(mod, relax.get_default_pipeline(TARGET_AVX512), x, TARGET_AVX512)
    ours = _run(mod, get_pipeline(TARGET_AVX512, strict=True), x, TARGET_AVX512)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(ref).max()))


@pytest.mark.parametrize(("m", "n", "lanes", "registers"),
                         [(13, 48, 8, 16), (11, 32, 8, 16), (128, 3072, 16, 32),
                          (128, 3072, 8, 16), (1, 1000, 16, 32), (196, 64, 4, 32)])
def test_dense_plan_tiles(m, n, lanes, registers):
    """Register tiles fit the register file; a row count that no good tile divides is
    padded to whole tiles (the cases above the line in the numeric test use such plans)."""
    nb, rows, m_pad = dense.plan_dense(m, n, lanes, registers)
    nvec = nb // lanes
    assert nb % lanes == 0 and rows * nvec + nvec + 2 <= registers
    assert nb * rows <= dense.MAX_DENSE_TILE_FLOATS
    assert m_pad % rows == 0 and m <= m_pad < m + rows
    if (m, lanes) in ((13, 8), (11, 8), (128, 8)):
        assert m_pad > m  # these exercise the padded tile
    if (m, n, lanes) == (128, 3072, 16):
        assert (nb, rows, m_pad) == (32, 8, 128)  # not the 4-row divisor of 128


def test_dense_kernel_is_used():
    """The matmul is routed to the packed kernel and scheduled (not left to the default)."""
    from tvm_hcprune.backend.cpu.pack import PackWeightsForCPU
    from tvm_hcprune.backend.cpu.rules import ApplyCPURules

    mod = dense_module((1, 64), 48)
    with TARGET:
        mod = tvm.transform.Sequential(
            [relax.transform.FoldConstant(), PackWeightsForCPU(lanes=8, registers=16),
             relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
             relax.transform.FuseOps(), relax.transform.FuseTIR(), ApplyCPURules(strict=True)]
        )(mod)
    funcs = {gv.name_hint: f for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)}
    (name,) = funcs
    assert name.startswith("fused_hcp_dense")  # bias add fused in
    script = funcs[name].script()
    assert "tirx.is_scheduled" in script and "T.vectorized" in script


def bmm_module(ashape, bshape):
    bb = relax.BlockBuilder()
    a = relax.Var("a", relax.TensorType(ashape, "float32"))
    b = relax.Var("b", relax.TensorType(bshape, "float32"))
    with bb.function("main", [a, b]):
        with bb.dataflow():
            s = bb.emit(relax.op.multiply(relax.op.matmul(a, b), relax.const(0.125)))
            out = bb.emit_output(relax.op.nn.softmax(s, axis=-1))
        bb.emit_func_output(out)
    return bb.get()


@pytest.mark.parametrize(
    ("ashape", "bshape"),
    [((2, 4, 7, 16), (2, 4, 16, 7)), ((3, 9, 5), (3, 5, 24)), ((1, 1, 3), (1, 3, 1)),
     ((2, 13, 16), (2, 16, 32))],
)
def test_attention_batched_matmul(ashape, bshape):
    """Batched matmuls of two run-time operands (attention scores) take the packed kernel
    and match TVM's default pipeline (rtol 1e-5)."""
    from tvm_hcprune.backend.pipeline import scheduled_kernels

    mod = bmm_module(ashape, bshape)
    rng = np.random.default_rng(4)
    av = rng.standard_normal(ashape).astype("float32")
    bv = rng.standard_normal(bshape).astype("float32")
    outs = []
    for pipe in (relax.get_default_pipeline(TARGET), get_pipeline(TARGET, strict=True)):
        vm = relax.VirtualMachine(tvm.compile(mod, TARGET, relax_pipeline=pipe), tvm.cpu())
        outs.append(vm["main"](tvm.runtime.tensor(av), tvm.runtime.tensor(bv)).numpy())
    np.testing.assert_allclose(outs[1], outs[0], rtol=1e-5, atol=1e-6)
    kernels = scheduled_kernels(mod, TARGET)
    assert len(kernels) == 1 and "hcp_bmm_pack" in next(iter(kernels.values())).script()
