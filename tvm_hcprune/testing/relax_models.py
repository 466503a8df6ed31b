"""Small Relax modules built directly with ``BlockBuilder`` (no importer) for kernel tests
and benchmarks."""

from __future__ import annotations

import numpy as np
from tvm import relax

__all__ = ["blocked_conv3x3", "inverted_residual"]


def blocked_conv3x3(ic: int, oc: int, hw, epilogue: str = "bias_relu", batch: int = 1):
    """A 1x1 conv + ReLU (so the next conv reads the channel-blocked layout, as inside a
    network), then a 3x3, stride-1, pad-1 conv with ``epilogue``: ``bias_relu``,
    ``residual`` (adds the 1x1 conv's output; needs ``oc == ic``) or ``hswish``.

    Parameters
    ----------
    ic, oc : int
        Channels of the 3x3 conv.
    hw : int or (int, int)
        Image height and width.
    epilogue : str
    batch : int

    Returns
    -------
    tvm.IRModule
        ``main(x: [batch, ic, h, w])`` with seeded random constant weights.

    Examples
    --------
    >>> mod = blocked_conv3x3(32, 32, 56)
    >>> [int(d) for d in mod["main"].params[0].ty.shape]
    [1, 32, 56, 56]
    """
    h, w = (hw, hw) if isinstance(hw, int) else hw
    rng = np.random.default_rng(ic * 7 + oc)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((batch, ic, h, w), "float32"))
    w1 = rng.standard_normal((ic, ic, 1, 1)).astype("float32") * 0.3
    w3 = rng.standard_normal((oc, ic, 3, 3)).astype("float32") * 0.2
    b = rng.standard_normal((1, oc, 1, 1)).astype("float32")
    with bb.function("main", [x]):
        with bb.dataflow():
            a = bb.emit(relax.op.nn.relu(relax.op.nn.conv2d(x, relax.const(w1))))
            y = bb.emit(relax.op.nn.conv2d(a, relax.const(w3), padding=1))
            if epilogue == "bias_relu":
                y = bb.emit(relax.op.nn.relu(relax.op.add(y, relax.const(b))))
            elif epilogue == "residual":
                y = bb.emit(relax.op.add(y, a))
            elif epilogue == "hswish":
                t = bb.emit(relax.op.clip(relax.op.add(y, relax.const(3.0)), 0.0, 6.0))
                y = bb.emit(relax.op.divide(relax.op.multiply(y, t), relax.const(6.0)))
            else:
                raise ValueError(f"unknown epilogue {epilogue!r}")
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get()


def inverted_residual(ic: int, expand: int, hw, stride: int = 1, kernel: int = 3,
                      batch: int = 1, share_expansion: bool = False,
                      activation: str = "relu6"):
    """A 1x1 conv + ReLU (so the block reads the channel-blocked layout, as inside a
    network), then a MobileNetV2 inverted-residual block: 1x1 expansion to ``expand``
    channels + bias + ReLU6, ``kernel`` x ``kernel`` depthwise conv (``stride``, same
    padding) + bias + ReLU6, 1x1 projection back to ``ic`` channels + bias, plus the
    residual when ``stride == 1``.

    Parameters
    ----------
    ic, expand : int
        Block input/output channels and expanded channels.
    hw : int or (int, int)
        Image height and width.
    stride, kernel, batch : int
    share_expansion : bool
        Also add the expanded tensor's mean to the output (a second use of the expansion,
        which keeps it from merging with the depthwise conv).
    activation : str
        After the expansion and the depthwise conv: ``relu6`` or ``hswish``
        (``x * relu6(x + 3) / 6``, which reads its input twice).

    Returns
    -------
    tvm.IRModule
        ``main(x: [batch, ic, h, w])`` with seeded random constant weights.

    Examples
    --------
    >>> mod = inverted_residual(16, 48, 14)
    >>> [int(d) for d in mod["main"].params[0].ty.shape]
    [1, 16, 14, 14]
    """
    h, w = (hw, hw) if isinstance(hw, int) else hw
    rng = np.random.default_rng(ic * 5 + expand + stride)

    def const(*shape, scale=0.3):
        return relax.const(rng.standard_normal(shape).astype("float32") * scale)

    op = relax.op

    def act(t):
        if activation == "relu6":
            return bb.emit(op.clip(t, 0.0, 6.0))
        if activation == "hswish":
            t = bb.emit(t)
            gate = bb.emit(op.clip(op.add(t, relax.const(3.0)), 0.0, 6.0))
            return bb.emit(op.divide(op.multiply(t, gate), relax.const(6.0)))
        raise ValueError(f"unknown activation {activation!r}")

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((batch, ic, h, w), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            a = bb.emit(op.nn.relu(op.nn.conv2d(x, const(ic, ic, 1, 1))))
            e = act(op.add(op.nn.conv2d(a, const(expand, ic, 1, 1)), const(1, expand, 1, 1)))
            d = bb.emit(op.nn.conv2d(e, const(expand, 1, kernel, kernel), strides=stride,
                                     padding=kernel // 2, groups=expand))
            d = act(op.add(d, const(1, expand, 1, 1)))
            y = bb.emit(op.add(op.nn.conv2d(d, const(ic, expand, 1, 1, scale=0.1)),
                               const(1, ic, 1, 1)))
            if stride == 1:
                y = bb.emit(op.add(y, a))
            if share_expansion:
                y = bb.emit(op.add(y, op.mean(e, axis=[1, 2, 3], keepdims=True)))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get()
