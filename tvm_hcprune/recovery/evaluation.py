"""Top-1 accuracy of a (pruned) model on labelled data, and agreement with the dense model.

``evaluate(model, dataset, reference=None, target=None)`` runs one sample at a time (the
models have a static batch of 1) and returns an :class:`EvalResult`. ``model`` and
``reference`` may be

* a Relax ``tvm.IRModule`` (compiled here for ``target``, default the host CPU through
  :func:`tvm_hcprune.hardware.target.parse_target`, with Relax's default pipeline for that target);
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
from dataclasses import dataclass

import numpy as np

from tvm_hcprune.errors import HCPruneError
from tvm_hcprune.recovery.runner import (
    ModelRunner,
    as_samples,
    check_labels,
    check_samples,
    run_first,
    runner_for,
)
from tvm_hcprune.utils.progress import progress_bar

__all__ = ["EvalResult", "evaluate"]


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
        int64 ``[n]`` arg-max per sample; -1 where the output was not finite.
    reference_predictions : numpy.ndarray or None
    nonfinite : int
        Samples whose output held NaN or Inf: counted wrong (prediction -1), and never in
        agreement with the reference.
    seconds : float
        Wall time of the model's runs (not of compilation or of the reference).
    dataset : str

    Examples
    --------
    >>> res = tvm_hcprune.evaluate(mod, (samples, labels))  # doctest: +SKIP
    >>> res.top1, res.agreement  # doctest: +SKIP
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


def _argmax(out: np.ndarray, num_classes: int | None = None) -> tuple[int, bool]:
    flat = np.asarray(out).reshape(-1)
    if num_classes is not None and flat.size != num_classes:
        raise HCPruneError(f"model output has shape {list(np.shape(out))}; evaluation needs "
                           f"one score per class ([1, C]) and C must stay {num_classes}")
    return int(np.argmax(flat)), bool(np.isfinite(flat).all())


def _predict(runner: ModelRunner, samples: np.ndarray, desc: str, progress: bool,
             max_label: int | None = None) -> tuple[np.ndarray, int, float]:
    preds = np.empty(samples.shape[0], np.int64)
    nonfinite, t_run = 0, 0.0
    num_classes = None
    for i in progress_bar(range(samples.shape[0]), enabled=progress, desc=desc, leave=False):
        t0 = time.perf_counter()
        outs = run_first(runner, samples[i]) if i == 0 else runner.outputs(samples[i])
        t_run += time.perf_counter() - t0
        if num_classes is None:
            num_classes = int(np.asarray(outs[0]).size)
            if max_label is not None and max_label >= num_classes:
                raise HCPruneError(f"labels go up to {max_label} but the model outputs "
                                   f"{num_classes} scores; labels must be class indices "
                                   f"0..{num_classes - 1}")
        preds[i], finite = _argmax(outs[0], num_classes)
        if not finite:  # numpy's arg-max of a NaN output is meaningless: count it wrong
            preds[i] = -1
            nonfinite += 1
    return preds, nonfinite, t_run


def evaluate(mod_or_executable, dataset, reference=None, target=None, *,
             progress: bool = True) -> EvalResult:
    """Top-1 accuracy of a model on labelled data, and top-1 agreement with a reference.

    Parameters
    ----------
    mod_or_executable : tvm.IRModule, tvm.runtime.Executable, VirtualMachine or callable
        The model (see the module docstring). An IRModule is compiled for ``target``.
    dataset : tvm_hcprune.zoo.datasets.Dataset or (samples, labels)
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

    Examples
    --------
    >>> dense = tvm_hcprune.evaluate(mod, dataset)  # doctest: +SKIP
    >>> tvm_hcprune.evaluate(pruned, dataset, reference=dense).agreement  # doctest: +SKIP
    """
    samples, labels, name = as_samples(dataset)
    if samples.ndim == 0 or samples.shape[0] == 0:
        raise HCPruneError("the dataset is empty; give at least one sample")
    labels = check_labels(labels, samples.shape[0])
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
        agreement = float(((preds == ref_preds) & (preds >= 0)).mean())
        top1_ref = float((ref_preds == labels).mean())
    return EvalResult(
        top1=correct / samples.shape[0], correct=correct, n=int(samples.shape[0]),
        predictions=preds, agreement=agreement, top1_reference=top1_ref,
        reference_predictions=ref_preds, nonfinite=nonfinite, seconds=seconds, dataset=name,
    )
