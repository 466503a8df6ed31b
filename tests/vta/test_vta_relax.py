"""Relax integration: quantise, offload to the simulator, match the int8 model on llvm."""

import json

import numpy as np
import pytest
import tvm
import tvm_ffi
from tvm import relax

from tvm_hcprune.utils.relax import bindings, op_name
from tvm_hcprune.vta import relax as vr
from tvm_hcprune.vta.codegen import Conv2DShape


def _toy_module(seed=0, cin=3):
    """conv cin->16 (first), conv 16->32 +bias, grouped conv, conv 32->24, conv 24->16, dense."""
    rng = np.random.default_rng(seed)

    def w(*shape):
        return relax.const((rng.standard_normal(shape) * 0.2).astype(np.float32))

    bb = relax.BlockBuilder()
    x = relax.Var("input", relax.TensorType((1, cin, 8, 8), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            a = bb.emit(relax.op.nn.relu(relax.op.nn.conv2d(x, w(16, cin, 3, 3), padding=1)))
            b = bb.emit(relax.op.nn.conv2d(a, w(32, 16, 3, 3), padding=1))
            b = bb.emit(relax.op.nn.relu(relax.op.add(b, w(1, 32, 1, 1))))
            c = bb.emit(relax.op.nn.conv2d(b, w(32, 16, 3, 3), padding=1, groups=2))
            d = bb.emit(relax.op.nn.conv2d(c, w(24, 32, 1, 1), strides=2))
            e = bb.emit(relax.op.nn.conv2d(d, w(16, 24, 3, 3), padding=1))
            f = bb.emit(relax.op.reshape(relax.op.mean(e, axis=[2, 3]), (1, 16)))
            g = bb.emit(relax.op.add(relax.op.matmul(f, w(16, 10)), w(10)))
            out = bb.emit_output(g)
        bb.emit_func_output(out)
    return bb.get()


def test_eligibility_reasons():
    """groups != 1, Cin % 16 != 0 and the first layer stay on the CPU, with reasons."""
    mod = relax.transform.FoldConstant()(_toy_module())
    cands = vr.find_candidates(mod)
    reasons = [c.reason for c in cands]
    assert reasons[0] == "3 input channels is not a multiple of 16"
    assert reasons[1] == ""                       # conv 16->32 (its bias add is fused)
    assert cands[1].bias is not None
    assert "groups=2" in reasons[2]
    assert reasons[3] == ""                       # conv 32->24 (24 outputs are zero-padded)
    assert "24 input channels" in reasons[4]
    assert reasons[5] == "" and cands[5].kind == "dense"
    mod16 = relax.transform.FoldConstant()(_toy_module(cin=16))
    assert vr.find_candidates(mod16)[0].reason == "first layer stays on the CPU"
    assert vr.find_candidates(mod16, skip_first=False)[0].reason == ""


def test_toy_offload_bit_exact_and_counted():
    """Offloaded toy model equals the same int8 model on llvm; the profiler counts it."""
    rng = np.random.default_rng(1)
    samples = [rng.standard_normal((1, 3, 8, 8)).astype(np.float32) for _ in range(3)]
    mod, plan = vr.quantize(_toy_module(), samples)
    assert len(plan.layers) == 3 and len(plan.skipped) == 3
    vta, ref = vr.build_vta(mod, plan, "vta"), vr.build_vta(mod, plan, "llvm")
    status = tvm_ffi.get_global_func("vta.simulator.profiler_status")
    tvm_ffi.get_global_func("vta.simulator.profiler_clear")()
    vr.clear_layer_log()
    x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(vta(x), ref(x))
    stats = json.loads(status())
    log = vr.layer_log()
    assert [r["kind"] for r in log] == ["conv2d", "conv2d", "dense"]
    # conv 16->32 3x3 on 8x8: 1 x 2 blocks x 64 px x 9; conv 32->24 1x1 s2: 2 x 2 x 16
    want = [Conv2DShape(1, 1, 8, 8, 2, 3, 3, (1, 1), (1, 1)).gemm_uops(),
            Conv2DShape(1, 2, 8, 8, 2, 1, 1, (2, 2), (0, 0)).gemm_uops(), 1 * 1]
    assert [r["counters"]["gemm_counter"] for r in log] == want
    assert stats["gemm_counter"] == sum(want)
    assert all(r["estimated_cycles"] > 0 for r in log)
    # and as a registered pipeline through tvm.compile
    pipe = relax.get_pipeline("hcprune_vta", plan=plan)
    tgt = tvm.target.Target({"kind": "llvm"})
    vm = relax.VirtualMachine(tvm.compile(mod, tgt, relax_pipeline=pipe), tvm.cpu())
    np.testing.assert_array_equal(vm["main"](tvm.runtime.tensor(x)).numpy(), ref(x))


@pytest.mark.slow
def test_pruned_mnist_int8_on_vta_matches_llvm():
    """The bundled MNIST ResNet, pruned for VTA (align 16), int8: simulator == llvm."""
    import tvm_hcprune
    from tvm_hcprune.zoo.datasets import mnist_test
    from tvm_hcprune.zoo.models import bundled_model

    mod = tvm_hcprune.load_onnx(bundled_model("mnist_resnet"), log=lambda *_: None)
    pruned, report = tvm_hcprune.prune(mod, ratio=0.5, target="vta")
    assert report.align == 16
    data = mnist_test(12)
    pmod, plan = vr.quantize(pruned, [s for s in data.samples[:6]])
    for q in plan.layers.values():  # every offloaded width is a multiple of 16
        assert q.weight.shape[1] % 16 == 0
        if q.kind == "conv2d":
            assert q.weight.shape[0] % 16 == 0
    assert len(plan.layers) >= 5
    vta, ref = vr.build_vta(pmod, plan, "vta"), vr.build_vta(pmod, plan, "llvm")
    vr.clear_layer_log()
    for x in data.samples[6:]:
        np.testing.assert_array_equal(vta(x), ref(x))
    assert len(vr.layer_log()) == 6 * len(plan.layers)


def test_vta_aligned_pruner_widths():
    """prune(target="vta") keeps every conv/dense width a multiple of 16 (bar the image input
    and the frozen logits), so every layer after the first stays offloadable."""
    from tvm.relax.frontend.onnx import from_onnx

    import tvm_hcprune
    from tvm_hcprune.testing.onnx_models import small_resnet

    mod = from_onnx(small_resnet())
    graph = tvm_hcprune.analyze(mod)
    for ratio in (0.1, 0.3, 0.6):
        pruned, report = tvm_hcprune.prune(mod, ratio=ratio, target="vta", graph=graph)
        assert report.align == 16 and report.macs_after < report.macs_before
        cands = vr.find_candidates(relax.transform.FoldConstant()(pruned))
        assert len(cands) == 10
        assert [c.eligible for c in cands] == [False] + [True] * 9
        for b in bindings(pruned["main"]):
            if op_name(b.value) == "relax.nn.conv2d":
                o, i = (int(d) for d in b.value.args[1].value.numpy().shape[:2])
                assert o % 16 == 0 and (i % 16 == 0 or i == 3), (ratio, o, i)


def _wrong_scale(plan):
    """``plan`` with the last offloaded layer's weight scale recorded one power of two too
    small (its int8 weights unchanged): the requantisation shift is one bit too large, so
    the layer's output is halved, the kind of scale bug an int8-vs-int8 comparison cannot
    see."""
    import dataclasses

    layers = dict(plan.layers)
    var, q = list(layers.items())[-1]
    layers[var] = dataclasses.replace(q, w_exp=q.w_exp - 1)
    return dataclasses.replace(plan, layers=layers)


@pytest.mark.slow
def test_vta_int8_agrees_with_the_float_model_on_mnist():
    """The bundled MNIST ResNet, int8 on the simulator, against the float model it was
    quantised from, on real held-out MNIST digits: top-1 agrees on at least 95% of them,
    accuracy drops by at most 2 points, and the logits stay within 15% of their range.
    A plan with one wrong scale (x1/2) fails that bound while still matching its own int8
    llvm lowering bit for bit, which the int8-vs-int8 checks would pass."""
    import tvm_hcprune
    from tvm_hcprune.testing import run_relax
    from tvm_hcprune.zoo.datasets import mnist_test
    from tvm_hcprune.zoo.models import bundled_model

    # the dense model (every width is a multiple of 16): pruning without recovery would
    # leave a float model too poor to compare top-1 with
    mod = tvm_hcprune.load_onnx(bundled_model("mnist_resnet"), log=lambda *_: None)
    data = mnist_test(72)
    calib, test = data.samples[:8], data.samples[8:]
    labels = data.labels[8:]
    fmod, plan = vr.quantize(mod, list(calib))
    assert len(plan.layers) >= 5
    float_vm = relax.VirtualMachine(tvm.compile(fmod, tvm.target.Target({"kind": "llvm"})),
                                    tvm.cpu())
    ref = np.concatenate([float_vm["main"](tvm.runtime.tensor(x)).numpy() for x in test])
    # the float module quantize() returns is the model itself (BN folded)
    np.testing.assert_allclose(ref[:1], run_relax(mod, [test[0]]), rtol=1e-4, atol=1e-4)
    vta = vr.build_vta(fmod, plan, "vta")
    got = np.concatenate([vta(x) for x in test])
    span = float(ref.max() - ref.min())
    err = float(np.abs(got - ref).max())
    agree = float(np.mean(got.argmax(1) == ref.argmax(1)))
    acc_float = float(np.mean(ref.argmax(1) == labels))
    acc_int8 = float(np.mean(got.argmax(1) == labels))
    assert acc_float >= 0.9, acc_float  # the float model is a real classifier
    assert agree >= 0.95, (agree, acc_float, acc_int8)
    assert acc_int8 >= acc_float - 0.02, (acc_float, acc_int8)
    assert err <= 0.15 * span, (err, span)

    bad = _wrong_scale(plan)
    bad_vta, bad_llvm = vr.build_vta(fmod, bad, "vta"), vr.build_vta(fmod, bad, "llvm")
    bad_out = np.concatenate([bad_vta(x) for x in test[:16]])
    np.testing.assert_array_equal(bad_out, np.concatenate([bad_llvm(x) for x in test[:16]]))
    assert float(np.abs(bad_out - ref[:16]).max()) > 0.15 * span
