"""Block-sparse (BSR) matmul on the CPU: the kernel and the Relax pass that uses it.

``UseBlockSparse`` rewrites ``matmul(x, W)`` whose constant ``W [K, N]`` has zero
``bk x bn`` blocks into a ``call_tir`` of a BSR kernel when
:func:`tvm_hcprune.hardware.sparse_cost.choose_format` estimates BSR faster. The BSR arrays
(``data [nnz, bk, bn]``, ``indices [nnz]`` = input block of each kept block, ``indptr
[N/bn + 1]`` per output block) are constants of the call. The kernel is written in TIR:
one parallel loop over output blocks, a data-dependent loop over that block's kept input
blocks, the ``bn`` outputs of a block in one vector (``bn`` = the target's fp32 lanes by
default). ``N`` not a multiple of ``bn`` is padded with zero columns and sliced back.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator
from tvm.script import tirx as T

from tvm_hcprune.hardware.sparse_cost import choose_format
from tvm_hcprune.utils.relax import (
    clear_shape_cache,
    const_value,
    dtype_of,
    mutate_functions,
    static_shape,
)

__all__ = ["UseBlockSparse", "bsr_kernel", "to_bsr"]


def to_bsr(w_kn: np.ndarray, block: tuple[int, int]):
    """``(data, indices, indptr, n_padded)``: the BSR form of ``W [K, N]`` by output block.

    Blocks are ``bk`` input rows by ``bn`` output columns; ``K`` must be a multiple of
    ``bk``; ``N`` is padded with zero columns up to a multiple of ``bn``.
    """
    bk, bn = block
    k, n = w_kn.shape
    if k % bk:
        raise ValueError(f"K={k} is not a multiple of the block's {bk} input rows")
    npad = -(-n // bn) * bn
    w = np.zeros((k, npad), w_kn.dtype)
    w[:, :n] = w_kn
    blocks = w.reshape(k // bk, bk, npad // bn, bn).transpose(2, 0, 1, 3)  # [nb, kb, bk, bn]
    nz = np.any(blocks != 0, axis=(2, 3))
    indptr = np.concatenate([[0], np.cumsum(nz.sum(axis=1))]).astype("int32")
    ob, ib = np.nonzero(nz)
    data = blocks[ob, ib] if len(ob) else np.zeros((1, bk, bn), w_kn.dtype)
    indices = ib.astype("int32") if len(ib) else np.zeros(1, "int32")
    return np.ascontiguousarray(data), indices, indptr, npad


def bsr_kernel(m: int, k: int, n: int, nnz: int, bk: int, bn: int) -> tvm.tirx.PrimFunc:
    """The scheduled TIR kernel ``y [m, n] = x [m, k] @ BSR(data, indices, indptr)``."""
    nb = n // bn

    @T.prim_func
    def bsr_matmul(x: T.Buffer((m, k), "float32"), data: T.Buffer((nnz, bk, bn), "float32"),
                   indices: T.Buffer((nnz,), "int32"), indptr: T.Buffer((nb + 1,), "int32"),
                   y: T.Buffer((m, n), "float32")):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        for i in T.parallel(nb):
            acc = T.alloc_buffer((bn,), "float32", scope="local")
            for r in range(m):
                for c in T.vectorized(bn):
                    acc[c] = T.float32(0)
                for e in T.serial(indptr[i + 1] - indptr[i]):
                    for kk in range(bk):
                        for c in T.vectorized(bn):
                            acc[c] = acc[c] + x[r, indices[indptr[i] + e] * bk + kk] * data[
                                indptr[i] + e, kk, c]
                for c in T.vectorized(bn):
                    y[r, i * bn + c] = acc[c]

    return bsr_matmul


def _block_density(w: np.ndarray, block) -> float:
    bk, bn = block
    k, n = w.shape
    npad = -(-n // bn) * bn
    p = np.zeros((k, npad), bool)
    p[:, :n] = w != 0
    return float(p.reshape(k // bk, bk, npad // bn, bn).any(axis=(1, 3)).mean())


@mutator
class _Rewriter(PyExprMutator):
    def __init__(self, mod, block, profile):
        super().__init__(mod)
        self.block = block
        self.profile = profile
        self.converted = 0

    def visit_call_(self, call):
        call = super().visit_call_(call)
        if not isinstance(call.op, tvm.ir.Op) or call.op.name != "relax.matmul":
            return call
        x, w = call.args
        wv = const_value(w)
        xs = static_shape(x)
        if wv is None or wv.ndim != 2 or xs is None or len(xs) < 2:
            return call
        if dtype_of(x) != "float32" or wv.dtype != np.float32 or wv.shape[0] % self.block[0]:
            return call
        fmt, _ = choose_format(_block_density(wv, self.block), self.profile)
        if fmt != "bsr":
            return call
        k, n = wv.shape
        m = int(np.prod(xs[:-1]))
        data, indices, indptr, npad = to_bsr(wv, self.block)
        func = bsr_kernel(m, k, npad, data.shape[0], *self.block)
        gv = self.builder_.add_func(func.without_attr("global_symbol"), "hcp_bsr_matmul")
        x2 = self.builder_.emit(relax.op.reshape(x, [m, k]))
        y = self.builder_.emit(relax.call_tir(
            gv, [x2, relax.const(data), relax.const(indices), relax.const(indptr)],
            relax.TensorType([m, npad], "float32")))
        if npad != n:
            y = self.builder_.emit(relax.op.strided_slice(y, axes=[1], begin=[0], end=[n]))
        self.converted += 1
        return relax.op.reshape(y, [*xs[:-1], n])


@tvm.transform.module_pass(opt_level=0, name="UseBlockSparse")
class UseBlockSparse:
    """Run block-sparse ``matmul`` layers on the BSR kernel where it is estimated faster.

    Parameters
    ----------
    block : (int, int)
        ``(bk, bn)`` of the weights' zero blocks (what :func:`tvm_hcprune.sparsify` used).
    profile : HardwareProfile
        The target's profile (the format estimate).

    Examples
    --------
    >>> prof = tvm_hcprune.profile_for("llvm")  # doctest: +SKIP
    >>> mod = UseBlockSparse((1, prof.lanes()), prof)(sparse_mod)  # doctest: +SKIP
    """

    def __init__(self, block, profile):
        self.block = tuple(int(b) for b in block)
        self.profile = profile

    def transform_module(self, mod, ctx):
        rw = _Rewriter(mod, self.block, self.profile)
        try:
            out = mutate_functions(rw, mod)
        finally:
            clear_shape_cache()
        return out if rw.converted else mod
