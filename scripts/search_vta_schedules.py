"""Search the VTA tilings of the bundled MNIST ResNet (pruned for VTA at ratio 0.5, int8)
on the simulator's cycle estimate; writes ``schedules/vta/<bitstream>.vtadb``.

Usage::

    python scripts/search_vta_schedules.py [--limit 12] [--out PATH]

Prints each layer's estimated cycles, searched vs default. The VTA build
(:func:`tvm_hcprune.vta.relax.build_vta`) uses the records of matching layer shapes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=12, help="candidates per layer")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    import tvm_hcprune
    from tvm_hcprune.hardware.vta import DEFAULT_CONFIG
    from tvm_hcprune.vta import relax as vr
    from tvm_hcprune.vta.schedule_db import VTAScheduleDB, use_database
    from tvm_hcprune.vta.search import search_model_layers
    from tvm_hcprune.zoo.datasets import mnist_test
    from tvm_hcprune.zoo.models import bundled_model

    use_database(VTAScheduleDB(DEFAULT_CONFIG.bitstream), DEFAULT_CONFIG)  # search clean
    mod = tvm_hcprune.load_onnx(bundled_model("mnist_resnet"), log=lambda *_: None)
    pruned, _ = tvm_hcprune.prune(mod, ratio=0.5, target="vta")
    _, plan = vr.quantize(pruned, list(mnist_test(6).samples))
    db = search_model_layers(plan, limit=args.limit)
    out = args.out or Path(__file__).resolve().parent.parent / "schedules" / "vta" / (
        f"{DEFAULT_CONFIG.bitstream}.vtadb")
    db.save(out)
    for key, rec in db.records.items():
        print(f"{key}: {rec['cycles']} cycles (default {rec['default_cycles']}, "
              f"{rec['cycles'] / rec['default_cycles']:.2f}x), {rec['tried']} tried")
    total = sum(r["cycles"] for r in db.records.values())
    default = sum(r["default_cycles"] for r in db.records.values())
    print(f"{len(db.records)} layers: {total} / {default} estimated cycles "
          f"({total / default:.2f}x); wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
