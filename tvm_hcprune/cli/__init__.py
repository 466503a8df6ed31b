"""The ``hcprune`` command.

Each subcommand lives in its own module of this package and defines
``register(subparsers)``, which adds its parser and sets ``func`` (called with the parsed
arguments, returns the exit status). Modules are discovered automatically.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import warnings

from tvm_hcprune.errors import CollapsedModelWarning, HCPruneError, HCPruneWarning


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hcprune",
        description="Hardware co-pruning for Apache TVM: prune, compile, tune and run models.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(sub)
    return parser


def print_warnings(caught: list, command: str, file=None) -> None:
    """Print the :class:`~tvm_hcprune.errors.HCPruneWarning` s a command raised as
    ``hcprune COMMAND: warning: ...`` lines on stderr, each once; a collapsed model's warning
    is left to the report lines the commands print; other warnings are printed as Python
    formats them."""
    seen, file = set(), file or sys.stderr
    for w in caught:
        msg = str(w.message)
        if not issubclass(w.category, HCPruneWarning):
            print(warnings.formatwarning(w.message, w.category, w.filename, w.lineno),
                  end="", file=file)
        elif not issubclass(w.category, CollapsedModelWarning) and msg not in seen:
            seen.add(msg)
            print(f"hcprune {command}: warning: {msg}", file=file)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    caught: list = []
    try:
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", HCPruneWarning)
                status = args.func(args)
        finally:  # after the block: it restored how Python shows warnings
            print_warnings(caught, args.command)
    except HCPruneError as err:
        print(f"hcprune {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(status or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
