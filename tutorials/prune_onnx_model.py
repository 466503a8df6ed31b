"""Prune an ONNX model inside TVM, check it against the oracle, and save the plan.

Run:  python tutorials/prune_onnx_model.py [--ratio 0.5] [--out-dir DIR]

1. import an ONNX model with static shapes (``load_onnx``);
2. look at the channel groups the analysis found, and why some are frozen;
3. prune with the pass inside ``tvm.transform.Sequential``;
4. check the pruned module against the mask oracle;
5. save the plan (JSON) and re-apply it with ``ApplyPrunePlan``.
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
    args = ap.parse_args(argv)
    out_dir = Path(args.out_dir or tempfile.mkdtemp(prefix="hcprune-tutorial-"))
    out_dir.mkdir(parents=True, exist_ok=True)

    # 1. an ONNX file (here a MobileNetV2-shaped model; use your own path instead)
    path = out_dir / "mobilenet_v2.onnx"
    onnx.save(onnx_models.mobilenet_v2(image=64, num_classes=10), path)
    mod = hc.load_onnx(path)

    # 2. the dependency analysis
    graph = hc.analyze(mod)
    print(graph.summary().splitlines()[0])
    for rec in graph.frozen[:3]:
        print(f"  frozen group {rec.group}: {rec.op} at {rec.var}: {rec.reason}")

    # 3. the pass, next to TVM's own passes
    prune = PruneChannels(ratio=args.ratio, criterion="l2", align=8)
    pruned = tvm.transform.Sequential([prune, relax.transform.FoldConstant()])(mod)
    plan = prune.last_plan

    # 4. the oracle: pruned == original with the removed channels zeroed at consumers
    x = np.random.default_rng(0).normal(size=(1, 3, 64, 64)).astype(np.float32)
    diff = np.abs(run_relax(pruned, [x]) - run_relax(masked_reference(mod, plan), [x])).max()
    print(f"pruned vs masked reference: max |diff| = {diff:.2e}")
    assert diff < 1e-4

    # 5. the plan is the contract: save it, apply it later to the same model
    plan.save(out_dir / "plan.json")
    again = tvm.transform.Sequential([ApplyPrunePlan(out_dir / "plan.json"),
                                      relax.transform.FoldConstant()])(mod)
    # the whole function (every op, shape and sliced weight), not just its signature
    tvm.ir.assert_structural_equal(again["main"], pruned["main"])
    _, report = hc.prune(mod, plan=plan, graph=graph)
    print(report.summary().splitlines()[1])
    print(f"plan written to {out_dir / 'plan.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
