"""
Compile, tune and run an ONNX model from the command line, tvmc-style
=====================================================================

``hcprune`` keeps tvmc's flag names (``--target``, ``-o``, ``--input-shapes``,
``--tuning-records``, ``--inputs``, ``--print-time``). This tutorial runs the commands a
user types, each in its own process, and checks the result against onnxruntime. Run::

    python tutorials/cli_compile_tune_run.py [--quick] [--out-dir DIR]

``--quick`` (or ``HCPRUNE_TUTORIAL_QUICK=1``) tunes 2 trials per task on a 32x32 model;
real tuning is ``--trials 2000 --trials-per-task 64`` on the deployed input size.
"""

# %%
# Set-up
# ------
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from tvm_hcprune.testing import onnx_models


def hcprune(*args: str) -> str:
    """Run ``hcprune ARGS`` (as ``python -m tvm_hcprune.cli``) and return its stdout."""
    cmd = [sys.executable, "-m", "tvm_hcprune.cli", *args]
    print("$ hcprune " + " ".join(args))
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"hcprune failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.stdout


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="hcprune from the command line")
    ap.add_argument("--quick", action="store_true",
                    default=bool(os.environ.get("HCPRUNE_TUTORIAL_QUICK")))
    ap.add_argument("--out-dir", default=None)
    args = ap.parse_args(argv)
    d = Path(args.out_dir or tempfile.mkdtemp(prefix="hcprune-tutorial-"))
    d.mkdir(parents=True, exist_ok=True)
    image = 32 if args.quick else 224
    trials = ["--trials", "16", "--trials-per-task", "2"] if args.quick else \
        ["--trials", "2000", "--trials-per-task", "64"]

    # %%
    # 1. An ONNX model and an input file
    # ----------------------------------
    # Here a ResNet-shaped model with a dynamic batch dimension; ``--input-shapes`` pins
    # it (the syntax is tvmc's: ``name:[d0,d1,...]``, several separated by spaces).
    model = onnx_models.small_resnet(width=16, image=image, num_classes=10)
    onnx.save(model, d / "model.onnx")
    x = np.random.default_rng(0).standard_normal((1, 3, image, image)).astype("float32")
    np.savez(d / "in.npz", input=x)
    target = "llvm"  # the host CPU (its mcpu and physical cores); or e.g. "llvm -mcpu=znver3"
    shapes = ["--input-shapes", f"input:[1,3,{image},{image}]"]

    # %%
    # 2. Compile, pruned to half the channels
    # ---------------------------------------
    # Progress goes to stderr; the library is written atomically.
    hcprune("compile", str(d / "model.onnx"), "--target", target, *shapes,
            "--prune-ratio", "0.5", "-o", str(d / "model.so"))

    # %%
    # 3. Tune the same pruned model, then compile with the records
    # ------------------------------------------------------------
    # ``tune`` keeps a record only where it beats tvm_hcprune's own schedule rules measured
    # side by side, so a tuned build is never slower than an untuned one as measured.
    hcprune("tune", str(d / "model.onnx"), "--target", target, *shapes,
            "--prune-ratio", "0.5", *trials, "-o", str(d / "db.json"))
    hcprune("compile", str(d / "model.onnx"), "--target", target, *shapes,
            "--prune-ratio", "0.5", "--tuning-records", str(d / "db.json"),
            "-o", str(d / "model_tuned.so"))

    # %%
    # 4. Run, time, and compare with onnxruntime on the masked dense model
    # --------------------------------------------------------------------
    out = hcprune("run", str(d / "model_tuned.so"), "--inputs", str(d / "in.npz"),
                  "--outputs", str(d / "out.npz"), "--print-time", "--repeat", "5")
    print(out)
    got = np.load(d / "out.npz")["output_0"]
    dense = ort.InferenceSession(str(d / "model.onnx"), providers=["CPUExecutionProvider"])
    ref = dense.run(None, {"input": x})[0]
    print(f"pruned output shape {got.shape} (dense {ref.shape}); the pruned model differs "
          "from the dense one by design: `hcprune prune` exports the pruned ONNX to compare")
    assert got.shape == ref.shape and np.isfinite(got).all()

    # %%
    # 5. The pruned model as ONNX, checked against TVM by the command itself
    # ----------------------------------------------------------------------
    hcprune("prune", str(d / "model.onnx"), "--prune-ratio", "0.5", *shapes,
            "-o", str(d / "pruned.onnx"))
    pruned = ort.InferenceSession(str(d / "pruned.onnx"), providers=["CPUExecutionProvider"])
    ref_pruned = pruned.run(None, {"input": x})[0]
    diff = float(np.abs(got - ref_pruned).max() / np.abs(ref_pruned).max())
    print(f"hcprune run vs onnxruntime on the pruned ONNX: max relative difference {diff:.1e}")
    assert diff < 1e-4
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
