"""Where the output (O) and input (I) channels live in each weighted op's weight, as data.

One table read by the handlers, batch-norm folding, the criteria and the reconstruction,
instead of each re-deriving it from the op's attributes.

Examples
--------
>>> weight_axes(conv_call)          # doctest: +SKIP
(0, 1)                               # OIHW
>>> w_oi, back = layer_weight_oi(matmul_call)  # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np

__all__ = ["WEIGHT_LAYOUT", "layer_weight_oi", "weight_axes"]

#: op name -> where the weight's layout comes from: the name of the attribute holding a
#: layout string (``O``/``I`` letters), or a fixed layout string for ops without one
#: (``matmul(x, W)`` with ``W [K, N]``: ``I`` then ``O``).
WEIGHT_LAYOUT = {
    "relax.nn.conv2d": "attr:kernel_layout",
    "relax.nn.conv2d_transpose": "attr:kernel_layout",
    "relax.matmul": "IO",
}


def _layout(call) -> str:
    spec = WEIGHT_LAYOUT[call.op.name]
    if spec.startswith("attr:"):
        return str(getattr(call.attrs, spec[5:]))
    return spec


def weight_axes(call) -> tuple[int, int]:
    """``(o_axis, i_axis)`` of the weight (argument 1) of a weighted op's ``call``."""
    layout = _layout(call)
    return layout.index("O"), layout.index("I")


def layer_weight_oi(call) -> tuple[np.ndarray, callable]:
    """A conv2d/matmul weight as ``[O, I, ...]`` and the function that converts back.

    conv2d: the kernel layout (``OIHW``, ``HWIO``, ``OHWI``...) is read from the attributes
    and the result is ``OIHW``; matmul ``x @ W`` with ``W [K, N]``: ``W.T`` (``[N, K]``).
    """
    w = call.args[1].value.numpy()
    layout = _layout(call)
    perm = [layout.index(c) for c in "OIHW" if c in layout]
    inv = list(np.argsort(perm))
    return np.transpose(w, perm), lambda a: np.ascontiguousarray(np.transpose(a, inv))
