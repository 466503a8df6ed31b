"""The VTA accelerator simulator target, written from the published design.

Modules: :mod:`.config` (VTAConfig), :mod:`.isa` (instruction codec, disassembler),
:mod:`.sim` (functional simulator and profiler), :mod:`.runtime` (command queue),
:mod:`.codegen` (conv2d/dense schedules), :mod:`.ops` (host helpers and numpy references),
:mod:`.cycles` (cycle estimate), :mod:`.reference` (published counter workloads),
:mod:`.relax` (Relax integration: int8 quantisation and offload).
"""

from .config import DEFAULT_CONFIG, VTAConfig
from .runtime import CommandQueue
from .sim import DEBUG_SKIP_EXEC, Simulator, VTADeadlockError, VTASimulationError

__all__ = ["DEBUG_SKIP_EXEC", "DEFAULT_CONFIG", "CommandQueue", "Simulator", "VTAConfig",
           "VTADeadlockError", "VTASimulationError"]
