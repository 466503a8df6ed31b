"""Reference workloads with published fsim profiler counters (``specs/vta.md`` §5).

Run ``python -m tvm_hcprune.vta.reference [--json PATH]`` to execute them on this simulator
and print each counter beside the published value.

* ``matmul``: 1x256 . 256x256, one tile, no epilogue.
* ``blocked_matmul``: 1x1024 . 1024x1024 in 256-wide tiles, shift 8 and clip [0, 127].
* ``conv``: 1x256x14x14, 3x3, pad 1, 256 outputs, oc tile 128, ic tile 16, 7x14 row tiles,
  two virtual threads on output channels, shift 8 and clip [0, 127].
* ``resnet18``: the 19 packed convolutions of ResNet-18's body (224x224 input); only the
  gemm_counter is schedule-independent and compared (the published run also counts residual
  adds and other ops we do not offload here).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from tvm_hcprune.utils import atomic_write_text
from tvm_hcprune.vta import codegen as cg
from tvm_hcprune.vta import ops
from tvm_hcprune.vta.cycles import estimate_cycles
from tvm_hcprune.vta.runtime import CommandQueue
from tvm_hcprune.vta.sim import COUNTERS, DEBUG_SKIP_EXEC, Simulator

PUBLISHED = {
    "matmul": dict(zip(COUNTERS, (256, 65536, 0, 8, 256, 256, 0), strict=True)),
    "blocked_matmul": dict(zip(COUNTERS, (4096, 1048576, 0, 20, 1024, 4096, 192), strict=True)),
    "conv": dict(zip(COUNTERS, (114688, 1179648, 0, 1144, 50176, 451584, 9408), strict=True)),
    "resnet18": dict(zip(COUNTERS, (5549568, 12763136, 6051840, 22864, 2433536, 6623232,
                                    699328), strict=True)),
}
# counters that must match exactly (the others are version/schedule dependent)
EXACT = {
    "matmul": COUNTERS,
    "blocked_matmul": COUNTERS,
    "conv": COUNTERS,
    "resnet18": ("gemm_counter",),
}
RESNET18_GEMM_TOTAL = 6623232


def resnet18_body_convs(image: int = 224, width: int = 64, prune_to: dict | None = None
                        ) -> list[tuple[str, cg.Conv2DShape]]:
    """The 19 convolutions of ResNet-18 after the stem, as packed shapes (batch 1).

    Parameters
    ----------
    image : int
        Input resolution (224 gives 56x56 after the stem).
    width : int
        Channels of the first stage (64).
    prune_to : dict, optional
        ``{stage_index: channels}`` to shrink a stage's channel count (for what-if tables).
    """
    prune_to = prune_to or {}
    h = image // 4
    convs = []
    cin = width
    for stage in range(4):
        c = prune_to.get(stage, width << stage)
        cb, cib = -(-c // 16), -(-cin // 16)
        stride = 1 if stage == 0 else 2
        ho = h if stage == 0 else h // 2
        convs.append((f"layer{stage + 1}.0.conv1",
                      cg.Conv2DShape(1, cib, h, h, cb, 3, 3, (stride, stride), (1, 1))))
        convs.append((f"layer{stage + 1}.0.conv2",
                      cg.Conv2DShape(1, cb, ho, ho, cb, 3, 3, (1, 1), (1, 1))))
        if stage:
            convs.append((f"layer{stage + 1}.0.downsample",
                          cg.Conv2DShape(1, cib, h, h, cb, 1, 1, (2, 2), (0, 0))))
        convs.append((f"layer{stage + 1}.1.conv1",
                      cg.Conv2DShape(1, cb, ho, ho, cb, 3, 3, (1, 1), (1, 1))))
        convs.append((f"layer{stage + 1}.1.conv2",
                      cg.Conv2DShape(1, cb, ho, ho, cb, 3, 3, (1, 1), (1, 1))))
        cin, h = c, ho
    return convs


_RELU_SHIFT8 = cg.Epilogue(shift=8, clip=(0, 127))


def run_conv_shape(rt: CommandQueue, shape: cg.Conv2DShape, sched=None, rng=None,
                   epilogue: cg.Epilogue = _RELU_SHIFT8) -> None:
    """Emit and run one packed conv on random data (skipped data movement if the simulator
    is in skip-exec mode)."""
    sched = sched or cg.default_conv2d_schedule(shape, rt.cfg)
    nbytes_in = shape.n * shape.cib * shape.h * shape.w * 16
    nbytes_w = shape.cob * shape.cib * shape.kh * shape.kw * 256
    if rt.sim.skip_exec:
        d, w = rt.alloc(nbytes_in), rt.alloc(nbytes_w)
    else:
        rng = rng or np.random.default_rng(0)
        d = rt.put(rng.integers(-128, 128, nbytes_in, dtype=np.int8))
        w = rt.put(rng.integers(-128, 128, nbytes_w, dtype=np.int8))
    o = rt.alloc(shape.n * shape.cob * shape.ho * shape.wo * 16)
    cg.conv2d_packed(rt, shape, sched, d, w, o, None, epilogue)
    rt.synchronize()


def run_workload(name: str, execute: bool = True, seed: int = 0) -> dict:
    """Run one reference workload; returns its counters, wall time and cycle estimate."""
    rng = np.random.default_rng(seed)
    sim = Simulator()
    if not execute:
        sim.debug_mode(DEBUG_SKIP_EXEC)
    rt = CommandQueue(sim)
    t0 = time.perf_counter()
    programs = []
    if name == "matmul":
        x = rng.integers(-128, 128, (1, 256), dtype=np.int8)
        w = rng.integers(-128, 128, (256, 256), dtype=np.int8)
        y = ops.dense(x, w, schedule=cg.DenseSchedule(1, 16, 16, 1), rt=rt)
        ok = bool(np.array_equal(y, ops.dense_ref(x, w))) if execute else None
    elif name == "blocked_matmul":
        x = rng.integers(-128, 128, (1, 1024), dtype=np.int8)
        w = rng.integers(-128, 128, (1024, 1024), dtype=np.int8)
        y = ops.dense(x, w, shift=8, clip=(0, 127), schedule=cg.DenseSchedule(1, 16, 16, 1),
                      rt=rt)
        ok = bool(np.array_equal(y, ops.dense_ref(x, w, None, 8, (0, 127)))) if execute else None
    elif name == "conv":
        x = rng.integers(-128, 128, (1, 256, 14, 14), dtype=np.int8)
        w = rng.integers(-128, 128, (256, 256, 3, 3), dtype=np.int8)
        y = ops.conv2d(x, w, None, (1, 1), (1, 1), 8, (0, 127),
                       schedule=cg.Conv2DSchedule(7, 14, 1, 8, oc_nthread=2), rt=rt)
        ok = (bool(np.array_equal(y, ops.conv2d_ref(x, w, None, (1, 1), (1, 1), 8, (0, 127))))
              if execute else None)
    elif name == "resnet18":
        ok = None
        cycles = 0
        for _, shape in resnet18_body_convs():
            run_conv_shape(rt, shape, rng=rng)
            cycles += estimate_cycles(rt.last_program, rt.cfg)["cycles"]
    else:
        raise ValueError(f"unknown workload {name!r}")
    wall = time.perf_counter() - t0
    if name != "resnet18":
        programs.append(rt.last_program)
        cycles = estimate_cycles(rt.last_program, rt.cfg)["cycles"]
    return {"counters": sim.stats(), "published": PUBLISHED[name], "exact": list(EXACT[name]),
            "bit_exact_vs_numpy": ok, "executed": execute, "wall_s": round(wall, 3),
            "estimated_cycles": cycles}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tvm_hcprune.vta.reference",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--json", metavar="PATH", help="write the figures to PATH")
    ap.add_argument("--execute-resnet", action="store_true",
                    help="move data in the ResNet-18 run too (slower; default: skip-exec)")
    args = ap.parse_args(argv)
    results = {}
    all_ok = True
    for name in ("matmul", "blocked_matmul", "conv", "resnet18"):
        execute = name != "resnet18" or args.execute_resnet
        r = run_workload(name, execute=execute)
        results[name] = r
        mode = "executed" if execute else "skip-exec"
        print(f"\n{name} ({mode}, {r['wall_s']} s, estimated {r['estimated_cycles']:,} cycles"
              f"{'' if r['bit_exact_vs_numpy'] is None else ', bit-exact vs numpy: '}"
              f"{'' if r['bit_exact_vs_numpy'] is None else r['bit_exact_vs_numpy']})")
        print(f"  {'counter':<18}{'ours':>14}{'published':>14}  check")
        for k in COUNTERS:
            ours, pub = r["counters"][k], r["published"][k]
            if k in r["exact"]:
                verdict = "match" if ours == pub else "MISMATCH"
                all_ok &= ours == pub
            else:
                verdict = "schedule-dependent (not compared)"
            print(f"  {k:<18}{ours:>14,}{pub:>14,}  {verdict}")
        if r["bit_exact_vs_numpy"] is False:
            all_ok = False
    total = results["resnet18"]["counters"]["gemm_counter"]
    print(f"\nResNet-18 body gemm_counter total: {total:,} (published {RESNET18_GEMM_TOTAL:,})")
    results["all_exact_counters_match"] = bool(all_ok)
    if args.json:
        atomic_write_text(args.json, json.dumps(results, indent=2) + "\n")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
