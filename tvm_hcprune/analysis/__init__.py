"""Channel dependency analysis: which conv/matmul channel axes are coupled, and which are not.

Reads a Relax module and never changes it. :func:`analyze` walks ``main`` with the op
handlers of :mod:`tvm_hcprune.ops` and returns a :class:`ChannelGraph` (groups of coupled
channel axes, frozen groups with the op and reason, MACs and parameter counts);
:func:`check_plan` and :func:`kept_lookup` read a :class:`~tvm_hcprune.planning.plan.PrunePlan`
against it.
"""

from tvm_hcprune.analysis.graph import (
    ChannelGraph,
    ChannelGroup,
    FrozenRecord,
    Member,
    analyze,
    check_plan,
    kept_lookup,
)

__all__ = ["ChannelGraph", "ChannelGroup", "FrozenRecord", "Member", "analyze", "check_plan",
           "kept_lookup"]
