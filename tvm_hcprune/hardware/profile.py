"""Frozen hardware records: what a schedule and the pruner need to know about a device."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from tvm_hcprune.errors import HCPruneError

_DTYPE_BITS = {"float32": 32, "float16": 16, "bfloat16": 16, "int8": 8, "uint8": 8, "int32": 32}


@dataclass(frozen=True)
class HardwareProfile:
    """What tvm_hcprune assumes about one device.

    Parameters
    ----------
    name : str
        Short name, e.g. ``"x86-avx2"``, ``"cuda-sm_80"``, ``"vta"``.
    kind : str
        Target kind family: ``"llvm"``, ``"cuda"`` or ``"vta"``.
    isa : str
        Vector ISA the schedules use: ``"avx512"``, ``"avx2"``, ``"sse"``, ``"neon"``,
        ``"scalar"``, ``"cuda"`` or ``"vta"``.
    vector_bits : int
        Width of one SIMD register in bits (CUDA: one warp-wide access, 32 x 32 bit).
    fma_units : int
        Fused multiply-add pipes per core (vector instructions per cycle).
    vector_registers : int
        Architectural vector registers (bounds the register tile of a schedule).
    channel_multiple : int
        Channel count the pruner rounds to (its default ``align``) and the channel block the
        schedules vectorise over, so kept channels need no remainder loops.
    l1_bytes, l2_bytes : int
        Per-core data cache sizes (CUDA: shared memory per block and L2).
    cores : int
        Physical cores (CUDA: streaming multiprocessors when known, else 0).
    freq_ghz : float
        Sustained clock used for the peak estimate (an assumption, not a measurement).
    mcpu : str
        The LLVM CPU name (``""`` when not applicable).

    Examples
    --------
    >>> prof = tvm_hcprune.profile_for({"kind": "llvm", "mcpu": "znver3"})  # doctest: +SKIP
    >>> prof.name, prof.channel_multiple, prof.lanes("float32")  # doctest: +SKIP
    ('x86-avx2', 8, 8)
    """

    name: str
    kind: str
    isa: str
    vector_bits: int
    fma_units: int
    vector_registers: int
    channel_multiple: int
    l1_bytes: int
    l2_bytes: int
    cores: int
    freq_ghz: float
    mcpu: str = ""
    notes: str = field(default="", compare=False)

    def lanes(self, dtype: str = "float32") -> int:
        """SIMD lanes of one vector register for ``dtype``."""
        bits = _DTYPE_BITS.get(str(dtype))
        if bits is None:
            raise HCPruneError(
                f"unknown dtype {dtype!r} for a lane count; use one of {sorted(_DTYPE_BITS)}"
            )
        return max(1, self.vector_bits // bits)

    def peak_gflops(self, dtype: str = "float32") -> float:
        """Peak multiply-add throughput in GFLOP/s (2 flops per FMA lane), all cores."""
        return 2.0 * self.lanes(dtype) * self.fma_units * self.cores * self.freq_ghz

    def to_dict(self) -> dict:
        """Plain-dict form (JSON-friendly)."""
        return asdict(self)
