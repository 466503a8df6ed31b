"""CUDA benchmark: dense vs pruned, dlight default vs tuned, on a GPU when there is one.

Always: build each model dense and pruned for ``--arch`` with tvm_hcprune's pipeline (dlight
GPU rules), compile the generated source with nvcc (PTX) and count the kernels. With a CUDA
device: time the four builds (dense/pruned x default/tuned with ``--trials-per-task``)
interleaved over ``--rounds`` rounds and report ratios; without one the timings are
``null`` and ``"gpu": false``::

    .venv/bin/python benchmarks/cuda.py --models resnet18 mobilenet_v2 --image 224 \\
        --trials-per-task 4 --json out/cuda.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tuning import make_model  # noqa: E402 - benchmarks/ is not a package


def gpu_latency(ex, x, repeat: int) -> float:
    import numpy as np
    import tvm
    from tvm import relax

    dev = tvm.cuda(0)
    vm = relax.VirtualMachine(ex, dev)
    arg = tvm.runtime.tensor(x, dev)
    vm["main"](arg)
    vm.set_input("main", arg)
    timer = vm.time_evaluator("invoke_stateful", dev, number=10, repeat=repeat)
    return float(np.median(timer("main").results))


def bench_model(name, args, target, gpu: bool):
    import numpy as np
    import onnx

    import tvm_hcprune as hc
    from tvm_hcprune.backend import cuda as hcuda

    model = make_model(name, args.image)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.onnx"
        onnx.save(model, path)
        dense = hc.load_onnx(str(path), log=lambda *a: None)
    pruned, report = hc.prune(dense, ratio=args.ratio, target=target)
    x = np.random.default_rng(0).standard_normal(
        [1, 3, args.image, args.image]).astype("float32")
    row = {"model": name, "image": args.image, "ratio": args.ratio,
           "mac_ratio": report.macs_after / report.macs_before, "gpu": gpu}
    exes = {}
    for label, mod in (("dense", dense), ("pruned", pruned)):
        t0 = time.perf_counter()
        ex = hcuda.build_cuda(mod, target)
        row[f"{label}_build_s"] = round(time.perf_counter() - t0, 2)
        src = hcuda.cuda_source(ex)
        t0 = time.perf_counter()
        ptx = hcuda.nvcc_compile(src, str(dict(target.attrs)["arch"]), "ptx")
        row[f"{label}_nvcc_s"] = round(time.perf_counter() - t0, 2)
        row[f"{label}_kernels"] = len(hcuda.kernel_names(src))
        row[f"{label}_ptx_entries_match"] = sorted(hcuda.ptx_entries(ptx)) == sorted(
            hcuda.kernel_names(src))
        exes[f"{label}_default"] = ex
        if gpu:
            t0 = time.perf_counter()
            db = hc.tune(mod, target, trials=args.trials_per_task * 1000,
                         trials_per_task=args.trials_per_task, progress=not args.quiet)
            row[f"{label}_tune_s"] = round(time.perf_counter() - t0, 1)
            exes[f"{label}_tuned"] = hcuda.build_cuda(mod, target, database=db)
    if gpu:
        best = {k: float("inf") for k in exes}
        for _ in range(args.rounds):
            for key, ex in exes.items():
                best[key] = min(best[key], gpu_latency(ex, x, args.repeat))
        for key, secs in best.items():
            row[f"{key}_ms"] = secs * 1e3
        for kind in ("default", "tuned"):
            row[f"pruned_over_dense_{kind}"] = best[f"pruned_{kind}"] / best[f"dense_{kind}"]
        for label in ("dense", "pruned"):
            row[f"{label}_tuned_over_default"] = (best[f"{label}_tuned"]
                                                  / best[f"{label}_default"])
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "mobilenet_v2"])
    parser.add_argument("--image", type=int, default=224)
    parser.add_argument("--ratio", type=float, default=0.3)
    parser.add_argument("--arch", default=None,
                        help="sm_XX (default: the GPU's, else sm_80)")
    parser.add_argument("--trials-per-task", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--json", default=None, help="write the figures here")
    args = parser.parse_args(argv)

    import tvm

    from tvm_hcprune.backend import cuda as hcuda
    from tvm_hcprune.utils import atomic_write_text

    gpu = hcuda.has_gpu()
    arch = args.arch
    if arch is None:
        arch = f"sm_{tvm.cuda(0).compute_version.replace('.', '')}" if gpu else "sm_80"
    target = hcuda.cuda_target(arch)
    rows = []
    for name in args.models:
        row = bench_model(name, args, target, gpu)
        rows.append(row)
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v)
                          for k, v in row.items()}), flush=True)
    result = {"arch": arch, "gpu": gpu,
              "device": tvm.cuda(0).device_name if gpu else None,
              "trials_per_task": args.trials_per_task, "rows": rows}
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
