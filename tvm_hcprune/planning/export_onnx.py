"""Pruned ONNX export: map a pruned (and optionally reconstructed) Relax module back onto
the ONNX graph it was imported from.

How the mapping works: every constant argument of ``graph.mod`` (the analysed dense
module) that differs in the pruned module - sliced by the plan, or re-fitted by the
reconstruction - is traced to the ONNX tensor it came from by content: an initializer or a
``Constant`` node's value that is equal to it as is, reshaped (a conv bias ``[C]`` becomes
``[1, C, 1, 1]`` in Relax) or transposed (a ``Gemm`` weight with ``transB=1``). The
pruned values replace the ONNX tensor through the inverse relation. Depthwise ``Conv``
nodes get their ``group`` attribute updated; ``Reshape`` shape constants whose element
count no longer matches, and ``Split`` sizes whose pieces were pruned, are rewritten from
the pruned Relax module's shapes; stale
``value_info`` is dropped and shapes are re-inferred.

Anything the mapping cannot account for is refused with :class:`HCPruneError` naming the
constant and the reason (a constant computed in the graph rather than stored, one ONNX
tensor shared by layers pruned differently, grouped transposed convolutions, a reshape
whose new shape is ambiguous, an output shape that would change) - the export never guesses.
"""

from __future__ import annotations

import copy
import functools
import hashlib
from collections import defaultdict

import numpy as np
from tvm import relax

from tvm_hcprune.analysis import check_plan
from tvm_hcprune.errors import HCPruneError
from tvm_hcprune.utils.relax import bindings, is_const, static_shape

__all__ = ["apply_to_onnx", "changed_constants"]


def _key(arr: np.ndarray) -> str:
    a = np.ascontiguousarray(arr)
    h = hashlib.blake2b(digest_size=16)
    h.update(str(a.dtype).encode())
    h.update(str(a.size).encode())
    h.update(a.tobytes())
    return h.hexdigest()


def changed_constants(dense_mod, pruned_mod) -> list[tuple[str, int, np.ndarray, np.ndarray]]:
    """``[(binding name, arg, dense array, pruned array)]`` for every constant that changed.

    Bindings are matched by name (the rewrite keeps names); a call whose constants changed
    must exist in both modules with the same op.
    """
    new_calls = {}
    for b in bindings(pruned_mod["main"]):
        if isinstance(b.value, relax.Call):
            if b.var.name in new_calls:
                raise HCPruneError(f"binding name {b.var.name!r} occurs twice in the pruned "
                                   "module; the export matches bindings by name")
            new_calls[b.var.name] = b.value
    out = []
    for b in bindings(dense_mod["main"]):
        call = b.value
        if not isinstance(call, relax.Call):
            continue
        for i, a in enumerate(call.args):
            if not is_const(a):
                continue
            new = new_calls.get(b.var.name)
            if new is None or len(new.args) != len(call.args) or not is_const(new.args[i]):
                raise HCPruneError(f"binding {b.var.name!r} of the dense module has no "
                                   "counterpart in the pruned module; pass the module that "
                                   "prune() returned for this plan")
            old_a, new_a = a.value.numpy(), new.args[i].value.numpy()
            if old_a.shape != new_a.shape or not np.array_equal(old_a, new_a):
                out.append((b.var.name, i, old_a, new_a))
    return out


class _Sources:
    """ONNX tensors (initializers, Constant values) indexed by content."""

    def __init__(self, model):
        from onnx import numpy_helper  # deferred: onnx is slow to import and optional at run time

        self.arrays: dict[str, np.ndarray] = {}
        self.where: dict[str, tuple] = {}  # name -> ("init", index) | ("const", node index)
        g = model.graph
        for k, init in enumerate(g.initializer):
            self.arrays[init.name] = numpy_helper.to_array(init)
            self.where[init.name] = ("init", k)
        for k, node in enumerate(g.node):
            if node.op_type == "Constant" and len(node.output) == 1:
                for att in node.attribute:
                    if att.name == "value":
                        self.arrays[node.output[0]] = numpy_helper.to_array(att.t)
                        self.where[node.output[0]] = ("const", k)
        self.by_key = defaultdict(list)  # content key -> [(name, relation)]
        for name, arr in self.arrays.items():
            if arr.size < 1:
                continue
            self.by_key[_key(arr)].append((name, "reshape"))
            if arr.ndim == 2 and arr.shape[0] > 1 and arr.shape[1] > 1:
                self.by_key[_key(arr.T)].append((name, "transpose"))

    def find(self, arr: np.ndarray) -> list[tuple[str, str]]:
        return self.by_key.get(_key(arr), [])


def _back(relation: str, src_shape, old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """The new ONNX tensor for a Relax constant ``old -> new`` related to it by ``relation``."""
    if relation == "transpose":
        return np.ascontiguousarray(new.T)
    if tuple(old.shape) == tuple(src_shape):
        return new
    # a reshape that inserted or removed unit axes: keep the non-unit axes of ``old``
    old_nonunit = [i for i, s in enumerate(old.shape) if s != 1]
    if [old.shape[i] for i in old_nonunit] != [s for s in src_shape if s != 1] or len(
            [s for s in src_shape if s != 1]) != len(old_nonunit):
        raise HCPruneError(f"cannot map a constant of shape {list(old.shape)} back onto its "
                           f"ONNX tensor of shape {list(src_shape)}")
    shape, it = [], iter(old_nonunit)
    for s in src_shape:
        shape.append(1 if s == 1 else new.shape[next(it)])
    return new.reshape(shape)


def _node_order(model):
    """First-use position of each tensor name in the ONNX node list."""
    order = {}
    for k, node in enumerate(model.graph.node):
        for name in node.input:
            order.setdefault(name, k)
    return order


def apply_to_onnx(onnx_model, graph, plan, pruned_mod):
    """The ONNX model with ``plan`` (and any reconstruction in ``pruned_mod``) applied.

    Parameters
    ----------
    onnx_model : onnx.ModelProto
        The model ``graph`` was analysed from: the exact graph that was imported (when
        :func:`tvm_hcprune.load_onnx` folded it with onnxruntime first, the folded graph).
    graph : ChannelGraph
        ``tvm_hcprune.analyze`` of the imported dense module.
    plan : PrunePlan
        The plan applied to get ``pruned_mod`` (checked against ``graph``).
    pruned_mod : tvm.IRModule
        ``prune(...)``'s module for this plan (reconstructed or not).

    Returns
    -------
    onnx.ModelProto
        A new model (the input is not modified) that passes ``onnx.checker``.

    Raises
    ------
    HCPruneError
        When a changed constant cannot be traced to exactly one ONNX tensor, or the graph
        holds something the mapping cannot update (see the module docstring).
    """
    import onnx  # deferred: onnx is slow to import and optional at run time
    from onnx import numpy_helper  # deferred: onnx is slow to import and optional at run time

    check_plan(graph, plan)
    if not isinstance(onnx_model, onnx.ModelProto):
        raise HCPruneError(f"apply_to_onnx needs an onnx.ModelProto, got "
                           f"{type(onnx_model).__name__}")
    model = copy.deepcopy(onnx_model)
    changes = changed_constants(graph.mod, pruned_mod)
    sources = _Sources(model)
    order = _node_order(model)

    # content classes: Relax uses (in binding order) and ONNX tensors with that content
    uses = defaultdict(list)
    for name, arg, old, new in changes:
        cands = sources.find(old)
        if not cands:
            raise HCPruneError(
                f"the constant argument {arg} of binding {name!r} (shape {list(old.shape)}) "
                "is not stored in the ONNX graph (it was computed by the importer, e.g. a "
                "folded Mul/Transpose chain); this graph cannot be exported")
        uses[_key(old)].append((name, arg, old, new, cands))
    new_values: dict[str, np.ndarray] = {}
    for items in uses.values():
        cands = sorted({c for c in items[0][4]}, key=lambda c: order.get(c[0], 1 << 30))
        names = list(dict.fromkeys(c[0] for c in cands))
        if len(names) == 1:
            assign = [cands_for(names[0], cands) for _ in items]
        elif len(names) == len(items):
            assign = [cands_for(n, cands) for n in names]
        else:
            raise HCPruneError(
                f"{len(items)} pruned constants (bindings {[i[0] for i in items]}) match "
                f"{len(names)} identical ONNX tensors {names}; the mapping is ambiguous")
        for (bname, _arg, old, new, _), (src, rel) in zip(items, assign, strict=True):
            value = _back(rel, sources.arrays[src].shape, old, new).astype(
                sources.arrays[src].dtype)
            prev = new_values.get(src)
            if prev is not None and (prev.shape != value.shape or not np.array_equal(prev,
                                                                                     value)):
                raise HCPruneError(f"ONNX tensor {src!r} is shared by layers that are pruned "
                                   f"differently (binding {bname!r}); cannot export")
            new_values[src] = value

    g = model.graph
    for src, value in new_values.items():
        kind, k = sources.where[src]
        tensor = numpy_helper.from_array(value, src)
        if kind == "init":
            g.initializer[k].CopyFrom(tensor)
        else:
            for att in g.node[k].attribute:
                if att.name == "value":
                    att.t.CopyFrom(tensor)
    _fix_groups(model, sources, new_values)
    # the dense model's inferred shapes, computed once and only when a fix needs them
    dense_shapes = functools.cache(lambda: _infer(copy.deepcopy(onnx_model)))
    _fix_splits(model, graph, pruned_mod, dense_shapes)
    _fix_reshapes(model, graph, pruned_mod, dense_shapes)
    _drop_unused_initializers(model)
    _check_outputs(onnx_model, model)
    return model


def _drop_unused_initializers(model) -> None:
    """Remove initializers no node reads any more (a Reshape's or Split's old shape
    constant once it was given a new one), unless a node carries a subgraph (which may read
    the outer graph's initializers)."""
    g = model.graph
    if any(a.type in (5, 10) for n in g.node for a in n.attribute):  # GRAPH, GRAPHS
        return
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    keep = [init for init in g.initializer if init.name in used]
    if len(keep) < len(g.initializer):
        dropped = {init.name for init in g.initializer} - {init.name for init in keep}
        del g.initializer[:]
        g.initializer.extend(keep)
        inputs = [i for i in g.input if i.name not in dropped]  # old models list them too
        del g.input[:]
        g.input.extend(inputs)


def cands_for(name, cands):
    """The (name, relation) candidate for ``name`` (reshape preferred over transpose)."""
    rels = [c for c in cands if c[0] == name]
    rels.sort(key=lambda c: c[1] != "reshape")
    return rels[0]


def _fix_groups(model, sources, new_values):
    """Depthwise Conv nodes: ``group`` follows the (pruned) channel count; other grouped
    Conv nodes keep theirs (every group keeps equally many channels)."""
    for node in model.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose") or len(node.input) < 2:
            continue
        w = node.input[1]
        if w not in new_values:
            continue
        group = next((a for a in node.attribute if a.name == "group"), None)
        if group is None or group.i == 1:
            continue
        old_w, new_w = sources.arrays[w], new_values[w]
        if node.op_type == "Conv" and group.i == old_w.shape[0] and old_w.shape[1] == 1:
            group.i = int(new_w.shape[0])
        elif node.op_type == "Conv" and new_w.shape[0] % group.i == 0:
            pass  # grouped: the group count stays, the rewrite gathered the weight per group
        else:
            raise HCPruneError(f"grouped {node.op_type} {node.name!r} (group={group.i}) "
                               "changed; only depthwise convolutions can be exported")


def _infer(model):
    import onnx  # deferred: onnx is slow to import and optional at run time

    del model.graph.value_info[:]
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(
            inferred.graph.output):
        dims = [d.dim_value if d.HasField("dim_value") else None
                for d in vi.type.tensor_type.shape.dim]
        shapes[vi.name] = dims
    for init in inferred.graph.initializer:
        shapes[init.name] = list(init.dims)
    return shapes


def _relax_reshapes(graph, pruned_mod):
    """``{(in_shape, out_shape) dense: {out_shape pruned, ...}}`` of Relax reshapes."""
    pruned = {b.var.name: b for b in bindings(pruned_mod["main"])}
    table = defaultdict(set)
    for b in bindings(graph.mod["main"]):
        v = b.value
        if not (isinstance(v, relax.Call) and hasattr(v.op, "name")
                and v.op.name in ("relax.reshape", "relax.flatten")):
            continue
        nb = pruned.get(b.var.name)
        if nb is None:
            continue
        key = (tuple(static_shape(v.args[0]) or ()), tuple(static_shape(b.var) or ()))
        table[key].add(tuple(static_shape(nb.var) or ()))
    return table


def _shape_constant(g, name):
    """The int64 value of a Reshape's shape input stored in the graph (an initializer or a
    ``Constant`` node, as TensorFlow converters write it), else None."""
    from onnx import numpy_helper  # deferred: onnx is slow to import and optional at run time

    for init in g.initializer:
        if init.name == name:
            return numpy_helper.to_array(init).astype(np.int64)
    for node in g.node:
        if node.op_type == "Constant" and list(node.output) == [name]:
            for att in node.attribute:
                if att.name == "value":
                    return numpy_helper.to_array(att.t).astype(np.int64)
    return None


def _fix_reshapes(model, graph, pruned_mod, dense_shapes):
    """Rewrite Reshape shape constants whose element count no longer fits their input.

    A Reshape is matched to the Relax reshape with the same dense input and output shapes
    (its ``-1`` and ``0`` entries resolved on the dense model, e.g. the ``[-1, C]`` that
    flattens global pooling into a classifier's MatMul); its new shape is that reshape's
    pruned output shape. ``dense_shapes()`` gives the dense model's inferred shapes.
    """
    from onnx import numpy_helper  # deferred: onnx is slow to import and optional at run time

    table = None
    g = model.graph
    for _ in range(8):
        shapes = _infer(model)
        fixed = False
        for node in g.node:
            if node.op_type != "Reshape" or len(node.input) < 2:
                continue
            in_shape = shapes.get(node.input[0])
            target = _shape_constant(g, node.input[1])
            if in_shape is None or None in in_shape or target is None:
                continue
            resolved = [in_shape[i] if t == 0 else int(t) for i, t in enumerate(target)]
            total = int(np.prod(in_shape))
            if -1 in resolved:
                rest = int(np.prod([t for t in resolved if t != -1]))
                if rest > 0 and total % rest == 0:
                    continue
            elif int(np.prod(resolved)) == total:
                continue
            if table is None:  # only when a Reshape needs a new shape
                table = _relax_reshapes(graph, pruned_mod)
            dense_in = dense_shapes().get(node.input[0])
            dense_out = dense_shapes().get(node.output[0])
            new_shapes = set()
            for (rin, rout), pr in table.items():
                if dense_in is not None and dense_out is not None:
                    hit = list(rin) == list(dense_in) and list(rout) == list(dense_out)
                else:
                    hit = list(rout) == [r for r in resolved if r != -1] or (
                        -1 not in resolved and list(rout) == resolved)
                if hit:
                    new_shapes |= {s for s in pr if int(np.prod(s)) == total}
            if len(new_shapes) != 1:
                raise HCPruneError(
                    f"Reshape {node.name!r} to {target.tolist()} no longer fits its pruned "
                    f"input {in_shape} and its new shape cannot be determined uniquely")
            new = np.asarray(next(iter(new_shapes)), np.int64)
            name = f"{node.input[1]}_hcprune_{node.output[0]}"
            g.initializer.append(numpy_helper.from_array(new, name))
            node.input[1] = name
            fixed = True
        if not fixed:
            break
    _infer(model)  # leaves value_info empty: onnxruntime infers it again


def _fix_splits(model, graph, pruned_mod, dense_shapes):
    """Rewrite the ``split`` sizes input of ``Split`` nodes whose pieces were pruned (a fused
    Q/K/V projection split into thirds). A Split is matched to the Relax split with the same
    dense input shape, axis and piece sizes (``dense_shapes()``: the dense model's inferred
    shapes); its new sizes are that split's pruned pieces."""
    from onnx import numpy_helper  # deferred: onnx is slow to import and optional at run time

    g = model.graph
    nodes = [n for n in g.node if n.op_type == "Split" and len(n.input) > 1 and n.input[1]]
    if not nodes:
        return
    pruned = {b.var.name: b for b in bindings(pruned_mod["main"])}
    table = defaultdict(set)
    for b in bindings(graph.mod["main"]):
        v = b.value
        nb = pruned.get(b.var.name)
        if not (isinstance(v, relax.Call) and getattr(v.op, "name", "") == "relax.split"
                and nb is not None):
            continue
        shape = static_shape(v.args[0])
        axis = int(v.attrs.axis) % len(shape)
        sizes = tuple(int(f.shape[axis]) for f in b.var.ty.fields)
        new = tuple(int(f.shape[axis]) for f in nb.var.ty.fields)
        table[(tuple(shape), axis, sizes)].add(new)
    for node in nodes:
        sizes = _shape_constant(g, node.input[1])
        in_shape = dense_shapes().get(node.input[0])
        if sizes is None or in_shape is None or None in in_shape:
            continue
        axis = next((int(a.i) for a in node.attribute if a.name == "axis"), 0) % len(in_shape)
        found = table.get((tuple(in_shape), axis, tuple(int(x) for x in sizes)), set())
        if not found or found == {tuple(int(x) for x in sizes)}:
            continue  # not pruned (or no Relax split of that signature: shapes check it)
        if len(found) != 1:
            raise HCPruneError(f"Split {node.name!r} of sizes {sizes.tolist()} has pruned "
                               "pieces whose new sizes cannot be determined uniquely")
        name = f"{node.input[1]}_hcprune_{node.output[0]}"
        g.initializer.append(numpy_helper.from_array(np.asarray(next(iter(found)), np.int64),
                                                     name))
        node.input[1] = name


def _check_outputs(dense_model, model):
    import onnx  # deferred: onnx is slow to import and optional at run time

    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as err:  # pragma: no cover - defensive
        raise HCPruneError(f"the exported model fails onnx.checker: {err}") from None
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except Exception as err:  # noqa: BLE001 - onnx raises assorted inference errors
        raise HCPruneError(f"the exported model's shapes do not infer: "
                           f"{str(err)[:300]}") from None

    def dims(m):
        return [[d.dim_value for d in o.type.tensor_type.shape.dim] for o in m.graph.output]

    before = dims(dense_model)
    after = dims(inferred)
    if any(all(d > 0 for d in b) for b in before) and before != after:
        raise HCPruneError(f"the exported model's output shapes changed {before} -> {after}")
