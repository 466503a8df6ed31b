"""Block-sparse (BSR) matmul kernel for CUDA targets.

``y [m, n] = x [m, k] @ BSR(data, indices, indptr)`` with the arrays of
:func:`tvm_hcprune.backend.cpu.bsr.to_bsr`: a thread block per (output block, tile of rows),
``bn x tile`` threads, each thread one output, accumulating over its block row's kept blocks
(a data-dependent loop over ``indptr``) in a register. Written as scheduled TIR (thread
bindings, ``tirx.is_scheduled``), so dlight leaves it alone; :class:`~tvm_hcprune.backend.
cpu.bsr.UseBlockSparse` calls it from Relax for matmuls on cuda targets (``kernel=``). Only
the row layout (matmuls) has a CUDA kernel; 1x1 convs stay dense there.
"""

from __future__ import annotations

import tvm
from tvm.script import tirx as T

__all__ = ["CUDA_LAYOUTS", "bsr_kernel_cuda"]

#: The layouts :func:`bsr_kernel_cuda` implements (see :func:`~tvm_hcprune.backend.cpu.bsr.
#: bsr_kernel`).
CUDA_LAYOUTS = ("rows",)


def bsr_kernel_cuda(m: int, k: int, n: int, nnz: int, bk: int, bn: int,
                    tile: int | None = None, layout: str = "rows", batch: int = 1,
                    chan_block: int = 1) -> tvm.tirx.PrimFunc:
    """The CUDA TIR kernel (same arguments as the CPU :func:`~tvm_hcprune.backend.cpu.bsr.
    bsr_kernel`; ``tile`` rows per thread block, default ``1024 // bn`` capped at 16).

    Examples
    --------
    >>> f = bsr_kernel_cuda(128, 384, 1536, 600, 16, 16)
    >>> f.attrs["tirx.is_scheduled"]
    True
    """
    if layout not in CUDA_LAYOUTS:
        raise ValueError(f"no CUDA BSR kernel for layout {layout!r} (only {CUDA_LAYOUTS})")
    if bn > 1024:
        raise ValueError(f"block width {bn} exceeds 1024 threads")
    tile = int(tile or max(1, min(16, 1024 // bn)))
    tile = max(1, min(tile, 1024 // bn))
    nb = n // bn
    nt = -(-m // tile)

    @T.prim_func
    def bsr_matmul_cuda(x: T.Buffer((m, k), "float32"),
                        data: T.Buffer((nnz, bk, bn), "float32"),
                        indices: T.Buffer((nnz,), "int32"),
                        indptr: T.Buffer((nb + 1,), "int32"),
                        y: T.Buffer((m, n), "float32")):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        bx = T.launch_thread("blockIdx.x", nb)
        by = T.launch_thread("blockIdx.y", nt)
        tx = T.launch_thread("threadIdx.x", bn)
        ty = T.launch_thread("threadIdx.y", tile)
        acc = T.alloc_buffer((1,), "float32", scope="local")
        if by * tile + ty < m:
            acc[0] = T.float32(0)
            for e in range(indptr[bx + 1] - indptr[bx]):
                for kk in range(bk):
                    acc[0] = acc[0] + x[by * tile + ty, indices[indptr[bx] + e] * bk + kk] * (
                        data[indptr[bx] + e, kk, tx])
            y[by * tile + ty, bx * bn + tx] = acc[0]

    return bsr_matmul_cuda
