"""tvm_hcprune: hardware co-pruning for Apache TVM.

The public API is imported lazily so that ``import tvm_hcprune`` stays cheap (TVM itself
takes over a second to import, and some of its submodules far longer).

Main entry points
-----------------
analyze(mod) -> ChannelGraph
    Dependency analysis of the prunable channels of a Relax module.
prune(mod, ratio=..., criterion=..., ...) -> (mod, PruneReport)
    Score, plan and physically remove channels.
load_onnx(path, shape_dict=None) -> IRModule
    Import an ONNX file with static shapes.
build(mod, target, database=None)
    Compile with tvm_hcprune's pipeline (schedule rules, databases).
"""

from __future__ import annotations

from .utils.lazy import lazy_exports

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    # core
    "HCPruneError": "tvm_hcprune.errors",
    "analyze": "tvm_hcprune.analysis",
    "ChannelGraph": "tvm_hcprune.analysis",
    "ChannelGroup": "tvm_hcprune.analysis",
    "prune": "tvm_hcprune.api",
    "PruneReport": "tvm_hcprune.api",
    "PruneConfig": "tvm_hcprune.config",
    "PrunePlan": "tvm_hcprune.plan",
    "load_onnx": "tvm_hcprune.frontend",
    "load_tflite": "tvm_hcprune.frontend",
    "register_op_handler": "tvm_hcprune.ops",
    "get_op_handler": "tvm_hcprune.ops",
    "register_criterion": "tvm_hcprune.criteria",
    "get_criterion": "tvm_hcprune.criteria",
    "list_criteria": "tvm_hcprune.criteria",
    # hardware, schedules, compilation
    "HardwareProfile": "tvm_hcprune.hardware",
    "profile_for": "tvm_hcprune.hardware",
    "parse_target": "tvm_hcprune.target",
    "build": "tvm_hcprune.pipeline",
    "tune": "tvm_hcprune.schedule.tune",
    "apply_database": "tvm_hcprune.schedule.database",
    # accuracy
    "calibrate": "tvm_hcprune.calibration",
    "evaluate": "tvm_hcprune.evaluation",
    "finetune": "tvm_hcprune.finetune",
    "sensitivity_scan": "tvm_hcprune.sensitivity",
    "select_plan": "tvm_hcprune.sensitivity",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


__getattr__ = lazy_exports(__name__, _EXPORTS, globals())


def __dir__():
    return __all__


# ``tvm.compile(mod, target, relax_pipeline="hcprune")`` must work right after
# ``import tvm_hcprune``: register the named pipeline now (this imports TVM itself,
# not its slow submodules).
from . import pipeline as _pipeline  # noqa: E402,F401
