"""Small Relax modules built directly with ``BlockBuilder`` (no importer) for kernel tests
and benchmarks."""

from __future__ import annotations

import numpy as np
from tvm import relax

__all__ = ["blocked_conv3x3"]


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
