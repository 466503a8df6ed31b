"""The Relax helpers every part of tvm_hcprune shares: shapes, constants, bindings, uses,
constant replacement and tapping intermediate values.

One definition each; the analysis, the rewrite passes, the recovery code, the CPU backend
and the VTA offload all use these.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from tvm_hcprune.errors import HCPruneError

__all__ = [
    "bindings",
    "clear_shape_cache",
    "const_value",
    "dtype_of",
    "is_const",
    "mutate_functions",
    "op_name",
    "replace_constants",
    "static_shape",
    "update_functions",
    "use_counts",
    "users",
    "with_taps",
]

_SHAPES: dict = {}
_MISSING = object()


def clear_shape_cache() -> None:
    """Forget the shapes :func:`static_shape` cached (call after each analysis or rewrite)."""
    _SHAPES.clear()


def static_shape(expr) -> list[int] | None:
    """The static shape of a tensor-typed expression, or None.

    Reading shapes through the FFI is slow, so results are cached per expression object;
    the cache holds its keys alive (no address reuse) and is cleared by
    :func:`clear_shape_cache` after each analysis or rewrite.

    Examples
    --------
    >>> from tvm import relax
    >>> static_shape(relax.Var("x", relax.TensorType((1, 8), "float32")))
    [1, 8]
    """
    hit = _SHAPES.get(expr, _MISSING)
    if hit is not _MISSING:
        return None if hit is None else list(hit)
    ty = expr.ty
    shape = None
    if isinstance(ty, relax.TensorType) and ty.shape is not None:
        try:
            shape = [int(s) for s in ty.shape.values]
        except (TypeError, ValueError, AttributeError):
            shape = None
    _SHAPES[expr] = tuple(shape) if shape is not None else None
    return shape


def dtype_of(expr) -> str | None:
    """The dtype of a tensor-typed expression, or None."""
    ty = expr.ty
    return str(ty.dtype) if isinstance(ty, relax.TensorType) else None


def is_const(expr) -> bool:
    """True for a Relax constant (an expression holding a tensor value, not a var)."""
    return hasattr(expr, "value") and hasattr(expr.value, "numpy") and not isinstance(
        expr, relax.Var
    )


def const_value(expr):
    """The numpy value of a Relax constant, else None."""
    return expr.value.numpy() if is_const(expr) else None


def op_name(expr) -> str | None:
    """The op name of a call to a Relax operator (``"relax.nn.conv2d"``), else None."""
    if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
        return expr.op.name
    return None


def calls(mod: tvm.IRModule) -> list:
    """Every call in the Relax functions of ``mod``.

    Examples
    --------
    >>> convs = [c for c in calls(mod) if op_name(c) == "relax.nn.conv2d"]  # doctest: +SKIP
    """
    found = []

    def _visit(expr):
        if isinstance(expr, relax.Call):
            found.append(expr)

    for _gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, _visit)
    return found


def bindings(func: relax.Function):
    """Every binding of ``func``'s body, block after block."""
    for block in func.body.blocks:
        yield from block.bindings


def is_static_type(ty) -> bool:
    """True for a tensor type with a fully known shape, a shape whose values are all known
    (``shape_of`` a static tensor, as the ONNX importer normalises ``Gather`` indices), or a
    tuple of such types."""
    if isinstance(ty, relax.TensorType | relax.ShapeType):
        values = ty.values if isinstance(ty, relax.ShapeType) else (
            None if ty.shape is None else ty.shape.values)
        if values is None:
            return False
        try:
            [int(s) for s in values]
        except (TypeError, ValueError, AttributeError):
            return False
        return True
    if isinstance(ty, relax.TupleType):
        return all(is_static_type(t) for t in ty.fields)
    return False


def first_dynamic_binding(func: relax.Function) -> tuple[str, str] | None:
    """``(var name, op name)`` of the first binding of ``func`` whose value is not a tensor
    (or tuple of tensors) of static shape, e.g. a shape computed at run time from a
    ``Shape``/``Range`` chain; None when every binding is static."""
    for b in bindings(func):
        if not is_static_type(b.var.ty):
            value = getattr(b, "value", None)
            return b.var.name, op_name(value) or type(value).__name__
    return None


def mutate_functions(mutator, mod: tvm.IRModule) -> tvm.IRModule:
    """Run a ``PyExprMutator`` (built on ``mod``) over every Relax function of ``mod``."""
    for gvar, func in list(mod.functions_items()):
        if isinstance(func, relax.Function):
            mutator.builder_.update_func(gvar, mutator.visit_expr(func))
    return mutator.builder_.get()


def update_functions(mod: tvm.IRModule, updates: dict) -> tvm.IRModule:
    """``mod`` with the functions of ``updates`` (``{GlobalVar: function}``) replaced; ``mod``
    itself when there is nothing to replace."""
    if not updates:
        return mod
    mod = mod.clone()
    for gvar, func in updates.items():
        mod[gvar] = func
    return mod


def schedule_unscheduled(mod: tvm.IRModule, schedule) -> tvm.IRModule:
    """``mod`` with ``schedule(func)`` (a scheduled PrimFunc, or None to keep ``func``)
    applied to every PrimFunc not yet marked ``tirx.is_scheduled``."""
    updates = {}
    for gvar, func in mod.functions_items():
        if not isinstance(func, tvm.tirx.PrimFunc):
            continue
        if func.attrs is not None and int(func.attrs.get("tirx.is_scheduled", 0) or 0):
            continue
        new = schedule(func)
        if new is not None:
            updates[gvar] = new
    return update_functions(mod, updates)


def use_counts(func: relax.Function) -> dict:
    """Number of uses of every var bound in ``func`` (uses in the function output count)."""
    counts: dict = {}

    def _visit(node):
        if isinstance(node, relax.Var):
            counts[node] = counts.get(node, 0) + 1

    relax.analysis.post_order_visit(func.body, _visit)
    return counts


def users(func: relax.Function) -> dict:
    """The bindings that read each var of ``func``: ``{var: [(user var, user value), ...]}``,
    in binding order (a var read twice by one binding is listed once; the function's output
    is no binding and not listed).

    Examples
    --------
    >>> readers = users(mod["main"])  # doctest: +SKIP
    >>> [v.name for v, _ in readers[lv]]  # doctest: +SKIP
    ['lv5', 'lv9']
    """
    out: dict = {}
    for b in bindings(func):
        seen: set = set()

        def _visit(node, b=b, seen=seen):
            if isinstance(node, relax.Var) and node not in seen:
                seen.add(node)
                out.setdefault(node, []).append((b.var, b.value))

        relax.analysis.post_order_visit(b.value, _visit)
    return out


@mutator
class _ConstReplacer(PyExprMutator):
    def __init__(self, mod, updates):
        super().__init__(mod)
        self.updates = updates
        self.current = None
        self.done = set()

    def visit_var_binding_(self, binding):
        self.current = binding.var
        super().visit_var_binding_(binding)

    def visit_call_(self, call):
        name = self.current.name if self.current is not None else None
        upd = self.updates.get(name)
        if not upd or name in self.done:
            return super().visit_call_(call)
        self.done.add(name)
        args = [self.visit_expr(a) for a in call.args]
        for i, arr in upd.items():
            old = static_shape(args[i])
            if old != list(arr.shape):
                raise HCPruneError(f"binding {name!r} of the pruned module holds a constant of "
                                   f"shape {old}, reconstruction computed {list(arr.shape)}; "
                                   "pass the module apply_plan(graph, plan) returned")
            args[i] = relax.const(arr, str(arr.dtype))
        return relax.Call(call.op, args, call.attrs, call.ty_args)


def replace_constants(mod: tvm.IRModule, updates: dict) -> tvm.IRModule:
    """``mod`` with constant arguments of ``main``'s calls replaced.

    Parameters
    ----------
    mod : tvm.IRModule
    updates : dict
        ``{binding name: {argument index: numpy array}}``; each array must keep the shape of
        the constant it replaces, and each binding name must be unique in ``main``.

    Examples
    --------
    >>> new = replace_constants(mod, {"lv3": {1: weight}})  # doctest: +SKIP
    """
    func = mod["main"]
    names = [b.var.name for b in bindings(func)]
    dup = {n for n in updates if names.count(n) != 1}
    if dup:
        raise HCPruneError(f"bindings {sorted(dup)} are missing or not unique in the pruned "
                           "module; constants are matched by binding name")
    new = _ConstReplacer(mod, updates).visit_expr(func)
    out = tvm.IRModule(dict(mod.functions.items()), attrs=mod.attrs)
    out["main"] = new
    relax.analysis.well_formed(out)  # raises on the first violation (TVM 0.27)
    return out


def with_taps(plain: tvm.IRModule, taps) -> tvm.IRModule:
    """``plain`` (a module after ``ToNonDataflow``) whose ``main`` returns
    ``(*taps, original_result)``; ``taps`` are vars bound in ``main``."""
    func = plain["main"]
    result = relax.BlockBuilder().normalize(relax.Tuple([*taps, func.body.body]))
    body = relax.SeqExpr(func.body.blocks, result)
    new = relax.Function(func.params, body, result.ty, func.is_pure, func.attrs)
    funcs = {gv: f for gv, f in plain.functions.items() if gv.name_hint != "main"}
    funcs[plain.get_global_var("main")] = new
    tapped = tvm.IRModule(funcs, attrs=plain.attrs, global_infos=plain.global_infos)
    return relax.transform.ConvertToDataflow()(relax.transform.Normalize()(tapped))


def is_primitive(func) -> bool:
    """Whether ``func`` is a Relax function marked ``Primitive`` (a fused group FuseTIR turns
    into one PrimFunc).

    Examples
    --------
    >>> is_primitive(mod["fused_conv2d_add"])  # doctest: +SKIP
    True
    """
    attrs = func.attrs
    return attrs is not None and "Primitive" in attrs and int(attrs["Primitive"]) == 1
