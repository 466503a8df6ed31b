"""What each Relax op does to channel axes: the op-handler registry keyed by op name
(:mod:`.registry`), the axis descriptors (:mod:`.desc`), the built-in handlers
(:mod:`.handlers`) and where O and I live in each weight (:mod:`.weights`)."""

from tvm_hcprune.ops import handlers  # noqa: F401  (registers the built-in handlers)
from tvm_hcprune.ops.desc import AxisDesc, Seg, axis_index
from tvm_hcprune.ops.registry import (
           OpHandler,
           get_op_handler,
           list_op_handlers,
           register_op_handler,
)

__all__ = ["AxisDesc", "OpHandler", "Seg", "axis_index", "get_op_handler",
           "register_op_handler", "list_op_handlers"]
