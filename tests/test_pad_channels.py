"""PadChannels: channel groups off the SIMD block get zero channels; outputs unchanged."""

import numpy as np
import onnxruntime as ort
import pytest
import tvm
from tvm import relax

import tvm_hcprune as hc
from tvm_hcprune.backend.cpu.pad_channels import SHARED_AXIS, PadChannels, padded_groups
from tvm_hcprune.testing import onnx_models

RNG = np.random.default_rng(0)


def _w(*shape):
    return relax.const(RNG.standard_normal(shape).astype("float32") * 0.2)


def residual_24(concat=False):
    """x(16) -> conv 24 -> relu -> conv 24 (+x1) -> conv 16 [-> concat with x]."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 16, 8, 8), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            a = bb.emit(relax.op.nn.conv2d(x, _w(24, 16, 1, 1)))
            a = bb.emit(relax.op.nn.relu(relax.op.add(a, _w(1, 24, 1, 1))))
            b = bb.emit(relax.op.nn.conv2d(a, _w(24, 24, 3, 3), padding=1))
            c = bb.emit(relax.op.add(a, b))
            d = bb.emit(relax.op.nn.conv2d(c, _w(16, 24, 1, 1)))
            if concat:  # the 24-channel tensor shares the concat's axis: not paddable
                d = bb.emit(relax.op.concat([c, d], axis=1))
            out = bb.emit_output(relax.op.add(d, relax.const(1.0)))
        bb.emit_func_output(out)
    return bb.get()


def _run_default(mod, x):
    target = tvm.target.Target({"kind": "llvm", "mcpu": "haswell"})
    ex = tvm.compile(mod, target, relax_pipeline=relax.get_default_pipeline(target))
    return relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()


def _conv_shapes(mod):
    shapes = []

    def visit(e):
        if isinstance(e, relax.Call) and getattr(e.op, "name", "") == "relax.nn.conv2d":
            shapes.append(tuple(int(d) for d in e.args[1].ty.shape))

    relax.analysis.post_order_visit(mod["main"], visit)
    return shapes


def test_residual_group_padded_to_the_block():
    """Before: 24-channel producer and consumer convs; after: 32 (zero channels), the
    16-channel output conv keeps its width, and the function is the same."""
    mod = residual_24()
    assert _conv_shapes(mod) == [(24, 16, 1, 1), (24, 24, 3, 3), (16, 24, 1, 1)]
    p = PadChannels(block=16)
    after = p(mod)
    assert list(p.padded.values()) == [(24, 32)]
    assert _conv_shapes(after) == [(32, 16, 1, 1), (32, 32, 3, 3), (16, 32, 1, 1)]
    relax.analysis.well_formed(after)  # raises on a violation
    x = RNG.standard_normal((1, 16, 8, 8)).astype("float32")
    np.testing.assert_allclose(_run_default(after, x), _run_default(mod, x),
                               rtol=1e-5, atol=1e-5)


def test_group_sharing_an_axis_keeps_its_width():
    """Channels that a concat lays beside others are not padded (the added channels would
    shift the others), and a block multiple needs nothing."""
    mod = residual_24(concat=True)
    graph = hc.analyze(mod)
    assert padded_groups(graph, 16) == {}
    p = PadChannels(block=16)
    assert p(mod).same_as(mod) and p.padded == {}
    assert padded_groups(hc.analyze(residual_24()), 8) == {}  # 24 = 3 x 8: nothing to pad


def test_shared_axis_is_recorded():
    from tvm_hcprune.backend.cpu.pad_channels import group_ops

    graph = hc.analyze(residual_24(concat=True))
    g24 = next(g.id for g in graph.groups if g.size == 24)
    assert SHARED_AXIS in group_ops(graph)[g24]


@pytest.mark.parametrize("width_mult", [1.0, 0.75])
def test_mobilenet_v2_build_pads_and_matches_onnxruntime(width_mult, tmp_path):
    """MobileNetV2's 24-channel stage (width 1.0; 0.75 gives 16/24/... widths) is padded in
    the CPU build, which still matches onnxruntime (rtol 1e-4) and the unpadded model."""
    model = onnx_models.mobilenet_v2(width_mult=width_mult, image=32, num_classes=10)
    path = tmp_path / "mbv2.onnx"
    path.write_bytes(model.SerializeToString())
    mod = hc.load_onnx(str(path), log=lambda *a: None)
    p = PadChannels(block=16)
    padded = p(mod)
    assert any(old % 16 and new % 16 == 0 for old, new in p.padded.values())
    x = RNG.standard_normal((1, 3, 32, 32)).astype("float32")
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    target = tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512", "num-cores": 2})
    if hc.profile_for("llvm").isa != "avx512":
        target = tvm.target.Target({"kind": "llvm", "mcpu": "haswell", "num-cores": 2})
    ours = relax.VirtualMachine(hc.build(mod, target), tvm.cpu())["main"](
        tvm.runtime.tensor(x)).numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    np.testing.assert_allclose(_run_default(padded, x), _run_default(mod, x), rtol=1e-5,
                               atol=1e-5 * np.abs(ref).max())
