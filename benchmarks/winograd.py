"""Winograd F(2x2, 3x3) against the direct blocked conv kernel, per layer and per model.

Per layer (``--layers``, ``ICxOC@HW``): a 1x1 conv + ReLU (so the 3x3 conv reads the
channel-blocked layout, as inside a network) then the 3x3 stride-1 conv + bias + ReLU,
built twice with tvm_hcprune's CPU pipeline, ``winograd`` on and off
(:func:`tvm_hcprune.backend.pipeline.prepare_passes`); the 3x3 kernel is timed alone
(:func:`tvm_hcprune.backend.timing.kernel_times`), best of ``--rounds`` alternating rounds,
and the outputs of both builds are compared.

Per model (``--models``: ResNet-18/50-shaped ONNX models from
``tvm_hcprune.testing.onnx_models``, 224x224, seeded weights), dense and pruned to
``--ratio`` of the channels: whole-model latency with and without Winograd, and the kernel
sums, alternating rounds in one process. The default build chooses Winograd per conv
(:func:`tvm_hcprune.backend.cpu.winograd.prefer_winograd`); ``--all-tiles`` also times it
on every eligible conv (the 7x7 layers included) to show why they are left out.

Usage::

    python benchmarks/winograd.py [--layers 64x64@56,256x256@14] [--models resnet18]
                                  [--rounds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np


def _build(mod, target, winograd: bool):
    import tvm
    from tvm import relax

    from tvm_hcprune.backend.pipeline import prepare_passes, schedule_passes
    from tvm_hcprune.backend.steps import lower_passes

    passes = (prepare_passes(target, winograd=winograd) + schedule_passes(target, None)
              + lower_passes(target, chain=False))  # one kernel per layer, timed apart
    ex = tvm.compile(mod, target, relax_pipeline=tvm.transform.Sequential(passes))
    return relax.VirtualMachine(ex, tvm.cpu())


def _conv_ms(vm, x, number: int) -> float:
    from tvm_hcprune.backend.timing import kernel_times

    rows = [r for r in kernel_times(vm, [x], number=number)
            if "wgconv" in r.name or "3, 3" in str(r.shapes)]
    return rows[-1].ms


def run_layer(spec: str, target, args) -> dict:
    import tvm

    ch, hw = spec.split("@")
    ic, oc = (int(v) for v in ch.split("x"))
    hw = int(hw)
    from tvm_hcprune.testing.relax_models import blocked_conv3x3

    mod = blocked_conv3x3(ic, oc, hw)
    vms = {k: _build(mod, target, k == "winograd") for k in ("direct", "winograd")}
    x = tvm.runtime.tensor(np.random.default_rng(1).standard_normal(
        (1, ic, hw, hw)).astype("float32"))
    outs = {k: vm["main"](x).numpy() for k, vm in vms.items()}
    best = {k: float("inf") for k in vms}
    for _ in range(args.rounds):
        for k, vm in vms.items():
            best[k] = min(best[k], _conv_ms(vm, x, args.number))
    ref = outs["direct"]
    return {"direct_ms": best["direct"], "winograd_ms": best["winograd"],
            "winograd_over_direct": best["winograd"] / best["direct"],
            "max_rel_diff": float(np.abs(outs["winograd"] - ref).max()
                                  / max(float(np.abs(ref).max()), 1e-30))}


def run_model(name: str, target, args) -> dict:
    import tvm
    from tvm.relax.frontend.onnx import from_onnx

    import tvm_hcprune as hc
    from tvm_hcprune.backend.cpu import winograd as wg
    from tvm_hcprune.backend.timing import kernel_times
    from tvm_hcprune.testing import onnx_models

    depth = int(name.removeprefix("resnet"))
    dense = from_onnx(onnx_models.resnet(depth, image=224))
    pruned, report = hc.prune(dense, ratio=args.ratio)
    x = tvm.runtime.tensor(np.random.default_rng(0).random((1, 3, 224, 224)).astype("float32"))
    row = {"macs_fraction": report.macs_after / report.macs_before}
    for label, mod in (("dense", dense), ("pruned", pruned)):
        vms = {"direct": _build(mod, target, False), "winograd": _build(mod, target, True)}
        if args.all_tiles:  # prefer_winograd reads the threshold at each call
            wg.WINOGRAD_MIN_TILES, saved = 1, wg.WINOGRAD_MIN_TILES
            try:
                vms["winograd_all_tiles"] = _build(mod, target, True)
            finally:
                wg.WINOGRAD_MIN_TILES = saved
        e2e = {k: float("inf") for k in vms}
        ksum = {k: float("inf") for k in vms}
        for _ in range(args.rounds):
            for k, vm in vms.items():
                f = vm.time_evaluator("main", tvm.cpu(), number=args.number, repeat=3)
                e2e[k] = min(e2e[k], min(f(x).results) * 1e3)
                ksum[k] = min(ksum[k], sum(r.ms for r in kernel_times(vm, [x], number=5)))
        for k in vms:
            row[f"{label}_{k}_ms"] = e2e[k]
            row[f"{label}_{k}_kernel_sum_ms"] = ksum[k]
        row[f"{label}_winograd_over_direct"] = e2e["winograd"] / e2e["direct"]
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", default="64x64@56,128x128@28,256x256@14,512x512@7,"
                                        "32x32@56,16x48@56,48x48@28")
    ap.add_argument("--models", default="resnet18,resnet50")
    ap.add_argument("--ratio", type=float, default=0.5, help="prune ratio of the pruned models")
    ap.add_argument("--all-tiles", action="store_true",
                    help="also time the models with Winograd on every eligible conv")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--number", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, help="write the figures here (atomically)")
    args = ap.parse_args(argv)
    os.environ.setdefault("TVM_NUM_THREADS", str(args.threads))

    import tvm_hcprune as hc
    from tvm_hcprune.backend.pipeline import set_num_threads
    from tvm_hcprune.utils import atomic_write_text

    set_num_threads(args.threads)
    target = hc.parse_target({"kind": "llvm", "num-cores": args.threads})
    prof = hc.profile_for(target)
    out = {"host": {"mcpu": prof.mcpu, "profile": prof.name, "threads": args.threads},
           "layers": {}, "models": {}}
    print(f"host: {prof.mcpu} ({prof.name}), {args.threads} threads", flush=True)
    for spec in [s for s in args.layers.split(",") if s]:
        row = run_layer(spec, target, args)
        out["layers"][spec] = row
        print(f"{spec:14s} direct {row['direct_ms'] * 1e3:8.1f} us  winograd "
              f"{row['winograd_ms'] * 1e3:8.1f} us  ({row['winograd_over_direct']:.2f}x)  "
              f"max rel diff {row['max_rel_diff']:.1e}", flush=True)
    for name in [m for m in args.models.split(",") if m]:
        row = run_model(name, target, args)
        out["models"][name] = row
        for label in ("dense", "pruned"):
            extra = (f", all tiles {row[f'{label}_winograd_all_tiles_ms']:.2f} ms"
                     if args.all_tiles else "")
            print(f"{name:9s} {label:6s} direct {row[f'{label}_direct_ms']:7.2f} ms  winograd "
                  f"{row[f'{label}_winograd_ms']:7.2f} ms "
                  f"({row[f'{label}_winograd_over_direct']:.2f}x){extra}", flush=True)
    if args.json:
        atomic_write_text(args.json, json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
