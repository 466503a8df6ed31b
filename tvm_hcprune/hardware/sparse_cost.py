"""When a block-sparse (BSR) layer beats its dense form: the default block shape of a
target and the estimate that picks a layer's format.

Both :func:`tvm_hcprune.sparsify` (which reports the format each layer will get) and the
CPU build (which converts the layers) ask :func:`choose_format`, so the report and the
build agree.

The estimate: a dense layer runs at the tuned kernels' efficiency over all ``K x N`` weights;
the BSR kernel touches only the kept blocks but gathers its inputs (a broadcast per kept
block row and tile row), which we count as :data:`BSR_RELATIVE_EFFICIENCY` of the dense
kernel's throughput. So BSR pays off below that density. Calibrated with
``benchmarks/sparse.py`` on an AMD EPYC Zen 5 (znver5, AVX-512, block 1x16), 2 threads,
M=128, on a loaded machine (ratios in one run): BSR vs our dense kernel at 40% / 30% zero
blocks was 1.22x / 1.09x for 768x3072 and 1.07x / 0.94x for 3072x768, so the crossover
lies at 60-70% kept blocks; 0.6 takes the less favourable shape. ``hc.build(mod,
sparse="measure")`` times each layer instead.
"""

from __future__ import annotations

from tvm_hcprune.hardware.profile import HardwareProfile

__all__ = ["BSR_RELATIVE_EFFICIENCY", "CUDA_BSR_RELATIVE_EFFICIENCY", "choose_format",
           "default_block"]

#: Throughput of the BSR kernel relative to the dense kernel on the same MACs (estimate).
BSR_RELATIVE_EFFICIENCY = 0.6

#: The same for the CUDA kernel (one thread per output, no shared memory or tensor cores)
#: against dlight's dense matmul: a guess, never measured (no GPU here), kept low so BSR
#: is chosen only for very sparse layers.
CUDA_BSR_RELATIVE_EFFICIENCY = 0.1


def default_block(profile: HardwareProfile) -> tuple[int, int]:
    """The block ``(bk, bn)`` of a weight ``W [K, N]`` (inputs x outputs) for ``profile``:
    one input row by a vector of outputs on CPUs (1x8 AVX2, 1x16 AVX-512, 1x4 NEON), the
    16x16 GEMM core on VTA, a 16x16 tensor-core tile on CUDA.

    Examples
    --------
    >>> from tvm_hcprune.hardware import profile_for
    >>> default_block(profile_for("vta"))
    (16, 16)
    """
    if profile.kind == "vta":
        return profile.channel_multiple, profile.channel_multiple
    if profile.kind in ("cuda", "nvptx"):
        return 16, 16
    return 1, profile.lanes("float32")


def choose_format(density: float, profile: HardwareProfile | None = None) -> tuple[str, str]:
    """``("bsr" | "dense", why)`` for a layer whose kept blocks are ``density`` of all."""
    if profile is not None and profile.kind == "vta":
        return "dense", ("VTA leaves the GEMM micro-ops of all-zero blocks out of its "
                         "instruction stream (gemm_counter shows the work saved)")
    if profile is not None and profile.kind == "cuda":
        if 0.0 < density <= CUDA_BSR_RELATIVE_EFFICIENCY:
            return "bsr", (f"{density:.0%} of the blocks kept <= "
                           f"{CUDA_BSR_RELATIVE_EFFICIENCY:.0%}: the CUDA BSR kernel is "
                           "estimated faster (matmuls; not measured on a GPU)")
        return "dense", (f"{density:.0%} of the blocks kept: dense on CUDA (BSR only at <= "
                         f"{CUDA_BSR_RELATIVE_EFFICIENCY:.0%}, estimate)")
    if profile is not None and profile.kind != "llvm":
        return "dense", f"no BSR kernel for {profile.kind} targets yet"
    if density <= 0.0:
        return "dense", "every block is zero (the layer computes its bias only)"
    if density <= BSR_RELATIVE_EFFICIENCY:
        return "bsr", (f"{density:.0%} of the blocks kept <= {BSR_RELATIVE_EFFICIENCY:.0%}: "
                       "the BSR kernel is estimated faster")
    return "dense", (f"{density:.0%} of the blocks kept > {BSR_RELATIVE_EFFICIENCY:.0%}: too "
                     "dense for the BSR kernel to win (estimate)")
