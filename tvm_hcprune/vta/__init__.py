"""The VTA accelerator simulator target, written from the published design.

Its configuration (``VTAConfig``) is a hardware description and lives in
:mod:`tvm_hcprune.hardware.vta`. Modules: :mod:`.isa` (instruction codec, disassembler),
:mod:`.sim` (functional simulator and profiler), :mod:`.runtime` (command queue),
:mod:`.codegen` (conv2d/dense schedules), :mod:`.ops` (host helpers and numpy references),
:mod:`.cycles` (cycle estimate), :mod:`.reference` (published counter workloads),
:mod:`.relax` (Relax integration: int8 quantisation and offload).
"""

from tvm_hcprune.hardware.vta import DEFAULT_CONFIG, VTAConfig
from tvm_hcprune.vta.runtime import CommandQueue
from tvm_hcprune.vta.sim import DEBUG_SKIP_EXEC, Simulator, VTADeadlockError, VTASimulationError

__all__ = ["DEBUG_SKIP_EXEC", "DEFAULT_CONFIG", "CommandQueue", "Simulator", "VTAConfig",
           "VTADeadlockError", "VTASimulationError"]
