"""``hcprune prune model.onnx --prune-ratio R -o pruned.onnx``: prune an ONNX model and
write the pruned model back as ONNX (optionally calibrated and reconstructed)."""

from __future__ import annotations

import numpy as np

import tvm_hcprune as hc
from tvm_hcprune.cli.budget import (
    add_budget_arguments,
    add_calibration_arguments,
    add_plot_argument,
    add_report_argument,
    calibration_kwargs,
    export_compiler,
    latency_model_arg,
    parse_budget,
    plot_figures,
    plot_latency_model,
    sparse_arg,
    write_figures,
    write_report,
)
from tvm_hcprune.cli.compile import add_target_argument, parse_input_shapes, resolve_target
from tvm_hcprune.errors import HCPruneError
from tvm_hcprune.frontend.load import load_onnx_graph
from tvm_hcprune.planning.export_onnx import apply_to_onnx
from tvm_hcprune.recovery.runner import module_input, run_relax
from tvm_hcprune.utils import atomic_write_bytes


def register(sub) -> None:
    p = sub.add_parser("prune", help="prune an ONNX model and export the pruned ONNX model")
    p.add_argument("model", help="input .onnx file")
    p.add_argument("--prune-ratio", type=float, default=None,
                   help="fraction of channels removed per prunable group, in [0, 1) (or "
                        "give a budget)")
    add_target_argument(p)
    add_budget_arguments(p)
    add_report_argument(p)
    add_plot_argument(p)
    p.add_argument("-o", "--output", required=True, help="pruned .onnx file to write")
    p.add_argument("--plan-out", default=None, help="also write the PrunePlan JSON here")
    p.add_argument("--input-shapes", default=None,
                   help='static input shapes, tvmc syntax: "input:[1,3,224,224]" (several '
                        "separated by spaces)")
    p.add_argument("--criterion", default="l2", help="l1, l2, fpgm, activation, apoz, thinet...")
    p.add_argument("--align", type=int, default=None,
                   help="channel multiple (default: the host CPU's profile)")
    add_calibration_arguments(p)
    p.add_argument("--reconstruct", action="store_true",
                   help="re-fit pruned layers by least squares (the default with "
                        "--calibration; needs it)")
    p.add_argument("--no-verify", action="store_true",
                   help="skip the onnxruntime vs TVM check of the exported model")
    p.set_defaults(func=run)




def verify(onnx_model, pruned_mod, rtol=1e-4, atol=1e-5) -> float:
    """Max |onnxruntime(pruned ONNX) - TVM(pruned module)| on one random input; raises
    HCPruneError when they differ beyond ``rtol``/``atol``."""
    import onnxruntime as ort  # deferred: onnxruntime is slow to import

    name, shape, dtype = module_input(pruned_mod)
    x = np.random.default_rng(1).standard_normal(shape).astype(dtype)
    sess = ort.InferenceSession(onnx_model.SerializeToString(),
                                providers=["CPUExecutionProvider"])
    a = sess.run(None, {sess.get_inputs()[0].name: x})
    b = run_relax(pruned_mod, [x])
    b = b if isinstance(b, list) else [b]
    worst = 0.0
    for u, v in zip(a, b, strict=False):
        v = np.asarray(v)
        if u.shape != v.shape or not np.allclose(u, v, rtol=rtol, atol=atol):
            diff = np.abs(u - v).max() if u.shape == v.shape else f"shape {u.shape} vs {v.shape}"
            raise HCPruneError("the exported ONNX model does not reproduce the pruned TVM "
                               f"module (max diff {diff}); not writing it - please report "
                               "this graph")
        worst = max(worst, float(np.abs(u - v).max()))
    return worst


def run(args) -> int:
    budget = parse_budget(args.latency_budget, args.macs_budget)
    if (budget is None) == (args.prune_ratio is None):
        raise HCPruneError("give either --prune-ratio or a budget (--latency-budget, "
                           "--macs-budget)")
    if budget is None and not 0 <= args.prune_ratio < 1:
        raise HCPruneError(f"--prune-ratio {args.prune_ratio} is outside [0, 1)")
    if args.reconstruct and args.calibration is None:
        raise HCPruneError("--reconstruct needs calibration data: add --calibration PATH "
                           "(.npz/.npy arrays or a folder of images)")
    if args.reconstruct and args.no_reconstruct:
        raise HCPruneError("give --reconstruct or --no-reconstruct, not both")
    target = resolve_target(args)  # the latency table's target and the default --align
    export_compiler(args)  # a cross compiler that is not found fails before the slow work
    onnx_model, mod = load_onnx_graph(args.model, parse_input_shapes(args.input_shapes))
    graph = hc.analyze(mod)
    data = calibration_kwargs(args, graph.mod, print)
    how = ({"budget": budget, "latency_model": latency_model_arg(args, target)} if budget
           else {"ratio": args.prune_ratio})
    if budget is not None and args.prune_first_conv:
        how["prune_first_conv"] = True
    how.update(sparse_arg(args, budget))
    pruned, report = hc.prune(mod, criterion=args.criterion, align=args.align, graph=graph,
                              target=target, progress=True, **data, **how)
    figures = {}
    if args.plot:
        sweep = {"criterion": args.criterion, "align": args.align, "target": target, **data,
                 **{k: v for k, v in how.items() if k != "budget" and k != "ratio"}}
        figures = plot_figures(mod, graph, report, sweep,
                               plot_latency_model(args, graph, report, target), target)
    print(report.summary())
    if report.reconstruction is not None:
        print(report.reconstruction.summary())
    out = apply_to_onnx(onnx_model, graph, report.plan, pruned)
    if not args.no_verify:
        diff = verify(out, pruned)
        print(f"verified: onnxruntime on the pruned ONNX == pruned TVM module "
              f"(max |diff| {diff:.2e})")
    atomic_write_bytes(args.output, out.SerializeToString())
    print(f"wrote {args.output}")
    if args.plan_out:
        report.plan.save(args.plan_out)
        print(f"wrote {args.plan_out}")
    if args.report:
        print(f"wrote {', '.join(write_report(args.report, report))}")
    for path in write_figures(args.plot, figures) if figures else []:
        print(f"wrote {path}")
    return 0
