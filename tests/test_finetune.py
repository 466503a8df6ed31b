"""Fine-tuning inside TVM with relax.training: the backbone oracle and a short run."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.relax.frontend.onnx import from_onnx

import tvm_hcprune as hc
from tvm_hcprune.errors import HCPruneError
from tvm_hcprune.recovery.finetune import finetune, to_backbone
from tvm_hcprune.recovery.runner import compile_module, runner_for
from tvm_hcprune.testing import onnx_models


@pytest.fixture(scope="module")
def tiny():
    model = onnx_models.small_resnet(width=8, image=8, num_classes=4)
    mod = from_onnx(model)
    graph = hc.analyze(mod)
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((48, 1, 3, 8, 8)).astype("float32")
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ys = np.array([int(np.argmax(sess.run(None, {"input": x})[0])) for x in xs],
                  np.int64)  # the dense model's labels
    pruned, _ = hc.prune(mod, ratio=0.5, align=1, graph=graph)
    return mod, pruned, xs, ys


def test_backbone_at_batch_3_equals_the_module_per_sample(tiny):
    """The widened, parameterised backbone (batch norm folded) computes what the pruned
    module computes, sample by sample."""
    _, pruned, xs, _ = tiny
    backbone, folded, params, sites = to_backbone(pruned, batch=3)
    assert len(params) == len(sites) > 0
    assert "batch_norm" not in backbone["backbone"].script(show_meta=False)
    vm = relax.VirtualMachine(compile_module(backbone), tvm.cpu())
    dev = tvm.cpu()
    out = vm["backbone"](tvm.runtime.tensor(xs[:3, 0], dev),
                         *[tvm.runtime.tensor(p, dev) for p in params]).numpy()
    ref = runner_for(pruned)
    want = np.concatenate([ref(x) for x in xs[:3]])
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_short_finetune_lowers_loss_and_keeps_accuracy(tiny):
    """A few Adam steps on fixed-seed data: the training loss falls, and top-1 on the
    training data does not fall; the result is a finite batch-1 module."""
    _, pruned, xs, ys = tiny
    before = hc.evaluate(pruned, (xs, ys), progress=False)
    tuned, rep = finetune(pruned, (xs, ys), steps=24, batch=8, lr=3e-3, seed=0,
                          progress=False)
    assert len(rep.losses) == 24 and all(np.isfinite(rep.losses))
    assert rep.mean_loss(False, 6) < rep.mean_loss(True, 6)
    after = hc.evaluate(tuned, (xs, ys), progress=False)
    assert after.nonfinite == 0
    assert after.top1 >= before.top1, (before.top1, after.top1)


def test_bad_input(tiny):
    _, pruned, xs, ys = tiny
    with pytest.raises(HCPruneError, match="loss"):
        finetune(pruned, (xs, ys), loss="hinge")
    with pytest.raises(HCPruneError, match="dense"):
        finetune(pruned, (xs, ys), loss="distill")
    with pytest.raises(HCPruneError, match="batch"):
        finetune(pruned, (xs[:4], ys[:4]), batch=8)
    with pytest.raises(HCPruneError, match="optimizer"):
        finetune(pruned, (xs, ys), optimizer="lbfgs")
