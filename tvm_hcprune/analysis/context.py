"""The state an analysis run builds: channel spaces, their union-find, and declarations.

Op handlers talk to an :class:`AnalysisContext`; nothing in here knows about specific ops.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
from tvm import relax

from tvm_hcprune.ops.desc import AxisDesc, Seg, desc_spaces
from tvm_hcprune.utils.relax import static_shape


@dataclass
class Member:
    """A weight slice that belongs to a channel space (what criteria read).

    kind : "producer" (the space's output-channel axis of a conv/matmul weight),
        "consumer" (a weight's input-channel axis, through a descriptor),
        "scale" (a per-channel scale such as batch-norm gamma).
    """

    kind: str
    var: relax.Var
    op: str
    arg: int
    axis: int
    desc: AxisDesc


class AnalysisContext:
    """Union-find of channel spaces plus everything handlers declare."""

    def __init__(self):
        self.parent: list[int] = []
        self.sizes: list[int] = []
        self.origin: list[tuple[relax.Var, str]] = []
        self.descs: dict = {}
        self.frozen: dict[int, list[tuple[str, str, str]]] = defaultdict(list)
        self.const_slices: dict = defaultdict(list)  # var -> [(arg, axis, desc)]
        self.members: list[Member] = []
        self.macs: dict = {}  # var -> (op, macs)
        self.ops: dict = {}  # var -> op name
        self.var_order: list = []
        self.splits: dict[int, list[int]] = {}  # split root -> its parts (new spaces)
        self.coarse: dict[int, tuple[int, int]] = {}  # root -> (unit space, channels/unit)
        self.unit: dict[int, int] = {}  # unit space -> channels per unit (attention heads)
        self._arrays: dict = {}
        self.mac_scaling: dict = {}  # var -> descriptors that scale its MACs
        # grouped conv -> (out axis, in axis, groups, per-group input descriptors); the
        # groups of each conv's input descriptors must keep equal channel counts
        self.group_inputs: dict = {}
        # var -> descriptors its op drops on purpose (a slice's cut-off segments), which the
        # rewrite accounts for although they reach neither an output nor a sliced constant
        self.accounted: dict = defaultdict(list)
        # var -> [(user var, user value)]: the bindings that read it (filled by ``analyze``;
        # handlers that must look ahead, e.g. a fused Q/K/V split, read it via ``readers``)
        self.users: dict = {}

    # ---- spaces -------------------------------------------------------------------------
    def new_space(self, size: int, var, op: str) -> int:
        sid = len(self.parent)
        self.parent.append(sid)
        self.sizes.append(int(size))
        self.origin.append((var, op))
        return sid

    def find(self, s: int) -> int:
        while self.parent[s] != s:
            self.parent[s] = self.parent[self.parent[s]]
            s = self.parent[s]
        return s

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            assert self.sizes[ra] == self.sizes[rb], "unifying spaces of different sizes"
            lo, hi = min(ra, rb), max(ra, rb)
            self.parent[hi] = lo

    def split_space(self, space: int, sizes: list[int]) -> list[int]:
        """Refine a space (its whole class) into consecutive parts of the given sizes.

        Needed where one operand's channels line up with several segments of another
        (a residual add whose other operand was padded along the channel axis).
        """
        root = self.find(space)
        if len(sizes) == 1:
            return [root]
        assert sum(sizes) == self.sizes[root]
        var, op = self.origin[root]
        parts = [self.new_space(n, var, op) for n in sizes]
        self.splits[root] = parts
        inherited = [r for t, rs in list(self.frozen.items()) if self.find(t) == root for r in rs]
        for p in parts:  # a frozen class stays frozen in every part
            self.frozen[p].extend(inherited)
        return parts

    def coarsen_space(self, space: int, units: int) -> int:
        """Make a space (its whole class) prunable only in units of ``size // units``.

        A projection whose output is reshaped to (heads, head_dim): channel ``h*dh + j``
        belongs to head ``h``; the class is re-expressed over a space of ``units`` heads.
        """
        root = self.find(space)
        size = self.sizes[root]
        assert size % units == 0
        var, op = self.origin[root]
        unit_space = self.new_space(units, var, op)
        self.coarse[root] = (unit_space, size // units)
        self.unit[unit_space] = size // units
        inherited = [r for t, rs in list(self.frozen.items()) if self.find(t) == root for r in rs]
        self.frozen[unit_space].extend(inherited)
        return unit_space

    def expand(self, desc: AxisDesc | None) -> AxisDesc | None:
        """Replace segments of split or coarsened spaces by what they became (recursively)."""
        if desc is None or not (self.splits or self.coarse):
            return desc
        out = []
        for seg in desc:
            root = self.find(seg.space) if seg.space is not None else None
            parts = self.splits.get(root) if root is not None else None
            coarse = self.coarse.get(root) if root is not None else None
            if parts is not None:
                out.extend(self.expand(tuple(Seg(p, self.sizes[p], seg.inner) for p in parts)))
            elif coarse is not None:
                unit_space, per = coarse
                out.extend(self.expand((Seg(unit_space, seg.size // per, seg.inner * per),)))
            else:
                out.append(seg)
        return tuple(out)

    def expand_all(self, d):
        """``expand`` through nested descriptor lists (tuples of tensors)."""
        if d is None:
            return None
        if isinstance(d, list):
            return [self.expand_all(x) for x in d]
        return self.expand(d)

    def _refine(self, desc: AxisDesc, cuts: set[int]) -> AxisDesc | None:
        """Split segments of ``desc`` at the index boundaries ``cuts``; None if impossible.

        A space may recur in ``desc`` (a grouped conv's output repeats its space once per
        group), so segments are re-expanded as earlier cuts split their space.
        """
        out, off = [], 0
        todo = list(desc)
        while todo:
            seg = todo.pop(0)
            if seg.space is not None:
                expanded = self.expand((seg,))
                if expanded != (seg,):
                    todo[:0] = expanded
                    continue
            inner = [c - off for c in sorted(cuts) if off < c < off + seg.length]
            if not inner:
                out.append(seg)
            elif any(c % seg.inner for c in inner):
                return None
            else:
                edges = [0, *[c // seg.inner for c in inner], seg.size]
                sizes = [b - a for a, b in zip(edges[:-1], edges[1:], strict=True)]
                parts = (self.split_space(seg.space, sizes) if seg.space is not None
                         else [None] * len(sizes))
                out.extend(Seg(p, n, seg.inner) for p, n in zip(parts, sizes, strict=True))
            off += seg.length
        return tuple(out)

    def _align_inner(self, a: AxisDesc, b: AxisDesc):
        """Coarsen segments so that equal-length segment pairs agree on ``inner``.

        ``Seg(t, 28, 1)`` meeting ``Seg(s, 7, 4)`` (a channel shuffle's output) makes ``t``
        prunable in units of 4 consecutive channels; returns the re-expanded pair or None.
        """
        changed = False
        for x, y in zip(a, b, strict=True):
            if x.length != y.length or x.inner == y.inner:
                continue
            fine, coarse = (x, y) if x.inner < y.inner else (y, x)
            if fine.space is None or coarse.inner % fine.inner:
                return None
            self.coarsen_space(fine.space, coarse.size)
            changed = True
        return (self.expand(a), self.expand(b)) if changed else None

    def freeze(self, desc_or_descs, var, op: str, reason: str) -> None:
        """Freeze every space appearing in a descriptor or a list of descriptors."""
        items = desc_or_descs if isinstance(desc_or_descs, list) else [desc_or_descs]
        for d in items:
            if isinstance(d, list):
                self.freeze(d, var, op, reason)
                continue
            for s in desc_spaces(self.expand(d)):
                self.frozen[s].append((var.name if var is not None else "<output>", op, reason))

    def unify(self, a: AxisDesc | None, b: AxisDesc | None, var, op: str) -> AxisDesc | None:
        """Two operands meet on one axis (residual add, concat's other axes, ...)."""
        if a is None and b is None:
            return None
        if a is None or b is None:
            self.freeze(a if b is None else b, var, op,
                        "meets channels that cannot be pruned (model input or barrier)")
            return a if b is None else b
        a, b = self.expand(a), self.expand(b)

        def bounds(d):
            out, off = set(), 0
            for seg in d:
                off += seg.length
                out.add(off)
            return out

        for _ in range(8):  # refine both to the union of their boundaries, until stable
            if bounds(a) == bounds(b):
                break
            cuts = bounds(a) | bounds(b)
            ra = self._refine(a, cuts)
            rb = self._refine(b, cuts) if ra is not None else None
            if ra is None or rb is None:
                break
            a, b = self.expand(ra), self.expand(rb)
        same = len(a) == len(b) and all(x.length == y.length for x, y in zip(a, b, strict=True))
        if same and any(x.inner != y.inner for x, y in zip(a, b, strict=True)):
            aligned = self._align_inner(a, b)
            if aligned is not None:
                a, b = aligned
        same = len(a) == len(b) and all(
            x.size == y.size and x.inner == y.inner for x, y in zip(a, b, strict=True)
        )
        if not same:
            self.freeze([a, b], var, op, "operands carry differently structured channels")
            return a
        for x, y in zip(a, b, strict=True):
            if x.space is None or y.space is None:
                self.freeze((x if y.space is None else y,), var, op,
                            "meets channels that cannot be pruned")
            else:
                self.union(x.space, y.space)
        return a

    def readers(self, var) -> list:
        """``[(user var, user value), ...]``: the bindings that read ``var`` (none for a var
        only the function returns)."""
        return self.users.get(var, [])

    # ---- descriptors ----------------------------------------------------------------------
    def desc(self, expr):
        """Per-axis descriptors of an expression (all None for constants and inputs)."""
        d = self.descs.get(expr) if isinstance(expr, relax.Var) else None
        if d is not None:
            return self.expand_all(d)
        if isinstance(expr, relax.Tuple):
            return [self.desc(f) for f in expr.fields]
        shape = static_shape(expr)
        if shape is None:
            return None
        return [None] * len(shape)

    def slice_const(self, var, arg: int, axis: int, desc: AxisDesc | None) -> None:
        """Declare that constant argument ``arg`` of ``var``'s call follows ``desc`` on ``axis``."""
        if desc is not None and desc_spaces(desc):
            self.const_slices[var].append((arg, axis, desc))

    def account(self, var, desc: AxisDesc | None) -> None:
        """Declare that ``var``'s op drops the channels of ``desc`` and its rewrite knows it.

        Channels entering an op must leave it in an output descriptor, be consumed by a
        sliced constant, be declared here, or be frozen; ``analyze`` freezes the rest.
        """
        if desc is not None and desc_spaces(desc):
            self.accounted[var].append(desc)

    def add_member(self, kind: str, var, op: str, arg: int, axis: int, desc) -> None:
        if desc is not None and desc_spaces(desc):
            self.members.append(Member(kind, var, op, arg, axis, desc))

    def add_macs(self, var, op: str, macs: int, scaled_by=()) -> None:
        """Record an op's multiply-accumulates.

        ``scaled_by``: the descriptors whose kept fraction scales the count when channels
        are removed (e.g. a conv's output and input channel axes; a depthwise conv's one).
        """
        self.macs[var] = (op, int(macs))
        self.mac_scaling[var] = tuple(d for d in scaled_by if d is not None)

    @staticmethod
    def one_space(space: int, size: int) -> AxisDesc:
        return (Seg(space, size, 1),)

    @staticmethod
    def fixed(size: int) -> AxisDesc:
        return (Seg(None, size, 1),)

    def array(self, const) -> np.ndarray:
        """The numpy value of a constant, converted once per analysis."""
        arr = self._arrays.get(const)
        if arr is None:
            arr = self._arrays[const] = const.value.numpy()
        return arr
