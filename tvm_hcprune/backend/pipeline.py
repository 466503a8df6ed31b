"""tvm_hcprune's compilation pipeline and :func:`build`.

For ``llvm`` targets the pipeline is TVM's CPU pipeline with tvm_hcprune's steps added::

    FoldConstant -> FoldBatchNorm -> FoldConstant          (Relax, whole model)
    BlockChannelLayout                                     (NCHW convs -> NCHW[lanes]c, kept
                                                            between layers)
    PackWeightsForCPU                                      (conv2d / matmul -> blocked kernels,
                                                            weights packed once, here)
    TVM library dispatch + legalize + FuseOps + FuseTIR    (epilogues fuse into the kernels)
    apply_database(database)                               (hook: tuned schedules first)
    ApplyCPURules                                          (our rules on what is left)
    TVM dataflow lowering + finalisation

PrimFuncs that no database record and no rule covers keep TVM's default lowering. Other
targets (cuda, ...) get FoldBatchNorm and then TVM's default pipeline for the target (dlight
rules on GPUs), with the same database hook.

The pipeline is registered as ``relax.get_pipeline("hcprune")`` so
``tvm.compile(mod, target, relax_pipeline="hcprune")`` works too.
"""

from __future__ import annotations

import os

import tvm
from tvm import relax

from tvm_hcprune.errors import HCPruneError

PIPELINE_NAME = "hcprune"


def set_num_threads(n: int | None = None) -> int:
    """Use ``n`` threads (default: physical cores) for TVM's CPU thread pool.

    TVM reads ``TVM_NUM_THREADS`` when its thread pool starts (at the first parallel kernel
    call); without it the pool ran a single thread on the 2-core VM we measured. This sets the
    variable unless the user already has, so it takes effect when called before the first
    run. Returns the thread count requested.
    """
    from tvm_hcprune.hardware import host_physical_cores

    n = int(n or host_physical_cores())
    os.environ.setdefault("TVM_NUM_THREADS", str(n))
    return n


def apply_database(mod: tvm.IRModule, database, target) -> tvm.IRModule:
    """Hook: apply a MetaSchedule ``database`` to the fused PrimFuncs of ``mod``.

    Functions found in the database are marked ``tirx.is_scheduled`` and are not touched by
    the rules afterwards. Uses :func:`tvm_hcprune.schedule.database.apply_database` when
    that module provides it, else MetaSchedule's ``MetaScheduleApplyDatabase``.
    """
    if database is None:
        return mod
    try:
        from tvm_hcprune.schedule import database as dbmod
    except ImportError:
        dbmod = None
    fn = getattr(dbmod, "apply_database_to_fused", None) if dbmod is not None else None
    if fn is not None:
        return fn(mod, database, target)
    with target, database:
        return relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(mod)


def _cpu_passes(target, database, rules: bool, strict: bool = False,
                blocked_layout: bool = True):
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    from tvm_hcprune.hardware import profile_for
    from tvm_hcprune.schedule.cpu_rules import ApplyCPURules
    from tvm_hcprune.schedule.layout import BlockChannelLayout
    from tvm_hcprune.schedule.rewrite import PackWeightsForCPU
    from tvm_hcprune.transform.fold_batch_norm import FoldBatchNorm

    prof = profile_for(target)
    lanes = prof.lanes("float32")
    pre = [relax.transform.FoldConstant(), FoldBatchNorm(), relax.transform.FoldConstant()]
    if rules:
        if blocked_layout:
            pre.append(BlockChannelLayout(lanes))
        pre.append(
            PackWeightsForCPU(lanes=lanes, registers=prof.vector_registers,
                              l2_bytes=prof.l2_bytes)
        )

    @tvm.transform.module_pass(opt_level=0, name="HCPruneApplyDatabase")
    def _db(mod, _ctx):
        return apply_database(mod, database, target)

    post = [_db]
    if rules:
        post.append(ApplyCPURules(strict=strict))
    return (
        pre
        + cpu.library_dispatch_passes(target)
        + cpu.legalize_passes(target)
        + post
        + cpu.dataflow_lower_passes(target)
        + cpu.finalize_passes(target)
    )


def get_pipeline(
    target=None, database=None, rules: bool = True, strict: bool = False,
    blocked_layout: bool = True,
) -> tvm.transform.Pass:
    """Return tvm_hcprune's pipeline pass for ``target`` (default: the current target).

    Parameters
    ----------
    target : optional
        Anything :func:`tvm_hcprune.target.parse_target` accepts.
    database : optional
        Tuned schedules applied before the rules (anything
        :func:`tvm_hcprune.schedule.database.as_database` accepts). None applies no
        database here; :func:`build` is what picks the shipped databases by default.
    rules : bool
        Use tvm_hcprune's CPU kernels and rules (False: TVM's default lowering with BN folded).
    strict : bool
        Raise when a rule fails on one of tvm_hcprune's kernels instead of falling back to
        TVM's default (tests use this to prove the rule ran).
    blocked_layout : bool
        Keep NCHW activations channel-blocked (``NCHW{lanes}c``) between convs
        (:class:`~tvm_hcprune.schedule.layout.BlockChannelLayout`); False: every kernel
        reads and writes NCHW.
    """
    from tvm_hcprune.target import parse_target

    @tvm.transform.module_pass(opt_level=0, name="HCPrunePipeline")
    def _pipeline(mod, _ctx):
        tgt = target if target is not None else tvm.target.Target.current(allow_none=True)
        tgt = parse_target(tgt if tgt is not None else "llvm")
        with tgt:
            if tgt.kind.name == "llvm":
                seq = tvm.transform.Sequential(
                    _cpu_passes(tgt, database, rules, strict, blocked_layout))
                return seq(mod)
            from tvm_hcprune.transform.fold_batch_norm import FoldBatchNorm

            mod = tvm.transform.Sequential(
                [relax.transform.FoldConstant(), FoldBatchNorm(), relax.transform.FoldConstant()]
            )(mod)
            if database is not None:
                mod = relax.transform.LegalizeOps()(mod)
                mod = apply_database(mod, database, tgt)
            return relax.get_default_pipeline(tgt)(mod)

    return _pipeline


def build(mod: tvm.IRModule, target="llvm", database=None, rules: bool = True,
          blocked_layout: bool = True):
    """Compile ``mod`` with tvm_hcprune's pipeline; returns what :func:`tvm.compile` returns.

    Parameters
    ----------
    mod : tvm.IRModule
        A Relax module (e.g. from :func:`tvm_hcprune.load_onnx`), dense or pruned.
    target : optional
        Anything :func:`tvm_hcprune.target.parse_target` accepts; bare ``"llvm"`` is the host
        CPU with its ``mcpu`` and physical core count.
    database : None, False, "none", "shipped", path, ScheduleDatabase or MetaSchedule Database
        Tuned schedules, applied before tvm_hcprune's rules; functions without a record keep
        the rules. None (default): the databases shipped in ``schedules/`` for the target's
        family, like TVM's old TopHub logs (a record is used only for a function equal to
        its workload; loaded once per process). False or ``"none"``: no database, the rules
        only. A path (from :func:`tvm_hcprune.tune` / ``hcprune tune``) or a database
        object: those records instead of the shipped ones.
    rules : bool
        False compiles with TVM's default CPU lowering (BN still folded), for comparison;
        the shipped databases (tuned on the rules' kernels) are not applied then unless
        ``database="shipped"`` asks for them.
    blocked_layout : bool
        Activations stay channel-blocked between convs (default); False: NCHW between
        kernels, each kernel packing its own input.

    Returns
    -------
    tvm.relax.VMExecutable
        Run it with ``relax.VirtualMachine(ex, tvm.cpu())``.
    """
    from tvm_hcprune.target import parse_target

    if not isinstance(mod, tvm.IRModule):
        raise HCPruneError(
            f"build expects a tvm.IRModule, got {type(mod).__name__}; import the model first "
            "(tvm_hcprune.load_onnx)"
        )
    tgt = parse_target(target)
    if tgt.kind.name == "llvm":
        set_num_threads(int(dict(tgt.attrs).get("num-cores", 0) or 0) or None)
    db = _build_database(database, tgt, rules)
    return tvm.compile(mod, tgt, relax_pipeline=get_pipeline(tgt, db, rules,
                                                             blocked_layout=blocked_layout))


def _build_database(database, target, rules: bool):
    """:func:`build`'s ``database=`` resolved up front (a ScheduleDatabase or None): a bad
    file or a database for another target fails before compiling, and a target without
    shipped records gets exactly the pipeline it gets without a database."""
    from tvm_hcprune.schedule.database import as_database

    if database is None:
        database = "shipped" if rules else False
    return as_database(database, target)


def _register() -> None:
    from tvm.relax import pipeline as relax_pipeline

    if PIPELINE_NAME in relax_pipeline.PIPELINE_MAP:
        return  # already registered (module reloaded)
    try:

        @relax.register_pipeline(PIPELINE_NAME)
        def _hcprune_pipeline(database=None, rules: bool = True):
            return get_pipeline(None, database, rules)

    except ValueError:  # registered concurrently
        pass


_register()


def scheduled_kernels(mod: tvm.IRModule, target="llvm", strict: bool = True,
                      blocked_layout: bool = True) -> dict:
    """Lower ``mod`` up to (and including) tvm_hcprune's CPU rules and return its kernels.

    For inspection and tests: ``{name: PrimFunc}`` of every PrimFunc that holds one of
    tvm_hcprune's blocked kernels (scheduled TIR, before TVM's final lowering).
    """
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    from tvm_hcprune.target import parse_target

    tgt = parse_target(target)
    passes = _cpu_passes(tgt, None, True, strict, blocked_layout)
    n_pre = len(passes) - len(cpu.dataflow_lower_passes(tgt)) - len(cpu.finalize_passes(tgt))
    with tgt:
        lowered = tvm.transform.Sequential(passes[:n_pre])(mod)
    return {
        gv.name_hint: f
        for gv, f in lowered.functions_items()
        if isinstance(f, tvm.tirx.PrimFunc) and "hcp_" in gv.name_hint
    }
