"""``prune(mod, ...) -> (mod, report)``: the one-liner over analysis, planning and rewrite."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from .analysis import ChannelGraph, FrozenRecord, analyze
from .config import PruneConfig
from .plan import PrunePlan
from .planner import make_plan, resolve_align
from .transform.apply_plan import apply_plan


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


def prune(mod, ratio: float = 0.5, criterion: str = "l2", align: int | None = None,
          target=None, protect=(), min_channels: int = 1, plan: PrunePlan | None = None,
          criterion_options: dict | None = None, seed: int = 0,
          graph: ChannelGraph | None = None, calibration=None, reconstruct: bool = False,
          reconstruct_options: dict | None = None):
    """Prune ``mod`` and report what changed.

    Parameters
    ----------
    mod : tvm.IRModule
        Relax module with static shapes and constant weights.
    ratio, criterion, align, protect, min_channels, criterion_options, seed
        See :class:`~tvm_hcprune.config.PruneConfig`.
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
        (:func:`tvm_hcprune.transform.reconstruct.reconstruct`); the outcome per layer is
        ``report.reconstruction``.
    reconstruct_options : dict, optional
        Keyword options of the reconstruction (``ridge``, ``max_cond``, ``holdout``...).

    Returns
    -------
    (tvm.IRModule, PruneReport)
    """
    t0 = time.perf_counter()
    config = PruneConfig(ratio=ratio, criterion=criterion, align=align, protect=tuple(protect),
                         min_channels=min_channels,
                         criterion_options=dict(criterion_options or {}), seed=seed)
    graph = graph if graph is not None else analyze(mod)
    align_r = resolve_align(config.align, target)
    if plan is None:
        plan = make_plan(graph, config, align_r, calibration=calibration)
    pruned = apply_plan(graph, plan)
    recon = None
    if reconstruct:
        from .errors import HCPruneError
        from .transform.reconstruct import reconstruct as _reconstruct

        if calibration is None:
            raise HCPruneError("reconstruct=True needs calibration data: pass "
                               "calibration=tvm_hcprune.calibrate(mod, samples)")
        pruned, recon = _reconstruct(pruned, graph, plan, calibration,
                                     **dict(reconstruct_options or {}))
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
