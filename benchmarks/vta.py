"""VTA simulator target: published counters, ResNet-18 body, and a pruned int8 model end to end.

Prints (and with ``--json PATH`` writes) three tables:

1. the tutorial workloads' seven profiler counters beside the published fsim values;
2. the 19 packed ResNet-18 body convolutions executed on the simulator (every layer checked
   bit for bit against numpy) for the dense widths, widths pruned by 25 % and aligned to 16,
   and widths pruned by a few channels that do not reach a multiple of 16: gemm_counter,
   estimated cycles and the simulator's wall time;
3. the bundled MNIST ResNet, dense and pruned for VTA (``prune(ratio, target="vta")``),
   quantised to int8 and run with its conv/dense layers offloaded to the simulator:
   gemm_counter and estimated cycles per inference, simulator wall time, agreement with the
   same int8 model on llvm, and top-1 accuracy on real held-out digits.

Cycle counts come from :mod:`tvm_hcprune.vta.cycles` and are ESTIMATES (100 MHz, 64-bit bus).
Wall times are single runs on a shared machine.

Usage: ``python benchmarks/vta.py [--json PATH] [--digits N] [--ratio R] [--resnet18-e2e]``
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from tvm_hcprune.utils import atomic_write_text
from tvm_hcprune.vta import CommandQueue, Simulator, ops, reference
from tvm_hcprune.vta import codegen as cg
from tvm_hcprune.vta.cycles import estimate_cycles
from tvm_hcprune.vta.sim import COUNTERS


def _pack_conv_inputs(rng, s: cg.Conv2DShape):
    x = rng.integers(-128, 128, (1, s.cib * 16, s.h, s.w), dtype=np.int8)
    w = rng.integers(-128, 128, (s.cob * 16, s.cib * 16, s.kh, s.kw), dtype=np.int8)
    return x, w


def resnet18_body(label: str, prune_to: dict | None, check: bool, seed: int = 0) -> dict:
    """Execute the 19 body convs (random int8 data) and check each against numpy."""
    rng = np.random.default_rng(seed)
    rt = CommandQueue(Simulator())
    cycles, exact, sim_wall = 0, True, 0.0
    widths = []
    for name, s in reference.resnet18_body_convs(prune_to=prune_to):
        x, w = _pack_conv_inputs(rng, s)
        cout = (prune_to or {}).get(int(name[5]) - 1, s.cob * 16)
        w = w[:cout]
        widths.append(cout)
        t0 = time.perf_counter()
        y = ops.conv2d(x, w, None, s.stride, s.pad, 8, (0, 127), rt=rt)
        sim_wall += time.perf_counter() - t0
        cycles += estimate_cycles(rt.last_program, rt.cfg)["cycles"]
        if check:
            exact &= bool(np.array_equal(y, ops.conv2d_ref(x, w, None, s.stride, s.pad, 8,
                                                           (0, 127))))
        rt.release_dram()
    st = rt.sim.stats()
    return {"label": label, "stage_widths": sorted(set(widths), key=widths.index),
            "gemm_counter": st["gemm_counter"], "estimated_cycles": cycles,
            "estimated_ms_at_100MHz": cycles / 1e5, "sim_wall_s": round(sim_wall, 3),
            "bit_exact_vs_numpy": exact if check else None, "counters": st}


def mnist_e2e(ratio: float, digits: int, calib: int = 16) -> dict:
    import tvm_hcprune
    from tvm_hcprune.vta import relax as vr
    from tvm_hcprune.zoo.datasets import mnist_test
    from tvm_hcprune.zoo.models import bundled_model

    data = mnist_test(calib + digits)
    cal, test = data.samples[:calib], data.samples[calib:]
    labels = data.labels[calib:]
    mod = tvm_hcprune.load_onnx(bundled_model("mnist_resnet"), log=lambda *_: None)
    out = {}
    for label, r in (("dense", 0.0), (f"pruned r={ratio} (align 16)", ratio)):
        m = mod
        if r:
            m, rep = tvm_hcprune.prune(mod, ratio=r, target="vta")
            macs = (rep.macs_before, rep.macs_after)
        qmod, plan = vr.quantize(m, list(cal))
        vta, ref = vr.build_vta(qmod, plan, "vta"), vr.build_vta(qmod, plan, "llvm")
        fl = vr.VTAExecutable(qmod)
        vr.clear_layer_log()
        agree, correct_q, correct_f, t0 = 0, 0, 0, time.perf_counter()
        outs = [vta(x) for x in test]
        wall = time.perf_counter() - t0
        log = vr.layer_log()
        for x, y, lab in zip(test, outs, labels, strict=True):
            agree += bool(np.array_equal(y, ref(x)))
            correct_q += int(np.argmax(y) == lab)
            correct_f += int(np.argmax(fl(x)) == lab)
        n = len(test)
        per = {k: sum(rec["counters"][k] for rec in log) // n for k in COUNTERS}
        out[label] = {
            "offloaded_layers": len(plan.layers),
            "kept_on_cpu": plan.skipped,
            "gemm_counter_per_inference": per["gemm_counter"],
            "counters_per_inference": per,
            "estimated_cycles_per_inference": sum(rec["estimated_cycles"] for rec in log) // n,
            "sim_wall_s_per_inference": round(sum(rec["wall_s"] for rec in log) / n, 4),
            "vm_wall_s_per_inference": round(wall / n, 4),
            "vta_equals_llvm_int8": f"{agree}/{n}",
            "top1_int8_vta": correct_q / n, "top1_float": correct_f / n,
        }
        if r:
            out[label]["macs_before_after"] = macs
    return out


def resnet18_e2e(ratio: float) -> dict:
    """Whole ResNet-18 (random weights) through Relax: dense vs pruned, offloaded to VTA."""
    from tvm.relax.frontend.onnx import from_onnx

    import tvm_hcprune
    from tvm_hcprune.testing.onnx_models import resnet
    from tvm_hcprune.vta import relax as vr

    mod = from_onnx(resnet(18))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 3, 224, 224)).astype(np.float32)
    out = {}
    for label, r in (("dense", 0.0), (f"pruned r={ratio} (align 16)", ratio)):
        m = tvm_hcprune.prune(mod, ratio=r, target="vta")[0] if r else mod
        qmod, plan = vr.quantize(m, [x])
        vta = vr.build_vta(qmod, plan, "vta")
        vr.clear_layer_log()
        vta(x)
        log = vr.layer_log()
        out[label] = {"offloaded_layers": len(plan.layers),
                      "gemm_counter": sum(rec["counters"]["gemm_counter"] for rec in log),
                      "estimated_cycles": sum(rec["estimated_cycles"] for rec in log),
                      "sim_wall_s": round(sum(rec["wall_s"] for rec in log), 3)}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", metavar="PATH")
    ap.add_argument("--digits", type=int, default=100, help="MNIST test digits (default 100)")
    ap.add_argument("--ratio", type=float, default=0.25, help="MNIST pruning ratio")
    ap.add_argument("--no-check", action="store_true", help="skip the numpy checks")
    ap.add_argument("--resnet18-e2e", action="store_true",
                    help="also run whole ResNet-18 through Relax (slow)")
    args = ap.parse_args(argv)
    res: dict = {"note": "cycles are estimates (tvm_hcprune.vta.cycles); wall times are one "
                         "run on a shared 2-core machine"}

    print("== 1. published fsim counters (ours / published) ==")
    res["reference"] = {}
    for name in ("matmul", "blocked_matmul", "conv", "resnet18"):
        r = reference.run_workload(name, execute=name != "resnet18")
        res["reference"][name] = r
        cmp = [k for k in r["exact"] if r["counters"][k] != r["published"][k]]
        print(f"{name:15s} {'all exact' if not cmp else 'MISMATCH ' + str(cmp):>12s}  "
              f"gemm {r['counters']['gemm_counter']:>9,}  wall {r['wall_s']:.3f} s  "
              f"est. {r['estimated_cycles']:,} cycles")

    print("\n== 2. ResNet-18 body (19 packed convs) executed on the simulator ==")
    variants = [("dense 64/128/256/512", None),
                ("pruned 25% aligned 48/96/192/384", {0: 48, 1: 96, 2: 192, 3: 384}),
                ("pruned misaligned 58/122/250/506*", {0: 58, 1: 122, 2: 250, 3: 506})]
    res["resnet18_body"] = []
    base = None
    for label, p in variants:
        r = resnet18_body(label, p, check=not args.no_check)
        res["resnet18_body"].append(r)
        base = base or r
        g, c = r["gemm_counter"], r["estimated_cycles"]
        print(f"{label:34s} gemm {g:>10,} ({g / base['gemm_counter']:.3f}x)  est. cycles "
              f"{c:>11,} ({c / base['estimated_cycles']:.3f}x)  sim wall "
              f"{r['sim_wall_s']:.2f} s  exact {r['bit_exact_vs_numpy']}")

    print(f"\n== 3. bundled MNIST ResNet, int8, conv/dense on the simulator ({args.digits} "
          "real digits) ==")
    res["mnist"] = mnist_e2e(args.ratio, args.digits)
    for label, r in res["mnist"].items():
        print(f"{label:28s} layers {r['offloaded_layers']}  gemm/inf "
              f"{r['gemm_counter_per_inference']:>8,}  est. cycles/inf "
              f"{r['estimated_cycles_per_inference']:>9,}  sim {r['sim_wall_s_per_inference']:.3f}"
              f" s/inf  vta==llvm {r['vta_equals_llvm_int8']}  top1 int8 "
              f"{r['top1_int8_vta']:.3f} (float {r['top1_float']:.3f})")

    if args.resnet18_e2e:
        print("\n== 4. whole ResNet-18 through Relax (random weights) ==")
        res["resnet18_e2e"] = resnet18_e2e(0.25)
        for label, r in res["resnet18_e2e"].items():
            print(f"{label:28s} {r}")

    if args.json:
        atomic_write_text(args.json, json.dumps(res, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
