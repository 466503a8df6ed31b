"""The backend's preset passes: the steps ``passes/*.toml`` list, registered by name.

``FoldConstant`` and ``FoldBatchNorm`` (Relax clean-up), ``PruneChannels`` (removes what the
build was asked to prune; passes the module through when nothing was asked), and the
schedule-and-lower steps that end a preset: ``CPURules`` (tvm_hcprune's blocked CPU kernels
and rules, ``llvm``), ``DLight`` (TVM's GPU pipeline with dlight rules) and ``TVMDefault``
(TVM's default pipeline for the target). Each takes the tuned ``database`` first when the
preset lists that schedule source. See :mod:`tvm_hcprune.hardware.presets`.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.backend.cpu_generic import pipeline as cpu

from tvm_hcprune.backend import database as dbm
from tvm_hcprune.backend.cpu.bsr import UseBlockSparse
from tvm_hcprune.backend.cpu.chain import ChainKernels
from tvm_hcprune.backend.cpu.fast_math import FastMath
from tvm_hcprune.backend.cpu.fuse_irb import FuseInvertedResidual
from tvm_hcprune.backend.cpu.layout import BlockChannelLayout
from tvm_hcprune.backend.cpu.pack import PackWeightsForCPU
from tvm_hcprune.backend.cpu.pad_channels import PadChannels
from tvm_hcprune.backend.cpu.rowwise import ScheduleRowwise
from tvm_hcprune.backend.cpu.rules import ApplyCPURules
from tvm_hcprune.backend.cuda_bsr import CUDA_LAYOUTS, bsr_kernel_cuda
from tvm_hcprune.backend.sparse_choice import MeasuredChoice
from tvm_hcprune.errors import HCPruneError
from tvm_hcprune.hardware import profile_for
from tvm_hcprune.hardware.presets import PresetContext, register_preset_pass
from tvm_hcprune.hardware.sparse_cost import default_block
from tvm_hcprune.planning.plan import PrunePlan
from tvm_hcprune.transform.fold_batch_norm import FoldBatchNorm
from tvm_hcprune.transform.prune_channels import PruneChannels

__all__ = ["DATABASE_HOOK", "cpu_kernel_passes", "database_pass", "fuse_passes",
           "gpu_sparse_passes", "lower_passes", "prune_step"]


def fuse_passes() -> list:
    """TIR op patterns, FoldConstant, FuseOps and FuseTIR (GPU and tuning preparation)."""
    return [
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
    ]


def cpu_kernel_passes(target, rules: bool = True, blocked_layout: bool = True,
                      sparse: bool | str = True, winograd: bool = True,
                      inverted_residual: bool = True) -> list:
    """tvm_hcprune's CPU kernels (channels padded to the block, the blocked layout,
    block-sparse matmuls and 1x1 convs,
    vectorised erf/softmax, packed weights; ``winograd=False`` keeps 3x3 convs on the direct
    kernel), then TVM's library dispatch and legalisation (which fuses): up to the fused
    PrimFuncs. ``inverted_residual`` merges each expansion 1x1 conv with the depthwise conv
    reading it (:class:`~tvm_hcprune.backend.cpu.fuse_irb.FuseInvertedResidual`), between
    FuseOps and FuseTIR."""
    pre = []
    if rules:
        prof = profile_for(target)
        lanes = prof.lanes("float32")
        if blocked_layout:
            # channel groups off the block (MobileNetV2's 24) get zero channels, so they
            # stay blocked too: its kernels' sum 2.0 -> 1.7 ms (AVX-512, 2 threads)
            pre.extend([PadChannels(lanes), BlockChannelLayout(lanes)])
        if sparse:  # block-sparse matmuls / 1x1 convs the BSR kernel runs faster
            decide = None if sparse != "measure" else MeasuredChoice(
                target, lambda m, blocked: _dense_build(m, target, blocked))
            pre.append(UseBlockSparse(default_block(prof), prof, decide))
        pre.append(FastMath())  # libm's scalar erff / expf: the slowest ops of GELU, softmax
        pre.append(PackWeightsForCPU(lanes=lanes, registers=prof.vector_registers,
                                     l2_bytes=prof.l2_bytes, winograd=winograd))
    legalize = cpu.legalize_passes(target)
    if rules and blocked_layout and inverted_residual:
        fuse_tir = next(i for i, p in enumerate(legalize) if p.info.name == "FuseTIR")
        legalize.insert(fuse_tir, FuseInvertedResidual(lanes))
    return pre + cpu.library_dispatch_passes(target) + legalize


def _dense_build(mod, target, blocked_layout: bool):
    """``mod`` compiled with the CPU kernels and rules, dense (what
    :class:`~tvm_hcprune.backend.sparse_choice.MeasuredChoice` times a BSR layer against)."""
    passes = ([relax.transform.FoldConstant(), FoldBatchNorm()]
              + cpu_kernel_passes(target, True, blocked_layout, False)
              + [ApplyCPURules(), ScheduleRowwise()] + lower_passes(target))
    return tvm.compile(mod, target, relax_pipeline=tvm.transform.Sequential(passes))


def gpu_sparse_passes(target, sparse) -> list:
    """The BSR rewrite on CUDA (matmuls; the estimate decides), else nothing."""
    if not sparse or target.kind.name != "cuda":
        return []
    prof = profile_for(target)
    return [UseBlockSparse(default_block(prof), prof, kernel=bsr_kernel_cuda,
                           layouts=CUDA_LAYOUTS)]


#: the name of :func:`database_pass`'s pass: where a preset's build applies a database
DATABASE_HOOK = "HCPruneApplyDatabase"


def database_pass(target, database) -> tvm.transform.Pass:
    """Schedule the fused PrimFuncs that ``database`` has records for (None: no-op)."""
    @tvm.transform.module_pass(opt_level=0, name=DATABASE_HOOK)
    def _db(mod, _ctx):
        if database is None:
            return mod
        return dbm.apply_database_to_fused(mod, database, target)

    return _db


def lower_passes(target, chain: bool = True) -> list:
    """TVM's CPU dataflow lowering and finalisation; on an llvm target with ``chain``,
    :class:`~tvm_hcprune.backend.cpu.chain.ChainKernels` first (consecutive parallel kernels
    in one thread-pool launch; False keeps one kernel per layer, e.g. for
    :func:`~tvm_hcprune.backend.timing.kernel_times`)."""
    first = [ChainKernels()] if chain and target.kind.name == "llvm" else []
    return first + cpu.dataflow_lower_passes(target) + cpu.finalize_passes(target)


def _need(ctx: PresetContext, step: str, ok: bool, what: str) -> None:
    if not ok:
        preset = ctx.preset
        where = f"preset {preset.name!r} ({preset.path})" if preset is not None else "the build"
        raise HCPruneError(f"{where} runs {step}, which compiles for {what}, but the target is "
                           f"{ctx.target.kind.name} ({ctx.target}); choose a preset of this "
                           "target's family (tvm_hcprune.hardware.presets.preset_for) or "
                           "another target")


def prune_step(ctx: PresetContext) -> list:
    """The passes of the ``PruneChannels`` step for ``ctx.prune`` (empty when None)."""
    what = ctx.prune
    if what is None:
        return []
    if isinstance(what, PrunePlan):
        return [PruneChannels(plan=what)]
    preset = ctx.preset
    defaults = {} if preset is None else {"criterion": preset.criterion, "align": preset.align}
    latency_model = ctx.options.get("latency_model")
    if type(what).__name__ in ("Latency", "MACs", "Params"):
        return [PruneChannels(budget=what, target=ctx.target, latency_model=latency_model,
                              **defaults)]
    if isinstance(what, float | int) and not isinstance(what, bool):
        return [PruneChannels(ratio=float(what), target=ctx.target, **defaults)]
    if isinstance(what, dict):
        return [PruneChannels(target=ctx.target, **{**defaults, **what})]
    return [PruneChannels(what, target=ctx.target)]  # a PruneConfig: used as given


@register_preset_pass("FoldConstant")
def _fold_constant(_ctx):
    return [relax.transform.FoldConstant()]


@register_preset_pass("FoldBatchNorm")
def _fold_batch_norm(_ctx):
    return [FoldBatchNorm()]


@register_preset_pass("PruneChannels")
def _prune_channels(ctx):
    return prune_step(ctx)


@register_preset_pass("CPURules", schedule="cpu-rules")
def _cpu_rules(ctx):
    tgt = ctx.target
    _need(ctx, "CPURules", tgt.kind.name == "llvm", "an llvm CPU")
    passes = cpu_kernel_passes(tgt, ctx.rules, ctx.blocked_layout, ctx.sparse)
    passes.append(database_pass(tgt, ctx.database))
    if ctx.rules:
        passes += [ApplyCPURules(strict=ctx.strict), ScheduleRowwise()]
    return passes + lower_passes(tgt, chain=ctx.options.get("chain_kernels", True))


def _default_pipeline(ctx) -> list:
    tgt = ctx.target
    passes = gpu_sparse_passes(tgt, ctx.sparse)
    if ctx.database is not None:  # the database's records on the fused functions first
        passes += [relax.transform.LegalizeOps(), *fuse_passes(), database_pass(tgt,
                                                                                ctx.database)]
    return passes + [relax.get_default_pipeline(tgt)]


@register_preset_pass("DLight", schedule="dlight")
def _dlight(ctx):
    _need(ctx, "DLight", "gpu" in [str(k) for k in ctx.target.keys], "a GPU")
    return _default_pipeline(ctx)


@register_preset_pass("TVMDefault", schedule="default")
def _tvm_default(ctx):
    return _default_pipeline(ctx)
