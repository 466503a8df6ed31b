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


def aggregate(per_member: list[np.ndarray], size: int) -> np.ndarray:
    """Normalise each layer's scores (mean 1) and sum over the group's members."""
    if not per_member:
        return np.zeros(size)
    return np.sum([normalise(np.asarray(s, np.float64)) for s in per_member], axis=0)
