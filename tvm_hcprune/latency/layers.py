"""The prunable layers of a model as stand-alone workloads: a conv2d or matmul with its
fused epilogue (batch norm, bias, activation, an identity residual add), rebuilt at any
input/output channel counts so that its kernel can be compiled and timed on its own."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

from tvm_hcprune.planning.budget import desc_kept_length
from tvm_hcprune.utils.relax import bindings, is_const, op_name, static_shape

__all__ = ["LayerSpec", "layer_specs", "layer_module"]

# ops copied into a layer's epilogue when they are the single user of the chain so far;
# FuseOps fuses element-wise/broadcast ops into the conv/matmul they follow
_EPILOGUE = {
    "relax.add", "relax.multiply", "relax.subtract", "relax.divide", "relax.nn.relu",
    "relax.clip", "relax.sigmoid", "relax.tanh", "relax.nn.silu", "relax.nn.gelu",
    "relax.nn.gelu_tanh", "relax.nn.leakyrelu", "relax.nn.relu6", "relax.minimum",
    "relax.maximum",
}
_LAYER_OPS = ("relax.nn.conv2d", "relax.matmul")
# part of every cache key: bump when layer_module builds a different program, the kernels
# change or the timing method changes (4: global-scope register tiles, padded dense tiles,
# per-round ratios in the model timings)
MEASURE_VERSION = 4


@dataclass
class LayerSpec:
    """One prunable layer (a conv2d or matmul binding) and the epilogue fused after it.

    Attributes
    ----------
    name : str
        The layer's binding name (e.g. ``lv12``).
    op : str
        ``relax.nn.conv2d`` or ``relax.matmul``.
    in_desc, out_desc : tuple or None
        Channel descriptors of the input-channel and output-channel axes (None: not
        prunable).
    in_axis, out_axis : int
        Channel axis of the data input and of the output.
    depthwise : bool
        Grouped conv with one group per channel (input and output widths move together).
    fixed : bool
        A layer whose widths cannot be rebuilt (grouped but not depthwise): timed dense only.
    """

    name: str
    op: str
    call: object
    in_desc: tuple | None
    out_desc: tuple | None
    in_axis: int
    out_axis: int
    depthwise: bool
    fixed: bool
    chain: list  # [(call, kind, arg)]: kind "bn", "get0", "unary", "const" or "residual",
    # arg the position of the value coming from the layer
    reads_model_input: bool = False  # its data is a parameter of main (not another kernel's)

    def in_groups(self, space_group) -> tuple:
        return _groups(self.in_desc, space_group)

    def out_groups(self, space_group) -> tuple:
        return _groups(self.out_desc, space_group)

    def lengths(self, space_group, widths) -> tuple[int, int]:
        """``(input channels, output channels)`` when group ``g`` keeps ``widths[g]``."""
        return (_length(self.in_desc, space_group, widths, self.in_full),
                _length(self.out_desc, space_group, widths, self.out_full))

    @property
    def in_full(self) -> int:
        return static_shape(self.call.args[0])[self.in_axis]

    @property
    def out_full(self) -> int:
        return self.out_shape[self.out_axis]

    @property
    def out_shape(self) -> list[int]:
        return self._out_shape

    def workload(self, cin: int, cout: int) -> str:
        """A key naming the layer's kernel at these widths (shapes, attributes, epilogue)."""
        parts = [MEASURE_VERSION, self.reads_model_input, self.op,
                 str(static_shape(self.call.args[0])), str(static_shape(
            self.call.args[1])), _attrs(self.call), cin, cout]
        for c, kind, _ in self.chain:
            parts.append((op_name(c) or kind, kind, _attrs(c),
                          [str(static_shape(a)) for a in getattr(c, "args", ())]))
        return hashlib.blake2b(json.dumps(parts, default=str).encode(),
                               digest_size=12).hexdigest()


def _attrs(call) -> str:
    attrs = getattr(call, "attrs", None)
    return "" if attrs is None else str(attrs)


def _groups(desc, space_group) -> tuple:
    if desc is None:
        return ()
    return tuple(sorted({space_group[s.space] for s in desc if s.space is not None}))


def _length(desc, space_group, widths, full) -> int:
    return full if desc is None else desc_kept_length(desc, space_group, widths)


def _desc_at(ctx, expr, axis):
    d = ctx.desc(expr)
    if d is None or axis >= len(d):
        return None
    return d[axis]


def layer_specs(graph) -> list[LayerSpec]:
    """The conv2d/matmul layers of ``graph.mod`` with their epilogues, in binding order."""
    ctx = graph.ctx
    func = graph.mod["main"]
    order, users = {}, {}
    for i, b in enumerate(bindings(func)):
        order[b.var] = i
        v = b.value
        args = list(v.args) if isinstance(v, relax.Call) else (
            [v.tuple_value] if isinstance(v, relax.TupleGetItem) else [])
        for a in args:
            if isinstance(a, relax.Var):
                users.setdefault(a, []).append(b)
    specs = []
    for b in bindings(func):
        call = b.value
        name = op_name(call) if isinstance(call, relax.Call) else None
        if name not in _LAYER_OPS or not is_const(call.args[1]):
            continue
        out_shape = static_shape(b.var)
        data_shape = static_shape(call.args[0])
        if out_shape is None or data_shape is None:
            continue
        if name == "relax.nn.conv2d":
            layout = str(call.attrs.data_layout)
            if len(data_shape) != 4 or "C" not in layout:
                continue
            in_axis = layout.index("C")
            out_axis = str(call.attrs.out_layout or layout).index("C")
            groups = int(call.attrs.groups)
            depthwise = groups > 1 and groups == data_shape[in_axis] == out_shape[out_axis]
            fixed = groups > 1 and not depthwise
        else:
            if len(static_shape(call.args[1])) != 2:
                continue
            in_axis, out_axis = len(data_shape) - 1, len(out_shape) - 1
            depthwise = fixed = False
        spec = LayerSpec(b.var.name, name, call, _desc_at(ctx, call.args[0], in_axis),
                         _desc_at(ctx, b.var, out_axis), in_axis, out_axis, depthwise, fixed,
                         _epilogue(b.var, users, order, out_shape))
        spec._out_shape = out_shape
        spec.reads_model_input = any(call.args[0].same_as(p) for p in func.params)
        specs.append(spec)
    # FuseOps fuses an add of two layers' outputs (a projection shortcut) into the layer
    # that comes first; the later layer's epilogue stops before it
    claimed = set()
    for spec in specs:
        for i, (c, kind, _at) in enumerate(spec.chain):
            if kind == "residual" and c in claimed:
                spec.chain = spec.chain[:i]
                break
            if kind == "residual":
                claimed.add(c)
    return specs


def _epilogue(var, users, order, shape) -> list:
    chain, cur = [], var
    while len(users.get(cur, ())) == 1:
        b = users[cur][0]
        v = b.value
        if isinstance(v, relax.TupleGetItem):
            if not chain or chain[-1][1] != "bn" or int(v.index) != 0:
                break
            chain.append((v, "get0", 0))
        elif isinstance(v, relax.Call) and op_name(v) == "relax.nn.batch_norm":
            if not all(is_const(a) for a in v.args[1:]):
                break
            chain.append((v, "bn", 0))
        elif isinstance(v, relax.Call) and op_name(v) in _EPILOGUE:
            pos = [i for i, a in enumerate(v.args) if isinstance(a, relax.Var) and a.same_as(cur)]
            if len(pos) != 1:
                break
            others = [a for i, a in enumerate(v.args) if i != pos[0]]
            if static_shape(b.var) != shape:
                break
            if all(is_const(a) for a in others):
                chain.append((v, "const" if others else "unary", pos[0]))
            elif (len(others) == 1 and isinstance(others[0], relax.Var)
                  and static_shape(others[0]) == shape):
                # an add of two branches; layer_specs gives it to the earlier layer only
                chain.append((v, "residual", pos[0]))
            else:
                break
        else:
            break
        cur = b.var
    return chain


def _slice_channels(arr: np.ndarray, axis: int | None, n: int) -> np.ndarray:
    if axis is None or axis < 0 or axis >= arr.ndim:
        return arr
    return np.take(arr, np.arange(n), axis=axis)


def layer_module(spec: LayerSpec, cin: int, cout: int, seed: int = 0) -> tuple:
    """``(IRModule, inputs)``: the layer with ``cin`` input and ``cout`` output channels.

    Weights are random (their values do not change a dense kernel's time); constants of the
    epilogue are cut to ``cout`` along the channel axis they broadcast over.
    """
    rng = np.random.default_rng(seed)
    call = spec.call
    data_shape = list(static_shape(call.args[0]))
    data_shape[spec.in_axis] = cin
    w_shape = list(static_shape(call.args[1]))
    if spec.op == "relax.nn.conv2d":
        klayout = str(call.attrs.kernel_layout)
        groups = cin if spec.depthwise else int(call.attrs.groups)
        w_shape[klayout.index("O")] = cout
        w_shape[klayout.index("I")] = cin // groups
    else:
        w_shape = [cin, cout]
    dtype = str(call.args[0].ty.dtype)
    x = relax.Var("x", relax.TensorType(data_shape, dtype))
    params, inputs = [x], [rng.standard_normal(data_shape).astype(dtype)]
    out_shape = list(spec.out_shape)
    out_shape[spec.out_axis] = cout
    residuals = []
    for _c, kind, _at in spec.chain:
        if kind == "residual":
            r = relax.Var(f"r{len(params)}", relax.TensorType(out_shape, dtype))
            params.append(r)
            residuals.append(r)
            inputs.append(rng.standard_normal(out_shape).astype(dtype))
    bb = relax.BlockBuilder()
    with bb.function("main", params):
        with bb.dataflow():
            w = relax.const((rng.standard_normal(w_shape) * 0.1).astype(dtype), dtype)
            data = x
            if not spec.reads_model_input:
                # in the model another kernel writes this input, in the blocked layout the
                # pipeline keeps between convs; an element-wise op in front gives the layer
                # that input (it stays a kernel of its own: nothing fuses into a conv's
                # input), so the conv kernel timed is the one the model runs
                data = bb.emit(relax.op.nn.relu(x))
            if spec.op == "relax.nn.conv2d":
                a = call.attrs
                cur = bb.emit(relax.op.nn.conv2d(
                    data, w, a.strides, a.padding, a.dilation, groups, a.data_layout,
                    a.kernel_layout, a.out_layout, a.out_dtype or None))
            else:
                cur = bb.emit(relax.op.matmul(data, w))
            rank = len(out_shape)
            for c, kind, at in spec.chain:
                if kind == "get0":
                    cur = bb.emit(relax.TupleGetItem(cur, 0))
                    continue
                args = []
                for i, arg in enumerate(c.args):
                    if i == at:
                        args.append(cur)
                    elif is_const(arg):
                        val = arg.value.numpy()
                        axis = (0 if kind == "bn" else
                                spec.out_axis - (rank - val.ndim))
                        if val.ndim and 0 <= axis < val.ndim and (
                                val.shape[axis] == spec.out_full):
                            val = _slice_channels(val, axis, cout)
                        args.append(relax.const(val, str(val.dtype)))
                    else:  # the residual operand
                        args.append(residuals.pop(0))
                cur = bb.emit(relax.Call(c.op, args, c.attrs, c.ty_args))
            out = bb.emit_output(cur)
        bb.emit_func_output(out)
    mod = bb.get()
    mod["main"] = mod["main"].with_attr("num_input", len(params))
    return tvm.IRModule({"main": mod["main"]}), inputs

