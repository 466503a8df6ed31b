"""PruneChannels: score, plan and physically remove coupled conv/matmul channels."""

from __future__ import annotations

import tvm

from tvm_hcprune.analysis import analyze
from tvm_hcprune.planning.config import PruneConfig, config_arg
from tvm_hcprune.planning.plan import PrunePlan
from tvm_hcprune.planning.planner import make_plan, resolve_align
from tvm_hcprune.transform.apply_plan import apply_plan


@tvm.transform.module_pass(opt_level=0, name="PruneChannels")
class PruneChannels:
    """Remove a fraction of the channels of every prunable channel group.

    Works inside ``tvm.transform.Sequential`` next to TVM's own passes. The result is a
    well-formed module with weights, biases, batch-norm parameters and every dependent
    constant sliced, and shapes re-inferred.

    Parameters
    ----------
    config : PruneConfig, dict or float, optional
        The pruning options (a float is the ``ratio``); default ``PruneConfig()``.
    plan : PrunePlan, optional
        Apply this plan instead of computing one (its fingerprint must match).
    target : tvm.target.Target or str or dict, optional
        Target whose hardware profile gives the default ``align`` (8 for AVX2 fp32).
    **overrides
        Options of :class:`~tvm_hcprune.planning.config.PruneConfig` (``ratio``,
        ``criterion``, ``align``, ``protect``, ``min_channels``, ``criterion_options``,
        ``seed``) applied over ``config``.

    Examples
    --------
    >>> seq = tvm.transform.Sequential([PruneChannels(ratio=0.3, align=8),
    ...                                 relax.transform.FoldConstant()])  # doctest: +SKIP
    >>> pruned = seq(mod)  # doctest: +SKIP
    """

    def __init__(self, config: PruneConfig | dict | float | None = None, *,
                 plan: PrunePlan | None = None, target=None, **overrides):
        self.config = PruneConfig.of(config_arg(config), **overrides)
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
