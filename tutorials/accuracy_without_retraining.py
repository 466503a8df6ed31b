"""
Accuracy without retraining: calibration, sensitivity, reconstruction, fine-tuning
==================================================================================

A deployment engineer holds a trained model and some unlabelled inputs, not the training
pipeline. This tutorial prunes the bundled MNIST ResNet (trained on real digits) and
recovers accuracy with what tvm_hcprune runs inside TVM:

1. calibration statistics on real inputs (``hc.calibrate``);
2. per-group sensitivity and a MAC-budgeted allocation (``hc.sensitivity_scan``,
   ``hc.select_plan``) instead of one ratio everywhere;
3. least-squares reconstruction of the pruned consumers (``hc.reconstruct``);
4. a short fine-tune inside TVM (``hc.finetune``, relax.training);
5. the before/after curve, top-1 against MACs, as a PNG.

Run::

    python tutorials/accuracy_without_retraining.py [--quick] [--out-dir DIR]

``--quick`` (or ``HCPRUNE_TUTORIAL_QUICK=1``) evaluates 100 digits with 48 calibration
inputs, one scanned ratio and 10 fine-tuning steps; the real setting is the 1,000
held-out digits, 512 calibration inputs, three ratios and 200 steps.
"""

# %%
# Set-up
# ------
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import tvm_hcprune as hc  # noqa: E402
from tvm_hcprune.utils import atomic_write  # noqa: E402
from tvm_hcprune.zoo.datasets import mnist_test, mnist_train  # noqa: E402
from tvm_hcprune.zoo.models import bundled_model  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="accuracy without retraining")
    ap.add_argument("--quick", action="store_true",
                    default=bool(os.environ.get("HCPRUNE_TUTORIAL_QUICK")))
    ap.add_argument("--out-dir", default=None)
    args = ap.parse_args(argv)
    out_dir = Path(args.out_dir or tempfile.mkdtemp(prefix="hcprune-tutorial-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    n_test, n_cal, steps = (100, 48, 10) if args.quick else (1000, 512, 200)
    ratios, margins = ((0.5,), (1.0,)) if args.quick else ((0.25, 0.5, 0.75), (1.0, 0.97, 0.94))
    curve = (0.3, 0.5) if args.quick else (0.2, 0.35, 0.5, 0.65)

    mod = hc.load_onnx(bundled_model(), log=lambda *a: None)
    graph = hc.analyze(mod)
    test = mnist_test(n_test)
    dense = hc.evaluate(mod, test, progress=False)
    print(f"dense: top-1 {dense.top1:.3f} on {n_test} held-out digits")

    # %%
    # 1. Calibration on real, unlabelled inputs
    # -----------------------------------------
    # Calibrate the analysed module: reconstruction matches its layers by name.
    cal_x = mnist_train(n_cal).samples
    cal = hc.calibrate(graph.mod, cal_x, max_rows=1024, progress=False)

    # %%
    # 2. A uniform ratio against a sensitivity-guided allocation at the same MACs
    # ---------------------------------------------------------------------------
    uniform, report = hc.prune(mod, ratio=0.5, graph=graph)
    budget = report.macs_fraction
    table = hc.sensitivity_scan(mod, graph, cal, cal_x[:32], ratios=ratios,
                                reconstruct=False, progress=False)
    plan, info = hc.select_plan(mod, graph, table, cal, cal_x[32:48], budget,
                                margins=margins, reconstruct=False)
    guided, greport = hc.prune(mod, plan=plan, graph=graph)
    changed = sum(len(plan.kept.get(g, ())) != len(report.plan.kept.get(g, ()))
                  for g in report.plan.kept)
    print(f"uniform 0.5: MACs {budget:.2f}x; sensitivity-guided: MACs "
          f"{greport.macs_fraction:.2f}x, {changed} group(s) kept at another width")

    # %%
    # 3. Reconstruction: re-fit the consumers of removed channels by least squares
    # ----------------------------------------------------------------------------
    # Over several uniform ratios (the curve), and for the sensitivity-guided plan.
    rows = []
    variants = [(f"uniform {r}", *hc.prune(mod, ratio=r, graph=graph)) for r in curve]
    variants.append(("guided", guided, greport))
    for name, pruned, rep in variants:
        plain = hc.evaluate(pruned, test, reference=dense, progress=False)
        rec, rrep = hc.reconstruct(pruned, graph, rep.plan, cal)
        recd = hc.evaluate(rec, test, reference=dense, progress=False)
        rows.append((name, rep.macs_fraction, plain.top1, recd.top1, rec))
        print(f"{name:12s} MACs {rep.macs_fraction:.2f}x: top-1 {plain.top1:.3f} pruned, "
              f"{recd.top1:.3f} reconstructed ({len(rrep.layers)} layers re-fit)")

    # %%
    # 4. A short fine-tune inside TVM, on labelled training digits
    # ------------------------------------------------------------
    best = max((r for r in rows if abs(r[1] - budget) < 1e-9 or r[0] == "guided"),
               key=lambda r: r[3])
    tuned, _ = hc.finetune(best[4], mnist_train(), steps=steps, batch=32, lr=1e-4,
                           progress=False)
    ft = hc.evaluate(tuned, test, reference=dense, progress=False)
    print(f"{best[0]} + reconstruction + {steps} fine-tuning steps: top-1 {ft.top1:.3f}")
    assert best[3] > best[2], "reconstruction did not recover accuracy"
    assert ft.top1 >= best[3] - 0.03, "fine-tuning made the reconstructed model worse"

    # %%
    # 5. The curve
    # ------------
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.axhline(dense.top1 * 100, color="gray", lw=1, label="dense")
    for i, (label, r) in enumerate((("pruned", 2), ("+ reconstruction", 3))):
        pts = sorted((row[1], row[r] * 100) for row in rows if row[0] != "guided")
        ax.plot(*zip(*pts, strict=True), ["o--", "s-"][i], label=label)
    guided_row = rows[-1]
    ax.plot([guided_row[1]], [guided_row[3] * 100], "D", label="guided + reconstruction")
    ax.plot([best[1]], [ft.top1 * 100], "*", ms=12, label=f"{best[0]} + fine-tuning")
    ax.set_xlabel("MACs (fraction of dense)")
    ax.set_ylabel("top-1 (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    png = out_dir / "accuracy.png"
    with atomic_write(png, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    print(f"wrote {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
