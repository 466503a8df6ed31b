"""Importance criteria, keyed by name: a criterion scores each channel of a group
(higher = more important to keep).

:mod:`.magnitude` holds the weight criteria (``l1``, ``l2``, ``redundancy``, ``bn_scale``,
``fpgm``, ``random``), :mod:`.activation` the calibration-driven ones (``activation``,
``apoz``, ``thinet``); :func:`register_criterion` adds your own.
"""

from tvm_hcprune.planning.criteria import activation, magnitude  # noqa: F401  (registers them)
from tvm_hcprune.planning.criteria.registry import (
    GroupViews,
    aggregate,
    get_criterion,
    importance_curve,
    list_criteria,
    normalise,
    register_criterion,
)

__all__ = ["GroupViews", "aggregate", "get_criterion", "importance_curve", "list_criteria",
           "normalise", "register_criterion"]
