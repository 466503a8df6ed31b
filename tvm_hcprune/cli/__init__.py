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

from tvm_hcprune.errors import HCPruneError, HCPruneWarning


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


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():  # the commands print the report's own warning lines
            warnings.simplefilter("ignore", HCPruneWarning)
            status = args.func(args)
    except HCPruneError as err:
        print(f"hcprune {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(status or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
