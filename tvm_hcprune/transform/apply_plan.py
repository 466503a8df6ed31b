"""ApplyPrunePlan: physically remove the channels a ``PrunePlan`` drops.

The result carries its plan like :class:`~tvm_hcprune.transform.PruneChannels`' (the module
attribute ``hcprune.plan``, :func:`module_plan`), so a module rebuilt from a saved plan is
the module the pass produced, attribute included.
"""

from __future__ import annotations

import json
from collections import OrderedDict

import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from tvm_hcprune.analysis import analyze, check_plan, kept_lookup
from tvm_hcprune.errors import HCPruneError
from tvm_hcprune.ops.desc import axis_index, desc_spaces, take_channels
from tvm_hcprune.ops.registry import get_op_handler
from tvm_hcprune.planning.plan import PrunePlan
from tvm_hcprune.transform.sparsify_blocks import sparsify
from tvm_hcprune.utils.relax import clear_shape_cache, static_shape

PLAN_ATTR = "hcprune.plan"
_ORIGINALS: OrderedDict = OrderedDict()  # plan fingerprint -> analysed dense module
_KEEP_ORIGINALS = 8


def attach_plan(pruned, graph, plan: PrunePlan):
    """``pruned`` with ``plan`` as its ``hcprune.plan`` attribute; ``graph.mod`` (the dense
    module) is remembered for :func:`original_module`.

    Examples
    --------
    >>> pruned = attach_plan(apply_plan(graph, plan), graph, plan)  # doctest: +SKIP
    """
    _ORIGINALS[graph.fingerprint] = graph.mod
    _ORIGINALS.move_to_end(graph.fingerprint)
    while len(_ORIGINALS) > _KEEP_ORIGINALS:
        _ORIGINALS.popitem(last=False)
    return pruned.with_attr(PLAN_ATTR, plan.to_json())


def module_plan(mod) -> PrunePlan | None:
    """The plan a module was pruned with (its ``hcprune.plan`` attribute), or None.

    Examples
    --------
    >>> plan = module_plan(PruneChannels(ratio=0.5)(mod))  # doctest: +SKIP
    """
    attrs = mod.attrs
    if attrs is None or PLAN_ATTR not in attrs:
        return None
    return PrunePlan.from_dict(json.loads(str(attrs[PLAN_ATTR])))


def original_module(plan: PrunePlan):
    """The dense (analysed) module ``plan`` was made for, when this process pruned it.

    Raises
    ------
    HCPruneError
        The module was pruned elsewhere (another process, or too many models ago).

    Examples
    --------
    >>> dense = original_module(module_plan(pruned))  # doctest: +SKIP
    """
    mod = _ORIGINALS.get(plan.fingerprint)
    if mod is None:
        raise HCPruneError(
            "the dense module of this plan is not known to this process (the module was "
            "pruned elsewhere or earlier): pass it explicitly, e.g. "
            "Reconstruct(calibration, graph=tvm_hcprune.analyze(dense), plan=plan)")
    return mod


@mutator
class _PlanRewriter(PyExprMutator):
    def __init__(self, mod, graph, kept_of, index_of=None):
        super().__init__(mod)
        self.graph = graph
        self.ctx = graph.ctx
        self.kept_of = kept_of
        self.index_of = index_of
        self.current = None

    # helpers used by handlers' rewrite()
    def axis_index(self, desc):
        if self.index_of is not None:
            return self.index_of(desc)
        return axis_index(desc, self.kept_of)

    def out_desc(self, var):
        return self.ctx.descs[var]

    def in_desc(self, expr):
        return self.ctx.desc(expr)

    @staticmethod
    def new_shape(expr):
        return static_shape(expr)

    def visit_var_binding_(self, binding):
        self.current = binding.var
        try:
            super().visit_var_binding_(binding)
        except HCPruneError:
            raise
        except Exception as err:  # noqa: BLE001 - TVM's type inference raises assorted types
            value = binding.value
            op = getattr(getattr(value, "op", None), "name", type(value).__name__)
            msg = str(err).strip().splitlines()[-1] if str(err).strip() else ""
            protect = [f"group:{g}" for g in self._groups_at(binding.var)]
            raise HCPruneError(
                f"pruning cannot rewrite {binding.var.name} = {op}(...): "
                f"{type(err).__name__}: {msg[:300]}. The channel analysis let pruned channels "
                f"reach this op in a form it cannot take (a tvm_hcprune bug: please report "
                f"it); meanwhile keep the groups feeding it whole with "
                f"protect={protect}") from None

    def _groups_at(self, var) -> list[int]:
        """Ids of the groups whose channels reach ``var``'s call."""
        call = self.ctx.values.get(var)
        spaces: list[int] = []

        def collect(d):
            if isinstance(d, list):  # a tensor's axes, or a tuple's tensors
                for x in d:
                    collect(x)
            elif d is not None:
                spaces.extend(desc_spaces(d))

        for a in getattr(call, "args", ()):
            collect(self.ctx.desc(a))
        return sorted({self.graph.space_group[s] for s in spaces})

    def visit_call_(self, call):
        var = self.current
        orig = self.ctx.values.get(var) if var is not None else None
        if orig is None or not hasattr(call.op, "name") or not orig.same_as(call):
            return super().visit_call_(call)
        args = [self.visit_expr(a) for a in call.args]
        changed = any(not a.same_as(b) for a, b in zip(args, call.args, strict=True))
        sliced = {}  # arg -> array with every declared axis sliced so far
        for arg, axis, desc in self.ctx.const_slices.get(var, ()):
            idx = self.axis_index(desc)
            if idx is None:
                continue
            arr = sliced.get(arg)
            arr = self.ctx.array(call.args[arg]) if arr is None else arr
            sliced[arg] = take_channels(arr, idx, axis)
        for arg, arr in sliced.items():
            args[arg] = relax.const(arr, str(arr.dtype))
            changed = True
        if not changed:
            # an op can create prunable channels of its own (channel padding)
            out = self.ctx.descs.get(var)
            changed = bool(out) and not isinstance(out[0], list) and any(
                self.axis_index(d) is not None for d in out)
        if not changed:
            return super().visit_call_(call)
        handler = get_op_handler(call.op.name)
        if handler is None:  # pragma: no cover - barriers never see changed inputs
            raise AssertionError(f"a barrier op {call.op.name} received pruned inputs")
        return handler.rewrite(self, var, call, args)


def apply_plan(graph, plan: PrunePlan):
    """Rewrite ``graph.mod`` according to ``plan``; returns the pruned module.

    The plan's channels are removed first; then the layers its ``sparse`` entry lists (a
    mixed budget) get that fraction of their weight blocks zeroed, chosen among the kept
    channels' weights (:func:`apply_sparsity`).
    """
    check_plan(graph, plan)
    out = rewrite_channels(graph, kept_lookup(graph, plan)) if plan.kept else graph.mod
    return apply_sparsity(out, plan)


def apply_sparsity(mod, plan: PrunePlan):
    """``mod`` (already pruned by ``plan``) with the block sparsity of ``plan.sparse``
    applied by :func:`~tvm_hcprune.transform.sparsify_blocks.sparsify` (same block and
    criterion; layer binding names survive the channel rewrite); ``mod`` itself when the
    plan has none.

    Examples
    --------
    >>> sparse_pruned = apply_sparsity(apply_plan(graph, channels_only), plan)
    ... # doctest: +SKIP
    """
    if not plan.sparse:
        return mod
    out, _report = sparsify(mod, dict(plan.sparse["layers"]), tuple(plan.sparse["block"]),
                            plan.sparse["criterion"])
    return out


def rewrite_channels(graph, kept_of, index_of=None):
    """``graph.mod`` with every channel space ``s`` reduced to the channels
    ``kept_of(s)`` lists (None: all of them), weights and constants sliced alike; an index
    past a space's size adds a zero channel there. The output shapes must not change.

    ``index_of(desc)``, when given, replaces ``kept_of``: the indices an axis with that
    descriptor keeps (None: all), where an index past the axis's length is a zero channel
    (what :class:`~tvm_hcprune.backend.cpu.pad_channels.PadChannels` uses to append zero
    channels to whole axes).

    Examples
    --------
    >>> graph = analyze(mod)  # doctest: +SKIP
    >>> same = rewrite_channels(graph, lambda space: None)  # doctest: +SKIP
    """
    mod = graph.mod
    func = mod["main"]
    try:
        new = _PlanRewriter(mod, graph, kept_of, index_of).visit_expr(func)
    finally:
        clear_shape_cache()
    new = relax.analysis.remove_all_unused(new)
    out = tvm.IRModule(dict(mod.functions.items()), attrs=mod.attrs)
    out["main"] = new
    ret_old, ret_new = static_shape(func.body.body), static_shape(new.body.body)
    if ret_old != ret_new:  # pragma: no cover - outputs are frozen by analysis
        raise AssertionError(f"pruning changed the output shape {ret_old} -> {ret_new}")
    relax.analysis.well_formed(out)  # raises on the first violation (TVM 0.27)
    return out


@tvm.transform.module_pass(opt_level=0, name="ApplyPrunePlan")
class ApplyPrunePlan:
    """Apply a saved ``PrunePlan`` to the module it was made for.

    Parameters
    ----------
    plan : PrunePlan or str or PathLike
        The plan, or the path of its JSON file.

    Examples
    --------
    >>> pruned = ApplyPrunePlan("plan.json")(mod)  # doctest: +SKIP
    """

    def __init__(self, plan):
        self.plan = plan if isinstance(plan, PrunePlan) else PrunePlan.load(plan)

    def transform_module(self, mod, ctx):
        graph = analyze(mod)
        return attach_plan(apply_plan(graph, self.plan), graph, self.plan)
