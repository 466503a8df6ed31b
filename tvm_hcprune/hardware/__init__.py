"""What the targets are: target parsing (:mod:`.target`), facts about this machine
(:mod:`.host`), frozen :class:`HardwareProfile` records and :func:`profile_for`
(:mod:`.profile`, :mod:`.detect`), the pass-list presets (:mod:`.presets`) and the VTA
core's configuration (:mod:`.vta`). Nothing here compiles or runs a model.

``profile_for(target)`` reads an LLVM target's ``mcpu``/``mattr`` (the host CPU when the
target names none), a CUDA target's ``arch`` or the VTA configuration, and returns the record
the pruner (default ``align`` = ``channel_multiple``) and the CPU schedules (channel block)
share.
"""

from __future__ import annotations

from tvm_hcprune.hardware.detect import profile_for, register_profile
from tvm_hcprune.hardware.host import host_physical_cores
from tvm_hcprune.hardware.profile import HardwareProfile

__all__ = ["HardwareProfile", "host_physical_cores", "profile_for", "register_profile"]
