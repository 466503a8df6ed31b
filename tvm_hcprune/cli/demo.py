"""``hcprune demo``: prune the bundled model at several ratios and print what it buys."""

from __future__ import annotations

import json

import numpy as np

from ..errors import HCPruneError
from ..utils import atomic_write_text

DEFAULT_RATIOS = (0.25, 0.5, 0.75)


def register(sub) -> None:
    p = sub.add_parser("demo", help="prune the bundled MNIST ResNet at a few ratios and "
                                    "print channels, MACs, params, latency and accuracy")
    p.add_argument("--ratios", type=lambda s: [float(r) for r in s.split(",")],
                   default=list(DEFAULT_RATIOS), help="comma-separated prune ratios")
    p.add_argument("--criterion", default="l2")
    p.add_argument("--align", type=int, default=None,
                   help="channel multiple (default: the host CPU's profile)")
    p.add_argument("--samples", type=int, default=300,
                   help="held-out MNIST digits used for accuracy and agreement")
    p.add_argument("--repeat", type=int, default=20, help="timed runs per latency figure")
    p.add_argument("--json", dest="json_path", default=None, help="also write the table here")
    p.set_defaults(func=run)


def _latency_ms(ex, x, repeat):
    import tvm
    from tvm import relax

    dev = tvm.cpu()
    vm = relax.VirtualMachine(ex, dev)
    arg = tvm.runtime.tensor(x, dev)
    vm["main"](arg)  # warm-up (first-run allocation)
    timer = vm.time_evaluator("main", dev, number=max(1, repeat), repeat=5)
    # min over repeats: the least disturbed estimate on a shared machine
    return float(np.min(timer(arg).results) * 1e3), vm


def run(args) -> int:
    import tvm_hcprune as hc
    from tvm_hcprune.datasets import mnist_test
    from tvm_hcprune.evaluation import evaluate
    from tvm_hcprune.models import bundled_model
    from tvm_hcprune.testing import masked_reference

    for r in args.ratios:
        if not 0 <= r < 1:
            raise HCPruneError(f"--ratios: {r} is outside [0, 1)")
    path = bundled_model("mnist_resnet")
    print(f"model: {path.name} (bundled; trained on real MNIST digits)")
    mod = hc.load_onnx(path)
    graph = hc.analyze(mod)
    data = mnist_test(args.samples)
    x0 = data.samples[0]
    dense_ex = hc.build(mod)
    dense_ms, _ = _latency_ms(dense_ex, x0, args.repeat)
    dense_eval = evaluate(dense_ex, data, progress=False)
    rows = []
    for ratio in args.ratios:
        pruned, report = hc.prune(mod, ratio=ratio, criterion=args.criterion, align=args.align,
                                  graph=graph)
        ex = hc.build(pruned)
        ms, vm = _latency_ms(ex, x0, args.repeat)
        ev = evaluate(ex, data, reference=dense_eval.predictions, progress=False)
        # the oracle: pruned == dense with removed channels zeroed at their consumers
        ref = hc.build(masked_reference(mod, report.plan))
        _, ref_vm = _latency_ms(ref, x0, 1)
        import tvm

        a = vm["main"](tvm.runtime.tensor(x0, tvm.cpu())).numpy()
        b = ref_vm["main"](tvm.runtime.tensor(x0, tvm.cpu())).numpy()
        kept = sum(g.after for g in report.groups)
        total = sum(g.before for g in report.groups)
        rows.append({
            "ratio": ratio, "channels": kept, "channels_dense": total,
            "macs": report.macs_after, "macs_dense": report.macs_before,
            "macs_fraction": report.macs_fraction, "params": report.params_after,
            "params_dense": report.params_before, "latency_ms": ms,
            "latency_dense_ms": dense_ms, "speedup": dense_ms / ms,
            "top1": ev.top1, "top1_dense": dense_eval.top1, "agreement": ev.agreement,
            "oracle_max_abs_diff": float(np.abs(a - b).max()),
            "prune_seconds": report.seconds, "align": report.align,
        })
    _print_table(rows, len(data))
    if args.json_path:
        atomic_write_text(args.json_path, json.dumps({"model": path.name, "rows": rows},
                                                     indent=1))
        print(f"wrote {args.json_path}")
    return 0


def _print_table(rows, n):
    head = (f"{'ratio':>5} {'channels':>11} {'MMACs':>15} {'params (k)':>15} "
            f"{'latency ms':>17} {'speedup':>7} {'top-1':>13} {'agree':>6} {'oracle':>8}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['ratio']:5.2f} {r['channels']:5d}/{r['channels_dense']:<5d} "
              f"{r['macs'] / 1e6:6.2f}/{r['macs_dense'] / 1e6:<8.2f} "
              f"{r['params'] / 1e3:6.1f}/{r['params_dense'] / 1e3:<8.1f} "
              f"{r['latency_ms']:7.3f}/{r['latency_dense_ms']:<9.3f} {r['speedup']:6.2f}x "
              f"{r['top1'] * 100:5.1f}/{r['top1_dense'] * 100:<6.1f} "
              f"{r['agreement'] * 100:5.1f}% {r['oracle_max_abs_diff']:8.1e}")
    print(f"(latency: pruned/dense on this CPU; top-1: pruned/dense on {n} held-out MNIST "
          "digits, no fine-tuning; agree: top-1 agreement with dense; oracle: max |pruned - "
          "masked dense|)")
