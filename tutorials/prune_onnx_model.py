"""
Prune inside TVM's flow: a pass in ``Sequential``, a named pipeline for ``tvm.compile``
=======================================================================================

Run::

    python tutorials/prune_onnx_model.py [--ratio 0.5] [--quick] [--out-dir DIR]

1. import an ONNX model with static shapes (``load_onnx``);
2. look at the channel groups the analysis found, and why some are frozen;
3. prune with the pass inside ``tvm.transform.Sequential``;
4. check the pruned module against the mask oracle;
5. compile with ``tvm.compile(..., relax_pipeline="hcprune")`` and compare with the dense
   model compiled by TVM's default pipeline;
6. save the plan (JSON) and re-apply it with ``ApplyPrunePlan``.

The model is a 64x64 MobileNetV2-shaped network either way (``--quick`` is accepted
like in the other tutorials); use your own ONNX path for real work.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnx
import tvm
from tvm import relax

import tvm_hcprune as hc
from tvm_hcprune.testing import masked_reference, onnx_models, run_relax
from tvm_hcprune.transform import ApplyPrunePlan, PruneChannels


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--out-dir", default=None)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    out_dir = Path(args.out_dir or tempfile.mkdtemp(prefix="hcprune-tutorial-"))
    out_dir.mkdir(parents=True, exist_ok=True)

    # %%
    # 1. an ONNX file (here a MobileNetV2-shaped model; use your own path instead)
    path = out_dir / "mobilenet_v2.onnx"
    onnx.save(onnx_models.mobilenet_v2(image=64, num_classes=10), path)
    mod = hc.load_onnx(path)

    # %%
    # 2. the dependency analysis
    graph = hc.analyze(mod)
    print(graph.summary().splitlines()[0])
    for rec in graph.frozen[:3]:
        print(f"  frozen group {rec.group}: {rec.op} at {rec.var}: {rec.reason}")

    # %%
    # 3. the pass, next to TVM's own passes
    prune = PruneChannels(ratio=args.ratio, criterion="l2", align=8)
    pruned = tvm.transform.Sequential([prune, relax.transform.FoldConstant()])(mod)
    plan = prune.last_plan

    # %%
    # 4. the oracle: pruned == original with the removed channels zeroed at consumers
    x = np.random.default_rng(0).normal(size=(1, 3, 64, 64)).astype(np.float32)
    diff = np.abs(run_relax(pruned, [x]) - run_relax(masked_reference(mod, plan), [x])).max()
    print(f"pruned vs masked reference: max |diff| = {diff:.2e}")
    assert diff < 1e-4

    # %%
    # 5. tvm.compile with the named pipeline (registered by ``import tvm_hcprune``): BN
    #    folding, channel-blocked kernels and the schedule rules; the pruned model still
    #    computes what the masked dense model computes with TVM's default pipeline
    target = hc.parse_target("llvm")
    ex = tvm.compile(pruned, target, relax_pipeline="hcprune")
    vm = relax.VirtualMachine(ex, tvm.cpu())
    fast = vm["main"](tvm.runtime.tensor(x)).numpy()
    slow = run_relax(masked_reference(mod, plan), [x])
    print(f"relax_pipeline='hcprune' vs default pipeline: max |diff| = "
          f"{np.abs(fast - slow).max():.2e}")
    assert np.allclose(fast, slow, rtol=1e-4, atol=1e-4)

    # %%
    # 6. the plan is the contract: save it, apply it later to the same model; the result is
    #    the module the pass produced, structurally (same ops, shapes and constants)
    plan.save(out_dir / "plan.json")
    again = tvm.transform.Sequential([ApplyPrunePlan(out_dir / "plan.json"),
                                      relax.transform.FoldConstant()])(mod)
    tvm.ir.assert_structural_equal(again, pruned)
    _, report = hc.prune(mod, plan=plan, graph=graph)
    print(report.summary().splitlines()[1])
    print(f"plan written to {out_dir / 'plan.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
