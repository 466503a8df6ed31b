"""Tuning benchmark: does MetaSchedule (seeded with the rules) beat the untuned rules, and does
the tuned pruned model keep its MAC advantage over the tuned dense one?

For each model: dense and pruned (``--ratio``, channels aligned to the target), each built
with the CPU rules only (``database=False``) and with the database tuned by
:func:`tvm_hcprune.tune` with ``--trials-per-task`` trials per task; onnxruntime on the dense
model as the reference. ``tune`` keeps a task's record only when it beats the rules'
schedule side by side and then keeps the records only when the whole model is faster than
the rules-only build (its decision is reported as ``<label>_kept``: ``"tuned"`` or
``"rules"``; with ``"rules"`` the tuned executable *is* the rules one). All latencies are
measured in this one run, the four builds interleaved over ``--rounds`` rounds (best of
``--repeat`` runs each, best round kept), and reported as ratios; ``--tasks`` adds the
per-task times measured while tuning (rules' seed, best record, kept or not)::

    .venv/bin/python benchmarks/tuning.py --models resnet18 mobilenet_v2 --image 112 \\
        --trials-per-task 8 --json out/tuning.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def make_model(name: str, image: int):
    from tvm_hcprune.testing import onnx_models as om

    if name == "resnet18":
        return om.resnet(18, image=image)
    if name == "mobilenet_v2":
        return om.mobilenet_v2(image=image)
    if name == "small_resnet":
        return om.small_resnet(image=image)
    raise SystemExit(f"unknown model {name!r}; use resnet18, mobilenet_v2 or small_resnet")


def vm_latency(ex, x, repeat: int, number: int = 10) -> float:
    """Best latency (seconds) of the VM's main over ``repeat`` timings of ``number``
    back-to-back runs each (the minimum is the estimate least disturbed by other jobs on a
    shared machine; single runs read the smaller model up to 10% slow here)."""
    import numpy as np
    import tvm
    from tvm import relax

    dev = tvm.cpu()
    vm = relax.VirtualMachine(ex, dev)
    arg = tvm.runtime.tensor(x, dev)
    vm["main"](arg)  # warm-up
    vm.set_input("main", arg)
    timer = vm.time_evaluator("invoke_stateful", dev, number=number, repeat=repeat,
                              min_repeat_ms=0)
    return float(np.min(timer("main").results))


def vm_output(ex, x):
    import tvm
    from tvm import relax

    return relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()


def ort_latency(model, x, repeat: int, threads: int) -> float:
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    feed = {"input": x}
    sess.run(None, feed)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t0)
    return float(np.min(times))


def _us(secs):
    return None if secs is None else round(secs * 1e6, 1)


def bench_model(name, args, target, threads):
    import numpy as np

    import tvm_hcprune as hc

    model = make_model(name, args.image)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.onnx"
        import onnx

        onnx.save(model, path)
        dense = hc.load_onnx(str(path), log=lambda *a: None)
    pruned, report = hc.prune(dense, ratio=args.ratio, target=target)
    x = np.random.default_rng(0).standard_normal(
        [1, 3, args.image, args.image]).astype("float32")
    row = {"model": name, "image": args.image, "ratio": args.ratio,
           "mac_ratio": report.macs_after / report.macs_before,
           "ort_ms": ort_latency(model, x, args.repeat, threads) * 1e3}
    exes = {}
    for label, mod in (("dense", dense), ("pruned", pruned)):
        rules_ex = hc.build(mod, target, database=False)
        t0 = time.perf_counter()
        db, stats = hc.tune(mod, target, trials=args.trials_per_task * 1000,
                            trials_per_task=args.trials_per_task, return_stats=True,
                            progress=not args.quiet)
        tune_s = time.perf_counter() - t0
        # an empty database (the rules won) builds the rules' module: reuse that executable
        tuned_ex = hc.build(mod, target, database=db) if len(db) else rules_ex
        err = float(np.abs(vm_output(tuned_ex, x) - vm_output(rules_ex, x)).max())
        exes[f"{label}_rules"] = rules_ex
        exes[f"{label}_tuned"] = tuned_ex
        row.update({
            f"{label}_tasks": len(stats.tasks),
            f"{label}_trials": stats.trials,
            f"{label}_valid": stats.valid,
            f"{label}_seeded_tasks": len(stats.seeds),
            # tasks whose record beat the rules' schedule re-measured side by side
            f"{label}_tasks_beating_rules": len(stats.kept),
            f"{label}_records": len(db),
            f"{label}_kept": stats.model.get("kept", "tuned"),
            f"{label}_model_check": stats.model,
            f"{label}_tune_s": round(tune_s, 1),
            f"{label}_max_abs_err_tuned_vs_rules": err,
        })
        if args.tasks:
            weights = dict(zip(stats.tasks, stats.weights, strict=False))
            row[f"{label}_task_us"] = {
                name: {"weight": weights[name],
                       "rules_us": _us(stats.seeds.get(name)),
                       "best_us": _us(stats.best.get(name)),
                       "kept": name in stats.kept}
                for name in stats.tasks
            }
    # the machine is shared: time the four builds interleaved, in rounds, keep the best
    best = {k: float("inf") for k in exes}
    for _ in range(args.rounds):
        for key, ex in exes.items():
            best[key] = min(best[key], vm_latency(ex, x, args.repeat))
    for label in ("dense", "pruned"):
        if exes[f"{label}_tuned"] is exes[f"{label}_rules"]:
            # one executable timed twice as often: its best time is the estimate for both
            both = min(best[f"{label}_tuned"], best[f"{label}_rules"])
            best[f"{label}_tuned"] = best[f"{label}_rules"] = both
    for key, secs in best.items():
        row[f"{key}_ms"] = secs * 1e3
    for label in ("dense", "pruned"):
        row[f"{label}_tuned_over_rules"] = best[f"{label}_tuned"] / best[f"{label}_rules"]
    row["pruned_over_dense_tuned"] = row["pruned_tuned_ms"] / row["dense_tuned_ms"]
    row["pruned_over_dense_rules"] = row["pruned_rules_ms"] / row["dense_rules_ms"]
    row["dense_tuned_over_ort"] = row["dense_tuned_ms"] / row["ort_ms"]
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "mobilenet_v2"])
    parser.add_argument("--image", type=int, default=112)
    parser.add_argument("--ratio", type=float, default=0.3,
                        help="channel prune ratio (0.3 keeps ~0.5x MACs)")
    parser.add_argument("--trials-per-task", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved timing rounds (best round kept)")
    parser.add_argument("--target", default="llvm")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--tasks", action="store_true",
                        help="add per-task times measured while tuning to the figures")
    parser.add_argument("--json", default=None, help="write the figures here")
    args = parser.parse_args(argv)

    import tvm_hcprune as hc
    from tvm_hcprune.hardware import host_physical_cores
    from tvm_hcprune.utils import atomic_write_text

    target = hc.parse_target(args.target)
    threads = host_physical_cores()
    rows = []
    for name in args.models:
        row = bench_model(name, args, target, threads)
        rows.append(row)
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v)
                          for k, v in row.items() if not k.endswith("_task_us")}), flush=True)
    result = {"target": str(target), "trials_per_task": args.trials_per_task,
              "image": args.image, "threads": threads, "load_average": os.getloadavg(),
              "rows": rows}
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
