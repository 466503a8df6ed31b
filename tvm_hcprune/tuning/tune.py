"""``tune``: MetaSchedule tuning that works on TVM 0.27 here, locally or through RPC.

What differs from ``ms.relax_integration.tune_relax``:

- the builder compiles in-process (:class:`InProcessBuilder`): MetaSchedule's
  ``LocalBuilder`` starts a fresh process pool per batch whose workers import
  ``tvm.s_tir.tensor_intrin`` (about 28 s), so with its 30 s timeout most trials failed;
- only the target's tensor intrinsics are imported
  (:func:`~tvm_hcprune.backend.database.ensure_tensor_intrinsics`, 0.4 s instead of 30 s);
- the search starts from the schedule rules' own schedules when they can be expressed as a
  trace on the task (seeds are measured like any candidate and committed to the database);
- tuning never ends slower than the rules, by construction: a task keeps its best record
  only when that record beats the rules' schedule re-measured side by side (otherwise the
  task has no record and the pipeline applies the rules), and then the whole model built
  with the records is timed against the rules-only build and the records are dropped
  unless they make it faster (:func:`compare_with_rules`);
- the XGBoost cost model and evolutionary search are sized for small budgets;
- the BSR kernels (hand-written TIR that MetaSchedule's default space cannot schedule) are
  tasks with their own knob space and the model's real index arrays as arguments
  (:mod:`tvm_hcprune.tuning.bsr`);
- progress is a tqdm bar (trials, tasks done, best total latency, ETA) while MetaSchedule's
  own logs go to ``work_dir/logs``;
- the result is a :class:`~tvm_hcprune.backend.database.ScheduleDatabase`, written
  atomically as one JSON file when ``output`` is given;
- RPC measurement (``rpc_tracker``/``rpc_key``) checks the tracker first and bounds every
  measurement (:mod:`tvm_hcprune.tuning.rpc`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tvm
from tvm import relax, s_tir
from tvm.ir.utils import derived_object
from tvm.relax.pipeline import BackendDispatcher
from tvm.s_tir import dlight as dl
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock
from tvm.support.tar import tar

from tvm_hcprune.backend import database as dbm
from tvm_hcprune.backend import pipeline
from tvm_hcprune.backend.cpu import rules as cpu_rules
from tvm_hcprune.backend.cpu.bsr import expand_bsr_knobs
from tvm_hcprune.backend.cuda import with_limits
from tvm_hcprune.errors import HCPruneError
from tvm_hcprune.tuning import bsr as bsr_tuning
from tvm_hcprune.tuning.rpc import cross_compiler as make_fcompile
from tvm_hcprune.tuning.rpc import make_rpc_runner, request_session
from tvm_hcprune.utils.progress import progress_bar

_MS_LOGGER = "tvm.s_tir.meta_schedule"


# ---------------------------------------------------------------------------------------
# builder


def _build_one(mod, target):
    """Compile one candidate the way MetaSchedule's ``default_build`` does (a BSR kernel
    regenerated with its candidate's knobs first)."""
    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(expand_bsr_knobs(mod))
    return tvm.compile(mod, target=target)


def _make_builder_class():
    @derived_object
    class InProcessBuilder(ms.builder.PyBuilder):
        """Build candidates in this process: no worker start-up, no import, no timeout.

        Each artifact is exported as a ``.tar`` into its own temporary folder (what
        ``LocalRunner`` and ``RPCRunner`` load), or linked into a ``.so`` by ``fcompile``
        (a cross compiler: the device then needs no compiler); ``RemoveBuildArtifact``
        deletes it after measurement.
        """

        def __init__(self, artifact_dir=None, fcompile=None):
            super().__init__()
            self.artifact_dir = artifact_dir
            self.fcompile = fcompile

        def build(self, build_inputs):
            results = []
            for item in build_inputs:
                try:
                    rt_mod = _build_one(item.mod, item.target)
                    folder = tempfile.mkdtemp(prefix="hcprune_ms_", dir=self.artifact_dir)
                    fcompile = self.fcompile or tar
                    path = os.path.join(folder, "tvm_tmp_mod." + fcompile.output_format)
                    rt_mod.export_library(path, fcompile=fcompile)
                    results.append(ms.builder.BuilderResult(path, None))
                except Exception as err:  # noqa: BLE001 - a failed candidate, not a failure
                    results.append(ms.builder.BuilderResult(None, f"{type(err).__name__}: {err}"))
            return results

    return InProcessBuilder


_BUILDER_CLASS = None


def in_process_builder(artifact_dir=None, fcompile=None):
    """A MetaSchedule builder that compiles in this process (see module docstring).

    Each candidate's artifact gets its own folder under ``artifact_dir`` (the system's
    temporary folder when None); MetaSchedule deletes the artifact after measuring it, the
    caller removes ``artifact_dir`` with the empty folders. ``fcompile`` (a
    :func:`~tvm_hcprune.tuning.rpc.cross_compiler`) links each artifact into a ``.so``
    instead of a ``.tar``."""
    global _BUILDER_CLASS
    if _BUILDER_CLASS is None:
        _BUILDER_CLASS = _make_builder_class()
    return _BUILDER_CLASS(artifact_dir, fcompile)


# ---------------------------------------------------------------------------------------
# progress


@dataclass
class TuneStats:
    """What a tuning run measured.

    Attributes
    ----------
    tasks : list of str
        Task names, in MetaSchedule's order.
    weights : list of int
        How often each task's function is called by the model.
    trials : int
        Candidates measured (including seeds).
    valid : int
        Candidates that built and ran.
    errors : list of str
        The first few build/run error messages.
    best : dict
        Task name -> best measured latency (seconds).
    seeds : dict
        Task name -> measured latency of the schedule rules' seed (seconds).
    rechecked : dict
        Task name -> best-record / seed latency ratio of the side-by-side re-measurement,
        for the tasks where the search claimed a win (> 1: the seed won after all).
    kept : dict
        Task name -> that ratio, for the tasks whose record is kept (it beat the rules'
        schedule); every other task gets no record and keeps the rules.
    unchecked : list of str
        Tasks without a measured seed whose best record is kept as is.
    measured : ScheduleDatabase or None
        Every record measured (seeds included), before the selection: for inspection, or to
        apply a task's best record regardless of the rules.
    model : dict
        The model-level check of :func:`compare_with_rules` (``tuned_ms``, ``rules_ms``,
        ``ratio``, ``kept``), or why it was skipped.
    seconds : float
        Wall time of the run.
    """

    tasks: list = field(default_factory=list)
    weights: list = field(default_factory=list)
    trials: int = 0
    valid: int = 0
    errors: list = field(default_factory=list)
    best: dict = field(default_factory=dict)
    seeds: dict = field(default_factory=dict)
    rechecked: dict = field(default_factory=dict)
    kept: dict = field(default_factory=dict)
    unchecked: list = field(default_factory=list)
    measured: object = None
    model: dict = field(default_factory=dict)
    seconds: float = 0.0

    def note(self, name: str, builder_results, runner_results) -> None:
        for b, r in zip(builder_results, runner_results, strict=False):
            self.trials += 1
            msg = b.error_msg or r.error_msg
            if msg:
                if len(self.errors) < 5:
                    self.errors.append(str(msg).strip().splitlines()[-1][:300])
                continue
            secs = [float(s) for s in r.run_secs]
            if not secs or max(secs) >= 1e9:
                continue
            self.valid += 1
            mean = sum(secs) / len(secs)
            self.best[name] = min(self.best.get(name, float("inf")), mean)

    def predicted_ratio(self) -> float | None:
        """The model's tuned/rules latency ratio the per-task measurements predict (the
        kept tasks at their re-measured best, the others at the rules' time), or None
        without seeds."""
        if not self.seeds:
            return None
        weight = dict(zip(self.tasks, self.weights, strict=False))
        rules = sum(weight.get(n, 1) * t for n, t in self.seeds.items())
        saved = sum(weight.get(n, 1) * self.seeds[n] * (1.0 - r) for n, r in self.kept.items()
                    if n in self.seeds)
        return (rules - saved) / rules if rules > 0 else None

    def total_latency(self) -> float:
        """Weighted sum of the best task latencies (seconds)."""
        weight = dict(zip(self.tasks, self.weights, strict=False))
        return sum(weight.get(n, 1) * s for n, s in self.best.items())


def _make_progress_callback(stats: TuneStats, bar):
    @derived_object
    class ProgressCallback(ms.measure_callback.PyMeasureCallback):
        """Record results and advance the tqdm bar after every measured batch."""

        def apply(self, task_scheduler, task_id, measure_candidates, builder_results,
                  runner_results):
            name = stats.tasks[task_id]
            stats.note(name, builder_results, runner_results)
            done = sum(1 for t in task_scheduler.tasks_ if t.is_terminated)
            if bar is not None:
                bar.update(len(measure_candidates))
                if bar.total is not None and bar.n > bar.total:
                    bar.total = bar.n
                bar.set_postfix_str(
                    f"tasks {done}/{len(stats.tasks)}, "
                    f"best {stats.total_latency() * 1e3:.3f} ms"
                )

    return ProgressCallback()


@contextlib.contextmanager
def _quiet_ms_console():
    """Send MetaSchedule's INFO chatter to its log files only (tqdm shows progress).

    Also hides unnamed handlers of MetaSchedule's logger while tuning: its
    ``create_loggers`` formats every handler name and fails on ``None`` (pytest's log
    capture, for one, attaches such handlers).
    """
    logger = logging.getLogger(_MS_LOGGER)
    old = logger.level
    unnamed = [h for h in logger.handlers if h.get_name() is None]
    for handler in unnamed:
        logger.removeHandler(handler)
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(old)
        for handler in unnamed:
            logger.addHandler(handler)


@contextlib.contextmanager
def _thread_env(target):
    """Measure with TVM_NUM_THREADS = the target's core count (as the model will run)."""
    cores = dbm.target_dict(target).get("num-cores")
    old = os.environ.get("TVM_NUM_THREADS")
    if cores and old is None:
        os.environ["TVM_NUM_THREADS"] = str(cores)
    try:
        yield
    finally:
        if cores and old is None:
            os.environ.pop("TVM_NUM_THREADS", None)


# ---------------------------------------------------------------------------------------
# seeds from the schedule rules


def rule_schedule(func, target):
    """The schedule rules' schedule of one task function, or None.

    CPU targets: tvm_hcprune's rules (:func:`tvm_hcprune.backend.cpu.rules.rule_schedule`,
    exactly what a build without a database applies, the boundary layout transforms' rule
    included: a task seeded with less, its unscheduled function, makes any record look
    faster); GPU targets: dlight's default rules. Returns a ``tvm.s_tir.Schedule`` whose
    trace replays on the task, or None when no rule applies.
    """
    if BackendDispatcher.is_gpu_target(target):
        return _dlight_schedule(func, target)
    return cpu_rules.rule_schedule(func)


def _dlight_schedule(func, target):
    rules = [dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(),
             dl.gpu.Fallback()]
    for rule in rules:
        try:
            sch = rule.apply(func, target, False)
        except Exception:  # noqa: BLE001 - a rule that does not fit this function
            continue
        if isinstance(sch, list):
            sch = sch[0] if sch else None
        if sch is not None:
            return sch
    return None


def _seed_candidates(ctx, target):
    """A MeasureCandidate for the rules' schedule of task ``ctx``.

    Where no rule fits, the seed is the function unscheduled (an empty trace): that is what
    the pipeline compiles for it without a database, so it is the floor to beat too.
    Returns None when even that cannot be replayed.
    """
    func = ctx.mod["main"]
    try:
        sch = rule_schedule(func, target)
    except Exception:  # noqa: BLE001 - a rule failing on one task must not stop tuning
        sch = None
    fresh = None
    if sch is not None and sch.trace is not None:
        # replay the trace on a fresh schedule of the task to make sure it is a valid seed
        try:
            fresh = s_tir.Schedule(ctx.mod)
            sch.trace.apply_to_schedule(fresh, remove_postproc=False)
        except Exception:  # noqa: BLE001
            fresh = None
    if fresh is None:
        # the unscheduled function; MetaSchedule's databases skip records with an empty
        # trace, so mark the root block (an annotation no pass reads)
        fresh = s_tir.Schedule(ctx.mod)
        try:
            fresh.annotate(fresh.get_sblock("root"), "hcprune_unscheduled_seed", 1)
        except Exception:  # noqa: BLE001 - no root block: cannot express the seed
            return None
    return ms.MeasureCandidate(fresh, ms.arg_info.ArgInfo.from_entry_func(fresh.mod, False))


def _measure(cands, target, builder, runner) -> list:
    """Build and run MeasureCandidates; the run_secs of each (None where it failed)."""
    out: list = [None] * len(cands)
    if not cands:
        return out
    built = builder.build([ms.builder.BuilderInput(c.sch.mod, target) for c in cands])
    device = "cpu" if target.kind.name == "llvm" else target.kind.name
    inputs, index = [], []
    for i, (cand, b) in enumerate(zip(cands, built, strict=True)):
        if b.error_msg:
            continue
        inputs.append(ms.runner.RunnerInput(b.artifact_path, device, cand.args_info))
        index.append((i, b.artifact_path))
    futures = runner.run(inputs) if inputs else []
    for (i, path), fut in zip(index, futures, strict=True):
        res = fut.result()
        with contextlib.suppress(OSError):
            shutil.rmtree(os.path.dirname(path))
        if not res.error_msg and res.run_secs:
            secs = [float(x) for x in res.run_secs]
            if max(secs) < 1e9:
                out[i] = secs
    return out


def _measure_seeds(ctxs, target, builder, runner, database, stats: TuneStats) -> dict:
    """Measure the seeds and commit them as tuning records (the search's start).

    Returns task name -> seed MeasureCandidate.
    """
    items = [(ctx, _seed_candidates(ctx, target)) for ctx in ctxs]
    items = [(ctx, cand) for ctx, cand in items if cand is not None]
    seeds = {}
    for (ctx, cand), secs in zip(items, _measure(
            [c for _, c in items], target, builder, runner), strict=True):
        if secs is None:
            continue
        wl = database.commit_workload(ctx.mod)
        record = ms.database.TuningRecord(cand.sch.trace, wl, secs, target, cand.args_info)
        # e.g. dlight traces with an IndexMap cannot be saved: such a seed is not committed
        # (the search cannot start from it) but is still the baseline a record must beat
        if dbm.serializable(record):
            database.commit_tuning_record(record)
        seeds[ctx.task_name] = cand
        stats.seeds[ctx.task_name] = sum(secs) / len(secs)
        stats.best[ctx.task_name] = min(stats.best.get(ctx.task_name, float("inf")),
                                        stats.seeds[ctx.task_name])
    return seeds


def select_records(ctxs, target, builder, runner, database, seeds: dict, stats: TuneStats,
                   rounds: int = 3, min_gain: float = 0.02, min_share: float = 0.001):
    """Keep, per task, the search's best record only where it beats the rules' schedule.

    For every task whose best record is not its seed, seed and record are measured again
    side by side, interleaved, ``rounds`` times (on a shared machine a candidate measured
    in a quiet moment can look faster than a seed measured in a busy one); the best time
    of each decides. The record is kept when it is at least ``min_gain`` faster than the
    seed and saves at least ``min_share`` of the model's time (the sum of the seeds' times
    times how often each task runs: a record that saves 0.1 us of a 20 ms model changes
    nothing measurable). Otherwise, and for tasks whose best is the seed itself, the task
    gets no record and the pipeline applies the schedule rules to it, exactly as without a
    database. Tasks without a measured seed keep the search's best (there is no baseline).

    Returns the final MetaSchedule database: one record per kept task, with its
    re-measured time.
    """
    final = ms.database.MemoryDatabase()

    def keep(ctx, record, secs):
        wl = final.commit_workload(ctx.mod)
        final.commit_tuning_record(ms.database.TuningRecord(
            record.trace, wl, secs, target, record.args_info))

    checks = []
    for ctx in ctxs:
        name = ctx.task_name
        wl = database.commit_workload(ctx.mod)
        top = database.get_top_k(wl, 1)
        seed = seeds.get(name)
        if not top:
            continue
        if seed is None:
            keep(ctx, top[0], top[0].run_secs)
            stats.unchecked.append(name)
            continue
        if str(top[0].trace) == str(seed.sch.trace):
            continue  # the rules' schedule is the best measured: no record, rules apply
        sch = s_tir.Schedule(ctx.mod)
        try:
            top[0].trace.apply_to_schedule(sch, remove_postproc=False)
        except Exception:  # noqa: BLE001 - a record that does not replay is not kept
            continue
        checks.append((ctx, seed, ms.MeasureCandidate(sch, top[0].args_info), top[0]))
    if not checks:
        return final
    cands = []
    for _ in range(rounds):
        for _ctx, seed, best, _rec in checks:
            cands += [seed, best]
    secs = _measure(cands, target, builder, runner)
    weight = dict(zip(stats.tasks, stats.weights, strict=False))
    model_secs = sum(weight.get(n, 1) * t for n, t in stats.seeds.items())
    per = 2 * len(checks)
    for k, (ctx, _seed, _best, record) in enumerate(checks):
        times = {"seed": [], "best": []}
        for r in range(rounds):
            for j, label in enumerate(("seed", "best")):
                value = secs[r * per + 2 * k + j]
                if value is not None:
                    times[label].append(min(value))
        if not times["seed"] or not times["best"]:
            continue  # not comparable: keep the rules
        seed_s, best_s = min(times["seed"]), min(times["best"])
        ratio = best_s / seed_s
        stats.rechecked[ctx.task_name] = ratio
        stats.seeds[ctx.task_name] = seed_s
        stats.best[ctx.task_name] = min(seed_s, best_s)
        saving = weight.get(ctx.task_name, 1) * (seed_s - best_s)
        if ratio <= 1.0 - min_gain and saving >= min_share * model_secs:
            keep(ctx, record, [best_s])
            stats.kept[ctx.task_name] = ratio
    return final


def model_inputs(mod) -> dict | None:
    """Random inputs for ``mod["main"]`` (name -> numpy array), None when a shape is not
    static or a parameter is not a tensor."""
    rng = np.random.default_rng(0)
    out = {}
    for param in mod["main"].params:
        ty = param.ty
        shape = getattr(ty, "shape", None)
        if shape is None or not hasattr(ty, "dtype"):
            return None
        dims = []
        for d in shape:
            value = getattr(d, "value", d)
            if not isinstance(value, int):
                return None
            dims.append(int(value))
        dtype = str(ty.dtype)
        if dtype.startswith("float"):
            out[param.name] = rng.standard_normal(dims).astype(dtype)
        else:
            out[param.name] = np.zeros(dims, dtype=dtype)
    return out


def _local_model_latency(ex, inputs: dict, target, repeat: int) -> float:
    """Best latency (seconds) of ``repeat`` runs of a compiled model on the local device."""
    dev = tvm.cpu() if target.kind.name == "llvm" else tvm.device(target.kind.name)
    vm = relax.VirtualMachine(ex, dev)
    args = [tvm.runtime.tensor(v, dev) for v in inputs.values()]
    vm["main"](*args)  # warm-up
    vm.set_input("main", *args)
    timer = vm.time_evaluator("invoke_stateful", dev, number=1, repeat=repeat)
    return min(float(t) for t in timer("main").results)


@contextlib.contextmanager
def _local_timer(exes: dict, inputs: dict, target, repeat: int):
    yield lambda label: _local_model_latency(exes[label], inputs, target, repeat)


@contextlib.contextmanager
def _remote_timer(exes: dict, inputs: dict, target, repeat: int, rpc: tuple,
                  fcompile=None):
    """``label -> seconds``: each build uploaded once to one server of the RPC key and timed
    there (best of ``repeat`` runs per call)."""
    tracker, key, timeout = rpc
    sess = request_session(tracker, key, timeout=timeout,
                           session_timeout=max(300.0, 4 * timeout))
    dev = sess.cuda() if target.kind.name == "cuda" else sess.cpu()
    tmp = tempfile.mkdtemp(prefix="hcprune_model_check_")
    try:
        timers = {}
        for label, ex in exes.items():
            path = os.path.join(tmp, f"hcprune_model_check_{label}.so")
            ex.export_library(path, fcompile=fcompile)
            sess.upload(path)
            vm = relax.VirtualMachine(sess.load_module(os.path.basename(path)), dev)
            args = [tvm.runtime.tensor(v, dev) for v in inputs.values()]
            vm["main"](*args)  # warm-up
            vm.set_input("main", *args)
            timers[label] = vm.time_evaluator("invoke_stateful", dev, number=1, repeat=repeat)
        yield lambda label: min(float(t) for t in timers[label]("main").results)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def compare_with_rules(mod, target, database, *, rounds: int = 5, repeat: int = 10,
                       min_gain: float = 0.01, predicted: float | None = None,
                       max_passes: int = 3, rpc: tuple | None = None, preset=None,
                       fcompile=None) -> tuple:
    """Time the model built with ``database`` against the rules-only build; keep the faster.

    Both builds are run on this machine (or, with ``rpc``, on one server of the RPC key),
    interleaved, ``rounds`` times (best of ``repeat`` runs each); the database is kept only
    when its model is at least ``min_gain`` faster.
    On a shared machine one pass can be fooled either way (measured here: the same pair of
    builds timed 1.65x and 0.65x in two passes), so when the result contradicts
    ``predicted`` (the tuned/rules ratio expected from the per-task measurements), up to
    ``max_passes`` passes are run and the best time of each build over all passes decides.

    Parameters
    ----------
    mod : tvm.IRModule
        The model that was tuned.
    target : Target, dict or str
        A target this machine runs (llvm, or cuda with a local GPU).
    database : ScheduleDatabase
        The tuned records.
    predicted : float, optional
        Expected tuned/rules model latency ratio (e.g. from :class:`TuneStats`).
    rpc : (tracker, key, timeout), optional
        Time both builds on a server of this RPC tracker and key (``timeout``: seconds to
        wait for a free server) instead of this machine.
    preset : optional
        The preset both builds run (:func:`~tvm_hcprune.backend.pipeline.build`).
    fcompile : optional
        With ``rpc``: links the uploaded libraries (a cross compiler).

    Returns
    -------
    (ScheduleDatabase, dict)
        ``database`` itself, or an empty database for the target when the rules-only model
        was as fast; and the figures (``tuned_ms``, ``rules_ms``, ``ratio``, ``passes``,
        ``predicted``, ``timed_on``, ``kept``: ``"tuned"`` or ``"rules"``, or ``skipped``
        with the reason).
    """
    target = dbm.resolve_target(target)
    if len(database) == 0:
        return database, {"kept": "rules", "skipped": "no record beat the rules per task"}
    inputs = model_inputs(mod)
    if inputs is None:
        return database, {"kept": "tuned", "skipped": "the model's inputs are not static"}
    start = time.perf_counter()
    exes = {"rules": pipeline.build(mod, target, database=False, preset=preset),
            "tuned": pipeline.build(mod, target, database=database, preset=preset)}
    best = dict.fromkeys(exes, float("inf"))
    expect_gain = predicted is not None and predicted <= 1.0 - min_gain
    passes = 0
    timer = (_local_timer(exes, inputs, target, repeat) if rpc is None
             else _remote_timer(exes, inputs, target, repeat, rpc, fcompile))
    with timer as time_one:
        while True:
            passes += 1
            for _ in range(rounds):
                for label in exes:
                    best[label] = min(best[label], time_one(label))
            ratio = best["tuned"] / best["rules"]
            kept = "tuned" if ratio <= 1.0 - min_gain else "rules"
            if predicted is None or (kept == "tuned") == expect_gain or passes >= max_passes:
                break
    info = {"tuned_ms": round(best["tuned"] * 1e3, 4), "rules_ms": round(best["rules"] * 1e3, 4),
            "ratio": round(ratio, 4), "records": len(database), "kept": kept,
            "passes": passes, "predicted": None if predicted is None else round(predicted, 4),
            "timed_on": "this machine" if rpc is None else f"RPC key {rpc[1]!r} at {rpc[0]}",
            "seconds": round(time.perf_counter() - start, 1)}
    if kept == "tuned":
        return database, info
    empty = dbm.new_database(target, dict(database.meta), database.source)
    return empty, info


# ---------------------------------------------------------------------------------------
# the entry point


def extract_tasks(mod, target, preset=None):
    """MetaSchedule's tasks of ``mod`` as ``preset``'s build compiles it: the PrimFuncs the
    preset's steps hand to the database hook
    (:func:`~tvm_hcprune.backend.pipeline.preset_prepare`; default preset: the target
    family's, what :func:`~tvm_hcprune.backend.pipeline.build` runs). Already-scheduled
    functions are excluded, except the BSR kernels, which have their own search space
    (:mod:`tvm_hcprune.tuning.bsr`)."""
    return _extract(mod, target, preset)[1]


def _extract(mod, target, preset=None):
    """``(prepared module, tasks)`` of :func:`extract_tasks`."""
    target = dbm.resolve_target(target)
    prepared = pipeline.preset_prepare(mod, target, preset)
    tasks = ms.relax_integration.extract_tasks(prepared, target)
    out = []
    for task in tasks:
        func = task.dispatched[0]["main"]
        if (func.attrs is not None and func.attrs.get(dbm.SCHEDULED_ATTR, False)
                and not bsr_tuning.is_bsr_func(func)):
            continue
        out.append(task)
    return prepared, out


def _check_trials(trials, trials_per_task):
    for name, value in (("trials", trials), ("trials_per_task", trials_per_task)):
        if value is None and name == "trials_per_task":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise HCPruneError(f"{name} must be a positive integer, got {value!r}")


def tune(mod, target, trials: int = 64, work_dir=None, runner="local", rpc_tracker=None,
         rpc_key=None, *, output=None, trials_per_task: int | None = None,
         num_trials_per_iter: int | None = None, seed_rules: bool = True, seed: int = 0,
         number: int = 3, repeat: int = 1, min_repeat_ms: int = 50,
         session_timeout: float = 60.0, progress: bool = True, meta: dict | None = None,
         return_stats: bool = False, min_gain: float = 0.02, model_check: bool = True,
         preset=None, cross_compiler=None, cross_compiler_options=None):
    """Tune the fused functions of ``mod`` for ``target`` with MetaSchedule.

    Parameters
    ----------
    mod : tvm.IRModule
        A Relax model (pruned or not); the tasks are the PrimFuncs ``preset``'s build
        compiles (its steps up to the database hook), so the records match at compile
        time: build with the same ``preset``.
    target : Target, dict or str
        E.g. ``"llvm"`` (host CPU), ``{"kind": "llvm", "mcpu": "znver3"}``,
        ``"cuda -arch=sm_80"``.
    trials : int
        Total measurement budget over all tasks (tvmc's ``--trials``).
    work_dir : str or PathLike, optional
        Where MetaSchedule's logs go; a temporary folder (removed afterwards) when None.
    runner : ``"local"``, ``"rpc"`` or a MetaSchedule Runner
        ``"rpc"`` is implied by ``rpc_tracker``.
    rpc_tracker, rpc_key : str, optional
        ``"host:port"`` and device key of a TVM RPC tracker; measurements run on all its
        servers for the key in parallel.
    output : str or PathLike, optional
        Write the database there (JSON, atomically).
    trials_per_task : int, optional
        Cap per task (default: ``trials``).
    num_trials_per_iter : int, optional
        Candidates per measured batch (default: ``min(trials_per_task, 16)``).
    seed_rules : bool
        Measure the schedule rules' schedules (the unscheduled function where no rule fits)
        first and start the search from them. At the end, every task whose best record is
        not its seed is re-measured side by side with the seed; the record is kept only when
        it is ``min_gain`` faster, otherwise the task gets no record and keeps the rules'
        schedule (so no task ends slower than the rules, as measured).
    seed : int
        Random seed of the search.
    number, repeat, min_repeat_ms : int
        Evaluator settings of each measurement.
    session_timeout : float
        Bound (seconds) of one RPC measurement.
    progress : bool
        Show a tqdm bar.
    meta : dict, optional
        Extra provenance stored in the database.
    return_stats : bool
        Return ``(database, TuneStats)`` instead of the database.
    min_gain : float
        How much faster than the rules' schedule (re-measured side by side) a task's record
        must be to be kept (0.02: 2%); it must also save at least 0.1% of the model's time.
    model_check : bool
        After the per-task selection, build the whole model with the records and with the
        rules only, time both on the measuring device (this machine, or a server of the RPC
        key), interleaved (:func:`compare_with_rules`), and return an empty database when
        the rules-only model is as fast. This covers tasks without a seed too. Skipped, and
        said so in ``TuneStats.model["skipped"]``, for a custom non-local runner (it times
        single functions), prepared modules and dynamic input shapes; the figures are in
        ``TuneStats.model`` and the database's ``meta["model_check"]``.
    preset : str, path or Preset, optional
        The preset whose build the records are for (default: the target family's, what
        :func:`~tvm_hcprune.backend.pipeline.build` runs without ``preset=``).
    cross_compiler, cross_compiler_options : optional
        With RPC: link every candidate (and the model check's builds) into a ``.so`` here
        with this compiler (:func:`~tvm_hcprune.tuning.rpc.cross_compiler`, tvmc's
        ``--cross-compiler``), for a device of another ISA or without a compiler.

    Returns
    -------
    ScheduleDatabase (or (ScheduleDatabase, TuneStats))

    Raises
    ------
    HCPruneError
        Bad trials, unreachable tracker or unknown key, no task to tune, or no measurement
        succeeded.

    Examples
    --------
    >>> db = tvm_hcprune.tune(pruned, "llvm", trials=256, output="db.json")  # doctest: +SKIP
    >>> ex = tvm_hcprune.build(pruned, "llvm", database=db)  # doctest: +SKIP
    """
    _check_trials(trials, trials_per_task)
    target = dbm.resolve_target(target)
    if target.kind.name == "cuda":
        target = with_limits(target)  # TuneContext needs max_threads_per_block
    per_task = min(trials_per_task or trials, trials)
    per_iter = num_trials_per_iter or min(per_task, 16)

    # the runner first: a bad tracker must fail before the slow parts
    fcompile = make_fcompile(cross_compiler, cross_compiler_options)
    if fcompile is not None and rpc_tracker is None:
        raise HCPruneError("cross_compiler= (--cross-compiler) links the candidates for an RPC "
                           "device: give rpc_tracker and rpc_key too (--rpc-tracker/--rpc-key)")
    if rpc_tracker is not None or runner == "rpc":
        if rpc_tracker is None or not rpc_key:
            raise HCPruneError("RPC tuning needs both rpc_tracker='host:port' and rpc_key")

        ms_runner = make_rpc_runner(rpc_tracker, rpc_key, session_timeout=session_timeout,
                                    number=number, repeat=repeat, min_repeat_ms=min_repeat_ms)
    elif runner == "local":
        ms_runner = None  # created below, inside the thread setting
    elif isinstance(runner, ms.runner.Runner):
        ms_runner = runner
    else:
        raise HCPruneError(
            f"runner must be 'local', 'rpc' or a MetaSchedule Runner, not {runner!r}"
        )

    start = time.perf_counter()
    dbm.ensure_tensor_intrinsics(target)
    prepared, tasks = _extract(mod, target, preset)
    bsr_args = bsr_tuning.bsr_argument_table(prepared)  # real index arrays for the runner
    if not tasks:
        raise HCPruneError("the model has no function left to tune (all are scheduled already)")

    tmp = None
    if work_dir is None:
        tmp = tempfile.mkdtemp(prefix="hcprune_tune_")
        work_dir = tmp
    work_dir = str(Path(work_dir))
    Path(work_dir).mkdir(parents=True, exist_ok=True)
    stats = TuneStats(tasks=[t.task_name for t in tasks], weights=[int(t.weight) for t in tasks])
    artifacts = tempfile.mkdtemp(prefix="hcprune_artifacts_")
    try:
        with _quiet_ms_console(), _thread_env(target):
            if ms_runner is None:
                ms_runner = ms.runner.LocalRunner(
                    evaluator_config=ms.runner.EvaluatorConfig(
                        number=number, repeat=repeat, min_repeat_ms=min_repeat_ms,
                        enable_cpu_cache_flush=False,
                    ),
                    timeout_sec=max(30.0, session_timeout),
                )
            bsr_tuning.feed_runner(ms_runner, bsr_args)  # the BSR kernels' real arrays
            strategy = ms.search_strategy.EvolutionarySearch(
                population_size=max(16, min(256, 4 * per_task)),
                init_measured_ratio=0.2,
                init_min_unmeasured=max(8, min(50, 2 * per_task)),
                genetic_num_iters=2 if per_task <= 16 else 4,
            )
            ctxs, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
                tasks, work_dir, strategy=strategy, num_threads="physical", seed=seed
            )
            ctxs = [bsr_tuning.bsr_tune_context(c, seed) if bsr_tuning.is_bsr_func(c.mod["main"])
                    else c for c in ctxs]
            ms_db = ms.database.MemoryDatabase()
            builder = in_process_builder(artifacts, fcompile)
            seeds = {}
            if seed_rules:
                seeds = _measure_seeds(ctxs, target, builder, ms_runner, ms_db, stats)
            total = min(trials, per_task * len(ctxs))
            bar = progress_bar(total=total, enabled=progress, desc="tuning", unit="trial",
                               dynamic_ncols=True)
            callbacks = [*ms.measure_callback.MeasureCallback.create("default"),
                         _make_progress_callback(stats, bar)]
            cost_model = ms.CostModel.create(
                "xgb", num_warmup_samples=min(16, max(4, per_iter)),
                num_tuning_cores=int(ctxs[0].num_threads),
            )
            try:
                ms.tune_tasks(
                    tasks=ctxs, task_weights=weights, work_dir=work_dir,
                    max_trials_global=trials, max_trials_per_task=per_task,
                    num_trials_per_iter=per_iter, builder=builder, runner=ms_runner,
                    database=ms_db, cost_model=cost_model, measure_callbacks=callbacks,
                    task_scheduler="gradient",
                )
                stats.measured = dbm.database_from_ms(ms_db, target, {"measured": True})
                ms_db = select_records(ctxs, target, builder, ms_runner, ms_db, seeds,
                                       stats, min_gain=min_gain)
            finally:
                done = sum(1 for n in stats.tasks if n in stats.best)
                bar.set_postfix_str(f"tasks {done}/{len(stats.tasks)}, "
                                    f"best {stats.total_latency() * 1e3:.3f} ms")
                bar.close()
    finally:
        shutil.rmtree(artifacts, ignore_errors=True)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    stats.seconds = time.perf_counter() - start
    if stats.valid == 0 and not stats.seeds:
        raise HCPruneError(
            f"tuning measured nothing: all {stats.trials} trials failed "
            f"(first errors: {stats.errors[:3]}); check the target and the device"
        )
    info = {
        "family": _family(target),
        "trials": trials,
        "trials_per_task": per_task,
        "measured": stats.trials,
        "valid": stats.valid,
        "runner": "rpc" if rpc_tracker is not None else str(runner if isinstance(runner, str)
                                                          else "custom"),
        "seconds": round(stats.seconds, 1),
        **(meta or {}),
    }
    result = dbm.database_from_ms(ms_db, target, info)
    if model_check:
        result, stats.model = _check_model(mod, target, result, stats, runner, rpc_tracker,
                                           rpc_key, session_timeout, preset, fcompile)
    if stats.model:
        result.meta["model_check"] = stats.model
    if output is not None:
        result.save(output)
    return (result, stats) if return_stats else result


def _check_model(mod, target, result, stats: TuneStats, runner, rpc_tracker, rpc_key,
                 session_timeout, preset=None, fcompile=None) -> tuple:
    """The model-level check of :func:`tune` on the device the tasks were measured on."""
    unchecked = (f"the {len(result)} record(s) are NOT checked against the rules-only "
                 "model")
    if dbm.is_prepared(mod):
        return result, {"kept": "tuned", "skipped": "a prepared (fused) module cannot be "
                                                    f"built as a model: {unchecked}"}
    rpc = None
    if rpc_tracker is not None:
        rpc = (rpc_tracker, rpc_key, max(float(session_timeout), 10.0))
    elif not ((isinstance(runner, str) and runner == "local")
              or isinstance(runner, ms.runner.LocalRunner)):
        return result, {"kept": "tuned", "skipped": "a custom MetaSchedule runner times "
                                                    "single functions, not a whole model: "
                                                    f"{unchecked}"}
    if rpc is None:
        with _thread_env(target):
            return compare_with_rules(mod, target, result, predicted=stats.predicted_ratio(),
                                      preset=preset)
    try:
        return compare_with_rules(mod, target, result, predicted=stats.predicted_ratio(),
                                  rpc=rpc, preset=preset, fcompile=fcompile)
    except Exception as err:  # noqa: BLE001 - a lost device must not lose the tuning run
        reason = str(err).strip().splitlines()[-1][:300] if str(err).strip() else ""
        return result, {"kept": "tuned", "skipped": "timing the model on the RPC device "
                                                    f"failed ({type(err).__name__}: "
                                                    f"{reason}): {unchecked}"}


def summary_lines(stats: TuneStats, database) -> list[str]:
    """What a tuning run kept and why, as lines for a person (``hcprune tune`` prints them).

    Parameters
    ----------
    stats : TuneStats
        :func:`tune`'s statistics (``return_stats=True``).
    database : ScheduleDatabase
        The database :func:`tune` returned (after the per-task and model checks).

    Returns
    -------
    list of str
        Trials; per task, how many records beat the rules' schedule side by side, how many
        were kept without that check (no seed) and how many tasks keep the rules; the
        model-level comparison or why it did not run; the records returned.

    Examples
    --------
    >>> db, stats = tvm_hcprune.tune(mod, "llvm", trials=64, return_stats=True)  # doctest: +SKIP
    >>> print("\n".join(summary_lines(stats, db)))  # doctest: +SKIP
    """
    lines = [f"tuned {len(stats.tasks)} tasks, {stats.valid}/{stats.trials} valid trials in "
             f"{stats.seconds:.0f} s"]
    beat, unchecked = len(stats.kept), len(stats.unchecked)
    rules = len(stats.tasks) - beat - unchecked
    per_task = f"per task: {beat} record(s) beat the rules' schedule re-measured side by side"
    if unchecked:
        per_task += (f", {unchecked} record(s) kept WITHOUT that check (no rules' schedule was "
                     "measured for them: --no-seed, or no rule fits)")
    lines.append(per_task + f"; {rules} task(s) keep the rules")
    model = stats.model
    if "ratio" in model:
        lines.append(f"model on {model.get('timed_on', 'this machine')}: tuned "
                     f"{model['tuned_ms']:.3f} ms vs rules {model['rules_ms']:.3f} ms -> "
                     f"keeping the {model['kept']}")
    elif model.get("skipped"):
        lines.append(f"model check skipped: {model['skipped']}")
    elif len(database):
        lines.append(f"model check off: the {len(database)} record(s) are NOT checked against "
                     "the rules-only model")
    lines.append(f"{len(database)} record(s) returned")
    return lines


def _family(target) -> str:
    try:
        return dbm.target_family(target)
    except Exception:  # noqa: BLE001 - provenance only
        return ""
