"""Data-driven criteria: ``activation``, ``apoz`` and ``thinet``.

They read a :class:`~tvm_hcprune.recovery.calibration.Calibration` of the analysed module, handed
over as ``GroupViews.calibration`` (``prune(..., calibration=cal)`` or
``make_plan(..., calibration=cal)``). A group's channels are located in each layer through
the members' descriptors (segment offsets, inner repetition after a flatten), exactly as
the weight-based criteria locate weight slices; no criterion branches on op types beyond
reading a conv/matmul weight as ``[O, I, ...]``.

* ``activation``: mean ``|x|`` of the channel where the group's consumers read it (the
  layer inputs, after batch-norm and activation); producers' raw outputs where a group has
  no calibrated consumer.
* ``apoz``: ``1 - APoZ`` (average percentage of zeros, Hu et al. 2016) at the same place;
  channels that are almost always zero after a ReLU score low.
* ``thinet``: ThiNet-style next-layer error (Luo et al. 2017). For each consumer the
  contribution ``z_c`` of channel ``c`` to the consumer's output on the calibration rows is
  computed; channels are removed greedily, each time the one whose removal adds least to
  ``||sum_{removed} z_c||^2``. The removal order is the score (removed first = least
  important), so the kept set for any budget is the greedy solution.
"""

from __future__ import annotations

import numpy as np

from tvm_hcprune.errors import HCPruneError
from tvm_hcprune.ops.weights import layer_weight_oi
from tvm_hcprune.planning.criteria.registry import GroupViews, aggregate, register_criterion


def _need_calibration(views: GroupViews, name: str):
    if views.calibration is None or views.graph is None or views.group is None:
        raise HCPruneError(
            f"criterion {name!r} needs calibration data: pass "
            "calibration=tvm_hcprune.calibrate(mod, samples) to prune() (or make_plan())")
    return views.calibration


def member_index(graph, member, group_id: int) -> np.ndarray | None:
    """``[size, m]`` indices along the member's axis that hold each channel of the group."""
    size = graph.groups[group_id].size
    cols, offset = [], 0
    for seg in member.desc:
        if seg.space is not None and graph.space_group[seg.space] == group_id:
            idx = offset + np.arange(seg.size)[:, None] * seg.inner + np.arange(seg.inner)
            cols.append(idx)
        offset += seg.length
    if not cols:
        return None
    out = np.concatenate(cols, axis=1)
    assert out.shape[0] == size
    return out


def _layer(cal, var):
    return cal.layers.get(var.name)


def _stat_scores(views: GroupViews, name: str, stat) -> np.ndarray:
    cal = _need_calibration(views, name)
    graph, g = views.graph, views.group
    per = []
    for m in g.members:
        if m.kind != "consumer":
            continue
        lc = _layer(cal, m.var)
        idx = member_index(graph, m, g.id)
        if lc is None or idx is None or lc.input_stats.channels == 0:
            continue
        per.append(stat(lc.input_stats)[idx].mean(1))
    if not per:  # no calibrated consumer: the producers' raw outputs
        for m in g.members:
            lc = _layer(cal, m.var) if m.kind == "producer" else None
            idx = member_index(graph, m, g.id) if lc is not None else None
            if idx is not None:
                per.append(stat(lc.output_stats)[idx].mean(1))
    if not per:
        raise HCPruneError(f"criterion {name!r}: the calibration holds no layer of group "
                           f"{g.id} (producers {g.producers}); calibrate the analysed module")
    return aggregate(per, views.size)


@register_criterion("activation")
def activation(views: GroupViews, rng, **_):
    """Mean ``|activation|`` of each channel at its consumers (needs calibration)."""
    return _stat_scores(views, "activation", lambda s: s.mean_abs)


@register_criterion("apoz")
def apoz(views: GroupViews, rng, **_):
    """``1 - APoZ``: channels that are mostly zero are least important (needs calibration)."""
    return _stat_scores(views, "apoz", lambda s: 1.0 - s.apoz)


def _contribution_gram(graph, member, group_id, lc, max_rows: int, rng) -> np.ndarray | None:
    """``G[c, d] = sum_{rows, outputs} z_c z_d`` of one consumer (float64 ``[size, size]``)."""
    call = graph.ctx.values[member.var]
    if lc is None or lc.X is None or call.op.name not in ("relax.nn.conv2d", "relax.matmul"):
        return None
    if call.op.name == "relax.nn.conv2d" and int(call.attrs.groups) != 1:
        return None
    idx = member_index(graph, member, group_id)
    if idx is None:
        return None
    w, _ = layer_weight_oi(call)  # [O, I, ...]
    size = idx.shape[0]
    X = lc.X
    if X.shape[0] > max_rows:
        X = X[np.sort(rng.choice(X.shape[0], max_rows, replace=False))]
    wc = w[:, idx].reshape(w.shape[0], size, -1).astype(np.float64)  # [O, size, j]
    gram = np.zeros((size, size))
    for s in range(0, X.shape[0], 64):
        xc = X[s:s + 64][:, idx].reshape(min(64, X.shape[0] - s), size, -1)
        z = np.einsum("rcj,ocj->roc", xc.astype(np.float64), wc)  # [r, O, size]
        gram += np.einsum("roc,rod->cd", z, z)
    return gram


@register_criterion("thinet")
def thinet(views: GroupViews, rng, max_rows: int = 512, **_):
    """ThiNet-style greedy next-layer error (needs calibration with reconstruction rows).

    Parameters
    ----------
    max_rows : int
        Calibration rows per consumer used for the contributions.
    """
    cal = _need_calibration(views, "thinet")
    graph, g = views.graph, views.group
    gram = np.zeros((views.size, views.size))
    used = 0
    for m in g.members:
        if m.kind != "consumer":
            continue
        gm = _contribution_gram(graph, m, g.id, _layer(cal, m.var), max_rows, rng)
        if gm is None:
            continue
        tr = float(np.trace(gm))
        gram += gm / tr if tr > 0 else gm  # each consumer weighs the same
        used += 1
    if used == 0:  # no consumer with reconstruction rows: fall back to activations
        return activation(views, rng)
    n = views.size
    removed = np.zeros(n, bool)
    cross = np.zeros(n)  # 2 * sum_{s removed} G[s, c]
    order = []
    diag = np.diag(gram).copy()
    for _ in range(n):
        cost = np.where(removed, np.inf, diag + cross)
        c = int(np.argmin(cost))  # ties: the lower index goes first
        order.append(c)
        removed[c] = True
        cross += 2 * gram[c]
    scores = np.empty(n)
    scores[np.asarray(order)] = np.arange(n, dtype=np.float64)
    return scores
