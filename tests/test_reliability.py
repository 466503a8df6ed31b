"""Failure classes third-party models showed (issue 16), each on a synthetic model that
reproduces it, checked against the mask oracle (and onnxruntime where ONNX is involved)."""

import ast

import numpy as np
import pytest
from tvm import relax
from tvm.relax.frontend.onnx import from_onnx

import tvm_hcprune as hc
from tvm_hcprune.errors import HCPruneError
from tvm_hcprune.ops.registry import OpHandler, get_op_handler, register_op_handler
from tvm_hcprune.testing import masked_reference, run_relax
from tvm_hcprune.testing.onnx_models import dfl_head


def _oracle(mod, pruned, plan, x):
    relax.analysis.well_formed(pruned)
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
    from tvm_hcprune.testing.onnx_models import GraphBuilder

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
