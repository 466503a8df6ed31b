"""The CPU pipeline's FastMath (erf, softmax as vectorisable polynomials) and
ScheduleRowwise (parallel rows for what no rule schedules): results against numpy, and the
functions really get the schedule."""

from __future__ import annotations

import math

import numpy as np
from tvm import relax

import tvm_hcprune as hc
from tvm_hcprune.backend.cpu.fast_math import FastMath
from tvm_hcprune.backend.cpu.rowwise import schedule_rowwise
from tvm_hcprune.testing import run_relax

TARGET = {"kind": "llvm", "mcpu": "znver3", "num-cores": 2}


def _module():
    """softmax(x * 0.25) over the last axis, layer_norm, and an exact (erf) GELU."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((2, 6, 40), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            s = bb.emit(relax.op.nn.softmax(relax.op.multiply(x, relax.const(0.25, "float32"))))
            ln = bb.emit(relax.op.nn.layer_norm(
                relax.op.add(s, x), relax.const(np.full(40, 1.5, "float32")),
                relax.const(np.full(40, 0.1, "float32")), axes=[-1]))
            g = relax.op.multiply(relax.op.erf(relax.op.multiply(ln, relax.const(
                2 ** -0.5, "float32"))), relax.const(0.5, "float32"))
            out = bb.emit_output(relax.op.multiply(ln, relax.op.add(g, relax.const(
                0.5, "float32"))))
        bb.emit_func_output(out)
    return bb.get()


def _reference(x):
    z = x.astype(np.float64) * 0.25
    s = np.exp(z - z.max(-1, keepdims=True))
    s /= s.sum(-1, keepdims=True)
    h = s + x
    ln = (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + 1e-5) * 1.5 + 0.1
    erf = np.vectorize(math.erf)
    return ln * (0.5 + 0.5 * erf(ln / math.sqrt(2)))


def test_fast_math_and_rowwise_schedules_equal_numpy():
    """The build (FastMath + ScheduleRowwise) equals a float64 numpy reference (1e-5)."""
    x = np.random.default_rng(0).standard_normal((2, 6, 40)).astype("float32") * 3
    got = run_relax(_module(), [x], target=TARGET, build=hc.build)
    np.testing.assert_allclose(got, _reference(x), rtol=1e-5, atol=1e-5)


def test_fast_math_replaces_erf_and_softmax():
    """No erf or softmax op is left; each became a call_tir of the fast form; Relax's
    nn.gelu with fast_erf equals the exact GELU (1e-6)."""
    out = FastMath()(_module())
    text = out["main"].script()
    assert "R.erf" not in text and "R.nn.softmax" not in text
    assert "fast_erf" in text and "softmax" in text
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((3, 50), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.nn.gelu(x))
        bb.emit_func_output(out)
    gelu = FastMath()(bb.get())
    assert "R.nn.gelu" not in gelu["main"].script()
    xv = np.linspace(-6, 6, 150, dtype="float32").reshape(3, 50)
    want = xv * 0.5 * (1 + np.vectorize(math.erf)(xv / math.sqrt(2)))
    np.testing.assert_allclose(run_relax(gelu, [xv]), want, rtol=1e-6, atol=1e-6)


def test_rowwise_schedules_softmax_with_parallel_rows():
    """The legalized softmax gets one parallel loop over its 12 rows, every block under it."""
    mod = relax.transform.LegalizeOps()(FastMath()(_module()))
    name = next(gv for gv in mod.get_global_vars() if "softmax" in gv.name_hint)
    new = schedule_rowwise(mod[name])
    assert new is not None and int(new.attrs["tirx.is_scheduled"]) == 1
    text = new.script()
    assert text.count("T.parallel(") == 1 and "T.parallel(T.int64(12))" in text, text
    assert "T.vectorized(" in text  # exponentials and the normalisation are vectorised
