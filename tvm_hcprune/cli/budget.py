"""``--latency-budget 0.5x|4ms`` and ``--macs-budget 0.5x``: the budget flags ``hcprune
compile`` and ``hcprune prune`` share, with ``--rpc-tracker HOST:PORT --rpc-key KEY`` (tvmc's
names) to measure the latency table on an RPC device, and ``--cross-compiler`` /
``--cross-compiler-options`` (tvmc's) to link what is uploaded to a device of another ISA."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tvm_hcprune.api import prune
from tvm_hcprune.errors import HCPruneError
from tvm_hcprune.latency import LatencyTable, MeasuredLatency, RooflineModel, latency_table
from tvm_hcprune.latency.layers import layer_specs
from tvm_hcprune.planning.budget import Latency, MACs
from tvm_hcprune.recovery.data import ImagePreprocess, calibration_data
from tvm_hcprune.tuning.rpc import RPCRunner, cross_compiler
from tvm_hcprune.utils import atomic_write_bytes, atomic_write_text

_FRACTION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*x\s*$")
_MS = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*ms\s*$")


def add_budget_arguments(parser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--latency-budget", default=None, metavar="0.5x|4ms",
                       help="prune to this latency on the target: a fraction of the dense "
                            "model's (0.5x) or milliseconds (4ms), from kernels measured on "
                            "this machine (cached)")
    group.add_argument("--macs-budget", default=None, metavar="0.5x",
                       help="prune to this fraction of the dense model's MACs")
    parser.add_argument("--prune-first-conv", action="store_true",
                        help="let a budget prune the conv that reads the model input (budgets "
                             "keep its width by default; --prune-ratio prunes it)")
    parser.add_argument("--allow-sparse", action="store_true",
                        help="with --latency-budget: a mixed budget, where each matmul and "
                             "1x1 conv may also go block-sparse (50/70/90%% of its weight "
                             "blocks zeroed, run on the BSR kernel) when that loses less "
                             "importance per ms saved than narrowing channels; the report "
                             "says which layer got which")
    parser.add_argument("--latency-model", choices=("measured", "roofline"),
                        default="measured",
                        help="where --latency-budget's latency comes from: kernels measured "
                             "here or on --rpc-key's device (default; llvm targets; the plan "
                             "is then corrected by timing the pruned model) or the roofline "
                             "estimate of the target's hardware profile (no measurement)")
    parser.add_argument("--rpc-tracker", default=None, metavar="HOST:PORT",
                        help="RPC tracker: measure on a device of it (the --latency-budget "
                             "table and its correction; for `tune`, the trials)")
    parser.add_argument("--rpc-key", default=None, metavar="KEY",
                        help="device key of the RPC tracker's servers")
    parser.add_argument("--cross-compiler", default=None, metavar="CC",
                        help="compiler that links the libraries for the device (uploaded to "
                             "--rpc-key's servers; `compile`: the -o library), e.g. "
                             "aarch64-linux-gnu-g++; give the device's --target too (e.g. "
                             "'{\"kind\": \"llvm\", \"mtriple\": \"aarch64-linux-gnu\"}'). "
                             "Default: the host's compiler")
    parser.add_argument("--cross-compiler-options", default=None, metavar="OPTS",
                        help="extra options of --cross-compiler, e.g. "
                             "'--sysroot=/opt/aarch64-sysroot'")
    parser.add_argument("--latency-table", default=None, metavar="TABLE.json",
                        help="a latency table saved by LatencyTable.save (for this model and "
                             "target) instead of measuring")


def add_calibration_arguments(parser) -> None:
    """``--calibration PATH`` and the preprocessing flags of image folders."""
    g = parser.add_argument_group(
        "calibration data", "With --calibration the widths are chosen by measured sensitivity, "
        "pruned layers are re-fitted by least squares (kept only if a held-out check agrees), "
        "and the report shows the agreement with the dense model on held-out samples.")
    g.add_argument("--calibration", default=None, metavar="PATH",
                   help="real model inputs: a .npz (the array under the input's name, "
                        "optional 'labels'), a .npy [N, *input_shape], or a folder of images "
                        "(see --mean/--std/--size/--resize/--channels/--layout)")
    g.add_argument("--calibration-limit", type=int, default=None, metavar="N",
                   help="use at most the first N samples")
    g.add_argument("--mean", default=None, metavar="M[,M,M]",
                   help="image folders: per-channel mean after scaling pixels to [0, 1] "
                        "(default 0; ImageNet: 0.485,0.456,0.406)")
    g.add_argument("--std", default=None, metavar="S[,S,S]",
                   help="image folders: per-channel std (default 1; ImageNet: "
                        "0.229,0.224,0.225)")
    g.add_argument("--size", default=None, metavar="HxW",
                   help="image folders: input height x width (default: the model input's)")
    g.add_argument("--resize", choices=("stretch", "crop", "pad"), default="stretch",
                   help="image folders: stretch to the size; crop: short side to size/0.875 "
                        "then centre crop; pad: height to size, keep aspect, pad right")
    g.add_argument("--channels", choices=("rgb", "bgr", "gray"), default=None,
                   help="image folders: channel order (default: gray for 1 channel, rgb)")
    g.add_argument("--layout", choices=("NCHW", "NHWC"), default=None,
                   help="image folders: input layout (default: guessed from the input shape)")
    g.add_argument("--no-reconstruct", action="store_true",
                   help="with --calibration: do not re-fit the pruned layers")
    g.add_argument("--allocation", choices=("auto", "sensitivity", "criterion"),
                   default="auto",
                   help="how per-group widths are chosen (auto: sensitivity with "
                        "--calibration, else the criterion's scores)")


def _floats(text, flag):
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise HCPruneError(f"{flag} {text!r}: write one number or three separated by "
                           "commas") from None


def image_preprocess_arg(args) -> ImagePreprocess:
    """The :class:`ImagePreprocess` of the image-folder flags."""
    opts = {"resize": args.resize, "channels": args.channels, "layout": args.layout}
    if args.mean:
        opts["mean"] = _floats(args.mean, "--mean")
    if args.std:
        opts["std"] = _floats(args.std, "--std")
    if args.size:
        m = re.match(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$", args.size)
        if not m:
            raise HCPruneError(f"--size {args.size!r}: write HEIGHTxWIDTH, e.g. 224x224")
        opts["size"] = (int(m.group(1)), int(m.group(2)))
    return ImagePreprocess.of(None, **opts)


NO_DATA_WARNING = (
    "warning: pruning without calibration data: the pruned model's outputs may change a lot "
    "(correlation with the dense outputs as low as 0.02 was measured on detection and OCR "
    "models). Pass real inputs with --calibration PATH (.npz/.npy arrays or a folder of "
    "images with --mean/--std/--resize): widths are then chosen by measured sensitivity, "
    "layers re-fitted, and the agreement with the dense model reported.")


def calibration_kwargs(args, mod, log) -> dict:
    """``prune`` keyword arguments of the calibration flags for ``mod`` (the data is read and
    checked here, before anything slow); logs the no-data warning."""
    if args.calibration_limit is not None and args.calibration_limit < 1:
        raise HCPruneError("--calibration-limit N needs N >= 1")
    if args.calibration is None:
        if args.allocation == "sensitivity":
            raise HCPruneError("--allocation sensitivity needs --calibration PATH")
        log(NO_DATA_WARNING)
        return {"allocation": args.allocation}
    data = calibration_data(args.calibration, mod, image_preprocess_arg(args),
                            args.calibration_limit)
    log(f"calibration: {len(data)} samples from {data.source}")
    return {"calibration": data, "allocation": args.allocation,
            "reconstruct": not args.no_reconstruct}


def sparse_arg(args, budget) -> dict:
    """``{"sparse": True}`` for ``--allow-sparse`` (with a latency budget), else ``{}``."""
    if not getattr(args, "allow_sparse", False):
        return {}
    if not isinstance(budget, Latency):
        raise HCPruneError("--allow-sparse mixes channel pruning and block sparsity under a "
                           "latency budget: add --latency-budget (e.g. 0.5x)")
    return {"sparse": True}


def latency_model_arg(args, target):
    """The ``latency_model=`` of ``prune`` for ``--latency-model``, ``--latency-table`` and
    the RPC flags (None: measure here, the default)."""
    tracker, key = rpc_args(args)
    table = getattr(args, "latency_table", None)
    if table is not None:
        if getattr(args, "latency_model", "measured") == "roofline" or tracker:
            raise HCPruneError("give --latency-table, --latency-model roofline or "
                               "--rpc-tracker, not two of them")
        return LatencyTable.load(table)
    if getattr(args, "latency_model", "measured") == "roofline":
        if tracker:
            raise HCPruneError("--rpc-tracker measures latency: drop it or use "
                               "--latency-model measured")
        return RooflineModel(target)
    if tracker:
        cc, opts = cross_compiler_args(args)
        return MeasuredLatency(runner=RPCRunner(tracker, key, cc=cc, cc_options=opts))
    return None


def cross_compiler_args(args) -> tuple:
    """``(cc, options)`` of ``--cross-compiler`` / ``--cross-compiler-options`` (None when
    not given)."""
    return getattr(args, "cross_compiler", None), getattr(args, "cross_compiler_options", None)


def export_compiler(args):
    """The ``fcompile`` of the cross-compiler flags (None: the host's compiler); a compiler
    that is not found raises :class:`HCPruneError` naming ``--cross-compiler``."""
    return cross_compiler(*cross_compiler_args(args))


def rpc_args(args) -> tuple:
    """``(tracker, key)`` of the RPC flags (both None when not given); both or neither."""
    tracker, key = getattr(args, "rpc_tracker", None), getattr(args, "rpc_key", None)
    if bool(tracker) != bool(key):
        raise HCPruneError("--rpc-tracker and --rpc-key go together")
    return tracker or None, key or None


def add_report_argument(parser) -> None:
    parser.add_argument("--report", default=None, metavar="OUT.md",
                        help="write the pruning report as Markdown here, and as JSON beside "
                             "it (same name, .json)")


def write_report(path, report) -> list[str]:
    """Write ``report`` as Markdown to ``path`` and as JSON beside it; returns the paths."""
    md = Path(path)
    js = md.with_suffix(".json")
    if js == md:
        raise HCPruneError(f"--report {path}: give a Markdown path (e.g. report.md)")
    atomic_write_text(md, report.to_markdown())
    atomic_write_text(js, json.dumps(report.to_dict(), indent=1, default=str))
    return [str(md), str(js)]


def parse_budget(latency: str | None, macs: str | None):
    """The budget record of the flags (None when neither is given).

    Examples
    --------
    >>> parse_budget("4ms", None)
    Latency(fraction=None, ms=4.0)
    >>> parse_budget(None, "0.5x")
    MACs(fraction=0.5)
    """
    if latency is not None:
        m, t = _FRACTION.match(latency), _MS.match(latency)
        if m:
            return Latency(fraction=float(m.group(1)))
        if t:
            return Latency(ms=float(t.group(1)))
        raise HCPruneError(f"--latency-budget {latency!r}: write a fraction of the dense "
                           "latency (0.5x) or milliseconds (4ms)")
    if macs is not None:
        m = _FRACTION.match(macs)
        if not m:
            raise HCPruneError(f"--macs-budget {macs!r}: write a fraction of the dense MACs "
                               "(0.5x)")
        return MACs(fraction=float(m.group(1)))
    return None


PLOT_FRACTIONS = (0.9, 0.7, 0.5, 0.3)


def add_plot_argument(parser) -> None:
    parser.add_argument("--plot", default=None, metavar="PREFIX",
                        help="write PREFIX.pareto.png (predicted latency against agreement "
                             "with the dense model over several budgets; needs "
                             "--calibration) and PREFIX.staircase.png (latency against "
                             "output width of the heaviest layers)")


def plot_paths(prefix) -> tuple[Path, Path]:
    """``(PREFIX.pareto.png, PREFIX.staircase.png)``."""
    p = Path(prefix)
    base = p.with_suffix("") if p.suffix == ".png" else p
    return (base.parent / f"{base.name}.pareto.png", base.parent / f"{base.name}.staircase.png")


def write_figures(prefix, figures: dict) -> list[str]:
    """Write the PNG bytes of :func:`plot_figures` (``"pareto"``, ``"staircase"``) to
    :func:`plot_paths` of ``prefix``, atomically; returns the paths written."""
    written = []
    for key, path in zip(("pareto", "staircase"), plot_paths(prefix), strict=True):
        if key in figures:
            atomic_write_bytes(path, figures[key])
            written.append(str(path))
    return written


def _png(fig) -> bytes:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def plot_latency_model(args, graph, report, target):
    """The latency model the plots use: the run's (``--latency-table``, roofline), the
    measured table of a latency budget (cached by the run), else the roofline estimate."""
    model = latency_model_arg(args, target)
    if model is None and isinstance(report.budget, Latency):
        model = latency_table(graph, target, align=report.align, progress=False)
    return model if model is not None else RooflineModel(target)


def plot_figures(mod, graph, report, prune_kwargs: dict, latency_model, target,
                 fractions=PLOT_FRACTIONS, log=print) -> dict:
    """PNG bytes per path name (``"pareto"``, ``"staircase"``): nothing is written here, so
    a failure leaves no file behind.

    The Pareto sweep prunes ``mod`` again at ``fractions`` of the run's budget kind (MACs
    for a ratio) with the same options and data, and plots each plan's predicted latency
    (``latency_model``) against its agreement with the dense model on the held-out samples
    (correlation, and top-1 agreement for classifiers); the run itself is the star. The
    staircase plots the latency model's milliseconds of the five heaviest layers against
    their output width (input dense).
    """
    import matplotlib  # deferred: matplotlib is slow to import and only --plot draws

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model = latency_model if latency_model is not None else RooflineModel(target)
    dense_ms = model.predict(graph)
    out = {}
    if report.agreement is not None:
        kind = type(report.budget) if report.budget is not None else MACs
        points = []
        for f in fractions:
            try:
                _, rep = prune(mod, budget=kind(fraction=f), graph=graph, **prune_kwargs)
            except HCPruneError as err:
                log(f"--plot: {kind.__name__}(fraction={f}) skipped: {err}")
                continue
            points.append((model.predict(graph, rep.plan) / dense_ms, rep.agreement))
        fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
        for key, style, label in (("correlation", "o-", "output correlation"),
                                  ("top1_agreement", "s--", "top-1 agreement")):
            pts = sorted((x, a[key]) for x, a in points if key in a)
            if pts:
                ax.plot(*zip(*pts, strict=True), style, label=label)
            if key in report.agreement:
                ax.plot([model.predict(graph, report.plan) / dense_ms],
                        [report.agreement[key]], "*", ms=14, color="k")
        ax.set_xlabel(f"latency, predicted by the {model.source} (fraction of dense)")
        ax.set_ylabel(f"agreement with dense ({report.agreement['n']} held-out samples)")
        ax.set_title("pruned models over budgets (star: this run)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        out["pareto"] = _png(fig)
        plt.close(fig)
    else:
        log("--plot: no Pareto plot without --calibration (agreement is measured on "
            "held-out calibration samples); writing the staircase only")
    specs = sorted(layer_specs(graph), key=lambda s: -model.layer_ms(s, s.in_full,
                                                                      s.out_full))[:5]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for s in specs:
        step = max(1, report.align)
        widths = sorted(set(range(step, s.out_full, step)) | {s.out_full})
        ax.step(widths, [model.layer_ms(s, s.in_full, w) * 1e3 for w in widths], where="post",
                label=f"{s.name} ({s.op.replace('relax.', '')}, in {s.in_full})")
    ax.set_xlabel("output channels")
    ax.set_ylabel(f"latency (us, {model.source})")
    ax.set_title("heaviest layers: latency against width")
    ax.legend(fontsize=7)
    fig.tight_layout()
    out["staircase"] = _png(fig)
    plt.close(fig)
    return out
