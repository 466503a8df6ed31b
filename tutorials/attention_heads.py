"""
Attention heads behind a fused Q/K/V projection: find them, cut whole heads, export
===================================================================================

Transformers exported from PaddlePaddle (SVTR, PP-OCR's text recogniser) or PyTorch (``timm``
ViTs) compute Q, K and V with one ``MatMul`` of ``3 * H * hd`` output channels, reshape it
to ``(.., 3, H, hd)`` and take q, k and v apart along the 3-axis. A head is then ``hd``
channels in each third of that weight plus the matching rows of the output projection:
``hc.analyze`` finds it as one channel group of ``H`` units of ``hd`` channels
(``ChannelGroup.unit``), budgets weigh a head as its ``hd`` channels, and pruning removes
whole heads (the reshape's ``H`` shrinks). Run::

    python tutorials/attention_heads.py [--quick] [--out-dir DIR]

``--quick`` (or ``HCPRUNE_TUTORIAL_QUICK=1``) runs the small exported block only; without
it, when the installed ``rapidocr-onnxruntime`` ships PP-OCRv4's recogniser, its two SVTR
attention blocks are analysed too.
"""

# %%
# Set-up: an attention block exported the SVTR way
# ------------------------------------------------
from __future__ import annotations

import argparse
import importlib.util
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tvm import relax

import tvm_hcprune as hc
from tvm_hcprune.frontend.load import load_onnx_graph
from tvm_hcprune.planning.export_onnx import apply_to_onnx
from tvm_hcprune.testing import masked_reference, run_relax
from tvm_hcprune.testing.onnx_models import fused_qkv_attention
from tvm_hcprune.utils import atomic_write_bytes


def head_groups(graph):
    """The channel groups whose units are attention heads (more than one channel each)."""
    return [g for g in graph.groups if g.unit > 1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="attention heads tutorial")
    ap.add_argument("--quick", action="store_true",
                    default=bool(os.environ.get("HCPRUNE_TUTORIAL_QUICK")))
    ap.add_argument("--out-dir", default=".")
    args = ap.parse_args(argv)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)

    # 8 tokens of width 48, 6 heads of 8 channels; q, k, v taken apart by Slice + Squeeze
    path = out / "attention_block.onnx"
    atomic_write_bytes(path, fused_qkv_attention(tokens=8, dim=48, heads=6,
                                                 split="slice").SerializeToString())
    model, mod = load_onnx_graph(str(path))  # the ONNX graph TVM imported, and its module
    x = np.random.default_rng(1).normal(size=(1, 8, 48)).astype("float32")
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(run_relax(mod, [x]), sess.run(None, {"input": x})[0],
                               rtol=1e-5, atol=1e-5)

    # %%
    # 1. The heads are one channel group of 6 units of 8 channels
    # -----------------------------------------------------------
    graph = hc.analyze(mod)
    print(graph.summary())
    (heads,) = head_groups(graph)
    assert (heads.size, heads.unit, heads.frozen) == (6, 8, False)
    print(f"group {heads.id}: {heads.size} heads of {heads.unit} channels")

    # %%
    # 2. Cut half the heads; the result equals the block with those heads masked
    # ---------------------------------------------------------------------------
    # (The masked oracle: the dense module with the removed channels zeroed at their
    # consumers. Pruning a head slices its 8 channels out of each of q, k and v, and 8 rows
    # out of the output projection.)
    pruned, report = hc.prune(mod, ratio=0.5, align=1, graph=graph)
    assert relax.analysis.check_well_formed(pruned)
    kept = report.plan.kept[heads.id]
    print(f"kept heads {list(map(int, kept))}; MACs {report.macs_fraction:.3f}x")
    assert len(kept) == 3 and report.macs_after < report.macs_before
    got = run_relax(pruned, [x])
    np.testing.assert_allclose(got, run_relax(masked_reference(mod, report.plan), [x]),
                               rtol=1e-5, atol=1e-5)

    # %%
    # 3. The pruned block as ONNX: smaller weights, the Reshape's head count rewritten
    # ---------------------------------------------------------------------------------
    exported = apply_to_onnx(model, graph, report.plan, pruned)
    read = {i for n in exported.graph.node for i in n.input}
    assert all(init.name in read for init in exported.graph.initializer)  # no dead weights
    pruned_path = out / "attention_block.pruned.onnx"
    atomic_write_bytes(pruned_path, exported.SerializeToString())
    sess = ort.InferenceSession(str(pruned_path), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"input": x})[0], got, rtol=1e-5, atol=1e-5)
    print(f"wrote {pruned_path} ({pruned_path.stat().st_size} bytes, dense "
          f"{path.stat().st_size})")

    # %%
    # 4. A real model: PP-OCRv4's recogniser (SVTR neck), when it is installed
    # ------------------------------------------------------------------------
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    rec = (Path(spec.submodule_search_locations[0]) / "models" / "ch_PP-OCRv4_rec_infer.onnx"
           if spec is not None and spec.submodule_search_locations else None)
    if args.quick or rec is None or not rec.is_file():
        print("PP-OCRv4 recogniser: skipped (quick mode, or rapidocr-onnxruntime not "
              "installed)")
        return 0
    graph = hc.analyze(hc.load_onnx(rec, {"x": [1, 3, 48, 192]}, log=lambda *_: None))
    found = head_groups(graph)
    for g in found:
        print(f"PP-OCRv4 rec: group {g.id}, {g.size} heads of {g.unit} channels"
              + (f" (frozen: {g.frozen})" if g.frozen else ""))
    assert len(found) == 2 and all(not g.frozen for g in found)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
