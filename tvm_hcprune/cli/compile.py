"""``hcprune compile``: ONNX model -> deployable library, the way ``tvmc compile`` did it.

    hcprune compile model.onnx --target "llvm -mcpu=znver3" -o model.so \\
        [--prune-ratio 0.5 | --preset llvm-avx2] [--tuning-records db.json] \\
        [--input-shapes "input:[1,3,224,224]"]

Flag names follow tvmc (``--target``, ``--output``/``-o``, ``--tuning-records``,
``--input-shapes``). Without ``--tuning-records`` the databases shipped for the target's
family (``schedules/``) are used where workloads match. Every input is checked before the
slow work starts, and the library is written atomically: on error nothing is left behind.

This module also holds the helpers ``hcprune tune`` and ``hcprune run`` share.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
import time
from pathlib import Path

from tvm_hcprune.analysis import analyze
from tvm_hcprune.api import prune
from tvm_hcprune.backend.database import load_database
from tvm_hcprune.backend.pipeline import build, host_compiled
from tvm_hcprune.cli.budget import (
    add_budget_arguments,
    add_calibration_arguments,
    add_plot_argument,
    add_report_argument,
    calibration_kwargs,
    export_compiler,
    latency_model_arg,
    parse_budget,
    plot_figures,
    plot_latency_model,
    rpc_args,
    sparse_arg,
    write_figures,
    write_report,
)
from tvm_hcprune.errors import HCPruneError
from tvm_hcprune.frontend.load import load_onnx
from tvm_hcprune.frontend.pytorch import load_torch
from tvm_hcprune.hardware.presets import load_preset
from tvm_hcprune.hardware.target import parse_target
from tvm_hcprune.planning.budget import Latency
from tvm_hcprune.utils import atomic_write

_SHAPE_ITEM = re.compile(r"\s*([^:\s][^:]*?)\s*:\s*(\[[^\]]*\])\s*")


# ---------------------------------------------------------------------------------------
# shared helpers


def parse_input_shapes(text: str | None) -> dict[str, list[int]] | None:
    """Parse tvmc's ``--input-shapes``: ``"x:[1,3,224,224] y:[1,10]"`` (spaces, ``,`` or
    ``;`` separate the inputs); every ``hcprune`` command uses this one syntax.

    Examples
    --------
    >>> parse_input_shapes("a:[1,2];b:[3]")
    {'a': [1, 2], 'b': [3]}
    """
    if not text:
        return None
    out: dict[str, list[int]] = {}
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _SHAPE_ITEM.match(text, pos)
        if m is None:
            raise HCPruneError(
                f"--input-shapes: cannot parse {text[pos:]!r}; write NAME:[d0,d1,...] with "
                "positive integers, e.g. \"input:[1,3,224,224]\" (several separated by spaces)"
            )
        name, dims = m.group(1), m.group(2)
        try:
            shape = ast.literal_eval(dims)
        except (ValueError, SyntaxError) as err:
            raise HCPruneError(f"--input-shapes: cannot parse {name}:{dims}; the dimensions "
                               "must be positive integers") from err
        if not all(isinstance(d, int) and d > 0 for d in shape):
            raise HCPruneError(f"--input-shapes: cannot parse {name}:{dims}; the dimensions "
                               "must be positive integers")
        out[name] = list(shape)
        pos = m.end()
        if pos < len(text) and text[pos] in ",;":
            pos += 1
    return out


def add_target_argument(parser: argparse.ArgumentParser, default: str = "host llvm") -> None:
    """``--target`` (tvmc's flag), shared by ``compile``, ``tune`` and ``prune``;
    :func:`resolve_target` parses it."""
    parser.add_argument("--target", default=None,
                        help='TVM target: "llvm", "llvm -mcpu=znver3", "cuda -arch=sm_80", '
                             f"a JSON dict or a tag (default: {default})")


def resolve_target(args, preset=None):
    """The parsed ``--target`` (else the preset's target, else the host's llvm); raises
    :class:`~tvm_hcprune.errors.HCPruneError` naming the problem for a bad one."""
    spec = args.target if args.target else (preset.target if preset else "llvm")
    return parse_target(spec)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments that turn an ONNX file into the (pruned) module to compile or tune."""
    parser.add_argument("model", help="ONNX model file, or a .pt2 program written by "
                                      "torch.export.save (needs the torch extra)")
    add_target_argument(parser, "the preset's, else host llvm")
    parser.add_argument("--input-shapes", default=None,
                        help='static input shapes, e.g. "input:[1,3,224,224]"')
    parser.add_argument("--prune-ratio", type=float, default=None,
                        help="fraction of channels to remove (0 <= R < 1); off by default")
    parser.add_argument("--preset", default=None,
                        help="pass-list preset: a name from passes/ (llvm-avx2, llvm-avx512, "
                             "llvm-neon, cuda, vta) or the path of your own .toml; its "
                             "target, criterion, alignment and pass list drive the build; "
                             "prunes (ratio 0.5 unless --prune-ratio or a budget). Default: "
                             "the target family's preset, without pruning")

    add_budget_arguments(parser)
    add_calibration_arguments(parser)


def resolve_model_options(args):
    """Check the model options cheaply; return ``(target, preset, ratio)`` (``ratio`` may be
    a budget record when ``--latency-budget`` / ``--macs-budget`` is given)."""
    preset = load_preset(args.preset) if args.preset else None
    ratio = args.prune_ratio
    budget = parse_budget(getattr(args, "latency_budget", None),
                          getattr(args, "macs_budget", None))
    if budget is not None and ratio is not None:
        raise HCPruneError("give either --prune-ratio or a budget, not both")
    if rpc_args(args)[0] and args.command != "tune" and not isinstance(budget, Latency):
        raise HCPruneError("--rpc-tracker/--rpc-key measure the --latency-budget table on a "
                           "device: add --latency-budget (run the library remotely with "
                           "`hcprune run --rpc-tracker ... --rpc-key ...`)")
    if ratio is not None and not 0.0 <= ratio < 1.0:
        raise HCPruneError(f"--prune-ratio must be in [0, 1), got {ratio}")
    sparse_arg(args, budget)  # --allow-sparse without a latency budget fails here
    export_compiler(args)  # a cross compiler that is not found fails before the slow work
    if preset is not None and ratio is None:
        ratio = 0.5
    target = resolve_target(args, preset)
    path = Path(args.model)
    if not path.is_file():
        raise HCPruneError(f"model file {path} does not exist")
    return target, preset, budget if budget is not None else ratio


def load_model(args, target, preset, ratio, log=print, reports: list | None = None,
               context: dict | None = None):
    """Import the ONNX model (or ``.pt2`` program) and prune it when asked; returns the
    Relax module (the PruneReport is appended to ``reports`` when given; ``context`` gets
    the dense module and the prune options, for ``--plot``)."""
    if Path(args.model).suffix == ".pt2":
        if args.input_shapes:
            raise HCPruneError("--input-shapes does not apply to a .pt2 program: the example "
                               "inputs it was exported with fixed its shapes")
        mod = load_torch(args.model)
    else:
        mod = load_onnx(args.model, parse_input_shapes(args.input_shapes), log=log)
    if ratio:
        kwargs = {"target": target, "progress": True}
        if isinstance(ratio, float | int):
            kwargs["ratio"] = ratio
        else:
            kwargs.update(budget=ratio, latency_model=latency_model_arg(args, target))
            if getattr(args, "prune_first_conv", False):
                kwargs["prune_first_conv"] = True
        kwargs.update(sparse_arg(args, None if isinstance(ratio, float | int) else ratio))
        if preset is not None:
            kwargs.update(criterion=preset.criterion, align=preset.align)
        if hasattr(args, "calibration"):
            kwargs.update(calibration_kwargs(args, mod, log))
        if context is not None:
            context.update(dense=mod, kwargs=kwargs)
        mod, report = prune(mod, **kwargs)
        if reports is not None:
            reports.append(report)
        if report.agreement is not None:
            a = report.agreement
            log(f"agreement with the dense model on {a['n']} held-out samples: correlation "
                f"{a['correlation']:.4f}, max |err| {a['max_abs_error']:.3g}")
            if warning := report.collapse_warning():
                log(f"WARNING: {warning}")
        log(f"pruned: MACs {report.macs_before / 1e6:.1f}M -> {report.macs_after / 1e6:.1f}M, "
            f"params {report.params_before / 1e6:.2f}M -> {report.params_after / 1e6:.2f}M")
    return mod


def log_stderr(*parts):
    """Progress and notes go to stderr (stdout stays for results)."""
    print(*parts, file=sys.stderr)


# ---------------------------------------------------------------------------------------
# the command


def register(subparsers) -> None:
    """Add ``hcprune compile``."""
    p = subparsers.add_parser(
        "compile", help="compile an ONNX model into a library (tvmc compile)",
        description="Import, optionally prune, and compile an ONNX model for a target; "
                    "writes a library that `hcprune run` (or relax.VirtualMachine) loads.",
    )
    add_model_arguments(p)
    p.add_argument("-o", "--output", required=True, help="output library (.so or .tar)")
    p.add_argument("--tuning-records", default=None,
                   help="schedule database from `hcprune tune` (JSON) or a MetaSchedule "
                        "work dir; default: the shipped databases for the target")
    p.add_argument("--no-shipped-schedules", action="store_true",
                   help="do not use the databases shipped in schedules/")

    add_report_argument(p)
    add_plot_argument(p)
    p.set_defaults(func=run)


def run(args) -> int:
    """Run ``hcprune compile``."""
    target, preset, ratio = resolve_model_options(args)
    out = Path(args.output)
    if out.suffix not in (".so", ".tar", ".dylib"):
        raise HCPruneError(f"--output {out} must end in .so or .tar (export_library format)")
    fcompile = export_compiler(args)
    if fcompile is not None and out.suffix == ".tar":
        raise HCPruneError(f"--output {out}: a .tar is linked on the device, with its own "
                           "compiler; drop --cross-compiler or write a .so")
    if args.tuning_records:
        database = load_database(args.tuning_records, target)
    elif args.no_shipped_schedules:
        database = False  # the rules only (None would mean: the shipped databases)
    else:
        database = "shipped"
    if preset is not None and host_compiled(preset):
        raise HCPruneError(
            f"--preset {args.preset}: this preset offloads layers to the VTA simulator, which "
            "runs inside Python and makes no deployable library. Build it in Python: "
            "ex = tvm_hcprune.build(mod, preset='vta', calibration=samples); "
            "relax.VirtualMachine(ex, tvm.cpu()) runs it (see tutorials/ and tests/vta/)")
    t0 = time.perf_counter()
    if args.report and not ratio:
        raise HCPruneError("--report describes a pruning run: add --prune-ratio or a budget")
    if args.plot and not ratio:
        raise HCPruneError("--plot describes a pruning run: add --prune-ratio or a budget")
    reports, context = [], {}
    mod = load_model(args, target, preset, ratio, log=log_stderr, reports=reports,
                     context=context)
    figures = {}
    if args.plot:
        graph = analyze(context["dense"])
        sweep = {k: v for k, v in context["kwargs"].items() if k not in ("budget", "ratio")}
        figures = plot_figures(context["dense"], graph, reports[0], sweep,
                               plot_latency_model(args, graph, reports[0], target), target,
                               log=log_stderr)

    ex = build(mod, target, database=database, preset=preset)
    with atomic_write(out) as tmp:
        ex.export_library(str(tmp), fcompile=fcompile)
    log_stderr(f"compiled for {target} in {time.perf_counter() - t0:.1f} s -> {out}")
    if args.report:
        log_stderr(f"wrote {', '.join(write_report(args.report, reports[0]))}")
    for path in write_figures(args.plot, figures) if figures else []:
        log_stderr(f"wrote {path}")
    return 0
