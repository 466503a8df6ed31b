"""PruneChannels: score, plan and physically remove coupled conv/matmul channels.

The pruned module carries its plan: the module attribute ``hcprune.plan`` holds the
``PrunePlan`` as JSON, so later passes in the same pipeline (``Reconstruct``) find what was
removed. The dense module the plan refers to is kept in this process, keyed by the plan's
fingerprint (:func:`original_module`): an IRModule attribute holding a module would break
TVMScript printing of the pruned one.
"""

from __future__ import annotations

import importlib

import tvm

from tvm_hcprune.analysis import analyze
from tvm_hcprune.errors import HCPruneError, warn
from tvm_hcprune.hardware.target import parse_target
from tvm_hcprune.planning.budget import (
    BudgetUnreachable,
    Latency,
    MACs,
    as_budget,
    macs_cost,
    params_cost,
)
from tvm_hcprune.planning.config import PruneConfig, config_arg
from tvm_hcprune.planning.mixed import SparseOptions, mixed_units
from tvm_hcprune.planning.plan import PrunePlan
from tvm_hcprune.planning.planner import (
    KNAPSACK_START,
    RATIO_START,
    UNIFORM_START,
    make_budget_plan,
    make_plan,
    pick_plan,
    resolve_align,
)
from tvm_hcprune.transform.apply_plan import (
    PLAN_ATTR,
    apply_plan,
    attach_plan,
    module_plan,
    original_module,
)

__all__ = ["PLAN_ATTR", "PruneChannels", "attach_plan", "budget_plan", "module_plan",
           "original_module"]

def budget_plan(graph, config: PruneConfig, align: int, budget, target=None,
                latency_model=None, calibration=None, rescale=None, sparse=None,
                choose=None):
    """``(plan, predicted, dense predicted, latency model, rescale info)`` meeting
    ``budget``.

    For :class:`~tvm_hcprune.planning.budget.Latency` budgets the latency model defaults
    to :class:`tvm_hcprune.latency.MeasuredLatency` (a table measured on ``target``, then
    the plan corrected by measuring the pruned model; imported when needed: the latency
    package compiles and times, above this layer). A model with ``for_graph`` (such a
    specification) is turned into its table here. The latency figures are None for MACs
    and parameter budgets.

    ``rescale(alloc) -> (unit_scale, info)``, optional, re-weights the groups' importance
    after the first allocation (the sensitivity scan of
    :func:`tvm_hcprune.recovery.guided.unit_scales`, which runs the model and so lives
    above this layer); the plan is then made again with those scales. ``info`` is returned
    last (None without ``rescale``).

    The first conv (the one reading the model input) keeps its width under every budget
    unless ``config.prune_first_conv`` is True: its ``None`` default means False here.

    ``choose(plans) -> (index, scores)``, optional, picks among the knapsack's plan, the
    uniform one and the uniform ratio (``config.compare_uniform``, see
    :func:`~tvm_hcprune.planning.planner.make_budget_plan`), e.g. by their output error on
    calibration data; with ``rescale`` it decides only on the re-weighted allocation. With
    the closed loop (a latency model with ``refine_plans`` and ``refine`` > 0) each of them
    is first corrected by measurement (:meth:`~tvm_hcprune.latency.MeasuredLatency.refine_plans`)
    and ``choose`` compares their measured results, so the choice is made at equal measured
    latency; a plan within the loop's tolerance is preferred to one that is not.

    ``sparse`` (:class:`~tvm_hcprune.planning.mixed.SparseOptions`, Latency budgets on CPU
    targets) makes the budget mixed: every layer the BSR kernel can run may also keep only
    some of its weight blocks, at the levels the build runs on BSR; the latency model's
    BSR times (measured when the table is measured here) and the block scores enter the
    same knapsack (:mod:`tvm_hcprune.planning.mixed`), and the plan records the layers'
    sparsity.

    Examples
    --------
    >>> plan, *_ = budget_plan(analyze(mod), PruneConfig(), 8, MACs(fraction=0.5))
    ... # doctest: +SKIP
    """
    budget = as_budget(budget)
    if config.prune_first_conv is None:  # budgets protect the first conv unless asked
        config = PruneConfig.of(config, prune_first_conv=False)
    record = {"kind": type(budget).__name__, **budget.__dict__}
    sparse = SparseOptions.of(sparse)
    units, block = mixed_units(graph, sparse, budget, target)
    sparse_kw = {} if sparse is None else {"sparse_levels": sparse.levels, "block": block}
    if isinstance(budget, Latency):
        tgt = target if target is not None else "llvm"
        record["target"] = str(parse_target(tgt))  # the target whose latency the plan meets
        model = latency_model
        if model is None:  # measured here, with the closed loop
            model = importlib.import_module("tvm_hcprune.latency").MeasuredLatency()
        spec = model if hasattr(model, "for_graph") else None
        if spec is not None:
            model = spec.for_graph(graph, tgt, align, config.min_channels, **sparse_kw)
        model.check(graph, tgt)
        cost = model.cost(graph, {u.layer: (u.key, u.blocks) for u in units})
        dense = cost.total({g.id: g.size for g in graph.groups})
        limit = budget.limit(dense)
        if limit >= dense:
            raise HCPruneError(f"the latency budget {budget.describe()} is not below the dense "
                               f"model's {dense:.4g} ms: nothing needs pruning")

        kwargs = {"candidates_of": lambda g, a: model.candidates_of(g, a, config.min_channels),
                  "what": "latency", "fmt": lambda v: f"{v:.4g} ms"}
    else:
        model = spec = None
        if isinstance(budget, MACs):
            cost, dense, what = macs_cost(graph), graph.total_macs, "MACs"
        else:
            cost, dense, what = params_cost(graph), graph.total_params, "params"
        limit = budget.limit(dense)
        total = dense
        kwargs = {"what": what, "fmt": lambda v: f"{v / total:.3f}x ({v:.4g})"}
    scales, info = None, None

    # with the closed loop and compare_uniform, the knapsack's and the uniform allocation
    # are corrected by measurement each on its own and compared after (equal measured
    # latency): the table's plans are made one by one, with no choice at the table's limit
    families = (spec is not None and getattr(spec, "refine", 0) > 0
                and hasattr(spec, "refine_plans") and config.compare_uniform)

    def replan(lim, starts=(KNAPSACK_START,) if families else None):
        rec = record if scales is None else {**record, "allocation": "sensitivity"}
        return make_budget_plan(graph, config, align, cost, lim, calibration,
                                budget_record=rec, unit_scale=scales, sparse_units=units,
                                sparse_record={"block": block,
                                               "criterion": getattr(sparse, "criterion", "")},
                                choose=choose if rescale is None or scales is not None
                                else None, starts=starts, **kwargs)

    try:
        plan, alloc = replan(limit)
    except BudgetUnreachable as err:
        if spec is None or not getattr(spec, "refine", 0):
            raise
        # the table's prediction is not the last word: the closed loop measures the
        # smallest plan, and keeps it only when the measurement meets the budget
        unmet, limit = err, err.reachable
        plan, alloc = replan(limit)
    else:
        unmet = None
    if rescale is not None:
        scales, info = rescale(alloc)
        scales = scales or None
        if scales is not None:
            plan, alloc = replan(limit)
    if model is None:
        return plan, None, None, None, info
    if families:
        plan = _refine_families(spec, graph, budget, tgt, replan, plan, limit, dense, choose)
    elif spec is not None:
        plan = spec.refine_plan(graph, budget, tgt, replan, plan, limit, dense)
    if spec is not None:
        loop = plan.config.get("closed_loop") or []
        tol = getattr(spec, "tolerance", 0.0)
        best = loop[plan.config.get("closed_loop_pick", -1)] if loop else None
        if unmet is not None and best is not None and best["error"] > tol:
            raise HCPruneError(
                f"{unmet}, predicted by the latency table; measured, the smallest plan "
                f"runs at {best['measured_fraction']:.3f}x the dense model's "
                f"{best['dense_ms']:.4g} ms, above the budget {budget.describe()}")
        if best is not None and abs(best["error"]) > tol:
            warn(
                f"the closed loop ended {100 * best['error']:+.1f}% from the goal of the "
                f"budget {budget.describe()} (tolerance {100 * tol:.0f}%) after {len(loop)} "
                f"measured step(s): the plan runs at {best['measured_fraction']:.3f}x the dense "
                f"model's {best['dense_ms']:.4g} ms; more steps (MeasuredLatency(refine=...)) "
                f"or an idle host may land closer")
    return plan, model.predict(graph, plan), dense, model, info


def _refine_families(spec, graph, budget, target, replan, plan, limit, dense, choose):
    """The closed loop over the knapsack's plan (``plan``), the uniform one and, with
    ``choose``, the uniform ratio (when its table plan differs from theirs),
    then the choice between their measured results
    (:func:`~tvm_hcprune.planning.planner.pick_plan`: ``choose``, else the higher value); a
    plan within the loop's tolerance of the goal is preferred to one that is not."""
    starts, plans = [KNAPSACK_START], [plan]
    for start in (UNIFORM_START, RATIO_START) if choose is not None else (UNIFORM_START,):
        try:
            p = replan(limit, (start,))[0]
        except HCPruneError:
            continue  # no uniform cut meets the limit: not this family
        if start == UNIFORM_START or all(_plan_key(p) != _plan_key(q) for q in plans):
            starts.append(start)  # the ratio: a family unless its table plan is another's
            plans.append(p)
    replans = [lambda lim, s=s: replan(lim, (s,)) for s in starts]
    finals = spec.refine_plans(graph, budget, target, replans, plans, limit, dense)
    tol = getattr(spec, "tolerance", 0.0)

    def error(p):
        return p.config["closed_loop"][p.config["closed_loop_pick"]]["error"]

    met = [i for i, p in enumerate(finals) if abs(error(p)) <= tol]
    pool = met or list(range(len(finals)))
    keys = {}
    for i in pool:  # one entry per distinct plan
        keys.setdefault(_plan_key(finals[i]), i)
    pool = sorted(keys.values())
    if len(pool) == 1:
        return finals[pool[0]]
    # each final plan's allocation (its value), re-made at the limit it was planned at
    allocs = [replan(finals[i].config["closed_loop"][finals[i].config["closed_loop_pick"]]
                     ["limit_ms"], (starts[i],))[1] for i in pool]
    plan, _alloc = pick_plan([(finals[i], a) for i, a in zip(pool, allocs, strict=True)],
                             choose)
    return plan


def _plan_key(plan) -> tuple:
    """What tells plans apart: the kept channels and the block-sparse layers."""
    return (tuple(sorted(plan.kept.items())), tuple(sorted(plan.sparse_layers.items())))


@tvm.transform.module_pass(opt_level=0, name="PruneChannels")
class PruneChannels:
    """Remove channels of the prunable channel groups: a uniform ratio, or per-group widths
    that meet a budget.

    Works inside ``tvm.transform.Sequential`` next to TVM's own passes. The result is a
    well-formed module with weights, biases, batch-norm parameters and every dependent
    constant sliced, and shapes re-inferred. It carries the plan as the ``hcprune.plan``
    attribute (JSON), which ``Reconstruct`` later in the pipeline reads.

    Parameters
    ----------
    config : PruneConfig, dict or float, optional
        The pruning options (a float is the ``ratio``); default ``PruneConfig()``.
    plan : PrunePlan, optional
        Apply this plan instead of computing one (its fingerprint must match).
    budget : Latency, MACs or Params, optional
        Pick per-group widths meeting the budget (see :func:`tvm_hcprune.prune`).
    target : tvm.target.Target or str or dict, optional
        Target whose hardware profile gives the default ``align`` (8 for AVX2 fp32), and
        where a Latency budget's kernels are timed.
    latency_model : LatencyModel, optional
        For Latency budgets (default: a table measured on ``target``, cached on disk).
    sparse : bool, dict or SparseOptions
        With a Latency budget: mix channel pruning and block sparsity per layer (see
        :func:`tvm_hcprune.prune`); default off.
    **overrides
        Options of :class:`~tvm_hcprune.planning.config.PruneConfig` (``ratio``,
        ``criterion``, ``align``, ``protect``, ``prune_first_conv``, ``min_channels``,
        ``criterion_options``, ``seed``) applied over ``config``.

    Notes
    -----
    Protect rules: ``protect`` groups, ``min_channels`` and the model's outputs (the
    classifier's logits are never pruned) apply to ratios and budgets alike. The first conv
    (reading the model input) is protected under a ``budget`` by default (its
    ``prune_first_conv=None`` means False there): it is cheap, and the input information it
    drops no later layer can recover. A uniform ``ratio`` prunes it by default, as before
    budgets existed, so existing ratio plans are unchanged; ``prune_first_conv=False``
    protects it there too, ``prune_first_conv=True`` prunes it under a budget.

    Examples
    --------
    >>> seq = tvm.transform.Sequential([PruneChannels(ratio=0.3, align=8),
    ...                                 relax.transform.FoldConstant()])  # doctest: +SKIP
    >>> pruned = seq(mod)  # doctest: +SKIP
    >>> seq = tvm.transform.Sequential([
    ...     PruneChannels(budget=tvm_hcprune.MACs(fraction=0.5), target="llvm"),
    ...     tvm_hcprune.recovery.reconstruct.Reconstruct(samples)])  # doctest: +SKIP
    """

    def __init__(self, config: PruneConfig | dict | float | None = None, *,
                 plan: PrunePlan | None = None, budget=None, target=None,
                 latency_model=None, sparse=False, **overrides):
        if budget is not None and plan is not None:
            raise HCPruneError("pass either plan= or budget=, not both")
        if budget is not None and "ratio" in overrides:
            raise HCPruneError("pass either ratio= or budget=, not both")
        self.config = PruneConfig.of(config_arg(config), **overrides)
        self.plan = plan
        self.budget = as_budget(budget)
        self.target = target
        self.latency_model = latency_model
        self.sparse = SparseOptions.of(sparse)
        if self.sparse is not None and self.budget is None:
            raise HCPruneError("sparse=True needs a latency budget: pass "
                               "budget=Latency(fraction=...) too")
        self.last_plan: PrunePlan | None = None
        self.last_graph = None

    def transform_module(self, mod, ctx):
        graph = analyze(mod)
        plan = self.plan
        align = resolve_align(self.config.align, self.target)
        if plan is None and self.budget is not None:
            plan = budget_plan(graph, self.config, align, self.budget, self.target,
                               self.latency_model, sparse=self.sparse)[0]
        elif plan is None:
            plan = make_plan(graph, self.config, align)
        self.last_graph, self.last_plan = graph, plan
        return attach_plan(apply_plan(graph, plan), graph, plan)
