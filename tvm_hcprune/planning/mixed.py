"""Mixed budgets: block-sparsity options in the budget knapsack next to the channel widths.

A latency budget with ``sparse=True`` (``prune(mod, budget=Latency(...), sparse=True)``)
lets each layer that can run on the BSR kernel (a matmul with a constant 2-D weight, an
ungrouped unpadded 1x1 convolution) also be made block-sparse. Every such layer becomes one
more decision unit of :func:`~tvm_hcprune.planning.budget.allocate_widths`: its "width" is
the number of weight blocks it keeps (a pseudo-group ``"bsr:<layer>"`` whose candidates are
the kept counts at the sparsity levels, e.g. 90%, 70%, 50% zero blocks, and all of them).
Its importance curve is the blocks' scores (the norm :func:`tvm_hcprune.sparsify` ranks
blocks by), kept best first, and the latency model's cost term of the layer reads its
channel widths and its kept blocks (``LatencyModel.cost(graph, sparse=...)``), so the greedy
step compares "narrow a group" against "sparsify a layer" by importance lost per
millisecond saved.

Scale of the block importance: channel importance is each group's scores divided by their
mean (a group's channels weigh their count in total). A group's total is split between the
layers whose weights it cuts, by their share of the group's weights (an FFN's 1536 channels:
768 for the first matmul's columns, 768 for the second's rows), and a layer's blocks weigh,
in total, its shares of the prunable groups its weight reads or writes (zeroing every block
is worth removing the layer's part of those channels); ``max(K, N)`` when both sides are
frozen. Within the layer each block weighs its score over the mean score.

Nothing here measures or rewrites: the latencies come from :mod:`tvm_hcprune.latency`, the
blocks are zeroed by :func:`tvm_hcprune.transform.apply_plan.apply_plan` after the channels
are removed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tvm_hcprune.errors import HCPruneError
from tvm_hcprune.hardware import profile_for
from tvm_hcprune.hardware.sparse_cost import choose_format, default_block
from tvm_hcprune.ops.desc import desc_length
from tvm_hcprune.ops.weights import layer_weight_oi
from tvm_hcprune.planning.budget import Latency
from tvm_hcprune.utils.relax import bindings, is_const, op_name, static_shape

__all__ = ["SPARSITY_LEVELS", "SparseOptions", "SparseUnit", "block_scores", "chosen_sparsity",
           "layer_weight_kn", "mixed_units", "sparse_units"]

#: Block sparsities a mixed budget offers per layer by default.
SPARSITY_LEVELS = (0.5, 0.7, 0.9)

_CRITERIA = ("l2", "l1")


def block_scores(w_kn: np.ndarray, block: tuple[int, int], criterion: str = "l2"
                 ) -> np.ndarray:
    """Importance ``[ceil(K/bk), ceil(N/bn)]`` of each ``bk x bn`` block of ``W [K, N]``: its
    L2 (or L1) norm; a shape that is not a multiple of the block is padded with zeros.

    Examples
    --------
    >>> block_scores(np.array([[3.0, 4.0, 0.0, 1.0]]), (1, 2)).tolist()
    [[5.0, 1.0]]
    """
    if criterion not in _CRITERIA:
        raise HCPruneError(f"unknown block criterion {criterion!r}; choose one of "
                           f"{', '.join(_CRITERIA)}")
    bk, bn = block
    k, n = w_kn.shape
    kb, nb = -(-k // bk), -(-n // bn)
    padded = np.zeros((kb * bk, nb * bn), np.float64)
    padded[:k, :n] = w_kn
    blocks = padded.reshape(kb, bk, nb, bn).transpose(0, 2, 1, 3)
    if criterion == "l1":
        return np.abs(blocks).sum(axis=(2, 3))
    return np.sqrt(np.square(blocks).sum(axis=(2, 3)))


def layer_weight_kn(call) -> np.ndarray | None:
    """``W [K, N]`` (inputs x outputs) of a layer the BSR kernel can run: a matmul with a
    constant 2-D weight, or an ungrouped 1x1 conv2d without padding or dilation; else None.

    Examples
    --------
    >>> [layer_weight_kn(b.value).shape for b in bindings(mod["main"])]  # doctest: +SKIP
    """
    name = op_name(call)
    if name == "relax.matmul" and is_const(call.args[1]):
        w = call.args[1].value.numpy()
        return w if w.ndim == 2 else None
    if name != "relax.nn.conv2d" or not is_const(call.args[1]):
        return None
    a = call.attrs
    if (int(a.groups) != 1 or any(int(p) for p in a.padding)
            or any(int(d) != 1 for d in a.dilation)):
        return None
    w_oi, _ = layer_weight_oi(call)
    if w_oi.ndim != 4 or w_oi.shape[2:] != (1, 1):
        return None
    return np.ascontiguousarray(w_oi[:, :, 0, 0].T)


@dataclass(frozen=True)
class SparseOptions:
    """What a mixed budget may do with block sparsity.

    Parameters
    ----------
    levels : tuple of float
        Block sparsities offered per layer (each in (0, 1)).
    block : (int, int), optional
        ``(bk, bn)``; default the target's (:func:`~tvm_hcprune.hardware.sparse_cost.
        default_block`).
    criterion : {"l2", "l1"}
        Block importance, as :func:`tvm_hcprune.sparsify`.
    layers : iterable of str, optional
        Only these layers (binding names) may go block-sparse; default every one that can.

    Examples
    --------
    >>> SparseOptions(levels=(0.8,)).levels
    (0.8,)
    """

    levels: tuple = SPARSITY_LEVELS
    block: tuple | None = None
    criterion: str = "l2"
    layers: tuple | None = None

    def __post_init__(self):
        levels = tuple(sorted({float(v) for v in self.levels}))
        if not levels or not all(0.0 < v < 1.0 for v in levels):
            raise HCPruneError(f"sparse levels must be block sparsities in (0, 1), got "
                               f"{self.levels!r}")
        object.__setattr__(self, "levels", levels)
        if self.criterion not in _CRITERIA:
            raise HCPruneError(f"unknown block criterion {self.criterion!r}; choose one of "
                               f"{', '.join(_CRITERIA)}")
        if self.block is not None:
            block = tuple(int(b) for b in self.block)
            if len(block) != 2 or min(block) < 1:
                raise HCPruneError(f"block must be two positive integers (bk, bn), got "
                                   f"{self.block!r}")
            object.__setattr__(self, "block", block)
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(str(v) for v in self.layers))

    @classmethod
    def of(cls, value) -> SparseOptions | None:
        """``sparse=`` of :func:`tvm_hcprune.prune`: False/None (off), True (defaults), a
        dict of options or a SparseOptions."""
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            return cls(**value)
        raise HCPruneError(f"sparse= must be True, False, a dict of SparseOptions fields or "
                           f"SparseOptions(...), got {value!r}")


@dataclass
class SparseUnit:
    """One layer's block-sparsity decision in the knapsack.

    Attributes
    ----------
    key : str
        The pseudo-group ``"bsr:<layer>"`` its kept block count is stored under.
    layer, op : str
        Binding name and op of the layer.
    shape : (int, int)
        ``(K, N)`` of its dense weight.
    blocks : int
        Its blocks (the dense "width").
    levels : dict
        Kept block count -> block sparsity it stands for (the candidates but the last).
    curve : numpy.ndarray
        ``curve[k]``: importance kept with the ``k`` best blocks.

    Examples
    --------
    >>> SparseUnit("bsr:lv", "lv", "relax.matmul", (4, 4), 10, {1: 0.9, 5: 0.5},
    ...            np.arange(11.0)).candidates
    [1, 5, 10]
    """

    key: str
    layer: str
    op: str
    shape: tuple
    blocks: int
    levels: dict
    curve: np.ndarray

    @property
    def candidates(self) -> list[int]:
        """Ascending kept counts: one per level, then all blocks."""
        return sorted(self.levels) + [self.blocks]


def _channel_groups(graph, expr, axis) -> set:
    d = graph.ctx.desc(expr)
    if d is None or axis >= len(d) or d[axis] is None:
        return set()
    return {graph.space_group[s.space] for s in d[axis] if s.space is not None}


def _layer_groups(graph, var, call) -> set:
    """The channel groups of a layer's input and output channel axes."""
    data = static_shape(call.args[0])
    out = static_shape(var)
    if data is None or out is None:
        return set()
    if op_name(call) == "relax.nn.conv2d":
        layout = str(call.attrs.data_layout)
        in_axis = layout.index("C")
        out_axis = str(call.attrs.out_layout or layout).index("C")
    else:
        in_axis, out_axis = len(data) - 1, len(out) - 1
    return _channel_groups(graph, call.args[0], in_axis) | _channel_groups(graph, var, out_axis)


def _member_weights(graph, member, gid) -> int:
    """Weight elements of ``member`` that belong to group ``gid``."""
    shape = static_shape(graph.ctx.values[member.var].args[member.arg])
    if shape is None or member.kind == "scale":
        return 0
    mine = sum(seg.length for seg in member.desc
               if seg.space is not None and graph.space_group[seg.space] == gid)
    return math.prod(shape) * mine // max(1, desc_length(member.desc))


def _layer_share(graph, gid, var) -> float:
    """The share of group ``gid``'s weights that lie in the layer bound to ``var``."""
    counts = [(m.var.same_as(var), _member_weights(graph, m, gid))
              for m in graph.groups[gid].members]
    total = sum(n for _, n in counts)
    return sum(n for here, n in counts if here) / total if total else 0.0


def sparse_units(graph, options: SparseOptions, block: tuple[int, int],
                 allowed=None) -> list[SparseUnit]:
    """The block-sparsity units of ``graph``'s BSR-able layers.

    Parameters
    ----------
    graph : ChannelGraph
    options : SparseOptions
    block : (int, int)
        The resolved block.
    allowed : callable, optional
        ``allowed(level) -> bool``: the levels the build would run on BSR (others are not
        offered); default all of ``options.levels``.

    Returns
    -------
    list of SparseUnit
        In program order; layers with no allowed level (or outside ``options.layers``) are
        left out.

    Examples
    --------
    >>> [u.layer for u in sparse_units(analyze(mod), SparseOptions(), (1, 16))]
    ... # doctest: +SKIP
    """
    levels = [v for v in options.levels if allowed is None or allowed(v)]
    if not levels:
        return []
    wanted = None if options.layers is None else set(options.layers)
    units, seen = [], set()
    for b in bindings(graph.mod["main"]):
        if not hasattr(b.value, "op"):
            continue
        w = layer_weight_kn(b.value)
        name = b.var.name
        if w is None or (wanted is not None and name not in wanted):
            continue
        seen.add(name)
        if w.shape[0] % block[0]:
            continue  # the BSR kernel needs K in whole blocks
        scores = np.sort(block_scores(w, block, options.criterion).reshape(-1))[::-1]
        n = scores.size
        mean = float(np.mean(scores)) or 1.0
        weight = sum(_layer_share(graph, gid, b.var) * graph.groups[gid].size
                     * graph.groups[gid].unit  # channels: a group's importance_curve total
                     for gid in _layer_groups(graph, b.var, b.value)
                     if not graph.groups[gid].frozen) or max(w.shape)
        curve = np.concatenate([[0.0], np.cumsum(scores / mean)]) * (weight / n)
        kept = {}
        for level in levels:
            k = int(round((1.0 - level) * n))
            if 0 < k < n:
                kept.setdefault(k, level)
        if kept:
            units.append(SparseUnit(f"bsr:{name}", name, op_name(b.value), tuple(w.shape), n,
                                    kept, curve))
    if wanted is not None and wanted - seen:
        raise HCPruneError(f"sparse layers {sorted(wanted - seen)} are not matmul layers with "
                           "a constant weight or 1x1 convolutions of main")
    return units


def mixed_units(graph, options: SparseOptions | None, budget, target=None
                ) -> tuple[list[SparseUnit], tuple | None]:
    """``(units, block)`` of a mixed budget: :func:`sparse_units` at the levels the CPU
    build runs on BSR (:func:`~tvm_hcprune.hardware.sparse_cost.choose_format`), with the
    block of ``options`` or the target's; ``([], None)`` without ``options``.

    Raises
    ------
    HCPruneError
        For a budget other than :class:`~tvm_hcprune.planning.budget.Latency`, or a target
        other than a CPU (llvm).

    Examples
    --------
    >>> units, block = mixed_units(analyze(mod), SparseOptions(), Latency(fraction=0.5),
    ...                            "llvm")  # doctest: +SKIP
    """
    if options is None:
        return [], None
    if not isinstance(budget, Latency):
        raise HCPruneError("sparse=True mixes channel pruning and block sparsity under a "
                           "latency budget: pass budget=Latency(...)")
    profile = profile_for(target if target is not None else "llvm")
    if profile.kind != "llvm":
        raise HCPruneError(f"mixed budgets (sparse=True) need a CPU (llvm) target: the BSR "
                           f"kernel is chosen by the CPU build, not on {profile.kind}")
    block = options.block or default_block(profile)
    return sparse_units(graph, options, block,
                        lambda lv: choose_format(1.0 - lv, profile)[0] == "bsr"), block


def chosen_sparsity(units, widths: dict) -> dict[str, float]:
    """``{layer: block sparsity}`` of the units an allocation made block-sparse.

    Examples
    --------
    >>> u = SparseUnit("bsr:lv", "lv", "relax.matmul", (4, 4), 10, {1: 0.9, 5: 0.5},
    ...                np.arange(11.0))
    >>> chosen_sparsity([u], {"bsr:lv": 1})
    {'lv': 0.9}
    """
    out = {}
    for u in units:
        k = widths.get(u.key, u.blocks)
        if k < u.blocks:
            out[u.layer] = u.levels[k]
    return out
