"""Budgets: how many channels each group keeps so that a cost (latency, MACs, parameters)
meets a limit while the most importance is kept.

:class:`Latency`, :class:`MACs` and :class:`Params` are the frozen budget records users pass
to ``prune(mod, budget=...)``. :class:`SeparableCost` is a cost written as a sum of terms
that each read the kept counts of a few groups (a layer's latency reads its input and output
groups; a MAC count reads the groups its channel axes carry), so the change of one group's
width is evaluated on the terms it touches only. :func:`allocate_widths` is the greedy
knapsack over candidate widths: starting from the dense model it repeatedly takes the width
step that loses the least importance per unit of cost saved, until the limit is met, then
gives steps back while the limit stays met. Nothing here measures or runs anything: the
latency terms come from :mod:`tvm_hcprune.latency`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from tvm_hcprune.errors import HCPruneError
from tvm_hcprune.ops.desc import desc_length
from tvm_hcprune.utils.relax import static_shape

__all__ = ["BudgetUnreachable", "MACs", "Latency", "Params", "SeparableCost", "allocate_widths",
           "allocation_at", "as_budget", "candidate_widths", "desc_kept_length", "kept_floor",
           "macs_cost", "params_cost", "uniform_start", "unit_value"]


def _check_fraction(name: str, fraction) -> None:
    if not isinstance(fraction, (int, float)) or isinstance(fraction, bool) or not (
            0.0 < float(fraction) < 1.0):
        raise HCPruneError(f"{name}(fraction=...) must be in (0, 1) (the share of the dense "
                           f"model's cost to keep), got {fraction!r}")


@dataclass(frozen=True)
class Latency:
    """A latency budget: ``fraction`` of the dense model's latency, or ``ms`` milliseconds.

    Exactly one of the two is given. Latency comes from a latency model of the target
    (:func:`tvm_hcprune.latency.latency_model`: kernels measured on it, or a roofline
    estimate).

    Examples
    --------
    >>> Latency(fraction=0.5)
    Latency(fraction=0.5, ms=None)
    >>> Latency(ms=4.0).describe()
    '4 ms'
    """

    fraction: float | None = None
    ms: float | None = None

    def __post_init__(self):
        if (self.fraction is None) == (self.ms is None):
            raise HCPruneError("Latency needs exactly one of fraction= (e.g. 0.5) or ms= "
                               f"(e.g. 4.0), got fraction={self.fraction!r}, ms={self.ms!r}")
        if self.fraction is not None:
            _check_fraction("Latency", self.fraction)
        elif not isinstance(self.ms, (int, float)) or not (math.isfinite(self.ms)
                                                           and self.ms > 0):
            raise HCPruneError(f"Latency(ms=...) must be a positive number, got {self.ms!r}")

    def limit(self, dense: float) -> float:
        """The budget in milliseconds given the dense model's predicted latency."""
        return float(self.fraction) * dense if self.fraction is not None else float(self.ms)

    def describe(self) -> str:
        return f"{self.fraction:g}x latency" if self.fraction is not None else f"{self.ms:g} ms"


@dataclass(frozen=True)
class _FractionBudget:
    """A budget of ``fraction`` of a dense-model total (the subclass says which)."""

    fraction: float
    unit = ""

    def __post_init__(self):
        _check_fraction(type(self).__name__, self.fraction)

    def limit(self, dense: float) -> float:
        return float(self.fraction) * dense

    def describe(self) -> str:
        return f"{self.fraction:g}x {self.unit}"


@dataclass(frozen=True)
class MACs(_FractionBudget):
    """A budget of ``fraction`` of the dense model's multiply-accumulates.

    Examples
    --------
    >>> MACs(fraction=0.5).limit(1000)
    500.0
    """

    unit = "MACs"


@dataclass(frozen=True)
class Params(_FractionBudget):
    """A budget of ``fraction`` of the dense model's parameters (constant elements).

    Examples
    --------
    >>> Params(fraction=0.25).describe()
    '0.25x params'
    """

    unit = "params"


BUDGETS = (Latency, MACs, Params)


def as_budget(budget):
    """``budget`` checked to be one of the budget records (None passes through)."""
    if budget is None or isinstance(budget, BUDGETS):
        return budget
    raise HCPruneError(f"budget must be Latency(...), MACs(...) or Params(...), got "
                       f"{budget!r}")


# ---------------------------------------------------------------------------------------
# costs


@dataclass(frozen=True)
class CostTerm:
    """``fn(widths)`` of a model part whose cost depends on the groups in ``groups``."""

    groups: tuple
    fn: Callable


class SeparableCost:
    """A cost that is a constant plus a sum of terms, each reading a few groups' widths.

    Parameters
    ----------
    terms : sequence of CostTerm
    constant : float
        The part of the cost no width changes (e.g. unpruned kernels).

    Examples
    --------
    >>> c = SeparableCost([CostTerm((0,), lambda w: 2.0 * w[0])], constant=1.0)
    >>> c.total({0: 8})
    17.0
    """

    def __init__(self, terms: Sequence[CostTerm], constant: float = 0.0):
        self.terms = list(terms)
        self.constant = float(constant)
        self.by_group: dict[int, list[int]] = {}
        for i, t in enumerate(self.terms):
            for g in set(t.groups):
                self.by_group.setdefault(g, []).append(i)

    def total(self, widths: dict) -> float:
        return self.constant + float(sum(t.fn(widths) for t in self.terms))

    def part(self, widths: dict, groups) -> float:
        """The summed terms that read any of ``groups``."""
        idx = sorted({i for g in groups for i in self.by_group.get(g, ())})
        return float(sum(self.terms[i].fn(widths) for i in idx))


def desc_kept_length(desc, space_group: dict, widths: dict) -> int:
    """Length of an axis (descriptor) when group ``g`` keeps ``widths[g]`` channels."""
    n = 0
    for seg in desc:
        size = seg.size
        if seg.space is not None:
            size = widths.get(space_group[seg.space], seg.size)
        n += size * seg.inner
    return n


def _desc_groups(desc, space_group) -> tuple:
    return tuple(sorted({space_group[s.space] for s in desc if s.space is not None}))


def _scaled_term(total: int, descs: tuple, sg) -> CostTerm:
    """``total`` scaled by the kept fraction of every axis in ``descs`` (exact integers)."""

    def fn(w):
        num, den = total, 1
        for d in descs:
            num, den = num * desc_kept_length(d, sg, w), den * desc_length(d)
        return num // den

    return CostTerm(tuple(sorted({g for d in descs for g in _desc_groups(d, sg)})), fn)


def macs_cost(graph) -> SeparableCost:
    """The model's exact MAC count as a function of group widths (the same integer
    arithmetic as ``ChannelGraph.count_after``)."""
    ctx, sg = graph.ctx, graph.space_group
    terms = []
    for var, (_op, m) in ctx.macs.items():
        terms.append(_scaled_term(m, tuple(ctx.mac_scaling.get(var, ())), sg))
    return SeparableCost(terms)


def params_cost(graph) -> SeparableCost:
    """The model's exact parameter count as a function of group widths."""
    ctx, sg = graph.ctx, graph.space_group
    terms, sliced = [], 0
    for var, slices in ctx.const_slices.items():
        for arg in sorted({a for a, _, _ in slices}):
            n = math.prod(static_shape(ctx.values[var].args[arg]))
            sliced += n
            descs = tuple(d for a, _axis, d in slices if a == arg)
            terms.append(_scaled_term(n, descs, sg))
    return SeparableCost(terms, constant=graph.total_params - sliced)


# ---------------------------------------------------------------------------------------
# allocation


def candidate_widths(size: int, align: int, min_channels: int = 1,
                     max_count: int | None = None) -> list[int]:
    """Kept counts a group may take: multiples of ``align`` from the smallest allowed one up
    to ``size`` (always included), at most ``max_count`` of them, evenly spread.

    Examples
    --------
    >>> candidate_widths(64, 16)
    [16, 32, 48, 64]
    >>> candidate_widths(64, 8, max_count=3)
    [8, 40, 64]
    """
    low = max(align, int(math.ceil(max(min_channels, 1) / align)) * align)
    widths = list(range(low, size, align)) + [size]
    if max_count is not None and len(widths) > max_count >= 2:
        pick = np.unique(np.round(np.linspace(0, len(widths) - 1, max_count)).astype(int))
        widths = [widths[i] for i in pick]
    return widths


@dataclass
class Allocation:
    """What :func:`allocate_widths` chose.

    Attributes
    ----------
    widths : dict
        Group id -> kept count (every unit's groups, pruned or not).
    cost, limit, dense_cost : float
        The chosen widths' cost, the limit, the dense model's cost.
    importance : float
        Kept importance (sum over units of the kept share of each group's scores).
    value : float
        What the allocation maximised: the summed :func:`unit_value` of every unit at the
        chosen widths (``importance`` less the dense total at ``power=1``).
    units, candidates, curves
        What was allocated over (filled by the planner): the units, their candidate widths
        and importance curves (``curves[u][k]``: importance kept with ``k`` channels).
    """

    widths: dict
    cost: float
    limit: float
    dense_cost: float
    importance: float
    value: float = 0.0
    units: list = field(default_factory=list)
    candidates: dict = field(default_factory=dict)
    curves: dict = field(default_factory=dict)


POWER_RANGE = (-4.0, 1.0)


class BudgetUnreachable(HCPruneError):
    """No allowed widths meet the budget; ``reachable`` is the least cost they reach.

    Examples
    --------
    >>> err = BudgetUnreachable(2.5, "no plan meets the latency budget 2 ms")
    >>> isinstance(err, HCPruneError), err.reachable
    (True, 2.5)
    """

    def __init__(self, reachable: float, message: str):
        super().__init__(message)
        self.reachable = float(reachable)


def kept_floor(min_fraction: float, size: int) -> int:
    """The fewest channels of ``size`` a budget keeps under ``min_fraction``
    (``ceil(min_fraction * size)``, robust to rounding).

    Examples
    --------
    >>> kept_floor(0.25, 200), kept_floor(0.0, 64)
    (50, 0)
    """
    return math.ceil(float(min_fraction) * size - 1e-9)


def unit_value(curve, power: float = 1.0):
    """The value of keeping ``curve[k]`` importance out of ``curve[-1]``, per kept count.

    ``total * ((x ** power - 1) / power)`` with ``x = curve[k] / total``: ``power=1`` is the
    importance itself (less the constant ``total``), ``power < 1`` is concave in the kept
    share, so each further cut into one group costs more than the last and the allocation
    spreads its cuts over many groups; ``power=0`` is the limit ``total * log(x)``, and
    negative powers penalise deep cuts more still (``-1``: ``total * (1 - 1 / x)``).

    Examples
    --------
    >>> v = unit_value(np.array([0.0, 1.0, 2.0, 3.0, 4.0]), power=0.5)
    >>> [round(float(a), 3) for a in v[1:]]
    [-4.0, -2.343, -1.072, 0.0]
    >>> bool(v[2] - v[1] > v[4] - v[3])  # the deep cut costs more than the first one
    True
    """
    curve = np.asarray(curve, dtype=np.float64)
    total = float(curve[-1])
    if power == 1.0 or total <= 0.0:
        return curve - total
    x = np.clip(curve / total, 1e-12, None)  # nothing kept: -total/power or a large log
    if power == 0.0:
        return total * np.log(x)
    return total * (x ** power - 1.0) / power


def allocate_widths(units: Sequence[Sequence[int]], candidates: dict, importance: dict,
                    cost: SeparableCost, limit: float, sizes: dict,
                    what: str = "cost", fmt=lambda v: f"{v:g}", power: float = 1.0,
                    min_fraction: float = 0.0, start: dict | None = None) -> Allocation:
    """Choose one candidate width per unit so that ``cost <= limit`` keeping most importance.

    Parameters
    ----------
    units : sequence of sequence of int
        Groups that keep equal counts (one decision each; usually single groups, the input
        groups of a grouped convolution together).
    candidates : dict
        Unit index -> ascending kept counts allowed (the last is the dense size).
    importance : dict
        Unit index -> 1-D array: ``importance[u][k]`` is the importance kept with ``k``
        channels (non-decreasing, ``[0] == 0``).
    cost : SeparableCost
    limit : float
    sizes : dict
        Group id -> dense size.
    what, fmt
        Name and formatter of the cost in error messages.
    power : float
        Concavity of each unit's value in its kept importance (:func:`unit_value`), in
        ``POWER_RANGE``: 1 sums importance (a few groups may be cut deep), below 1 deep cuts
        cost more (cuts spread), 0 is the logarithm.
    min_fraction : float
        Floor on every unit's kept channels as a fraction of its size: candidates below
        ``ceil(min_fraction * size)`` are not taken (the smallest candidate at or above it
        is the lowest a unit goes).
    start : dict, optional
        Unit index -> kept count to start from instead of the dense size (the largest
        candidate at or below it, not below the floor): e.g. a uniform plan, which the
        give-back step then raises where the limit allows (see :func:`uniform_start`).

    Returns
    -------
    Allocation

    Raises
    ------
    HCPruneError
        When even the smallest candidates exceed ``limit`` (with the best reachable cost).

    Notes
    -----
    Greedy knapsack (HALP/NetAdapt style): every step moves one unit to the lower candidate
    with the smallest value lost per cost saved; candidates that save nothing are
    skipped over, so no channel is removed that buys no cost. When the limit is met, steps
    are undone (largest value regained per cost first) while it stays met.
    :attr:`Allocation.importance` is the kept importance itself, whatever ``power``.

    Examples
    --------
    >>> cost = SeparableCost([CostTerm((g,), lambda w, g=g: float(w[g])) for g in (0, 1)])
    >>> imp = {0: np.arange(9.0), 1: np.arange(9.0)}
    >>> allocate_widths([[0], [1]], {0: [2, 4, 6, 8], 1: [2, 4, 6, 8]}, imp, cost,
    ...                 limit=10, sizes={0: 8, 1: 8}, power=0.0).widths
    {0: 4, 1: 6}
    """
    if not POWER_RANGE[0] <= float(power) <= POWER_RANGE[1]:
        raise HCPruneError(f"power must be in {list(POWER_RANGE)} (1: importance summed, 0: "
                           f"its logarithm), got {power!r}")
    if not 0.0 <= float(min_fraction) < 1.0:
        raise HCPruneError(f"min_fraction must be in [0, 1) (the least share of a group's "
                           f"channels kept), got {min_fraction!r}")
    widths = {g: sizes[g] for u in units for g in u}
    pos = {i: len(candidates[i]) - 1 for i in range(len(units))}
    values = {i: unit_value(importance[i], float(power)) for i in range(len(units))}
    lowest = {}
    for i, u in enumerate(units):
        floor = kept_floor(min_fraction, max(sizes[g] for g in u))
        lowest[i] = next(k for k, c in enumerate(candidates[i])
                         if c >= floor or k == len(candidates[i]) - 1)
    for i, n in (start or {}).items():
        below = [k for k, c in enumerate(candidates[i]) if c <= n]
        pos[i] = max(lowest[i], below[-1] if below else 0)
        for g in units[i]:
            widths[g] = candidates[i][pos[i]]

    def with_unit(i, k):
        w = dict(widths)
        for g in units[i]:
            w[g] = candidates[i][k]
        return w

    def val(i, k):
        return float(values[i][candidates[i][k]])

    dense = cost.total({g: sizes[g] for u in units for g in u})
    cur = cost.total(widths)
    while cur > limit:
        best = None
        for i, p in pos.items():
            here = cost.part(widths, units[i])
            for k in range(p - 1, lowest[i] - 1, -1):
                saved = here - cost.part(with_unit(i, k), units[i])
                if saved <= 1e-12 * max(abs(here), 1.0):
                    continue
                key = ((val(i, p) - val(i, k)) / saved, -saved, i)
                if best is None or key < best[0]:
                    best = (key, i, k, saved)
        if best is None:
            raise BudgetUnreachable(
                cur,
                f"no plan meets the {what} budget {fmt(limit)}: the smallest widths allowed "
                f"(align, min_channels, the kept-fraction floor, protected and frozen "
                f"groups) reach {fmt(cur)} "
                f"(dense {fmt(dense)})")
        _, i, k, saved = best
        pos[i] = k
        widths = with_unit(i, k)
        cur = cost.total(widths)
    # give back: raise units again while the limit stays met, most importance per cost first
    improved = True
    while improved:
        improved = False
        moves = []
        for i, p in pos.items():
            here = cost.part(widths, units[i])
            for k in range(p + 1, len(candidates[i])):
                extra = cost.part(with_unit(i, k), units[i]) - here
                gain = val(i, k) - val(i, p)
                if gain > 0 and cur + extra <= limit:
                    moves.append((-gain / max(extra, 1e-12), i, k))
        for _, i, k in sorted(moves):
            w = with_unit(i, k)
            c = cost.total(w)
            if c <= limit:
                pos[i], widths, cur, improved = k, w, c, True
                break
    return allocation_at(units, {i: candidates[i][p] for i, p in pos.items()}, importance,
                         cost, limit, sizes, power)


def allocation_at(units: Sequence[Sequence[int]], kept: dict, importance: dict,
                  cost: SeparableCost, limit: float, sizes: dict,
                  power: float = 1.0) -> Allocation:
    """The :class:`Allocation` of given kept counts: unit index -> count (units not in
    ``kept`` dense), with its cost, kept importance and value (:func:`unit_value`).

    Examples
    --------
    >>> cost = SeparableCost([CostTerm((g,), lambda w, g=g: float(w[g])) for g in (0, 1)])
    >>> al = allocation_at([[0], [1]], {0: 4}, {0: np.arange(9.0), 1: np.arange(9.0)}, cost,
    ...                    limit=12, sizes={0: 8, 1: 8})
    >>> al.widths, al.cost, al.importance
    ({0: 4, 1: 8}, 12.0, 12.0)
    """
    counts = {i: kept.get(i, max(sizes[g] for g in u)) for i, u in enumerate(units)}
    widths = {g: counts[i] for i, u in enumerate(units) for g in u}
    dense = cost.total({g: sizes[g] for u in units for g in u})
    return Allocation(widths, cost.total(widths), float(limit), dense,
                      float(sum(importance[i][n] for i, n in counts.items())),
                      float(sum(unit_value(importance[i], float(power))[n]
                                for i, n in counts.items())))


def uniform_start(unit_ids, units: Sequence[Sequence[int]], candidates: dict, sizes: dict,
                  cost: SeparableCost, limit: float, steps: int = 100) -> dict | None:
    """The uniform plan that meets ``limit``: unit index -> kept count.

    Every unit in ``unit_ids`` keeps the candidate nearest to ``(1 - r)`` of its size (ties
    up, never above the size), at the smallest ratio ``r`` of the grid ``1/steps, 2/steps,
    ...`` whose cost is at most ``limit`` (units outside ``unit_ids`` stay as they are in
    ``cost``'s dense widths). None when no ratio of the grid meets it. This is what
    a uniform ``ratio=`` keeps on the budget's groups (the same rounding when the
    candidates are every multiple of the alignment), at the least cut meeting the budget.

    Examples
    --------
    >>> cost = SeparableCost([CostTerm((g,), lambda w, g=g: float(w[g])) for g in (0, 1)])
    >>> uniform_start([0, 1], [[0], [1]], {0: [8, 16, 24, 32], 1: [16, 32, 48, 64]},
    ...               {0: 32, 1: 64}, cost, limit=72.0)
    {0: 24, 1: 48}
    """
    dense = {g: sizes[g] for u in units for g in u}
    for step in range(1, steps):
        r = step / steps
        kept, widths = {}, dict(dense)
        for i in unit_ids:
            size = max(sizes[g] for g in units[i])
            goal = (1.0 - r) * size
            kept[i] = min(candidates[i], key=lambda c, goal=goal: (abs(c - goal), -c))
            for g in units[i]:
                widths[g] = kept[i]
        if cost.total(widths) <= limit:
            return kept
    return None
