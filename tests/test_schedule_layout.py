"""Channel-blocked activations between convs (tvm_hcprune.backend.cpu.layout): structure before /
after, numerics against TVM's default pipeline, the unblocking fallback, the in-place kernel
and the fused epilogue."""

import numpy as np
import pytest
import tvm
from test_schedule_conv import HOST_AVX512, TARGET, TARGET_AVX512, conv_module
from test_schedule_grouped import write_counts
from tvm import relax, topi

from tvm_hcprune.backend.cpu.conv2d_nchwc import layout_block
from tvm_hcprune.backend.cpu.layout import BlockChannelLayout, raise_minmax
from tvm_hcprune.backend.cpu.rules import rule_schedule
from tvm_hcprune.backend.pipeline import (
    get_pipeline,
    prepare_passes,
    schedule_passes,
    scheduled_kernels,
)


def _ops(mod) -> list[str]:
    names = []

    def _visit(expr):
        if isinstance(expr, relax.Call) and hasattr(expr.op, "name"):
            op = expr.op.name
            if op == "relax.nn.conv2d":
                op += ":" + str(expr.attrs.data_layout)
            names.append(op)

    relax.analysis.post_order_visit(mod["main"], _visit)
    return names


def _block_net(c=16, hw=(12, 10), clip_as_call_tir=True):
    """conv 1x1 -> bias -> clip (as ONNX imports it: call_tir max/min) -> depthwise 3x3 ->
    relu -> conv 1x1 -> residual add -> clip."""
    rng = np.random.default_rng(7)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, c, *hw), "float32"))

    def const(*shape):
        return relax.const(rng.standard_normal(shape).astype("float32"))

    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.add(relax.op.nn.conv2d(x, const(2 * c, c, 1, 1)),
                                     const(1, 2 * c, 1, 1)))
            if clip_as_call_tir:
                y = bb.emit_te(topi.maximum, y, relax.const(0.0, "float32"))
                y = bb.emit_te(topi.minimum, y, relax.const(6.0, "float32"))
            else:
                y = bb.emit(relax.op.clip(y, 0.0, 6.0))
            y = bb.emit(relax.op.nn.relu(relax.op.nn.conv2d(
                y, const(2 * c, 1, 3, 3), padding=1, groups=2 * c)))
            y = bb.emit(relax.op.add(relax.op.nn.conv2d(y, const(c, 2 * c, 1, 1)), x))
            out = bb.emit_output(relax.op.clip(y, -1.0, 1.0))
        bb.emit_func_output(out)
    return bb.get()


def _check(mod, strict=True, target=TARGET, **kw):
    """Our pipeline's output equals TVM's default pipeline's on random inputs (every
    parameter of ``main``)."""
    rng = np.random.default_rng(1)
    args = [rng.standard_normal([int(d) for d in p.ty.shape]).astype("float32")
            for p in mod["main"].params]
    outs = []
    for pipe in (relax.get_default_pipeline(target), get_pipeline(target, strict=strict, **kw)):
        vm = relax.VirtualMachine(tvm.compile(mod, target, relax_pipeline=pipe), tvm.cpu())
        outs.append(vm["main"](*[tvm.runtime.tensor(a) for a in args]).numpy())
    ref, ours = outs
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(ref).max()))


def test_layout_block():
    assert layout_block("NCHW8c") == 8 and layout_block("NCHW16c") == 16
    assert layout_block("NCHW") is None and layout_block("NHWC") is None
    assert layout_block("NCHWc") is None


def test_raise_minmax_before_after():
    """ONNX's clip (call_tir of scalar maximum / minimum) becomes Relax ops; the PrimFuncs
    go away; a Relax clip too (it has no layout inference)."""
    before = _block_net()
    assert sum(op == "relax.call_tir" for op in _ops(before)) == 2
    after = raise_minmax(before)
    ops = _ops(after)
    assert "relax.call_tir" not in ops and "relax.clip" not in ops
    assert ops.count("relax.maximum") == 2 and ops.count("relax.minimum") == 2
    assert not [gv for gv, f in after.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    tvm.ir.assert_structural_equal(raise_minmax(after), after)  # idempotent


def test_raise_minmax_leaves_tensor_maximum():
    """max of two tensors is not a clip: left alone."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 8, 4, 4), "float32"))
    y = relax.Var("y", relax.TensorType((1, 8, 4, 4), "float32"))
    with bb.function("main", [x, y]):
        with bb.dataflow():
            out = bb.emit_output(bb.emit_te(topi.maximum, x, y))
        bb.emit_func_output(out)
    mod = bb.get()
    tvm.ir.assert_structural_equal(raise_minmax(mod), mod)


def test_block_layout_keeps_transforms_at_the_boundaries():
    """Every conv of the chain runs on NCHW8c; the only layout transforms are the model's
    input and output."""
    after = BlockChannelLayout(8)(_block_net())
    ops = _ops(after)
    assert [op for op in ops if op.startswith("relax.nn.conv2d")] == ["relax.nn.conv2d:NCHW8c"] * 3
    assert ops.count("relax.layout_transform") == 2


def test_unaligned_channels_keep_nchw_and_nhwc_is_blocked_too():
    after = BlockChannelLayout(8)(_block_net(c=12))  # 12 and 24: 12 is not a multiple of 8
    assert "relax.nn.conv2d:NCHW" in _ops(after)
    from tvm.relax.transform import ConvertLayout

    nhwc = ConvertLayout({"relax.nn.conv2d": ["NHWC", "HWIO"]})(
        conv_module(16, 16, (6, 6), 3, pad=1))
    ops = _ops(BlockChannelLayout(8)(nhwc))
    assert "relax.nn.conv2d:NCHW8c" in ops and ops.count("relax.layout_transform") == 2
    _check(nhwc)
    _check(nhwc, blocked_layout=False)


def _tflite_block(c=16, hw=(6, 5)):
    """As TFLite imports a PReLU block (after NormalizeImport): NHWC convs, ``[C]`` biases,
    ``prelu(axis=3)``, a residual add."""
    rng = np.random.default_rng(5)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, *hw, c), "float32"))

    def const(*shape):
        return relax.const(rng.standard_normal(shape).astype("float32"))

    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.add(relax.op.nn.conv2d(
                x, const(1, 1, c, 2 * c), data_layout="NHWC", kernel_layout="HWIO"),
                const(2 * c)))
            y = bb.emit(relax.op.nn.prelu(y, const(2 * c), axis=3))
            y = bb.emit(relax.op.add(relax.op.nn.conv2d(
                y, const(1, 1, 2 * c, c), data_layout="NHWC", kernel_layout="HWIO"), const(c)))
            out = bb.emit_output(relax.op.add(y, x))
        bb.emit_func_output(out)
    return bb.get()


def test_tflite_bias_and_prelu_stay_blocked():
    """Before: ``[C]`` bias constants and ``prelu`` (neither has blocked layout inference:
    every conv changed layout back and forth). After: biases ``[1, 1, 1, C]`` and prelu as
    ``maximum(x, 0) + alpha * minimum(x, 0)``, so the only layout transforms are the
    input's and the output's; the default pipeline's output."""
    before = _tflite_block()
    assert "relax.nn.prelu" in _ops(before)
    after = BlockChannelLayout(8)(before)
    assert relax.analysis.check_well_formed(after)
    ops = _ops(after)
    assert "relax.nn.prelu" not in ops
    assert [op for op in ops if op.startswith("relax.nn.conv2d")] == ["relax.nn.conv2d:NCHW8c"] * 2
    assert ops.count("relax.layout_transform") == 2
    _check(before)


def _channel_pad_block(layout):
    """conv 16 -> x; conv 32 on x, plus x's channels padded 16 -> 32 with zeros (BlazeFace's
    shortcut); conv 16."""
    rng = np.random.default_rng(6)
    nhwc = layout == "NHWC"
    c_axis = 3 if nhwc else 1
    shape = (1, 6, 5, 16) if nhwc else (1, 16, 6, 5)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "float32"))

    def conv(y, cin, cout):
        w = rng.standard_normal((1, 1, cin, cout) if nhwc else (cout, cin, 1, 1))
        return relax.op.nn.conv2d(y, relax.const(w.astype("float32")), data_layout=layout,
                                  kernel_layout="HWIO" if nhwc else "OIHW")

    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(conv(x, 16, 16))
            widths = [0] * 8
            widths[2 * c_axis + 1] = 16
            s = bb.emit(relax.op.nn.pad(y, widths))
            z = bb.emit(relax.op.nn.relu(relax.op.add(s, conv(y, 16, 32))))
            out = bb.emit_output(conv(z, 32, 16))
        bb.emit_func_output(out)
    return bb.get()


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_channel_pad_stays_blocked(layout):
    """Before: the channel pad between blocked convs changed layout back and forth
    (ConvertLayout has no blocked channel pad). After: one pad of the outer channel axis
    of ``NCHW8c`` (zeros appended, whole blocks); the default pipeline's output."""
    before = _channel_pad_block(layout)
    after = BlockChannelLayout(8)(before)
    assert relax.analysis.check_well_formed(after)
    assert _ops(after).count("relax.layout_transform") == 2
    pads = []
    relax.analysis.post_order_visit(after["main"], lambda e: pads.append(
        [int(w) for w in e.attrs.pad_width]) if isinstance(e, relax.Call) and getattr(
        e.op, "name", "") == "relax.nn.pad" else None)
    assert pads == [[0, 0, 0, 2, 0, 0, 0, 0, 0, 0]]
    _check(before)


def test_blocked_chain_matches_default():
    _check(_block_net())
    _check(_block_net(clip_as_call_tir=False, hw=(7, 9)))
    _check(_block_net(c=12))  # mixed: NCHW convs next to blocked ones


def test_unsupported_blocked_conv_is_unblocked():
    """A conv whose weight is not a constant has no blocked kernel: it runs as an NCHW conv
    between layout transforms, and the model still gives the default pipeline's output."""
    rng = np.random.default_rng(3)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 16, 6, 6), "float32"))
    w = relax.Var("w", relax.TensorType((16, 16, 3, 3), "float32"))
    with bb.function("main", [x, w]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, w, padding=1))
            y = bb.emit(relax.op.nn.conv2d(y, relax.const(
                rng.standard_normal((16, 16, 1, 1)).astype("float32"))))
            out = bb.emit_output(relax.op.nn.relu(y))
        bb.emit_func_output(out)
    _check(bb.get(), strict=False)


def test_aligned_pointwise_reads_blocked_input_in_place():
    """A 1x1 conv on blocked activations needs no input copy; its output is written once
    per element, vectorised over the channel block, with the epilogue inlined."""
    mod = BlockChannelLayout(8)(conv_module(16, 32, (7, 14), 1, epilogue="bias_hswish"))
    (func,) = scheduled_kernels(mod, TARGET).values()
    script = func.script()
    assert "hcp_pack" not in script and "hcp_conv" in script
    assert "T.vectorized(T.int64(8))" in script
    np.testing.assert_array_equal(write_counts(func), 1.0)


def test_hardswish_epilogue_is_one_loop_nest():
    """x * clip(x + 3, 0, 6) / 6 reads the conv's result twice; it is still inlined into
    the tile's write-back, not left as whole-tensor passes after the kernel."""
    for blocked in (True, False):
        (func,) = scheduled_kernels(conv_module(16, 24, (9, 9), 3, pad=1,
                                                epilogue="bias_hswish"),
                                    TARGET, blocked_layout=blocked).values()
        script = func.script()
        assert "sblock(\"T_" not in script, script  # no epilogue block of its own
        assert script.count("T.parallel") <= 2  # input packing + the tiles


def test_boundary_transforms_run_in_parallel():
    """The model's entry into and exit from the blocked layout are scheduled (parallel),
    and the result still equals the default pipeline's."""
    from tvm_hcprune.backend.pipeline import prepare_passes, schedule_passes

    mod = _block_net(c=16, hw=(32, 40))
    passes = prepare_passes(TARGET, True) + schedule_passes(TARGET, None, True, True)
    with TARGET:
        lowered = tvm.transform.Sequential(passes)(mod)
    transforms = [f.script() for gv, f in lowered.functions_items()
                  if "layout_transform" in gv.name_hint]
    assert len(transforms) == 2
    assert all("T.parallel" in s and "tirx.is_scheduled" in s for s in transforms)
    _check(mod)


def _gelu_net():
    rng = np.random.default_rng(5)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 8, 6, 6), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.gelu(relax.op.nn.conv2d(x, relax.const(
                rng.standard_normal((8, 8, 3, 3)).astype("float32")), padding=1)))
            out = bb.emit_output(relax.op.nn.conv2d(y, relax.const(
                rng.standard_normal((8, 8, 1, 1)).astype("float32"))))
        bb.emit_func_output(out)
    return bb.get()


def test_other_ops_on_blocked_tensors_are_checked(monkeypatch):
    """An op outside the usual set on blocked tensors is kept blocked when TVM lowers it
    there; when it does not, that op alone reads NCHW (the convs stay blocked) and the
    build still agrees with TVM's (never a failed build); the whole module stays NCHW only
    when even that fails."""
    from tvm_hcprune.backend.cpu import layout

    mod = _gelu_net()
    assert "relax.nn.conv2d:NCHW8c" in _ops(BlockChannelLayout(8)(mod))
    _check(mod)
    monkeypatch.setattr(layout, "_legalizes", lambda call: False)
    fallback = BlockChannelLayout(8)(mod)
    assert _ops(fallback).count("relax.nn.conv2d:NCHW8c") == 2
    gelus = []
    relax.analysis.post_order_visit(fallback["main"], lambda e: gelus.append(e) if (
        isinstance(e, relax.Call) and getattr(e.op, "name", "") == "relax.nn.gelu") else None)
    assert [len(g.ty.shape) for g in gelus] == [4]
    _check(mod)
    monkeypatch.setattr(layout, "_Shield", None)  # the per-op fallback itself fails
    tvm.ir.assert_structural_equal(BlockChannelLayout(8)(mod), mod)


def test_constant_layout_transforms_fold_with_numpy():
    """Weights and biases moved to the blocked layout are folded at compile time (numpy,
    in NormalizeImport: no kernel compiled per constant); a transform of another shape
    is left to FoldConstant."""
    from tvm_hcprune.frontend.normalize import NormalizeImport

    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 3, 3, 3)).astype("float32")
    b = rng.standard_normal((1, 24, 1, 1)).astype("float32")
    t = rng.standard_normal((2, 3, 4, 5)).astype("float32")
    bb = relax.BlockBuilder()
    with bb.function("main", []):
        with bb.dataflow():
            ws = bb.emit(relax.op.layout_transform(
                relax.const(w), index_map=lambda o, i, h, x: (o // 8, i, h, x, o % 8)))
            bs = bb.emit(relax.op.layout_transform(
                relax.const(b), index_map=lambda n, c, h, x: (n, c // 8, h, x, c % 8)))
            ts = bb.emit(relax.op.layout_transform(
                relax.const(t), index_map=lambda n, c, h, x: (n, h, x, c)))
            out = bb.emit_output(relax.Tuple([ws, bs, ts]))
        bb.emit_func_output(out)
    folded = NormalizeImport()(bb.get())
    assert _ops(folded).count("relax.layout_transform") == 1  # the transpose stays
    vm = relax.VirtualMachine(tvm.compile(folded, TARGET), tvm.cpu())
    got = [a.numpy() for a in vm["main"]()]
    np.testing.assert_array_equal(got[0], w.reshape(2, 8, 3, 3, 3).transpose(0, 2, 3, 4, 1))
    np.testing.assert_array_equal(got[1], b.reshape(1, 3, 8, 1, 1).transpose(0, 1, 3, 4, 2))
    np.testing.assert_array_equal(got[2], t.transpose(0, 2, 3, 1))


def _stem_net(weight_param=False, layout="NCHW"):
    """RGB stem (3 input channels: no blocked input) -> bias -> clip -> depthwise -> conv;
    ``layout="NHWC"``: as TFLite imports it (HWIO / HWOI weights, ``[C]`` biases)."""
    rng = np.random.default_rng(11)
    bb = relax.BlockBuilder()
    nhwc = layout == "NHWC"
    x = relax.Var("x", relax.TensorType((1, 15, 17, 3) if nhwc else (1, 3, 15, 17), "float32"))
    w = relax.Var("w", relax.TensorType((3, 3, 3, 16) if nhwc else (16, 3, 3, 3), "float32"))

    def const(*shape):
        return relax.const(rng.standard_normal(shape).astype("float32"))

    kw = {"data_layout": "NHWC", "kernel_layout": "HWIO"} if nhwc else {}
    dw = {"data_layout": "NHWC", "kernel_layout": "HWOI"} if nhwc else {}
    with bb.function("main", [x, w] if weight_param else [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(
                x, w if weight_param else const(*((3, 3, 3, 16) if nhwc else (16, 3, 3, 3))),
                strides=2, padding=1, **kw))
            y = bb.emit(relax.op.clip(relax.op.add(y, const(16) if nhwc else const(1, 16, 1, 1)),
                                      0.0, 6.0))
            y = bb.emit(relax.op.nn.conv2d(y, const(*((3, 3, 16, 1) if nhwc else (16, 1, 3, 3))),
                                           padding=1, groups=16, **dw))
            out = bb.emit_output(relax.op.nn.conv2d(
                relax.op.nn.relu(y), const(*((1, 1, 16, 8) if nhwc else (8, 16, 1, 1))), **kw))
        bb.emit_func_output(out)
    return bb.get()


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_stem_conv_writes_the_blocked_layout(layout):
    """The conv that cannot read blocked input (3 channels) writes NCHW8c itself, reading
    NCHW or (TFLite) NHWC, and its epilogue follows in the blocked layout: the only layout
    transform left is the output's."""
    after = BlockChannelLayout(8)(_stem_net(layout=layout))
    assert _ops(after).count("relax.layout_transform") == 1
    (stem,) = [c for c in _calls(after, "relax.nn.conv2d")
               if str(c.attrs.data_layout) == layout]
    assert str(stem.attrs.out_layout) == "NCHW8c"
    _check(_stem_net(layout=layout))


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_stem_conv_without_a_kernel_is_unblocked(layout):
    """A stem conv whose weight is a parameter (no blocked kernel) runs in its own layout and
    its output is transformed; the model still equals the default pipeline's."""
    _check(_stem_net(weight_param=True, layout=layout), strict=False)


def _hardswish_stem_net(c=16, hw=(15, 17), shared=False, bias=True):
    """RGB stem -> bias -> hardswish as ONNX imports it (``y * min(max(y + 3, 0), 6) / 6``:
    the conv's result read twice) -> 1x1 conv; ``shared``: the biased result also feeds
    the output (a use outside the epilogue); ``bias=False``: the conv's own result is read
    twice."""
    rng = np.random.default_rng(13)

    def const(*shape):
        return relax.const(rng.standard_normal(shape).astype("float32"))

    def scalar(v):
        return relax.const(v, "float32")

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 3, *hw), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, const(c, 3, 3, 3), strides=2, padding=1))
            if bias:
                y = bb.emit(relax.op.add(y, const(1, c, 1, 1)))
            g = bb.emit(relax.op.minimum(relax.op.maximum(relax.op.add(y, scalar(3.0)),
                                                          scalar(0.0)), scalar(6.0)))
            h = bb.emit(relax.op.multiply(y, relax.op.divide(g, scalar(6.0))))
            out = relax.op.nn.conv2d(h, const(16, c, 1, 1))
            if shared:
                out = relax.op.add(out, relax.op.sum(y, axis=[1], keepdims=True))
            out = bb.emit_output(out)
        bb.emit_func_output(out)
    return bb.get()


@pytest.mark.parametrize("block", [8, 16])
def test_stem_hardswish_graph_is_written_blocked(block):
    """A stem whose epilogue is a graph, not a chain (hardswish reads the conv's result
    twice), writes NCHW{b}c itself: no layout transform between the stem and the next conv
    (PP-LCNet's stem), at both block widths, and the model equals the default pipeline's."""
    for c, bias in ((block, True), (3 * block, True), (block, False)):
        mod = _hardswish_stem_net(c, bias=bias)
        after = BlockChannelLayout(block)(mod)
        assert _ops(after).count("relax.layout_transform") == 1  # the output's only
        (stem,) = [s for s in _calls(after, "relax.nn.conv2d")
                   if str(s.attrs.data_layout) == "NCHW"]
        assert str(stem.attrs.out_layout) == f"NCHW{block}c"
        if block == 8 or HOST_AVX512:  # 16-lane code runs on AVX-512 hosts only
            _check(mod, target=TARGET if block == 8 else TARGET_AVX512)


def test_stem_epilogue_used_elsewhere_keeps_its_transform():
    """A value inside the stem's epilogue that is also used outside it (here the biased
    result also feeds a channel sum) keeps the NCHW stem and its transform; the model
    still equals the default pipeline's."""
    mod = _hardswish_stem_net(shared=True)
    after = BlockChannelLayout(8)(mod)
    (stem,) = [s for s in _calls(after, "relax.nn.conv2d") if str(s.attrs.data_layout) == "NCHW"]
    assert str(stem.attrs.out_layout) == "NCHW"
    _check(mod)


def _pooled_stem_net(pool):
    """ResNet-style entry: RGB stem conv -> bias -> relu -> pooling -> conv."""
    rng = np.random.default_rng(12)

    def const(*shape):
        return relax.const(rng.standard_normal(shape).astype("float32"))

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 3, 129, 130), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, const(16, 3, 7, 7), strides=2, padding=3))
            y = bb.emit(relax.op.nn.relu(relax.op.add(y, const(1, 16, 1, 1))))
            if pool == "max":
                y = bb.emit(relax.op.nn.max_pool2d(y, pool_size=3, strides=2, padding=1))
            else:  # odd window and ceil mode: partial windows at the border
                y = bb.emit(relax.op.nn.avg_pool2d(y, pool_size=2, strides=2, ceil_mode=True))
            out = bb.emit_output(relax.op.nn.conv2d(y, const(8, 16, 3, 3), padding=1))
        bb.emit_func_output(out)
    return bb.get()


@pytest.mark.parametrize("pool", ["max", "avg"])
def test_pooling_after_the_stem_stays_blocked(pool):
    """The pooling between the stem conv and the next conv runs in NCHW8c (no layout
    transform before it or after it), its kernel gets the parallel blocked-pool rule, and
    the model equals the default pipeline's."""
    mod = _pooled_stem_net(pool)
    after = BlockChannelLayout(8)(mod)
    assert _ops(after).count("relax.layout_transform") == 1  # the output's only
    (pooled,) = _calls(after, f"relax.nn.{pool}_pool2d")
    assert str(pooled.attrs.layout) == "NCHW8c"
    with TARGET:
        lowered = tvm.transform.Sequential(
            prepare_passes(TARGET) + schedule_passes(TARGET, None, strict=True))(mod)
    pools = [f for gv, f in lowered.functions_items()
             if isinstance(f, tvm.tirx.PrimFunc) and "pool" in gv.name_hint]
    assert len(pools) == 1 and "T.parallel" in pools[0].script()
    _check(mod)


def _calls(mod, op_name):
    calls = []
    relax.analysis.post_order_visit(
        mod["main"], lambda e: calls.append(e) if isinstance(e, relax.Call)
        and getattr(e.op, "name", None) == op_name else None)
    return calls


def test_clip_with_attribute_bounds_is_raised():
    """ONNX Clip before opset 11 (bounds as attributes) imports as call_tir with the bound
    as an immediate: it becomes R.maximum / R.minimum too, and still computes the clip."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 8, 4, 4), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit_te(topi.maximum, x, 0.0)
            out = bb.emit_output(bb.emit_te(topi.minimum, y, 6.0))
        bb.emit_func_output(out)
    before = bb.get()
    after = raise_minmax(before)
    assert _ops(after) == ["relax.maximum", "relax.minimum"]
    xs = np.random.default_rng(0).uniform(-3, 9, (1, 8, 4, 4)).astype("float32")
    vm = relax.VirtualMachine(tvm.compile(after, TARGET), tvm.cpu())
    np.testing.assert_array_equal(vm["main"](tvm.runtime.tensor(xs)).numpy(), np.clip(xs, 0, 6))


def _depthwise_net(c, hw, stride, padding, dilation):
    rng = np.random.default_rng(c + hw[0])
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, c, *hw), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            w = relax.const(rng.standard_normal((c, 1, 3, 3)).astype("float32"))
            y = bb.emit(relax.op.nn.conv2d(x, w, strides=stride, padding=padding,
                                           dilation=dilation, groups=c))
            b = relax.const(rng.standard_normal((1, c, 1, 1)).astype("float32"))
            out = bb.emit_output(relax.op.clip(relax.op.add(y, b), 0.0, 6.0))
        bb.emit_func_output(out)
    return bb.get()


@pytest.mark.parametrize("c, hw, stride, padding, dilation", [
    (16, (15, 15), 1, (1, 1, 1, 1), 1),
    (16, (15, 13), 2, (1, 1, 1, 1), 1),  # odd sizes: the last tile reads past the border
    (24, (9, 12), 2, (0, 1, 1, 0), 1),  # asymmetric padding (TF "same" with stride 2)
    (8, (11, 11), 1, (2, 2, 2, 2), 2),  # dilated
])
def test_blocked_depthwise_reads_its_input_in_place(c, hw, stride, padding, dilation):
    """The blocked depthwise kernel pads by guarded reads (no padded copy, one parallel
    loop), writes each output once, and equals TVM's default pipeline."""
    mod = _depthwise_net(c, hw, stride, padding, dilation)
    (func,) = scheduled_kernels(BlockChannelLayout(8)(mod), TARGET).values()
    script = func.script()
    assert "hcp_dwconv" in script and "hcp_dwpack" not in script
    assert script.count("T.parallel(") == 1
    np.testing.assert_array_equal(write_counts(func), 1.0)
    _check(mod)


def test_odd_vector_count_on_short_rows_takes_three_vector_tiles():
    """24 output channels (3 vectors) on 4-pixel rows: a 3-vector output block, one vector
    per register in the scheduled tile, each output written once, equal to TVM's default."""
    from tvm_hcprune.backend.cpu.conv2d_nchwc import plan_conv

    assert plan_conv(24, 24, 1, 4, 8, 16).ob == 24
    assert plan_conv(24, 24, 1, 14, 8, 16).ob == 8  # a long row has accumulators enough
    mod = conv_module(24, 24, (4, 4), 3, epilogue="bias_relu")
    (func,) = scheduled_kernels(BlockChannelLayout(8)(mod), TARGET).values()
    script = func.script()
    assert int(func.params[1].shape[-1]) == 24  # weight packed [.., IB, OB=24]
    assert "T.vectorized(T.int64(8))" in script and "T.vectorized(T.int64(24))" not in script
    np.testing.assert_array_equal(write_counts(func), 1.0)
    _check(mod)


def test_tuning_seeds_layout_transforms_with_their_rule():
    """Tuning starts a boundary layout transform's task from the rule the build applies
    (parallel), not from the unscheduled function: otherwise any record beats the seed."""
    from tvm_hcprune.backend import database as dbm
    from tvm_hcprune.tuning.tune import extract_tasks, rule_schedule

    target = dbm.resolve_target(TARGET)
    tasks = [t for t in extract_tasks(_block_net(c=16, hw=(32, 40)), target)
             if "layout_transform" in t.task_name]
    assert tasks
    for task in tasks:
        sch = rule_schedule(task.dispatched[0]["main"], target)
        assert sch is not None and "T.parallel" in sch.mod["main"].script()


def test_elementwise_leftovers_run_parallel_and_vectorised():
    """An elementwise chain outside every kernel (two inputs: nothing to fuse into) gets the
    injective rule (parallel outer loops, vectorised inner loop); a reduction (softmax) is
    not the injective rule's (ScheduleRowwise takes it later); the model equals the default
    pipeline's."""
    bb = relax.BlockBuilder()
    a = relax.Var("a", relax.TensorType((1, 40, 33, 24), "float32"))
    b = relax.Var("b", relax.TensorType((1, 40, 33, 24), "float32"))
    with bb.function("main", [a, b]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.relu(relax.op.add(a, relax.op.multiply(b, a))))
            out = bb.emit_output(relax.op.add(y, relax.op.nn.softmax(y, axis=1)))
        bb.emit_func_output(out)
    mod = bb.get()
    with TARGET:
        fused = tvm.transform.Sequential(prepare_passes(TARGET))(mod)
    funcs = {gv.name_hint: f for gv, f in fused.functions_items()
             if isinstance(f, tvm.tirx.PrimFunc)}
    ewise = [f for n, f in funcs.items() if "softmax" not in n and "relu" in n]
    assert ewise
    for f in ewise:
        sch = rule_schedule(f, strict=True)
        assert sch is not None
        assert "T.parallel" in sch.mod.script() and "T.vectorized" in sch.mod.script()
    soft = [f for n, f in funcs.items() if "softmax" in n]
    assert soft and all(rule_schedule(f) is None for f in soft)
    _check(mod)


def _se_net(c, hw=(7, 9)):
    """Squeeze-and-excitation as PP-LCNet imports it: mean over H, W -> 1x1 conv -> relu ->
    1x1 conv -> hardsigmoid (``min(max(x / 6 + 0.5, 0), 1)``) -> times the feature map."""
    rng = np.random.default_rng(14)

    def const(*shape):
        return relax.const(rng.standard_normal(shape).astype("float32"))

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, c, *hw), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            f = bb.emit(relax.op.nn.relu(relax.op.nn.conv2d(x, const(c, c, 1, 1))))
            s = bb.emit(relax.op.mean(f, axis=[2, 3], keepdims=True))
            s = bb.emit(relax.op.nn.relu(relax.op.add(relax.op.nn.conv2d(s, const(c // 4, c, 1, 1)),
                                                      const(1, c // 4, 1, 1))))
            s = bb.emit(relax.op.add(relax.op.nn.conv2d(s, const(c, c // 4, 1, 1)),
                                     const(1, c, 1, 1)))
            g = relax.op.add(relax.op.multiply(s, relax.const(1 / 6, "float32")),
                             relax.const(0.5, "float32"))
            g = relax.op.minimum(relax.op.maximum(g, relax.const(0.0, "float32")),
                                 relax.const(1.0, "float32"))
            out = bb.emit_output(relax.op.multiply(f, g))
        bb.emit_func_output(out)
    return bb.get()


@pytest.mark.parametrize("target", [TARGET, TARGET_AVX512], ids=["8_lanes", "16_lanes"])
def test_se_gate_after_the_excitation_conv_is_parallel_and_vectorised(target):
    """The SE gate multiply fused into the excitation conv's function (a consumer over the
    whole map, so not inlined into the conv's 1x1 write-back) runs parallel and vectorised
    (TVM's default: one thread, scalar), writes every element once, and the model equals
    the default pipeline's at both block widths (the squeezed width an odd 3 vectors)."""
    lanes = 8 if target is TARGET else 16
    mod = _se_net(12 * lanes, hw=(13, 15))  # SE width 3 * lanes; 12 * lanes * 195 >= 2^14
    kernels = scheduled_kernels(mod, target)
    (gate,) = [f for n, f in kernels.items() if "conv" in n and "multiply" in n]
    script = gate.script()
    assert script.count("T.parallel") == 2 and "T.vectorized" in script
    np.testing.assert_array_equal(write_counts(gate), 1.0)
    if target is TARGET or HOST_AVX512:  # 16-lane code runs on AVX-512 hosts only
        _check(mod, target=target)
