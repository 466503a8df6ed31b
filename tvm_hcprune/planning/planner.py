"""Scoring and budgeting: turn a ``ChannelGraph`` and a ``PruneConfig`` into a ``PrunePlan``."""

from __future__ import annotations

import math

import numpy as np
from tvm import relax

from tvm_hcprune.errors import HCPruneError
from tvm_hcprune.hardware import profile_for
from tvm_hcprune.planning.budget import (
    allocate_widths,
    allocation_at,
    candidate_widths,
    kept_floor,
    uniform_start,
)
from tvm_hcprune.planning.config import PruneConfig
from tvm_hcprune.planning.criteria import GroupViews, get_criterion, importance_curve
from tvm_hcprune.planning.mixed import chosen_sparsity
from tvm_hcprune.planning.plan import PrunePlan

#: ``plan.config["allocation_start"]`` of a budget's candidate allocations: the knapsack's
#: (from the dense widths down), the uniform cut raised where the limit allows, and (when
#: data chooses) the uniform ratio itself, every group cut alike to any aligned width
KNAPSACK_START, UNIFORM_START, RATIO_START = "dense", "uniform", "ratio"


def member_matrix(graph, member, group_id: int) -> np.ndarray:
    """The ``(channels, k)`` slice of a member's weight that belongs to ``group_id``.

    Follows the member's descriptor: segment offsets (concat) and inner repetition
    (flatten into a matmul) map each channel to its indices along the weight axis.
    """
    call = graph.ctx.values[member.var]
    w = graph.ctx.array(call.args[member.arg])
    if member.kind == "grouped_consumer":
        w = grouped_input_view(w, *graph.ctx.group_inputs[member.var][:3])
    else:
        w = np.moveaxis(w, member.axis, 0)
    size = graph.groups[group_id].size
    rows = []
    offset = 0
    for seg in member.desc:
        if seg.space is not None and graph.space_group[seg.space] == group_id:
            part = w[offset:offset + seg.length].reshape(seg.size, -1)
            rows.append(part)
        offset += seg.length
    if not rows:
        return np.zeros((size, 0), w.dtype)
    return np.concatenate(rows, axis=1)


def grouped_input_view(w: np.ndarray, ko: int, ki: int, groups: int) -> np.ndarray:
    """A grouped conv weight seen per input channel: row ``q * cin_g + r`` holds what group
    ``q``'s output channels read from their ``r``-th input channel."""
    w = np.moveaxis(w, (ki, ko), (0, 1))
    per_in, cout = w.shape[:2]
    w = w.reshape(per_in, groups, cout // groups, -1).transpose(1, 0, 2, 3)
    return w.reshape(groups * per_in, -1)


def group_views(graph, group, calibration=None) -> GroupViews:
    by_kind = {"producer": [], "consumer": [], "scale": []}
    for m in group.members:
        kind = "consumer" if m.kind == "grouped_consumer" else m.kind
        by_kind[kind].append(member_matrix(graph, m, group.id))
    return GroupViews(group.size, by_kind["producer"], by_kind["consumer"], by_kind["scale"],
                      graph=graph, group=group, calibration=calibration)


def resolve_align(align: int | None, target=None) -> int:
    """``align`` itself, else the target's hardware profile's channel multiple (else 1)."""
    if align is not None:
        return int(align)
    return int(profile_for(target if target is not None else "llvm").channel_multiple)


def group_align(graph, group, align: int) -> int:
    """The multiple a group's kept count rounds to so that tensors keep ``align`` channels.

    Attention heads are pruned whole: align counts heads (at least one). The input groups of
    one grouped conv keep equal counts, so the tensor holds ``len(set) * unit`` channels per
    kept one and each group needs only ``align / gcd(align, len(set) * unit)``.
    """
    if group.balance is not None:
        members = graph.balanced_sets[group.balance]
        unit = max(graph.groups[i].unit for i in members)
        return max(1, align // math.gcd(align, len(members) * unit))
    return align if group.unit == 1 else max(1, align // group.unit)


def is_protected(group, protect) -> bool:
    for p in protect:
        if p == f"group:{group.id}" or p in group.producers:
            return True
    return False


def input_conv_groups(graph) -> set[int]:
    """Groups whose producers include a convolution reading the model input (directly or
    through ops without weights and with one variable operand, e.g. a normalisation)."""
    from_input = set(graph.mod["main"].params)
    values = graph.ctx.values
    for var in graph.ctx.var_order:  # bindings in order: follow the input forward
        call = values.get(var)
        if not isinstance(call, relax.Call) or var in graph.ctx.macs:
            continue
        var_args = [a for a in call.args if isinstance(a, relax.Var)]
        if len(var_args) == 1 and var_args[0] in from_input:
            from_input.add(var)
    out = set()
    for g in graph.groups:
        for m in g.members:
            call = values.get(m.var)
            if (m.kind == "producer" and isinstance(call, relax.Call)
                    and getattr(call.op, "name", "") == "relax.nn.conv2d"
                    and call.args[0] in from_input):
                out.add(g.id)
    return out


def can_narrow(graph, group, align: int, min_channels: int = 1) -> bool:
    """Whether a plan can keep fewer than all of ``group``'s channels at ``align`` (see
    :func:`group_align`) and ``min_channels`` (text_direction's first conv, 8 channels, at
    the 16-channel multiple of an AVX-512 host cannot)."""
    low = candidate_widths(group.size, group_align(graph, group, align), min_channels)[0]
    return low < group.size


def protected(graph, group, config: PruneConfig, first: set | None = None) -> bool:
    """Whether ``config`` keeps ``group`` whole: listed in ``protect``, or the first conv's
    output when ``prune_first_conv`` is False (``first`` is :func:`input_conv_groups`)."""
    if is_protected(group, config.protect):
        return True
    if config.prune_first_conv is not False:
        return False
    return group.id in (first if first is not None else input_conv_groups(graph))


def make_plan(graph, config: PruneConfig, align: int, calibration=None) -> PrunePlan:
    """Score every prunable group and keep its top channels (sorted by index).

    ``calibration`` (a :class:`~tvm_hcprune.recovery.calibration.Calibration` of ``graph.mod``) is
    handed to data-driven criteria through ``GroupViews.calibration``.
    """
    crit = get_criterion(config.criterion)
    rng = np.random.default_rng(config.seed)
    kept, sizes = {}, {}
    first = input_conv_groups(graph)

    def scores_of(g):
        scores = np.asarray(crit(group_views(graph, g, calibration), rng,
                                 **config.criterion_options))
        if scores.shape != (g.size,):
            raise ValueError(f"criterion {config.criterion!r} returned shape {scores.shape} "
                             f"for a group of {g.size} channels")
        return scores

    def keep(g, n_keep, scores):
        order = np.argsort(-scores, kind="stable")  # stable: ties keep the lower index
        kept[g.id] = np.sort(order[:n_keep])
        sizes[g.id] = g.size

    for g in graph.groups:
        if g.frozen or g.balance is not None or protected(graph, g, config, first):
            continue
        n_keep = config.kept_count(g.size, group_align(graph, g, align))
        if n_keep < g.size:
            keep(g, n_keep, scores_of(g))
    for members in getattr(graph, "balanced_sets", ()):
        groups = [graph.groups[i] for i in members]
        if any(protected(graph, g, config, first) for g in groups):
            continue
        n_keep = config.kept_count(groups[0].size, group_align(graph, groups[0], align))
        if n_keep < groups[0].size:
            for g in groups:
                keep(g, n_keep, scores_of(g))
    cfg = config.to_dict()
    cfg["align_resolved"] = align
    return PrunePlan.create(graph.fingerprint, kept, sizes, cfg)


def budget_units(graph, config: PruneConfig) -> list[list[int]]:
    """The groups a budget allocation decides on: every prunable, unprotected group alone,
    and the groups of each balanced set (one grouped convolution's inputs) together."""
    units = []
    first = input_conv_groups(graph)
    for g in graph.groups:
        if g.frozen or g.balance is not None or protected(graph, g, config, first):
            continue
        units.append([g.id])
    for members in getattr(graph, "balanced_sets", ()):
        groups = [graph.groups[i] for i in members]
        if any(g.frozen or protected(graph, g, config, first) for g in groups):
            continue
        units.append(list(members))
    return units


def make_budget_plan(graph, config: PruneConfig, align: int, cost, limit: float,
                     calibration=None, candidates_of=None, what: str = "cost",
                     fmt=lambda v: f"{v:g}", budget_record: dict | None = None,
                     unit_scale: dict | None = None, sparse_units=None, sparse_record=None,
                     choose=None, starts=None):
    """A plan whose ``cost`` (a :class:`~tvm_hcprune.planning.budget.SeparableCost` of group
    widths) is at most ``limit``, keeping the most channel importance.

    Importance is :func:`~tvm_hcprune.planning.criteria.importance_curve`: the criterion's
    scores divided by each group's mean score (so groups with differently scaled weights
    compare), a unit of several channels (an attention head) weighing its channel count,
    summed over the kept units.
    ``candidates_of(group, align)`` gives a group's allowed kept counts (default: every
    multiple of the group's alignment from ``min_channels`` up). ``unit_scale`` (unit index
    -> factor, e.g. from measured sensitivity) multiplies a unit's importance curve; an
    array instead replaces the curve (same length, e.g.
    :func:`~tvm_hcprune.recovery.guided.fitted_curve`).
    ``sparse_units`` (:class:`~tvm_hcprune.planning.mixed.SparseUnit` list, a mixed budget)
    adds each layer's kept blocks as one more unit after the channel units (``cost`` must
    read their ``key``); the plan's ``sparse`` entry is ``sparse_record`` (block, criterion)
    with the layers the allocation made block-sparse.

    With ``config.compare_uniform`` the uniform plan meeting ``limit``
    (:func:`~tvm_hcprune.planning.budget.uniform_start`, then raised where the limit allows)
    is a second candidate, and with ``choose`` a third is the uniform ratio itself: what
    ``ratio=`` keeps (every group cut alike, to any multiple of its alignment, not only the
    ``candidates_of`` widths) at the least ratio of a 1/100 grid meeting ``limit``.
    ``choose(plans) -> (index, scores)`` (e.g. the output error of each plan on calibration
    data) picks among them; without ``choose`` the one keeping more value
    (``allocation_power``) of the first two is kept. Equal plans are offered once. The
    plan's config records ``allocation_start`` (``"dense"``: the knapsack's plan,
    ``"uniform"``, ``"ratio"``) and, when ``choose`` decided, ``allocation_scores`` (see
    :func:`pick_plan`).

    ``starts`` names the allocations made: e.g. ``("dense",)`` or ``("uniform",)`` returns
    that one alone (no choice; e.g. one family of the closed loop, which corrects each by
    measurement before they are compared); default as above. Asked alone, the uniform plan
    or the ratio raises :class:`HCPruneError` when no uniform cut meets ``limit``.

    Returns ``(plan, Allocation)`` (its ``units``, ``candidates`` and ``curves`` filled);
    raises :class:`HCPruneError` when no allowed widths meet ``limit``.
    """
    crit = get_criterion(config.criterion)
    rng = np.random.default_rng(config.seed)
    units = budget_units(graph, config)
    scores, importance, candidates = {}, {}, {}
    for i, unit in enumerate(units):
        total = None
        for gid in unit:
            g = graph.groups[gid]
            s = np.asarray(crit(group_views(graph, g, calibration), rng,
                                **config.criterion_options), dtype=np.float64)
            if s.shape != (g.size,):
                raise ValueError(f"criterion {config.criterion!r} returned shape {s.shape} "
                                 f"for a group of {g.size} channels")
            scores[gid] = s
            cum = importance_curve(s, g.unit)
            total = cum if total is None else total + cum
        scale = None if unit_scale is None else unit_scale[i]
        if np.ndim(scale) == 1:  # a fitted curve replaces the criterion's
            importance[i] = np.asarray(scale, dtype=np.float64)
        else:
            importance[i] = total * (1.0 if scale is None else float(scale))
        g0 = graph.groups[unit[0]]
        ga = group_align(graph, g0, align)
        candidates[i] = (candidates_of(g0, ga) if candidates_of is not None
                         else candidate_widths(g0.size, ga, config.min_channels))
    sizes = {g.id: g.size for g in graph.groups}
    channel_units = list(units)
    for su in sparse_units or ():  # block-sparsity units, after the channel units
        candidates[len(units)] = su.candidates
        importance[len(units)] = su.curve
        units.append([su.key])
        sizes[su.key] = su.blocks
    options = {"power": float(config.allocation_power),
               "min_fraction": float(config.min_kept_fraction)}
    alloc = allocate_widths(units, candidates, importance, cost, limit, sizes, what, fmt,
                            **options)
    cfg = config.to_dict()
    cfg["align_resolved"] = align
    if budget_record is not None:
        cfg["budget"] = budget_record

    def plan_of(al, start, **extra):
        al.units, al.candidates, al.curves = channel_units, candidates, importance
        kept, plan_sizes = {}, {}
        for gid, n_keep in al.widths.items():
            if gid in scores and n_keep < sizes[gid]:
                order = np.argsort(-scores[gid], kind="stable")
                kept[gid] = np.sort(order[:n_keep])
                plan_sizes[gid] = sizes[gid]
        sparse = None
        if sparse_units:
            sparse = {**sparse_record, "layers": chosen_sparsity(sparse_units, al.widths)}
        return PrunePlan.create(graph.fingerprint, kept, plan_sizes,
                                {**cfg, "allocation_start": start, **extra}, sparse), al

    plan, alloc = plan_of(alloc, KNAPSACK_START)
    if starts is None:
        starts = ((KNAPSACK_START, UNIFORM_START) + ((RATIO_START,) if choose else ())
                  if config.compare_uniform else (KNAPSACK_START,))
    if not set(starts) <= {KNAPSACK_START, UNIFORM_START, RATIO_START} or not starts:
        raise HCPruneError(f"starts must name 'dense', 'uniform' and/or 'ratio', got "
                           f"{starts!r}")
    if not channel_units or set(starts) == {KNAPSACK_START}:
        return plan, alloc
    made = [(plan, alloc)] if KNAPSACK_START in starts else []
    ids = range(len(channel_units))
    if UNIFORM_START in starts:
        # the uniform plan meeting the limit, raised where the limit allows: it cuts every
        # group a little where the knapsack may cut a few deep
        first = uniform_start(ids, units, candidates, sizes, cost, limit)
        if first is not None:
            made.append(plan_of(allocate_widths(units, candidates, importance, cost, limit,
                                                sizes, what, fmt, start=first, **options),
                                UNIFORM_START))
    if RATIO_START in starts:
        # what ratio= keeps at the least ratio meeting the limit: the baseline itself, on
        # every aligned width (a latency table's few measured widths are the others' grid)
        every = {}
        for i, unit in enumerate(channel_units):
            g0 = graph.groups[unit[0]]
            low = kept_floor(config.min_kept_fraction, g0.size)
            every[i] = [c for c in candidate_widths(g0.size, group_align(graph, g0, align),
                                                    config.min_channels) if c >= low]
        first = uniform_start(ids, units, every, sizes, cost, limit)
        if first is not None:
            made.append(plan_of(allocation_at(units, first, importance, cost, limit, sizes,
                                              options["power"]), RATIO_START))
    distinct = {}
    for p, al in made:  # the first of equal plans
        distinct.setdefault(frozenset(al.widths.items()), (p, al))
    made = list(distinct.values())
    if not made:
        raise HCPruneError(f"no uniform cut meets the {what} budget {fmt(limit)}")
    return made[0] if len(made) == 1 else pick_plan(made, choose)


def pick_plan(candidates, choose=None):
    """One of ``candidates`` (``(plan, Allocation)`` pairs, each plan's config naming its
    ``allocation_start``): the one ``choose(plans) -> (index, scores)`` picks, recorded in
    its config as ``allocation_scores`` (start -> score); without ``choose`` the one of
    highest ``Allocation.value`` (an earlier one unless a later one is higher by more than
    a relative 1e-9).

    Examples
    --------
    >>> plan, alloc = pick_plan([(knapsack_plan, a), (uniform_plan, b)])  # doctest: +SKIP
    """
    if not candidates:
        raise HCPruneError("pick_plan needs at least one candidate plan")
    if choose is None:
        best = 0
        for i, (_plan, al) in enumerate(candidates[1:], 1):
            ref = candidates[best][1].value
            if al.value > ref + 1e-9 * max(1.0, abs(ref)):
                best = i
        return candidates[best]
    pick, by = choose([p for p, _ in candidates])
    plan, al = candidates[int(pick)]
    scores = {p.config.get("allocation_start", str(i)): float(b)
              for i, ((p, _), b) in enumerate(zip(candidates, by, strict=True))}
    return plan.with_config(allocation_scores=scores), al
