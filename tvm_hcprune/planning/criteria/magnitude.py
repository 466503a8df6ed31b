"""Weight-magnitude criteria: ``l1``, ``l2``, ``redundancy``, ``bn_scale``, ``fpgm``,
``random``. Each scores a group's channels from its members' weights (never runs the model)."""

from __future__ import annotations

import numpy as np

from tvm_hcprune.planning.criteria.registry import GroupViews, aggregate, register_criterion


@register_criterion("l1")
def l1(views: GroupViews, rng, **_):
    """Sum of absolute weights of every producer and consumer slice."""
    return aggregate([np.abs(m).sum(1) for m in views.weights], views.size)


@register_criterion("l2")
def l2(views: GroupViews, rng, **_):
    """Euclidean norm of every producer and consumer slice."""
    return aggregate([np.linalg.norm(m, axis=1) for m in views.weights], views.size)


@register_criterion("redundancy")
def redundancy(views: GroupViews, rng, lam: float = 1e-2, **_):
    """r_i = ||w_i||^2 / (||w_i||^2 + lambda) per channel (lambda: ``lam``)."""
    out = []
    for m in views.weights:
        n = (m.astype(np.float64) ** 2).sum(1)
        out.append(n / (n + lam))
    return aggregate(out, views.size)


@register_criterion("bn_scale")
def bn_scale(views: GroupViews, rng, **_):
    """|gamma| of the batch-norms (or folded scales) on the group; l2 where there is none."""
    if not views.scales:
        return l2(views, rng)
    return aggregate([np.abs(m).sum(1) for m in views.scales], views.size)


@register_criterion("fpgm")
def fpgm(views: GroupViews, rng, **_):
    """Distance to the geometric median (FPGM): channels close to it are redundant.

    Score per producer = sum of Euclidean distances of a channel's filter to all others.
    """
    out = []
    for m in views.producers or views.weights:
        x = m.astype(np.float64)
        sq = (x**2).sum(1)
        d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0.0)
        out.append(np.sqrt(d2).sum(1))
    return aggregate(out, views.size)


@register_criterion("random")
def random(views: GroupViews, rng, **_):
    """Uniform random scores (a baseline)."""
    return rng.random(views.size)
