"""Op handler registry (keyed by Relax op name) and the built-in handlers."""

from . import handlers  # noqa: F401  (registers the built-in handlers)
from .desc import AxisDesc, Seg, axis_index
from .registry import OpHandler, get_op_handler, register_op_handler, registered_ops

__all__ = ["AxisDesc", "OpHandler", "Seg", "axis_index", "get_op_handler",
           "register_op_handler", "registered_ops"]
