"""
A PyTorch model end to end: import, prune, check, compile, compare with torch
=============================================================================

PyTorch users do not need an ONNX export: ``tvm_hcprune.load_torch`` takes a
``torch.nn.Module`` (or a ``torch.export`` program) through ``torch.export`` and TVM's
``from_exported_program``. Run::

    python tutorials/pytorch_end_to_end.py [--quick] [--out-dir DIR]

``--quick`` (or ``HCPRUNE_TUTORIAL_QUICK=1``, which the test suite sets) uses a 32x32
input; the real setting is a 224x224 ResNet-18. Needs the torch extra:
``pip install -e .[torch]``.
"""

# %%
# Set-up
# ------
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import tvm_hcprune as hc
from tvm_hcprune.testing import masked_reference, run_relax
from tvm_hcprune.testing.torch_models import resnet18


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="PyTorch model end to end")
    ap.add_argument("--quick", action="store_true",
                    default=bool(os.environ.get("HCPRUNE_TUTORIAL_QUICK")))
    ap.add_argument("--out-dir", default=None)
    args = ap.parse_args(argv)
    out_dir = Path(args.out_dir or tempfile.mkdtemp(prefix="hcprune-tutorial-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    image = 32 if args.quick else 224

    # %%
    # 1. A torch model and example inputs
    # -----------------------------------
    # Any ``nn.Module`` that ``torch.export`` can export. Here a ResNet-18 written in plain
    # ``torch.nn`` with random weights; use your trained model instead. The example input
    # fixes the static shapes that the pruner and the compiled code use.
    model = resnet18(num_classes=10, seed=0)
    x = torch.randn(1, 3, image, image)
    t0 = time.perf_counter()
    mod = hc.load_torch(model, (x,))
    print(f"imported in {time.perf_counter() - t0:.1f} s; input {mod['main'].params[0].ty}")

    # %%
    # 2. The same module TVM sees, the same result torch computes
    # ------------------------------------------------------------
    with torch.no_grad():
        ref = model(x).numpy()
    dense = run_relax(mod, [x.numpy()], build=hc.build)
    err = float(np.abs(dense - ref).max() / np.abs(ref).max())
    print(f"tvm_hcprune build vs torch: max relative difference {err:.1e}")
    assert err < 1e-4

    # %%
    # 3. Prune: the analysis sees residual adds and the pooling stem as torch wrote them
    # -----------------------------------------------------------------------------------
    pruned, report = hc.prune(mod, ratio=0.5)
    print(report.summary())

    # %%
    # 4. The oracle: pruned == original with the removed channels zeroed at consumers
    # -------------------------------------------------------------------------------
    got = run_relax(pruned, [x.numpy()], build=hc.build)
    want = run_relax(masked_reference(mod, report.plan), [x.numpy()])
    diff = float(np.abs(got - want).max() / np.abs(want).max())
    print(f"pruned vs masked reference: max relative difference {diff:.1e}")
    assert diff < 1e-4

    # %%
    # 5. Deploy: a library, or the CLI from a saved program
    # -----------------------------------------------------
    # ``hc.build(...).export_library`` writes a library ``tvm.runtime.load_module`` loads;
    # from the shell, ``torch.export.save(ep, "model.pt2")`` then
    # ``hcprune compile model.pt2 --prune-ratio 0.5 -o model.so`` does the same.
    lib = out_dir / "resnet18_pruned.so"
    hc.build(pruned).export_library(str(lib))
    print(f"wrote {lib} ({lib.stat().st_size / 1e6:.1f} MB); MACs {report.macs_fraction:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
