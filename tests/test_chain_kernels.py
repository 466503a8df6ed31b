"""ChainKernels: consecutive parallel kernels in one thread-pool launch, same results."""

import numpy as np
import onnxruntime as ort
import pytest
import tvm
from tvm import relax
from tvm.relax.frontend.onnx import from_onnx

import tvm_hcprune as hc
from tvm_hcprune.backend.cpu.chain import BARRIER, CHAIN_PREFIX, LAUNCH_POINT, ChainKernels
from tvm_hcprune.backend.pipeline import prepare_passes, schedule_passes
from tvm_hcprune.backend.timing import kernel_times
from tvm_hcprune.testing.onnx_models import mobilenet_v2
from tvm_hcprune.testing.relax_models import inverted_residual

TARGET = hc.parse_target({"kind": "llvm", "num-cores": 2})


def _scheduled(mod):
    with TARGET:
        return tvm.transform.Sequential(prepare_passes(TARGET) + schedule_passes(TARGET, None))(
            mod)


def _kernels(mod) -> list[str]:
    """Names of the PrimFuncs ``main`` calls, in order."""
    from tvm_hcprune.utils.relax import calls

    return [c.args[0].name_hint for c in calls(mod)
            if isinstance(c.op, tvm.ir.Op) and c.op.name == "relax.call_tir"]


def _counts(func) -> tuple[int, int, int]:
    s = func.script()
    return s.count("T.parallel"), s.count(LAUNCH_POINT), s.count(BARRIER)


def test_pass_chains_the_block_into_one_launch():
    """Before/after on a scheduled inverted-residual block: the kernels become one PrimFunc
    whose parallel loop nests (all of them, none lost) share one launch point, with a
    barrier between consecutive nests."""
    before = _scheduled(inverted_residual(16, 48, 14))
    after = ChainKernels()(before)
    old, new = _kernels(before), _kernels(after)
    chained = [n for n in new if n.startswith(CHAIN_PREFIX)]
    assert len(chained) == 1 and len(new) < len(old)
    nests = sum(_counts(before[n])[0] for n in old if n not in new)
    assert _counts(after[chained[0]]) == (nests, 1, nests - 1)
    assert relax.analysis.check_well_formed(after)


def test_small_intermediates_and_small_kernels_only():
    """An intermediate larger than ``max_bytes`` ends a run, a kernel with more work than
    ``max_macs`` stays alone: with either at 0 nothing changes."""
    before = _scheduled(inverted_residual(16, 48, 14))
    tvm.ir.assert_structural_equal(ChainKernels(max_bytes=0)(before), before)
    tvm.ir.assert_structural_equal(ChainKernels(max_macs=0)(before), before)
    # the first kernel's result (16 channels x 14 x 14 floats) is 12.5 KB
    small = ChainKernels(max_bytes=12 * 1024)(before)
    assert len(_kernels(small)) > len(_kernels(ChainKernels()(before)))


def _two_convs(cin, c1, c2, hw, k2, seed, both=False):
    """conv-relu (1x1, ``cin -> c1``) then conv (``k2`` x ``k2``, ``c1 -> c2``, same padding,
    relu when ``both``) on a ``hw`` x ``hw`` input; ``both`` returns ``(z, y)``.
    Returns ``(module, input)``."""
    bb = relax.BlockBuilder()
    rng = np.random.default_rng(seed)
    x = relax.Var("x", relax.TensorType((1, cin, hw, hw), "float32"))
    w1 = relax.const(rng.standard_normal((c1, cin, 1, 1)).astype("float32"))
    w2 = relax.const(rng.standard_normal((c2, c1, k2, k2)).astype("float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.relu(relax.op.nn.conv2d(x, w1)))
            z = relax.op.nn.conv2d(y, w2, padding=k2 // 2)
            out = (bb.emit_output(relax.Tuple([bb.emit(relax.op.nn.relu(z)), y])) if both
                   else bb.emit_output(z))
        bb.emit_func_output(out)
    return bb.get(), rng.standard_normal((1, cin, hw, hw)).astype("float32")


def _outputs(mod, xv) -> tuple[list, list]:
    """``(TVM's default build, hc.build)`` outputs of ``mod`` on ``xv``, as numpy arrays."""
    outs = []
    for ex in (tvm.compile(mod, "llvm"), hc.build(mod, TARGET)):
        res = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(xv))
        outs.append([res.numpy()] if hasattr(res, "numpy") else [r.numpy() for r in res])
    return outs[0], outs[1]


def test_result_used_outside_the_run_stays_a_kernel_output():
    """A result the function returns (used after the run) is never a chain's inner buffer:
    both outputs are right."""
    ref, got = _outputs(*_two_convs(16, 32, 32, 10, 3, seed=0, both=True))
    assert len(got) == len(ref) == 2
    for g, r in zip(got, ref, strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-4)


@pytest.fixture(scope="module")
def pruned_mobilenet():
    model = mobilenet_v2(width_mult=0.5, image=64, num_classes=10)
    mod = from_onnx(model)
    pruned, _ = hc.prune(mod, ratio=0.3)
    return model, mod, pruned


def test_mobilenet_chained_equals_unchained_and_onnxruntime(pruned_mobilenet):
    """A (pruned and dense) MobileNetV2 runs as far fewer kernels, bit-identical to the
    unchained build (the kernels' code is the same), and the dense one agrees with
    onnxruntime."""
    model, dense, pruned = pruned_mobilenet
    x = np.random.default_rng(1).standard_normal((1, 3, 64, 64)).astype("float32")
    xt = tvm.runtime.tensor(x)
    chained = {}
    for mod in (dense, pruned):
        on = chained[mod] = relax.VirtualMachine(hc.build(mod, TARGET), tvm.cpu())
        off = relax.VirtualMachine(hc.build(mod, TARGET, chain_kernels=False), tvm.cpu())
        got, ref = on["main"](xt).numpy(), off["main"](xt).numpy()
        np.testing.assert_array_equal(got, ref)
        n_on, n_off = len(kernel_times(on, [xt], 1)), len(kernel_times(off, [xt], 1))
        assert n_on * 4 <= n_off, (n_on, n_off)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    want = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    got = chained[dense]["main"](xt).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))


def test_one_iteration_parallel_loop_is_not_chained():
    """A parallel loop of one iteration is lowered away (its body would run on every task of
    a shared launch, and TVM's codegen refuses a launch without a parallel loop): such
    kernels stay on their own, and the tiny model builds and runs right."""
    ref, got = _outputs(*_two_convs(8, 8, 8, 1, 1, seed=4))
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-5, atol=1e-5)
