"""``prune(mod, ...) -> (mod, report)``: the one-liner over analysis, planning and rewrite."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from tvm_hcprune.analysis import ChannelGraph, FrozenRecord, analyze
from tvm_hcprune.planning.config import PruneConfig, config_arg
from tvm_hcprune.planning.plan import PrunePlan
from tvm_hcprune.planning.planner import make_plan, resolve_align
from tvm_hcprune.recovery.reconstruct import apply_and_reconstruct


@dataclass
class GroupChange:
    id: int
    producers: list[str]
    before: int
    after: int


@dataclass
class PruneReport:
    """What a pruning run did.

    Attributes
    ----------
    plan : PrunePlan
    groups : list of GroupChange
        Channels before/after per group (all groups, pruned or not).
    macs_before, macs_after, params_before, params_after : int
    frozen : list of FrozenRecord
        Groups that could not be pruned, with the op and the reason.
    seconds : float
        Wall time of analysis + planning + rewrite.
    align : int
        The channel multiple kept counts were rounded to.

    Examples
    --------
    >>> pruned, report = tvm_hcprune.prune(mod, ratio=0.5)  # doctest: +SKIP
    >>> print(report.summary()); report.macs_fraction  # doctest: +SKIP
    """

    plan: PrunePlan
    groups: list[GroupChange]
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    frozen: list[FrozenRecord] = field(default_factory=list)
    seconds: float = 0.0
    align: int = 1
    reconstruction: object = None  # ReconstructReport when prune(reconstruct=True)

    @property
    def macs_fraction(self) -> float:
        return self.macs_after / self.macs_before if self.macs_before else 1.0

    @property
    def params_fraction(self) -> float:
        return self.params_after / self.params_before if self.params_before else 1.0

    def to_dict(self) -> dict:
        return {
            "plan": self.plan.to_dict(),
            "groups": [g.__dict__ for g in self.groups],
            "macs_before": self.macs_before, "macs_after": self.macs_after,
            "params_before": self.params_before, "params_after": self.params_after,
            "frozen": [f.__dict__ for f in self.frozen],
            "seconds": self.seconds, "align": self.align,
        }

    def summary(self) -> str:
        pruned = [g for g in self.groups if g.after != g.before]
        lines = [
            f"pruned {len(pruned)} of {len(self.groups)} channel groups (align {self.align}) "
            f"in {self.seconds:.2f} s",
            f"MACs   {self.macs_before / 1e6:10.2f} M -> {self.macs_after / 1e6:10.2f} M "
            f"({self.macs_fraction:.2f}x)",
            f"params {self.params_before / 1e6:10.3f} M -> {self.params_after / 1e6:10.3f} M "
            f"({self.params_fraction:.2f}x)",
        ]
        frozen_groups = sorted({f.group for f in self.frozen})
        if frozen_groups:
            lines.append(f"{len(frozen_groups)} frozen group(s):")
            seen = set()
            for f in self.frozen:
                if f.group in seen:
                    continue
                seen.add(f.group)
                lines.append(f"  group {f.group}: {f.op} at {f.var}: {f.reason}")
        return "\n".join(lines)


def prune(mod, config: PruneConfig | dict | float | None = None, *, target=None,
          plan: PrunePlan | None = None, graph: ChannelGraph | None = None, calibration=None,
          reconstruct: bool = False, reconstruct_options=None, **overrides):
    """Prune ``mod`` and report what changed.

    Parameters
    ----------
    mod : tvm.IRModule
        Relax module with static shapes and constant weights.
    config : PruneConfig, dict or float, optional
        The pruning options (a float is the ``ratio``); default ``PruneConfig()``.
    **overrides
        Options of :class:`~tvm_hcprune.planning.config.PruneConfig` (``ratio``,
        ``criterion``, ``align``, ``protect``, ``min_channels``, ``criterion_options``,
        ``seed``) applied over ``config``.
    target : optional
        Target whose hardware profile gives the default ``align``.
    plan : PrunePlan, optional
        Apply this plan instead of computing one.
    graph : ChannelGraph, optional
        A previous ``analyze(mod)`` result to reuse.
    calibration : Calibration, optional
        ``tvm_hcprune.calibrate`` of ``mod`` (or of ``analyze(mod).mod``): used by
        data-driven criteria (``activation``, ``apoz``, ``thinet``) and by ``reconstruct``.
    reconstruct : bool
        Re-fit the pruned consumers by least squares on ``calibration``
        (:func:`tvm_hcprune.recovery.reconstruct.reconstruct`); the outcome per layer is
        ``report.reconstruction``.
    reconstruct_options : ReconstructConfig or dict, optional
        Options of the reconstruction (``ridge``, ``max_cond``, ``holdout``...; see
        :class:`~tvm_hcprune.recovery.reconstruct.ReconstructConfig`).

    Returns
    -------
    (tvm.IRModule, PruneReport)

    Examples
    --------
    >>> pruned, report = tvm_hcprune.prune(mod, ratio=0.5, criterion="l2")  # doctest: +SKIP
    >>> print(report.summary())  # doctest: +SKIP
    """
    t0 = time.perf_counter()
    config = PruneConfig.of(config_arg(config), **overrides)
    graph = graph if graph is not None else analyze(mod)
    align_r = resolve_align(config.align, target)
    if plan is None:
        plan = make_plan(graph, config, align_r, calibration=calibration)
    pruned, recon = apply_and_reconstruct(graph, plan, calibration, reconstruct,
                                          reconstruct_options)
    seconds = time.perf_counter() - t0
    macs_after, params_after = graph.count_after(plan)
    changes = []
    for g in graph.groups:
        kept = plan.kept.get(g.id)
        changes.append(GroupChange(g.id, g.producers, g.size,
                                   g.size if kept is None else len(kept)))
    report = PruneReport(plan, changes, graph.total_macs, macs_after,
                         graph.total_params, params_after, list(graph.frozen),
                         seconds, align_r)
    report.reconstruction = recon
    return pruned, report
