"""tvm_hcprune's compilation pipeline and :func:`build`.

The pipeline runs a preset's steps (``passes/*.toml``, the registry in
:mod:`tvm_hcprune.hardware.presets`, the backend's steps in :mod:`.steps`): the named
preset, else the shipped one of the target's family. For ``llvm`` targets the shipped
presets' steps make TVM's CPU pipeline with tvm_hcprune's steps added::

    FoldConstant -> FoldBatchNorm -> FoldConstant          (Relax, whole model)
    BlockChannelLayout                                     (NCHW convs -> NCHW[lanes]c, kept
                                                            between layers)
    UseBlockSparse                                         (block-sparse matmuls, 1x1 convs
                                                            -> BSR kernels where they pay)
    FastMath                                               (erf, softmax: vectorised)
    PackWeightsForCPU                                      (conv2d / matmul -> blocked kernels,
                                                            weights packed once, here)
    TVM library dispatch + legalize + FuseOps + FuseTIR    (epilogues fuse into the kernels)
        -- prepare_passes: what prepare() returns, the functions tune() sees --
    database hook (apply_database_to_fused)                (tuned schedules first)
    ApplyCPURules                                          (our rules on what is left)
    ScheduleRowwise                                        (the rest: parallel rows)
        -- schedule_passes --
    TVM dataflow lowering + finalisation                   (lower_passes)

PrimFuncs that no database record and no rule covers keep TVM's default lowering. Other
targets (cuda, ...) get FoldBatchNorm and then TVM's default pipeline for the target (dlight
rules on GPUs), with the same database hook.

``import tvm_hcprune`` registers the pipeline as ``relax.get_pipeline("hcprune")`` (see
:func:`tvm_hcprune.register_pipeline`), so ``tvm.compile(mod, target,
relax_pipeline="hcprune")`` works too.
"""

from __future__ import annotations

import os

import tvm
from tvm import relax

from tvm_hcprune.backend import database as dbm
from tvm_hcprune.backend.cpu.rowwise import ScheduleRowwise
from tvm_hcprune.backend.cpu.rules import ApplyCPURules
from tvm_hcprune.backend.steps import (
    DATABASE_HOOK,
    cpu_kernel_passes,
    database_pass,
    fuse_passes,
    gpu_sparse_passes,
    lower_passes,
)
from tvm_hcprune.errors import HCPruneError
from tvm_hcprune.hardware import host_physical_cores
from tvm_hcprune.hardware.presets import (
    Preset,
    PresetContext,
    get_preset_pass,
    load_preset,
    preset_for,
)
from tvm_hcprune.hardware.target import parse_target
from tvm_hcprune.planning.criteria import get_criterion
from tvm_hcprune.transform.fold_batch_norm import FoldBatchNorm

PIPELINE_NAME = "hcprune"


def set_num_threads(n: int | None = None) -> int:
    """Use ``n`` threads (default: physical cores) for TVM's CPU thread pool.

    TVM reads ``TVM_NUM_THREADS`` when its thread pool starts (at the first parallel kernel
    call); without it the pool ran a single thread on the 2-core VM we measured. This sets the
    variable unless the user already has, so it takes effect when called before the first
    run. Returns the thread count requested.
    """
    n = int(n or host_physical_cores())
    os.environ.setdefault("TVM_NUM_THREADS", str(n))
    return n


def _fold_passes() -> list:
    return [relax.transform.FoldConstant(), FoldBatchNorm(), relax.transform.FoldConstant()]


def prepare_passes(target, rules: bool = True, blocked_layout: bool = True,
                   sparse: bool | str = True, winograd: bool = True,
                   inverted_residual: bool = True) -> list:
    """Phase 1 of the pipeline: up to the fused PrimFuncs that schedules apply to.

    CPU: BatchNorm folded, the blocked layout and packed kernels (``rules``), TVM's library
    dispatch, legalisation and FuseOps/FuseTIR. Other targets: BatchNorm folded, legalised
    and fused the way :func:`tvm_hcprune.tune` sees them. ``winograd=False`` keeps every 3x3
    conv on the direct kernel (for comparisons, ``benchmarks/winograd.py``);
    ``inverted_residual=False`` keeps each expansion 1x1 conv and the depthwise conv reading
    it as two kernels (:class:`~tvm_hcprune.backend.cpu.fuse_irb.FuseInvertedResidual`).
    """
    if target.kind.name != "llvm":
        return [*_fold_passes(), *gpu_sparse_passes(target, sparse),
                relax.transform.LegalizeOps(), *fuse_passes()]
    return _fold_passes() + cpu_kernel_passes(target, rules, blocked_layout, sparse, winograd,
                                              inverted_residual)


def schedule_passes(target, database, rules: bool = True, strict: bool = False) -> list:
    """Phase 2: the database's records first (:func:`~tvm_hcprune.backend.database.
    apply_database_to_fused`), then tvm_hcprune's CPU rules on what is left."""
    passes = [database_pass(target, database)]
    if rules and target.kind.name == "llvm":
        passes += [ApplyCPURules(strict=strict), ScheduleRowwise()]
    return passes


def prepare(mod: tvm.IRModule, target, rules: bool = True) -> tvm.IRModule:
    """The fused module exactly as the pipeline hands it to the database hook.

    Runs :func:`prepare_passes` (BatchNorm folding, the CPU kernels, legalisation,
    FuseOps/FuseTIR), so :func:`tvm_hcprune.tune` extracts the same PrimFuncs that
    :func:`build` later looks up. The result carries the ``hcprune.schedule_prepared``
    module attribute; a module that already does is returned as is.
    """
    target = dbm.resolve_target(target)
    if dbm.is_prepared(mod):
        return mod
    with target:
        out = tvm.transform.Sequential(prepare_passes(target, rules))(mod)
    return out.with_attr(dbm.PREPARED_ATTR, True)


def preset_prepare(mod: tvm.IRModule, target, preset=None) -> tvm.IRModule:
    """The module exactly as ``preset``'s build hands it to the tuning-database hook.

    Runs the steps of ``preset`` (a name, a TOML path or a :class:`Preset`; default: the
    preset of ``target``'s family, what :func:`build` runs) up to the pass that applies a
    database, so :func:`tvm_hcprune.tune` extracts the PrimFuncs that
    ``build(mod, target, preset=preset, database=...)`` later looks up: a preset without
    ``FoldBatchNorm``, say, is tuned on its unfolded functions. For the shipped presets of
    ``llvm`` and GPU targets this is :func:`prepare`'s module.

    Raises
    ------
    HCPruneError
        The preset has no step that applies a database (e.g. ``VTAQuantize``).

    Examples
    --------
    >>> fused = preset_prepare(mod, "llvm", preset="my_cpu.toml")  # doctest: +SKIP
    """
    target = dbm.resolve_target(target)
    if dbm.is_prepared(mod):
        return mod
    p = resolve_preset(preset, target)
    # a database of some kind makes every schedule step insert its hook; nothing is applied
    ctx = PresetContext(target, p, database=dbm.new_database(target))
    passes, names = [], []
    for step in p.passes:
        if get_preset_pass(step).schedule not in (None, "cpu-rules", "dlight", "default"):
            break  # e.g. VTAQuantize: offloads, applies no database
        passes += get_preset_pass(step).factory(ctx)
        names = [ps.info.name for ps in passes]
        if DATABASE_HOOK in names:
            break
    if DATABASE_HOOK not in names:
        raise HCPruneError(
            f"preset {p.name!r} ({p.path}) has no step that applies a tuning database (its "
            f"passes: {', '.join(p.passes)}): there is nothing to tune; use a preset ending "
            "in CPURules, DLight or TVMDefault")
    with target:
        out = tvm.transform.Sequential(passes[:names.index(DATABASE_HOOK)])(mod)
    return out.with_attr(dbm.PREPARED_ATTR, True)


def apply_database(mod: tvm.IRModule, target, database="shipped") -> tvm.IRModule:
    """Schedule the PrimFuncs of ``mod`` that ``database`` has records for.

    Parameters
    ----------
    mod : tvm.IRModule
        A Relax model; it is prepared with :func:`prepare` first (a module that already
        was is used as is).
    target : Target, dict or str
    database : path, ScheduleDatabase, MetaSchedule Database, ``"shipped"`` or None
        ``"shipped"`` (default) uses the databases in ``schedules/`` for the target's family;
        None applies nothing (the module is only prepared).

    Returns
    -------
    tvm.IRModule
        The fused module; PrimFuncs with a record carry the tuned schedule and the
        ``tirx.is_scheduled`` attribute, the others are left for the schedule rules
        (:func:`build` with ``database=`` does all of this and compiles).

    Raises
    ------
    HCPruneError
        A corrupt database or one tuned for another target.

    Examples
    --------
    >>> fused = tvm_hcprune.apply_database(mod, "llvm", "db.json")  # doctest: +SKIP
    """
    target = dbm.resolve_target(target)
    db = dbm.as_database(database, target)
    mod = prepare(mod, target)
    return dbm.apply_database_to_fused(mod, db, target)


def cpu_passes(target, database, rules: bool, strict: bool = False,
               blocked_layout: bool = True, sparse: bool | str = True) -> list:
    """The whole CPU pipeline as a pass list (the three phases in order)."""
    return (prepare_passes(target, rules, blocked_layout, sparse)
            + schedule_passes(target, database, rules, strict)
            + lower_passes(target))


def resolve_preset(preset, target) -> Preset:
    """``preset`` loaded (a name, a TOML path or a :class:`Preset`), or the preset of
    ``target``'s family when None; its criterion is checked against the registry.

    Examples
    --------
    >>> resolve_preset(None, "llvm").passes[-1]  # doctest: +SKIP
    'CPURules'
    """
    p = preset_for(target) if preset is None else load_preset(preset)
    try:
        get_criterion(p.criterion)
    except HCPruneError as err:
        raise HCPruneError(f"preset file {p.path}: key 'criterion': {err}") from None
    return p


def preset_passes(ctx: PresetContext) -> list:
    """The passes of ``ctx.preset``'s steps, in the preset's order."""
    out = []
    for name in ctx.preset.passes:
        out += get_preset_pass(name).factory(ctx)
    return out


def host_compiled(preset: Preset) -> bool:
    """Whether ``preset`` ends in a module compiled for the host CPU (the VTA offload)."""
    return any(get_preset_pass(n).host_compiled for n in preset.passes)


def get_pipeline(
    target=None, database=None, rules: bool = True, strict: bool = False,
    blocked_layout: bool = True, sparse: bool | str = True, *, preset=None, prune=None,
    calibration=None, **options,
) -> tvm.transform.Pass:
    """Return tvm_hcprune's pipeline pass for ``target`` (default: the current target).

    The pass runs the steps of a preset (``passes/*.toml``, see
    :mod:`tvm_hcprune.hardware.presets`): by default the preset of the target's family,
    e.g. ``FoldConstant, FoldBatchNorm, PruneChannels, Reconstruct, FoldConstant, CPURules``
    on an AVX-512 CPU.

    Parameters
    ----------
    target : optional
        Anything :func:`tvm_hcprune.parse_target` accepts.
    database : optional
        Tuned schedules applied before the rules (anything
        :func:`tvm_hcprune.backend.database.as_database` accepts). None applies no
        database here; :func:`build` is what picks the shipped databases by default.
    rules : bool
        Use tvm_hcprune's CPU kernels and rules (False: TVM's default lowering with BN folded).
    strict : bool
        Raise when a rule fails on one of tvm_hcprune's kernels instead of falling back to
        TVM's default (tests use this to prove the rule ran).
    blocked_layout : bool
        Keep NCHW activations channel-blocked (``NCHW{lanes}c``) between convs
        (:class:`~tvm_hcprune.backend.cpu.layout.BlockChannelLayout`); False: every kernel
        reads and writes NCHW.
    sparse : bool or "measure"
        Run block-sparse matmuls and 1x1 convs (zero weight blocks, e.g. from
        :func:`tvm_hcprune.sparsify`) on the BSR kernel where it is estimated faster
        (:mod:`.cpu.bsr`; on CUDA :mod:`.cuda_bsr`, matmuls); ``"measure"``: where it
        measured faster (CPU); False: dense.
    preset : str, path or Preset, optional
        The preset whose steps run (default: the target family's).
    prune : optional
        What the ``PruneChannels`` step removes: a ratio, a ``PruneConfig``/dict, a budget
        (``Latency``, ``MACs``, ``Params``) or a ``PrunePlan``; None prunes nothing.
    calibration : optional
        Calibration inputs (array, Dataset) or a ``Calibration``: the ``Reconstruct`` step
        re-fits the pruned layers on them; the ``VTAQuantize`` step quantises on them.
    **options
        Per-step options: ``latency_model`` (Latency budgets), ``reconstruct_options``,
        ``chain_kernels`` (``CPURules``; default True: consecutive small kernels run in one
        thread-pool launch, :class:`~tvm_hcprune.backend.cpu.chain.ChainKernels`; False
        keeps one kernel per layer, e.g. for per-kernel profiling).

    Examples
    --------
    >>> ex = tvm.compile(mod, "llvm", relax_pipeline=get_pipeline(prune=0.5))  # doctest: +SKIP
    """
    @tvm.transform.module_pass(opt_level=0, name="HCPrunePipeline")
    def _pipeline(mod, _ctx):
        tgt = target if target is not None else tvm.target.Target.current(allow_none=True)
        tgt = parse_target(tgt if tgt is not None else "llvm")
        p = resolve_preset(preset, tgt)
        ctx = PresetContext(tgt, p, database, rules, strict, blocked_layout, sparse, prune,
                            calibration, dict(options))
        current = tvm.target.Target.current(allow_none=True)
        with current if current is not None and host_compiled(p) else tgt:
            return tvm.transform.Sequential(preset_passes(ctx))(mod)

    return _pipeline


def build(mod: tvm.IRModule, target=None, database=None, rules: bool = True,
          blocked_layout: bool = True, sparse: bool | str = True, *, preset=None, prune=None,
          calibration=None, **options):
    """Compile ``mod`` with tvm_hcprune's pipeline; returns what :func:`tvm.compile` returns.

    The pipeline is a preset's list of steps (``passes/*.toml``): the named ``preset``, else
    the shipped preset of the target's family (:func:`~tvm_hcprune.hardware.presets.
    preset_for`).

    Parameters
    ----------
    mod : tvm.IRModule
        A Relax module (e.g. from :func:`tvm_hcprune.load_onnx`), dense or pruned.
    target : optional
        Anything :func:`tvm_hcprune.parse_target` accepts; bare ``"llvm"`` is the host
        CPU with its ``mcpu`` and physical core count. Default: the named preset's target,
        else the host CPU.
    database : None, False, "none", "shipped", path, ScheduleDatabase or MetaSchedule Database
        Tuned schedules, applied before tvm_hcprune's rules; functions without a record keep
        the rules. None (default): the databases shipped in ``schedules/`` for the target's
        family, like TVM's old TopHub logs (a record is used only for a function equal to
        its workload; loaded once per process), when the preset's ``schedule`` lists
        ``"database"``. False or ``"none"``: no database, the rules only. A path (from
        :func:`tvm_hcprune.tune` / ``hcprune tune``) or a database object: those records
        instead of the shipped ones.
    rules : bool
        False compiles with TVM's default CPU lowering (BN still folded), for comparison;
        the shipped databases (tuned on the rules' kernels) are not applied then unless
        ``database="shipped"`` asks for them.
    blocked_layout : bool
        Activations stay channel-blocked between convs (default); False: NCHW between
        kernels, each kernel packing its own input.
    sparse : bool or "measure"
        Block-sparse matmuls and 1x1 convs run on the BSR kernel where it is estimated
        faster (default); ``"measure"`` times each such layer's BSR and dense kernels on
        this machine and keeps the faster (:class:`~tvm_hcprune.backend.sparse_choice.
        MeasuredChoice`); False forces the dense kernels.
    preset : str, path or Preset, optional
        A shipped preset name (``"llvm-avx2"``, ``"cuda"``, ``"vta"``...) or the path of
        your own TOML file.
    prune, calibration, **options
        What the preset's ``PruneChannels``, ``Reconstruct``, ``VTAQuantize`` and
        ``CPURules`` (``chain_kernels``) steps use (see :func:`get_pipeline`). The ``vta``
        preset needs ``calibration`` (int8 scales); its executable runs the offloaded layers
        on the VTA simulator in this process.

    Returns
    -------
    tvm.relax.VMExecutable
        Run it with ``relax.VirtualMachine(ex, tvm.cpu())``.

    Examples
    --------
    >>> ex = tvm_hcprune.build(pruned, {"kind": "llvm", "mcpu": "znver3"})  # doctest: +SKIP
    >>> ex = tvm_hcprune.build(mod, preset="my_cpu.toml", prune=0.3)  # doctest: +SKIP
    >>> vm = tvm.relax.VirtualMachine(ex, tvm.cpu())  # doctest: +SKIP
    """
    if not isinstance(mod, tvm.IRModule):
        raise HCPruneError(
            f"build expects a tvm.IRModule, got {type(mod).__name__}; import the model first "
            "(tvm_hcprune.load_onnx)"
        )
    named = load_preset(preset) if preset is not None else None
    if target is None:
        target = named.target if named is not None else "llvm"
    tgt = parse_target(target)
    p = resolve_preset(named, tgt)
    compile_tgt = parse_target("llvm") if host_compiled(p) else tgt
    if compile_tgt.kind.name == "llvm":
        set_num_threads(int(dict(compile_tgt.attrs).get("num-cores", 0) or 0) or None)
    if database is None and "database" not in p.schedule:
        database = False
    db = _build_database(database, tgt, rules) if tgt.kind.name != "ext_dev" else None
    pipe = get_pipeline(tgt, db, rules, blocked_layout=blocked_layout, sparse=sparse,
                        preset=p, prune=prune, calibration=calibration, **options)
    return tvm.compile(mod, compile_tgt, relax_pipeline=pipe)


def _build_database(database, target, rules: bool):
    """:func:`build`'s ``database=`` resolved up front (a ScheduleDatabase or None): a bad
    file or a database for another target fails before compiling, and a target without
    shipped records gets exactly the pipeline it gets without a database."""
    if database is None:
        database = "shipped" if rules else False
    return dbm.as_database(database, target)


def scheduled_kernels(mod: tvm.IRModule, target="llvm", strict: bool = True,
                      blocked_layout: bool = True) -> dict:
    """Lower ``mod`` up to (and including) tvm_hcprune's CPU rules and return its kernels.

    For inspection and tests: ``{name: PrimFunc}`` of every PrimFunc that holds one of
    tvm_hcprune's blocked kernels (scheduled TIR, before TVM's final lowering).
    """
    tgt = parse_target(target)
    passes = prepare_passes(tgt, True, blocked_layout) + schedule_passes(tgt, None, True, strict)
    with tgt:
        lowered = tvm.transform.Sequential(passes)(mod)
    return {
        gv.name_hint: f
        for gv, f in lowered.functions_items()
        if isinstance(f, tvm.tirx.PrimFunc) and "hcp_" in gv.name_hint
    }
