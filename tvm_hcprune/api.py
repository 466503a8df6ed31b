"""``prune(mod, ...) -> (mod, report)``: the one-liner over analysis, planning and rewrite."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

from tvm_hcprune.analysis import ChannelGraph, FrozenRecord, analyze
from tvm_hcprune.errors import CollapsedModelWarning, HCPruneError, warn
from tvm_hcprune.hardware import profile_for
from tvm_hcprune.hardware.sparse_cost import choose_format
from tvm_hcprune.latency.layers import layer_specs
from tvm_hcprune.planning.budget import Latency, MACs, as_budget
from tvm_hcprune.planning.config import PruneConfig, config_arg
from tvm_hcprune.planning.mixed import SparseOptions, layer_weight_kn
from tvm_hcprune.planning.plan import PrunePlan
from tvm_hcprune.planning.planner import (
    KNAPSACK_START,
    RATIO_START,
    UNIFORM_START,
    can_narrow,
    input_conv_groups,
    make_plan,
    protected,
    resolve_align,
)
from tvm_hcprune.recovery.guided import (
    CachedRunners,
    ProbeMemo,
    choose_plan,
    output_agreement,
    prepare_calibration,
    unit_scales,
)
from tvm_hcprune.recovery.reconstruct import ReconstructConfig, apply_and_reconstruct
from tvm_hcprune.transform.prune_channels import attach_plan, budget_plan

#: the least held-out samples the choice between two plans is scored on (fewer: the fit
#: samples)
MIN_CHOICE_SAMPLES = 8
#: the most held-out samples it is scored on (text direction at 0.34x latency, 1,024
#: calibration lines, 256 held out: the first 64 chose a plan 4.5 pt above the uniform
#: ratio's top-1 at equal latency, all 256 one 3.6 pt above; one run each)
MAX_CHOICE_SAMPLES = 64
#: how reports name a budget's candidate plans (``plan.config["allocation_start"]``)
_START_NAMES = {KNAPSACK_START: "knapsack", UNIFORM_START: "uniform allocation",
                RATIO_START: "uniform ratio"}


@dataclass(frozen=True)
class _Retry:
    """What planning a collapsed budget's plan again with the first conv prunable gave:
    ``planned`` (``budget_plan``'s five results) and ``finished`` (module, reconstruction,
    agreement) when that plan does not collapse, else ``failed``: why it did not help."""

    failed: str | None = None
    planned: tuple | None = None
    finished: tuple | None = None


@dataclass
class GroupChange:
    id: int
    producers: list[str]
    before: int
    after: int


@dataclass
class LayerChange:
    """One conv/matmul layer: channels and the latency model's milliseconds, dense and
    pruned."""

    name: str
    op: str
    cin_before: int
    cin_after: int
    cout_before: int
    cout_after: int
    ms_before: float
    ms_after: float
    sparsity: float = 0.0  # fraction of weight blocks zeroed (mixed budgets)
    format: str = "dense"  # "dense" or "bsr": what the build runs the pruned layer as
    why: str = ""  # why that format (mixed budgets)


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
    budget: object = None  # the Latency / MACs / Params record when prune(budget=...)
    predicted_ms: float | None = None  # latency model's prediction (latency budgets)
    dense_predicted_ms: float | None = None
    layers: list = field(default_factory=list)  # LayerChange rows (latency budgets)
    latency_source: str = ""  # "table" or "roofline model" (latency budgets)
    allocation: str = "criterion"  # "criterion" or "sensitivity"
    #: agreement with the dense model on held-out calibration samples (prune with data):
    #: n, correlation, max_abs_error, rel_mse[, top1_agreement[, top1_dense, top1_pruned]]
    agreement: dict | None = None
    sensitivity: dict | None = None  # per-group output error of the sensitivity scan
    calibration: dict | None = None  # source, fit_samples, held_out_samples

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
            "budget": None if self.budget is None else self.budget.describe(),
            "predicted_ms": self.predicted_ms, "dense_predicted_ms": self.dense_predicted_ms,
            "latency_source": self.latency_source,
            "layers": [c.__dict__ for c in self.layers],
            "allocation": self.allocation, "agreement": self.agreement,
            "sensitivity": self.sensitivity, "calibration": self.calibration,
            "reconstruction": (None if self.reconstruction is None
                               else self.reconstruction.to_dict()),
        }

    def to_markdown(self, measured_ms: tuple[float, float] | None = None) -> str:
        """The report as Markdown: totals, the budget, per-group and per-layer widths,
        predicted (and, when given, measured) latency, frozen groups with reasons.

        Parameters
        ----------
        measured_ms : (float, float), optional
            Measured latency of the dense and the pruned model (e.g. from
            :func:`tvm_hcprune.latency.measure.measure_models`), shown beside the prediction.

        Examples
        --------
        >>> print(report.to_markdown())  # doctest: +SKIP
        """
        def row(*cells):
            return "| " + " | ".join(str(c) for c in cells) + " |"

        out = ["# Pruning report", ""]
        if self.budget is not None:
            out += [f"Budget: **{self.budget.describe()}**"
                    + (f" (latency from the {self.latency_source})" if self.latency_source
                       else ""), ""]
        out += [row("", "dense", "pruned", "ratio"), row("---", "---:", "---:", "---:"),
                row("MACs (M)", f"{self.macs_before / 1e6:.2f}", f"{self.macs_after / 1e6:.2f}",
                    f"{self.macs_fraction:.3f}"),
                row("params (M)", f"{self.params_before / 1e6:.3f}",
                    f"{self.params_after / 1e6:.3f}", f"{self.params_fraction:.3f}")]
        if self.predicted_ms is not None:
            out.append(row("latency, predicted (ms)", f"{self.dense_predicted_ms:.4f}",
                           f"{self.predicted_ms:.4f}",
                           f"{self.predicted_ms / self.dense_predicted_ms:.3f}"))
        if measured_ms is not None:
            d, p = measured_ms
            out.append(row("latency, measured (ms)", f"{d:.4f}", f"{p:.4f}", f"{p / d:.3f}"))
        out += ["", f"{sum(g.after != g.before for g in self.groups)} of {len(self.groups)} "
                f"channel groups pruned, widths multiples of {self.align}; allocation by "
                f"{self.allocation}" + (f"; {choice}" if (choice := self.choice()) else "")
                + ".", ""]
        out += self._agreement_markdown(row)
        out += ["## Channel groups", "", row("group", "producers", "before", "after"),
                row("---:", "---", "---:", "---:")]
        for g in self.groups:
            prods = ", ".join(g.producers[:3]) + (" ..." if len(g.producers) > 3 else "")
            out.append(row(g.id, prods, g.before, g.after))
        mixed = any(c.why for c in self.layers)
        if self.layers:
            head = ["layer", "op", "in", "out", "ms dense", "ms pruned"]
            align = ["---", "---", "---:", "---:", "---:", "---:"]
            if mixed:  # a mixed budget: per layer its block sparsity and format, and why
                head, align = head + ["sparsity", "format", "why"], align + ["---:", "---",
                                                                             "---"]
                sparse = [c.name for c in self.layers if c.format == "bsr"]
                cut = [c.name for c in self.layers
                       if c.cin_after < c.cin_before or c.cout_after < c.cout_before]
                out += ["", f"Mixed budget: block-sparse (BSR) layers: "
                        f"{', '.join(sparse) or 'none'}; layers with channels cut: "
                        f"{', '.join(cut) or 'none'}."]
            out += ["", "## Layers", "", row(*head), row(*align)]
            for c in self.layers:
                cells = [c.name, c.op.replace("relax.", ""),
                         f"{c.cin_before} -> {c.cin_after}",
                         f"{c.cout_before} -> {c.cout_after}",
                         f"{c.ms_before:.4f}", f"{c.ms_after:.4f}"]
                if mixed:
                    cells += [f"{c.sparsity:.0%}", c.format.upper() if c.format == "bsr"
                              else c.format, c.why]
                out.append(row(*cells))
        if self.frozen:
            out += ["", "## Frozen groups", "", row("group", "op", "at", "reason"),
                    row("---:", "---", "---", "---")]
            for f in self.frozen:
                out.append(row(f.group, f.op, f.var, f.reason))
        return "\n".join(out) + "\n"

    def collapse_warning(self) -> str | None:
        """The warning for a pruned model whose outputs on the held-out samples no longer
        depend on the input (``agreement["collapsed"]``), else None."""
        a = self.agreement
        if not a or not a.get("collapsed"):
            return None
        ratio = self.plan.config.get("ratio")
        what = (self.budget.describe() if self.budget is not None
                else "this plan" if ratio is None else f"ratio {ratio:g}")
        retry = self.plan.config.get("first_conv_retry_failed")
        tried = (f" (planned again with the first conv pruned too: {retry})" if retry
                 else "")
        return (f"the pruned model has collapsed at {what}: on the {a['n']} held-out "
                f"calibration samples {a['collapsed']}{tried}; prune less (a larger budget "
                f"or a smaller ratio), or check that the calibration data is what the model "
                f"sees in use")

    def _agreement_markdown(self, row) -> list[str]:
        out = []
        if self.agreement is not None:
            a, c = self.agreement, self.calibration or {}
            out += ["## Agreement with the dense model", "",
                    f"On {a['n']} held-out calibration samples ({c.get('source', '')}; "
                    f"{c.get('fit_samples', '?')} others calibrated).", "",
                    row("measure", "value"), row("---", "---:"),
                    row("output correlation", f"{a['correlation']:.4f}"),
                    row("max abs error", f"{a['max_abs_error']:.4g}"),
                    row("relative MSE", f"{a['rel_mse']:.4g}")]
            if "top1_agreement" in a:
                out.append(row("top-1 agreement", f"{a['top1_agreement']:.3f}"))
            if "top1_dense" in a:
                out.append(row("top-1 dense / pruned",
                               f"{a['top1_dense']:.3f} / {a['top1_pruned']:.3f}"))
            out.append("")
            if warning := self.collapse_warning():
                out += [f"**Warning**: {warning}", ""]
        rec = self.reconstruction
        if rec is not None:
            n_ok = len(rec.layers) - len(rec.fallbacks)
            line = f"Reconstruction: {n_ok} of {len(rec.layers)} consumer layers re-fitted"
            if rec.guard is not None:
                line += ("; the model guard REVERTED to the plainly pruned model" if
                         rec.reverted else "; kept by the model guard")
            out += [line + ".", ""]
        return out

    def choice(self) -> str | None:
        """Which candidate plan the calibration data kept and every candidate's error
        against the dense output (:func:`~tvm_hcprune.recovery.guided.choose_plan`, on the
        held-out samples), or None when none was chosen so (no data, no budget, or one
        plan).

        Examples
        --------
        >>> report.choice()  # doctest: +SKIP
        "the uniform ratio's plan kept (error against the dense output: knapsack 1.406, ...)"
        """
        scores = self.plan.config.get("allocation_scores")
        if not scores:
            return None
        start = self.plan.config.get("allocation_start")
        each = ", ".join(f"{_START_NAMES.get(k, k)} {v:.3f}" for k, v in scores.items())
        return (f"the {_START_NAMES.get(start, start)}'s plan kept (error against the dense "
                f"output: {each})")

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
        if self.budget is not None:
            lines.append(f"budget {self.budget.describe()}")
        if self.predicted_ms is not None:
            lines.append(f"latency {self.dense_predicted_ms:10.3f} ms -> "
                         f"{self.predicted_ms:10.3f} ms predicted "
                         f"({self.predicted_ms / self.dense_predicted_ms:.2f}x)")
        if self.agreement is not None:
            a = self.agreement
            lines.append(f"agreement with dense on {a['n']} held-out samples: correlation "
                         f"{a['correlation']:.4f}, max |err| {a['max_abs_error']:.3g}"
                         + (f", top-1 agreement {a['top1_agreement']:.3f}"
                            if "top1_agreement" in a else "")
                         + f" (allocation by {self.allocation})")
            if choice := self.choice():
                lines.append(choice)
            if warning := self.collapse_warning():
                lines.append(f"WARNING: {warning}")
            if retry := self.plan.config.get("first_conv_retry"):
                lines.append(f"the first conv is pruned too: with it kept whole, {retry}")
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
          reconstruct: bool | None = None, reconstruct_options=None, budget=None,
          latency_model=None, preprocess=None, allocation: str = "auto", sparse=False,
          progress: bool = False, **overrides):
    """Prune ``mod`` and report what changed.

    Parameters
    ----------
    mod : tvm.IRModule
        Relax module with static shapes and constant weights.
    config : PruneConfig, dict or float, optional
        The pruning options (a float is the ``ratio``); default ``PruneConfig()``.
    **overrides
        Options of :class:`~tvm_hcprune.planning.config.PruneConfig` (``ratio``,
        ``criterion``, ``align``, ``protect``, ``prune_first_conv``, ``min_channels``,
        ``criterion_options``, ``seed``) applied over ``config``.
    target : optional
        Target whose hardware profile gives the default ``align``.
    plan : PrunePlan, optional
        Apply this plan instead of computing one.
    graph : ChannelGraph, optional
        A previous ``analyze(mod)`` result to reuse.
    calibration : data or Calibration, optional
        **Data** (an array ``[N, *input_shape]``, a list of arrays, ``{input_name: array}``,
        a :class:`~tvm_hcprune.zoo.datasets.Dataset` or ``(samples, labels)``, a ``.npz`` /
        ``.npy`` path or a folder of images, see
        :func:`~tvm_hcprune.recovery.data.calibration_data`) turns on the accuracy-aware
        default: a quarter of the samples (at most 256) is held out, the analysed module is
        calibrated on the rest, the allocation is sensitivity-guided (``allocation``),
        reconstruction with its model-level guard is on, and ``report.agreement`` measures
        the pruned against the dense model on the held-out samples. A
        :class:`~tvm_hcprune.recovery.calibration.Calibration` (``tvm_hcprune.calibrate``)
        is only handed to data-driven criteria and to ``reconstruct=True``; one made on
        ``mod`` before analysis is redone on the analysed module from its samples.
    reconstruct : bool, optional
        Re-fit the pruned consumers by least squares on the calibration
        (:func:`tvm_hcprune.recovery.reconstruct.reconstruct`); the outcome per layer is
        ``report.reconstruction``. Default: on when ``calibration`` is data.
    reconstruct_options : ReconstructConfig or dict, optional
        Options of the reconstruction (``ridge``, ``max_cond``, ``holdout``...; see
        :class:`~tvm_hcprune.recovery.reconstruct.ReconstructConfig`).
    budget : Latency, MACs or Params, optional
        Choose per-group widths (instead of the uniform ``ratio``) so that the model's
        latency, MACs or parameters are at most the budget while the most channel
        importance (the criterion's scores) is kept; ``protect`` and ``min_channels`` apply,
        and the first conv keeps its width unless ``prune_first_conv=True`` (a uniform
        ``ratio`` prunes it unless ``prune_first_conv=False``). With ``compare_uniform``
        (default) the uniform plan meeting the same budget (every group the same share,
        channels then given back where the budget holds) is a second candidate, and with
        calibration data the uniform ratio meeting it (what ``ratio=`` keeps) a third: with
        data the one whose output (reconstructed and guarded, when reconstruction is on) is
        closer to the dense model's on the held-out samples (at most
        ``MAX_CHOICE_SAMPLES``; the fit samples when fewer than ``MIN_CHOICE_SAMPLES`` are
        held out; see :func:`~tvm_hcprune.recovery.guided.choose_plan`) is kept
        (``report.plan.config["allocation_start"]`` and ``["allocation_scores"]``), without
        data the one of the first two keeping more value (``allocation_power``).
    latency_model : LatencyModel, optional
        For :class:`Latency` budgets: a table from :func:`tvm_hcprune.latency_table` (must
        match ``target`` and the model) or a :class:`~tvm_hcprune.latency.RooflineModel`.
        Default: a table measured on ``target`` (cached on disk).
    preprocess : ImagePreprocess or dict, optional
        How a folder of images given as ``calibration`` becomes model inputs (mean, std,
        size, resize, channels, layout: :class:`~tvm_hcprune.recovery.data.ImagePreprocess`).
    allocation : {"auto", "sensitivity", "criterion"}
        How widths are chosen: ``"criterion"``, by the criterion's scores (the uniform
        ``ratio``, or the budget's knapsack over them); ``"sensitivity"`` (needs data), the
        budget's knapsack (a ``ratio`` becomes the MACs budget of its uniform plan) with each
        group's importance scaled by the output error measured when it alone is pruned
        (:mod:`tvm_hcprune.recovery.guided`); ``"auto"``: sensitivity when ``calibration`` is
        data, else criterion.
    sparse : bool, dict or SparseOptions
        A mixed budget (with a :class:`Latency` budget on a CPU target): every matmul with a
        constant weight and every 1x1 convolution may also keep only part of its weight
        blocks (block sparsity, run on the BSR kernel by :func:`tvm_hcprune.build`), chosen
        in the same knapsack as the widths by importance lost per millisecond saved (see
        :mod:`tvm_hcprune.planning.mixed`); the latency table then holds the layers' BSR
        times too. ``True``: sparsities 0.5, 0.7 and 0.9 with the target's block; a dict or
        :class:`~tvm_hcprune.planning.mixed.SparseOptions` sets ``levels``, ``block``,
        ``criterion``, ``layers``. The plan records each layer's sparsity
        (``plan.sparse``), the channels are removed and then the blocks zeroed, and
        ``report.layers`` says per layer the widths, sparsity, format and why. Default off.
    progress : bool
        Show the long steps on stderr: a bar over the sensitivity scan (the single-group
        prunings of a sensitivity allocation) and a line when a collapsed plan is planned
        again with the first conv prunable (the latency table and its closed loop say their
        own, per ``latency_model``). The CLI turns it on. Default off.

    Returns
    -------
    (tvm.IRModule, PruneReport)

    Examples
    --------
    >>> pruned, report = tvm_hcprune.prune(mod, ratio=0.5, criterion="l2")  # doctest: +SKIP
    >>> print(report.summary())  # doctest: +SKIP
    >>> pruned, report = tvm_hcprune.prune(mod, budget=tvm_hcprune.Latency(fraction=0.5),
    ...                                    target="llvm")  # doctest: +SKIP
    >>> pruned, report = tvm_hcprune.prune(mod, budget=tvm_hcprune.MACs(fraction=0.5),
    ...                                    calibration="calib.npz")  # doctest: +SKIP
    >>> print(report.agreement)  # doctest: +SKIP
    """
    t0 = time.perf_counter()
    budget = as_budget(budget)
    if budget is not None and plan is not None:
        raise HCPruneError("pass either plan= or budget=, not both")
    if budget is not None and "ratio" in overrides:
        raise HCPruneError("pass either ratio= or budget=, not both")
    sparse = SparseOptions.of(sparse)
    if sparse is not None and not isinstance(budget, Latency):
        raise HCPruneError("sparse=True mixes channel pruning and block sparsity under a "
                           "latency budget: pass budget=Latency(fraction=...) (or ms=...)")
    if allocation not in ("auto", "sensitivity", "criterion"):
        raise HCPruneError(f"allocation must be auto, sensitivity or criterion, got "
                           f"{allocation!r}")
    config = PruneConfig.of(config_arg(config), **overrides)
    graph = graph if graph is not None else analyze(mod)
    align_r = resolve_align(config.align, target)
    fit = held = None
    if calibration is not None:
        calibration, fit, held = prepare_calibration(calibration, graph.mod, preprocess,
                                                     seed=config.seed)
    with_data = fit is not None
    if allocation == "auto":
        allocation = "sensitivity" if with_data and plan is None else "criterion"
    if allocation == "sensitivity" and not with_data:
        raise HCPruneError("allocation='sensitivity' needs calibration data (arrays, a .npz, "
                           "an image folder or a Dataset) as calibration=")
    if allocation == "sensitivity" and plan is not None:
        raise HCPruneError("allocation='sensitivity' chooses a plan: do not pass plan=")
    first_conv_default = config.prune_first_conv is None
    if allocation == "sensitivity" and config.prune_first_conv is None:
        config = PruneConfig.of(config, prune_first_conv=False)  # the default protect rule
    if reconstruct is None:
        reconstruct = with_data
    runners = CachedRunners() if with_data else None
    options = reconstruct_options
    if reconstruct and held is not None:  # the model-level guard on the held-out samples
        options = ReconstructConfig.of(reconstruct_options, guard_samples=held.samples,
                                       runner_factory=runners)
    guide = choose = None
    fit_samples = fit.samples[:min(len(fit), 64)] if with_data else None
    if allocation == "sensitivity":
        guide = {"samples": fit_samples, "runners": runners, "progress": progress,
                 "memo": ProbeMemo()}  # probes measured once per call (the retry reuses them)
    if with_data:  # the knapsack's, uniform or ratio plan: the one closest to the dense model,
        # reconstructed (and guarded) as it will be returned, on held-out samples (the
        # reconstruction is fitted on the others, where deep cuts look better than they are)
        score_samples = (held.samples[:MAX_CHOICE_SAMPLES]
                         if held is not None and len(held) >= MIN_CHOICE_SAMPLES else fit_samples)

        def choose(plans):
            return choose_plan(graph, plans, score_samples, runners, lambda p: (
                apply_and_reconstruct(graph, p, calibration, reconstruct, options)[0]))
    predicted = dense_pred = None
    layers, source, sens_info = [], "", None

    def plan_budget(cfg, how=budget, mixed=sparse):  # budget_plan's five results
        return budget_plan(graph, cfg, align_r, how, target, latency_model, calibration,
                           _sensitivity(graph, cfg, calibration, guide), mixed, choose)

    if budget is None and plan is None and allocation == "sensitivity":
        uniform = make_plan(graph, config, align_r, calibration=calibration)
        frac = graph.count_after(uniform)[0] / max(graph.total_macs, 1)
        if uniform.kept and 0.0 < frac < 1.0:  # the ratio's MACs, spent where it hurts least
            plan, *_rest, sens_info = plan_budget(config, MACs(fraction=frac), None)
        else:
            plan = uniform

    def finish(p):  # the pruned module, its reconstruction, its agreement on held-out data
        m, r = apply_and_reconstruct(graph, p, calibration, reconstruct, options)
        a = None if held is None else output_agreement(
            runners.outputs(graph.mod, held.samples), runners.outputs(m, held.samples),
            held.labels)
        return m, r, a

    model = None
    if budget is not None:
        plan, predicted, dense_pred, model, sens_info = plan_budget(config)
    elif plan is None:
        plan = make_plan(graph, config, align_r, calibration=calibration)
    pruned, recon, agreement = finish(plan)
    if (budget is not None and first_conv_default and agreement is not None
            and agreement["collapsed"]):
        retry = _retry_first_conv(graph, config, align_r, plan, plan_budget, finish,
                                  agreement["collapsed"], progress)
        if retry is not None and retry.failed:  # tried, and no better: the warning says so
            plan = plan.with_config(first_conv_retry_failed=retry.failed)
        elif retry is not None:  # recorded: why the first plan was replaced
            p2, predicted, dense_pred, model, sens_info = retry.planned
            plan = p2.with_config(first_conv_retry=agreement["collapsed"])
            pruned, recon, agreement = retry.finished
    if model is not None:
        layers, source = _layer_changes(graph, plan, model, sparse, target), model.source
    pruned = attach_plan(pruned, graph, plan)
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
    report.budget, report.predicted_ms, report.dense_predicted_ms = budget, predicted, dense_pred
    report.layers, report.latency_source = layers, source
    report.allocation, report.agreement, report.sensitivity = allocation, agreement, sens_info
    if fit is not None:
        report.calibration = {"source": fit.source, "fit_samples": len(fit),
                              "held_out_samples": 0 if held is None else len(held)}
    if warning := report.collapse_warning():
        warn(warning, CollapsedModelWarning)
    return pruned, report


def _retry_first_conv(graph, config, align, plan, plan_budget, finish, reason: str,
                      progress: bool = False) -> _Retry | None:
    """The budget planned again with the first conv prunable, after ``plan`` (made under
    the default protect rule, the first conv kept whole) collapsed on the held-out samples.

    ``plan_budget(config)`` makes a budget's plan (``budget_plan``'s five results),
    ``finish(plan)`` prunes, reconstructs and measures agreement. Returns None when no
    first conv could narrow (at ``align``, not in ``protect``), else a :class:`_Retry`: the
    new plan's results when its output does not collapse, or why the retry did not help.
    With ``progress`` a line on stderr names ``reason`` (the first plan's collapse) when
    the retry starts.
    """
    cfg = PruneConfig.of(config, prune_first_conv=True)
    first = [g for g in input_conv_groups(graph) - set(plan.kept)
             if can_narrow(graph, graph.groups[g], align, cfg.min_channels)
             and not protected(graph, graph.groups[g], cfg)]
    if not first:
        return None
    if progress:
        print(f"the plan collapsed ({reason}): planning the budget again with the first conv "
              f"prunable", file=sys.stderr, flush=True)
    try:
        again = plan_budget(cfg)
    except HCPruneError as err:
        return _Retry(failed=f"no plan with it pruned meets the budget ({err})")
    done = finish(again[0])
    if done[2]["collapsed"]:
        return _Retry(failed=f"that plan has collapsed too ({done[2]['collapsed']})")
    return _Retry(planned=again, finished=done)


def _layer_changes(graph, plan, model, sparse=None, target=None) -> list[LayerChange]:
    sg = graph.space_group
    dense = {g.id: g.size for g in graph.groups}
    after = {**dense, **{g: len(k) for g, k in plan.kept.items()}}
    chosen = plan.sparse_layers
    profile = profile_for(target if target is not None else "llvm")
    rows = []
    for spec in layer_specs(graph):
        ci, co = spec.lengths(sg, dense)
        ci2, co2 = spec.lengths(sg, after)
        s = chosen.get(spec.name, 0.0)
        row = LayerChange(spec.name, spec.op, ci, ci2, co, co2, model.layer_ms(spec, ci, co),
                          model.sparse_ms(spec, s, ci2, co2), s)
        if sparse is not None:
            row.format, row.why = _format_why(spec, s, ci2, co2, model, sparse, profile)
        rows.append(row)
    return rows


def _format_why(spec, s, cin, cout, model, sparse, profile) -> tuple[str, str]:
    """A mixed plan's format of one layer and why (the latency model's figures)."""
    dense_ms = model.layer_ms(spec, cin, cout)
    src = model.bsr_source(spec)
    if s > 0.0:
        fmt, build_why = choose_format(1.0 - s, profile)
        return fmt, (f"{s:.0%} of its blocks zeroed: BSR {model.bsr_ms(spec, s, cin, cout):.4f}"
                     f" ms vs dense {dense_ms:.4f} ms ({src}); build: {build_why}")
    if spec.fixed or spec.depthwise or layer_weight_kn(spec.call) is None:
        return "dense", "no BSR kernel for this layer (only matmuls and 1x1 convs)"
    if sparse.layers is not None and spec.name not in sparse.layers:
        return "dense", "not among the layers allowed to go block-sparse"
    faster = [lv for lv in sparse.levels if choose_format(1.0 - lv, profile)[0] == "bsr"
              and model.bsr_ms(spec, lv, cin, cout) < dense_ms]
    if not faster:
        return "dense", (f"BSR not faster than dense {dense_ms:.4f} ms at any of "
                         f"{', '.join(f'{lv:.0%}' for lv in sparse.levels)} ({src})")
    return "dense", (f"BSR would save time from {min(faster):.0%} sparsity ({src}), but "
                     "narrowing channels lost less importance per ms saved")



def _sensitivity(graph, config, calibration, guide):
    """The ``rescale`` hook of :func:`~tvm_hcprune.transform.prune_channels.budget_plan`
    for sensitivity-guided allocation (None without ``guide``: ``{"samples", "runners"}``
    for :func:`~tvm_hcprune.recovery.guided.unit_scales`, optionally ``"progress"`` and
    ``"memo"``)."""
    if guide is None:
        return None
    return lambda alloc: unit_scales(graph, alloc, config, calibration, guide["samples"],
                                     guide["runners"], progress=guide.get("progress", False),
                                     memo=guide.get("memo"))
