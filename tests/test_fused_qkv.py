"""Attention heads behind a fused Q/K/V projection (#14): one ``MatMul`` of ``3 * H * hd``
output channels laid out ``[3][H][hd]``, reshaped to ``(.., 3, H, hd)`` and taken apart
along the 3-axis (SVTR, PP-OCR's recogniser; ``timm`` ViTs). Removing head ``h`` removes its
``hd`` channels from each third of the fused weight and bias and the matching rows of the
output projection; the reshape's ``H`` shrinks. A near miss stays frozen with the reason."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tvm
from tvm import relax
from tvm.relax.frontend.onnx import from_onnx

import tvm_hcprune as hc
from tvm_hcprune.frontend.load import load_onnx_graph
from tvm_hcprune.planning.export_onnx import apply_to_onnx
from tvm_hcprune.planning.plan import PrunePlan
from tvm_hcprune.testing import masked_reference, run_relax
from tvm_hcprune.testing.onnx_models import fused_qkv_attention

T, D, H = 5, 12, 4
HD = D // H
RNG = np.random.default_rng(0)
W_QKV = RNG.normal(0, 0.4, (D, 3 * D)).astype("float32")
B_QKV = RNG.normal(0, 0.1, 3 * D).astype("float32")
W_O = RNG.normal(0, 0.4, (D, D)).astype("float32")


def _fused_block(w_qkv, b_qkv, w_o, heads, select="slice"):
    """``x [T, D]`` -> fused projection -> reshape ``(1, T, 3, heads, hd)`` -> q, k, v by
    ``strided_slice`` + ``squeeze`` (as SVTR imports) or ``permute`` + ``take`` (as
    ``qkv[0]`` does) -> softmax attention with the scores merged to ``(heads * T, T)``
    around the softmax -> output projection."""
    hd = w_qkv.shape[1] // 3 // heads
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((T, w_qkv.shape[0]), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.matmul(x, relax.const(w_qkv)))
            y = bb.emit(relax.op.add(y, relax.const(b_qkv)))
            qkv = bb.emit(relax.op.reshape(y, (1, T, 3, heads, hd)))
            if select == "slice":
                q, k, v = (bb.emit(relax.op.permute_dims(bb.emit(relax.op.squeeze(
                    bb.emit(relax.op.strided_slice(qkv, [2], [i], [i + 1], [1])), [2])),
                    [0, 2, 1, 3])) for i in range(3))
            else:
                moved = bb.emit(relax.op.permute_dims(qkv, [2, 0, 3, 1, 4]))
                q, k, v = (bb.emit(relax.op.take(moved, relax.const(i, "int64"), axis=0))
                           for i in range(3))
            s = bb.emit(relax.op.matmul(q, bb.emit(relax.op.permute_dims(k, [0, 1, 3, 2]))))
            s = bb.emit(relax.op.multiply(s, relax.const(hd ** -0.5, "float32")))
            s = bb.emit(relax.op.reshape(s, (heads * T, T)))
            s = bb.emit(relax.op.reshape(bb.emit(relax.op.nn.softmax(s, -1)), (1, heads, T, T)))
            a = bb.emit(relax.op.permute_dims(bb.emit(relax.op.matmul(s, v)), [0, 2, 1, 3]))
            a = bb.emit(relax.op.reshape(a, (T, heads * hd)))
            out = bb.emit_output(bb.emit(relax.op.matmul(a, relax.const(w_o))))
        bb.emit_func_output(out)
    return bb.get()


def _head_group(graph):
    heads = [g for g in graph.groups if g.unit > 1]
    assert [(g.size, g.unit, g.frozen) for g in heads] == [(H, HD, False)], graph.summary()
    return heads[0]


@pytest.mark.parametrize("select", ["slice", "take"])
def test_removed_heads_leave_every_third_of_the_fused_weight(select):
    """Keeping heads {0, 2}: the fused weight keeps those heads' columns in the q, k and v
    thirds (and the bias), the output projection their rows, the reshape 2 heads; the module
    is well formed and equals the mask oracle."""
    before = _fused_block(W_QKV, B_QKV, W_O, H, select)
    graph = hc.analyze(before)
    group = _head_group(graph)
    assert group.producers == ["lv"]  # the fused projection, once
    keep = [0, 2]
    plan = PrunePlan.create(graph.fingerprint, {group.id: keep}, {group.id: H})
    after, report = hc.prune(before, plan=plan, graph=graph)
    assert relax.analysis.check_well_formed(after)
    chans = np.concatenate([h * HD + np.arange(HD) for h in keep])
    cols = np.concatenate([third * D + chans for third in range(3)])
    expected = _fused_block(W_QKV[:, cols], B_QKV[cols], W_O[chans], len(keep), select)
    tvm.ir.assert_structural_equal(after["main"], expected["main"], map_free_vars=True)
    assert report.macs_after < report.macs_before
    x = RNG.normal(size=(T, D)).astype("float32")
    got = run_relax(after, [x])
    np.testing.assert_allclose(got, run_relax(masked_reference(before, plan), [x]),
                               rtol=1e-5, atol=1e-5)
    assert np.abs(got - run_relax(before, [x])).max() > 1e-2  # the heads did matter


@pytest.mark.parametrize("split", ["slice", "split", "gather", "chunk"])
def test_fused_qkv_onnx_prunes_by_heads_like_the_mask_oracle(split, tmp_path):
    """An exported fused-QKV block (ONNX ``Slice``, ``Split`` or ``Gather`` along the
    3-axis; the importer normalises a ``Gather`` index through ``shape_of``, which
    ``load_onnx`` folds; or ``chunk``: the projection split in thirds, each reshaped to
    heads): dense TVM equals onnxruntime; one prunable head group (4 heads of 6); ratio 0.5
    keeps 2 heads, the pruned module equals the mask oracle, and the pruned ONNX export
    (``Reshape`` and ``Split`` sizes rewritten) reproduces it in onnxruntime."""
    model = fused_qkv_attention(tokens=6, dim=24, heads=4, split=split)
    onnx.save(model, str(tmp_path / "block.onnx"))
    model, mod = load_onnx_graph(str(tmp_path / "block.onnx"))  # the graph it imported
    x = np.random.default_rng(1).normal(size=(1, 6, 24)).astype("float32")
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(run_relax(mod, [x]), sess.run(None, {"input": x})[0],
                               rtol=1e-5, atol=1e-5)
    graph = hc.analyze(mod)
    heads = [g for g in graph.groups if g.unit > 1]
    assert [(g.size, g.unit, g.frozen) for g in heads] == [(4, 6, False)], graph.summary()
    pruned, report = hc.prune(mod, ratio=0.5, align=1, graph=graph)
    assert relax.analysis.check_well_formed(pruned)
    assert len(report.plan.kept[heads[0].id]) == 2
    shapes = [[int(s) for s in b.var.ty.shape] for blk in pruned["main"].body.blocks
              for b in blk.bindings if getattr(b.value, "op", None) is not None
              and getattr(b.value.op, "name", "") == "relax.reshape"]
    assert ([1, 6, 2, 6] if split == "chunk" else [1, 6, 3, 2, 6]) in shapes  # 2 heads kept
    got = run_relax(pruned, [x])
    np.testing.assert_allclose(got, run_relax(masked_reference(mod, report.plan), [x]),
                               rtol=1e-5, atol=1e-5)
    exported = apply_to_onnx(model, graph, report.plan, pruned)  # heads gone in ONNX too
    sess = ort.InferenceSession(exported.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"input": x})[0], got, rtol=1e-5, atol=1e-5)


def test_head_major_layout_is_read_as_heads_of_three_blocks():
    """``[H][3][hd]`` (reshape to (.., H, 3, hd), sliced along the 3): each head owns
    ``3 * hd`` consecutive channels, so the reshape's first axis is the heads."""
    graph = hc.analyze(from_onnx(fused_qkv_attention(tokens=6, dim=24, heads=4,
                                                     layout="heads")))
    heads = [g for g in graph.groups if g.unit > 1]
    assert [(g.size, g.unit, g.frozen) for g in heads] == [(4, 18, False)], graph.summary()


def test_fused_projection_also_read_whole_stays_frozen_with_the_reason():
    """A near miss: the (.., 3, H, hd) tensor is sliced into q, k, v but also averaged over
    its 3-axis. The blocks cannot be pruned by heads; the group is frozen and says why."""
    graph = hc.analyze(from_onnx(fused_qkv_attention(tokens=6, dim=24, heads=4,
                                                     read_whole=True)))
    assert not [g for g in graph.groups if g.unit > 1 and g.prunable]
    fused = [g for g in graph.groups if g.size in (3, 72)]
    assert len(fused) == 1 and fused[0].frozen
    reasons = [r.reason for r in fused[0].reasons]
    assert any("fused projection reshaped to [3, 4, 6]" in r and "read whole by" in r
               and "relax.mean" in r for r in reasons), reasons
