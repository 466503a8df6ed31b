"""Latency models of a model's prunable layers: :class:`LatencyTable` (kernels compiled the
way :func:`tvm_hcprune.build` compiles them and timed on the target, cached on disk) and
:class:`RooflineModel` (an estimate from the :class:`~tvm_hcprune.hardware.HardwareProfile`
when nothing can be measured). Both turn into the
:class:`~tvm_hcprune.planning.budget.SeparableCost` a latency budget is allocated over."""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.interpolate import RegularGridInterpolator

from tvm_hcprune.backend.cpu.winograd import TILE_ELEMENTS, prefer_winograd, winograd_geometry
from tvm_hcprune.backend.pipeline import set_num_threads
from tvm_hcprune.errors import HCPruneError
from tvm_hcprune.hardware import profile_for
from tvm_hcprune.hardware.sparse_cost import BSR_RELATIVE_EFFICIENCY, default_block
from tvm_hcprune.hardware.target import parse_target
from tvm_hcprune.latency.layers import MEASURE_VERSION, layer_module, layer_specs
from tvm_hcprune.latency.measure import LocalRunner
from tvm_hcprune.latency.sparse import bsr_layer_module, bsr_specs, bsr_timer
from tvm_hcprune.planning.budget import CostTerm, SeparableCost, candidate_widths, desc_kept_length
from tvm_hcprune.planning.plan import PrunePlan
from tvm_hcprune.planning.planner import group_align
from tvm_hcprune.transform.apply_plan import apply_plan
from tvm_hcprune.utils.io import atomic_write_text
from tvm_hcprune.utils.progress import progress_bar
from tvm_hcprune.utils.relax import static_shape

__all__ = ["LatencyTable", "RooflineModel", "default_cache_dir", "latency_table",
           "target_key"]

TABLE_VERSION = 1


def target_key(target) -> str:
    """The canonical string of a target (what tables and caches are keyed by)."""
    return str(parse_target(target))


def default_cache_dir() -> Path:
    """``$TVM_HCPRUNE_CACHE/latency``, else ``~/.cache/tvm_hcprune/latency``."""
    root = os.environ.get("TVM_HCPRUNE_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "tvm_hcprune"
    return base / "latency"


def resolve_cache_dir(cache_dir) -> Path | None:
    """The folder a ``cache_dir`` argument names: ``"default"`` is
    :func:`default_cache_dir`, None no cache."""
    if cache_dir is None:
        return None
    return default_cache_dir() if cache_dir == "default" else Path(cache_dir)


def _cache_target(tkey: str, device: str) -> str:
    """What a target's cache file is keyed by: the target, and the device when remote."""
    return tkey if device == "local" else f"{tkey}|{device}"


def forget_cached(target, device: str = "local", cache_dir="default") -> Path | None:
    """Remove the cached latency measurements of ``target`` on ``device`` (a table timed on a
    busy host); the next :func:`latency_table` measures again. Returns the file removed, or
    None when there was none.

    Examples
    --------
    >>> forget_cached("llvm", cache_dir=None) is None
    True
    """
    path = _Cache.file(resolve_cache_dir(cache_dir),
                       _cache_target(target_key(target), device))
    if path is None or not path.is_file():
        return None
    path.unlink()
    return path


def _traffic(spec, cin: int, cout: int) -> int:
    """Elements a layer moves through memory: its weights and its output activations."""
    out_sp = math.prod(spec.out_shape) // spec.out_full
    w = static_shape(spec.call.args[1])
    if spec.op == "relax.nn.conv2d":
        klayout = str(spec.call.attrs.kernel_layout)
        khkw = math.prod(w) // (w[klayout.index("O")] * w[klayout.index("I")])
        per_in = 1 if spec.depthwise else max(1, cin // int(spec.call.attrs.groups))
        weights = cout * per_in * khkw
    else:
        weights = cin * cout
    return out_sp * cout + weights


def _activations(specs, sg, widths) -> int:
    """Elements the layers move at ``widths`` (weights and output activations)."""
    return sum(_traffic(spec, *spec.lengths(sg, widths)) for spec in specs)


class LatencyModel:
    """What a latency budget needs: per-layer milliseconds at any widths."""

    source = "model"  # subclasses set target, fingerprint ("" = any) and dense_ms

    def layer_ms(self, spec, cin: int, cout: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def bsr_ms(self, spec, sparsity: float, cin: int, cout: int) -> float:
        """Milliseconds of the layer on the BSR kernel with ``sparsity`` of its blocks zero,
        at ``cin`` x ``cout`` channels. This estimate (nothing measured): the dense time
        times the kept blocks over the BSR kernel's relative throughput
        (:data:`~tvm_hcprune.hardware.sparse_cost.BSR_RELATIVE_EFFICIENCY`, the crossover
        the build's format estimate uses); tables with measured BSR entries override it."""
        return self.layer_ms(spec, cin, cout) * (1.0 - sparsity) / BSR_RELATIVE_EFFICIENCY

    def bsr_source(self, spec) -> str:
        """``"measured"`` when :meth:`bsr_ms` of ``spec`` comes from timings, else
        ``"estimate"``."""
        return "estimate"

    def sparse_ms(self, spec, sparsity: float, cin: int, cout: int) -> float:
        """The layer's milliseconds: dense at ``sparsity`` 0, else :meth:`bsr_ms`."""
        if sparsity <= 0.0:
            return self.layer_ms(spec, cin, cout)
        return self.bsr_ms(spec, sparsity, cin, cout)

    def check(self, graph, target=None) -> None:
        """Raise :class:`HCPruneError` unless this model describes ``graph`` on ``target``."""
        if target is not None and self.target and target_key(target) != self.target:
            raise HCPruneError(f"this latency {self.source} was made for target "
                               f"{self.target}, not {target_key(target)}; build one for this "
                               "target")
        if self.fingerprint and graph.fingerprint != self.fingerprint:
            raise HCPruneError("this latency table was measured for a different model "
                               f"(fingerprint {self.fingerprint[:12]}..., the module's is "
                               f"{graph.fingerprint[:12]}...)")

    def cost(self, graph, sparse: dict | None = None) -> SeparableCost:
        """Predicted whole-model milliseconds as a function of group widths.

        ``sparse`` (a mixed budget) maps layer names to ``(key, blocks)``: the term of such
        a layer also reads ``widths[key]``, its kept weight blocks of ``blocks`` (absent or
        all: dense), and is :meth:`bsr_ms` at that sparsity when blocks are dropped.

        The layers' time at the widths, plus the rest of the model (pooling, layout
        changes, element-wise kernels, the VM, and the cache misses a kernel timed on its own
        does not see: in a ResNet-50-shaped model at 112x112 the kernels timed one by one
        added up to 12.5 of 16.8 ms): measured tables calibrate the rest on two whole-model
        measurements, dense and at the smallest candidate widths, as linear in the elements
        the layers move (weights and output activations; it shrinks with them and is never
        negative); without those measurements the rest is zero (roofline).
        """
        sg = graph.space_group
        dense = {g.id: g.size for g in graph.groups}
        specs = layer_specs(graph)
        terms = []
        sparse = sparse or {}
        for spec in specs:
            groups = tuple(sorted(set(spec.in_groups(sg)) | set(spec.out_groups(sg))))
            if spec.name in sparse:
                key, blocks = sparse[spec.name]

                def fn(w, spec=spec, key=key, blocks=blocks):
                    kept = min(w.get(key, blocks), blocks)
                    return self.sparse_ms(spec, 1.0 - kept / blocks, *spec.lengths(sg, w))

                terms.append(CostTerm((*groups, key), fn))
                continue

            def fn(w, spec=spec):
                return self.layer_ms(spec, *spec.lengths(sg, w))

            terms.append(CostTerm(groups, fn))
        layers = SeparableCost(terms)
        if not self.dense_ms:
            return layers
        # the rest is never negative: stand-alone kernels timed above their share of the
        # whole model leave no rest (the dense prediction is then above dense_ms)
        rest_dense = max(0.0, self.dense_ms - layers.total(dense))
        slope = 0.0
        low = getattr(self, "low_widths", None)
        low_ms = getattr(self, "low_ms", None)
        if low and low_ms:
            low = {**dense, **low}
            d_act = _activations(specs, sg, low) - _activations(specs, sg, dense)
            if d_act < 0:
                rest_low = max(0.0, low_ms - layers.total(low))
                slope = max(0.0, (rest_low - rest_dense) / d_act)
        for spec in specs if slope else ():

            def act(w, spec=spec):
                return slope * _traffic(spec, *spec.lengths(sg, w))

            groups = tuple(sorted(set(spec.in_groups(sg)) | set(spec.out_groups(sg))))
            terms.append(CostTerm(groups, act))
        return SeparableCost(terms, constant=rest_dense - slope * _activations(specs, sg,
                                                                               dense))

    def predict(self, graph, plan=None) -> float:
        """Predicted milliseconds of ``graph``'s model pruned by ``plan`` (None: dense),
        its block-sparse layers (a mixed plan) on the BSR kernel."""
        w = {g.id: g.size for g in graph.groups}
        sparse = {}
        if plan is not None:
            w.update({g: len(k) for g, k in plan.kept.items()})
            for name, s in plan.sparse_layers.items():
                blocks = 1_000_000  # the sparsity's resolution (the cost reads kept / all)
                sparse[name] = (f"bsr:{name}", blocks)
                w[f"bsr:{name}"] = int(round((1.0 - s) * blocks))
        return self.cost(graph, sparse).total(w)

    def candidates_of(self, group, align: int, min_channels: int = 1) -> list[int]:
        return candidate_widths(group.size, align, min_channels)


# ---------------------------------------------------------------------------------------
# measured


@dataclass
class LayerTable:
    """Measured milliseconds of one layer on a grid of (input, output) channel counts."""

    in_grid: list
    out_grid: list
    ms: np.ndarray  # (len(in_grid), len(out_grid)); depthwise: (1, len(out_grid)) diagonal
    depthwise: bool = False

    def __call__(self, cin: int, cout: int) -> float:
        ms = np.asarray(self.ms, dtype=np.float64)
        if self.depthwise:
            return float(np.interp(cout, self.out_grid, ms[0]))
        ni, no = len(self.in_grid), len(self.out_grid)
        if ni == 1 and no == 1:
            return float(ms[0, 0])
        if ni == 1:
            return float(np.interp(cout, self.out_grid, ms[0]))
        if no == 1:
            return float(np.interp(cin, self.in_grid, ms[:, 0]))
        f = RegularGridInterpolator((self.in_grid, self.out_grid), ms, bounds_error=False,
                                    fill_value=None)
        return float(f([[cin, cout]])[0])

    def to_dict(self) -> dict:
        return {"in_grid": list(self.in_grid), "out_grid": list(self.out_grid),
                "ms": np.asarray(self.ms).tolist(), "depthwise": self.depthwise}


@dataclass
class LatencyTable(LatencyModel):
    """Measured per-layer latency at candidate widths, for one model on one target.

    Attributes
    ----------
    target : str
        The target the kernels were compiled for and timed on.
    fingerprint : str
        ``ChannelGraph.fingerprint`` of the model.
    dense_ms : float
        Measured whole-model latency of the dense model.
    layers : dict
        Layer binding name -> :class:`LayerTable`.
    candidates : dict
        Group id -> kept counts the table was measured at (the widths a budget chooses
        among: every measured point is a step of the latency staircase; with
        ``every_width``, every multiple of the alignment between them too).
    low_ms : float or None
        Measured whole-model latency with every group at its smallest candidate (calibrates
        the part of the model outside the layers; see :meth:`LatencyModel.cost`).

    Examples
    --------
    >>> table = tvm_hcprune.latency_table(mod, target="llvm")  # doctest: +SKIP
    >>> pruned, report = tvm_hcprune.prune(mod, budget=tvm_hcprune.Latency(fraction=0.5),
    ...                                    latency_model=table)  # doctest: +SKIP
    """

    target: str
    fingerprint: str
    dense_ms: float
    layers: dict
    candidates: dict = field(default_factory=dict)
    low_ms: float | None = None
    measured: int = 0  # kernels timed when this table was built (0: all from the cache)
    device: str = "local"  # where it was measured: "local" or "rpc:KEY"
    #: BSR timings (mixed budgets): layer name -> {"block": [bk, bn], "ms": {sparsity: ms}}
    #: of the layer at its dense widths on the BSR kernel the build uses
    sparse: dict = field(default_factory=dict)
    #: budgets choose among every multiple of the alignment from a group's smallest measured
    #: width up (latency interpolated between the measured widths), not the measured widths
    #: only; not saved with the table (an option of its use, not of the measurement)
    every_width: bool = False
    source = "table"

    @property
    def low_widths(self) -> dict:
        return {g: c[0] for g, c in self.candidates.items()}

    def layer_ms(self, spec, cin, cout):
        t = self.layers.get(spec.name)
        if t is None:
            raise HCPruneError(f"the latency table has no entry for layer {spec.name}; "
                               "rebuild it for this model")
        return t(cin, cout)

    def bsr_ms(self, spec, sparsity, cin, cout):
        entry = self.sparse.get(spec.name)
        if not entry:
            return super().bsr_ms(spec, sparsity, cin, cout)
        levels = sorted((float(k), float(v)) for k, v in entry["ms"].items())
        ms = float(np.interp(sparsity, [lv for lv, _ in levels], [v for _, v in levels]))
        if sparsity < levels[0][0]:  # below the sparsest level timed: towards dense
            dense = self.layer_ms(spec, spec.in_full, spec.out_full)
            ms = float(np.interp(sparsity, [0.0, levels[0][0]], [dense, levels[0][1]]))
        # the BSR kernel's work is its kept blocks: they shrink with the layer's area
        return ms * (cin * cout) / (spec.in_full * spec.out_full)

    def bsr_source(self, spec):
        return "measured" if self.sparse.get(spec.name) else "estimate"

    def candidates_of(self, group, align, min_channels=1):
        c = self.candidates.get(group.id)
        if c is None:
            return candidate_widths(group.size, align, min_channels)
        c = [w for w in c if w >= min_channels and (w % align == 0 or w == group.size)]
        if self.every_width and c:  # every multiple of align between the measured ends
            c = [w for w in candidate_widths(group.size, align, min_channels) if w >= c[0]]
        return c

    def to_dict(self) -> dict:
        return {"version": TABLE_VERSION, "target": self.target,
                "fingerprint": self.fingerprint, "dense_ms": self.dense_ms,
                "low_ms": self.low_ms, "device": self.device,
                "candidates": {str(g): list(c) for g, c in self.candidates.items()},
                "layers": {k: t.to_dict() for k, t in self.layers.items()},
                **({"sparse": self.sparse} if self.sparse else {})}

    def save(self, path) -> None:
        """Write the table as JSON, atomically."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path) -> LatencyTable:
        try:
            d = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise HCPruneError(f"latency table {path} does not exist") from None
        except json.JSONDecodeError as err:
            raise HCPruneError(f"latency table {path} is not valid JSON: {err}") from None
        if not isinstance(d, dict) or d.get("version") != TABLE_VERSION:
            raise HCPruneError(f"{path} is not a version-{TABLE_VERSION} latency table")
        layers = {k: LayerTable(v["in_grid"], v["out_grid"], np.asarray(v["ms"]),
                                bool(v.get("depthwise"))) for k, v in d["layers"].items()}
        return cls(d["target"], d["fingerprint"], float(d["dense_ms"]), layers,
                   {int(g): list(c) for g, c in d.get("candidates", {}).items()},
                   d.get("low_ms"), device=d.get("device", "local"),
                   sparse=dict(d.get("sparse", {})))


def _grid(desc, sg, candidates, full) -> list[int]:
    """Axis lengths at the groups' candidates (the j-th largest of every group together)."""
    if desc is None:
        return [full]

    groups = sorted({sg[s.space] for s in desc if s.space is not None})
    if not groups:
        return [full]
    depth = max(len(candidates[g]) for g in groups)
    out = set()
    for j in range(depth):
        w = {g: candidates[g][max(0, len(candidates[g]) - 1 - j)] for g in groups}
        out.add(desc_kept_length(desc, sg, w))
    return sorted(out)


def monotone(ms: np.ndarray) -> np.ndarray:
    """``ms`` made non-decreasing along both axes (a suffix minimum): a point where fewer
    channels timed slower than more channels takes the faster time.

    On a shared machine such points are mostly noise, and they would let the greedy
    allocation stop above the cheapest widths. (A real cliff where a smaller width is slower
    is hidden by this; the raw timings stay in the cache.)

    Examples
    --------
    >>> monotone(np.array([[3.0, 2.0], [1.0, 4.0]])).tolist()
    [[1.0, 2.0], [1.0, 4.0]]
    """
    out = np.asarray(ms, dtype=np.float64).copy()
    out = np.minimum.accumulate(out[::-1, :], axis=0)[::-1, :]
    return np.minimum.accumulate(out[:, ::-1], axis=1)[:, ::-1]


class _Cache:
    """Measured milliseconds by workload key, one JSON file per target."""

    def __init__(self, cache_dir, target_str: str):
        self.path = self.file(cache_dir, target_str)
        self.target = target_str
        self.entries: dict = {}
        if self.path is None:
            return
        if self.path.is_file():
            try:
                d = json.loads(self.path.read_text(encoding="utf-8"))
                if d.get("target") == target_str:
                    self.entries = dict(d.get("entries", {}))
            except (json.JSONDecodeError, OSError, AttributeError):
                self.entries = {}  # a damaged cache is re-measured, then rewritten

    @staticmethod
    def file(cache_dir, target_str: str) -> Path | None:
        """The JSON file of ``target_str``'s entries in ``cache_dir`` (None: no cache)."""
        if cache_dir is None:
            return None
        name = hashlib.blake2b(target_str.encode(), digest_size=8).hexdigest()
        return Path(cache_dir) / f"{name}.json"

    def save(self):
        if self.path is not None:
            atomic_write_text(self.path, json.dumps({"target": self.target,
                                                     "entries": self.entries}, indent=0))


def latency_table(graph, target="llvm", *, align: int | None = None, min_channels: int = 1,
                  widths: int = 4, database=None, cache_dir="default", repeats: int = 5,
                  number: int = 10, progress: bool = True, runner=None,
                  sparse_levels=None, block=None) -> LatencyTable:
    """Measure the latency table of ``graph``'s model on ``target`` (the local CPU, or the
    device of ``runner``).

    Every conv2d/matmul layer, with the epilogue the pipeline fuses into it, is compiled by
    :func:`tvm_hcprune.build` (the same rules and database as the whole model) at a grid of
    input/output channel counts: each group's ``widths`` candidate kept counts (multiples
    of its alignment). A layer's grid points are timed in interleaved rounds, each kernel
    call re-run ``number`` times; the median is kept.
    Results are cached per target, device (this machine, or the runner's RPC key), thread
    count, database and workload in ``cache_dir`` (None: no cache), so a second run on the
    same model and target compiles and measures nothing. A database passed as an object
    (not a path or name) is keyed by its ``repr``, and a database file is keyed by its
    path, not its contents.

    Parameters
    ----------
    graph : ChannelGraph
        ``tvm_hcprune.analyze(mod)``.
    target : optional
        An ``llvm`` target (kernels run on this machine).
    align : int, optional
        Channel multiple (default: the target profile's ``channel_multiple``).
    widths : int
        Candidate widths per group (at least 2; the dense width is always one).
    database : optional
        Schedule database, as :func:`tvm_hcprune.build`'s ``database=``.
    repeats, number : int
        Interleaved rounds, and calls per kernel and round (their median counts).
    runner : optional
        Where kernels and models run: default this machine
        (:class:`~tvm_hcprune.latency.measure.LocalRunner`); an
        :class:`~tvm_hcprune.tuning.rpc.RPCRunner` times them on an RPC device.
    sparse_levels : sequence of float, optional
        Block sparsities (mixed budgets): every layer the BSR kernel can run is also timed
        at its dense widths with these fractions of its ``block`` weight blocks zeroed,
        built by :func:`tvm_hcprune.build` (BSR where its format choice says so) and timed
        with its epilogue; cached like the widths. Measured on this machine only (an RPC
        runner's tables keep the estimate of :meth:`LatencyModel.bsr_ms`).
    block : (int, int), optional
        The BSR block (default the target's, :func:`~tvm_hcprune.hardware.sparse_cost.
        default_block`).

    Returns
    -------
    LatencyTable

    Examples
    --------
    >>> table = latency_table(analyze(mod), "llvm", widths=3)  # doctest: +SKIP
    >>> pruned, report = prune(mod, budget=Latency(fraction=0.5), latency_model=table)
    ... # doctest: +SKIP
    """
    tgt = parse_target(target)
    if tgt.kind.name != "llvm":
        raise HCPruneError(f"latency tables are measured on this machine's CPU (llvm "
                           f"targets); for {tgt.kind.name} use RooflineModel")
    if widths < 2:
        raise HCPruneError(f"widths must be >= 2 (candidate widths per group), got {widths}")
    tkey = str(tgt)
    runner = runner if runner is not None else LocalRunner()
    device = runner.device
    align = int(align or profile_for(tgt).channel_multiple)
    # the thread count changes every timing: it is part of each cached entry's key
    set_num_threads(int(dict(tgt.attrs).get("num-cores", 0) or 0) or None)
    cache = _Cache(resolve_cache_dir(cache_dir), _cache_target(tkey, device))
    db_tag = database if isinstance(database, str | type(None)) else repr(database)
    threads = os.environ.get("TVM_NUM_THREADS", "") if device == "local" else device
    db_tag = f"{db_tag}|threads={threads}"
    cands = {}
    for g in graph.groups:
        if g.frozen:
            cands[g.id] = [g.size]
        else:
            cands[g.id] = candidate_widths(g.size, group_align(graph, g, align), min_channels,
                                           max_count=widths)
    sg = graph.space_group
    specs = layer_specs(graph)
    plan_points = {}
    for spec in specs:
        outs = _grid(spec.out_desc, sg, cands, spec.out_full)
        if spec.fixed:
            ins, outs = [spec.in_full], [spec.out_full]
            points = [(spec.in_full, spec.out_full)]
        elif spec.depthwise:
            ins = outs
            points = [(c, c) for c in outs]
        else:
            ins = _grid(spec.in_desc, sg, cands, spec.in_full)
            points = [(a, b) for a in ins for b in outs]
        plan_points[spec.name] = (spec, ins, outs, points)
    keyed = {}
    for spec, _ins, _outs, points in plan_points.values():
        for p in points:
            keyed.setdefault(f"{spec.workload(*p)}|{db_tag}", (spec, p))
    missing = [k for k in keyed if k not in cache.entries]
    # whole-model timings are keyed by the measurement's version too
    model_key = f"model:v{MEASURE_VERSION}:{graph.fingerprint}|{db_tag}"
    # one layer's missing grid points at a time: compile them, then time them in
    # interleaved rounds (a burst of load on the shared machine hits all points alike)
    by_layer: dict = {}
    for k in missing:
        by_layer.setdefault(keyed[k][0].name, []).append(k)
    bar = progress_bar(total=len(missing), enabled=progress and bool(missing),
                       desc="latency table", unit="kernel")
    for keys in by_layer.values():
        runs = []
        for k in keys:
            spec, (cin, cout) = keyed[k]
            mod, inputs = layer_module(spec, cin, cout)
            runs.append((k, runner.layer(mod, inputs, tgt, database)))
            bar.update(1)
        samples = {k: [] for k in keys}
        for _ in range(repeats):
            for k, timer in runs:
                samples[k].append(timer(number))
        for k in keys:
            cache.entries[k] = float(np.median(samples[k]))
    bar.close()
    sparse = {}
    if sparse_levels and device == "local":
        sparse = _bsr_entries(graph, specs, tgt, sparse_levels,
                              tuple(block or default_block(profile_for(tgt))), cache, db_tag,
                              database, repeats, number, progress, missing)
    low = {g: c[0] for g, c in cands.items() if c[0] < graph.groups[g].size}
    low_key = f"model-low:v{MEASURE_VERSION}:{graph.fingerprint}|{sorted(low.items())}|{db_tag}"
    if model_key not in cache.entries or (low and low_key not in cache.entries):
        mods = [graph.mod]
        if low:
            plan = PrunePlan.create(graph.fingerprint, {g: range(w) for g, w in low.items()},
                                    {g: graph.groups[g].size for g in low})
            mods.append(apply_plan(graph, plan))
        ms = runner.models(mods, tgt, database=database, repeats=repeats)
        cache.entries[model_key] = ms[0]
        if low:
            cache.entries[low_key] = ms[1]
        missing.append(model_key)
    if missing:
        cache.save()
    layers = {}
    for name, (spec, ins, outs, _points) in plan_points.items():
        if spec.depthwise:
            ms = np.array([[cache.entries[f"{spec.workload(c, c)}|{db_tag}"] for c in outs]])
        else:
            ms = np.array([[cache.entries[f"{spec.workload(a, b)}|{db_tag}"] for b in outs]
                           for a in ins])
        layers[name] = LayerTable(list(ins), list(outs), monotone(ms), spec.depthwise)
    return LatencyTable(tkey, graph.fingerprint, float(cache.entries[model_key]), layers,
                        cands, cache.entries.get(low_key) if low else None,
                        measured=len(missing), device=device, sparse=sparse)


def _bsr_entries(graph, specs, tgt, levels, block, cache, db_tag, database, repeats, number,
                 progress, missing) -> dict:
    """Time every BSR-able layer at each block sparsity (interleaved rounds per layer);
    returns the table's ``sparse`` entries and appends the keys it timed to ``missing``."""
    out, todo, claimed = {}, {}, set()
    for spec in bsr_specs(graph, specs):
        keys = {float(lv): f"bsr:v{MEASURE_VERSION}:{spec.workload(spec.in_full, spec.out_full)}"
                           f"|{block}|{float(lv):g}|{db_tag}" for lv in levels}
        out[spec.name] = (spec, keys)
        # layers of one workload (a transformer's repeated blocks) are timed once
        todo[spec.name] = [(lv, k) for lv, k in keys.items()
                           if k not in cache.entries and k not in claimed]
        claimed.update(keys.values())
    bar = progress_bar(total=sum(len(v) for v in todo.values()),
                       enabled=progress and any(todo.values()), desc="latency table (BSR)",
                       unit="kernel")
    for name, pending in todo.items():
        runs = []
        for lv, k in pending:
            runs.append((k, bsr_timer(*bsr_layer_module(out[name][0], lv, block), tgt,
                                      database)))
            bar.update(1)
        samples = {k: [] for k, _timer in runs}
        for _ in range(repeats):
            for k, timer in runs:
                samples[k].append(timer(number))
        for k in samples:
            cache.entries[k] = float(np.median(samples[k]))
            missing.append(k)
    bar.close()
    return {name: {"block": list(block), "ms": {f"{lv:g}": cache.entries[k]
                                                 for lv, k in keys.items()}}
            for name, (_spec, keys) in out.items()}


# ---------------------------------------------------------------------------------------
# analytic


def _winograd_hw(spec, groups: int):
    """``(H, W)`` of a conv (NCHW or NHWC) that the CPU build may run with Winograd
    (:func:`~tvm_hcprune.backend.cpu.winograd.winograd_geometry`), else None."""
    if spec.op != "relax.nn.conv2d" or spec.depthwise:
        return None
    attrs = spec.call.attrs
    layout, kernel = str(attrs.out_layout or attrs.data_layout), str(attrs.kernel_layout)
    w = static_shape(spec.call.args[1])
    if w is None or sorted(layout) != sorted("NCHW") or not winograd_geometry(
            w[kernel.index("H")], w[kernel.index("W")], attrs.strides, attrs.dilation,
            attrs.padding, groups):
        return None
    return spec.out_shape[layout.index("H")], spec.out_shape[layout.index("W")]


class RooflineModel(LatencyModel):
    """Latency estimated from the hardware profile: per layer, the larger of its compute
    time at the profile's peak (channel counts rounded up to whole vectors, the SIMD
    staircase) and its memory time at ``bandwidth_gbps``, plus ``overhead_us`` per kernel.
    A 3x3 stride-1 conv the CPU build runs with Winograd F(2x2, 3x3)
    (:func:`~tvm_hcprune.backend.cpu.winograd.prefer_winograd`) counts the 16 products per
    2x2 tile of the GEMM stage and the 16/9 larger transformed weight.

    Parameters
    ----------
    target : optional
        Target whose :class:`~tvm_hcprune.hardware.HardwareProfile` is used.
    bandwidth_gbps : float, optional
        Sustained memory bandwidth (an assumption; default 8 bytes per cycle per core).
    efficiency : float
        Fraction of peak FLOP/s the kernels reach.

    Examples
    --------
    >>> from tvm_hcprune.hardware.profile import HardwareProfile
    >>> RooflineModel(profile=HardwareProfile("t", "llvm", "avx2", 256, 2, 16, 8, 32768,
    ...     524288, 2, 3.0)).lanes
    8
    """

    source = "roofline model"

    def __init__(self, target=None, *, profile=None, bandwidth_gbps: float | None = None,
                 efficiency: float = 0.5, overhead_us: float = 2.0):
        self.profile = profile if profile is not None else profile_for(
            target if target is not None else "llvm")
        self.target = target_key(target) if target is not None else ""
        self.lanes = self.profile.lanes("float32")
        self.peak = self.profile.peak_gflops("float32") * 1e9 * efficiency
        cores = max(1, self.profile.cores)
        self.bandwidth = (bandwidth_gbps * 1e9 if bandwidth_gbps is not None
                          else 8.0 * self.profile.freq_ghz * 1e9 * cores)
        self.overhead = overhead_us * 1e-3
        self.fingerprint = ""
        self.dense_ms = 0.0

    def _up(self, c: int) -> int:
        return int(math.ceil(c / self.lanes) * self.lanes)

    def layer_ms(self, spec, cin, cout):
        data = static_shape(spec.call.args[0])
        in_sp = math.prod(data) // data[spec.in_axis]
        out_sp = math.prod(spec.out_shape) // spec.out_shape[spec.out_axis]
        if spec.op == "relax.nn.conv2d":
            w = static_shape(spec.call.args[1])
            klayout = str(spec.call.attrs.kernel_layout)
            khkw = math.prod(w) // (w[klayout.index("O")] * w[klayout.index("I")])
            groups = cin if spec.depthwise else int(spec.call.attrs.groups)
        else:
            khkw, groups = 1, 1
        per_group_in = max(1, cin // groups)
        hw = _winograd_hw(spec, groups)
        if hw is not None and prefer_winograd(self._up(cin), cout, *hw, self.lanes):
            tiles = out_sp // (hw[0] * hw[1]) * math.ceil(hw[0] / 2) * math.ceil(hw[1] / 2)
            macs = tiles * TILE_ELEMENTS * self._up(cin) * self._up(cout)
            weights = TILE_ELEMENTS * cin * cout
        elif spec.depthwise:
            macs = out_sp * self._up(cout) * khkw
            weights = cout * khkw
        else:
            macs = out_sp * self._up(cout) * per_group_in * khkw
            weights = cout * per_group_in * khkw
        flops = 2.0 * macs
        nbytes = 4.0 * (in_sp * cin + out_sp * cout + weights)
        return max(flops / self.peak, nbytes / self.bandwidth) * 1e3 + self.overhead
