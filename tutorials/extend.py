"""
Extend tvm_hcprune: an op handler, a criterion and a hardware profile of your own
=================================================================================

Three registries, keyed by name, make the pruner open: op handlers (how channel axes flow
through a Relax op), criteria (how channels are scored) and hardware profiles (what a
target's channel multiple is). This tutorial adds one of each. Run::

    python tutorials/extend.py [--quick] [--out-dir DIR]

It is small either way (a few seconds); ``--quick`` is accepted like in the other
tutorials.
"""

# %%
# Set-up: a model with an op the analysis does not know
# -----------------------------------------------------
# ``cumsum`` along the width axis: every channel is summed on its own, so channels could
# be pruned through it, but no handler says so, and an op without a handler is a barrier.
from __future__ import annotations

import argparse
import os

import numpy as np
from tvm import relax

import tvm_hcprune as hc
from tvm_hcprune.hardware import HardwareProfile
from tvm_hcprune.ops import OpHandler
from tvm_hcprune.testing import masked_reference, run_relax


def build_model(c=32, hw=8):
    """conv -> relu -> cumsum(axis=3) -> conv: a Relax module built with BlockBuilder."""
    rng = np.random.default_rng(0)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 8, hw, hw), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            w1 = relax.const(rng.standard_normal((c, 8, 3, 3)).astype("float32"))
            w2 = relax.const(rng.standard_normal((16, c, 1, 1)).astype("float32"))
            y = bb.emit(relax.op.nn.conv2d(x, w1, padding=1))
            y = bb.emit(relax.op.nn.relu(y))
            y = bb.emit(relax.op.cumsum(y, axis=3))
            out = bb.emit_output(relax.op.nn.conv2d(y, w2))
        bb.emit_func_output(out)
    return bb.get()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="extend tvm_hcprune")
    ap.add_argument("--quick", action="store_true",
                    default=bool(os.environ.get("HCPRUNE_TUTORIAL_QUICK")))
    ap.add_argument("--out-dir", default=None)
    ap.parse_args(argv)
    mod = build_model()
    graph = hc.analyze(mod)
    print("before:", graph.summary().splitlines()[0])
    for rec in graph.frozen:
        print(f"  frozen group {rec.group}: {rec.op}: {rec.reason}")

    # %%
    # 1. An op handler
    # ----------------
    # ``analyze`` returns the output's channel descriptor from the inputs'. Over a
    # non-channel axis the descriptor passes through unchanged; over the channel axis the
    # channels mix, so the handler freezes them with a reason the user can read.
    @hc.register_op_handler("relax.cumsum", override=True)
    class CumsumHandler(OpHandler):
        def analyze(self, ctx, var, call):
            desc = list(ctx.desc(call.args[0]))
            axis = call.attrs.axis
            if axis is None or int(axis) % len(desc) == 1:
                ctx.freeze(desc, var, call.op.name, "cumsum over the channel axis mixes them")
                return [None] * len(desc)
            return desc

    graph = hc.analyze(mod)
    print("after: ", graph.summary().splitlines()[0])
    assert not any(rec.op == "relax.cumsum" for rec in graph.frozen)

    # %%
    # 2. A criterion
    # --------------
    # A criterion gets ``views`` (per member of the group, a ``(channels, k)`` matrix of
    # its weights) and returns one score per channel; higher is kept. This one keeps the
    # channels whose producer weights have the largest maximum magnitude.
    @hc.register_criterion("max_abs", override=True)
    def max_abs(views, rng, **_):
        return np.max([np.abs(w).max(axis=1) for w in views.producers], axis=0)

    print("criteria:", ", ".join(hc.list_criteria()))

    # %%
    # 3. A hardware profile
    # ---------------------
    # Targets carrying the key ``tutorial-npu`` get a profile whose channel multiple is
    # 16: the pruner's default ``align`` follows it, so kept widths fit the NPU's tiles.
    @hc.register_profile("tutorial-npu", override=True)
    def npu(target):
        return HardwareProfile(name="tutorial-npu", kind="llvm", isa="npu", vector_bits=128,
                               fma_units=1, vector_registers=32, channel_multiple=16,
                               l1_bytes=64 * 1024, l2_bytes=0, cores=1, freq_ghz=1.0)

    target = {"kind": "llvm", "keys": ["tutorial-npu", "cpu"]}
    print("profile:", hc.profile_for(target).name, "align", hc.profile_for(target).channel_multiple)

    # %%
    # 4. All three at work, checked against the oracle
    # ------------------------------------------------
    pruned, report = hc.prune(mod, ratio=0.5, criterion="max_abs", target=target)
    print(report.summary().splitlines()[0])
    assert report.align == 16 and report.macs_after < report.macs_before
    x = np.random.default_rng(1).standard_normal((1, 8, 8, 8)).astype("float32")
    got = run_relax(pruned, [x])
    want = run_relax(masked_reference(mod, report.plan), [x])
    diff = float(np.abs(got - want).max() / np.abs(want).max())
    print(f"pruned vs masked reference: max relative difference {diff:.1e}")
    assert diff < 1e-5
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
