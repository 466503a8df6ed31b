"""Channel dependency analysis: ``analyze(mod) -> ChannelGraph``.

The analysis walks ``main`` binding by binding and asks each op's handler (``ops``) how
channel axes map from inputs to outputs. Producers (conv/matmul weights) create channel
spaces; residual adds, SE gates, depthwise convs and the like unify spaces; the union-find
classes are the channel *groups* that must shrink together. Ops without a handler are
barriers: groups touching them are frozen, with the reason recorded. Nothing is guessed.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import relax

from tvm_hcprune import ops as _ops  # noqa: F401  (registers the built-in handlers)
from tvm_hcprune.analysis.context import AnalysisContext, Member
from tvm_hcprune.errors import HCPruneError
from tvm_hcprune.frontend.normalize import NormalizeImport
from tvm_hcprune.ops.desc import axis_index, desc_length, desc_spaces
from tvm_hcprune.ops.registry import get_op_handler
from tvm_hcprune.utils.relax import (
    bindings,
    clear_shape_cache,
    is_const,
    static_shape,
    users,
)

__all__ = ["ChannelGraph", "ChannelGroup", "FrozenRecord", "Member", "analyze", "check_plan",
           "kept_lookup"]


@dataclass(frozen=True)
class FrozenRecord:
    """Why a group cannot be pruned."""

    group: int
    op: str
    var: str
    reason: str


@dataclass
class ChannelGroup:
    """Channels that must be removed together (one union-find class of spaces).

    Examples
    --------
    >>> group = tvm_hcprune.analyze(mod).groups[0]  # doctest: +SKIP
    >>> group.size, group.producers, group.frozen  # doctest: +SKIP
    """

    id: int
    size: int
    spaces: list[int]
    producers: list[str]
    members: list[Member] = field(default_factory=list, repr=False)
    frozen: bool = False
    reasons: list[FrozenRecord] = field(default_factory=list)
    macs: int = 0
    params: int = 0
    unit: int = 1  # channels per prunable unit (head_dim for attention heads)
    balance: int | None = None  # index into ChannelGraph.balanced_sets: keep equal counts

    @property
    def prunable(self) -> bool:
        return not self.frozen


class ChannelGraph:
    """Result of :func:`analyze`: channel groups, frozen groups with reasons, MACs, params.

    Attributes
    ----------
    mod : tvm.IRModule
        The canonicalised module the analysis describes (what the rewrite applies to).
    groups : list of ChannelGroup
    frozen : list of FrozenRecord
        One record per (group, op, reason) that froze a group.
    total_macs, total_params : int
        Multiply-accumulates of conv/matmul ops and constant elements of ``main``.
    fingerprint : str
        Identifies the module (topology, shapes and weights) a plan belongs to.

    Examples
    --------
    >>> graph = tvm_hcprune.analyze(mod)  # doctest: +SKIP
    >>> print(graph.summary()); graph.frozen  # doctest: +SKIP
    """

    def __init__(self, mod, ctx: AnalysisContext, fingerprint: str, total_params: int):
        # keep the functions, not the module object: TVM passes may update a module in
        # place (copy-on-write on unique references), e.g. when someone compiles graph.mod
        self._functions = dict(mod.functions.items())
        self._attrs = mod.attrs
        self.ctx = ctx
        self.fingerprint = fingerprint
        self.total_params = total_params
        self.total_macs = sum(m for _, m in ctx.macs.values())
        roots: dict[int, ChannelGroup] = {}
        self.space_group: dict[int, int] = {}
        for s in range(len(ctx.parent)):
            r = ctx.find(s)
            if r in ctx.splits or r in ctx.coarse:  # the parts / head spaces form the groups
                continue
            if r not in roots:
                roots[r] = ChannelGroup(len(roots), ctx.sizes[r], [], [])
            g = roots[r]
            g.spaces.append(s)
            g.unit = max(g.unit, ctx.unit.get(s, 1))
            self.space_group[s] = g.id
            var, op = ctx.origin[s]
            g.producers.append(var.name)
        self.groups = list(roots.values())
        self.frozen: list[FrozenRecord] = []
        for s, reasons in ctx.frozen.items():
            if s not in self.space_group or not reasons:  # split spaces: parts carry them
                continue
            g = self.groups[self.space_group[s]]
            for var, op, reason in reasons:
                rec = FrozenRecord(g.id, op, var, reason)
                if rec not in g.reasons:
                    g.reasons.append(rec)
                    self.frozen.append(rec)
            g.frozen = True
        self.balanced_sets = self._balance(ctx)
        for m in ctx.members:
            for gid in {self.space_group[s] for s in desc_spaces(m.desc)}:
                self.groups[gid].members.append(m)
        touched: dict = {}
        for m in ctx.members:
            if m.kind in ("producer", "consumer", "grouped_consumer"):
                touched.setdefault(m.var, set()).update(
                    self.space_group[s] for s in desc_spaces(m.desc))
        for var, (_op, macs) in ctx.macs.items():
            for gid in touched.get(var, ()):
                self.groups[gid].macs += macs
        for var, slices in ctx.const_slices.items():
            call = ctx.values[var]
            for arg, axis, desc in slices:
                shape = static_shape(call.args[arg])
                n = math.prod(shape)
                for seg in desc:
                    if seg.space is not None:
                        frac = seg.length / shape[axis]
                        self.groups[self.space_group[seg.space]].params += int(n * frac)

    def _balance(self, ctx) -> list[list[int]]:
        """Sets of groups that must keep equal channel counts (a grouped conv's input groups).

        Each grouped conv (``ctx.group_inputs``) lists one input descriptor per conv group;
        the k-th segments of all of them form a set. Sets sharing a group merge. A set whose
        groups differ in size or structure, or with a frozen member, is frozen whole (with
        the reason recorded).
        """
        parent: dict[int, int] = {}

        def find(g):
            while parent.setdefault(g, g) != g:
                g = parent[g]
            return g

        broken = set()
        for _ko, _ki, _groups, descs in ctx.group_inputs.values():
            shapes = {tuple((s.size, s.inner) for s in d) for d in descs}
            gids = [[self.space_group[s.space] if s.space is not None else None for s in d]
                    for d in descs]
            if len(shapes) != 1 or any(g is None for row in gids for g in row):
                for g in {g for row in gids for g in row if g is not None}:
                    broken.add(find(g))
                continue
            for col in zip(*gids, strict=True):
                for g in col[1:]:
                    parent[find(g)] = find(col[0])
        sets: dict[int, list[int]] = {}
        for g in list(parent):
            sets.setdefault(find(g), []).append(g)
        out = []
        for members in sets.values():
            members = sorted(members)
            if len(members) < 2 and not broken.intersection(members):
                continue
            sizes = {self.groups[g].size for g in members}
            why = None
            if broken.intersection(members):
                why = "grouped conv whose groups carry differently structured channels"
            elif len(sizes) > 1:
                why = "grouped conv whose groups' channels have different sizes"
            elif any(self.groups[g].frozen for g in members):
                why = "another group of the same grouped conv cannot be pruned"
            if why is not None:
                for g in members:
                    self._freeze_group(g, "relax.nn.conv2d", why)
                continue
            for g in members:
                self.groups[g].balance = len(out)
            out.append(members)
        return out

    def _freeze_group(self, gid: int, op: str, reason: str) -> None:
        g = self.groups[gid]
        rec = FrozenRecord(gid, op, g.producers[0] if g.producers else "?", reason)
        if not g.frozen or rec not in g.reasons:
            g.reasons.append(rec)
            self.frozen.append(rec)
        g.frozen = True

    @property
    def mod(self):
        """The analysed (canonicalised) module; a new IRModule object on every access."""
        return tvm.IRModule(dict(self._functions), attrs=self._attrs)

    def count_after(self, plan) -> tuple[int, int]:
        """MACs and parameters of the module once ``plan`` is applied, without rewriting.

        Exact: every MAC count scales with the kept fraction of the channel axes its op
        declared, and every constant shrinks only along the axes it was declared sliced on.
        """
        sizes = {}

        def kept(desc):
            idx = axis_index(desc, lambda s: plan.kept_indices(self.space_group[s]))
            return (desc_length(desc) if idx is None else len(idx)), desc_length(desc)

        macs = 0
        for var, (_op, m) in self.ctx.macs.items():
            num, den = m, 1
            for d in self.ctx.mac_scaling.get(var, ()):
                k, n = kept(d)
                num, den = num * k, den * n
            macs += num // den
        params = self.total_params
        for var, slices in self.ctx.const_slices.items():
            for arg in {a for a, _, _ in slices}:
                shape = sizes.setdefault((var, arg), static_shape(self.ctx.values[var].args[arg]))
                n = math.prod(shape)
                num, den = n, 1
                for a, _axis, d in slices:
                    if a == arg:
                        k, length = kept(d)
                        num, den = num * k, den * length
                params -= n - num // den
        return macs, params

    @property
    def prunable_groups(self) -> list[ChannelGroup]:
        return [g for g in self.groups if g.prunable]

    def summary(self) -> str:
        n_frozen = sum(g.frozen for g in self.groups)
        lines = [f"{len(self.groups)} channel groups ({n_frozen} frozen), "
                 f"{self.total_macs / 1e6:.1f} MMACs, {self.total_params / 1e6:.2f} M params"]
        for g in self.groups:
            state = "frozen: " + g.reasons[0].reason if g.frozen else "prunable"
            lines.append(f"  group {g.id:3d}: {g.size:5d} ch, {len(g.spaces)} producer(s) "
                         f"[{', '.join(g.producers[:3])}{'...' if len(g.producers) > 3 else ''}]"
                         f", {g.macs / 1e6:.1f} MMACs - {state}")
        return "\n".join(lines)


def _fingerprint(func, arrays) -> str:
    """A stable hash of the function's ops, shapes and constant contents.

    Constants are hashed through a strided sample of their elements plus their sum, which
    tells real models apart at a fraction of the cost of hashing every byte.
    """
    h = hashlib.blake2b(digest_size=16)
    for b in bindings(func):
        v = b.value
        h.update(type(v).__name__.encode())
        if isinstance(v, relax.Call):
            h.update(str(getattr(v.op, "name", "")).encode())
            h.update(str(static_shape(b.var)).encode())
            for a in v.args:
                if is_const(a):
                    arr = arrays(a)
                    flat = arr.reshape(-1)
                    h.update(str(arr.shape).encode())
                    h.update(np.ascontiguousarray(flat[::7]).tobytes())
                    h.update(np.float64(flat.sum(dtype=np.float64)).tobytes())
    return h.hexdigest()


def _count_params(func) -> int:
    n = 0
    for b in bindings(func):
        v = b.value
        args = list(v.args) if isinstance(v, relax.Call) else []
        for a in args:
            if isinstance(a, relax.Tuple):
                args.extend(a.fields)
            elif is_const(a):
                shape = static_shape(a)
                n += math.prod(shape) if shape else 1
    return n


def _tensor_descs(ctx, expr):
    d = ctx.desc(expr)
    return [] if d is None else [d]


def analyze(mod, canonicalize: bool = True, fingerprint: bool = True) -> ChannelGraph:
    """Analyse the channel dependencies of ``mod["main"]``.

    Parameters
    ----------
    mod : tvm.IRModule
        A Relax module with static shapes and weights as constants (as
        :func:`tvm_hcprune.load_onnx` returns).
    canonicalize : bool
        Run :class:`~tvm_hcprune.frontend.normalize.NormalizeImport` first
        (folds constant-only bindings, re-expresses importer ``call_tir`` clutter).
    fingerprint : bool
        Compute ``ChannelGraph.fingerprint`` (needed to make or check plans).

    Returns
    -------
    ChannelGraph

    Examples
    --------
    >>> graph = tvm_hcprune.analyze(tvm_hcprune.load_onnx("model.onnx"))  # doctest: +SKIP
    >>> print(graph.summary())  # doctest: +SKIP
    """
    if "main" not in [gv.name_hint for gv in mod.get_global_vars()]:
        raise HCPruneError("the module has no 'main' function; pass the module a frontend "
                           "importer returns (e.g. tvm_hcprune.load_onnx)")
    if canonicalize:
        try:
            mod = NormalizeImport()(mod)
        except HCPruneError:
            raise
        except Exception as err:  # noqa: BLE001 - TVM passes raise assorted error types
            raise HCPruneError(
                f"NormalizeImport (the importer clean-up before channel analysis) failed: "
                f"{_short(err)}; a tvm_hcprune bug: please report it. "
                "analyze(mod, canonicalize=False) skips it") from None
    func = mod["main"]
    if not isinstance(func, relax.Function):
        raise HCPruneError("mod['main'] is not a Relax function")
    clear_shape_cache()
    ctx = AnalysisContext()
    ctx.values = {}
    ctx.users = users(func)
    n_calls = 0
    for b in bindings(func):
        var, value = b.var, getattr(b, "value", None)
        ctx.var_order.append(var)
        if not isinstance(b, relax.VarBinding):
            ctx.descs[var] = None
            continue
        ctx.values[var] = value
        try:
            n_calls += _analyze_binding(ctx, var, value)
        except Exception as err:  # noqa: BLE001 - never a raw error from inside analysis
            op = getattr(getattr(value, "op", None), "name", type(value).__name__)
            raise HCPruneError(f"channel analysis failed at {var.name} = {op}(...): "
                               f"{_short(err)}; a tvm_hcprune bug: please report it") from None
    ret = func.body.body
    try:
        ctx.freeze(_flatten(ctx.desc(ret)), None, "return", "model output shape must not change")
        _expand_declarations(ctx)
        if n_calls == 0:
            raise HCPruneError("the model is empty: main has no operations to analyse")
        fp = _fingerprint(func, ctx.array) if fingerprint else ""
        graph = ChannelGraph(mod, ctx, fp, _count_params(func))
    except HCPruneError:
        raise
    except Exception as err:  # noqa: BLE001
        raise HCPruneError(f"channel analysis failed while forming the groups: "
                           f"{_short(err)}; a tvm_hcprune bug: please report it") from None
    finally:
        clear_shape_cache()
    return graph


def _short(err: Exception) -> str:
    """``Type: message`` of an exception on one line (TVM's carry a C++ backtrace)."""
    lines = [ln for ln in str(err).strip().splitlines() if ln.strip()]
    return f"{type(err).__name__}: {lines[-1][:300] if lines else ''}"


def _analyze_binding(ctx, var, value) -> int:
    """Ask the op's handler about one binding; returns 1 for an op call, else 0."""
    out, n_calls = None, 0
    if isinstance(value, relax.Call) and hasattr(value.op, "name"):
        n_calls += 1
        name = value.op.name
        ctx.ops[var] = name
        handler = get_op_handler(name)
        if handler is None:
            _freeze_args(ctx, var, value, name, "no op handler registered (barrier)")
        else:
            try:
                out = handler.analyze(ctx, var, value)
                out = _conserved(ctx, var, value, name, out)
            except Exception as err:  # noqa: BLE001 - a handler gap must not crash users
                _freeze_args(ctx, var, value, name,
                             f"handler failed: {type(err).__name__}: {str(err)[:200]}")
                out = None
    elif isinstance(value, relax.TupleGetItem):
        t = ctx.desc(value.tuple_value)
        out = t[int(value.index)] if t is not None else None
    elif isinstance(value, relax.Tuple):
        out = [ctx.desc(f) for f in value.fields]
    elif isinstance(value, relax.Var):
        out = ctx.desc(value)
    elif isinstance(value, relax.Call):
        _freeze_args(ctx, var, value, "call", "call of a non-op function (barrier)")
    ctx.descs[var] = _checked(ctx, var, out)
    return n_calls


def _expand_declarations(ctx):
    """Rewrite every stored descriptor in terms of unsplit spaces (see ``split_space``)."""
    if not (ctx.splits or ctx.coarse):
        return
    ctx.descs = {v: ctx.expand_all(d) for v, d in ctx.descs.items()}
    ctx.const_slices = {v: [(a, ax, ctx.expand(d)) for a, ax, d in sl]
                        for v, sl in ctx.const_slices.items()}
    for m in ctx.members:
        m.desc = ctx.expand(m.desc)
    ctx.mac_scaling = {v: tuple(ctx.expand(d) for d in ds) for v, ds in ctx.mac_scaling.items()}
    ctx.group_inputs = {v: (ko, ki, g, [ctx.expand(d) for d in ds])
                        for v, (ko, ki, g, ds) in ctx.group_inputs.items()}


def _flatten(d):
    if d is None:
        return []
    if d and isinstance(d[0], list):
        return [x for sub in d for x in _flatten(sub)]
    return [d]


def _spaces_of(ctx, d, out: set) -> None:
    """Add the (root) spaces of size > 1 in a descriptor or a nested list of them."""
    if d is None:
        return
    if isinstance(d, list):  # a tensor's axes, or a tuple's tensors
        for x in d:
            _spaces_of(ctx, x, out)
        return
    for s in desc_spaces(ctx.expand(d)):
        r = ctx.find(s)
        if ctx.sizes[r] > 1:  # a single channel can never be removed
            out.add(r)


def _conserved(ctx, var, call, op, out):
    """Freeze the channels a handler lets vanish: every space entering an op must reach an
    output descriptor, a sliced constant (a consumer weight), ``ctx.account`` or be frozen.

    A handler that forgets an axis (a convolution over a spatial axis that carries channels
    after a reshape, say) would otherwise let the rewrite change a shape nobody tracks.
    """
    seen: set = set()
    for a in call.args:
        if isinstance(a, relax.Tuple | relax.Var):
            _spaces_of(ctx, ctx.desc(a), seen)
    if not seen:
        return out
    kept: set = set()
    _spaces_of(ctx, out, kept)
    for _arg, _axis, d in ctx.const_slices.get(var, ()):
        _spaces_of(ctx, d, kept)
    for d in ctx.accounted.get(var, ()):
        _spaces_of(ctx, d, kept)
    lost = seen - kept
    if lost:
        frozen = {ctx.find(s) for s, rs in ctx.frozen.items() if rs}
        for r in sorted(lost - frozen):
            ctx.freeze(ctx.one_space(r, ctx.sizes[r]), var, op,
                       "the op drops a channel axis its handler does not track")
    return out


def _freeze_args(ctx, var, call, op, reason):
    for a in call.args:
        ctx.freeze(_flatten(ctx.desc(a)), var, op, reason)


def _checked(ctx, var, out):
    """Drop descriptors whose length disagrees with the static shape (never guess)."""
    ty = var.ty
    if out is None:
        return None
    if isinstance(ty, relax.TupleType):
        return out
    shape = static_shape(var)
    if shape is None or len(out) != len(shape):
        ctx.freeze(_flatten(out), var, ctx.ops.get(var, "?"), "descriptor rank mismatch")
        return [None] * len(shape) if shape is not None else None
    fixed = []
    for ax, d in enumerate(out):
        if d is not None and desc_length(d) != shape[ax]:
            ctx.freeze([d], var, ctx.ops.get(var, "?"), "descriptor length mismatch")
            d = None
        fixed.append(d)
    return fixed


def kept_lookup(graph, plan):
    """``kept_of(space)`` for ``axis_index``: the plan's kept indices of a space's group."""
    cache = {}

    def kept_of(space):
        g = graph.space_group[space]
        if g not in cache:
            cache[g] = plan.kept_indices(g)
        return cache[g]

    return kept_of


def check_plan(graph, plan) -> None:
    """Raise :class:`HCPruneError` unless ``plan`` (a ``PrunePlan``) fits ``graph``.

    The plan must carry the graph's fingerprint (same model), name only existing, unfrozen
    groups of the right size, and keep equal counts in the groups of each balanced set
    (the groups feeding one grouped convolution).

    Examples
    --------
    >>> check_plan(analyze(mod), plan)  # doctest: +SKIP
    """
    if plan.fingerprint != graph.fingerprint:
        raise HCPruneError(
            "this plan was made for a different model (fingerprint "
            f"{plan.fingerprint[:12]}..., the module's is {graph.fingerprint[:12]}...); "
            "recompute the plan on this module"
        )
    for gid, size in plan.sizes.items():
        if gid >= len(graph.groups) or graph.groups[gid].size != size:
            raise HCPruneError(f"plan group {gid} (size {size}) does not exist in this module")
        if graph.groups[gid].frozen:
            raise HCPruneError(f"plan prunes group {gid}, which is frozen: "
                               f"{graph.groups[gid].reasons[0].reason}")
    for members in getattr(graph, "balanced_sets", ()):
        counts = {g: len(plan.kept_indices(g)) if g in plan.kept else graph.groups[g].size
                  for g in members}
        if len(set(counts.values())) > 1:
            raise HCPruneError(
                f"plan keeps {counts} channels in groups {members}, which feed the groups of "
                "one grouped convolution and must keep equal counts; keep as many channels "
                "in each (ChannelGraph.balanced_sets lists such groups)")
