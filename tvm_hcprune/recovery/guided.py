"""What ``prune(mod, calibration=data)`` runs when it is given data: calibration of the
module it analyses, per-unit sensitivity that scales the budget allocation's importance,
and the agreement of the pruned with the dense model on held-out samples.

Sensitivity here is the cheap, budget-aware form of :func:`sensitivity_scan`: a first
allocation by the criterion's scores picks a width per unit (a group, or the input groups
of one grouped convolution); each unit is then pruned *alone* to that width (units the
first allocation left dense: to the candidate nearest half their size) and the model's
output error on calibration samples is measured (``rel_mse + disagreement``, as the scan).
The unit's importance curve is scaled so that the importance lost at the scanned width
equals the measured error, and the allocation is run again: groups whose pruning moves
the output little give up channels first. One compile and run per unit and probed width.
By default (``PruneConfig.sensitivity_probes=2``) a unit is also probed at the deepest
width the budget may take, and its curve is fitted through both errors
(:func:`fitted_curve`): one probe at half width undervalued wide groups that collapse when
cut deep (text direction: three 200-channel groups cut to 16).
"""

from __future__ import annotations

import time

import numpy as np

from tvm_hcprune.errors import HCPruneError
from tvm_hcprune.planning.budget import kept_floor
from tvm_hcprune.planning.planner import RATIO_START, UNIFORM_START
from tvm_hcprune.recovery.calibration import Calibration, calibrate
from tvm_hcprune.recovery.data import calibration_data, split_holdout
from tvm_hcprune.recovery.runner import compile_module, output_error, runner_for
from tvm_hcprune.recovery.sensitivity import group_plan
from tvm_hcprune.transform.apply_plan import apply_plan
from tvm_hcprune.utils.progress import progress_bar

__all__ = ["CachedRunners", "ProbeMemo", "centred_correlation", "choose_plan", "collapse_reason",
           "fitted_curve", "output_agreement", "prepare_calibration", "unit_scales"]


class CachedRunners:
    """``make(module, plan) -> runner``, compiling each module (by identity) once.

    Parameters
    ----------
    target : optional
        Host CPU target (default: the host).

    Examples
    --------
    >>> make = CachedRunners()  # doctest: +SKIP
    >>> y = make(mod, None)(x)  # doctest: +SKIP
    """

    def __init__(self, target=None):
        self.target = target
        self._cache: list = []
        self._outs: dict = {}

    def __call__(self, module, plan=None):
        for m, r in self._cache:
            if m.same_as(module):
                return r
        r = runner_for(compile_module(module, self.target))
        self._cache.append((module, r))
        return r

    def outputs(self, module, samples: np.ndarray, keep: bool = True) -> list[np.ndarray]:
        """Every output of ``module`` on each sample, stacked per output (cached unless
        ``keep`` is False: a one-off module)."""
        for m, _key, outs in self._outs.get(id(samples), ()):
            if m.same_as(module):
                return outs
        run = self(module) if keep else runner_for(compile_module(module, self.target))
        per = [run.outputs(x) for x in samples]
        outs = [np.stack([p[i] for p in per]) for i in range(len(per[0]))]
        if keep:
            self._outs.setdefault(id(samples), []).append((module, samples, outs))
        return outs


def prepare_calibration(calibration, mod, preprocess=None, holdout: float = 0.25,
                        max_fit: int = 512, seed: int = 0):
    """``(Calibration of mod, fit data or None, held-out data or None)`` from what
    ``prune(calibration=...)`` was given.

    A :class:`Calibration` of ``mod`` is used as it is. One made on another module (e.g.
    ``calibrate(mod)`` before ``analyze(mod)`` rewrote it) is redone on ``mod`` from the
    samples it remembers (same rows and seed); one loaded from a file without them raises.
    Anything else is calibration data (:func:`~tvm_hcprune.recovery.data.calibration_data`):
    a held-out slice is set aside and ``mod`` is calibrated on (at most ``max_fit`` of) the
    rest.
    """
    if isinstance(calibration, Calibration):
        if calibration.matches(mod):
            return calibration, None, None
        samples = getattr(calibration, "samples", None)
        if samples is None:
            raise HCPruneError(
                "the calibration was made on another module than the one prune analyses "
                "(analyze(mod).mod) and does not hold its samples (loaded from a file?): "
                "pass the samples instead, prune(mod, calibration=samples), or calibrate "
                "analyze(mod).mod")
        meta = calibration.meta
        cal = calibrate(mod, samples, max_rows=int(meta.get("max_rows", 4096)),
                        max_bytes=int(meta.get("max_bytes", 2**30)),
                        seed=int(meta.get("seed", 0)), progress=False)
        return cal, None, None
    data = calibration_data(calibration, mod, preprocess)
    fit, held = split_holdout(data, holdout, seed=seed)
    if len(fit) > max_fit:
        fit = fit.take(np.arange(max_fit))
    return calibrate(mod, fit.samples, max_rows=4096, seed=seed, progress=False), fit, held


def output_agreement(dense: list[np.ndarray], pruned: list[np.ndarray],
                     labels: np.ndarray | None = None) -> dict:
    """How close the pruned model's outputs are to the dense model's on the same samples.

    Parameters
    ----------
    dense, pruned : list of numpy.ndarray
        Per model output, ``[n, *output_shape]``.
    labels : numpy.ndarray, optional
        Class indices: adds ``top1_dense`` and ``top1_pruned``.

    Returns
    -------
    dict
        ``n``; ``correlation`` (Pearson, all outputs flattened; the lowest over outputs);
        ``max_abs_error`` and ``rel_mse`` (first output); for classifiers (first output one
        score per class) ``top1_agreement`` (arg-max equal to the dense one), with labels
        ``top1_dense`` and ``top1_pruned``; ``collapsed``: None, or why the pruned outputs no
        longer depend on the input (:func:`collapse_reason`).

    Examples
    --------
    >>> a = [np.eye(3)[None]]
    >>> output_agreement(a, a)["correlation"]
    1.0
    """
    out = {"n": int(len(dense[0]))}
    corr = []
    for d, p in zip(dense, pruned, strict=True):
        d = np.asarray(d, np.float64).ravel()
        p = np.asarray(p, np.float64).ravel()
        if not np.isfinite(p).all():
            corr.append(float("nan"))
        elif d.std() == 0 or p.std() == 0:
            corr.append(1.0 if np.array_equal(d, p) else 0.0)
        else:
            corr.append(float(np.corrcoef(d, p)[0, 1]))
    out["correlation"] = float(min(corr))
    d0, p0 = np.asarray(dense[0]), np.asarray(pruned[0])
    out["max_abs_error"] = float(np.abs(d0.astype(np.float64) - p0).max())
    out["rel_mse"] = float(output_error(p0, d0)[0])
    pd = _top1(d0)
    if pd is not None:
        pp = p0.reshape(len(p0), -1).argmax(1)
        out["top1_agreement"] = float(np.mean(pd == pp))
        if labels is not None:
            out["top1_dense"] = float(np.mean(pd == labels))
            out["top1_pruned"] = float(np.mean(pp == labels))
    out["collapsed"] = collapse_reason(dense, pruned)
    return out


def collapse_reason(dense: list[np.ndarray], pruned: list[np.ndarray]) -> str | None:
    """Why the pruned model's outputs no longer depend on its input, or None when they do.

    Collapsed: an output that varies from sample to sample in the dense model is the same for
    every sample in the pruned one (its spread below 1e-6 of the dense spread), or a
    classifier's pruned arg-max is one class for every sample where the dense model's most
    frequent class covers at most half of them (a two-class model at chance; on a few
    held-out samples a model just above chance can look so too: the text-direction
    classifier's uniform ratio 0.5, one class on 24 held-out lines, kept 0.594 on 1,000).

    Parameters
    ----------
    dense, pruned : list of numpy.ndarray
        Per model output, ``[n, *output_shape]``, on the same samples (at least two).

    Returns
    -------
    str or None
        The reason, in words, for a message.

    Examples
    --------
    >>> d = [np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0], [0.0, 3.0]])]
    >>> collapse_reason(d, d) is None
    True
    >>> collapse_reason(d, [np.ones_like(d[0])])
    'output 0 is the same for every sample: it no longer depends on the input'
    >>> collapse_reason(d, [d[0] * [1.0, 0.0] + [0.0, 9.0]])[:40]
    'every sample is given class 1 (the dense'
    """
    for i, (d, p) in enumerate(zip(dense, pruned, strict=True)):
        d = np.asarray(d, np.float64).reshape(len(d), -1)
        p = np.asarray(p, np.float64).reshape(len(p), -1)
        if len(d) < 2 or not np.isfinite(p).all():
            continue
        spread = float(d.std(0).max())
        if spread > 0 and float(p.std(0).max()) <= 1e-6 * spread:
            return f"output {i} is the same for every sample: it no longer depends on the input"
    pd = _top1(dense[0])
    if pd is not None and len(pd) >= 2:
        pp = np.asarray(pruned[0]).reshape(len(pd), -1).argmax(1)
        classes, counts = np.unique(pd, return_counts=True)
        if len(np.unique(pp)) == 1 and 2 * counts.max() <= len(pd):
            return (f"every sample is given class {int(pp[0])} (the dense model: "
                    f"{len(classes)} classes, the most frequent on {counts.max()} of {len(pd)}): "
                    f"it no longer tells the classes apart")
    return None


def _top1(out) -> np.ndarray | None:
    """Per-sample arg-max of a classifier's output ``[n, ..., C]`` (one score per class:
    nothing but the class axis beyond the sample axis has more than one element), else
    None."""
    out = np.asarray(out)
    per = out.reshape(len(out), -1)
    if per.shape[1] > 1 and per.shape[1] == out.shape[-1]:
        return per.argmax(1)
    return None


def _probe_widths(cands: list, first: int, size: int, floor: int, probes: int) -> list:
    """The widths a unit is pruned to alone: the first allocation's (half the size when it
    left the unit dense) and, with ``probes=2``, the deepest candidate the budget may take
    (at or above ``floor``), or half the size when the first width is already that deep."""
    if first >= size:
        first = min(cands, key=lambda c: abs(c - size / 2))
    widths = [first]
    if probes > 1:
        allowed = [c for c in cands if c >= floor] or cands[-1:]
        other = allowed[0] if allowed[0] < first else min(
            (c for c in cands if c > first), key=lambda c: abs(c - size / 2), default=first)
        if other != first:
            widths.append(other)
    return sorted(widths)


def fitted_curve(curve: np.ndarray, errors: dict) -> np.ndarray:
    """The importance curve whose loss equals the measured error at each probed width.

    The loss ``L(k) = curve[-1] - curve[k]`` is scaled by ``errors[w] / L(w)`` at each
    probed width ``w``, by the nearest probe's factor beyond the probed range and by the
    linearly interpolated factor between probes (there clipped to the two probes' errors);
    the scaled loss is then made non-increasing in ``k`` (a channel kept never costs
    output: a deeper probe that measured less than a wider one is raised to it) and turned
    back into a curve (``[0] == 0``, non-decreasing).

    Parameters
    ----------
    curve : numpy.ndarray
        ``curve[k]``: importance kept with ``k`` channels (non-decreasing, ``[0] == 0``).
    errors : dict
        Probed width -> measured output error (positive).

    Returns
    -------
    numpy.ndarray

    Examples
    --------
    >>> c = fitted_curve(np.arange(9.0), {4: 2.0, 2: 12.0})  # losses 4 and 6 measured 2, 12
    >>> [round(float(c[-1] - c[k]), 2) for k in (8, 6, 4, 3, 2, 0)]
    [0.0, 1.0, 2.0, 6.25, 12.0, 16.0]
    """
    curve = np.asarray(curve, dtype=np.float64)
    loss = curve[-1] - curve
    ws = sorted(errors)
    factors = [float(errors[w]) / max(float(loss[w]), 1e-12) for w in ws]
    scaled = loss * np.interp(np.arange(len(curve)), ws, factors)
    for lo, hi in zip(ws[:-1], ws[1:], strict=True):  # between two probes, within their errors
        lims = sorted((float(errors[lo]), float(errors[hi])))
        scaled[lo:hi + 1] = np.clip(scaled[lo:hi + 1], *lims)
    scaled = np.maximum.accumulate(scaled[::-1])[::-1]
    return scaled[0] - scaled


class ProbeMemo:
    """Sensitivity probe errors kept across :func:`unit_scales` calls.

    A probe is keyed by its unit's groups, its width and its scope: the graph, the
    criterion, its options and seed, the calibration and the samples (the objects keyed by
    identity are kept alive here, so their ids are not reused while the memo lives).

    Attributes
    ----------
    errors : dict
        ``(unit groups, width, scope) -> error``.

    Examples
    --------
    >>> memo = ProbeMemo()
    >>> memo.errors
    {}
    """

    def __init__(self):
        self.errors: dict = {}
        self._alive: dict = {}

    def scope(self, graph, config, calibration, samples) -> tuple:
        """The scope key of probes on ``graph`` with ``config``'s criterion (its options and
        seed), ``calibration`` and ``samples``."""
        key = (id(graph), config.criterion, repr(config.criterion_options), config.seed,
               id(calibration), id(samples))
        self._alive[key] = (graph, calibration, samples)
        return key


def unit_scales(graph, alloc, config, calibration, samples: np.ndarray, runners: CachedRunners,
                progress: bool = False, memo: ProbeMemo | None = None) -> tuple[dict, dict]:
    """Importance scale per allocation unit from single-unit pruning (see the module docs).

    With ``config.sensitivity_probes == 2`` (the default) a unit with more than one
    candidate below its size is also pruned alone to a second width (the deepest the
    budget may take, or half its size when the first is that deep), and its importance
    curve is replaced by :func:`fitted_curve` through both measured errors: a wide group
    that loses little at half width but collapses when cut deep is valued for that.

    Parameters
    ----------
    graph : ChannelGraph
    alloc : Allocation
        The criterion-only allocation (its ``units``, ``candidates`` and ``curves``).
    config : PruneConfig
        Criterion and its options, ``sensitivity_probes`` and ``min_kept_fraction``.
    calibration : Calibration
        For data-driven criteria.
    samples : numpy.ndarray
        Inputs the output error is measured on.
    runners : CachedRunners
    progress : bool
        A bar over the probes (stderr).
    memo : ProbeMemo, optional
        Probe errors measured before, kept across calls: a probe found there is not pruned
        and run again. ``prune`` passes one memo to every scan of a call, so the first-conv
        retry measures only the probes its new allocation changed.

    Returns
    -------
    (scales, info)
        ``scales``: unit index -> factor, or a fitted importance curve (units probed at two
        widths); ``info``: ``{"errors": {group: error}, "widths": {group: scanned width},
        "probes": {group: {width: error}}, "samples": n, "seconds": s, "reused": r}``
        (``errors`` and ``widths``: the shallower probe; ``reused``: probes taken from
        ``memo``).

    Examples
    --------
    >>> memo = ProbeMemo()
    >>> scales, info = unit_scales(graph, alloc, config, cal, xs, CachedRunners(),
    ...                            memo=memo)  # doctest: +SKIP
    >>> again = unit_scales(graph, alloc, config, cal, xs, CachedRunners(), memo=memo)
    ... # doctest: +SKIP
    >>> again[1]["reused"] == sum(len(p) for p in info["probes"].values())  # doctest: +SKIP
    True
    """
    t0 = time.perf_counter()
    dense = runners.outputs(graph.mod, samples)[0]
    probes = int(config.sensitivity_probes)
    jobs = []
    for i, unit in enumerate(alloc.units):
        size = graph.groups[unit[0]].size
        cands = [c for c in alloc.candidates[i] if c < size]
        if not cands:
            continue
        floor = kept_floor(config.min_kept_fraction, size)
        for w in _probe_widths(cands, alloc.widths[unit[0]], size, floor, probes):
            jobs.append((i, unit, w))
    measured: dict = {}
    memo = ProbeMemo() if memo is None else memo
    scope = memo.scope(graph, config, calibration, samples)
    keys = [(tuple(unit), w, scope) for _i, unit, w in jobs]
    reused = sum(k in memo.errors for k in keys)
    todo = [(j, k) for j, k in zip(jobs, keys, strict=True) if k not in memo.errors]
    for (_i, unit, w), key in progress_bar(todo, enabled=progress and bool(todo),
                                           desc="sensitivity", leave=False):
        plan = group_plan(graph, {g: w for g in unit}, config.criterion, calibration,
                          config.criterion_options, config.seed)
        pruned = apply_plan(graph, plan)
        outs = runners.outputs(pruned, samples, keep=False)[0]
        rel, dis = output_error(outs, dense)
        memo.errors[key] = rel + dis if np.isfinite(rel) else 1e6
    for (i, _unit, w), key in zip(jobs, keys, strict=True):
        measured.setdefault(i, {})[w] = memo.errors[key]
    scales = {}
    if measured:
        floor = 1e-3 * max(max(max(m.values()) for m in measured.values()), 1e-12)
        for i, m in measured.items():
            curve, w = alloc.curves[i], max(m)  # the shallower probe
            scales[i] = max(m[w], floor) / max(float(curve[-1] - curve[w]), 1e-12)
        med = float(np.median(list(scales.values())))
        for i, m in measured.items():
            if len(m) > 1:
                scales[i] = fitted_curve(alloc.curves[i],
                                         {w: max(e, floor) for w, e in m.items()})
        for i in range(len(alloc.units)):
            scales.setdefault(i, med)
    info = {"errors": {int(alloc.units[i][0]): float(m[max(m)]) for i, m in measured.items()},
            "widths": {int(alloc.units[i][0]): int(max(m)) for i, m in measured.items()},
            "probes": {int(alloc.units[i][0]): {int(w): float(e) for w, e in m.items()}
                       for i, m in measured.items()},
            "samples": int(len(samples)), "seconds": round(time.perf_counter() - t0, 2),
            "reused": int(reused)}
    return scales, info


def choose_plan(graph, plans, samples: np.ndarray, runners: CachedRunners,
                make=None) -> tuple[int, list]:
    """The plan whose pruned model's output is closest to the dense model's on ``samples``.

    The error is ``min(rel_mse, 1) + disagreement`` of the first output (top-1
    disagreement with the dense model; ties keep the earlier plan). A relative MSE of 1 is
    what a constant output at the dense output's mean scores: at or beyond it an output
    explains none of the dense one, and the MSE would only rank how far it strays, which
    prefers an output collapsed to a constant over one that still agrees on more samples;
    so the disagreement decides there (text direction at 0.40x latency: a collapsed plan,
    rel_mse 1.00, disagreement 0.50, test top-1 0.50, against rel_mse 1.71, disagreement
    0.46, test top-1 0.56).

    A dead output (collapsed, :func:`collapse_reason`, or a classifier's giving one class to
    every sample where the dense model gives more than one) scores ``1 + disagreement``
    whatever its MSE: a near-constant output can sit just below a relative MSE of 1 while
    its top-1 decisions no longer depend on the input. Text direction at 0.32x latency (Zen 4,
    1,024 calibration lines, 64 held-out lines scored): the knapsack's plan gave one class to
    every held-out line (the dense model: 38 and 26), relative MSE 0.984 and 26
    disagreements, 1.3903 with ``min(rel_mse, 1)``, below the uniform ratio's 1.3906 (25
    disagreements, MSE past 1, two classes); on 1,000 test lines the knapsack's plan scored
    0.500 (every line one class), the uniform ratio 0.635.

    Plans whose errors tie (within ``1e-9``: on a two-class model two collapsed plans both
    score ``1 + 0.5``) are told apart first by whether their output is live (a live plan is
    kept over a dead one that agrees as often), then by :func:`centred_correlation` with the
    dense output, the highest kept (a constant scores 0), not the earlier one. Text
    direction at 0.33x latency (Intel Xeon, one run): both candidates 1.5 on 24 held-out
    lines, correlation 0.32 (the knapsack's) and 0.13; on 1,000 test lines both scored 0.500
    (every line one class): there the tie-break changes nothing, no candidate is usable.

    When *every* plan's output is dead on ``samples`` the samples cannot tell them apart,
    and the baseline the knapsack's plan has to beat, with no evidence here that it does, is
    kept: the uniform ratio (a plan whose config names ``allocation_start`` ``"ratio"``),
    else the uniform allocation (``"uniform"``). Text direction at 0.34x latency (Intel
    Xeon): every candidate one class on the 24 held-out lines; the knapsack's plan, chosen
    by the tie-break, was at chance on 1,000 test lines (0.500), the uniform ratio at that
    latency 0.565. With this rule the uniform allocation was kept there and scored 0.500 as
    well (its reconstruction reverted by the guard; the uniform ratio was no candidate
    then): the rule keeps the baseline, it cannot make a usable plan where every candidate
    has collapsed.

    Parameters
    ----------
    graph : ChannelGraph
    plans : sequence of PrunePlan
    samples : numpy.ndarray
    runners : CachedRunners
    make : callable, optional
        ``make(plan) -> module``: the model a plan becomes (e.g. pruned and reconstructed,
        as :func:`tvm_hcprune.prune` will return it); default ``apply_plan(graph, plan)``.

    Returns
    -------
    (index, errors)
        The chosen plan's index and every plan's error.

    Examples
    --------
    >>> i, errors = choose_plan(graph, [plan_a, plan_b], x, CachedRunners())  # doctest: +SKIP
    """
    dense_all = runners.outputs(graph.mod, samples)
    dense = dense_all[0]
    errors, corrs, live = [], [], []
    for plan in plans:
        module = make(plan) if make is not None else apply_plan(graph, plan)
        outs_all = runners.outputs(module, samples, keep=False)
        outs = outs_all[0]
        rel, dis = output_error(outs, dense)
        live.append(bool(np.isfinite(rel)) and collapse_reason(dense_all, outs_all) is None
                    and not _one_class(outs, dense))
        if not np.isfinite(rel):  # NaN or Inf: never chosen over a finite output
            errors.append(1e6)
            corrs.append(-1.0)
            continue
        rel = min(rel, 1.0) if live[-1] else 1.0  # a dead output explains none of the dense one
        errors.append(float(rel + dis))
        corrs.append(centred_correlation(outs, dense))
    if not any(live):  # nothing to tell them apart by: the baseline, if it is one of them
        starts = [getattr(p, "config", {}).get("allocation_start") for p in plans]
        for base in (RATIO_START, UNIFORM_START):
            if base in starts:
                return starts.index(base), errors
    tied = [i for i, e in enumerate(errors) if e <= min(errors) + 1e-9]
    return max(tied, key=lambda i: (live[i], corrs[i], -i)), errors


def _one_class(outs, dense) -> bool:
    """Whether a classifier's output gives one class to every sample where the dense output
    ``dense`` gives more than one (:func:`collapse_reason` calls that a collapse only where
    the dense model's classes are balanced; on a few samples they seldom are)."""
    pd = _top1(dense)
    if pd is None or len(np.unique(pd)) < 2:
        return False
    return len(np.unique(np.asarray(outs).reshape(len(pd), -1).argmax(1))) == 1


def centred_correlation(outs: np.ndarray, dense: np.ndarray) -> float:
    """Pearson correlation of outputs ``[n, ...]`` with the dense ones, each output element
    centred over the samples (what varies from sample to sample; 0 for a constant output).

    Examples
    --------
    >>> d = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0]])
    >>> round(centred_correlation(3 * d + 5, d), 6), centred_correlation(0 * d + 1, d)
    (1.0, 0.0)
    """
    a = np.asarray(outs, np.float64).reshape(len(outs), -1)
    b = np.asarray(dense, np.float64).reshape(len(dense), -1)
    a, b = a - a.mean(0), b - b.mean(0)
    den = float(np.sqrt(np.square(a).sum() * np.square(b).sum()))
    return float((a * b).sum() / den) if den > 0 else 0.0
