"""CPU conv rules on NHWC (TFLite layouts: HWIO weights, HWOI depthwise) against TVM's
default pipeline."""

import numpy as np
import pytest
import tvm
from tvm import relax

from tvm_hcprune.backend.pipeline import get_pipeline, scheduled_kernels

TARGET = tvm.target.Target({"kind": "llvm", "mcpu": "haswell", "num-cores": 2})


def nhwc_module(ic, oc, hw, k, stride, pad, groups, kernel_layout):
    rng = np.random.default_rng(ic + 3 * oc + k)
    oihw = rng.standard_normal((oc, ic // groups, k, k)).astype("float32")
    w = np.ascontiguousarray(np.transpose(oihw, ["OIHW".index(a) for a in kernel_layout]))
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, *hw, ic), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, relax.const(w), strides=stride, padding=pad,
                                           groups=groups, data_layout="NHWC",
                                           kernel_layout=kernel_layout))
            y = bb.emit(relax.op.add(y, relax.const(rng.standard_normal(oc).astype("float32"))))
            y = bb.emit(relax.op.clip(y, 0.0, 6.0))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get()


def _run(mod, pipeline, x):
    vm = relax.VirtualMachine(tvm.compile(mod, TARGET, relax_pipeline=pipeline), tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy()


@pytest.mark.parametrize(
    ("ic", "oc", "hw", "k", "stride", "pad", "groups", "kl"),
    [
        (3, 10, (13, 11), 3, 2, 1, 1, "HWIO"),  # odd channels, strided, padded
        (16, 24, (7, 7), 1, 1, 0, 1, "HWIO"),  # 1x1 pointwise
        (12, 12, (9, 9), 3, 1, 1, 12, "HWOI"),  # depthwise as TFLite imports it
        (8, 8, (1, 1), 3, 1, 1, 8, "HWOI"),  # depthwise, 1x1 spatial
        (6, 9, (5, 5), 3, 1, 1, 3, "OHWI"),  # grouped, another weight layout
    ],
)
def test_nhwc_conv_matches_default(ic, oc, hw, k, stride, pad, groups, kl):
    """NHWC convs go through the blocked kernels and match TVM's default (rtol 1e-5)."""
    mod = nhwc_module(ic, oc, hw, k, stride, pad, groups, kl)
    x = np.random.default_rng(5).standard_normal((1, *hw, ic)).astype("float32")
    ref = _run(mod, relax.get_default_pipeline(TARGET), x)
    ours = _run(mod, get_pipeline(TARGET, strict=True), x)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(ref).max()))
    kernels = scheduled_kernels(mod, TARGET)
    assert len(kernels) == 1, "the conv must take tvm_hcprune's kernel"
    assert "tirx.is_scheduled" in next(iter(kernels.values())).script()
