"""``PruneConfig``: the validated, frozen options of a pruning run."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from tvm_hcprune.errors import HCPruneError
from tvm_hcprune.planning.budget import POWER_RANGE
from tvm_hcprune.planning.criteria import list_criteria
from tvm_hcprune.utils.options import Options


@dataclass(frozen=True)
class PruneConfig(Options):
    """Options of a pruning run.

    Parameters
    ----------
    ratio : float
        Fraction of channels removed from every prunable group, in [0, 1).
    criterion : str
        Name of a registered criterion (``tvm_hcprune.list_criteria()``).
    align : int or None
        Kept channel counts are rounded to a multiple of ``align``. None: from the target's
        hardware profile (``channel_multiple``), or 1 when no profile is available.
    protect : tuple of str
        Producer binding names (e.g. ``"lv12"``) or group ids (``"group:3"``) never pruned.
    min_channels : int
        Lower bound on the channels a group keeps (never below 1).
    prune_first_conv : bool or None
        Whether the output channels of the convolution that reads the model input may be
        pruned. False protects it (as NNCF does by default: it is cheap, and what it loses
        no later layer can recover); True prunes it like any group; None (default): False
        under a budget (``Latency``, ``MACs``, ``Params``, any allocation) and when
        ``prune`` allocates by sensitivity (the default with calibration data), True for a
        uniform ``ratio`` with the criterion's allocation (ratio plans keep their earlier
        behaviour). With calibration data and a budget, a plan that keeps it whole under the
        None default and whose output collapses on the held-out samples is made again with
        it prunable, and that plan is kept when its output does not collapse
        (``plan.config["first_conv_retry"]`` says why; ``"first_conv_retry_failed"``, when
        the retry collapsed too and the first plan is returned).
    allocation_power : float
        Under a budget, how a group's kept importance is valued, in [-4, 1]
        (:func:`~tvm_hcprune.planning.budget.unit_value`): 1 sums the importance (the
        knapsack may cut a few groups deep), below 1 each further cut into one group costs
        more than the last, so cuts spread over many groups; 0 is the logarithm, negative
        powers penalise deep cuts more still.
    min_kept_fraction : float
        Under a budget, the least share of each group's channels kept, in [0, 1) (0: no
        floor beyond ``align`` and ``min_channels``).
    sensitivity_probes : int
        Under sensitivity allocation, the widths each group is pruned to alone to measure
        its output error (:func:`~tvm_hcprune.recovery.guided.unit_scales`): 1 (the first
        allocation's width, or half) scales the criterion's importance by one factor; 2
        (default) also probes the deepest width the budget may take and fits the
        importance curve through both errors.
    compare_uniform : bool
        Under a budget, also make the uniform plan that meets it (every group keeps the same
        share, at the least cut the budget allows, then channels are given back where the
        budget still holds) and keep it when it keeps more value (``allocation_power``) than
        the knapsack's plan. With calibration data the plans are compared by their output
        on held-out samples, and the uniform ratio that meets the budget (what ``ratio=``
        keeps) is a third candidate.
    criterion_options : dict
        Extra keyword options of the criterion (e.g. ``{"lam": 1e-3}`` for redundancy).
    seed : int
        Seed of randomised criteria.

    Examples
    --------
    >>> from tvm_hcprune import PruneConfig
    >>> PruneConfig.of(None, ratio=0.3, criterion="fpgm").ratio
    0.3
    """

    ratio: float = 0.5
    criterion: str = "l2"
    align: int | None = None
    protect: tuple = ()
    min_channels: int = 1
    prune_first_conv: bool | None = None
    allocation_power: float = 1.0
    min_kept_fraction: float = 0.0
    sensitivity_probes: int = 2
    compare_uniform: bool = True
    criterion_options: dict = field(default_factory=dict)
    seed: int = 0

    def __post_init__(self):
        if not isinstance(self.ratio, (int, float)) or not (0.0 <= float(self.ratio) < 1.0):
            raise HCPruneError(
                f"ratio must be in [0, 1) (the fraction of channels removed), got {self.ratio!r}"
            )

        if self.criterion not in list_criteria():
            raise HCPruneError(
                f"unknown criterion {self.criterion!r}; choose one of {', '.join(list_criteria())}"
            )
        if self.align is not None and (not isinstance(self.align, int) or self.align < 1):
            raise HCPruneError(f"align must be a positive integer or None, got {self.align!r}")
        if not isinstance(self.min_channels, int) or self.min_channels < 1:
            raise HCPruneError(f"min_channels must be an integer >= 1, got {self.min_channels!r}")
        if (not isinstance(self.allocation_power, (int, float))
                or isinstance(self.allocation_power, bool)
                or not POWER_RANGE[0] <= float(self.allocation_power) <= POWER_RANGE[1]):
            raise HCPruneError(f"allocation_power must be in {list(POWER_RANGE)} (1: "
                               f"importance summed, 0: its logarithm), got "
                               f"{self.allocation_power!r}")
        if (not isinstance(self.min_kept_fraction, (int, float))
                or isinstance(self.min_kept_fraction, bool)
                or not 0.0 <= float(self.min_kept_fraction) < 1.0):
            raise HCPruneError(f"min_kept_fraction must be in [0, 1) (the least share of a "
                               f"group's channels a budget keeps), got "
                               f"{self.min_kept_fraction!r}")
        if type(self.sensitivity_probes) is not int or self.sensitivity_probes not in (1, 2):
            raise HCPruneError(f"sensitivity_probes must be 1 or 2 (widths each group is "
                               f"probed at), got {self.sensitivity_probes!r}")
        if not isinstance(self.compare_uniform, bool):
            raise HCPruneError(f"compare_uniform must be True or False, got "
                               f"{self.compare_uniform!r}")
        object.__setattr__(self, "protect", tuple(self.protect))
        object.__setattr__(self, "criterion_options", dict(self.criterion_options or {}))

    def kept_count(self, size: int, align: int) -> int:
        """How many of ``size`` channels a group keeps under this config and ``align``."""
        if self.ratio == 0:
            return size
        target = size * (1.0 - self.ratio)
        keep = int(math.floor(target / align + 0.5)) * align
        keep = max(keep, align, self.min_channels, 1)
        return size if keep >= size else keep

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["protect"] = list(self.protect)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> PruneConfig:
        """The record :meth:`to_dict` wrote (unknown keys raise)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise HCPruneError(f"unknown PruneConfig keys: {sorted(unknown)}")
        return cls(**d)


def config_arg(config):
    """The ``config`` argument of ``prune`` / ``PruneChannels``: a bare number is the ratio
    (``prune(mod, 0.5)``), anything else is passed to :meth:`PruneConfig.of`."""
    if isinstance(config, int | float) and not isinstance(config, bool):
        return {"ratio": config}
    return config
