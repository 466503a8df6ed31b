"""Accuracy at equal measured latency: the latency-aware allocation against a uniform ratio.

The issue's target: "at equal measured latency, the latency-aware allocation keeps equal or
better accuracy than a uniform ratio on the bundled MNIST model and the text-direction
classifier". Per model:

1. the latency table is measured on this machine (cached) and the latency-aware plans are
   made for ``Latency(fraction=f)`` at each ``--fractions`` f (the table's plan, no closed
   loop: the whole models are timed below anyway);
2. uniform-ratio plans are made on a grid of ratios (``--ratio-step``), one per distinct
   plan;
3. the dense model, every latency-aware and every uniform plan are timed in interleaved
   rounds in one run (median of ``--repeats`` rounds, fastest of ``--number`` calls each);
4. each latency-aware plan is paired with the uniform plan whose measured latency is the
   closest at or below its own (the uniform plan is never slower: the comparison favours
   the uniform side by at most one step of the ratio grid);
5. both are pruned again with the same recovery (``--recovery``): ``data`` (default) the
   same calibration samples, criterion widths, least-squares reconstruction with its guard
   for both; ``none``: neither gets data or reconstruction; and evaluated on test samples
   never used for calibration: top-1 on labels and top-1 agreement with the dense model.

Data: MNIST (bundled ResNet): calibrated on training digits, tested on the 1,000 held-out
ones; text_direction (PP-OCR mobile cls, 0/180 degrees): rendered text lines, calibration
with seed 1000, test with seed 0 (``tvm_hcprune.zoo.datasets``).

    python benchmarks/budget_accuracy.py [--json PATH] [--models mnist,text_direction]
        [--fractions 0.8,0.6,0.4] [--recovery data|none] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

import tvm_hcprune as hc
from tvm_hcprune.latency import latency_table
from tvm_hcprune.latency.measure import measure_models
from tvm_hcprune.recovery.guided import CachedRunners, output_agreement
from tvm_hcprune.utils import atomic_write_text
from tvm_hcprune.zoo import datasets
from tvm_hcprune.zoo.models import bundled_model, model_path


def _specs(args):
    """name -> (onnx path, shapes, calibration dataset, test dataset)."""
    out = {}
    if "mnist" in args.models:
        out["mnist"] = (bundled_model(), None, lambda: datasets.mnist_train(args.cal_mnist),
                        lambda: datasets.mnist_test(args.test_mnist))
    if "text_direction" in args.models:
        out["text_direction"] = (model_path("text_direction"), {"x": [1, 3, 48, 192]},
                                 lambda: datasets.text_direction(args.cal, seed=1000),
                                 lambda: datasets.text_direction(args.test, seed=0))
    return out


def _widths(rep) -> tuple:
    return tuple(sorted((c.id, c.after) for c in rep.groups))


def pair_at_or_below(aware_ms: float, uniform: list[tuple[float, object]]):
    """The uniform entry ``(ms, x)`` with the largest ms <= ``aware_ms`` (the fastest one
    when every uniform plan is slower: then ``at_or_below`` is False)."""
    below = [u for u in uniform if u[0] <= aware_ms]
    if below:
        return max(below, key=lambda u: u[0]), True
    return min(uniform, key=lambda u: u[0]), False


def bench_model(name, spec, args) -> dict:
    path, shapes, make_cal, make_test = spec
    mod = hc.load_onnx(path, shapes, log=lambda *_: None)
    graph = hc.analyze(mod)
    cal, test = make_cal(), make_test()
    t0 = time.perf_counter()
    table = latency_table(graph, "llvm", widths=args.widths, repeats=args.table_repeats,
                          cache_dir=args.cache, progress=False)
    table_s = time.perf_counter() - t0
    base = {"graph": graph, "target": "llvm"}

    def recovered(**kw):
        if args.recovery == "data":
            kw.update(calibration=cal, allocation="criterion", reconstruct=True)
        return hc.prune(mod, **base, **kw)

    aware = []
    for f in args.fractions:
        try:
            pm, rep = hc.prune(mod, budget=hc.Latency(fraction=f), latency_model=table, **base)
        except hc.HCPruneError as err:
            print(f"  {name}: Latency(fraction={f}) skipped: {err}", flush=True)
            continue
        aware.append({"fraction": f, "module": pm, "report": rep})
    uniform, seen = [], set()
    for r in np.arange(args.ratio_step, args.max_ratio + 1e-9, args.ratio_step):
        r = round(float(r), 4)
        pm, rep = hc.prune(mod, ratio=r, **base)
        key = _widths(rep)
        if key in seen or not rep.plan.kept:
            continue
        seen.add(key)
        uniform.append({"ratio": r, "module": pm, "report": rep})
    mods = [graph.mod] + [a["module"] for a in aware] + [u["module"] for u in uniform]
    t1 = time.perf_counter()
    ms = measure_models(mods, "llvm", repeats=args.repeats, number=args.number,
                        progress=True, desc=f"{name} timing")
    timing_s = time.perf_counter() - t1
    dense_ms = ms[0]
    for a, m in zip(aware, ms[1:1 + len(aware)], strict=True):
        a["ms"] = m
    for u, m in zip(uniform, ms[1 + len(aware):], strict=True):
        u["ms"] = m

    runners = CachedRunners()
    tx, labels = test.samples, test.labels
    dense_out = runners.outputs(graph.mod, tx)
    evaluated: dict = {}

    def evaluate(kind, key, **kw):
        if (kind, key) not in evaluated:
            pruned, rep = recovered(**kw)
            agree = output_agreement(dense_out, runners.outputs(pruned, tx, keep=False), labels)
            recon = rep.reconstruction
            evaluated[(kind, key)] = {
                "top1": agree["top1_pruned"], "top1_agreement": agree["top1_agreement"],
                "correlation": agree["correlation"], "macs_fraction": rep.macs_fraction,
                "first_conv_pruned": bool(set(rep.plan.kept) & _first(graph)),
                "reconstruction_reverted": None if recon is None else recon.reverted}
        return evaluated[(kind, key)]

    rows = []
    for a in aware:
        u, ok = pair_at_or_below(a["ms"], [(x["ms"], x) for x in uniform])
        u = u[1]
        ea = evaluate("latency", a["fraction"], budget=hc.Latency(fraction=a["fraction"]),
                      latency_model=table)
        eu = evaluate("ratio", u["ratio"], ratio=u["ratio"])
        row = {"fraction": a["fraction"], "aware_ms": a["ms"], "aware": ea,
               "uniform_ratio": u["ratio"], "uniform_ms": u["ms"], "uniform": eu,
               "uniform_at_or_below": ok,
               "top1_delta_pt": 100 * (ea["top1"] - eu["top1"]),
               "aware_widths": {c.id: (c.before, c.after) for c in a["report"].groups
                                if c.after != c.before},
               "uniform_widths": {c.id: (c.before, c.after) for c in u["report"].groups
                                  if c.after != c.before}}
        rows.append(row)
        print(f"  {name} Latency({a['fraction']}): aware {a['ms'] / dense_ms:.3f}x top-1 "
              f"{ea['top1']:.3f} (agree {ea['top1_agreement']:.3f}) | uniform ratio "
              f"{u['ratio']} {u['ms'] / dense_ms:.3f}x top-1 {eu['top1']:.3f} (agree "
              f"{eu['top1_agreement']:.3f})", flush=True)
    return {"model": name, "dense_ms": dense_ms, "dense_top1": float(np.mean(
        np.argmax(dense_out[0].reshape(len(tx), -1), axis=1) == labels)),
        "table_s": round(table_s, 1), "timing_s": round(timing_s, 1),
        "uniform_grid": [{"ratio": u["ratio"], "ms": u["ms"],
                          "fraction": u["ms"] / dense_ms,
                          "macs_fraction": u["report"].macs_fraction} for u in uniform],
        "rows": rows, "recovery": args.recovery, "calibration_samples": len(cal),
        "test_samples": len(tx)}


def _first(graph) -> set:
    from tvm_hcprune.planning.planner import input_conv_groups

    return input_conv_groups(graph)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", dest="json_path", default=None)
    ap.add_argument("--models", default="mnist,text_direction")
    ap.add_argument("--fractions", default="0.8,0.6,0.4")
    ap.add_argument("--recovery", choices=("data", "none"), default="data")
    ap.add_argument("--ratio-step", type=float, default=0.05)
    ap.add_argument("--max-ratio", type=float, default=0.9)
    ap.add_argument("--widths", type=int, default=4, help="table: candidate widths per group")
    ap.add_argument("--table-repeats", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=7, help="interleaved timing rounds")
    ap.add_argument("--number", type=int, default=5)
    ap.add_argument("--cache", default="default", help="latency cache folder")
    ap.add_argument("--cal", type=int, default=96, help="text_direction calibration samples")
    ap.add_argument("--test", type=int, default=256, help="text_direction test samples")
    ap.add_argument("--cal-mnist", type=int, default=256)
    ap.add_argument("--test-mnist", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="fewer samples and rounds")
    args = ap.parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = str(args.threads)  # before TVM's thread pool starts
    args.models = args.models.split(",")
    args.fractions = [float(f) for f in args.fractions.split(",")]
    if args.quick:
        args.cal, args.test, args.cal_mnist, args.test_mnist = 32, 64, 64, 200
        args.repeats, args.ratio_step, args.widths = 3, 0.1, 3
    results = []
    for name, spec in _specs(args).items():
        res = bench_model(name, spec, args)
        results.append(res)
        print(f"\n{name}: dense {res['dense_ms']:.3f} ms, top-1 {res['dense_top1']:.3f}; "
              f"recovery {args.recovery}")
        print(f"  {'asked':>6} {'aware x':>8} {'top-1':>6} {'agree':>6} | {'ratio':>5} "
              f"{'unif x':>7} {'top-1':>6} {'agree':>6} | {'delta pt':>8}")
        for r in res["rows"]:
            d = res["dense_ms"]
            print(f"  {r['fraction']:>6.2f} {r['aware_ms'] / d:>8.3f} {r['aware']['top1']:>6.3f} "
                  f"{r['aware']['top1_agreement']:>6.3f} | {r['uniform_ratio']:>5.2f} "
                  f"{r['uniform_ms'] / d:>7.3f} {r['uniform']['top1']:>6.3f} "
                  f"{r['uniform']['top1_agreement']:>6.3f} | {r['top1_delta_pt']:>+8.1f}"
                  + ("" if r["uniform_at_or_below"] else "  (no uniform plan as fast)"))
    if args.json_path:
        atomic_write_text(args.json_path, json.dumps(
            {"threads": args.threads, "results": results}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
