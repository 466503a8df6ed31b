"""``--latency-budget 0.5x|4ms`` and ``--macs-budget 0.5x``: the budget flags ``hcprune
compile`` and ``hcprune prune`` share, with ``--rpc-tracker HOST:PORT --rpc-key KEY`` (tvmc's
names) to measure the latency table on an RPC device."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tvm_hcprune.errors import HCPruneError
from tvm_hcprune.latency import MeasuredLatency, RooflineModel
from tvm_hcprune.planning.budget import Latency, MACs
from tvm_hcprune.tuning.rpc import RPCRunner
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
                             "here or on --rpc-key's device (default; llvm targets; the plan "
                             "is then corrected by timing the pruned model) or the roofline "
                             "estimate of the target's hardware profile (no measurement)")
    parser.add_argument("--rpc-tracker", default=None, metavar="HOST:PORT",
                        help="RPC tracker: measure on a device of it (the --latency-budget "
                             "table and its correction; for `tune`, the trials)")
    parser.add_argument("--rpc-key", default=None, metavar="KEY",
                        help="device key of the RPC tracker's servers")


def latency_model_arg(args, target):
    """The ``latency_model=`` of ``prune`` for ``--latency-model`` and the RPC flags (None:
    measure here, the default)."""
    tracker, key = rpc_args(args)
    if getattr(args, "latency_model", "measured") == "roofline":
        if tracker:
            raise HCPruneError("--rpc-tracker measures latency: drop it or use "
                               "--latency-model measured")
        return RooflineModel(target)
    if tracker:
        return MeasuredLatency(runner=RPCRunner(tracker, key))
    return None


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
