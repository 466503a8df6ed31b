"""``MeasuredLatency``: the latency model a Latency budget measures when it needs one, and
the closed loop that corrects a table-based plan by measuring the pruned model.

A table predicts the whole model from layers timed one by one and two whole-model
calibration points; on real models the measured result of a plan landed 5-25% away from the
asked fraction (under it). The closed loop builds the chosen plan, times it against the dense
model in the same interleaved rounds on the same runner, scales the budget's limit (in the
table's milliseconds) by goal / measured and plans again, a bounded number of times; the
plan returned is one whose measured latency is within ``tolerance`` of the goal, else the
closest one under the goal, else the closest one.

Under ``compare_uniform`` (the default) the planner has two candidate allocations, the
knapsack's and the uniform one; the loop corrects each by its own measurements, in the same
timing rounds (:meth:`MeasuredLatency.refine_plans`), so that the choice between them is
made at equal measured latency, not at equal table prediction (the table misses each
allocation differently).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from tvm_hcprune.backend.pipeline import build
from tvm_hcprune.errors import HCPruneError, warn
from tvm_hcprune.latency.measure import LocalRunner, random_inputs
from tvm_hcprune.latency.model import forget_cached, latency_table
from tvm_hcprune.planning.plan import PrunePlan
from tvm_hcprune.transform.apply_plan import apply_plan

__all__ = ["MeasuredLatency"]


@dataclass(frozen=True)
class MeasuredLatency:
    """Measure a latency table for the model when a budget needs one, then (``refine`` > 0)
    correct the plan by measuring it (the default ``latency_model`` of a Latency budget).

    Parameters
    ----------
    runner : optional
        Where to measure: this machine (default) or an
        :class:`~tvm_hcprune.tuning.rpc.RPCRunner` (an RPC device).
    widths, database, cache_dir, repeats, number, progress
        Options of :func:`~tvm_hcprune.latency.latency_table`.
    refine : int
        Re-plans of the closed loop (0: the table's plan as it is). Each builds and times
        the pruned model once more.
    tolerance : float
        Relative distance from the goal at which the loop stops (0.05: within 5%).
    every_width : bool
        Let the budget choose every multiple of the alignment between a group's measured
        widths (their latency interpolated), not the ``widths`` measured ones only
        (:attr:`~tvm_hcprune.latency.LatencyTable.every_width`).

    Examples
    --------
    >>> pruned, report = tvm_hcprune.prune(mod, budget=tvm_hcprune.Latency(fraction=0.5),
    ...     target="llvm", latency_model=MeasuredLatency(refine=3))  # doctest: +SKIP
    >>> report.plan.config["closed_loop"][-1]["measured_fraction"]  # doctest: +SKIP
    0.49
    """

    runner: object = None
    widths: int = 4
    database: object = None
    cache_dir: object = "default"
    repeats: int = 5
    number: int = 10
    progress: bool = True
    refine: int = 2
    tolerance: float = 0.05
    every_width: bool = False

    def for_graph(self, graph, target, align: int, min_channels: int = 1, *,
                  sparse_levels=None, block=None):
        """The measured :class:`~tvm_hcprune.latency.LatencyTable` of ``graph`` on
        ``target`` (cached on disk); with ``sparse_levels`` (a mixed budget) its BSR-able
        layers timed at those block sparsities too."""
        table = latency_table(graph, target, align=align, min_channels=min_channels,
                              widths=self.widths, database=self.database,
                              cache_dir=self.cache_dir, repeats=self.repeats,
                              number=self.number, progress=self.progress, runner=self.runner,
                              sparse_levels=sparse_levels, block=block)
        table.every_width = bool(self.every_width)
        return table

    def refine_plan(self, graph, budget, target, replan, plan, limit: float,
                    dense_predicted: float):
        """The closed loop (see the module docs) for one plan: :meth:`refine_plans` with
        one family.

        Parameters
        ----------
        graph : ChannelGraph
        budget : Latency
        target : the compile target
        replan : callable
            ``replan(limit) -> (plan, allocation)``: the budget allocation at another limit
            in the table's milliseconds.
        plan : PrunePlan
            The table's plan at ``limit``.
        limit, dense_predicted : float
            Its limit and the dense model's prediction (table milliseconds).

        Returns
        -------
        PrunePlan
            The chosen plan; its ``config["closed_loop"]`` lists every step (limit, measured
            milliseconds and fraction, goal).
        """
        return self.refine_plans(graph, budget, target, [replan], [plan], limit,
                                 dense_predicted)[0]

    def refine_plans(self, graph, budget, target, replans, plans, limit: float,
                     dense_predicted: float) -> list:
        """The closed loop for several plan families at once (e.g. the knapsack's and the
        uniform allocation), so that they are compared at equal *measured* latency.

        Every step builds the current plan of each family not yet within ``tolerance`` and
        times them with the dense model in the same interleaved rounds; each family then
        moves its own limit (a table miss differs between allocations: on the text-direction
        classifier the uniform allocation's table plan for 0.58x measured 0.68x).

        Parameters
        ----------
        graph, budget, target, limit, dense_predicted
            As in :meth:`refine_plan` (one limit to start every family from).
        replans : sequence of callable
            Per family, ``replan(limit) -> (plan, allocation)``.
        plans : sequence of PrunePlan
            Per family, its table plan at ``limit``.

        Returns
        -------
        list of PrunePlan
            Per family, the plan picked as in :meth:`refine_plan` (with ``config["closed_loop"]``
            and ``"closed_loop_pick"``; ``config["closed_loop_timed"]`` counts the models
            built and timed by the whole loop, the dense one in every round included).

        Examples
        --------
        >>> knap, uni = MeasuredLatency().refine_plans(graph, hc.Latency(fraction=0.5), "llvm",
        ...     [replan_dense, replan_uniform], [p1, p2], 2.0, 4.0)  # doctest: +SKIP
        """
        if len(replans) != len(plans) or not plans:
            raise HCPruneError("refine_plans needs one replan function per plan (and a plan)")
        if self.refine <= 0:
            return list(plans)
        runner = self.runner if self.runner is not None else LocalRunner()
        dense_ex = build(graph.mod, target, database=self.database)
        x = random_inputs(graph.mod)
        loops = [_Loop(replan, plan, limit) for replan, plan in zip(replans, plans, strict=True)]
        timed = 0
        for step in range(self.refine + 1):
            active = [lp for lp in loops if not lp.done]
            if not active:
                break
            mods, index = [dense_ex], {}
            for lp in active:  # a plan two families share is built and timed once
                if _key(lp.plan) not in index:
                    index[_key(lp.plan)] = len(mods)
                    mods.append(apply_plan(graph, lp.plan))
            ms = runner.models(mods, target, self.database, repeats=self.repeats,
                               number=max(1, self.number // 2), inputs=[x] * len(mods))
            timed += len(mods)
            d_ms = ms[0]
            if step == 0:
                _warn_if_busy(d_ms, dense_predicted, self.cache_dir, target,
                              getattr(runner, "device", "local"))
            goal = budget.fraction * d_ms if budget.fraction is not None else budget.ms
            for n, lp in enumerate(active):
                p_ms = ms[index[_key(lp.plan)]]
                rec = {"step": step, "limit_ms": lp.lim, "dense_ms": d_ms, "measured_ms": p_ms,
                       "measured_fraction": p_ms / d_ms, "goal_ms": goal,
                       "error": p_ms / goal - 1.0}
                lp.add(rec)
                if self.progress:
                    tag = f" [{n + 1}/{len(active)}]" if len(loops) > 1 else ""
                    print(f"closed loop {step}/{self.refine}{tag}: measured {p_ms:.4g} ms = "
                          f"{p_ms / d_ms:.3f}x dense (goal {goal:.4g} ms, "
                          f"{100 * rec['error']:+.1f}%)", file=sys.stderr)
                if abs(rec["error"]) <= self.tolerance or step == self.refine:
                    lp.done = True
                elif not lp.advance(dense_predicted):
                    lp.done = True
        return [lp.result(self.tolerance, timed) for lp in loops]


#: the factor between the closed loop's dense time and the table's (its whole-model
#: measurement) beyond which one of them was timed on a busy host: both time the same model
BUSY_FACTOR = 3.0


def _warn_if_busy(measured_ms: float, table_ms: float, cache_dir, target="llvm",
                  device: str = "local") -> None:
    """Warn (:class:`~tvm_hcprune.errors.HCPruneWarning`) when the dense model now runs more
    than :data:`BUSY_FACTOR` times slower or faster than when the latency table timed it.
    Slower: the host is busy now (on a 2-core host running two other jobs, TVM's thread pool
    timed the dense MNIST model at 80-88 ms instead of 0.2 ms). Faster: the table was timed
    on a busy host and cached (that run's MNIST table, 88 ms, then made every later plan on
    an idle host miss its goal by 80%): the target's cached measurements are removed
    (:func:`~tvm_hcprune.latency.model.forget_cached`), so the next run measures again."""
    if table_ms <= 0 or measured_ms <= 0:
        return
    head = (f"the closed loop timed the dense model at {measured_ms:.4g} ms, the latency "
            f"table at {table_ms:.4g} ms")
    if measured_ms > BUSY_FACTOR * table_ms:
        warn(
            f"{head} ({measured_ms / table_ms:.1f}x slower now): the host is busy, or TVM's "
            f"thread pool has more threads than there are free cores; the plan is fitted to "
            f"these timings. Measure on an idle host, or set TVM_NUM_THREADS to the free "
            f"cores before TVM starts")
    elif table_ms > BUSY_FACTOR * measured_ms:
        removed = forget_cached(target, device, cache_dir)
        warn(
            f"{head} ({table_ms / measured_ms:.1f}x slower then): the table was measured "
            f"while the host was busy, and its plans miss the goal (the closed loop corrects "
            f"what it can)" + (f"; its cache file {removed} was removed, so the next run "
                               f"measures the table again (on an idle host)" if removed
                               else "; measure it again on an idle host"))


class _Loop:
    """One family's state in the closed loop: its replan function, the plans measured and
    the ``(limit, error)`` points tried."""

    def __init__(self, replan, plan, limit: float):
        self.replan, self.plan, self.lim = replan, plan, limit
        self.history, self.plans, self.points = [], [], []
        self.seen: dict = {}  # plan -> its measured error
        self.done = False

    def add(self, rec: dict) -> None:
        self.history.append(rec)
        self.plans.append(self.plan)
        self.points.append((self.lim, rec["error"]))
        self.seen[_key(self.plan)] = rec["error"]

    def advance(self, dense_predicted: float) -> bool:
        """Move to the next unmeasured plan (limits whose plan was measured cost nothing);
        False when there is none."""
        for _ in range(_MAX_SEARCH):
            nxt = _next_limit(self.points, dense_predicted)
            if nxt is None:
                return False
            try:
                cand, _alloc = self.replan(nxt)
            except HCPruneError:
                return False
            if _key(cand) not in self.seen:
                self.plan, self.lim = cand, nxt
                return True
            self.points.append((nxt, self.seen[_key(cand)]))
        return False

    def result(self, tolerance: float, timed: int) -> PrunePlan:
        pick = _pick(self.history, tolerance)
        chosen = self.plans[pick]
        return chosen.with_config(closed_loop=self.history, closed_loop_pick=pick,
                                  closed_loop_timed=timed)


_MAX_SEARCH = 24


def _key(plan) -> tuple:
    return (tuple(sorted((g, tuple(k)) for g, k in plan.kept.items())),
            tuple(sorted(plan.sparse_layers.items())))


def _next_limit(points, dense_predicted: float) -> float | None:
    """The next limit (table milliseconds) from the ``(limit, error)`` points tried: between
    the closest limits under and over the goal (secant, kept inside the bracket), else the
    last limit scaled by goal / measured; None when it cannot move."""
    top = dense_predicted * (1 - 1e-9)
    under = [p for p in points if p[1] <= 0]
    over = [p for p in points if p[1] > 0]
    last_lim, last_err = points[-1]
    if under and over:
        u = max(under)
        o = min(over)
        if o[0] <= u[0] * (1 + 1e-9):
            return None  # the bracket is closed: no width between the two plans
        t = -u[1] / (o[1] - u[1])
        lim = u[0] + min(max(t, 0.1), 0.9) * (o[0] - u[0])
    else:
        lim = last_lim / (1.0 + last_err)
    if lim >= top and last_lim >= top:
        return None
    return min(lim, top)


def _pick(history, tolerance: float) -> int:
    """Index of the step to keep: the closest within tolerance, else the closest under the
    goal, else the closest."""
    within = [i for i, r in enumerate(history) if abs(r["error"]) <= tolerance]
    if within:
        return min(within, key=lambda i: abs(history[i]["error"]))
    under = [i for i, r in enumerate(history) if r["error"] <= 0]
    if under:
        return max(under, key=lambda i: history[i]["error"])
    return min(range(len(history)), key=lambda i: abs(history[i]["error"]))
