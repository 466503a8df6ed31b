"""Criteria registry: per-channel importance scores of a channel group.

A criterion is a function ``fn(views, rng, **options) -> np.ndarray`` where ``views`` is a
:class:`GroupViews`: per member of the group (producer weights' output-channel slices,
consumer weights' input-channel slices, per-channel scales such as batch-norm gamma) a
matrix of shape ``(channels, k)``. Criteria never look at op types; the handlers'
axis declarations decide what a member's slice is. Higher score = more important.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import HCPruneError

_CRITERIA: dict[str, Callable] = {}


def register_criterion(name: str, override: bool = False) -> Callable:
    """Register ``fn(views, rng, **options) -> scores`` under ``name``."""

    def wrap(fn):
        if name in _CRITERIA and not override:
            raise ValueError(f"criterion {name!r} is already registered")
        _CRITERIA[name] = fn
        return fn

    return wrap


def get_criterion(name: str) -> Callable:
    try:
        return _CRITERIA[name]
    except KeyError:
        raise HCPruneError(
            f"unknown criterion {name!r}; choose one of {', '.join(list_criteria())}"
        ) from None


def list_criteria() -> list[str]:
    return sorted(_CRITERIA)


@dataclass
class GroupViews:
    """Per-member ``(channels, k)`` matrices of one group, by member kind."""

    size: int
    producers: list[np.ndarray]
    consumers: list[np.ndarray]
    scales: list[np.ndarray]
    # optional context for data-driven criteria (``criteria.activation``): the analysis,
    # the group and a ``Calibration`` of the analysed module (None when not given)
    graph: object = None
    group: object = None
    calibration: object = None

    @property
    def weights(self) -> list[np.ndarray]:
        return self.producers + self.consumers


def _normalise(v: np.ndarray) -> np.ndarray:
    m = float(np.mean(v))
    return v / m if m > 0 else v


def _aggregate(per_member: list[np.ndarray], size: int) -> np.ndarray:
    """Normalise each layer's scores (mean 1) and sum over the group's members."""
    if not per_member:
        return np.zeros(size)
    return np.sum([_normalise(np.asarray(s, np.float64)) for s in per_member], axis=0)


@register_criterion("l1")
def l1(views: GroupViews, rng, **_):
    """Sum of absolute weights of every producer and consumer slice."""
    return _aggregate([np.abs(m).sum(1) for m in views.weights], views.size)


@register_criterion("l2")
def l2(views: GroupViews, rng, **_):
    """Euclidean norm of every producer and consumer slice."""
    return _aggregate([np.linalg.norm(m, axis=1) for m in views.weights], views.size)


@register_criterion("redundancy")
def redundancy(views: GroupViews, rng, lam: float = 1e-2, **_):
    """r_i = ||w_i||^2 / (||w_i||^2 + lambda) per channel (lambda: ``lam``)."""
    out = []
    for m in views.weights:
        n = (m.astype(np.float64) ** 2).sum(1)
        out.append(n / (n + lam))
    return _aggregate(out, views.size)


@register_criterion("bn_scale")
def bn_scale(views: GroupViews, rng, **_):
    """|gamma| of the batch-norms (or folded scales) on the group; l2 where there is none."""
    if not views.scales:
        return l2(views, rng)
    return _aggregate([np.abs(m).sum(1) for m in views.scales], views.size)


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
    return _aggregate(out, views.size)


@register_criterion("random")
def random(views: GroupViews, rng, **_):
    """Uniform random scores (a baseline)."""
    return rng.random(views.size)


from . import activation as _activation  # noqa: E402,F401  (registers activation, apoz, thinet)
