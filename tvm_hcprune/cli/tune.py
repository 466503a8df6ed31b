"""``hcprune tune``: tune an ONNX model's schedules with MetaSchedule (tvmc tune).

    hcprune tune model.onnx --target "llvm -mcpu=znver3" --trials 256 -o db.json \\
        [--rpc-tracker 127.0.0.1:9190 --rpc-key mydevice [--cross-compiler CC]]
        [--prune-ratio 0.5 | --preset P]

The model is imported and pruned exactly as ``hcprune compile`` does with the same options,
and the tasks are the functions that preset's build compiles (its steps up to the database
hook), so ``hcprune compile ... --tuning-records db.json`` with the same ``--preset`` finds
every tuned workload. With ``--cross-compiler`` each candidate is linked here for the RPC
device (give the device's ``--target``). The database
is written atomically, only when tuning succeeded.
"""

from __future__ import annotations

from pathlib import Path

from tvm_hcprune.cli.budget import cross_compiler_args
from tvm_hcprune.cli.compile import (
    add_model_arguments,
    load_model,
    log_stderr,
    resolve_model_options,
)
from tvm_hcprune.errors import HCPruneError
from tvm_hcprune.tuning.rpc import check_key
from tvm_hcprune.tuning.tune import summary_lines, tune


def register(subparsers) -> None:
    """Add ``hcprune tune``."""
    p = subparsers.add_parser(
        "tune", help="tune schedules with MetaSchedule (tvmc tune)",
        description="Tune the fused functions of an ONNX model (optionally pruned) for a "
                    "target, locally or on RPC devices, and write a schedule database.",
    )
    add_model_arguments(p)
    p.add_argument("-o", "--output", required=True, help="database file to write (.json)")
    p.add_argument("--trials", type=int, required=True,
                   help="total measurement trials over all tasks")
    p.add_argument("--trials-per-task", type=int, default=None,
                   help="cap per task (default: --trials)")
    p.add_argument("--work-dir", default=None, help="keep MetaSchedule's logs here")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds one measurement may take (RPC session bound)")
    p.add_argument("--no-seed", action="store_true",
                   help="do not start the search from the schedule rules' schedules")
    p.add_argument("--no-model-check", action="store_true",
                   help="keep the per-task records without timing the whole model against "
                        "the rules-only build")
    p.set_defaults(func=run)


def run(args) -> int:
    """Run ``hcprune tune``."""
    if args.trials <= 0:
        raise HCPruneError(f"--trials must be a positive integer, got {args.trials}")
    if args.trials_per_task is not None and args.trials_per_task <= 0:
        raise HCPruneError(f"--trials-per-task must be positive, got {args.trials_per_task}")
    out = Path(args.output)
    if out.suffix != ".json":
        raise HCPruneError(f"--output {out} must be a .json file")
    if bool(args.rpc_tracker) != bool(args.rpc_key):
        raise HCPruneError("--rpc-tracker and --rpc-key go together")
    cc, cc_options = cross_compiler_args(args)
    if cc and not args.rpc_tracker:
        raise HCPruneError("--cross-compiler links the trials for an RPC device: add "
                           "--rpc-tracker and --rpc-key (a local tune needs none)")
    target, preset, ratio = resolve_model_options(args)
    if args.rpc_tracker:
        check_key(args.rpc_tracker, args.rpc_key)  # fail fast, before the import
    mod = load_model(args, target, preset, ratio, log=log_stderr)
    db, stats = tune(
        mod, target, trials=args.trials, trials_per_task=args.trials_per_task,
        work_dir=args.work_dir, rpc_tracker=args.rpc_tracker, rpc_key=args.rpc_key,
        session_timeout=args.timeout, seed_rules=not args.no_seed, output=out,
        meta={"model": Path(args.model).name, "prune_ratio": ratio,
              "preset": args.preset}, return_stats=True,
        model_check=not args.no_model_check, preset=preset, cross_compiler=cc,
        cross_compiler_options=cc_options,
    )
    for line in summary_lines(stats, db):
        log_stderr(line)
    log_stderr(f"{len(db)} records -> {out}")
    return 0
