"""Pass-list presets per target family, stored as TOML files in ``passes/``.

A preset names the pruning criterion, the channel alignment, the pass order and where the
schedules come from (``cpu-rules``, ``dlight``, ``vta``, a tuned ``database``). Load one with
``load_preset("llvm-avx2")`` (the CLI's ``--preset``).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field

from tvm_hcprune._resources import data_dir
from tvm_hcprune.errors import HCPruneError

_SCHEDULE_SOURCES = {"database", "cpu-rules", "dlight", "vta", "default"}


@dataclass(frozen=True)
class Preset:
    """One pass-list preset.

    Parameters
    ----------
    name : str
        The preset's name (its file stem).
    description : str
        One line for ``--help`` listings.
    target : dict
        TVM target dict (pass it to :func:`tvm_hcprune.hardware.target.parse_target`).
    criterion : str
        Pruning criterion name (``"l1"``, ``"l2"``, ...).
    align : int
        Channel multiple the pruner keeps.
    schedule : tuple of str
        Schedule sources in the order they are tried.
    passes : tuple of str
        Pass order of the pipeline.
    """

    name: str
    description: str
    target: dict = field(hash=False)
    criterion: str
    align: int
    schedule: tuple[str, ...]
    passes: tuple[str, ...]


def list_presets() -> list[str]:
    """Names of the presets shipped in ``passes/``."""
    return sorted(p.stem for p in data_dir("passes").glob("*.toml"))


def load_preset(name: str) -> Preset:
    """Load preset ``name`` (e.g. ``"llvm-avx2"``, ``"cuda"``, ``"vta"``).

    Raises
    ------
    HCPruneError
        If no such preset exists (the message lists the known ones) or the file is invalid.
    """
    known = list_presets()
    if name not in known:
        raise HCPruneError(f"unknown preset {name!r}; known presets: {', '.join(known)}")
    path = data_dir("passes") / f"{name}.toml"
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise HCPruneError(f"preset file {path} is not valid TOML: {err}") from err
    missing = {"target", "criterion", "align", "schedule", "passes"} - set(raw)
    if missing:
        raise HCPruneError(f"preset file {path} lacks keys {sorted(missing)}")
    align = raw["align"]
    if not isinstance(align, int) or align < 1:
        raise HCPruneError(f"preset {name!r}: align must be a positive integer, got {align!r}")
    schedule = tuple(raw["schedule"])
    bad = set(schedule) - _SCHEDULE_SOURCES
    if bad:
        raise HCPruneError(
            f"preset {name!r}: unknown schedule sources {sorted(bad)}; "
            f"use {sorted(_SCHEDULE_SOURCES)}"
        )
    return Preset(
        name=raw.get("name", name),
        description=raw.get("description", ""),
        target=dict(raw["target"]),
        criterion=str(raw["criterion"]),
        align=align,
        schedule=schedule,
        passes=tuple(raw["passes"]),
    )
