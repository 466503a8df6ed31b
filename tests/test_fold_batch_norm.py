"""FoldBatchNorm: inference batch_norm after conv2d (+bias) folds away, numerically exact up
to float32 rounding; anything else is left alone."""

import numpy as np
import pytest
import tvm
from tvm import relax

from tvm_hcprune.transform import FoldBatchNorm

TARGET = tvm.target.Target({"kind": "llvm", "mcpu": "haswell"})


def _bn_params(rng, c):
    return [relax.const(v.astype("float32")) for v in (
        rng.uniform(0.5, 2.0, c), rng.standard_normal(c), rng.standard_normal(c),
        rng.uniform(0.1, 3.0, c))]


def conv_bn_module(with_bias=True, layout="NCHW", groups=1, training=False, extra_use=False):
    rng = np.random.default_rng(7)
    ic, oc = 6, 6 if groups > 1 else 10
    if layout == "NCHW":
        xshape, kl, axis, bshape = (1, ic, 9, 9), "OIHW", 1, (1, oc, 1, 1)
        w = rng.standard_normal((oc, ic // groups, 3, 3))
    else:
        xshape, kl, axis, bshape = (1, 9, 9, ic), "HWIO", 3, (1, 1, 1, oc)
        w = rng.standard_normal((3, 3, ic // groups, oc))
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(xshape, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, relax.const(w.astype("float32")), padding=1,
                                           groups=groups, data_layout=layout, kernel_layout=kl))
            conv_out = y
            if with_bias:
                y = bb.emit(relax.op.add(y, relax.const(
                    rng.standard_normal(bshape).astype("float32"))))
            bn = bb.emit(relax.op.nn.batch_norm(y, *_bn_params(rng, oc), axis=axis,
                                                epsilon=1e-3, training=training))
            z = bb.emit(relax.op.nn.relu(relax.TupleGetItem(bn, 0)))
            if extra_use:
                z = bb.emit(relax.op.add(z, conv_out))
            out = bb.emit_output(z)
        bb.emit_func_output(out)
    return bb.get()


def _run(mod, x):
    vm = relax.VirtualMachine(tvm.compile(mod, TARGET), tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy()


def _count_bn(mod):
    return mod.script().count("R.nn.batch_norm")


@pytest.mark.parametrize(
    ("with_bias", "layout", "groups"),
    [(True, "NCHW", 1), (False, "NCHW", 1), (True, "NHWC", 1), (False, "NCHW", 6)],
)
def test_fold_removes_bn_and_keeps_outputs(with_bias, layout, groups):
    """conv(+bias)+BN becomes conv+add with the same outputs (rtol 1e-5)."""
    mod = conv_bn_module(with_bias, layout, groups)
    folded = FoldBatchNorm()(mod)
    assert relax.analysis.check_well_formed(folded)
    assert _count_bn(mod) == 1 and _count_bn(folded) == 0
    shape = [int(s) for s in mod["main"].params[0].ty.shape]
    x = np.random.default_rng(3).standard_normal(shape).astype("float32")
    np.testing.assert_allclose(_run(folded, x), _run(mod, x), rtol=1e-5, atol=1e-5)


def test_training_mode_and_shared_conv_are_left_alone():
    """BN in training mode, or after a conv whose output has another user, is not folded."""
    assert _count_bn(FoldBatchNorm()(conv_bn_module(training=True))) == 1
    assert _count_bn(FoldBatchNorm()(conv_bn_module(with_bias=False, extra_use=True))) == 1


def test_onnx_resnet_block_folds_every_bn():
    """All unfused BNs of the ONNX small ResNet fold; outputs match onnxruntime."""
    import onnxruntime as ort
    from tvm.relax.frontend.onnx import from_onnx

    from tvm_hcprune.testing import onnx_models

    model = onnx_models.small_resnet()
    mod = relax.transform.FoldConstant()(from_onnx(model))
    folded = FoldBatchNorm()(mod)
    assert _count_bn(mod) > 0 and _count_bn(folded) == 0
    shape = [int(s) for s in mod["main"].params[0].ty.shape]
    x = np.random.default_rng(0).standard_normal(shape).astype("float32")
    ref = ort.InferenceSession(model.SerializeToString(),
                               providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.testing.assert_allclose(_run(folded, x), ref, rtol=1e-4, atol=1e-4)
