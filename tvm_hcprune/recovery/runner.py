"""Running a module on samples: the one place that turns any model kind into a runner.

``runner_for(model)`` wraps a Relax ``tvm.IRModule`` (compiled here for the host CPU with
Relax's default pipeline), what ``tvm.compile`` returns, a ``VirtualMachine``, an
:class:`OnnxRuntimeModel` or any callable as a :class:`ModelRunner`. Calibration,
evaluation, reconstruction, batch-norm re-estimation, sensitivity and fine-tuning all run
the model through here, and check their samples with :func:`check_samples` first.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import tvm
from tvm import relax

from tvm_hcprune.errors import HCPruneError
from tvm_hcprune.hardware.target import parse_target
from tvm_hcprune.zoo.datasets import Dataset

__all__ = [
    "ModelRunner",
    "OnnxRuntimeModel",
    "as_samples",
    "check_labels",
    "check_samples",
    "compile_module",
    "default_runner_factory",
    "module_input",
    "output_error",
    "outputs",
    "run_first",
    "run_relax",
    "runner_for",
    "vm_runner",
]


def _static_dims(shape) -> tuple[int | None, ...]:
    """Relax ShapeExpr / list -> ints, None for symbolic dimensions."""
    values = shape.values if hasattr(shape, "values") else shape
    out = []
    for d in values:
        v = getattr(d, "value", d)
        out.append(int(v) if isinstance(v, int | np.integer) else None)
    return tuple(out)


def module_input(mod) -> tuple[str, tuple[int | None, ...], str]:
    """Name, shape (None for symbolic dims) and dtype of the single input of ``mod["main"]``.

    Raises
    ------
    HCPruneError
        If ``main`` is missing, takes several inputs, or takes its weights as parameters.
    """
    if not isinstance(mod, tvm.IRModule) or "main" not in [g.name_hint for g in mod.functions]:
        raise HCPruneError("expected a Relax IRModule with a 'main' function "
                           "(e.g. from tvm_hcprune.load_onnx)")
    func = mod["main"]
    params = list(func.params)
    attrs = func.attrs
    num_input = int(attrs["num_input"]) if attrs is not None and "num_input" in attrs else None
    if len(params) != 1 or (num_input is not None and num_input != 1):
        names = [p.name for p in params]
        raise HCPruneError(
            f"main takes {len(params)} parameters {names}; evaluation and calibration need "
            "exactly one input tensor with the weights bound as constants (import with "
            "keep_params_in_input=False, or bind them with relax.transform.BindParams)"
        )
    p = params[0]
    ty = p.ty
    if not hasattr(ty, "dtype") or not hasattr(ty, "shape") or ty.shape is None:
        raise HCPruneError(f"input {p.name!r} of main is not a tensor of known rank ({ty})")
    return p.name, _static_dims(ty.shape), str(ty.dtype)


def as_samples(data) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Dataset / (samples, labels) / array / list of arrays -> (samples, labels, name)."""

    if isinstance(data, Dataset):
        return data.samples, data.labels, data.name
    if isinstance(data, tuple) and len(data) == 2 and not isinstance(data[0], int | float):
        return np.asarray(data[0]), np.asarray(data[1]), "samples"
    if isinstance(data, np.ndarray):
        return data, None, "samples"
    if isinstance(data, Sequence):
        if len(data) == 0:
            raise HCPruneError("the dataset is empty; give at least one sample")
        shapes = {np.shape(x) for x in data}
        if len(shapes) != 1:
            raise HCPruneError(f"samples have different shapes {sorted(shapes)}; every sample "
                               "must match the model input")
        return np.stack([np.asarray(x) for x in data]), None, "samples"
    raise HCPruneError(f"cannot read samples from {type(data).__name__}; give a "
                       "tvm_hcprune.zoo.datasets.Dataset, a (samples, labels) pair or an array "
                       "[N, *input_shape]")


def check_samples(samples: np.ndarray, shape: Sequence[int | None] | None,
                  dtype: str | None, input_name: str = "input") -> np.ndarray:
    """Validate ``samples`` ``[N, *input_shape]`` against the model input; return them.

    ``samples`` may also omit a leading batch axis of size 1 (``[N, *input_shape[1:]]``);
    the axis is then added. Symbolic dimensions (None in ``shape``) match any size.

    Raises
    ------
    HCPruneError
        Empty samples, a shape or dtype that does not match the input, NaN or Inf.
    """
    samples = np.asarray(samples)
    if samples.ndim == 0 or samples.shape[0] == 0:
        raise HCPruneError("the dataset is empty; give at least one sample")
    if shape is not None:
        shape = tuple(shape)
        if (samples.ndim == len(shape) and len(shape) >= 1 and shape[0] == 1
                and _shape_matches(samples.shape[1:], shape[1:])):
            samples = samples[:, None]
        if samples.ndim != len(shape) + 1 or not _shape_matches(samples.shape[1:], shape):
            want = ", ".join("?" if d is None else str(d) for d in shape)
            raise HCPruneError(
                f"sample shape {list(samples.shape[1:])} does not match the model input "
                f"{input_name!r} of shape [{want}]; give samples as an array [N, {want}]"
            )
    if dtype is not None and samples.dtype != np.dtype(dtype):
        raise HCPruneError(
            f"samples are {samples.dtype} but the model input {input_name!r} is {dtype}; "
            f"convert them with samples.astype({dtype!r})"
        )
    if not np.issubdtype(samples.dtype, np.number) and samples.dtype != np.bool_:
        raise HCPruneError(f"samples have non-numeric dtype {samples.dtype}")
    if np.issubdtype(samples.dtype, np.floating):
        bad = ~np.isfinite(samples.reshape(samples.shape[0], -1)).all(axis=1)
        if bad.any():
            idx = np.flatnonzero(bad)
            raise HCPruneError(
                f"{len(idx)} of {samples.shape[0]} samples contain NaN or Inf (first: sample "
                f"{int(idx[0])}); clean or drop them before evaluation/calibration"
            )
    return samples


def _shape_matches(got, want) -> bool:
    return len(got) == len(want) and all(w is None or g == w for g, w in zip(got, want,
                                                                             strict=True))


# --------------------------------------------------------------------------- runners


class OnnxRuntimeModel:
    """An ONNX model run by onnxruntime, callable on one input array.

    Parameters
    ----------
    model : str, Path or onnx.ModelProto
    threads : int
        ``intra_op_num_threads`` (1 keeps shared machines fair and results reproducible).
    output : int
        Which graph output the call returns.
    """

    def __init__(self, model, threads: int = 1, output: int = 0):
        import onnxruntime as ort  # deferred: onnxruntime is slow to import

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        if isinstance(model, str | Path):
            if not Path(model).is_file():
                raise HCPruneError(f"ONNX file {str(model)!r} not found")
            src = str(model)
        else:
            src = model.SerializeToString()
        self.session = ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise HCPruneError(f"the ONNX model has {len(inputs)} inputs; only single-input "
                               "models are supported")
        self.input_name = inputs[0].name
        self.input_shape = tuple(d if isinstance(d, int) and d > 0 else None
                                 for d in inputs[0].shape)
        types = {"tensor(float)": "float32", "tensor(float16)": "float16",
                 "tensor(double)": "float64", "tensor(int8)": "int8", "tensor(uint8)": "uint8",
                 "tensor(int32)": "int32", "tensor(int64)": "int64"}
        self.input_dtype = types.get(inputs[0].type)
        self.output = output

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: x})[self.output]

    def run_all(self, x: np.ndarray) -> list[np.ndarray]:
        """Every graph output for input ``x``."""
        return self.session.run(None, {self.input_name: x})


def compile_module(mod, target=None):
    """Compile a Relax module for ``target`` (default: the host CPU) with Relax's pipeline.

    Returns the executable of ``tvm.compile``. The target goes through
    :func:`tvm_hcprune.hardware.target.parse_target` so a bare ``"llvm"`` gets the host CPU.
    """

    tgt = parse_target("llvm" if target is None else target)
    if "cpu" not in tgt.keys:
        raise HCPruneError(f"evaluation and calibration run on this machine's CPU; target "
                           f"{tgt} is not a CPU target (use 'llvm')")
    with tgt:
        return tvm.compile(mod, tgt, relax_pipeline=relax.get_default_pipeline(tgt))


class ModelRunner:
    """One input array in, the model's outputs (numpy) out; knows the input when it can.

    Attributes
    ----------
    input_name : str
    input_shape : tuple or None
        None where unknown (a plain callable or a bare executable); symbolic dims are None.
    input_dtype : str or None
    """

    def __init__(self, fn: Callable[[np.ndarray], object], input_name="input",
                 input_shape=None, input_dtype=None):
        self._fn = fn
        self.input_name = input_name
        self.input_shape = input_shape
        self.input_dtype = input_dtype

    def outputs(self, x: np.ndarray) -> list[np.ndarray]:
        """All outputs of the model for one input."""
        return _to_numpy_list(self._fn(x))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.outputs(x)[0]


def _to_numpy_list(out) -> list[np.ndarray]:
    if isinstance(out, np.ndarray):
        return [out]
    if hasattr(out, "numpy"):
        return [out.numpy()]
    if isinstance(out, list | tuple) or hasattr(out, "__len__"):
        flat = []
        for o in out:
            flat.extend(_to_numpy_list(o))
        return flat
    return [np.asarray(out)]


def vm_runner(vm, name="input", shape=None, dtype=None) -> ModelRunner:
    dev = tvm.cpu()
    main = vm["main"]

    def run(x):
        return main(tvm.runtime.tensor(np.ascontiguousarray(x), dev))

    return ModelRunner(run, name, shape, dtype)


def runner_for(model, target=None) -> ModelRunner:
    """Wrap any supported model kind (see the module docstring) as a :class:`ModelRunner`."""
    if isinstance(model, ModelRunner):
        return model
    if isinstance(model, tvm.IRModule):
        name, shape, dtype = module_input(model)
        vm = relax.VirtualMachine(compile_module(model, target), tvm.cpu())
        return vm_runner(vm, name, shape, dtype)
    if isinstance(model, tvm.runtime.Executable):
        return vm_runner(relax.VirtualMachine(model, tvm.cpu()))
    if isinstance(model, relax.VirtualMachine):
        return vm_runner(model)
    if isinstance(model, OnnxRuntimeModel):
        return ModelRunner(model.run_all, model.input_name, model.input_shape,
                           model.input_dtype)
    if isinstance(model, str | Path):
        raise HCPruneError(f"got a path {str(model)!r}; load it first with "
                           "tvm_hcprune.load_onnx(path) (TVM) or OnnxRuntimeModel(path)")
    if callable(model):
        return ModelRunner(model, getattr(model, "input_name", "input"),
                           getattr(model, "input_shape", None),
                           getattr(model, "input_dtype", None))
    raise HCPruneError(f"cannot evaluate a {type(model).__name__}; give an IRModule, an "
                       "executable from tvm.compile, a VirtualMachine or a callable")


def run_first(runner: ModelRunner, x: np.ndarray) -> list[np.ndarray]:
    """Run the first sample, turning an obscure runtime rejection into an HCPruneError."""
    try:
        return runner.outputs(x)
    except HCPruneError:
        raise
    except Exception as err:  # noqa: BLE001 - TVM/onnxruntime raise many error types
        raise HCPruneError(
            f"the model rejected a sample of shape {list(x.shape)} and dtype {x.dtype} "
            f"(does it match the model input?): {str(err).strip().splitlines()[-1]}"
        ) from err


def check_labels(labels: np.ndarray | None, n: int) -> np.ndarray:
    if labels is None:
        raise HCPruneError("evaluation needs labels: give a Dataset or a (samples, labels) "
                           "pair")
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise HCPruneError(f"labels have shape {list(labels.shape)}; give one integer label "
                           f"per sample ([{n}])")
    if not np.issubdtype(labels.dtype, np.integer):
        raise HCPruneError(f"labels must be integers (class indices), got {labels.dtype}")
    if (labels < 0).any():
        raise HCPruneError("labels must be class indices >= 0")
    return labels.astype(np.int64)


def run_relax(mod, inputs, target=None, build=None):
    """Compile ``mod`` for llvm and run ``main`` on numpy inputs.

    ``build(mod, target)`` compiles (e.g. :func:`tvm_hcprune.build`); default
    :func:`tvm.compile`, TVM's default pipeline. Returns a numpy array, or a (nested) list
    of them for tuple outputs.

    Examples
    --------
    >>> y = run_relax(mod, [x])  # doctest: +SKIP
    """
    target = tvm.target.Target(target or {"kind": "llvm"})
    ex = (build or tvm.compile)(mod, target)
    dev = tvm.cpu()
    vm = relax.VirtualMachine(ex, dev)
    out = vm["main"](*[tvm.runtime.tensor(np.asarray(x), dev) for x in inputs])
    return _to_numpy(out)


def _to_numpy(out):
    if hasattr(out, "numpy"):
        return out.numpy()
    return [_to_numpy(o) for o in out]


def output_error(outs: np.ndarray, dense: np.ndarray) -> tuple[float, float]:
    """``(rel_mse, disagreement)`` of outputs ``[n, ...]`` against the dense ones."""
    outs = np.asarray(outs, np.float64).reshape(len(outs), -1)
    dense = np.asarray(dense, np.float64).reshape(len(dense), -1)
    if not np.isfinite(outs).all():
        return math.inf, 1.0
    den = float(np.square(dense - dense.mean(0)).sum())
    num = float(np.square(outs - dense).sum())
    rel = num / den if den > 0 else num
    dis = float(np.mean(outs.argmax(1) != dense.argmax(1)))
    return rel, dis


def default_runner_factory(target=None):
    """``make(mod, plan) -> run``: the TVM runner of a candidate module (the plan unused)."""
    def make(mod, plan):
        return runner_for(compile_module(mod, target))

    return make


def outputs(run: Callable, samples: np.ndarray) -> np.ndarray:
    """``run(x)`` of every sample, stacked."""
    return np.stack([np.asarray(run(x)) for x in samples])
