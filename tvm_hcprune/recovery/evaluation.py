"""Top-1 accuracy of a (pruned) model on labelled data, and agreement with the dense model.

``evaluate(model, dataset, reference=None, target=None)`` runs one sample at a time (the
models have a static batch of 1) and returns an :class:`EvalResult`. ``model`` and
``reference`` may be

* a Relax ``tvm.IRModule`` (compiled here for ``target``, default the host CPU through
  :func:`tvm_hcprune.target.parse_target`, with Relax's default pipeline for that target);
* what ``tvm.compile`` returns (a ``tvm.runtime.Executable``) or a
  ``tvm.runtime.vm.VirtualMachine``;
* :class:`OnnxRuntimeModel` (an ONNX file or ``ModelProto`` run by onnxruntime), or any
  callable ``f(x: numpy.ndarray) -> numpy.ndarray``;
* for ``reference`` only: an earlier :class:`EvalResult` or an array of predictions, so the
  dense model is run once for a whole sweep of pruning ratios.

Bad input raises :class:`~tvm_hcprune.errors.HCPruneError` before anything runs: an empty
dataset, samples whose shape or dtype do not match the model's input, NaN or Inf in the
samples, labels out of range. :func:`check_samples` is shared with calibration.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import HCPruneError

__all__ = [
    "EvalResult",
    "ModelRunner",
    "OnnxRuntimeModel",
    "check_samples",
    "compile_module",
    "evaluate",
    "module_input",
    "runner_for",
]


@dataclass(frozen=True, eq=False)
class EvalResult:
    """Outcome of :func:`evaluate`.

    Attributes
    ----------
    top1 : float
        Fraction of samples whose arg-max output equals the label.
    correct, n : int
        Number of correct samples and of samples.
    agreement : float or None
        Fraction of samples where the model's arg-max equals the reference's (None without
        a reference).
    top1_reference : float or None
        The reference's own top-1 accuracy on the same samples.
    predictions : numpy.ndarray
        int64 ``[n]`` arg-max per sample.
    reference_predictions : numpy.ndarray or None
    nonfinite : int
        Samples whose output held NaN or Inf (counted as wrong unless the arg-max matches).
    seconds : float
        Wall time of the model's runs (not of compilation or of the reference).
    dataset : str
    """

    top1: float
    correct: int
    n: int
    predictions: np.ndarray
    agreement: float | None = None
    top1_reference: float | None = None
    reference_predictions: np.ndarray | None = None
    nonfinite: int = 0
    seconds: float = 0.0
    dataset: str = ""

    def to_dict(self) -> dict:
        """JSON-ready summary (no per-sample arrays)."""
        return {
            "dataset": self.dataset, "n": self.n, "correct": self.correct, "top1": self.top1,
            "top1_reference": self.top1_reference, "agreement": self.agreement,
            "nonfinite": self.nonfinite, "seconds": round(self.seconds, 3),
        }


# --------------------------------------------------------------------------- inputs


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
    import tvm

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


def _as_samples(data) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Dataset / (samples, labels) / array / list of arrays -> (samples, labels, name)."""
    from .datasets import Dataset

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
                       "tvm_hcprune.datasets.Dataset, a (samples, labels) pair or an array "
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
        import onnxruntime as ort

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
    :func:`tvm_hcprune.target.parse_target` so a bare ``"llvm"`` gets the host CPU.
    """
    import tvm
    from tvm import relax

    from .target import parse_target

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


def _vm_runner(vm, name="input", shape=None, dtype=None) -> ModelRunner:
    import tvm

    dev = tvm.cpu()
    main = vm["main"]

    def run(x):
        return main(tvm.runtime.tensor(np.ascontiguousarray(x), dev))

    return ModelRunner(run, name, shape, dtype)


def runner_for(model, target=None) -> ModelRunner:
    """Wrap any supported model kind (see the module docstring) as a :class:`ModelRunner`."""
    import tvm
    from tvm import relax

    if isinstance(model, ModelRunner):
        return model
    if isinstance(model, tvm.IRModule):
        name, shape, dtype = module_input(model)
        vm = relax.VirtualMachine(compile_module(model, target), tvm.cpu())
        return _vm_runner(vm, name, shape, dtype)
    if isinstance(model, tvm.runtime.Executable):
        return _vm_runner(relax.VirtualMachine(model, tvm.cpu()))
    if isinstance(model, relax.VirtualMachine):
        return _vm_runner(model)
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


def _run_first(runner: ModelRunner, x: np.ndarray) -> list[np.ndarray]:
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


def _argmax(out: np.ndarray, num_classes: int | None = None) -> tuple[int, bool]:
    flat = np.asarray(out).reshape(-1)
    if num_classes is not None and flat.size != num_classes:
        raise HCPruneError(f"model output has shape {list(np.shape(out))}; evaluation needs "
                           f"one score per class ([1, C]) and C must stay {num_classes}")
    return int(np.argmax(flat)), bool(np.isfinite(flat).all())


def _predict(runner: ModelRunner, samples: np.ndarray, desc: str, progress: bool,
             max_label: int | None = None) -> tuple[np.ndarray, int, float]:
    from tvm_hcprune.utils.progress import progress_bar

    preds = np.empty(samples.shape[0], np.int64)
    nonfinite, t_run = 0, 0.0
    num_classes = None
    for i in progress_bar(range(samples.shape[0]), enabled=progress, desc=desc, leave=False):
        t0 = time.perf_counter()
        outs = _run_first(runner, samples[i]) if i == 0 else runner.outputs(samples[i])
        t_run += time.perf_counter() - t0
        if num_classes is None:
            num_classes = int(np.asarray(outs[0]).size)
            if max_label is not None and max_label >= num_classes:
                raise HCPruneError(f"labels go up to {max_label} but the model outputs "
                                   f"{num_classes} scores; labels must be class indices "
                                   f"0..{num_classes - 1}")
        preds[i], finite = _argmax(outs[0], num_classes)
        nonfinite += not finite
    return preds, nonfinite, t_run


def _check_labels(labels: np.ndarray | None, n: int) -> np.ndarray:
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


def evaluate(mod_or_executable, dataset, reference=None, target=None, *,
             progress: bool = True) -> EvalResult:
    """Top-1 accuracy of a model on labelled data, and top-1 agreement with a reference.

    Parameters
    ----------
    mod_or_executable : tvm.IRModule, tvm.runtime.Executable, VirtualMachine or callable
        The model (see the module docstring). An IRModule is compiled for ``target``.
    dataset : tvm_hcprune.datasets.Dataset or (samples, labels)
        ``samples`` ``[N, *input_shape]`` (a leading batch axis of 1 may be omitted).
    reference : model, EvalResult or array of predictions, optional
        The dense model (same kinds as the model), or its predictions from an earlier run.
    target : str, dict or tvm.target.Target, optional
        CPU target for compiling IRModules; default the host CPU (``llvm`` with its mcpu).
    progress : bool
        Show a tqdm progress bar.

    Returns
    -------
    EvalResult

    Raises
    ------
    HCPruneError
        Empty dataset, sample shape/dtype not matching the model input, NaN/Inf in the
        samples, labels that are not class indices, or a model whose output is not one
        score per class.
    """
    samples, labels, name = _as_samples(dataset)
    if samples.ndim == 0 or samples.shape[0] == 0:
        raise HCPruneError("the dataset is empty; give at least one sample")
    labels = _check_labels(labels, samples.shape[0])
    runner = runner_for(mod_or_executable, target)
    samples = check_samples(samples, runner.input_shape, runner.input_dtype, runner.input_name)

    ref_preds, ref_runner = None, None
    if isinstance(reference, EvalResult):
        ref_preds = reference.predictions
    elif isinstance(reference, np.ndarray):
        ref_preds = reference
    elif reference is not None:
        ref_runner = runner_for(reference, target)
        check_samples(samples, ref_runner.input_shape, ref_runner.input_dtype,
                      ref_runner.input_name)
    if ref_preds is not None and np.shape(ref_preds) != (samples.shape[0],):
        raise HCPruneError(f"reference predictions have shape {list(np.shape(ref_preds))} but "
                           f"the dataset has {samples.shape[0]} samples")

    preds, nonfinite, seconds = _predict(runner, samples, f"evaluate {name}", progress,
                                         int(labels.max()))
    correct = int((preds == labels).sum())
    agreement = top1_ref = None
    if ref_runner is not None:
        ref_preds, _, _ = _predict(ref_runner, samples, f"reference {name}", progress)
    if ref_preds is not None:
        ref_preds = np.asarray(ref_preds, np.int64)
        agreement = float((preds == ref_preds).mean())
        top1_ref = float((ref_preds == labels).mean())
    return EvalResult(
        top1=correct / samples.shape[0], correct=correct, n=int(samples.shape[0]),
        predictions=preds, agreement=agreement, top1_reference=top1_ref,
        reference_predictions=ref_preds, nonfinite=nonfinite, seconds=seconds, dataset=name,
    )
