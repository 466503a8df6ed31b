"""``profile_for(target)``: build a :class:`HardwareProfile` from a TVM target."""

from __future__ import annotations

import json
from collections.abc import Callable

from tvm.target import Target, codegen

from tvm_hcprune.errors import HCPruneError
from tvm_hcprune.hardware.host import host_cache_sizes, host_freq_ghz, host_physical_cores
from tvm_hcprune.hardware.profile import HardwareProfile
from tvm_hcprune.hardware.target import parse_target
from tvm_hcprune.hardware.vta import DEFAULT_CONFIG

# Channel multiples (the pruner's default align and the schedules' channel block):
#  * x86 AVX2: one 256-bit register holds 8 fp32 -> 8.
#  * x86 AVX-512: 16 fp32 per register -> 16.
#  * Arm NEON: 4 fp32 per 128-bit register -> 4.
#  * VTA: the GEMM core is BLOCK_IN x BLOCK_OUT = 16 x 16 -> 16.
#  * CUDA: 8. NVIDIA's Tensor Core guidance asks for channel counts that are multiples of 8
#    for fp16 (and of 4 for tf32); cuDNN/cuBLAS otherwise pad or fall back to slower
#    kernels, and TVM's dlight GEMM rules pad M/N/K to their tiles anyway, so a coarser
#    multiple (e.g. the 32-thread warp) would cost accuracy for no measured speed.
_CUDA_CHANNEL_MULTIPLE = 8

# SM counts of well-known parts (for the peak estimate only).
_CUDA_SMS = {"sm_70": 80, "sm_75": 40, "sm_80": 108, "sm_86": 84, "sm_89": 128, "sm_90": 132}


def _llvm_features(target) -> set[str]:
    try:
        return set(codegen.llvm_get_cpu_features(target))
    except Exception as err:  # noqa: BLE001 - LLVM errors come as several types
        raise HCPruneError(
            f"cannot query the CPU features of target {target}: {err}; "
            "give a valid 'mcpu' (e.g. 'znver3', 'skylake-avx512', 'cortex-a72')"
        ) from err


def _llvm_profile(target) -> HardwareProfile:
    attrs = dict(target.attrs)
    triple = str(attrs.get("mtriple", "") or codegen.llvm_get_system_triple())
    mcpu = str(attrs.get("mcpu", "") or "")
    host_triple = codegen.llvm_get_system_triple()
    is_host = triple == host_triple or not attrs.get("mtriple")
    if not mcpu and is_host and not attrs.get("mattr"):
        # the host CPU only where the target names neither a CPU nor an ISA (mattr)
        mcpu = str(codegen.llvm_get_system_cpu())
        target = Target({**_target_dict(target), "mcpu": mcpu})
    feats = _llvm_features(target)
    cores = int(attrs.get("num-cores", 0) or 0) or (host_physical_cores() if is_host else 1)
    l1, l2 = host_cache_sizes() if is_host else (32 * 1024, 512 * 1024)
    freq = host_freq_ghz() if is_host else 2.0
    arch = triple.split("-")[0]
    if arch in ("x86_64", "i686", "i386") or "avx2" in feats or "sse2" in feats:
        if "avx512f" in feats:
            isa, bits, regs, mult = "avx512", 512, 32, 16
        elif "avx2" in feats:
            isa, bits, regs, mult = "avx2", 256, 16, 8
        elif "avx" in feats:
            isa, bits, regs, mult = "avx", 256, 16, 8
        else:
            isa, bits, regs, mult = "sse", 128, 16, 4
        fma = 2 if ("fma" in feats or isa == "avx512") else 1
        name = f"x86-{isa}"
    elif arch.startswith(("aarch64", "arm64", "arm")) or "neon" in feats:
        isa, bits, regs, mult = "neon", 128, 32 if arch.startswith(("aarch64", "arm64")) else 16, 4
        fma = 2
        name = "arm-neon"
    else:
        isa, bits, regs, mult, fma = "scalar", 32, 16, 1, 1
        name = f"{arch}-scalar"
    return HardwareProfile(
        name=name,
        kind="llvm",
        isa=isa,
        vector_bits=bits,
        fma_units=fma,
        vector_registers=regs,
        channel_multiple=mult,
        l1_bytes=l1,
        l2_bytes=l2,
        cores=cores,
        freq_ghz=round(freq, 3),
        mcpu=mcpu,
        notes="peak uses the reported clock; turbo can exceed it" if is_host else "",
    )


def _target_dict(target) -> dict:
    return json.loads(str(target))


def _cuda_profile(target) -> HardwareProfile:
    attrs = dict(target.attrs)
    arch = str(attrs.get("arch", "") or "sm_80")
    smem = int(attrs.get("max_shared_memory_per_block", 49152) or 49152)
    l2 = int(attrs.get("l2_cache_size_bytes", 0) or 0) or 4 * 1024 * 1024
    return HardwareProfile(
        name=f"cuda-{arch}",
        kind="cuda",
        isa="cuda",
        vector_bits=32 * 32,
        fma_units=4,
        vector_registers=255,
        channel_multiple=_CUDA_CHANNEL_MULTIPLE,
        l1_bytes=smem,
        l2_bytes=l2,
        cores=_CUDA_SMS.get(arch, 0),
        freq_ghz=1.4,
        mcpu=arch,
        notes="channel_multiple 8: Tensor Core fp16 channel guidance; peak is a rough estimate",
    )


def _vta_profile(config=None) -> HardwareProfile:
    """Profile of a VTA core from its configuration.

    ``config`` is a :class:`tvm_hcprune.hardware.vta.VTAConfig`, a ``vta_config.json``-style
    dict (``LOG_BLOCK`` or ``LOG_BLOCK_IN``/``LOG_BLOCK_OUT`` or ``BLOCK_IN``/``BLOCK_OUT``),
    or None for tvm_hcprune's default VTA configuration (16 x 16 int8 GEMM core).
    """
    clock_mhz, inp_bytes = 100.0, 32 * 1024
    if config is None:
        config = DEFAULT_CONFIG
    if hasattr(config, "block_in"):
        block_in, block_out = int(config.block_in), int(config.block_out)
        clock_mhz = float(getattr(config, "clock_mhz", clock_mhz))
        inp_bytes = 1 << int(getattr(config, "log_inp_buff_size", 15))
    else:
        cfg = {str(k).upper(): v for k, v in dict(config).items()}
        if "LOG_BLOCK" in cfg:
            cfg.setdefault("LOG_BLOCK_IN", cfg["LOG_BLOCK"])
            cfg.setdefault("LOG_BLOCK_OUT", cfg["LOG_BLOCK"])
        block_in = int(cfg.get("BLOCK_IN", 1 << int(cfg.get("LOG_BLOCK_IN", 4))))
        block_out = int(cfg.get("BLOCK_OUT", 1 << int(cfg.get("LOG_BLOCK_OUT", 4))))
        clock_mhz = float(cfg.get("CLOCK_MHZ", clock_mhz))
        if "LOG_INP_BUFF_SIZE" in cfg:
            inp_bytes = 1 << int(cfg["LOG_INP_BUFF_SIZE"])
    return HardwareProfile(
        name="vta",
        kind="vta",
        isa="vta",
        vector_bits=block_out * 8,
        fma_units=block_in,
        vector_registers=0,
        channel_multiple=max(block_in, block_out),
        l1_bytes=inp_bytes,
        l2_bytes=0,
        cores=1,
        freq_ghz=clock_mhz / 1000.0,
        notes=f"GEMM core BLOCK_IN x BLOCK_OUT = {block_in} x {block_out}, int8",
    )


_FACTORIES: dict[str, Callable] = {}


def register_profile(key: str, override: bool = False) -> Callable:
    """Register ``factory(target) -> HardwareProfile`` for targets of a kind or key.

    :func:`profile_for` asks the registry first, by the parsed target's kind name and then
    by each of its keys, so a new accelerator or board gets its own channel multiple
    (the pruner's default ``align``) and schedule facts.

    Parameters
    ----------
    key : str
        A target kind (``"ext_dev"``) or target key (``"mynpu"`` in
        ``{"kind": "llvm", "keys": ["mynpu", "cpu"]}``).
    override : bool
        Replace an existing registration instead of raising.

    Examples
    --------
    >>> @register_profile("mynpu")  # doctest: +SKIP
    ... def mynpu(target):
    ...     return HardwareProfile(name="mynpu", kind="llvm", isa="npu", vector_bits=256,
    ...                            fma_units=1, vector_registers=32, channel_multiple=32,
    ...                            l1_bytes=65536, l2_bytes=0, cores=1, freq_ghz=1.0)
    """

    def wrap(factory: Callable) -> Callable:
        if key in _FACTORIES and not override:
            raise HCPruneError(f"a hardware profile for {key!r} is already registered; pass "
                               "override=True to replace it")
        _FACTORIES[key] = factory
        return factory

    return wrap


def profile_for(target=None, vta_config=None) -> HardwareProfile:
    """Return the :class:`HardwareProfile` of ``target``.

    Parameters
    ----------
    target : tvm.target.Target, str, dict or None
        Anything :func:`tvm_hcprune.parse_target` accepts, or ``"vta"``. ``None`` is the
        host CPU (``llvm`` with the host's ``mcpu`` and physical core count).
    vta_config : VTAConfig or dict, optional
        VTA configuration (a ``tvm_hcprune.hardware.vta.VTAConfig`` or a dict with ``LOG_BLOCK``
        ...); defaults to tvm_hcprune's default VTA configuration (16 x 16 core).

    Returns
    -------
    HardwareProfile

    Examples
    --------
    >>> tvm_hcprune.profile_for("vta").channel_multiple  # doctest: +SKIP
    16
    """
    if isinstance(target, str) and target.strip().lower() in ("vta", "ext_dev -device=vta"):
        return _vta_profile(vta_config)
    tgt = parse_target("llvm" if target is None else target)
    kind = tgt.kind.name
    keys = [str(k) for k in tgt.keys]
    for key in [kind, *keys]:
        if key in _FACTORIES:
            prof = _FACTORIES[key](tgt)
            if not isinstance(prof, HardwareProfile):
                raise HCPruneError(f"the profile registered for {key!r} returned "
                                   f"{type(prof).__name__}, not a HardwareProfile")
            return prof
    if kind == "ext_dev" or "vta" in keys:
        return _vta_profile(vta_config)
    if kind == "llvm":
        return _llvm_profile(tgt)
    if kind in ("cuda", "nvptx"):
        return _cuda_profile(tgt)
    raise HCPruneError(
        f"no hardware profile for target kind {kind!r}; supported kinds: llvm, cuda, vta"
    )
