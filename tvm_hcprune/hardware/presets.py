"""Pass-list presets per target family (TOML files in ``passes/``) and the registry of the
pass names they list.

A preset names the pruning criterion, the channel alignment, the pass order and where the
schedules come from (``cpu-rules``, ``dlight``, ``vta``, ``default``, and a tuned
``database`` applied first). ``load_preset("llvm-avx2")`` loads a shipped one,
``load_preset("my.toml")`` a user's own file; :func:`preset_for` is the preset of a target's
family (what :func:`tvm_hcprune.build` uses when none is named).

Every name in a preset's ``passes`` is a *preset pass*: a factory registered under that
name with :func:`register_preset_pass`, called with the build's :class:`PresetContext`
and returning the TVM passes of that step. The built-in steps are registered by the modules
that implement them (``tvm_hcprune.backend.steps``, ``tvm_hcprune.recovery.reconstruct``,
``tvm_hcprune.vta.relax``); this module names those modules and imports one when one of its
names is first looked up, so the registry sits below the layers it serves.
"""

from __future__ import annotations

import importlib
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from tvm_hcprune._resources import data_dir
from tvm_hcprune.errors import HCPruneError
from tvm_hcprune.hardware.detect import profile_for

_SCHEDULE_SOURCES = ("cpu-rules", "database", "default", "dlight", "vta")
_KEYS = ("name", "description", "target", "criterion", "align", "schedule", "passes")
_REQUIRED = ("target", "criterion", "align", "schedule", "passes")

# built-in preset passes -> the module that registers them when imported
_BUILTIN_PASSES = {
    "FoldConstant": "tvm_hcprune.backend.steps",
    "FoldBatchNorm": "tvm_hcprune.backend.steps",
    "PruneChannels": "tvm_hcprune.backend.steps",
    "CPURules": "tvm_hcprune.backend.steps",
    "DLight": "tvm_hcprune.backend.steps",
    "TVMDefault": "tvm_hcprune.backend.steps",
    "Reconstruct": "tvm_hcprune.recovery.reconstruct",
    "VTAQuantize": "tvm_hcprune.vta.steps",
}


@dataclass(frozen=True)
class Preset:
    """One pass-list preset.

    Parameters
    ----------
    name : str
        The preset's name (its file stem unless the file sets ``name``).
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
        The pipeline's steps, in order: names of registered preset passes.
    path : str
        The TOML file it was loaded from.

    Examples
    --------
    >>> from tvm_hcprune.hardware.presets import load_preset
    >>> load_preset("llvm-avx2").passes[-1]
    'CPURules'
    """

    name: str
    description: str
    target: dict = field(hash=False)
    criterion: str
    align: int
    schedule: tuple[str, ...]
    passes: tuple[str, ...]
    path: str = ""


@dataclass
class PresetContext:
    """What a preset pass's factory is built from (one per build).

    Attributes
    ----------
    target : tvm.target.Target
        The target compiled for.
    preset : Preset
    database : optional
        Resolved schedule database (None: none).
    rules, strict, blocked_layout, sparse : bool
        :func:`tvm_hcprune.build`'s options of the CPU kernels.
    prune : optional
        What ``PruneChannels`` removes: None (nothing: the step passes the module through),
        a ratio, a ``PruneConfig``/dict, a budget record (``Latency``, ``MACs``, ``Params``)
        or a ``PrunePlan``.
    calibration : optional
        Calibration inputs or a ``Calibration`` (``Reconstruct``, ``VTAQuantize``).
    options : dict
        Further per-step options (``latency_model``, ``reconstruct_options``, ...).

    Examples
    --------
    >>> ctx = PresetContext(target=None, preset=None)  # doctest: +SKIP
    """

    target: object
    preset: Preset | None
    database: object = None
    rules: bool = True
    strict: bool = False
    blocked_layout: bool = True
    sparse: bool = True
    prune: object = None
    calibration: object = None
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class PresetPass:
    """A registered preset pass: ``factory(ctx) -> list of tvm.transform.Pass``.

    Attributes
    ----------
    name : str
    factory : callable
    schedule : str or None
        The schedule source the step implements; a preset listing the step must list this
        source in its ``schedule`` (None: any preset may list it).
    host_compiled : bool
        The step leaves a module that is compiled for the host CPU (VTA offload).

    Examples
    --------
    >>> get_preset_pass("CPURules").schedule  # doctest: +SKIP
    'cpu-rules'
    """

    name: str
    factory: Callable
    schedule: str | None = None
    host_compiled: bool = False


_PASSES: dict[str, PresetPass] = {}


def register_preset_pass(name: str, schedule: str | None = None, host_compiled: bool = False,
                         override: bool = False) -> Callable:
    """Register ``factory(ctx: PresetContext) -> list[Pass]`` as preset pass ``name``.

    Parameters
    ----------
    name : str
        The name presets list in ``passes``.
    schedule : str, optional
        The schedule source (one of ``cpu-rules``, ``database``, ``default``, ``dlight``,
        ``vta``) a preset listing this step must declare.
    host_compiled : bool
        The module the step leaves is compiled for the host CPU, whatever the target.
    override : bool
        Replace an existing registration.

    Examples
    --------
    >>> @register_preset_pass("MyCleanup")  # doctest: +SKIP
    ... def _cleanup(ctx):
    ...     return [tvm.relax.transform.DeadCodeElimination()]
    """
    if schedule is not None and schedule not in _SCHEDULE_SOURCES:
        raise HCPruneError(f"preset pass {name!r}: schedule source {schedule!r} is not one of "
                           f"{', '.join(_SCHEDULE_SOURCES)}")

    def wrap(factory):
        if name in _PASSES and not override:
            raise ValueError(f"preset pass {name!r} is already registered")
        _PASSES[name] = PresetPass(name, factory, schedule, host_compiled)
        return factory

    return wrap


def list_preset_passes() -> list[str]:
    """Names a preset's ``passes`` may list (built-in and registered), sorted.

    Examples
    --------
    >>> "CPURules" in list_preset_passes()
    True
    """
    return sorted(set(_BUILTIN_PASSES) | set(_PASSES))


def get_preset_pass(name: str) -> PresetPass:
    """The preset pass registered as ``name`` (imports a built-in's module on first use).

    Raises
    ------
    HCPruneError
        No pass of that name; the message lists the known names.

    Examples
    --------
    >>> get_preset_pass("CPURules").name  # doctest: +SKIP
    'CPURules'
    """
    if name not in _PASSES and name in _BUILTIN_PASSES:
        importlib.import_module(_BUILTIN_PASSES[name])
    try:
        return _PASSES[name]
    except KeyError:
        raise HCPruneError(f"unknown preset pass {name!r}; known passes: "
                           f"{', '.join(list_preset_passes())}") from None


def list_presets() -> list[str]:
    """Names of the presets shipped in ``passes/``.

    Examples
    --------
    >>> "llvm-avx2" in list_presets()
    True
    """
    return sorted(p.stem for p in data_dir("passes").glob("*.toml"))


def _schedule_of(name: str) -> str | None:
    """The schedule source of a pass name, without importing its module when built in."""
    if name in _PASSES:
        return _PASSES[name].schedule
    return _BUILTIN_SCHEDULE.get(name)


# the schedule source of each built-in (checked against the registrations in the tests)
_BUILTIN_SCHEDULE = {"CPURules": "cpu-rules", "DLight": "dlight", "TVMDefault": "default",
                     "VTAQuantize": "vta"}


def load_preset(name) -> Preset:
    """Load a preset: a shipped name (``"llvm-avx2"``, ``"cuda"``, ``"vta"``) or the path of
    a TOML file (anything ending in ``.toml`` or naming an existing file).

    Raises
    ------
    HCPruneError
        No such preset (the message lists the shipped ones), or an invalid file: the message
        names the file, the key and the allowed values.

    Examples
    --------
    >>> load_preset("llvm-avx512").align
    16
    """
    if isinstance(name, Preset):
        return name
    text = str(name)
    path = Path(text)
    if text.endswith(".toml") or path.is_file():
        if not path.is_file():
            raise HCPruneError(f"preset file {path} does not exist")
    else:
        known = list_presets()
        if text not in known:
            raise HCPruneError(f"unknown preset {text!r}; known presets: {', '.join(known)} "
                               "(or give the path of your own .toml file)")
        path = data_dir("passes") / f"{text}.toml"
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise HCPruneError(f"preset file {path} is not valid TOML: {err}") from err
    return _validate(raw, path)


def _validate(raw: dict, path: Path) -> Preset:
    def bad(key, got, allowed):
        return HCPruneError(f"preset file {path}: key {key!r} is {got!r}; allowed: {allowed}")

    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        raise HCPruneError(f"preset file {path} lacks the keys {missing} (a preset has "
                           f"{', '.join(_REQUIRED)}; name and description are optional)")
    unknown = sorted(set(raw) - set(_KEYS))
    if unknown:
        raise HCPruneError(f"preset file {path}: unknown keys {unknown}; allowed keys: "
                           f"{', '.join(_KEYS)}")
    target = raw["target"]
    if not isinstance(target, dict) or "kind" not in target:
        raise bad("target", target, 'a table with a "kind", e.g. { kind = "llvm" }')
    align = raw["align"]
    if isinstance(align, bool) or not isinstance(align, int) or align < 1:
        raise bad("align", align, "a positive integer (the channel multiple)")
    criterion = raw["criterion"]
    if not isinstance(criterion, str) or not criterion:
        raise bad("criterion", criterion, 'a criterion name, e.g. "l1" or "l2"')
    for key in ("schedule", "passes"):
        if not isinstance(raw[key], list) or not all(isinstance(s, str) for s in raw[key]):
            raise bad(key, raw[key], "a list of strings")
    schedule = tuple(raw["schedule"])
    for s in schedule:
        if s not in _SCHEDULE_SOURCES:
            raise bad("schedule", s, ", ".join(_SCHEDULE_SOURCES))
    passes = tuple(raw["passes"])
    if not passes:
        raise bad("passes", [], "a non-empty list of " + ", ".join(list_preset_passes()))
    known = list_preset_passes()
    for p in passes:
        if p not in known:
            raise bad("passes", p, ", ".join(known))
        need = _schedule_of(p)
        if need is not None and need not in schedule:
            raise HCPruneError(f"preset file {path}: pass {p!r} in key 'passes' schedules with "
                               f"{need!r}, which key 'schedule' {list(schedule)} does not list; "
                               f"add {need!r} to 'schedule'")
    for key in ("name", "description"):
        if key in raw and not isinstance(raw[key], str):
            raise bad(key, raw[key], "a string")
    return Preset(name=raw.get("name", path.stem), description=raw.get("description", ""),
                  target=dict(target), criterion=criterion, align=align, schedule=schedule,
                  passes=passes, path=str(path))


def preset_for(target) -> Preset:
    """The shipped preset of ``target``'s family: what :func:`tvm_hcprune.build` runs when
    no preset is named.

    The preset whose target has the same hardware profile; else one of the same kind and
    ISA (e.g. any CUDA arch: ``cuda``), else one of the same kind (``llvm``); a preset found
    that way takes the alignment of ``target``'s own profile.

    A target without a hardware profile (``rocm``, ``vulkan``, ``metal``...) gets
    :data:`GENERIC`: BatchNorm folded, then TVM's default pipeline for the target.

    Examples
    --------
    >>> preset_for({"kind": "llvm", "mcpu": "skylake-avx512"}).name
    'llvm-avx512'
    """
    try:
        want = profile_for(target)
    except HCPruneError:
        return GENERIC
    shipped = [load_preset(n) for n in list_presets()]
    profiles = [profile_for(p.target) for p in shipped]
    for p, prof in zip(shipped, profiles, strict=True):
        if prof.name == want.name:
            return p
    for same in (lambda q: (q.kind, q.isa) == (want.kind, want.isa),
                 lambda q: q.kind == want.kind):
        for p, prof in zip(shipped, profiles, strict=True):
            if same(prof):
                return replace(p, align=want.channel_multiple)
    return replace(GENERIC, align=want.channel_multiple)


#: the preset of targets no shipped preset covers: TVM's default pipeline after the folds
GENERIC = Preset(name="generic", description="TVM's default pipeline for the target",
                 target={"kind": "llvm"}, criterion="l2", align=1,
                 schedule=("database", "default"),
                 passes=("FoldConstant", "FoldBatchNorm", "PruneChannels", "Reconstruct",
                         "FoldConstant", "TVMDefault"), path="<built-in>")
