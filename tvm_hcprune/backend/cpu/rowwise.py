"""TIR pass :class:`ScheduleRowwise`: parallel rows for the functions no rule schedules.

After :class:`~tvm_hcprune.backend.cpu.rules.ApplyCPURules`, a model's remaining functions
(softmax, layer norm, elementwise chains that fused with no kernel) keep TVM's default
lowering: one serial loop nest, one thread. On a BERT-style encoder the attention softmax
alone then took as long as all its query/key/value projections. This pass gives each such
function the schedule of a row-wise op: the last block's loops but the innermost are fused
into one parallel loop, every earlier block (the row's max, exponentials, sums, mean,
variance...) is computed at that loop, per row, and the innermost loop of each
non-reduction block is vectorised. A function this does not fit (the blocks' rows differ,
a single loop, opaque blocks) keeps TVM's default; results are unchanged either way.
"""

from __future__ import annotations

import tvm
from tvm import s_tir, tirx

from tvm_hcprune.utils.relax import schedule_unscheduled

__all__ = ["ScheduleRowwise", "schedule_rowwise"]

_ERRORS = (RuntimeError, ValueError, TypeError, AttributeError, IndexError, KeyError)


def schedule_rowwise(func: tirx.PrimFunc, min_rows: int = 2) -> tirx.PrimFunc | None:
    """``func`` with parallel rows (see the module doc), or None where it does not fit."""
    sch = s_tir.Schedule(tvm.IRModule({"main": func}))
    try:
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
        if not blocks:
            return None
        loops = sch.get_loops(blocks[-1])
        if len(loops) < 2:
            return None
        rows = sch.fuse(*loops[:-1])
        if int(sch.get(rows).extent) < min_rows:
            return None
        sch.parallel(rows)
        for b in reversed(blocks[:-1]):
            sch.compute_at(b, rows, preserve_unit_loops=False)
        for b in blocks:
            _vectorize_inner(sch, b)
    except _ERRORS:
        return None
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


def _vectorize_inner(sch, block) -> None:
    """Vectorise the innermost loop of a block without reduction axes (once)."""
    stmt = sch.get(block)
    if any(iv.iter_type != tirx.IterVar.DataPar for iv in stmt.iter_vars):
        return
    loops = sch.get_loops(block)
    if not loops or sch.get(loops[-1]).kind != tirx.ForKind.SERIAL:
        return
    if int(sch.get(loops[-1]).extent) > 1:
        try:
            sch.vectorize(loops[-1])
        except _ERRORS:
            pass


@tvm.transform.module_pass(opt_level=0, name="ScheduleRowwise")
class ScheduleRowwise:
    """Row-parallel schedules for the unscheduled PrimFuncs (see the module doc).

    Parameters
    ----------
    min_rows : int
        Functions with fewer rows than this keep TVM's default.

    Examples
    --------
    >>> mod = ScheduleRowwise()(fused_mod)  # doctest: +SKIP
    """

    def __init__(self, min_rows: int = 2):
        self.min_rows = int(min_rows)

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return schedule_unscheduled(mod, lambda func: schedule_rowwise(func, self.min_rows))
