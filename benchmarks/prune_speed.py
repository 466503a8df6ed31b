"""Analysis + rewrite time of the pruning pass on a ResNet-50-shaped model (224x224).

Target (issue 2): <= 2 s here, and <= 10% of ``tvm.compile`` time of the same model.

    python benchmarks/prune_speed.py [--json PATH] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import time

import tvm
from tvm.relax.frontend.onnx import from_onnx

import tvm_hcprune as hc
from tvm_hcprune.testing import onnx_models
from tvm_hcprune.utils import atomic_write_text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", dest="json_path", default=None)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--ratio", type=float, default=0.5)
    args = ap.parse_args(argv)

    mod = from_onnx(onnx_models.resnet(50, image=224))
    analysis, total = [], []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        graph = hc.analyze(mod)
        t1 = time.perf_counter()
        pruned, report = hc.prune(mod, ratio=args.ratio, align=8, graph=graph)
        t2 = time.perf_counter()
        analysis.append(t1 - t0)
        total.append(t2 - t0)
    t0 = time.perf_counter()
    tvm.compile(mod, tvm.target.Target({"kind": "llvm"}))
    compile_s = time.perf_counter() - t0
    res = {
        "model": "resnet50-shaped, 224x224",
        "analysis_s": min(analysis),
        "analysis_plus_rewrite_s": min(total),
        "tvm_compile_s": compile_s,
        "fraction_of_compile": min(total) / compile_s,
        "groups": len(graph.groups),
        "macs_fraction": report.macs_fraction,
        "target_s": 2.0,
        "target_fraction": 0.10,
    }
    print(f"analysis            {res['analysis_s']:.3f} s")
    print(f"analysis + rewrite  {res['analysis_plus_rewrite_s']:.3f} s  (target <= 2 s)")
    print(f"tvm.compile         {compile_s:.2f} s")
    print(f"ratio               {res['fraction_of_compile']:.3f} of compile (target <= 0.10)")
    if args.json_path:
        atomic_write_text(args.json_path, json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
