"""PruneChannels: score, plan and physically remove coupled conv/matmul channels."""

from __future__ import annotations

import tvm

from ..analysis import analyze
from ..config import PruneConfig
from ..plan import PrunePlan
from ..planner import make_plan, resolve_align
from .apply_plan import apply_plan


@tvm.transform.module_pass(opt_level=0, name="PruneChannels")
class PruneChannels:
    """Remove a fraction of the channels of every prunable channel group.

    Works inside ``tvm.transform.Sequential`` next to TVM's own passes. The result is a
    well-formed module with weights, biases, batch-norm parameters and every dependent
    constant sliced, and shapes re-inferred.

    Parameters
    ----------
    ratio : float
        Fraction of channels removed per group, in [0, 1).
    criterion : str
        Registered criterion name (``l1``, ``l2``, ``redundancy``, ``bn_scale``, ``fpgm``,
        ``random``, ...).
    align : int, optional
        Kept counts are multiples of ``align``; default from ``target``'s hardware profile
        (8 for AVX2 fp32).
    protect : sequence of str
        Producer binding names or ``"group:N"`` never pruned.
    min_channels : int
        Minimum channels a group keeps.
    plan : PrunePlan, optional
        Apply this plan instead of computing one (its fingerprint must match).
    target : tvm.target.Target or str or dict, optional
        Target whose hardware profile gives the default ``align``.
    criterion_options : dict, optional
        Extra options of the criterion.
    """

    def __init__(self, ratio=0.5, criterion="l2", align=None, protect=(), min_channels=1,
                 plan: PrunePlan | None = None, target=None, criterion_options=None,
                 seed: int = 0):
        self.config = PruneConfig(ratio=ratio, criterion=criterion, align=align,
                                  protect=tuple(protect), min_channels=min_channels,
                                  criterion_options=dict(criterion_options or {}), seed=seed)
        self.plan = plan
        self.target = target
        self.last_plan: PrunePlan | None = None
        self.last_graph = None

    def transform_module(self, mod, ctx):
        graph = analyze(mod)
        plan = self.plan
        if plan is None:
            plan = make_plan(graph, self.config, resolve_align(self.config.align, self.target))
        self.last_graph, self.last_plan = graph, plan
        return apply_plan(graph, plan)
