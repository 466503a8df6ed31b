"""Model import with static shapes: ``load_onnx`` and ``load_tflite``."""

from __future__ import annotations

import contextlib
import gc
import io
import os
import sys
import tempfile
from pathlib import Path

from tvm_hcprune.errors import HCPruneError


def _dims(value_info):
    out = []
    for d in value_info.type.tensor_type.shape.dim:
        if d.HasField("dim_value") and d.dim_value > 0:
            out.append(int(d.dim_value))
        else:
            out.append(d.dim_param or "?")
    return out


def static_input_shapes(model, shape_dict=None, log=print) -> dict[str, list[int]]:
    """Static shapes of the graph inputs (initializers excluded).

    A dynamic first (batch) dimension defaults to 1 with a printed note; any other dynamic
    dimension must be given in ``shape_dict``.
    """
    shape_dict = dict(shape_dict or {})
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    unknown = set(shape_dict) - {i.name for i in inputs}
    if unknown:
        raise HCPruneError(
            f"--input-shapes names {sorted(unknown)}, which are not inputs of the model; "
            f"its inputs are {[i.name for i in inputs]}"
        )
    shapes = {}
    for inp in inputs:
        if inp.name in shape_dict:
            shapes[inp.name] = [int(s) for s in shape_dict[inp.name]]
            continue
        dims = _dims(inp)
        if dims and not isinstance(dims[0], int):
            log(f"note: input {inp.name!r} has a dynamic batch dimension {dims[0]!r}; using 1")
            dims[0] = 1
        dyn = [(k, d) for k, d in enumerate(dims) if not isinstance(d, int)]
        if dyn:
            raise HCPruneError(
                f"input {inp.name!r} has dynamic dimension(s) "
                f"{', '.join(f'{d!r} (axis {k})' for k, d in dyn)}; give static shapes, e.g. "
                f"shape_dict={{{inp.name!r}: [...]}} or --input-shapes \"{inp.name}:[...]\""
            )
        shapes[inp.name] = dims
    return shapes


def read_onnx(path):
    """The ``onnx.ModelProto`` in ``path``; :class:`HCPruneError` if the file is missing, not
    ONNX or holds no nodes."""
    import onnx  # deferred: onnx is slow to import and optional at run time

    p = Path(path)
    if not p.is_file():
        raise HCPruneError(f"model file {path} does not exist")
    try:
        model = onnx.load(str(p))
    except Exception as err:  # noqa: BLE001 - protobuf raises various types
        raise HCPruneError(f"{path} is not a readable ONNX model ({type(err).__name__}: "
                           f"{str(err)[:200]})") from None
    if not model.graph.node:
        raise HCPruneError(f"{path} is an empty ONNX model (its graph has no nodes)")
    return model


def ort_basic_optimize(model, shapes: dict[str, list[int]]):
    """Pin input shapes and let onnxruntime's basic graph optimisation fold the graph.

    This constant-folds shape computations that TVM 0.27's importer cannot handle
    (tensor-typed Reshape shapes, dynamic pads, Identity on shape expressions); on real
    models it changed outputs by at most ~1e-6.
    """
    import onnx  # deferred: onnx is slow to import and optional at run time
    import onnxruntime as ort  # deferred: onnxruntime is slow to import

    pinned = onnx.ModelProto()
    pinned.CopyFrom(model)
    for inp in pinned.graph.input:
        if inp.name in shapes:
            dims = inp.type.tensor_type.shape.dim
            for d, s in zip(dims, shapes[inp.name], strict=False):
                d.Clear()
                d.dim_value = int(s)
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "in.onnx"), os.path.join(tmp, "out.onnx")
        onnx.save(pinned, src)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.optimized_model_filepath = dst
        so.log_severity_level = 3
        ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
        return onnx.load(dst)


def load_onnx(path, shape_dict: dict | None = None, log=print):
    """Import an ONNX file as a Relax module with static shapes and constant weights.

    Parameters
    ----------
    path : str or PathLike
        The ``.onnx`` file.
    shape_dict : dict, optional
        Input name -> static shape. A dynamic batch dimension defaults to 1; other dynamic
        dimensions must be given here.
    log : callable
        Where notes go (default ``print``).

    Returns
    -------
    tvm.IRModule

    Raises
    ------
    HCPruneError
        The file is missing, not ONNX, empty, or has unresolved dynamic dimensions.

    Examples
    --------
    >>> mod = tvm_hcprune.load_onnx("model.onnx", {"input": [1, 3, 224, 224]})  # doctest: +SKIP
    """
    return load_onnx_graph(path, shape_dict, log)[1]


def load_onnx_graph(path, shape_dict: dict | None = None, log=print):
    """``(onnx_model, mod)``: :func:`load_onnx`'s module and the ONNX graph it imported.

    The graph is the file's own, or onnxruntime's basic optimisation of it where TVM's
    importer needed that (see :func:`load_onnx`). A pruned ONNX export
    (:func:`tvm_hcprune.planning.export_onnx.apply_to_onnx`) must start from this graph.

    Parameters
    ----------
    path, shape_dict, log
        As for :func:`load_onnx`.

    Returns
    -------
    tuple[onnx.ModelProto, tvm.IRModule]

    Examples
    --------
    >>> model, mod = load_onnx_graph("model.onnx", {"input": [1, 3, 224, 224]})  # doctest: +SKIP
    """
    # deferred: TVM's ONNX frontend imports onnx (slow)
    from tvm.relax.frontend.onnx import from_onnx

    from tvm_hcprune.utils.relax import first_dynamic_binding  # deferred: imports TVM

    model = read_onnx(path)
    shapes = static_input_shapes(model, shape_dict, log)
    # the first try's failures are expected (the folded model usually imports): TVM's prints
    # of them (Python's "Error converting operator ...", C++'s "BlockBuilder destroyed with
    # remaining blocks!") are kept out of the user's console and shown only if both fail
    with captured_output() as printed:
        try:
            mod = from_onnx(model, shape_dict=shapes)
            dynamic = first_dynamic_binding(mod["main"])
            first = (None if dynamic is None else
                     f"{dynamic[0]} = {dynamic[1]}(...) has a shape computed at run time")
        except Exception as err:  # noqa: BLE001 - importer gaps raise assorted errors
            first = f"{type(err).__name__}: {str(err)[:300]}"
            del err
            gc.collect()  # the failed importer's BlockBuilder warns when collected
    if first is None:
        sys.stderr.write(printed())
        return model, mod
    try:
        folded = ort_basic_optimize(model, shapes)
        mod = from_onnx(folded, shape_dict=shapes)
    except Exception as err:  # noqa: BLE001
        sys.stderr.write(printed())
        raise HCPruneError(
            f"TVM's ONNX importer cannot import {path}: {first} (also after onnxruntime's "
            f"basic graph optimisation: {type(err).__name__}: {str(err)[:200]})"
        ) from None
    dynamic = first_dynamic_binding(mod["main"])
    if dynamic is not None:
        raise HCPruneError(
            f"{path} imports with a shape computed at run time: {dynamic[0]} = "
            f"{dynamic[1]}(...) (also after onnxruntime's basic graph optimisation): its "
            "shape depends on the data or on a shape computation neither could fold, and "
            "TVM cannot compile that; export the model without that op (e.g. cut a "
            "detector before its NMS or decoding tail) or fold its shape computations")
    log(f"note: {Path(path).name} was folded by onnxruntime's basic graph optimisation "
        f"before import ({first})")
    return folded, mod


@contextlib.contextmanager
def captured_output():
    """Capture what is printed inside the block, by Python and by native code (file
    descriptors 1 and 2): yields ``printed() -> str``, readable after the block.

    Examples
    --------
    >>> with captured_output() as printed:
    ...     print("hidden")
    >>> printed()
    'hidden\\n'
    """
    text = []
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        saved = [os.dup(1), os.dup(2)]
        buf = io.StringIO()
        try:
            os.dup2(tmp.fileno(), 1)
            os.dup2(tmp.fileno(), 2)
            with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
                yield lambda: "".join(text)
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            tmp.seek(0)
            text.append(buf.getvalue() + tmp.read().decode(errors="replace"))


def load_tflite(path, shape_dict: dict | None = None):
    """Import a TFLite flatbuffer (NHWC, HWIO / HWOI weights) as a Relax module.

    Raises
    ------
    HCPruneError
        The file is missing or unreadable, stores sparse weights (TFLite's DENSIFY
        format), or TVM's importer fails on it (the message carries the importer's error).

    Examples
    --------
    >>> mod = tvm_hcprune.load_tflite("face_detection_front.tflite")  # doctest: +SKIP
    """
    p = Path(path)
    if not p.is_file():
        raise HCPruneError(f"model file {path} does not exist")
    try:
        import tflite  # deferred: optional package (TFLite models only)
    except ImportError:
        raise HCPruneError("reading TFLite models needs the 'tflite' package "
                           "(pip install tflite==2.18.0)") from None
    # deferred: TVM's TFLite frontend needs the optional tflite package
    from tvm.relax.frontend.tflite import from_tflite

    buf = p.read_bytes()
    try:
        model = tflite.Model.GetRootAsModel(buf, 0)
        sparse = _sparse_tensors(model)
    except Exception as err:  # noqa: BLE001
        raise HCPruneError(f"{path} is not a readable TFLite model: {err}") from None
    if sparse:
        raise HCPruneError(
            f"{path} stores {len(sparse)} weight tensor(s) in TFLite's sparse format (e.g. "
            f"{sparse[0]!r}, expanded at run time by DENSIFY), which TVM's TFLite importer "
            "cannot read; convert the model with dense weights (the converter's default, "
            "without the sparsity optimisation)")
    kwargs = {"shape_dict": shape_dict} if shape_dict else {}
    try:
        return from_tflite(model, **kwargs)
    except Exception as err:  # noqa: BLE001 - the importer raises assorted errors
        raise HCPruneError(f"TVM's TFLite importer cannot import {path}: "
                           f"{type(err).__name__}: {str(err)[:300]}") from None


def _sparse_tensors(model) -> list[str]:
    """Names of the tensors of ``model`` (a ``tflite.Model``) stored in sparse format."""
    names = []
    for g in range(model.SubgraphsLength()):
        sub = model.Subgraphs(g)
        for t in range(sub.TensorsLength()):
            tensor = sub.Tensors(t)
            if tensor.Sparsity() is not None:
                names.append(tensor.Name().decode("utf-8", "replace"))
    return names
