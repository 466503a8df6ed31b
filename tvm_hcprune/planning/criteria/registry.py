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

from tvm_hcprune.errors import HCPruneError

_CRITERIA: dict[str, Callable] = {}


def register_criterion(name: str, override: bool = False) -> Callable:
    """Register ``fn(views, rng, **options) -> scores`` under ``name``.

    Examples
    --------
    >>> @tvm_hcprune.register_criterion("max_abs")  # doctest: +SKIP
    ... def max_abs(views, rng, **_):
    ...     return numpy.max([abs(w).max(1) for w in views.producers], axis=0)
    """

    def wrap(fn):
        if name in _CRITERIA and not override:
            raise ValueError(f"criterion {name!r} is already registered")
        _CRITERIA[name] = fn
        return fn

    return wrap


def get_criterion(name: str) -> Callable:
    """The criterion function registered as ``name``; :class:`HCPruneError` listing the
    registered names when there is none.

    Examples
    --------
    >>> from tvm_hcprune import get_criterion
    >>> get_criterion("l2").__name__
    'l2'
    """
    try:
        return _CRITERIA[name]
    except KeyError:
        raise HCPruneError(
            f"unknown criterion {name!r}; choose one of {', '.join(list_criteria())}"
        ) from None


def list_criteria() -> list[str]:
    """Names of the registered criteria, sorted.

    Examples
    --------
    >>> from tvm_hcprune import list_criteria
    >>> "fpgm" in list_criteria()
    True
    """
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


def normalise(v: np.ndarray) -> np.ndarray:
    m = float(np.mean(v))
    return v / m if m > 0 else v


def importance_curve(scores, unit: int = 1) -> np.ndarray:
    """Importance a group keeps by kept count: ``curve[k]`` with its ``k`` best units.

    A criterion scores each prunable *unit* of a group: a channel, or a whole attention
    head of ``unit`` (head_dim) channels (``ChannelGroup.unit``). Budgets compare groups on
    one scale: ``|scores|`` divided by their mean, so that a group's average **channel**
    weighs 1, and each unit weighs its ``unit`` channels. A head thus counts as the sum of
    its channels (for ``l1`` exactly the sum of its channels' normalised scores) and a
    group's total is its channel count whatever the criterion's scale, so one head is not
    on par with one FFN channel.

    Parameters
    ----------
    scores : array_like
        One score per unit (the criterion's output for the group).
    unit : int
        Channels per unit (1 for plain channel groups).

    Returns
    -------
    numpy.ndarray
        ``len(scores) + 1`` non-decreasing values from 0 to ``len(scores) * unit`` (all zero
        when every score is zero).

    Examples
    --------
    >>> importance_curve([1.0, 3.0]).tolist()
    [0.0, 1.5, 2.0]
    >>> importance_curve([1.0, 3.0], unit=4).tolist()
    [0.0, 6.0, 8.0]
    """
    s = np.abs(np.asarray(scores, dtype=np.float64)).ravel()
    mean = float(np.mean(s)) if s.size else 0.0
    per = np.sort(s)[::-1] / (mean or 1.0) * int(unit)
    return np.concatenate([[0.0], np.cumsum(per)])


def aggregate(per_member: list[np.ndarray], size: int) -> np.ndarray:
    """Normalise each layer's scores (mean 1) and sum over the group's members."""
    if not per_member:
        return np.zeros(size)
    return np.sum([normalise(np.asarray(s, np.float64)) for s in per_member], axis=0)
