"""Failure classes third-party models showed (issue 16), each on a synthetic model that
reproduces it, checked against the mask oracle (and onnxruntime where ONNX is involved)."""

import ast

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tvm
from tvm import relax
from tvm.relax.frontend.onnx import from_onnx

import tvm_hcprune as hc
from tvm_hcprune.backend.cpu.layout import BlockChannelLayout
from tvm_hcprune.errors import HCPruneError
from tvm_hcprune.frontend.normalize import NormalizeImport
from tvm_hcprune.ops.registry import OpHandler, get_op_handler, register_op_handler
from tvm_hcprune.planning.export_onnx import apply_to_onnx
from tvm_hcprune.testing import masked_reference, run_relax
from tvm_hcprune.testing.onnx_models import (
    GraphBuilder,
    anchor_grid_head,
    dbnet_like,
    dfl_head,
    tf_style_resnet,
)
from tvm_hcprune.transform.fold_batch_norm import FoldBatchNorm
from tvm_hcprune.utils.relax import first_dynamic_binding


def _oracle(mod, pruned, plan, x):
    assert relax.analysis.check_well_formed(pruned)
    out = run_relax(pruned, [x])
    ref = run_relax(masked_reference(mod, plan), [x])
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(ref).max()))
    return out


def test_dfl_head_prunes_without_crashing_and_freezes_the_bins():
    """A reshape splitting a conv's 64 channels into (4 sides, 16 bins) feeds a conv whose
    spatial axis then carries the sides: the group is frozen with the op and the reason,
    the stem still prunes, and the result equals the mask oracle."""
    mod = from_onnx(dfl_head())
    pruned, report = hc.prune(mod, ratio=0.3, align=4)
    frozen = {(f.op, f.reason) for f in report.frozen}
    assert any(op == "relax.nn.conv2d" and "carries channels" in why for op, why in frozen), \
        report.summary()
    assert report.macs_after < report.macs_before, report.summary()
    x = np.random.default_rng(0).normal(size=(1, 3, 8, 8)).astype(np.float32)
    _oracle(mod, pruned, report.plan, x)


class _ForgetfulPermute(OpHandler):
    """A deliberately wrong handler: claims permute_dims keeps every axis in place."""

    def analyze(self, ctx, var, call):
        return list(ctx.desc(call.args[0]))


class _DroppingPermute(OpHandler):
    """A deliberately wrong handler: loses every channel axis."""

    def analyze(self, ctx, var, call):
        return [None] * len(ctx.desc(call.args[0]))


class _RaisingPermute(OpHandler):
    def analyze(self, ctx, var, call):
        raise RuntimeError("boom")


@pytest.fixture
def permute_handler():
    """Swap the permute_dims handler for the test; restore the real one after."""
    real = get_op_handler("relax.permute_dims")
    yield lambda h: register_op_handler("relax.permute_dims", override=True)(h)
    register_op_handler("relax.permute_dims", override=True)(real)


def _transposing_model():
    """conv(8 -> 8) on an 8x8 map, a transpose of C and H, conv over the transposed map."""
    g = GraphBuilder(0)
    x = g.op("Relu", [g.conv("input", 3, 8, 3, bias=True)])
    x = g.op("Relu", [g.conv(x, 8, 8, 3, bias=True)])
    x = g.op("Transpose", [x], perm=[0, 2, 1, 3])
    out = g.conv(x, 8, 4, 1)
    return from_onnx(g.model(out, [1, 3, 8, 8], [1, 4, 8, 8], "transposing"))


def test_handler_exception_becomes_a_frozen_group_naming_the_op(permute_handler):
    """An exception inside an op handler freezes the groups reaching the op, with the op
    and the error as the reason; pruning goes on elsewhere."""
    permute_handler(_RaisingPermute)
    mod = _transposing_model()
    graph = hc.analyze(mod)
    recs = [f for f in graph.frozen if f.op == "relax.permute_dims"]
    assert recs and "handler failed: RuntimeError: boom" in recs[0].reason
    pruned, report = hc.prune(mod, ratio=0.5, align=1)
    assert report.macs_after < report.macs_before
    _oracle(mod, pruned, report.plan, np.ones((1, 3, 8, 8), np.float32))


def test_channels_a_handler_forgets_are_frozen(permute_handler):
    """A handler that lets a channel axis vanish (returns no descriptor for it) cannot make
    the rewrite change an untracked shape: analysis freezes the lost group itself."""
    permute_handler(_DroppingPermute)
    mod = _transposing_model()
    graph = hc.analyze(mod)
    recs = [f for f in graph.frozen if f.op == "relax.permute_dims"]
    assert recs and "does not track" in recs[0].reason, graph.summary()
    pruned, report = hc.prune(mod, ratio=0.5, align=1)
    _oracle(mod, pruned, report.plan, np.ones((1, 3, 8, 8), np.float32))


def test_rewrite_failure_is_an_hcprune_error_naming_the_op(permute_handler):
    """A wrong handler whose rewrite makes TVM's type inference fail surfaces as an
    HCPruneError naming the binding, the op and the groups to protect, not a raw TVM
    error."""
    permute_handler(_ForgetfulPermute)
    mod = _transposing_model()
    with pytest.raises(HCPruneError, match=r"cannot rewrite \w+ = relax.nn.conv2d.*"
                                           r"protect=\['group:\d") as err:
        hc.prune(mod, ratio=0.5, align=1)
    # the advice works: protecting the named groups prunes the rest correctly
    protect = ast.literal_eval(str(err.value).split("protect=")[1])
    pruned, report = hc.prune(mod, ratio=0.5, align=1, protect=protect)
    assert report.macs_after < report.macs_before
    _oracle(mod, pruned, report.plan, np.ones((1, 3, 8, 8), np.float32))


def _tflite_prelu_module(alpha_shape=(1, 1, 8), seed=0):
    """What TVM's TFLite importer emits for conv -> PReLU -> conv (NHWC, HWIO weights):
    ``reshape(x, [-1])``, alpha ``broadcast_to`` x's shape and flattened,
    ``prelu(axis=0)``, ``reshape`` back (tflite_frontend.convert_prelu)."""
    rng = np.random.default_rng(seed)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 6, 6, 3), "float32"))
    shape = [1, 6, 6, 8]
    with bb.function("main", [x]):
        with bb.dataflow():
            w1 = relax.const(rng.normal(size=(3, 3, 3, 8)).astype("float32"))
            y = bb.emit(relax.op.nn.conv2d(x, w1, padding=1, data_layout="NHWC",
                                           kernel_layout="HWIO"))
            y = bb.emit(relax.op.add(y, relax.const(rng.normal(size=8).astype("float32"))))
            alpha = relax.const(rng.uniform(0.05, 0.5, size=alpha_shape).astype("float32"))
            a = bb.emit(relax.op.reshape(bb.emit(relax.op.broadcast_to(alpha, shape)), [-1]))
            p = bb.emit(relax.op.nn.prelu(bb.emit(relax.op.reshape(y, [-1])), a, axis=0))
            y = bb.emit(relax.op.reshape(p, shape))
            w2 = relax.const(rng.normal(size=(1, 1, 8, 4)).astype("float32"))
            out = bb.emit_output(relax.op.nn.conv2d(y, w2, data_layout="NHWC",
                                                    kernel_layout="HWIO"))
        bb.emit_func_output(out)
    return bb.get()


@pytest.mark.parametrize("alpha_shape", [(1, 1, 8), (6, 6, 8)])
def test_tflite_flattened_prelu_is_per_channel(alpha_shape):
    """TFLite PReLU as TVM imports it no longer freezes the conv's channels: NormalizeImport
    re-expresses it on the channel axis (per-channel alpha: ``prelu(axis=3)``; alpha that
    also varies over H, W: relu(x) + alpha * min(x, 0)), outputs stay equal, and pruning
    matches the mask oracle.

    A Relax-level reproduction of the importer's output: building a TFLite model with
    PReLU needs TensorFlow, which is not installed."""
    mod = _tflite_prelu_module(alpha_shape)
    x = np.random.default_rng(1).normal(size=(1, 6, 6, 3)).astype(np.float32)
    normalized = NormalizeImport()(mod)
    text = normalized.script()
    assert "R.reshape" not in text
    if alpha_shape == (1, 1, 8):
        assert "R.nn.prelu" in text and "axis=3" in text
    np.testing.assert_allclose(run_relax(normalized, [x]), run_relax(mod, [x]),
                               rtol=1e-6, atol=1e-6)
    graph = hc.analyze(mod)
    assert {f.op for f in graph.frozen} == {"return"}, graph.summary()
    pruned, report = hc.prune(mod, ratio=0.5, align=1)
    assert report.groups[0].after == 4
    _oracle(mod, pruned, report.plan, x)


def _ort(model, x):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


@pytest.mark.parametrize("grid", [True, False])
def test_anchor_grid_head_imports_a_module_that_compiles(tmp_path, grid):
    """A head computing anchor points from Shape/Gather/Range/Concat chains imports (TVM's
    importer alone leaves run-time shapes that neither tvm.compile nor hc.build accept):
    load_onnx folds them, the module compiles, agrees with onnxruntime and prunes."""
    model = anchor_grid_head(grid=grid)
    path = tmp_path / "anchors.onnx"
    onnx.save(model, path)
    notes = []
    mod = hc.load_onnx(path, log=notes.append)
    assert any("onnxruntime's basic graph optimisation" in n for n in notes), notes
    assert first_dynamic_binding(mod["main"]) is None
    x = np.random.default_rng(0).normal(size=(1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(run_relax(mod, [x]), _ort(model, x), rtol=1e-5, atol=1e-5)
    assert hc.build(mod, "llvm") is not None
    pruned, report = hc.prune(mod, ratio=0.5, align=1)
    assert report.macs_after < report.macs_before, report.summary()
    _oracle(mod, pruned, report.plan, x)


def test_import_retry_keeps_the_first_tries_errors_off_the_console(capfd):
    """rapidocr's direction classifier fails TVM's first import (a Reshape whose shape is
    computed) and imports once folded: the first try's prints ("Error converting operator",
    the C++ "BlockBuilder destroyed" warning) stay off the console; the note says why it was
    folded (~3 s)."""
    from tvm_hcprune.zoo.models import model_path

    notes = []
    mod = hc.load_onnx(model_path("text_direction"), {"x": [1, 3, 48, 192]}, log=notes.append)
    out, err = capfd.readouterr()
    assert "Error converting operator" not in out + err, out + err
    assert "BlockBuilder destroyed" not in out + err, out + err
    assert len(notes) == 1 and "Reshape" in notes[0], notes
    assert first_dynamic_binding(mod["main"]) is None
    print("after")  # the console works again
    assert capfd.readouterr().out == "after\n"


def test_data_dependent_shape_is_an_error_naming_the_op(tmp_path):
    """An op whose output shape depends on the data cannot be folded: load_onnx raises an
    HCPruneError naming the binding and the op, not a TVM error at compile time."""
    g = GraphBuilder(0)
    y = g.op("Relu", [g.conv("input", 3, 4, 3, bias=True)])
    out = g.op("Cast", [g.op("NonZero", [y])], to=1)
    path = tmp_path / "nonzero.onnx"
    onnx.save(g.model(out, [1, 3, 4, 4], [4, "n"], "nonzero"), path)
    with pytest.raises(HCPruneError, match=r"shape computed at run time: \w+ = relax.nonzero"):
        hc.load_onnx(path, log=lambda _m: None)


AVX2 = {"kind": "llvm", "mcpu": "znver3"}  # 8 fp32 lanes: NCHW8c (runs on any x86-64-v3)


def test_dbnet_pruned_builds_with_per_op_layout_fallback():
    """Pruning the DBNet-style model at 0.3 makes the conv feeding a ConvTranspose a
    multiple of 8 channels, so it moves to NCHW8c and TVM's layout inference of
    conv2d_transpose fails ("Layouts must have the same size"). The build falls back for
    that op only: the convTranspose reads NCHW, other convs stay blocked, and the built
    module equals the mask oracle."""
    mod = from_onnx(dbnet_like())
    pruned, report = hc.prune(mod, ratio=0.3, align=8)
    assert any(g.before == 12 and g.after == 8 for g in report.groups), report.summary()
    folded = tvm.transform.Sequential([relax.transform.FoldConstant(), FoldBatchNorm(),
                                       relax.transform.FoldConstant()])(pruned)
    with tvm.target.Target(AVX2):
        blocked = BlockChannelLayout(8)(folded)
    text = blocked.script()
    assert "NCHW8c" in text
    assert all('data_layout="NCHW"' in line for line in text.splitlines()
               if "conv2d_transpose(" in line)
    x = np.random.default_rng(0).normal(size=(1, 3, 32, 32)).astype(np.float32)
    vm = relax.VirtualMachine(hc.build(pruned, AVX2), tvm.cpu())
    out = vm["main"](tvm.runtime.tensor(x)).numpy()
    ref = run_relax(masked_reference(mod, report.plan), [x])
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


def test_layout_converts_a_whole_module_without_fallback():
    """A module TVM converts whole is converted whole (no op falls back)."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 8, 8, 8), "float32"))
    w = relax.const(np.ones((16, 8, 3, 3), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.nn.relu(bb.emit(relax.op.nn.conv2d(x, w, padding=1))))
        bb.emit_func_output(out)
    with tvm.target.Target(AVX2):
        text = BlockChannelLayout(8)(bb.get()).script()
    assert "NCHW8c" in text and "wrap_param" not in text


@pytest.mark.parametrize("constant_node", [False, True])
def test_tf_style_resnet_exports_pruned_onnx(constant_node):
    """NHWC input, transpose, ReduceMean pooling, Reshape [-1, C] (initializer or Constant
    node) into MatMul + Add + Softmax: the pruned export maps the plan onto the
    classifier's rows through pooling and the reshape, is written, and agrees in
    onnxruntime with the TVM pruned module (which equals the mask oracle)."""
    model = tf_style_resnet(shape_in_constant_node=constant_node)
    mod = from_onnx(model)
    graph = hc.analyze(mod)
    pruned, report = hc.prune(mod, ratio=0.5, align=1, graph=graph)
    assert any(g.before == 32 and g.after == 16 for g in report.groups), report.summary()
    exported = apply_to_onnx(model, graph, report.plan, pruned)
    x = np.random.default_rng(0).normal(size=(1, 16, 16, 3)).astype(np.float32)
    out = _oracle(mod, pruned, report.plan, x)
    np.testing.assert_allclose(_ort(exported, x), out, rtol=1e-5, atol=1e-6)
    fc = next(i for i in exported.graph.initializer if i.name.startswith("fc_w"))
    assert list(fc.dims) == [16, 10]


def test_errors_outside_handlers_are_hcprune_errors_naming_the_binding(monkeypatch):
    """An exception in analysis outside the op handlers (here: the descriptor check after
    a conv) and a TVM error in the importer clean-up reach the user as HCPruneError naming
    the binding and op, or the pass, never as a raw error."""
    from tvm_hcprune.analysis import graph as graph_mod

    mod = _transposing_model()

    def broken(ctx, var, out):
        raise tvm.error.InternalError("Check failed: boom")

    monkeypatch.setattr(graph_mod, "_checked", broken)
    with pytest.raises(HCPruneError, match=r"analysis failed at \w+ = relax.nn.conv2d.*"
                                           r"InternalError: Check failed: boom"):
        hc.analyze(mod)
    monkeypatch.undo()

    class Failing:
        def __call__(self, mod):
            raise tvm.error.InternalError("Check failed: normalize")

    monkeypatch.setattr(graph_mod, "NormalizeImport", Failing)
    with pytest.raises(HCPruneError, match="NormalizeImport .* failed: InternalError"):
        hc.prune(mod, ratio=0.5)


def test_suite_checks_well_formedness_after_our_passes():
    """The suite's autouse instrument (conftest.py) rejects an ill-formed module coming out
    of a pass named like one of tvm_hcprune's."""
    x = relax.Var("x", relax.TensorType((2,), "float32"))
    unbound = relax.Var("y", relax.TensorType((2,), "float32"))
    bad = tvm.IRModule({"main": relax.Function([x], unbound, relax.TensorType((2,),
                                                                            "float32"))})

    @tvm.transform.module_pass(opt_level=0, name="NormalizeImport")
    def fake(mod, _ctx):
        return bad

    good = tvm.IRModule({"main": relax.Function([x], x, relax.TensorType((2,), "float32"))})
    with pytest.raises(Exception, match="NormalizeImport output is ill-formed"):
        fake(good)
