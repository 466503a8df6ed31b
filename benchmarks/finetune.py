"""What a short fine-tune inside TVM adds over least-squares reconstruction (MNIST model).

Prunes the bundled ``mnist_resnet`` at ``--ratio`` with reconstruction (calibrated on 300
training digits), then runs ``tvm_hcprune.recovery.finetune.finetune`` (relax.training, batch norm
folded, Adam) on the 4,000 training digits, and evaluates both on the held-out digits with
TVM. Figures are from one run on a shared machine (times indicative).

Usage::

    .venv/bin/python benchmarks/finetune.py --ratio 0.5 --steps 60 --json out/finetune.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tvm_hcprune.utils import atomic_write_text  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--n", type=int, default=1000, help="held-out test digits")
    ap.add_argument("--loss", choices=("ce", "distill"), default="ce",
                    help="cross-entropy on labels, or distillation from the dense model")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    import tvm_hcprune as hc
    from tvm_hcprune.recovery.evaluation import evaluate
    from tvm_hcprune.recovery.finetune import finetune
    from tvm_hcprune.zoo.datasets import mnist_test, mnist_train
    from tvm_hcprune.zoo.models import bundled_model

    mod = hc.load_onnx(bundled_model("mnist_resnet"))
    graph = hc.analyze(mod)
    train = mnist_train(4000)
    cal = hc.calibrate(graph.mod, mnist_train(300), max_rows=4096, progress=False)
    test = mnist_test(args.n)
    dense = evaluate(mod, test, progress=False)
    pruned, rep = hc.prune(mod, ratio=args.ratio, graph=graph, calibration=cal,
                           reconstruct=True)
    recon = evaluate(pruned, test, reference=dense.predictions, progress=False)
    t0 = time.perf_counter()
    tuned, frep = finetune(pruned, train, steps=args.steps, batch=args.batch, lr=args.lr,
                           loss=args.loss, dense=mod if args.loss == "distill" else None)
    seconds = time.perf_counter() - t0
    ft = evaluate(tuned, test, reference=dense.predictions, progress=False)
    out = {
        "benchmark": "finetune", "model": "mnist_resnet", "ratio": args.ratio,
        "macs_fraction": rep.macs_fraction, "n": len(test), "top1_dense": dense.top1,
        "loss": args.loss, "top1_reconstructed": recon.top1, "top1_finetuned": ft.top1,
        "agreement_reconstructed": recon.agreement, "agreement_finetuned": ft.agreement,
        "finetune": frep.to_dict(), "finetune_seconds": round(seconds, 1),
        "note": "shared 2-core machine, other agents loading it (times indicative)",
    }
    print(f"MACs {rep.macs_fraction:.3f}: dense {dense.top1:.4f}, reconstructed "
          f"{recon.top1:.4f}, + fine-tune ({args.steps} steps x {args.batch}) {ft.top1:.4f}; "
          f"loss {frep.mean_loss(True):.4f} -> {frep.mean_loss(False):.4f}; {seconds:.0f} s")
    if args.json:
        atomic_write_text(args.json, json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
