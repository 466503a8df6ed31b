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

import importlib

from tvm import relax
from tvm.relax import pipeline as relax_pipeline

from tvm_hcprune._version import __version__
from tvm_hcprune.utils.lazy import lazy_exports

# public name -> module that defines it
_EXPORTS = {
    # core
    "HCPruneError": "tvm_hcprune.errors",
    "HCPruneWarning": "tvm_hcprune.errors",
    "CollapsedModelWarning": "tvm_hcprune.errors",
    "analyze": "tvm_hcprune.analysis",
    "ChannelGraph": "tvm_hcprune.analysis",
    "ChannelGroup": "tvm_hcprune.analysis",
    "prune": "tvm_hcprune.api",
    "sparsify": "tvm_hcprune.recovery.sparse_sensitivity",
    "PruneReport": "tvm_hcprune.api",
    "PruneConfig": "tvm_hcprune.planning.config",
    "PrunePlan": "tvm_hcprune.planning.plan",
    "load_onnx": "tvm_hcprune.frontend.load",
    "load_tflite": "tvm_hcprune.frontend.load",
    "load_torch": "tvm_hcprune.frontend.pytorch",
    "register_op_handler": "tvm_hcprune.ops",
    "get_op_handler": "tvm_hcprune.ops",
    "list_op_handlers": "tvm_hcprune.ops",
    "register_criterion": "tvm_hcprune.planning.criteria",
    "get_criterion": "tvm_hcprune.planning.criteria",
    "list_criteria": "tvm_hcprune.planning.criteria",
    # hardware, schedules, compilation
    "HardwareProfile": "tvm_hcprune.hardware",
    "profile_for": "tvm_hcprune.hardware",
    "register_profile": "tvm_hcprune.hardware",
    "parse_target": "tvm_hcprune.hardware.target",
    "build": "tvm_hcprune.backend.pipeline",
    "tune": "tvm_hcprune.tuning.tune",
    "apply_database": "tvm_hcprune.backend.pipeline",
    "ScheduleDatabase": "tvm_hcprune.backend.database",
    "load_database": "tvm_hcprune.backend.database",
    # accuracy
    "calibrate": "tvm_hcprune.recovery.calibration",
    "Calibration": "tvm_hcprune.recovery.calibration",
    "reconstruct": "tvm_hcprune.recovery.reconstruct",
    "ReconstructConfig": "tvm_hcprune.recovery.reconstruct",
    "evaluate": "tvm_hcprune.recovery.evaluation",
    "EvalResult": "tvm_hcprune.recovery.evaluation",
    "finetune": "tvm_hcprune.recovery.finetune",
    "sensitivity_scan": "tvm_hcprune.recovery.sensitivity",
    "select_plan": "tvm_hcprune.recovery.sensitivity",
    # budgets and latency models
    "Latency": "tvm_hcprune.planning.budget",
    "MACs": "tvm_hcprune.planning.budget",
    "Params": "tvm_hcprune.planning.budget",
    "SparseOptions": "tvm_hcprune.planning.mixed",
    "latency_table": "tvm_hcprune.latency",
    "LatencyTable": "tvm_hcprune.latency",
    "RooflineModel": "tvm_hcprune.latency",
    "MeasuredLatency": "tvm_hcprune.latency",
}

__all__ = sorted(_EXPORTS) + ["PIPELINE_NAME", "__version__", "register_pipeline"]


__getattr__ = lazy_exports(__name__, _EXPORTS, globals())


def __dir__():
    return __all__


PIPELINE_NAME = "hcprune"


def register_pipeline() -> None:
    """Register tvm_hcprune's pipeline as ``relax.get_pipeline("hcprune")`` (idempotent).

    Called by ``import tvm_hcprune``, so ``tvm.compile(mod, target,
    relax_pipeline="hcprune")`` works right after it, and
    ``relax.get_pipeline("hcprune", budget=tvm_hcprune.MACs(fraction=0.5),
    calibration=samples)`` prunes, reconstructs and compiles in one ``tvm.compile``. Its
    options: ``budget`` (or ``ratio`` or ``plan``: what the preset's ``PruneChannels`` step
    removes), ``calibration`` (inputs the ``Reconstruct`` step re-fits on), ``preset``,
    ``target`` (of the pruning profile and latency tables; default the compile target),
    ``database``, ``rules`` and ``latency_model`` / ``reconstruct_options``. The backend
    (kernels, rules, databases) is imported when the pipeline is first asked for, like the
    export table's names, so that ``import tvm_hcprune`` costs no more than ``import tvm``.

    Examples
    --------
    >>> pipe = relax.get_pipeline("hcprune", budget=tvm_hcprune.MACs(fraction=0.5))
    ... # doctest: +SKIP
    >>> ex = tvm.compile(mod, "llvm", relax_pipeline=pipe)  # doctest: +SKIP
    """
    if PIPELINE_NAME in relax_pipeline.PIPELINE_MAP:
        return  # already registered (module reloaded)
    try:

        @relax.register_pipeline(PIPELINE_NAME)
        def _hcprune_pipeline(database=None, rules: bool = True, *, budget=None, ratio=None,
                              plan=None, calibration=None, preset=None, target=None,
                              **options):
            given = [p for p in (budget, ratio, plan) if p is not None]
            if len(given) > 1:
                errors = importlib.import_module("tvm_hcprune.errors")
                raise errors.HCPruneError("the hcprune pipeline takes one of budget=, ratio= "
                                          "and plan=")
            backend = importlib.import_module("tvm_hcprune.backend.pipeline")
            return backend.get_pipeline(target, database, rules, preset=preset,
                                        prune=given[0] if given else None,
                                        calibration=calibration, **options)

    except ValueError:  # registered concurrently
        pass

register_pipeline()
