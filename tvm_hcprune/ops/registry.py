"""The op-handler registry: per Relax op name, how channel axes flow through the op.

A handler is an object with two methods:

``analyze(ctx, var, call) -> out``
    Given the channel descriptors of the call's inputs (``ctx.desc(expr)``), return the
    descriptor of its output (a list with one :class:`AxisDesc` or ``None`` per axis, or a
    list of such lists for tuple outputs). It declares, through ``ctx``, which spaces are
    created (producers), unified (residuals), frozen (barriers), and which constant
    operands are sliced along which axes (weights, biases, BN parameters).

``rewrite(rw, var, call, args) -> relax.Expr``
    Rebuild the call for the pruned shapes. ``args`` are the already-mutated arguments
    with constant operands sliced as declared during analysis. The default rebuilds the
    call with the same attributes, which is right for every op whose attributes carry no
    channel count.

An op without a handler is a barrier: every channel space flowing into it is frozen.
"""

from __future__ import annotations

from collections.abc import Callable

from tvm import relax

_HANDLERS: dict[str, OpHandler] = {}


class OpHandler:
    """Base class of op handlers; subclasses override ``analyze`` (and ``rewrite``)."""

    def analyze(self, ctx, var, call):  # pragma: no cover - interface
        raise NotImplementedError

    def rewrite(self, rw, var, call, args):
        return relax.Call(call.op, args, call.attrs, call.ty_args)


def register_op_handler(*op_names: str, override: bool = False) -> Callable:
    """Register a handler class (or instance) for one or more Relax op names.

    Parameters
    ----------
    op_names : str
        Full Relax op names, e.g. ``"relax.nn.conv2d"``.
    override : bool
        Replace an existing registration instead of raising.

    Examples
    --------
    >>> @register_op_handler("relax.nn.my_op")        # doctest: +SKIP
    ... class MyOp(OpHandler):
    ...     def analyze(self, ctx, var, call):
    ...         return ctx.desc(call.args[0])
    """

    def wrap(handler):
        inst = handler() if isinstance(handler, type) else handler
        for name in op_names:
            if name in _HANDLERS and not override:
                raise ValueError(f"an op handler for {name!r} is already registered")
            _HANDLERS[name] = inst
        return handler

    return wrap


def get_op_handler(op_name: str) -> OpHandler | None:
    """Return the handler registered for ``op_name``, or None (a barrier).

    Examples
    --------
    >>> from tvm_hcprune import get_op_handler
    >>> get_op_handler("relax.nn.relu") is not None
    True
    """
    return _HANDLERS.get(op_name)


def list_op_handlers() -> list[str]:
    """Names of all ops that have a handler.

    Examples
    --------
    >>> from tvm_hcprune import list_op_handlers
    >>> "relax.nn.conv2d" in list_op_handlers()
    True
    """
    return sorted(_HANDLERS)
