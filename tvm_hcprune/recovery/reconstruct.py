"""Reconstruct: re-fit pruned consumers by ridge least squares on calibration data.

After a plan removes input channels of a conv2d (``groups == 1``) or a matmul, the layer
sees fewer inputs than it was trained on. Following He et al. (2017, "Channel Pruning")
and AIMET, each such consumer's weights are re-fitted so that its output on calibration
rows, computed from the *kept* input channels only, matches the dense model's output::

    min_W,b  || X_kept W^T + b - Y_dense ||^2 + lam ||W||^2

``X``/``Y`` come from :func:`tvm_hcprune.calibrate` of the dense module (patches of the
layer input and the raw conv/matmul output before bias). The intercept ``b`` is folded into
what follows the layer: a constant bias ``add`` (``bias += b``) or an inference
``batch_norm`` (``moving_mean -= b``); without either the fit has no intercept.

Safety: the system is solved in float64; a layer falls back to its plainly sliced weights
(and the report says why) when the normal matrix is ill-conditioned, the solution is not
finite, or the re-fitted layer is not better than the sliced one on held-out calibration
rows. Reconstruction therefore never introduces NaN/Inf and never makes a layer's
calibration error worse.

Model-level guard: layer-wise improvements need not add up (a layer is fitted on the dense
model's inputs, not on the pruned model's). With ``guard_samples`` (inputs not used for the
fit), the plainly pruned and the reconstructed module are both run on them and compared
with the dense module; the reconstruction is kept only when it agrees with the dense arg-max
at least as often (ties: a smaller relative output error), else the plainly pruned module
is returned and ``report.reverted`` says so.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import relax

from tvm_hcprune.analysis import analyze, check_plan, kept_lookup
from tvm_hcprune.errors import HCPruneError
from tvm_hcprune.hardware.presets import register_preset_pass
from tvm_hcprune.ops.desc import axis_index
from tvm_hcprune.ops.weights import layer_weight_oi
from tvm_hcprune.recovery.bn_reestimate import reestimate_batch_norm
from tvm_hcprune.recovery.calibration import Calibration, calibrate
from tvm_hcprune.recovery.runner import (
    as_samples,
    default_runner_factory,
    module_input,
    output_error,
    outputs,
)
from tvm_hcprune.transform.apply_plan import apply_plan, apply_sparsity
from tvm_hcprune.transform.prune_channels import module_plan, original_module
from tvm_hcprune.utils.options import Options
from tvm_hcprune.utils.relax import is_const, replace_constants, static_shape

__all__ = ["LayerFit", "Reconstruct", "ReconstructConfig", "ReconstructReport",
           "apply_and_reconstruct", "fit_layer", "reconstruct", "reconstructable_layers"]


@dataclass(frozen=True)
class LayerFit:
    """Outcome of re-fitting one consumer layer.

    Attributes
    ----------
    name : str
        The conv/matmul binding's var name.
    status : str
        ``"reconstructed"`` or ``"fallback"`` (sliced weights kept; see ``reason``).
    reason : str
    err_before, err_after : float
        Relative squared error ``||Y_hat - Y||^2 / ||Y - mean(Y)||^2`` on held-out
        calibration rows, of the sliced and the re-fitted layer (``err_after`` is
        ``err_before`` on fallback).
    rows, features : int
    intercept : str
        Where the fitted intercept went: ``"bias"``, ``"batch_norm"`` or ``""``.
    """

    name: str
    status: str
    reason: str
    err_before: float
    err_after: float
    rows: int
    features: int
    intercept: str = ""


@dataclass
class ReconstructReport:
    """Per-layer outcomes of :func:`reconstruct`."""

    layers: list[LayerFit] = field(default_factory=list)
    #: model-level guard figures (``None`` without ``guard_samples``): ``n``,
    #: ``plain``/``reconstructed`` -> ``{"rel_mse", "disagreement"}`` against the dense model
    guard: dict | None = None
    #: the guard found the reconstruction worse and the plainly pruned module was returned
    reverted: bool = False
    #: :class:`~tvm_hcprune.recovery.bn_reestimate.BatchNormReport` as a dict, when
    #: batch-norm statistics were re-estimated
    batch_norm: dict | None = None

    @property
    def fallbacks(self) -> list[LayerFit]:
        return [f for f in self.layers if f.status != "reconstructed"]

    def to_dict(self) -> dict:
        return {"layers": [f.__dict__ for f in self.layers], "guard": self.guard,
                "reverted": self.reverted, "batch_norm": self.batch_norm}

    def summary(self) -> str:
        lines = [f"reconstruction: {len(self.layers) - len(self.fallbacks)} of "
                 f"{len(self.layers)} consumer layer(s) re-fitted"]
        if self.guard is not None:
            g = self.guard
            lines.append(
                f"  model guard on {g['n']} held-out samples: disagreement with dense "
                f"{g['plain']['disagreement']:.3f} plain vs "
                f"{g['reconstructed']['disagreement']:.3f} reconstructed -> "
                + ("REVERTED to the plainly pruned module" if self.reverted else "kept"))
        for f in self.layers:
            lines.append(f"  {f.name:>8}: {f.status:13s} rel. error {f.err_before:.4f} -> "
                         f"{f.err_after:.4f} ({f.rows} rows, {f.features} features)"
                         + (f" - {f.reason}" if f.reason else ""))
        return "\n".join(lines)


# ------------------------------------------------------------------------------ numerics


def _rel_err(pred: np.ndarray, y: np.ndarray) -> float:
    den = float(np.square(y - y.mean(0)).sum())
    num = float(np.square(pred - y).sum())
    return num / den if den > 0 else num


def fit_layer(X: np.ndarray, Y: np.ndarray, W0: np.ndarray, intercept: bool = True,
              ridge: float = 1e-2, max_cond: float = 1e10, holdout: float = 0.2,
              seed: int = 0):
    """Ridge least-squares fit of ``Y ~= X @ W.T + b``, with a safe fallback.

    Parameters
    ----------
    X : numpy.ndarray
        ``[rows, features]`` layer inputs (kept channels only).
    Y : numpy.ndarray
        ``[rows, outputs]`` dense outputs to match.
    W0 : numpy.ndarray
        ``[outputs, features]`` the sliced (unreconstructed) weights.
    intercept : bool
        Fit an intercept ``b`` as well.
    ridge : float
        Regularisation, relative to the mean diagonal of ``X^T X``.
    max_cond : float
        Fall back when the regularised normal matrix's condition number exceeds this.
    holdout : float
        Fraction of rows held out to compare the fit with ``W0``.
    seed : int
        Seed of the hold-out split.

    Returns
    -------
    (W, b, status, reason, err_before, err_after)
        ``W`` float64 ``[outputs, features]``, ``b`` ``[outputs]`` (zeros without
        intercept); ``status`` ``"reconstructed"`` or ``"fallback"``.
    """
    X = np.asarray(X, np.float64)
    Y = np.asarray(Y, np.float64)
    W0 = np.asarray(W0, np.float64)
    rows, feats = X.shape
    zero_b = np.zeros(Y.shape[1])
    if rows < 4:
        return W0, zero_b, "fallback", f"only {rows} calibration rows", np.nan, np.nan
    rng = np.random.default_rng(seed)
    perm = rng.permutation(rows)
    n_val = max(1, int(round(rows * holdout))) if holdout > 0 else 0
    val, tr = (perm[:n_val], perm[n_val:]) if n_val and rows - n_val >= 2 else (perm, perm)
    err_before = _rel_err(X[val] @ W0.T, Y[val])

    def fallback(reason):
        return W0, zero_b, "fallback", reason, err_before, err_before

    if not (np.isfinite(X).all() and np.isfinite(Y).all()):
        return fallback("calibration data holds NaN/Inf")
    Xt, Yt = X[tr], Y[tr]
    if intercept:
        mx, my = Xt.mean(0), Yt.mean(0)
        Xt, Yt = Xt - mx, Yt - my
    A = Xt.T @ Xt
    lam = ridge * max(float(np.trace(A)) / feats, 1e-12)
    A[np.diag_indices_from(A)] += lam
    try:
        ev = np.linalg.eigvalsh(A)
    except np.linalg.LinAlgError:
        return fallback("eigenvalues of the normal matrix did not converge")
    if not np.isfinite(ev).all() or ev[0] <= 0 or ev[-1] / ev[0] > max_cond:
        cond = ev[-1] / ev[0] if ev[0] > 0 else np.inf
        return fallback(f"ill-conditioned system (condition number {cond:.2e} > "
                        f"{max_cond:.0e})")
    try:
        W = np.linalg.solve(A, Xt.T @ Yt).T
    except np.linalg.LinAlgError as err:
        return fallback(f"least squares failed: {err}")
    b = (my - mx @ W.T) if intercept else zero_b
    if not (np.isfinite(W).all() and np.isfinite(b).all()):
        return fallback("the least-squares solution is not finite")
    f32 = np.finfo(np.float32).max
    if np.abs(W).max(initial=0) > f32 / 1e6 or np.abs(b).max(initial=0) > f32 / 1e6:
        return fallback("the least-squares solution overflows float32")
    err_after = _rel_err(X[val] @ W.T + b, Y[val])
    if not err_after <= err_before:
        return fallback(f"re-fit is not better on held-out rows ({err_after:.4g} > "
                        f"{err_before:.4g})")
    return W, b, "reconstructed", "", err_before, err_after


# ------------------------------------------------------------------------------ IR side


def _consumer_member(graph, var):
    for m in graph.ctx.members:
        if m.kind == "consumer" and m.var.same_as(var):
            return m
    return None


def _producer_member(graph, var):
    for m in graph.ctx.members:
        if m.kind == "producer" and m.var.same_as(var):
            return m
    return None


def reconstructable_layers(graph) -> list:
    """``[(var, call)]`` of the conv2d (``groups == 1``) / 2-D matmul consumers of ``graph``."""
    out = []
    for var, call in graph.ctx.values.items():
        if not isinstance(call, relax.Call) or not hasattr(call.op, "name"):
            continue
        name = call.op.name
        if name == "relax.nn.conv2d":
            if int(call.attrs.groups) != 1 or not is_const(call.args[1]):
                continue
        elif name == "relax.matmul":
            if not is_const(call.args[1]) or len(static_shape(call.args[1]) or []) != 2:
                continue
        else:
            continue
        if _consumer_member(graph, var) is not None:
            out.append((var, call))
    return out


def _users(graph):
    users = {}
    for var, call in graph.ctx.values.items():
        if isinstance(call, relax.Call):
            for i, a in enumerate(call.args):
                if isinstance(a, relax.Var):
                    users.setdefault(a, []).append((var, call, i))
        elif isinstance(call, relax.Var):
            users.setdefault(call, []).append((var, call, -1))
    return users


def _intercept_site(graph, var, call, users):
    """Where a fitted intercept of ``var`` can go: (kind, user var, arg, channel axis)."""
    us = users.get(var, [])
    if len(us) != 1:
        return None
    uvar, ucall, pos = us[0]
    if not isinstance(ucall, relax.Call) or not hasattr(ucall.op, "name"):
        return None
    out_shape = static_shape(var)
    if call.op.name == "relax.matmul":
        c_ax = len(out_shape) - 1
    else:
        c_ax = str(call.attrs.out_layout or call.attrs.data_layout).index("C")
    n = out_shape[c_ax]
    if ucall.op.name == "relax.nn.batch_norm" and pos == 0:
        if int(ucall.attrs.axis) % len(out_shape) == c_ax and all(
                is_const(a) for a in ucall.args[1:5]):
            return ("batch_norm", uvar, 3, 0)
        return None
    if ucall.op.name == "relax.add" and pos in (0, 1):
        other = ucall.args[1 - pos]
        shp = static_shape(other) if is_const(other) else None
        if shp is None or static_shape(uvar) != out_shape:
            return None
        off = len(out_shape) - len(shp)
        if off < 0:
            return None
        full = [1] * off + list(shp)
        if full[c_ax] == n and all(s == 1 for i, s in enumerate(full) if i != c_ax):
            return ("bias", uvar, 1 - pos, c_ax - off)
    return None


def _cal_layer(calibration, var, call, w_oi):
    name = var.name
    if name not in calibration:
        raise HCPruneError(
            f"calibration has no layer {name!r}; calibrate the module that was pruned "
            "(analyze(mod).mod, or the module prune() was given) with tvm_hcprune.calibrate")
    lc = calibration[name]
    if lc.X is None:
        return lc
    if lc.X.shape[1] != w_oi.shape[1] or lc.Y.shape[1] != w_oi.shape[0] or (
            lc.X.ndim == 4 and tuple(lc.X.shape[2:]) != tuple(w_oi.shape[2:])):
        raise HCPruneError(
            f"calibration layer {name!r} has X {lc.X.shape} / Y {lc.Y.shape}, which does not "
            f"fit the weight {tuple(w_oi.shape)} (O, I, ...) of the module; the calibration "
            "was made on a different model - recalibrate this one")
    return lc


@dataclass(frozen=True, eq=False)
class ReconstructConfig(Options):
    """Options of :func:`reconstruct` (and of ``prune(reconstruct_options=...)``).

    Parameters
    ----------
    ridge, max_cond, holdout, intercept, seed
        See :func:`fit_layer`.
    samples : optional
        The calibration samples again. With them, later passes re-fit every layer on the
        inputs it sees in the *reconstructed pruned* model (He et al.'s setting: upstream
        errors are compensated), still against the dense outputs: the reconstructed module
        is calibrated with ``calibration``'s settings (same rows) and the fit is redone
        from the sliced weights. Without them, one pass on the dense model's inputs.
    passes : int
        Passes when ``samples`` are given (the first uses the dense inputs). Measured on
        text_direction, more passes made the model worse (each pass re-fits every layer to
        inputs that the same pass then changes upstream); keep 1 unless measured.
    guard_samples : optional
        Held-out inputs (array, Dataset or (samples, labels)) for the model-level guard
        (see the module docs); None: no model-level guard.
    runner_factory : callable, optional
        ``runner_factory(module, plan_or_None) -> f(x) -> output`` used by the guard
        (``plan`` None for the dense ``graph.mod``); default: compile for ``target``.
    target : optional
        Host CPU target of the guard's default runner.
    batch_norm : {None, "recompute", "match"}
        After the fit, re-estimate the statistics of the batch norms that remain
        (:func:`tvm_hcprune.recovery.bn_reestimate.reestimate_batch_norm`) on
        ``batch_norm_samples`` (default ``samples``); before the guard.
    batch_norm_samples : optional
        Inputs for the batch-norm statistics.

    Examples
    --------
    >>> from tvm_hcprune import ReconstructConfig
    >>> ReconstructConfig.of({"ridge": 1e-3}, passes=1).passes
    1
    """

    ridge: float = 1e-2
    max_cond: float = 1e10
    holdout: float = 0.2
    intercept: bool = True
    seed: int = 0
    samples: object = None
    passes: int = 2
    guard_samples: object = None
    runner_factory: object = None
    target: object = None
    batch_norm: str | None = None
    batch_norm_samples: object = None


def reconstruct(pruned_mod, graph, plan, calibration, config: ReconstructConfig | dict | None
                = None, **overrides):
    """Re-fit the consumers whose input channels ``plan`` removed; see the module docs.

    Parameters
    ----------
    pruned_mod : tvm.IRModule
        ``apply_plan(graph, plan)`` (what :func:`tvm_hcprune.prune` returns).
    graph : ChannelGraph
        The analysis of the dense module.
    plan : PrunePlan
    calibration : Calibration
        :func:`tvm_hcprune.calibrate` of ``graph.mod`` (or of the module given to
        ``analyze``; layers are matched by binding name and checked by shape).
    config : ReconstructConfig or dict, optional
        The options; ``**overrides`` (its field names: ``ridge``, ``samples``,
        ``guard_samples``, ``batch_norm``, ...) are applied over it.

    Returns
    -------
    (tvm.IRModule, ReconstructReport)

    Examples
    --------
    >>> cal = tvm_hcprune.calibrate(mod, samples)  # doctest: +SKIP
    >>> rec, report = reconstruct(pruned, graph, plan, cal, ridge=1e-3)  # doctest: +SKIP
    """
    c = ReconstructConfig.of(config, **overrides)
    ridge, max_cond, holdout, intercept, seed = c.ridge, c.max_cond, c.holdout, c.intercept, c.seed
    samples, passes, guard_samples = c.samples, c.passes, c.guard_samples
    runner_factory, target = c.runner_factory, c.target
    batch_norm, batch_norm_samples = c.batch_norm, c.batch_norm_samples
    out, report = _reconstruct_passes(pruned_mod, graph, plan, calibration, ridge, max_cond,
                                      holdout, intercept, seed, samples, passes)
    if batch_norm is not None:
        bn_samples = batch_norm_samples if batch_norm_samples is not None else samples
        if bn_samples is None:
            raise HCPruneError("batch_norm re-estimation needs inputs: pass "
                               "batch_norm_samples= (or samples=)")
        out, bn_rep = reestimate_batch_norm(out, bn_samples, mode=batch_norm, graph=graph,
                                            plan=plan, target=target)
        report = dataclasses.replace(report, batch_norm=bn_rep.to_dict())
    if guard_samples is None or out is pruned_mod:
        return out, report
    return _guard(pruned_mod, out, report, graph, plan, guard_samples, runner_factory, target)


def apply_and_reconstruct(graph, plan, calibration=None, enabled: bool = False,
                          options: dict | None = None):
    """``apply_plan(graph, plan)``, then (``enabled``) :func:`reconstruct` on ``calibration``
    (and the plan's block sparsity applied again to the re-fitted weights).

    Returns ``(pruned_mod, ReconstructReport or None)``; what :func:`tvm_hcprune.prune` and
    the sensitivity scan do with a plan.
    """
    pruned = apply_plan(graph, plan)
    if not enabled:
        return pruned, None
    if calibration is None:
        raise HCPruneError("reconstruct=True needs calibration data: pass "
                           "calibration=tvm_hcprune.calibrate(mod, samples)")
    out, report = reconstruct(pruned, graph, plan, calibration, options)
    # re-fitted weights are dense again: a mixed plan's layers get their blocks zeroed anew
    return apply_sparsity(out, plan), report


def _guard(plain_mod, rec_mod, report, graph, plan, samples, runner_factory, target):
    """Model-level guard: keep ``rec_mod`` only if it is no worse than ``plain_mod``."""
    arr = as_samples(samples)[0]
    if len(arr) == 0:
        raise HCPruneError("guard_samples is empty; give held-out calibration inputs")
    make = runner_factory or default_runner_factory(target)
    dense = outputs(make(graph.mod, None), arr)
    figs = {}
    for key, m in (("plain", plain_mod), ("reconstructed", rec_mod)):
        rel, dis = output_error(outputs(make(m, plan), arr), dense)
        figs[key] = {"rel_mse": rel, "disagreement": dis}
    p, r = figs["plain"], figs["reconstructed"]
    keep = (r["disagreement"], r["rel_mse"]) <= (p["disagreement"], p["rel_mse"])
    report = dataclasses.replace(report, guard={"n": len(arr), **figs}, reverted=not keep)
    return (rec_mod if keep else plain_mod), report


def _reconstruct_passes(pruned_mod, graph, plan, calibration, ridge, max_cond, holdout,
                        intercept, seed, samples, passes):
    out, report = _reconstruct_once(pruned_mod, graph, plan, calibration, None, ridge,
                                    max_cond, holdout, intercept, seed)
    if samples is None:
        return out, report

    meta = calibration.meta
    for _ in range(max(0, int(passes) - 1)):
        cal_p = calibrate(out, samples, max_rows=int(meta.get("max_rows", 4096)),
                          max_bytes=int(meta.get("max_bytes", 2**30)),
                          seed=int(meta.get("seed", 0)), progress=False)

        if not _rows_aligned(calibration, cal_p, module_input(graph.mod)[0]):
            note = "pruned-input pass skipped: the calibration rows could not be aligned"
            report = ReconstructReport([dataclasses.replace(
                f, reason=f"{f.reason}; {note}" if f.reason else note) for f in report.layers])
            return out, report
        out, report = _reconstruct_once(pruned_mod, graph, plan, calibration, cal_p, ridge,
                                        max_cond, holdout, intercept, seed)
    return out, report


def _rows_aligned(dense_cal, pruned_cal, input_name: str) -> bool:
    """Both calibrations picked the same rows: checked on a layer that reads the model
    input (pruning never changes it), and on every layer's row count."""
    checked = False
    for name, lc in dense_cal.layers.items():
        pc = pruned_cal.layers.get(name)
        if pc is None or (lc.X is None) != (pc.X is None):
            return False
        if lc.X is None:
            continue
        if lc.X.shape[0] != pc.X.shape[0]:
            return False
        if lc.input_var == input_name == pc.input_var:
            if lc.X.shape != pc.X.shape or not np.array_equal(lc.X, pc.X):
                return False
            checked = True
    return checked


def _reconstruct_once(pruned_mod, graph, plan, calibration, x_calibration, ridge, max_cond,
                      holdout, intercept, seed):
    check_plan(graph, plan)
    kept_of = kept_lookup(graph, plan)
    users = _users(graph)
    report = ReconstructReport()
    updates: dict[str, dict[int, np.ndarray]] = {}
    deltas: dict[str, tuple] = {}
    for var, call in reconstructable_layers(graph):
        cons = _consumer_member(graph, var)
        in_idx = axis_index(cons.desc, kept_of)
        if in_idx is None:
            continue
        prod = _producer_member(graph, var)
        out_idx = axis_index(prod.desc, kept_of) if prod is not None else None
        w_oi, back = layer_weight_oi(call)
        lc = _cal_layer(calibration, var, call, w_oi)
        if out_idx is None:
            out_idx = np.arange(w_oi.shape[0])
        w0 = w_oi[out_idx][:, in_idx]
        feats = int(np.prod(w0.shape[1:]))
        if lc.X is None:
            report.layers.append(LayerFit(var.name, "fallback",
                                          f"no calibration rows ({lc.skipped})",
                                          np.nan, np.nan, 0, feats))
            continue
        if x_calibration is not None:  # the pruned model's own inputs (kept channels only)
            X = x_calibration[var.name].X
            X = X.reshape(X.shape[0], -1)
        else:
            X = lc.X[:, in_idx].reshape(lc.X.shape[0], -1)
        Y = lc.Y[:, out_idx]
        site = _intercept_site(graph, var, call, users) if intercept else None
        W, b, status, reason, e0, e1 = fit_layer(
            X, Y, w0.reshape(w0.shape[0], -1), intercept=site is not None, ridge=ridge,
            max_cond=max_cond, holdout=holdout, seed=seed)
        report.layers.append(LayerFit(var.name, status, reason, e0, e1, X.shape[0], feats,
                                      site[0] if site and status == "reconstructed" else ""))
        if status != "reconstructed":
            continue
        dtype = call.args[1].value.numpy().dtype
        updates.setdefault(var.name, {})[1] = back(W.reshape(w0.shape)).astype(dtype)
        if site is not None:
            deltas[site[1].name] = (site, b)
    for uname, (site, b) in deltas.items():
        kind, uvar, arg, ax = site
        ucall = graph.ctx.values[uvar]
        arr = ucall.args[arg].value.numpy().astype(np.float64)
        # the user's constant as the pruned module holds it (sliced like the rewrite does)
        for a, axis, desc in graph.ctx.const_slices.get(uvar, ()):
            idx = axis_index(desc, kept_of)
            if a == arg and idx is not None:
                arr = np.take(arr, idx, axis=axis)
        shape = [1] * arr.ndim
        shape[ax] = len(b)
        if arr.shape[ax] != len(b):  # pragma: no cover - shapes come from the same plan
            raise AssertionError(f"intercept of {uname}: {arr.shape} vs {len(b)}")
        arr = arr + b.reshape(shape) if kind == "bias" else arr - b.reshape(shape)
        dtype = ucall.args[arg].value.numpy().dtype
        updates.setdefault(uname, {})[arg] = arr.astype(dtype)
    if not updates:
        return pruned_mod, report
    return replace_constants(pruned_mod, updates), report


@tvm.transform.module_pass(opt_level=0, name="Reconstruct")
class Reconstruct:
    """Module pass: re-fit pruned consumers from calibration data (see the module docs).

    Parameters
    ----------
    calibration : Calibration or inputs
        :func:`tvm_hcprune.calibrate` of the dense module, or real inputs (array, Dataset)
        that the dense module is calibrated on here.
    graph : ChannelGraph, optional
        ``analyze`` of the dense module; default: the dense module of the plan the module
        carries (``PruneChannels`` earlier in the pipeline).
    plan : PrunePlan, optional
        The plan the module being transformed was pruned with; default: its
        ``hcprune.plan`` attribute.
    config : ReconstructConfig or dict, optional
        See :func:`reconstruct`; ``**overrides`` are its option names.

    Attributes
    ----------
    last_report : ReconstructReport or None

    Examples
    --------
    >>> seq = tvm.transform.Sequential([PruneChannels(budget=MACs(fraction=0.5)),
    ...                                 Reconstruct(samples)])  # doctest: +SKIP
    """

    def __init__(self, calibration, graph=None, plan=None,
                 config: ReconstructConfig | dict | None = None, **overrides):
        self.calibration = calibration
        self.graph = graph
        self.plan = plan
        self.config = ReconstructConfig.of(config, **overrides)
        self.last_report: ReconstructReport | None = None

    def transform_module(self, mod, ctx):
        plan = self.plan if self.plan is not None else module_plan(mod)
        if plan is None:
            raise HCPruneError("Reconstruct needs the plan the module was pruned with: run "
                               "PruneChannels before it in the pipeline, or pass plan=")
        graph = self.graph if self.graph is not None else analyze(original_module(plan))
        cal = self.calibration
        if not isinstance(cal, Calibration):
            cal = calibrate(graph.mod, cal, progress=False)
        out, self.last_report = reconstruct(mod, graph, plan, cal, self.config)
        return out


@register_preset_pass("Reconstruct")
def _reconstruct_step(ctx):
    """The ``Reconstruct`` step of a preset: re-fits what the build's ``PruneChannels`` step
    removed, on ``calibration`` (nothing without both)."""
    if ctx.prune is None or ctx.calibration is None:
        return []
    return [Reconstruct(ctx.calibration, config=ctx.options.get("reconstruct_options"))]
