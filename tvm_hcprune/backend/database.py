"""Tuned schedule databases: one JSON file per database, validated on load, applied by target.

A database file holds MetaSchedule workloads and tuning records together with the target
they were tuned for::

    {"format": "tvm_hcprune.schedule_database", "version": 1,
     "target": {...}, "family": "x86-avx2", "tvm": "0.27.0.post1", "meta": {...},
     "workloads": [<Workload.as_json()>, ...],
     "records": [[<workload index>, <TuningRecord.as_json()>], ...]}

:func:`load_database` checks the format and the target (a database tuned for another target
raises :class:`~tvm_hcprune.errors.HCPruneError`), :func:`apply_database` replaces the fused
PrimFuncs that have a record with their tuned schedule (the rest fall back to the schedule
rules), and :func:`shipped_database` finds the databases shipped in the top-level
``schedules/`` folder for a target, like TVM's old TopHub logs (loaded once per process;
:func:`tvm_hcprune.build` applies them by default, ``database=False`` opts out).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import sys
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import tvm
import tvm.s_tir
from tvm import relax
from tvm.s_tir import meta_schedule as ms

from tvm_hcprune import _resources
from tvm_hcprune._version import __version__
from tvm_hcprune.backend.cpu.bsr import expand_bsr_knobs
from tvm_hcprune.errors import HCPruneError
from tvm_hcprune.hardware import profile_for
from tvm_hcprune.hardware.target import parse_target
from tvm_hcprune.utils import atomic_write_text

FORMAT = "tvm_hcprune.schedule_database"
VERSION = 1
#: function attribute MetaScheduleApplyDatabase sets on the PrimFuncs it scheduled
SCHEDULED_ATTR = "tirx.is_scheduled"
#: module attribute set by :func:`tvm_hcprune.backend.pipeline.prepare`
PREPARED_ATTR = "hcprune.schedule_prepared"

# target attributes that must agree between a database and the target it is applied to
_MATCH_KEYS = {"llvm": ("mcpu", "mtriple"), "cuda": ("arch",)}


# ---------------------------------------------------------------------------------------
# target helpers


def resolve_target(target):
    """Turn ``target`` (Target, dict, JSON, tag or tvmc string) into a ``tvm.target.Target``."""
    return parse_target(target)


def target_dict(target) -> dict:
    """The JSON-able dict of a target (host included)."""
    if not isinstance(target, tvm.target.Target):
        target = resolve_target(target)
    return json.loads(str(target))


def target_family(target) -> str:
    """Name of the shipped-database folder for ``target`` (the hardware profile's name).

    Examples: ``"x86-avx2"`` for an AVX2 CPU, ``"cuda-sm_80"`` for an A100.
    """
    return profile_for(target).name


def _describe(d: dict) -> str:
    parts = [d.get("kind", "?")]
    for key in ("mcpu", "arch", "mtriple"):
        if d.get(key):
            parts.append(f"-{key}={d[key]}")
    return " ".join(parts)


def check_target_compatible(db_target: dict, target, source: str = "the database") -> None:
    """Raise HCPruneError unless records tuned for ``db_target`` fit ``target``.

    The target kinds must agree, and so must ``mcpu``/``mtriple`` (llvm) or ``arch`` (cuda)
    when both sides name them.
    """
    want = target_dict(target)
    kind = want.get("kind")
    if db_target.get("kind") != kind:
        raise HCPruneError(
            f"{source} was tuned for target '{_describe(db_target)}', not '{_describe(want)}'; "
            "re-tune for this target with `hcprune tune` or pass the database's target"
        )
    for key in _MATCH_KEYS.get(kind, ()):
        have, need = db_target.get(key), want.get(key)
        if have and need and str(have) != str(need):
            raise HCPruneError(
                f"{source} was tuned for target '{_describe(db_target)}' but the target is "
                f"'{_describe(want)}' ({key} differs); re-tune with `hcprune tune --target ...` "
                "for this target"
            )


# ---------------------------------------------------------------------------------------
# tensor intrinsics: import only what the target needs


_INTRIN_MODULES = {"llvm": ("x86",), "cuda": ("cuda",), "rocm": ("rocm",), "metal": ("metal",)}


def ensure_tensor_intrinsics(target) -> None:
    """Register the tensor intrinsics ``target`` can use, without the 30 s full import.

    MetaSchedule's ``TuneContext`` runs ``import tvm.s_tir.tensor_intrin``, which loads the
    intrinsics of every backend (about 30 s here, 19 s of it CUDA's). When that package is not
    imported yet, this installs it as a bare package (the same folder, without running its
    ``__init__``) and imports only the target's submodule (x86: 0.4 s). Later imports of any
    ``tvm.s_tir.tensor_intrin.<backend>`` still work.
    """
    kind = target_dict(target).get("kind")
    mtriple = str(target_dict(target).get("mtriple", ""))
    names = _INTRIN_MODULES.get(kind)
    if kind == "llvm" and (mtriple.startswith("aarch64") or mtriple.startswith("arm")):
        names = ("arm_cpu",)
    pkg_name = "tvm.s_tir.tensor_intrin"
    if names is None:
        __import__(pkg_name)
        return
    if pkg_name not in sys.modules:
        pkg = types.ModuleType(pkg_name)
        pkg.__path__ = [os.path.join(os.path.dirname(tvm.s_tir.__file__), "tensor_intrin")]
        pkg.__package__ = pkg_name
        pkg.__doc__ = "Tensor intrinsics, loaded per backend by tvm_hcprune."
        sys.modules[pkg_name] = pkg
        tvm.s_tir.tensor_intrin = pkg

    for name in names:
        importlib.import_module(f"{pkg_name}.{name}")


# ---------------------------------------------------------------------------------------
# the database object


@dataclass
class ScheduleDatabase:
    """A MetaSchedule database together with the target it was tuned for.

    Parameters
    ----------
    ms_database : tvm.s_tir.meta_schedule.database.Database
        The records (usually a ``MemoryDatabase``).
    target : dict
        The target the records were tuned for (``json.loads(str(Target))``).
    meta : dict
        Free-form provenance (model, trials, CPU, date).
    source : str
        Where it came from (a path, ``"tuning"``, ``"shipped"``), for messages.

    Examples
    --------
    >>> db = tvm_hcprune.load_database("db.json", "llvm")  # doctest: +SKIP
    >>> len(db), db.best_latencies()  # doctest: +SKIP
    """

    ms_database: object
    target: dict
    meta: dict = field(default_factory=dict)
    source: str = "the database"
    #: (record count, answer) of :meth:`uses_tensorize`, recomputed when records are added
    _tensorize: tuple | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.ms_database.get_all_tuning_records())

    def records(self) -> list:
        """All tuning records."""
        return list(self.ms_database.get_all_tuning_records())

    def uses_tensorize(self) -> bool:
        """Whether any record's trace tensorizes (its intrinsics must be registered to
        replay it); remembered until records are added."""
        records = self.records()
        if self._tensorize is not None and self._tensorize[0] == len(records):
            return self._tensorize[1]
        answer = False
        for rec in records:
            try:
                text = json.dumps(_to_plain(rec.trace.as_json()))
            except (TypeError, ValueError):
                answer = True
                break
            if "ensorize" in text:
                answer = True
                break
        self._tensorize = (len(records), answer)
        return answer

    def best_latencies(self) -> dict[str, float]:
        """Best measured latency (seconds) per workload, keyed by the workload's hash."""
        best: dict[str, float] = {}
        for rec in self.records():
            secs = _mean_secs(rec)
            if secs is None:
                continue
            key = str(rec.workload.as_json()[0])
            best[key] = min(best.get(key, float("inf")), secs)
        return best

    def to_json(self, top_k: int | None = None) -> dict:
        """The file content (dict); ``top_k`` keeps only that many best records per workload."""
        workloads: list = []
        index: dict[str, int] = {}
        per_wl: dict[int, list] = {}
        skipped = 0
        for rec in self.records():
            if not serializable(rec):
                skipped += 1
                continue
            wl_json = rec.workload.as_json()
            key = json.dumps(wl_json)
            if key not in index:
                index[key] = len(workloads)
                workloads.append(wl_json)
            per_wl.setdefault(index[key], []).append(rec)
        records = []
        for i, recs in per_wl.items():
            recs = sorted(recs, key=lambda r: _mean_secs(r) or float("inf"))
            if top_k is not None:
                recs = recs[:top_k]
            records.extend([i, _to_plain(r.as_json())] for r in recs)
        return {
            "format": FORMAT,
            "version": VERSION,
            "target": self.target,
            "family": self.meta.get("family", ""),
            "tvm": tvm.__version__,
            "tvm_hcprune": __version__,
            "meta": {**self.meta, **({"unserializable_skipped": skipped} if skipped else {})},
            "workloads": [_to_plain(w) for w in workloads],
            "records": records,
        }

    def save(self, path, top_k: int | None = None) -> Path:
        """Write the database to ``path`` atomically (JSON)."""
        text = json.dumps(self.to_json(top_k=top_k), separators=(",", ":"))
        atomic_write_text(path, text)
        return Path(path)


def serializable(record) -> bool:
    """Whether a tuning record can be written as JSON (traces holding e.g. an ``IndexMap``,
    as dlight's GPU rules produce, cannot)."""
    try:
        record.as_json()
    except (TypeError, ValueError):
        return False
    return True


def _to_plain(obj):
    """Convert the TVM containers ``as_json`` returns into JSON-able Python values."""
    if obj is None or isinstance(obj, bool | int | float):
        return obj
    if isinstance(obj, str):
        return str(obj)
    if isinstance(obj, Mapping):
        return {str(k): _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, Sequence):
        return [_to_plain(v) for v in obj]
    if hasattr(obj, "value"):
        return obj.value
    raise TypeError(f"cannot store {type(obj).__name__} in a schedule database")


def _mean_secs(rec) -> float | None:
    secs = rec.run_secs
    if secs is None or len(secs) == 0:
        return None
    vals = [float(s) for s in secs]
    mean = sum(vals) / len(vals)
    return mean if mean < 1e9 else None


def new_database(target, meta: dict | None = None, source: str = "tuning") -> ScheduleDatabase:
    """An empty in-memory database for ``target``."""
    return ScheduleDatabase(ms.database.MemoryDatabase(), target_dict(target), meta or {}, source)


def database_from_ms(ms_database, target, meta: dict | None = None) -> ScheduleDatabase:
    """Wrap a MetaSchedule database (e.g. the one ``tune_tasks`` returns)."""
    out = new_database(target, meta)
    for rec in ms_database.get_all_tuning_records():
        wl = out.ms_database.commit_workload(rec.workload.mod)
        out.ms_database.commit_tuning_record(_rebind(rec, wl))
    return out


def _rebind(rec, workload):
    return ms.database.TuningRecord(
        rec.trace, workload, rec.run_secs, rec.target, rec.args_info
    )


def _corrupt(path, why: str) -> HCPruneError:
    return HCPruneError(
        f"{path} is not a valid tvm_hcprune schedule database ({why}); regenerate it with "
        "`hcprune tune MODEL --target T -o FILE.json`"
    )


def _parse_file(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise HCPruneError(f"tuning records file {path} does not exist") from err
    except (OSError, UnicodeDecodeError) as err:
        raise HCPruneError(f"cannot read tuning records file {path}: {err}") from err
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise _corrupt(path, f"not JSON: {err}") from err
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise _corrupt(path, f"missing the format marker {FORMAT!r}")
    if data.get("version") != VERSION:
        raise _corrupt(path, f"version {data.get('version')!r}, expected {VERSION}")
    for key, typ in (("target", dict), ("workloads", list), ("records", list)):
        if not isinstance(data.get(key), typ):
            raise _corrupt(path, f"field {key!r} missing or not a {typ.__name__}")
    return data


def _load_ms_workdir(path: Path, target) -> ScheduleDatabase:
    """Load a MetaSchedule ``JSONDatabase`` work dir (two JSON-lines files)."""
    wl_file = path / "database_workload.json"
    rec_file = path / "database_tuning_record.json"
    if not (wl_file.is_file() and rec_file.is_file()):
        raise HCPruneError(
            f"{path} is a folder without database_workload.json and "
            "database_tuning_record.json; pass a tvm_hcprune database file (.json)"
        )
    try:
        db = ms.database.JSONDatabase(str(wl_file), str(rec_file), allow_missing=False)
        records = db.get_all_tuning_records()
    except Exception as err:  # noqa: BLE001 - TVM raises its own error types
        raise _corrupt(path, f"MetaSchedule could not read it: {err}") from err
    if not records:
        raise _corrupt(path, "it holds no tuning records")
    db_target = target_dict(records[0].target)
    if target is not None:
        check_target_compatible(db_target, target, source=str(path))
    out = database_from_ms(db, db_target, {"source_format": "meta_schedule work_dir"})
    out.source = str(path)
    return out


def load_database(path, target=None) -> ScheduleDatabase:
    """Load and validate a database file (or a MetaSchedule JSONDatabase folder).

    Parameters
    ----------
    path : str or PathLike
        A file written by :func:`tvm_hcprune.tune` / ``hcprune tune``, or a MetaSchedule
        work dir holding ``database_workload.json`` and ``database_tuning_record.json``.
    target : optional
        When given, the database must have been tuned for a compatible target
        (:func:`check_target_compatible`).

    Raises
    ------
    HCPruneError
        Missing or unreadable file, corrupt content, or a database for another target.

    Examples
    --------
    >>> db = tvm_hcprune.load_database("db.json", "llvm")  # doctest: +SKIP
    >>> ex = tvm_hcprune.build(mod, "llvm", database=db)  # doctest: +SKIP
    """
    path = Path(path)
    if target is not None:
        target = resolve_target(target)
    if path.is_dir():
        return _load_ms_workdir(path, target)
    data = _parse_file(path)
    if target is not None:
        check_target_compatible(data["target"], target, source=str(path))
    db = ScheduleDatabase(ms.database.MemoryDatabase(), data["target"], data.get("meta") or {},
                          str(path))
    db.meta.setdefault("family", data.get("family", ""))
    workloads = []
    try:
        for wl_json in data["workloads"]:
            wl = ms.database.Workload.from_json(wl_json)
            workloads.append(db.ms_database.commit_workload(wl.mod))
        for entry in data["records"]:
            index, rec_json = entry
            rec = ms.database.TuningRecord.from_json(rec_json, workloads[int(index)])
            db.ms_database.commit_tuning_record(rec)
    except HCPruneError:
        raise
    except Exception as err:  # noqa: BLE001 - TVM's parsers raise assorted errors
        raise _corrupt(path, f"a workload or record does not parse: {err}") from err
    return db


#: ``database=`` values that mean "no database" (the schedule rules only)
NO_DATABASE = (False, "none")


def as_database(database, target) -> ScheduleDatabase | None:
    """Normalise ``database`` into a validated :class:`ScheduleDatabase` for ``target``.

    ``database`` is a path, a :class:`ScheduleDatabase`, a MetaSchedule Database,
    ``"shipped"`` (or ``"auto"``: the shipped databases of the target's family, None when
    there are none), or None / False / ``"none"`` (no database: returns None).
    """
    if database is None or (isinstance(database, bool | str) and database in NO_DATABASE):
        return None
    if database is True:
        raise HCPruneError("database=True is ambiguous; pass \"shipped\", a path, or False")
    if isinstance(database, str) and database in ("shipped", "auto"):
        return shipped_database(target)
    if isinstance(database, ScheduleDatabase):
        check_target_compatible(database.target, target, source=database.source)
        return database
    if isinstance(database, ms.database.Database):
        records = database.get_all_tuning_records()
        db_target = target_dict(records[0].target) if records else target_dict(target)
        check_target_compatible(db_target, target, source="the MetaSchedule database")
        return database_from_ms(database, db_target)
    if isinstance(database, str | os.PathLike):
        return load_database(database, target)
    raise HCPruneError(
        f"database must be a path, a ScheduleDatabase or a MetaSchedule Database, "
        f"not {type(database).__name__}"
    )


# ---------------------------------------------------------------------------------------
# shipped databases (top-level schedules/ folder)


def shipped_database_files(target) -> list[Path]:
    """The shipped database files for ``target``'s family (``schedules/<family>/*.json``)."""
    try:
        root = _resources.data_dir("schedules")  # looked up here: tests point it elsewhere
    except FileNotFoundError:
        return []
    folder = root / target_family(target)
    return sorted(folder.glob("*.json")) if folder.is_dir() else []


# (family, kind, ((file, size, mtime), ...)) -> merged database or None; one per process
_SHIPPED_CACHE: dict = {}


def clear_shipped_cache() -> None:
    """Forget the shipped databases loaded so far (they are read once per process)."""
    _SHIPPED_CACHE.clear()


def shipped_database(target) -> ScheduleDatabase | None:
    """All shipped records for ``target``'s family merged into one database (None if none).

    Shipped files are tuned on one CPU of a family; they are applied to any target of the
    same family (kind and ISA), so only the kind is checked here. A record is used only
    for a function structurally equal to its workload (MetaSchedule's lookup), so records
    of other models are simply not used.

    The merged database is loaded once per process and reused (keyed by the family and the
    files' sizes and modification times), so :func:`tvm_hcprune.build`, which applies it by
    default, does not re-read the files on every build.
    """
    target = resolve_target(target)
    files = shipped_database_files(target)
    if not files:
        return None
    want = target_dict(target)
    want_kind = want.get("kind")
    key = (target_family(target), want_kind,
           tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files))
    if key not in _SHIPPED_CACHE:
        merged = ScheduleDatabase(ms.database.MemoryDatabase(), want,
                                  {"files": [f.name for f in files]}, "shipped")
        for path in files:
            db = load_database(path)
            if db.target.get("kind") != want_kind:
                continue
            for rec in db.records():
                wl = merged.ms_database.commit_workload(rec.workload.mod)
                merged.ms_database.commit_tuning_record(_rebind(rec, wl))
        _SHIPPED_CACHE[key] = merged if len(merged) else None
    cached = _SHIPPED_CACHE[key]
    if cached is None:
        return None
    # the same records, labelled with the caller's target (for compatibility checks)
    cached.uses_tensorize()  # computed once, copied below
    return dataclasses.replace(cached, target=want, meta=dict(cached.meta))


# ---------------------------------------------------------------------------------------
# preparing a module and applying a database


def is_prepared(mod) -> bool:
    """True when ``mod`` came out of :func:`tvm_hcprune.backend.pipeline.prepare`."""
    attrs = mod.attrs
    return bool(attrs is not None and attrs.get(PREPARED_ATTR, False))


def apply_database_to_fused(mod, database, target):
    """The pipeline's database hook: apply ``database`` to the fused PrimFuncs of ``mod``.

    Called by :func:`tvm_hcprune.backend.pipeline.get_pipeline` after FuseOps/FuseTIR, on
    the functions :func:`tvm_hcprune.backend.pipeline.prepare` returns (the ones
    :func:`tvm_hcprune.tune` saw). ``database`` is anything :func:`as_database` accepts.
    BSR kernels with a record are regenerated with its knobs
    (:func:`~tvm_hcprune.backend.cpu.bsr.expand_bsr_knobs`).
    """
    target = resolve_target(target)
    db = as_database(database, target)
    if db is None or len(db) == 0:
        return mod
    if db.uses_tensorize():
        ensure_tensor_intrinsics(target)
    with target, db.ms_database:
        mod = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(mod)
    # a BSR kernel's record annotates knobs: regenerate the kernel with them
    return expand_bsr_knobs(mod)


def scheduled_functions(mod) -> list[str]:
    """Names of the PrimFuncs in ``mod`` marked as scheduled (by a database or a rule)."""
    names = []
    for gv, func in mod.functions.items():
        if isinstance(func, tvm.tirx.PrimFunc) and func.attrs is not None:
            if func.attrs.get(SCHEDULED_ATTR, False):
                names.append(gv.name_hint)
    return sorted(names)
