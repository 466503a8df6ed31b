"""``--latency-budget 0.5x|4ms`` and ``--macs-budget 0.5x``: the budget flags ``hcprune
compile`` and ``hcprune prune`` share."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tvm_hcprune.errors import HCPruneError
from tvm_hcprune.latency import LatencyTable, RooflineModel
from tvm_hcprune.planning.budget import Latency, MACs
from tvm_hcprune.recovery.data import ImagePreprocess, calibration_data
from tvm_hcprune.utils import atomic_write_text

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
    parser.add_argument("--latency-model", choices=("measured", "roofline"),
                        default="measured",
                        help="where --latency-budget's latency comes from: kernels measured "
                             "here (default; llvm targets) or the roofline estimate of the "
                             "target's hardware profile (no measurement)")
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


def latency_model_arg(args, target):
    """The ``latency_model=`` of ``prune`` for ``--latency-model`` / ``--latency-table``
    (None: measure)."""
    table = getattr(args, "latency_table", None)
    if table is not None:
        if getattr(args, "latency_model", "measured") == "roofline":
            raise HCPruneError("give --latency-table or --latency-model roofline, not both")
        return LatencyTable.load(table)
    if getattr(args, "latency_model", "measured") == "roofline":
        return RooflineModel(target)
    return None


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
