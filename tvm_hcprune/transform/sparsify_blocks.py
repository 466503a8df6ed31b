"""SparsifyBlocks: zero whole weight blocks of matmul layers and 1x1 convolutions.

Channel pruning removes whole channels; block sparsity keeps the layer's shape and zeroes
``bk x bn`` blocks of its weight ``W [K, N]`` (inputs x outputs), the least important ones by
block norm. The module keeps dense constants (with zero blocks), so it stays valid for every
target; the CPU build then runs each layer dense or as BSR, whichever the estimate of
:func:`tvm_hcprune.hardware.sparse_cost.choose_format` says is faster (the report says which
and why). The block defaults to the target's (:func:`~tvm_hcprune.hardware.sparse_cost.
default_block`: one input row by a vector of outputs on CPUs, 16x16 on VTA).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import tvm

from tvm_hcprune.errors import HCPruneError
from tvm_hcprune.hardware import profile_for
from tvm_hcprune.hardware.sparse_cost import choose_format, default_block
from tvm_hcprune.ops.weights import layer_weight_oi
from tvm_hcprune.planning.mixed import block_scores
from tvm_hcprune.utils.relax import bindings, is_const, op_name, replace_constants

__all__ = ["LayerSparsity", "SparsifyBlocks", "SparsityReport", "block_mask", "check_sparsity",
           "layer_selection", "sparsifiable_layers", "sparsify"]

_CRITERIA = ("l2", "l1")


@dataclass
class LayerSparsity:
    """One layer's outcome: its weight ``[K, N]``, block, zeroed blocks, the format the CPU
    build will use and why."""

    name: str
    op: str
    shape: tuple[int, int]
    block: tuple[int, int]
    blocks: int
    zero_blocks: int
    format: str
    why: str

    @property
    def sparsity(self) -> float:
        return self.zero_blocks / self.blocks if self.blocks else 0.0


@dataclass
class SparsityReport:
    """What :func:`sparsify` did, per layer.

    Examples
    --------
    >>> sparse, report = tvm_hcprune.sparsify(mod, sparsity=0.9)  # doctest: +SKIP
    >>> print(report.summary())  # doctest: +SKIP
    """

    block: tuple[int, int]
    sparsity: float
    layers: list[LayerSparsity] = field(default_factory=list)
    sensitivity: dict | None = None

    @property
    def zero_fraction(self) -> float:
        """Zeroed blocks / all blocks over the sparsified layers."""
        total = sum(la.blocks for la in self.layers)
        return sum(la.zero_blocks for la in self.layers) / total if total else 0.0

    def to_dict(self) -> dict:
        return {"block": list(self.block), "sparsity": self.sparsity,
                "zero_fraction": self.zero_fraction, "sensitivity": self.sensitivity,
                "layers": [{**layer.__dict__, "sparsity": layer.sparsity}
                           for layer in self.layers]}

    def summary(self) -> str:
        lines = [f"{len(self.layers)} layer(s), block {self.block[0]}x{self.block[1]}, "
                 f"target sparsity {self.sparsity:.0%}"]
        for layer in self.layers:
            lines.append(f"  {layer.name:8s} {layer.op:16s} W{list(layer.shape)}: "
                         f"{layer.zero_blocks}/{layer.blocks} blocks zero "
                         f"({layer.sparsity:.0%}) -> {layer.format}: {layer.why}")
        return "\n".join(lines)


def block_mask(w_kn: np.ndarray, block: tuple[int, int], sparsity: float,
               criterion: str = "l2") -> np.ndarray:
    """Boolean ``[ceil(K/bk), ceil(N/bn)]``: True for the blocks kept (the highest norms).

    A weight whose shape is not a multiple of the block is padded with zeros for scoring;
    the kept count is ``round((1 - sparsity) * blocks)``, ties broken by position.
    """
    score = block_scores(w_kn, block, criterion)
    kb, nb = score.shape
    keep = int(round((1.0 - sparsity) * kb * nb))
    mask = np.zeros(kb * nb, bool)
    if keep > 0:
        mask[np.argsort(-score.reshape(-1), kind="stable")[:keep]] = True
    return mask.reshape(kb, nb)


def _expand(mask: np.ndarray, block: tuple[int, int], shape) -> np.ndarray:
    full = np.kron(mask, np.ones(block, bool))
    return full[:shape[0], :shape[1]]


def _weight_kn(call):
    """``(W [K, N], back)`` of a sparsifiable call (matmul with a constant 2-D weight, 1x1
    ungrouped conv2d), else None."""
    op = op_name(call)
    if op == "relax.matmul" and is_const(call.args[1]) and call.args[1].value.numpy().ndim == 2:
        w = call.args[1].value.numpy()
        return w, lambda a: a.astype(w.dtype)
    if op == "relax.nn.conv2d" and is_const(call.args[1]) and int(call.attrs.groups) == 1:
        w_oi, back = layer_weight_oi(call)
        if w_oi.ndim == 4 and w_oi.shape[2:] == (1, 1):
            return w_oi[:, :, 0, 0].T, lambda a: back(a.T[:, :, None, None].astype(w_oi.dtype))
    return None


def sparsifiable_layers(mod: tvm.IRModule) -> list[tuple[str, str, tuple[int, int]]]:
    """``(name, op, (K, N))`` of every layer of ``main`` :func:`sparsify` can sparsify: each
    matmul with a constant 2-D weight and each ungrouped 1x1 conv, in program order.

    Examples
    --------
    >>> [name for name, op, shape in sparsifiable_layers(mod)]  # doctest: +SKIP
    ['lv', 'lv2']
    """
    found = []
    for b in bindings(mod["main"]):
        w = _weight_kn(b.value)
        if w is not None:
            found.append((b.var.name, op_name(b.value), tuple(w[0].shape)))
    return found


def check_sparsity(value, what: str) -> float:
    """``value`` as a float in [0, 1), else an HCPruneError naming ``what``.

    Examples
    --------
    >>> check_sparsity(0.9, "sparsity")
    0.9
    """
    if (isinstance(value, bool) or not isinstance(value, int | float)
            or not 0.0 <= float(value) < 1.0):
        raise HCPruneError(f"{what} must be in [0, 1) (the fraction of blocks zeroed), "
                           f"got {value!r}")
    return float(value)


def layer_selection(mod: tvm.IRModule, layers=None) -> list[str]:
    """Names of the sparsifiable layers ``layers`` selects (None: all; names; or a predicate
    ``(name, op, (K, N)) -> bool``), in program order; unknown names raise.

    Examples
    --------
    >>> layer_selection(mod, lambda name, op, shape: 1536 in shape)  # doctest: +SKIP
    ['lv22', 'lv29']
    """
    found = sparsifiable_layers(mod)
    if layers is None:
        return [name for name, _, _ in found]
    if callable(layers):
        return [name for name, op, shape in found if layers(name, op, shape)]
    keep = {str(v) for v in layers}
    unknown = sorted(keep - {name for name, _, _ in found})
    if unknown:
        raise HCPruneError(f"layers {unknown} are not sparsifiable layers of main")
    return [name for name, _, _ in found if name in keep]


def _per_layer(mod, sparsity, layers) -> dict[str, float]:
    """``{layer name: sparsity}`` from ``sparsity`` (a number or a mapping) and ``layers``."""
    found = sparsifiable_layers(mod)
    if isinstance(sparsity, Mapping):
        names = {name for name, _, _ in found}
        unknown = sorted(set(sparsity) - names)
        if unknown:
            raise HCPruneError(f"sparsity names layers {unknown} that are not sparsifiable "
                               f"layers of main (those are {sorted(names)})")
        chosen = {str(k): check_sparsity(v, f"sparsity[{k!r}]") for k, v in sparsity.items()}
    else:
        s = check_sparsity(sparsity, "sparsity")
        chosen = {name: s for name, _, _ in found}
    keep = set(layer_selection(mod, layers))
    return {k: v for k, v in chosen.items() if k in keep}


def sparsify(mod: tvm.IRModule, sparsity: float | Mapping[str, float] = 0.9,
             block: tuple[int, int] | None = None, criterion: str = "l2", target=None,
             layers=None) -> tuple[tvm.IRModule, SparsityReport]:
    """Zero the least important ``sparsity`` of the weight blocks of every matmul layer and
    1x1 convolution of ``main``.

    Parameters
    ----------
    mod : tvm.IRModule
        A Relax module with constant weights (e.g. from :func:`tvm_hcprune.load_onnx`).
    sparsity : float or {layer name: float}
        Fraction of each layer's blocks set to zero, in [0, 1); a mapping gives each named
        layer its own (layers it does not name are left dense). Names are those of
        :func:`sparsifiable_layers`.
    block : (int, int), optional
        ``(bk, bn)``: input rows x output columns of ``W [K, N]``; default the target's
        (:func:`~tvm_hcprune.hardware.sparse_cost.default_block`).
    criterion : {"l2", "l1"}
        Block importance: the norm of the block's weights.
    target : optional
        Target whose hardware profile gives the default block and the format estimate
        (default: the host CPU).
    layers : None, iterable of names, or callable ``(name, op, (K, N)) -> bool``
        Only these layers (e.g. a transformer's FFN: ``lambda n, op, s: 1536 in s``);
        default all.

    Returns
    -------
    (tvm.IRModule, SparsityReport)
        The module with zeroed blocks (dense constants, same shapes) and the per-layer report.

    Examples
    --------
    >>> sparse, report = tvm_hcprune.sparsify(mod, sparsity=0.9)  # doctest: +SKIP
    >>> ex = tvm_hcprune.build(sparse)  # BSR where it is estimated faster  # doctest: +SKIP
    """
    if criterion not in _CRITERIA:
        raise HCPruneError(f"unknown block criterion {criterion!r}; choose one of "
                           f"{', '.join(_CRITERIA)}")
    profile = profile_for("llvm" if target is None else target)
    block = tuple(int(b) for b in (block or default_block(profile)))
    if len(block) != 2 or min(block) < 1:
        raise HCPruneError(f"block must be two positive integers (bk, bn), got {block!r}")
    if "main" not in [gv.name_hint for gv in mod.get_global_vars()]:
        raise HCPruneError("the module has no 'main' function; pass the module a frontend "
                           "importer returns (e.g. tvm_hcprune.load_onnx)")
    per_layer = _per_layer(mod, sparsity, layers)
    report = SparsityReport(block, 0.0 if isinstance(sparsity, Mapping) else float(sparsity))
    updates = {}
    for b in bindings(mod["main"]):
        found = _weight_kn(b.value)
        if found is None or b.var.name not in per_layer:
            continue
        w_kn, back = found
        mask = block_mask(w_kn, block, per_layer[b.var.name], criterion)
        new = np.where(_expand(mask, block, w_kn.shape), w_kn, 0).astype(w_kn.dtype)
        fmt, why = choose_format(float(mask.mean()), profile)
        if fmt == "bsr" and op_name(b.value) == "relax.nn.conv2d" and (
                any(int(p) for p in b.value.attrs.padding)
                or any(int(d) != 1 for d in b.value.attrs.dilation)):
            fmt, why = "dense", "padded or dilated 1x1 convolution: no BSR route (kept dense)"
        report.layers.append(LayerSparsity(b.var.name, op_name(b.value), tuple(w_kn.shape),
                                           block, int(mask.size), int((~mask).sum()), fmt,
                                           why))
        updates[b.var.name] = {1: back(new)}
    if not report.layers:
        raise HCPruneError("the module has no matmul with a constant weight and no 1x1 "
                           "convolution (among the layers asked for): nothing to sparsify")
    if isinstance(sparsity, Mapping):  # the mean asked for, weighted by the layers' blocks
        report.sparsity = float(sum(per_layer[la.name] * la.blocks for la in report.layers)
                                / sum(la.blocks for la in report.layers))
    return (replace_constants(mod, updates) if updates else mod), report


@tvm.transform.module_pass(opt_level=0, name="SparsifyBlocks")
class SparsifyBlocks:
    """Module pass form of :func:`sparsify`; the report of the last run is ``last_report``.

    Parameters
    ----------
    sparsity, block, criterion, target, layers
        See :func:`sparsify`.

    Examples
    --------
    >>> seq = tvm.transform.Sequential([SparsifyBlocks(sparsity=0.8),  # doctest: +SKIP
    ...                                 relax.transform.FoldConstant()])
    """

    def __init__(self, sparsity: float = 0.9, block=None, criterion: str = "l2", target=None,
                 layers=None):
        self.sparsity, self.block, self.criterion, self.target = (sparsity, block, criterion,
                                                                  target)
        self.layers = layers
        self.last_report: SparsityReport | None = None

    def transform_module(self, mod, ctx):
        out, self.last_report = sparsify(mod, self.sparsity, self.block, self.criterion,
                                         self.target, self.layers)
        return out
