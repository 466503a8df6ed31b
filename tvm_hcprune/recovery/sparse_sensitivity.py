"""Per-layer block sparsity from calibration data: sensitivity scan and allocation.

A uniform sparsity zeroes the same share of every layer's blocks, although some layers hurt
the output far more than others when thinned. :func:`block_sensitivity` sparsifies **one
layer at a time** at a few levels and measures on calibration samples how far the model's
first output moves from the dense model's (``rel_mse = sum ||o - o_dense||^2 / sum
||o_dense - mean(o_dense)||^2``, as :mod:`tvm_hcprune.recovery.sensitivity` does for
channels). :func:`allocate_sparsity` then spreads the requested sparsity over the layers:
each layer's error is interpolated linearly between the scanned levels (0 at sparsity 0),
and the sparsity goes, in steps, to the layer whose error grows least per block zeroed,
until the zeroed blocks are exactly the requested fraction of all blocks (the block-weighted
mean of the layers' sparsities equals ``sparsity``). :func:`sparsify` is
:func:`tvm_hcprune.sparsify`: with ``calibration`` it does both, without it is
:func:`tvm_hcprune.transform.sparsify_blocks.sparsify` (uniform).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from tvm_hcprune.errors import HCPruneError
from tvm_hcprune.recovery.runner import as_samples, default_runner_factory, output_error, outputs
from tvm_hcprune.transform import sparsify_blocks as sb

__all__ = ["BlockSensitivity", "allocate_sparsity", "block_sensitivity", "sparsify"]

DEFAULT_LEVELS = (0.5, 0.75, 0.9, 0.97)


@dataclass
class BlockSensitivity:
    """Output error with one layer sparsified, per layer and level.

    Attributes
    ----------
    levels : tuple of float
    blocks : dict
        ``{layer: number of blocks of its weight}``.
    error : dict
        ``{layer: {level: rel_mse}}``.
    n_samples : int

    Examples
    --------
    >>> table = block_sensitivity(mod, samples)  # doctest: +SKIP
    >>> table.error["lv3"][0.9]  # doctest: +SKIP
    """

    levels: tuple
    blocks: dict = field(default_factory=dict)
    error: dict = field(default_factory=dict)
    n_samples: int = 0

    def to_dict(self) -> dict:
        return {"levels": list(self.levels), "blocks": dict(self.blocks),
                "error": {k: {str(lv): e for lv, e in v.items()} for k, v in self.error.items()},
                "n_samples": self.n_samples}

    def curve(self, layer: str, s: float) -> float:
        """The layer's error at sparsity ``s``, interpolated (0 at 0)."""
        xs = [0.0, *self.levels]
        ys = [0.0, *(self.error[layer][lv] for lv in self.levels)]
        return float(np.interp(s, xs, ys))


def _levels(levels) -> tuple:
    out = tuple(sorted(float(v) for v in levels))
    if not out or any(not 0.0 < v < 1.0 for v in out):
        raise HCPruneError(f"levels must be sparsities in (0, 1), got {levels!r}")
    return out


def block_sensitivity(mod, samples, levels: Sequence[float] = DEFAULT_LEVELS,
                      block=None, criterion: str = "l2", target=None, layers=None,
                      runner_factory: Callable | None = None) -> BlockSensitivity:
    """Sparsify each layer alone at each level and measure the output error.

    Parameters
    ----------
    mod : tvm.IRModule
        The dense module.
    samples : array ``[n, *input_shape]``, Dataset or (samples, labels)
        Calibration inputs (labels unused).
    levels : sequence of float
        Sparsities tried per layer, each in (0, 1).
    block, criterion, target, layers
        As in :func:`tvm_hcprune.sparsify`.
    runner_factory : callable, optional
        ``runner_factory(mod, None) -> f(x) -> output``; default: compile for the host CPU
        (one build per layer and level).

    Returns
    -------
    BlockSensitivity
    """
    arr = as_samples(samples)[0]
    if len(arr) == 0:
        raise HCPruneError("block_sensitivity needs at least one calibration sample")
    levels = _levels(levels)
    make = runner_factory or default_runner_factory(target)
    dense = outputs(make(mod, None), arr)
    names = sb.layer_selection(mod, layers)
    table = BlockSensitivity(levels, n_samples=len(arr))
    for name in names:
        table.error[name] = {}
        for lv in levels:
            one, report = sb.sparsify(mod, {name: lv}, block, criterion, target)
            table.blocks[name] = report.layers[0].blocks
            table.error[name][lv] = output_error(outputs(make(one, None), arr), dense)[0]
    return table


def allocate_sparsity(table: BlockSensitivity, sparsity: float,
                      step: float = 0.01) -> dict[str, float]:
    """``{layer: sparsity}`` whose block-weighted mean is ``sparsity``, the least sensitive
    layers the sparsest (greedy over the interpolated error curves, ``step`` at a time; no
    layer beyond the highest scanned level).

    Examples
    --------
    >>> allocate_sparsity(table, 0.9)  # doctest: +SKIP
    {'lv': 0.93, 'lv2': 0.86}
    """
    sparsity = float(sparsity)
    if not 0.0 <= sparsity < 1.0:
        raise HCPruneError(f"sparsity must be in [0, 1), got {sparsity!r}")
    top = max(table.levels)
    if sparsity > top:
        raise HCPruneError(f"sparsity {sparsity} is above the highest level scanned ({top}); "
                           "scan higher levels")
    names = list(table.error)
    blocks = np.array([table.blocks[n] for n in names], float)
    goal = sparsity * blocks.sum()
    s = np.zeros(len(names))
    while s @ blocks < goal - 1e-9:
        best, best_cost, best_ds = None, np.inf, 0.0
        for i, name in enumerate(names):
            ds = min(step, top - s[i])
            if ds <= 1e-12:
                continue
            cost = (table.curve(name, s[i] + ds) - table.curve(name, s[i])) / (ds * blocks[i])
            if cost < best_cost:
                best, best_cost, best_ds = i, cost, ds
        # the last step only as far as the goal
        best_ds = min(best_ds, (goal - s @ blocks) / blocks[best])
        s[best] += best_ds
    return {name: float(v) for name, v in zip(names, s, strict=True)}


def sparsify(mod, sparsity: float | Mapping[str, float] = 0.9, block=None,
             criterion: str = "l2", target=None, layers=None, calibration=None,
             levels: Sequence[float] = DEFAULT_LEVELS, runner_factory: Callable | None = None):
    """Zero the least important weight blocks of matmul layers and 1x1 convolutions;
    with ``calibration``, each layer's sparsity follows its measured sensitivity.

    Parameters
    ----------
    mod, sparsity, block, criterion, target, layers
        See :func:`tvm_hcprune.transform.sparsify_blocks.sparsify`.
    calibration : array ``[n, *input_shape]``, Dataset or (samples, labels), optional
        Samples to measure each layer's sensitivity on (:func:`block_sensitivity`); the
        layers then get the sparsities of :func:`allocate_sparsity`, whose block-weighted
        mean is ``sparsity`` (a number here).
    levels : sequence of float
        Levels scanned per layer with ``calibration`` (the highest caps any layer).
    runner_factory : callable, optional
        How candidates run (see :func:`block_sensitivity`).

    Returns
    -------
    (tvm.IRModule, SparsityReport)

    Examples
    --------
    >>> sparse, report = tvm_hcprune.sparsify(mod, 0.9, calibration=samples)  # doctest: +SKIP
    >>> [round(layer.sparsity, 2) for layer in report.layers]  # doctest: +SKIP
    [0.95, 0.81]
    """
    if calibration is None:
        return sb.sparsify(mod, sparsity, block, criterion, target, layers)
    if isinstance(sparsity, Mapping):
        raise HCPruneError("give one overall sparsity with calibration (the per-layer values "
                           "come from the sensitivity scan), not a mapping")
    sb.check_sparsity(sparsity, "sparsity")
    table = block_sensitivity(mod, calibration, levels, block, criterion, target, layers,
                              runner_factory)
    out, report = sb.sparsify(mod, allocate_sparsity(table, sparsity), block, criterion,
                              target)
    report.sparsity = float(sparsity)
    report.sensitivity = table.to_dict()
    return out, report
