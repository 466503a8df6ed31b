"""Sensitivity-driven, non-uniform pruning: per-group ratios under a global MACs budget.

A uniform ratio removes the same share of every group, although some groups (a narrow
residual stream, the last expansion before the classifier) hurt far more than others
(the wide expansions of inverted residuals). :func:`sensitivity_scan` prunes **one group
at a time** at a few ratios, optionally reconstructs, and measures on calibration samples
how far the model's output moves from the dense model's; :func:`allocate` then chooses a
ratio per group greedily, always taking the step with the smallest output error per MAC
saved, until the plan keeps at most ``macs_target`` of the dense MACs (measured exactly with
``ChannelGraph.count_after``, so the compounding of coupled groups is accounted for).

The error is additive over groups only approximately; the result is a plan for
:func:`tvm_hcprune.prune(mod, plan=...) <tvm_hcprune.prune>`.

Error measure on the scan samples: ``rel_mse = sum ||o - o_dense||^2 / sum ||o_dense -
mean(o_dense)||^2`` of the model's first output, plus the fraction of samples whose arg-max
changed (``disagreement``). The cost of a step is ``disagreement + rel_mse``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from tvm_hcprune.errors import HCPruneError
from tvm_hcprune.planning.config import PruneConfig
from tvm_hcprune.planning.criteria import get_criterion
from tvm_hcprune.planning.plan import PrunePlan
from tvm_hcprune.planning.planner import group_align, group_views, is_protected, resolve_align
from tvm_hcprune.recovery.reconstruct import apply_and_reconstruct
from tvm_hcprune.recovery.runner import as_samples, default_runner_factory, output_error, outputs
from tvm_hcprune.utils.progress import progress_bar

__all__ = ["SensitivityTable", "allocate", "group_plan", "select_plan",
           "sensitivity_scan"]


@dataclass
class SensitivityTable:
    """Output error of the model with one group pruned, per group and ratio.

    Attributes
    ----------
    ratios : tuple of float
        The ratios scanned (0 is implied: no error).
    kept : dict
        ``{group_id: {ratio: kept_count}}``.
    cost : dict
        ``{group_id: {ratio: disagreement + rel_mse}}``.
    rel_mse, disagreement : dict
        The two parts of ``cost``, same keys.
    macs_saved : dict
        ``{group_id: {ratio: MACs saved when only this group is pruned}}``.
    criterion : str
    reconstruct : bool
    n_samples : int
    """

    ratios: tuple
    kept: dict = field(default_factory=dict)
    cost: dict = field(default_factory=dict)
    rel_mse: dict = field(default_factory=dict)
    disagreement: dict = field(default_factory=dict)
    macs_saved: dict = field(default_factory=dict)
    criterion: str = "l2"
    reconstruct: bool = False
    n_samples: int = 0

    def to_dict(self) -> dict:
        def conv(d):
            return {str(g): {str(r): v for r, v in row.items()} for g, row in d.items()}

        return {"ratios": list(self.ratios), "criterion": self.criterion,
                "reconstruct": self.reconstruct, "n_samples": self.n_samples,
                "kept": conv(self.kept), "cost": conv(self.cost),
                "rel_mse": conv(self.rel_mse), "disagreement": conv(self.disagreement),
                "macs_saved": conv(self.macs_saved)}


def group_plan(graph, counts: dict, criterion: str = "l2", calibration=None,
               criterion_options: dict | None = None, seed: int = 0,
               config: dict | None = None) -> PrunePlan:
    """A plan keeping ``counts[group_id]`` channels of each listed group (scored by
    ``criterion``; the top channels are kept, ties keep the lower index)."""
    crit = get_criterion(criterion)
    rng = np.random.default_rng(seed)
    kept, sizes = {}, {}
    counts = balanced_counts(graph, counts)
    for gid, n_keep in counts.items():
        g = graph.groups[gid]
        if g.frozen:
            raise HCPruneError(f"group {gid} is frozen ({g.frozen}); it cannot be pruned")
        n_keep = int(n_keep)
        if not 1 <= n_keep <= g.size:
            raise HCPruneError(f"group {gid}: kept count {n_keep} is not in [1, {g.size}]")
        if n_keep == g.size:
            continue
        scores = np.asarray(crit(group_views(graph, g, calibration), rng,
                                 **dict(criterion_options or {})))
        order = np.argsort(-scores, kind="stable")
        kept[gid] = np.sort(order[:n_keep])
        sizes[gid] = g.size
    return PrunePlan.create(graph.fingerprint, kept, sizes, dict(config or {}))


def balanced_counts(graph, counts: dict) -> dict:
    """``counts`` with each group's count given to every group it must stay equal to (the
    input groups of one grouped convolution, ``graph.balanced_sets``)."""
    out = dict(counts)
    for members in getattr(graph, "balanced_sets", ()):
        listed = {out[g] for g in members if g in out}
        if len(listed) > 1:
            raise HCPruneError(f"groups {members} feed one grouped convolution and must keep "
                               f"equal counts, got {sorted(listed)}")
        if listed:
            out.update({g: next(iter(listed)) for g in members})
    return out


def onnx_runner_factory(model, graph):
    """A ``runner_factory`` that runs candidates with onnxruntime instead of compiling them.

    ``make(module, plan)`` exports ``plan`` (with ``module``'s reconstructed weights) onto
    ``model`` (the ONNX model ``graph`` was analysed from; ``plan=None``: the dense model)
    and returns ``f(x) -> first output``. Much faster than a TVM build per candidate.
    """
    import onnxruntime as ort  # deferred: onnxruntime is slow to import

    name = model.graph.input[0].name

    def make(module, plan):
        out = model if plan is None else plan.apply_to_onnx(model, graph, module)
        sess = ort.InferenceSession(out.SerializeToString(),
                                    providers=["CPUExecutionProvider"])
        return lambda x: sess.run(None, {name: x})[0]

    return make


def sensitivity_scan(mod, graph, calibration, samples, ratios: Sequence[float] = (0.25, 0.5,
                     0.75), criterion: str = "l2", align: int | None = None, target=None,
                     reconstruct: bool = True, reconstruct_options: dict | None = None,
                     protect=(), runner_factory: Callable | None = None,
                     dense_outputs: np.ndarray | None = None, progress: bool = True
                     ) -> SensitivityTable:
    """Prune each group alone at each ratio and measure the output error.

    Parameters
    ----------
    mod : tvm.IRModule
        The dense module (as given to ``prune``).
    graph : ChannelGraph
        ``analyze(mod)``.
    calibration : Calibration
        ``calibrate(graph.mod, ...)`` (for data-driven criteria and reconstruction).
    samples : array ``[n, *input_shape]``, Dataset or (samples, labels)
        Inputs the error is measured on (labels are not used). Prefer samples that were
        not used to calibrate.
    ratios : sequence of float
        Ratios tried per group, each in (0, 1).
    criterion, align, target, protect
        As in :func:`tvm_hcprune.prune`.
    reconstruct : bool
        Reconstruct each single-group pruned model before measuring (as the final model
        will be).
    reconstruct_options : dict, optional
    runner_factory : callable, optional
        ``runner_factory(pruned_mod, plan) -> f(x) -> output``; default: compile for the
        host CPU with Relax's default pipeline (slow for large sweeps; e.g. export to ONNX
        and run onnxruntime instead).
    dense_outputs : array, optional
        The dense model's outputs on ``samples`` (else computed with the runner).
    progress : bool

    Returns
    -------
    SensitivityTable

    Examples
    --------
    >>> table = tvm_hcprune.sensitivity_scan(mod, graph, cal, samples)  # doctest: +SKIP
    >>> table.rel_mse  # doctest: +SKIP
    """
    arr = as_samples(samples)[0]
    if len(arr) == 0:
        raise HCPruneError("sensitivity_scan needs at least one sample")
    ratios = tuple(float(r) for r in ratios)
    if not ratios or any(not 0 < r < 1 for r in ratios):
        raise HCPruneError(f"ratios must be in (0, 1), got {ratios}")
    make = runner_factory or default_runner_factory(target)
    align_r = resolve_align(align, target)
    if dense_outputs is None:
        dense_outputs = outputs(make(mod, None), arr)
    table = SensitivityTable(ratios, criterion=criterion, reconstruct=reconstruct,
                             n_samples=len(arr))
    # the input groups of one grouped conv are scanned as one (group_plan prunes them alike)
    followers = {g for members in getattr(graph, "balanced_sets", ()) for g in members[1:]}
    groups = [g for g in graph.groups if not g.frozen and not is_protected(g, protect)
              and g.id not in followers]
    jobs = []
    for g in groups:
        seen = set()
        for r in ratios:
            n_keep = PruneConfig(ratio=r).kept_count(g.size, group_align(graph, g, align_r))
            if n_keep < g.size and n_keep not in seen:
                seen.add(n_keep)
                jobs.append((g, r, n_keep))
    for g, r, n_keep in progress_bar(jobs, enabled=progress, desc="sensitivity", leave=False):
        plan = group_plan(graph, {g.id: n_keep}, criterion, calibration)
        pruned, _ = apply_and_reconstruct(graph, plan, calibration, reconstruct,
                                          reconstruct_options)
        rel, dis = output_error(outputs(make(pruned, plan), arr), dense_outputs)
        for d, v in ((table.kept, n_keep), (table.rel_mse, rel), (table.disagreement, dis),
                     (table.cost, dis + rel), (table.macs_saved,
                                               graph.total_macs - graph.count_after(plan)[0])):
            d.setdefault(g.id, {})[r] = v
    return table


def _give_back(pos, levels, table, frac_of, counts, macs_target, frac, spent):
    """Undo greedy steps (costliest first) while the MACs budget stays met."""
    def step_cost(g):
        p = pos[g]
        prev = table.cost[g][levels[g][p - 1]] if p >= 1 else 0.0
        return table.cost[g][levels[g][p]] - prev

    changed = True
    while changed:
        changed = False
        for dc, g in sorted(((step_cost(g), g) for g, p in pos.items() if p >= 0),
                            reverse=True):
            if dc <= 0:
                break
            pos[g] -= 1
            f = frac_of(counts())
            if f <= macs_target:
                frac, spent, changed = f, spent - dc, True
                break
            pos[g] += 1
    return frac, spent


def allocate(graph, table: SensitivityTable, macs_target: float, criterion: str | None = None,
             calibration=None, max_cost: float = math.inf, give_back: bool = True
             ) -> tuple[PrunePlan, dict]:
    """Greedy per-group ratios reaching ``macs_target`` (fraction of dense MACs).

    Every group starts unpruned; each step moves one group to its next scanned ratio, the
    move with the smallest increase of scanned cost per MAC saved (moves whose cost is above
    ``max_cost`` are never taken), until the plan's exact MACs fraction is at most
    ``macs_target``. Then steps that are no longer needed are given back, costliest first,
    as long as the budget stays met (the last greedy step often overshoots: coupled groups
    save more together than their single-group savings add up to).

    Returns
    -------
    (PrunePlan, info)
        ``info``: ``{"ratios": {group: ratio}, "macs_fraction": f, "reached": bool,
        "cost": summed scanned cost}``.
    """
    if not 0 < macs_target <= 1:
        raise HCPruneError(f"macs_target must be in (0, 1], got {macs_target}")
    criterion = criterion or table.criterion
    levels = {g: sorted(row, key=lambda r: table.kept[g][r], reverse=True)
              for g, row in table.cost.items()}
    pos = {g: -1 for g in levels}  # -1: unpruned
    total = graph.total_macs

    def counts():
        return {g: table.kept[g][levels[g][p]] for g, p in pos.items() if p >= 0}

    def frac_of(cnt):
        plan = group_plan(graph, cnt, "l2") if cnt else None
        return 1.0 if plan is None else graph.count_after(plan)[0] / total

    frac, spent = 1.0, 0.0
    while frac > macs_target:
        best = None
        for g, p in pos.items():
            if p + 1 >= len(levels[g]):
                continue
            r_next = levels[g][p + 1]
            c_next = table.cost[g][r_next]
            if c_next > max_cost:
                continue
            c_now = table.cost[g][levels[g][p]] if p >= 0 else 0.0
            s_now = table.macs_saved[g][levels[g][p]] if p >= 0 else 0
            gain = table.macs_saved[g][r_next] - s_now
            if gain <= 0:
                continue
            key = (max(c_next - c_now, 0.0) / gain, g)
            if best is None or key < best[0]:
                best = (key, g, c_next - c_now)
        if best is None:
            break
        _, g, dc = best
        pos[g] += 1
        spent += dc
        frac = frac_of(counts())
    if give_back and frac <= macs_target:
        frac, spent = _give_back(pos, levels, table, frac_of, counts, macs_target, frac, spent)
    cnt = counts()
    ratios = {g: levels[g][p] for g, p in pos.items() if p >= 0}
    plan = group_plan(graph, cnt, criterion, calibration, config={
        "criterion": criterion, "budget": "sensitivity", "macs_target": macs_target,
        "group_ratios": {str(g): r for g, r in ratios.items()}})
    info = {"ratios": ratios, "macs_fraction": frac, "reached": frac <= macs_target,
            "cost": spent}
    return plan, info


def select_plan(mod, graph, table: SensitivityTable, calibration, samples, macs_target: float,
                criterion: str | None = None, margins=(1.0, 0.97, 0.94, 0.9),
                reconstruct: bool = True, reconstruct_options: dict | None = None,
                runner_factory: Callable | None = None, target=None,
                dense_outputs: np.ndarray | None = None) -> tuple[PrunePlan, dict]:
    """The best of several allocations under ``macs_target``, judged on held-out samples.

    The scan's costs add up only roughly (measured on text_direction: the allocation for
    0.67x scored 96.1% and the one for 0.60x 98.0% on 3,000 samples), so candidates are
    allocated for ``macs_target * m`` for each margin ``m``, with and without giving steps
    back, each is pruned (and reconstructed) and run on ``samples`` (inputs not used to
    calibrate), and the one closest to the dense model (fewest arg-max changes, then the
    smallest relative output error) is returned. Label-free.

    Returns
    -------
    (PrunePlan, info)
        ``info`` of :func:`allocate` for the chosen plan, plus ``"candidates"``: per
        candidate ``target, give_back, macs_fraction, disagreement, rel_mse``.

    Examples
    --------
    >>> plan, info = tvm_hcprune.select_plan(mod, graph, table, cal, x, 0.5)  # doctest: +SKIP
    >>> pruned, report = tvm_hcprune.prune(mod, plan=plan, graph=graph)  # doctest: +SKIP
    """
    arr = as_samples(samples)[0]
    make = runner_factory or default_runner_factory(target)
    if dense_outputs is None:
        dense_outputs = outputs(make(mod, None), arr)
    seen, cands, best = set(), [], None
    for m in margins:
        for gb in (True, False):
            plan, info = allocate(graph, table, macs_target * m, criterion, calibration,
                                  give_back=gb)
            key = tuple(sorted((g, len(k)) for g, k in plan.kept.items()))
            if key in seen or not info["reached"] or info["macs_fraction"] > macs_target:
                continue
            seen.add(key)
            pruned, _ = apply_and_reconstruct(graph, plan, calibration, reconstruct,
                                              reconstruct_options)
            rel, dis = output_error(outputs(make(pruned, plan), arr), dense_outputs)
            cands.append({"target": macs_target * m, "give_back": gb,
                          "macs_fraction": info["macs_fraction"], "disagreement": dis,
                          "rel_mse": rel})
            if best is None or (dis, rel) < best[0]:
                best = ((dis, rel), plan, info)
    if best is None:
        raise HCPruneError(f"no allocation reaches {macs_target} of the dense MACs with the "
                           f"scanned ratios {table.ratios}; scan larger ratios")
    _, plan, info = best
    return plan, {**info, "candidates": cands}
