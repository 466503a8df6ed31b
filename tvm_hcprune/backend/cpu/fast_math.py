"""Relax pass :class:`FastMath`: ``erf`` (and GELU) and ``softmax`` as vectorisable
polynomials.

TVM 0.27 lowers ``relax.erf`` and the ``exp`` inside ``relax.nn.softmax`` on llvm to scalar
libm calls per element. The exact GELU of a BERT-style FFN (``0.5 x (1 + erf(x / sqrt 2))``,
as ONNX exporters write it) then took 1.9 ms for 128 x 1536 elements on a Zen 5 core pair,
more than the FFN's matmul; the attention softmax (12 heads x 128 x 128) 0.9 ms. TVM's
``topi.fast_erf`` (the rational approximation Eigen uses for float32) and
``topi.nn.fast_softmax`` (``fast_exp``) vectorise: 0.067 ms for that GELU (max abs
difference 4.8e-7 from ``erff``) and 0.38 ms for that softmax (the same max error against
a float64 softmax, 7.9e-7 relative, as TVM's exact one).
"""

from __future__ import annotations

import tvm
from tvm import te, tirx, topi
from tvm.relax.expr_functor import PyExprMutator, mutator

from tvm_hcprune.utils.relax import dtype_of, mutate_functions

__all__ = ["FastMath"]


@mutator
class _Rewriter(PyExprMutator):
    def __init__(self, mod, erf: bool, softmax: bool):
        super().__init__(mod)
        self.erf, self.softmax = erf, softmax
        self.rewritten = 0

    def visit_call_(self, call):
        call = super().visit_call_(call)
        name = getattr(call.op, "name", None)
        if (name not in ("relax.erf", "relax.nn.gelu", "relax.nn.softmax")
                or dtype_of(call.args[0]) != "float32"):
            return call
        if name == "relax.erf" and self.erf:
            self.rewritten += 1
            return self.builder_.call_te(topi.fast_erf, call.args[0],
                                         primfunc_name_hint="fast_erf")
        if name == "relax.nn.gelu" and self.erf:
            self.rewritten += 1
            return self.builder_.call_te(_gelu, call.args[0], primfunc_name_hint="gelu")
        if name == "relax.nn.softmax" and self.softmax:
            self.rewritten += 1
            return self.builder_.call_te(topi.nn.fast_softmax, call.args[0],
                                         int(call.attrs.axis), primfunc_name_hint="softmax")
        return call


def _gelu(x):
    """Exact GELU ``x / 2 (1 + erf(x / sqrt 2))`` (what Relax's gelu legalizes to) with
    ``fast_erf``."""
    half, one = tirx.const(0.5, x.dtype), tirx.const(1.0, x.dtype)
    scaled = te.compute(x.shape, lambda *i: x(*i) * tirx.const(2 ** -0.5, x.dtype))
    erf = topi.fast_erf(scaled)
    return te.compute(x.shape, lambda *i: x(*i) * half * (one + erf(*i)), name="gelu")


@tvm.transform.module_pass(opt_level=0, name="FastMath")
class FastMath:
    """Replace float32 ``erf`` (also inside ``nn.gelu``) by ``fast_erf`` and ``softmax`` by
    ``fast_softmax`` (both vectorise; ~5e-7 absolute / 8e-7 relative error).

    Parameters
    ----------
    erf, softmax : bool
        Which to replace (``erf`` covers ``nn.gelu``).

    Examples
    --------
    >>> mod = FastMath()(mod)  # doctest: +SKIP
    """

    def __init__(self, erf: bool = True, softmax: bool = True):
        self.erf, self.softmax = bool(erf), bool(softmax)

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        rw = _Rewriter(mod, self.erf, self.softmax)
        out = mutate_functions(rw, mod)
        return out if rw.rewritten else mod
