"""Searched VTA schedules, per layer shape, stored like the CPU databases.

:func:`tvm_hcprune.vta.search.search_conv2d` / ``search_dense`` time candidate tilings on
the simulator's cycle estimate; :class:`VTAScheduleDB` keeps the winners in a JSON file per
VTA configuration (``schedules/vta/<bitstream>.vtadb``, JSON, shipped; not
``.json`` so the CPU's MetaSchedule database loader never reads it) and
:func:`tuned_conv2d_schedule` / :func:`tuned_dense_schedule` look a layer up: the VTA ops
(:mod:`tvm_hcprune.vta.ops`, so :func:`tvm_hcprune.vta.relax.build_vta`) use a record when
one matches the layer's shape and configuration, else the default tiling.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from tvm_hcprune._resources import data_dir
from tvm_hcprune.errors import HCPruneError
from tvm_hcprune.hardware.vta import VTAConfig
from tvm_hcprune.utils.io import atomic_write_text
from tvm_hcprune.vta.codegen import Conv2DSchedule, Conv2DShape, DenseSchedule

__all__ = ["VTAScheduleDB", "conv2d_key", "dense_key", "shipped_path", "tuned_conv2d_schedule",
           "tuned_dense_schedule", "use_database"]

VERSION = 1


def conv2d_key(shape: Conv2DShape) -> str:
    """The workload key of a packed conv2d (its shape in blocks)."""
    s = shape
    return (f"conv2d:n{s.n}:ci{s.cib}:h{s.h}:w{s.w}:co{s.cob}:k{s.kh}x{s.kw}:"
            f"s{s.stride[0]}x{s.stride[1]}:p{s.pad[0]}x{s.pad[1]}")


def dense_key(m: int, kb: int, nb: int) -> str:
    """The workload key of a packed dense layer (batch blocks, input / output blocks)."""
    return f"dense:m{m}:k{kb}:n{nb}"


class VTAScheduleDB:
    """Searched schedules of one VTA configuration: ``{key: record}``.

    A record is ``{"kind", "schedule": {...}, "cycles", "default_cycles", "tried"}``.

    Examples
    --------
    >>> db = VTAScheduleDB(cfg.bitstream)  # doctest: +SKIP
    >>> db.put(conv2d_key(shape), "conv2d", sched, 1200, 1500, 12)  # doctest: +SKIP
    >>> db.save(shipped_path(cfg))  # doctest: +SKIP
    """

    def __init__(self, bitstream: str, records: dict | None = None):
        self.bitstream = str(bitstream)
        self.records: dict = dict(records or {})

    def put(self, key: str, kind: str, schedule, cycles: int, default_cycles: int,
            tried: int) -> None:
        self.records[key] = {"kind": kind, "schedule": dataclasses.asdict(schedule),
                             "cycles": int(cycles), "default_cycles": int(default_cycles),
                             "tried": int(tried)}

    def get(self, key: str):
        """The schedule object of ``key``, or None."""
        rec = self.records.get(key)
        if rec is None:
            return None
        cls = Conv2DSchedule if rec["kind"] == "conv2d" else DenseSchedule
        return cls(**rec["schedule"])

    def to_json(self) -> str:
        return json.dumps({"version": VERSION, "bitstream": self.bitstream,
                           "records": dict(sorted(self.records.items()))}, indent=1)

    def save(self, path) -> None:
        atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls, path) -> VTAScheduleDB:
        try:
            d = json.loads(Path(path).read_text())
            if d.get("version") != VERSION:
                raise ValueError(f"version {d.get('version')!r}, expected {VERSION}")
            return cls(d["bitstream"], d["records"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise HCPruneError(f"cannot read the VTA schedule database {path}: {err}; "
                               "re-run the search (tvm_hcprune.vta.search)") from None


def shipped_path(cfg: VTAConfig) -> Path:
    """``schedules/vta/<bitstream>.vtadb`` (may not exist)."""
    try:
        return data_dir("schedules") / "vta" / f"{cfg.bitstream}.vtadb"
    except FileNotFoundError:
        return Path("schedules") / "vta" / f"{cfg.bitstream}.vtadb"


_ACTIVE: dict = {}


def use_database(db: VTAScheduleDB | None, cfg: VTAConfig) -> None:
    """Use ``db`` for ``cfg``'s layers from now on (None: back to the shipped file)."""
    if db is None:
        _ACTIVE.pop(cfg.bitstream, None)
    else:
        _ACTIVE[cfg.bitstream] = db


def _database(cfg: VTAConfig) -> VTAScheduleDB | None:
    if cfg.bitstream not in _ACTIVE:
        path = shipped_path(cfg)
        _ACTIVE[cfg.bitstream] = VTAScheduleDB.load(path) if path.is_file() else None
    return _ACTIVE[cfg.bitstream]


def tuned_conv2d_schedule(shape: Conv2DShape, cfg: VTAConfig) -> Conv2DSchedule | None:
    """The searched schedule of this conv2d, or None (use the default)."""
    db = _database(cfg)
    return None if db is None else db.get(conv2d_key(shape))


def tuned_dense_schedule(m: int, kb: int, nb: int, cfg: VTAConfig) -> DenseSchedule | None:
    """The searched schedule of this dense layer, or None (use the default)."""
    db = _database(cfg)
    return None if db is None else db.get(dense_key(m, kb, nb))
