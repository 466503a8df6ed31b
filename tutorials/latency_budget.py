"""Prune to a latency budget measured on this machine's own kernels.

Run:  python tutorials/latency_budget.py [--quick] [--out-dir DIR]
(``HCPRUNE_TUTORIAL_QUICK=1`` is the same as ``--quick``: fewer candidate widths, timing
rounds and calibration samples, about two minutes.)

A uniform ratio says nothing about speed: latency against channel count is a staircase
(SIMD blocks, register tiles, caches), so some channels removed buy no time at all. Here
we measure that staircase per layer, with the kernels ``tvm_hcprune.build`` compiles, and
let the pruner pick per-group widths that meet a latency budget while keeping the most
important channels.
"""

# %%
# Set-up
# ------
# The bundled MNIST ResNet (trained, 1x1x28x28 inputs) and an output folder. The latency
# cache goes there too, so the tutorial does not touch ``~/.cache``.

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

import tvm_hcprune as hc
from tvm_hcprune.latency.layers import layer_specs
from tvm_hcprune.latency.measure import measure_models
from tvm_hcprune.planning.planner import input_conv_groups
from tvm_hcprune.testing import masked_reference, run_relax
from tvm_hcprune.zoo.datasets import mnist_test, mnist_train
from tvm_hcprune.zoo.models import bundled_model


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out-dir", default=None)
    args = ap.parse_args(argv)
    quick = args.quick or os.environ.get("HCPRUNE_TUTORIAL_QUICK") == "1"
    out_dir = Path(args.out_dir or tempfile.mkdtemp(prefix="hcprune-latency-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    cache = out_dir / "latency-cache"

    mod = hc.load_onnx(bundled_model(), log=lambda *_: None)
    graph = hc.analyze(mod)
    print(graph.summary().splitlines()[0])

    # %%
    # 1. Measure the latency table
    # ----------------------------
    # Every conv/matmul layer with the epilogue the pipeline fuses into it (batch norm,
    # bias, ReLU, the residual add) is compiled at a grid of input/output channel counts
    # (multiples of the target's channel multiple) and timed in interleaved rounds. The
    # table is cached by target and workload: the second call measures nothing.
    widths = 2 if quick else 4
    t0 = time.perf_counter()
    table = hc.latency_table(graph, "llvm", widths=widths, cache_dir=cache,
                             repeats=3 if quick else 7)
    print(f"latency table: {len(table.layers)} layers, {table.measured} kernels measured "
          f"in {time.perf_counter() - t0:.1f} s; dense model {table.dense_ms:.3f} ms")
    t0 = time.perf_counter()
    again = hc.latency_table(graph, "llvm", widths=widths, cache_dir=cache, progress=False)
    print(f"second call: {again.measured} kernels measured, {time.perf_counter() - t0:.2f} s")
    assert again.measured == 0

    # %%
    # 2. The staircase of the heaviest layer
    # --------------------------------------
    # Milliseconds at each measured output width (input dense). Flat steps are widths
    # where removing channels buys nothing; the budget only picks widths on the edges.
    specs = {s.name: s for s in layer_specs(graph)}
    name = max(table.layers, key=lambda k: float(np.max(table.layers[k].ms)))
    lt = table.layers[name]
    print(f"layer {name} ({specs[name].op}), input {lt.in_grid[-1]} channels:")
    for j, cout in enumerate(lt.out_grid):
        print(f"  {cout:4d} output channels: {float(lt.ms[-1][j]) * 1e3:8.1f} us")

    # %%
    # 3. Prune to a latency budget
    # ----------------------------
    # ``Latency(fraction=0.6)``: 60% of the dense latency. The allocation is a greedy
    # knapsack over the table: each step removes the channels that cost the least
    # importance (the criterion's scores) per millisecond saved. The table also says how
    # far the model can go: every group at its smallest candidate width, except the first
    # conv's (the one reading the input): budgets keep its width (``prune_first_conv=True``
    # would let them prune it; a uniform ``ratio`` does).
    first = input_conv_groups(graph)
    cost = table.cost(graph)
    dense = table.predict(graph)
    low = {g: w for g, w in table.low_widths.items() if g not in first}
    lowest = cost.total({**{g.id: g.size for g in graph.groups}, **low}) / dense
    print(f"predicted: dense {dense:.3f} ms; the smallest widths reach {lowest:.2f}x")
    fraction = 0.6 if lowest < 0.55 else round((1 + lowest) / 2, 2)  # a reachable budget
    pruned, report = hc.prune(mod, budget=hc.Latency(fraction=fraction), target="llvm",
                              graph=graph, latency_model=table)
    print(report.summary())
    for c in report.groups:
        if c.after != c.before:
            print(f"  group {c.id}: {c.before} -> {c.after} channels")
    assert report.predicted_ms <= fraction * report.dense_predicted_ms
    assert not first & set(report.plan.kept)  # the first conv kept its width

    # %%
    # 4. Check and measure
    # --------------------
    # The pruned model equals the dense model with the removed channels zeroed (the mask
    # oracle), and we time both in the same interleaved run. The machine may be shared,
    # so only the ratio measured in one run means anything.
    x = np.random.default_rng(0).normal(size=(1, 1, 28, 28)).astype(np.float32)
    diff = np.abs(run_relax(pruned, [x]) - run_relax(masked_reference(mod, report.plan),
                                                     [x])).max()
    print(f"pruned vs masked reference: max |diff| = {diff:.2e}")
    assert diff < 1e-4
    dense_ms, pruned_ms = measure_models([graph.mod, pruned], "llvm",
                                         repeats=3 if quick else 9)
    print(f"measured: dense {dense_ms:.3f} ms, pruned {pruned_ms:.3f} ms "
          f"({pruned_ms / dense_ms:.2f}x; asked {fraction:.2f}x, predicted "
          f"{report.predicted_ms / report.dense_predicted_ms:.2f}x)")

    # %%
    # 5. Budgets that cannot be met, and other budgets
    # ------------------------------------------------
    # A budget below what the smallest allowed widths reach is an error that says how far
    # the model can go; MACs and parameter budgets need no measurement. (The report's
    # ``to_markdown()`` lists each layer's widths and predicted milliseconds.)
    try:
        hc.prune(mod, budget=hc.Latency(fraction=0.01), target="llvm", graph=graph,
                 latency_model=table)
        raise AssertionError("a 1% latency budget should be unreachable")
    except hc.HCPruneError as err:
        print(f"Latency(fraction=0.01): {err}")
    _, rep = hc.prune(mod, budget=hc.MACs(fraction=0.5), graph=graph, target="llvm")
    print(f"MACs(fraction=0.5): {rep.macs_fraction:.2f}x MACs kept")

    # %%
    # 6. Without measurements: the roofline model
    # -------------------------------------------
    # For a target this machine cannot run, the hardware profile's peak FLOP/s and an
    # assumed memory bandwidth give a latency estimate with the same SIMD staircase.
    _, rep = hc.prune(mod, budget=hc.Latency(fraction=fraction), target="llvm", graph=graph,
                      latency_model=hc.RooflineModel("llvm"))
    print(f"roofline plan: predicted {rep.predicted_ms / rep.dense_predicted_ms:.2f}x, "
          f"{rep.macs_fraction:.2f}x MACs")
    table.save(out_dir / "latency_table.json")
    print(f"table written to {out_dir / 'latency_table.json'}")

    # %%
    # 7. With calibration data: accuracy-aware by default
    # ---------------------------------------------------
    # Give ``calibration=`` real inputs (an array, ``{input_name: array}``, a ``.npz`` or
    # ``.npy`` path, a folder of images with ``preprocess=``, or a Dataset) and the same
    # call becomes accuracy-aware: a quarter of the samples is held out, the analysed
    # module is calibrated on the rest, each group's importance is scaled by the output
    # error measured when it alone is pruned, the conv reading the input is protected,
    # pruned layers are re-fitted by least squares (kept only if the held-out samples agree
    # with the dense model at least as often), and the report says how close the pruned
    # model stays to the dense one. Three plans meet the budget: the knapsack's, the uniform
    # allocation and the uniform ratio (what ``ratio=`` keeps at that cost); the one whose
    # output is closest to the dense model's on the held-out samples is kept
    # (``rep.plan.config["allocation_start"]``, every score in ``["allocation_scores"]``).
    # A budget past what the model can lose shows there too:
    # when the held-out outputs no longer depend on the input (one class for every digit, or
    # an output the same for every sample), ``prune`` warns (``hc.CollapsedModelWarning``; the
    # summary, the Markdown report and ``rep.agreement["collapsed"]`` say why) and a larger
    # budget is needed. Before warning, a plan that collapsed with the first conv protected
    # is made again with it prunable (where the alignment lets it narrow), and kept when its
    # output still depends on the input (the summary then says so). Here: 0.5x MACs,
    # without and with 256 training digits (48 quick)
    # (CLI: ``hcprune prune model.onnx --macs-budget 0.5x --calibration digits.npz``).
    n_cal, n_test = (48, 200) if quick else (256, 1000)
    test = mnist_test(n_test)
    dense = hc.evaluate(mod, test, progress=False)
    blind, _ = hc.prune(mod, budget=hc.MACs(fraction=0.5), graph=graph)
    t0 = time.perf_counter()
    aware, rep = hc.prune(mod, budget=hc.MACs(fraction=0.5), graph=graph,
                          calibration=mnist_train(n_cal))
    agree = next(ln for ln in rep.summary().splitlines() if ln.startswith("agreement"))
    print(f"with data ({time.perf_counter() - t0:.0f} s): {agree}")
    print(rep.reconstruction.summary().splitlines()[0])
    start, scores = rep.plan.config["allocation_start"], rep.plan.config.get(
        "allocation_scores", {})  # no scores: the three plans were one
    print(f"kept the {start} plan; held-out errors: "
          + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))
    assert not scores or scores[start] <= min(scores.values()) + 1e-9
    top1 = {name: hc.evaluate(m, test, progress=False).top1
            for name, m in (("without data", blind), ("with data", aware))}
    print(f"top-1 on {n_test} held-out digits: dense {dense.top1:.3f}, "
          + ", ".join(f"{k} {v:.3f}" for k, v in top1.items()))
    assert rep.agreement is not None and rep.allocation == "sensitivity"
    assert rep.agreement["collapsed"] is None and rep.collapse_warning() is None
    assert top1["with data"] >= top1["without data"]
    md = out_dir / "report.md"
    md.write_text(rep.to_markdown())
    print(f"report written to {md} (its 'Agreement with the dense model' section)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
