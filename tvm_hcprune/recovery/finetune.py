"""A short fine-tune (or distillation from the dense model) inside TVM, with relax.training.

After pruning (and reconstruction), a few optimiser steps on labelled data recover more
accuracy. Everything runs in TVM: the module's ``main`` is turned into the ``backbone``
function :class:`tvm.relax.training.SetupTrainer` expects, the trainer module (loss,
gradients by ``relax.transform.Gradient``, optimiser) is compiled for the host CPU and
:class:`tvm.relax.training.Trainer` runs the steps.

How the backbone is made:

1. inference ``batch_norm`` after a conv is folded into the conv (``FoldBatchNorm``):
   batch_norm has no gradient in TVM 0.27; a module that still holds one is refused;
2. every float constant with more than one element (conv/matmul weights, biases) becomes
   a trainable parameter; scalars stay constants;
3. the batch axis is widened from 1 to ``batch`` (the input's leading 1, and reshapes whose
   target starts with 1, e.g. the flatten before the classifier); other ops are re-emitted
   unchanged and their types re-inferred, so a graph that depends on batch 1 elsewhere
   fails to build and is refused with the reason.

After training the parameters are written back into the folded batch-1 module, which is
returned (it computes what the trainer's ``backbone`` computes, with batch norm folded).

Losses: ``"ce"`` (cross-entropy on the labels) or ``"distill"`` (mean squared error to the
dense model's outputs, no labels needed).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from tvm_hcprune.errors import HCPruneError
from tvm_hcprune.recovery.runner import (
    as_samples,
    check_labels,
    check_samples,
    compile_module,
    module_input,
    runner_for,
)
from tvm_hcprune.transform.fold_batch_norm import FoldBatchNorm
from tvm_hcprune.utils.progress import progress_bar

__all__ = ["FinetuneReport", "finetune", "to_backbone"]

_LOSSES = ("ce", "distill")
_OPTIMIZERS = ("adam", "sgd", "momentum")


@dataclass
class FinetuneReport:
    """What :func:`finetune` did.

    Attributes
    ----------
    losses : list of float
        Training loss per step (on that step's batch, before the update).
    steps, batch : int
    loss : str
    lr : float
    optimizer : str
    params : int
        Trainable tensors.
    compile_seconds, train_seconds : float
    """

    losses: list = field(default_factory=list)
    steps: int = 0
    batch: int = 0
    loss: str = "ce"
    lr: float = 0.0
    optimizer: str = "adam"
    params: int = 0
    compile_seconds: float = 0.0
    train_seconds: float = 0.0

    def mean_loss(self, first: bool, k: int = 10) -> float:
        """Mean loss of the first (or last) ``k`` steps."""
        part = self.losses[:k] if first else self.losses[-k:]
        return float(np.mean(part)) if part else float("nan")

    def to_dict(self) -> dict:
        return {**self.__dict__, "loss_first": self.mean_loss(True),
                "loss_last": self.mean_loss(False)}


def _adam(base):
    """``Adam`` whose ``init`` works in TVM 0.27 (its own builds ``np.ones((), dtype)`` from
    a Relax dtype object, which numpy rejects); same state layout and update."""
    class _Adam(base):
        def init(self, params):
            params = params if isinstance(params, list) else [params]
            self._set_params_and_dtype(params)
            dt = self.param_list[0].ty.dtype.dtype

            def zeros(p):
                shape = [int(getattr(d, "value", d)) for d in p.ty.shape.values]
                return tvm.runtime.tensor(np.zeros(shape, dt))

            self.state = (tvm.runtime.tensor(np.zeros((), "int64")),
                          tvm.runtime.tensor(np.ones((), dt)),
                          tvm.runtime.tensor(np.ones((), dt)),
                          *(zeros(p) for p in self.param_list),
                          *(zeros(p) for p in self.param_list))
            return self

    return _Adam


def _is_param(const) -> bool:
    arr = getattr(const, "value", None)
    if not hasattr(arr, "dtype") or not hasattr(arr, "shape"):
        return False  # e.g. a scalar constant that holds a plain Python number
    return "float" in str(arr.dtype) and int(np.prod(arr.shape)) > 1


def to_backbone(mod, batch: int = 1):
    """The ``backbone`` module for :class:`~tvm.relax.training.SetupTrainer`.

    Returns
    -------
    (backbone_mod, folded_mod, params, sites)
        ``params``: initial values (numpy) of the trainable parameters, in order;
        ``sites[i] = (binding var, argument index)`` of parameter ``i`` in
        ``folded_mod["main"]`` (the batch-norm-folded batch-1 module).
    """
    if not isinstance(batch, int) or batch < 1:
        raise HCPruneError(f"batch must be an integer >= 1, got {batch!r}")
    folded = relax.transform.Normalize()(FoldBatchNorm()(mod))
    func = folded["main"]
    if len(func.params) != 1:
        raise HCPruneError(f"fine-tuning needs a module with one input; main has "
                           f"{len(func.params)}")
    x = func.params[0]
    shape = [int(getattr(d, "value", d)) for d in x.ty.shape.values]
    if not shape or shape[0] != 1:
        raise HCPruneError(f"fine-tuning expects a batch-1 input; {x.name} has shape {shape}")
    new_x = relax.Var(x.name, relax.TensorType([batch, *shape[1:]], x.ty.dtype))
    vmap = {x: new_x}
    reshape = tvm.ir.Op.get("relax.reshape")
    bindings = [b for blk in func.body.blocks for b in blk.bindings]
    for b in bindings:
        if isinstance(b, relax.MatchCast):
            raise HCPruneError(f"fine-tuning does not handle match_cast ({b.var.name})")
    # trainable constants: float call arguments with more than one element
    params, sites, pvars, pmap = [], [], [], {}
    for b in bindings:
        if not isinstance(b.value, relax.Call):
            continue
        for i, a in enumerate(b.value.args):
            if isinstance(a, tvm.ir.expr.Constant) and _is_param(a):
                v = relax.Var(f"p{len(params)}", relax.TensorType(list(a.value.shape),
                                                                  str(a.value.dtype)))
                pmap[(b.var, i)] = v
                params.append(a.value.numpy())
                sites.append((b.var, i))
                pvars.append(v)

    def rebuild(e, binding, argi=-1):
        if isinstance(e, relax.Var):
            return vmap[e]
        if isinstance(e, tvm.ir.expr.Constant):
            return pmap.get((binding, argi), e) if binding is not None else e
        if isinstance(e, relax.Call):
            args = [rebuild(a, binding, i) for i, a in enumerate(e.args)]
            if e.op.same_as(reshape) and isinstance(args[1], relax.ShapeExpr) and batch > 1:
                dims = [int(getattr(d, "value", d)) for d in args[1].values]
                if dims and dims[0] == 1:
                    args[1] = relax.ShapeExpr([batch, *dims[1:]])
            return relax.Call(e.op, args, e.attrs, e.ty_args)
        if isinstance(e, relax.Tuple):
            return relax.Tuple([rebuild(f, binding) for f in e.fields])
        if isinstance(e, relax.TupleGetItem):
            return relax.TupleGetItem(rebuild(e.tuple_value, binding), e.index)
        if isinstance(e, relax.ShapeExpr | tvm.ir.GlobalVar | tvm.ir.StringImm |
                      relax.ExternFunc):
            return e  # not data: shapes, callees of call_tir, attributes
        raise HCPruneError(f"fine-tuning cannot rebuild {type(e).__name__} in binding "
                           f"{getattr(binding, 'name', binding)!r}")

    bb = relax.BlockBuilder()
    with bb.function("backbone", [new_x, *pvars]):
        with bb.dataflow():
            try:
                for b in bindings:
                    vmap[b.var] = bb.emit(rebuild(b.value, b.var), name_hint=b.var.name)
            except HCPruneError:
                raise
            except Exception as err:  # type inference of the widened graph failed
                raise HCPruneError(f"cannot widen the model to batch {batch} for training "
                                   f"({err}); use batch=1") from err
            out = bb.emit_output(rebuild(func.body.body, None))
        bb.emit_func_output(out)
    backbone = bb.get()
    for gv, f in folded.functions_items():  # e.g. PrimFuncs that call_tir refers to
        if gv.name_hint != "main":
            backbone[gv] = f
    backbone = backbone.with_attr("param_num", len(pvars)).with_attr("state_num", 0)
    return backbone, folded, params, sites


def finetune(mod, dataset, steps: int = 100, batch: int = 32, lr: float = 1e-4,
             optimizer: str = "adam", loss: str = "ce", dense=None, seed: int = 0,
             target=None, progress: bool = True):
    """Fine-tune ``mod`` for ``steps`` optimiser steps inside TVM (see the module docs).

    Parameters
    ----------
    mod : tvm.IRModule
        The pruned (and possibly reconstructed) module, batch-1 input, constant weights.
    dataset : Dataset or (samples, labels)
        Training inputs ``[n, 1, ...]`` and int labels (labels unused for ``"distill"``).
    steps : int
        Optimiser steps.
    batch : int
        Samples per step (the model is widened to this batch).
    lr : float
        Learning rate (1e-4: on the MNIST model Adam at 1e-3 first undid the
        reconstruction, 97.4% -> 94.1% after 20 steps; 1e-4 gave 98.0% after 60).
    optimizer : {"adam", "sgd", "momentum"}
    loss : {"ce", "distill"}
        Cross-entropy on labels, or mean squared error to ``dense``'s outputs.
    dense : optional
        ``"distill"``: the dense model (Relax module, executable or callable; see
        :func:`tvm_hcprune.recovery.evaluation.runner_for`).
    seed : int
        Seed of the batch order.
    target : optional
        Host CPU target (default: this machine's).
    progress : bool

    Returns
    -------
    (tvm.IRModule, FinetuneReport)
        The fine-tuned module (batch norm folded, batch-1 input).

    Examples
    --------
    >>> tuned, report = tvm_hcprune.finetune(pruned, train_set, steps=200)  # doctest: +SKIP
    """
    # deferred: relax.training is needed by fine-tuning only
    from tvm.relax.training import SetupTrainer, Trainer
    from tvm.relax.training.loss import CrossEntropyLoss, MSELoss
    from tvm.relax.training.optimizer import SGD, Adam, MomentumSGD

    if loss not in _LOSSES:
        raise HCPruneError(f"loss must be one of {_LOSSES}, got {loss!r}")
    if optimizer not in _OPTIMIZERS:
        raise HCPruneError(f"optimizer must be one of {_OPTIMIZERS}, got {optimizer!r}")
    if not isinstance(steps, int) or steps < 1:
        raise HCPruneError(f"steps must be an integer >= 1, got {steps!r}")
    if not (isinstance(lr, float | int) and np.isfinite(lr) and lr > 0):
        raise HCPruneError(f"lr must be a positive number, got {lr!r}")
    name, shape, dtype = module_input(mod)
    xs, ys, _ = as_samples(dataset)
    xs = check_samples(xs, shape, dtype, name)
    n = len(xs)
    if batch > n:
        raise HCPruneError(f"batch {batch} is larger than the {n} training samples")
    if loss == "ce":
        ys = check_labels(ys, n)
    else:
        if dense is None:
            raise HCPruneError("loss='distill' needs the dense model: pass dense=")
        run = runner_for(dense, target)
        ys = np.stack([np.asarray(run(x)) for x in xs]).astype(np.float32)
        ys = ys.reshape(n, -1)

    t0 = time.perf_counter()
    backbone, folded, params, sites = to_backbone(mod, batch)
    out_ty = backbone["backbone"].ret_ty
    out_shape = [int(getattr(d, "value", d)) for d in out_ty.shape.values]
    if len(out_shape) != 2:
        raise HCPruneError(f"fine-tuning expects a [batch, classes] output, got {out_shape}")
    if loss == "ce":
        loss_fn = CrossEntropyLoss(reduction="mean")
        targets_ty = relax.TensorType([batch], "int64")
    else:
        loss_fn = MSELoss(reduction="mean")
        targets_ty = relax.TensorType(out_shape, "float32")
    opt = {"adam": lambda: _adam(Adam)(lr), "sgd": lambda: SGD(lr),
           "momentum": lambda: MomentumSGD(lr, 0.9)}[optimizer]()
    try:
        train_mod = SetupTrainer(loss_fn, opt, [relax.TensorType(out_shape, "float32"),
                                                targets_ty])(backbone)
    except Exception as err:  # e.g. an op without a registered gradient
        raise HCPruneError(f"relax.training could not differentiate the model: {err}") from err
    dev = tvm.cpu()
    trainer = Trainer(train_mod, relax.VirtualMachine(compile_module(train_mod, target), dev),
                      dev)
    trainer.load_params([p.astype(np.float32) for p in params])
    t1 = time.perf_counter()
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    pos = 0
    report = FinetuneReport(steps=steps, batch=batch, loss=loss, lr=float(lr),
                            optimizer=optimizer, params=len(params),
                            compile_seconds=round(t1 - t0, 2))
    flat = xs.reshape(n, *shape[1:]) if xs.ndim == len(shape) + 1 else xs
    for _ in progress_bar(range(steps), enabled=progress, desc="finetune", leave=False):
        if pos + batch > n:
            order, pos = rng.permutation(n), 0
        idx = order[pos:pos + batch]
        pos += batch
        xb = np.ascontiguousarray(flat[idx].reshape(batch, *shape[1:]), np.float32)
        yb = ys[idx].astype(np.int64 if loss == "ce" else np.float32)
        val = float(trainer.update([xb], [yb]).numpy())
        if not np.isfinite(val):
            raise HCPruneError(f"fine-tuning diverged (loss {val}); lower lr (now {lr})")
        report.losses.append(val)
    report.train_seconds = round(time.perf_counter() - t1, 2)
    trained = trainer.export_params()
    values = {}
    for i, (bvar, argi) in enumerate(sites):
        values[(bvar, argi)] = trained[f"p{i}"].numpy().astype(params[i].dtype)
    return _write_back(folded, values), report


def _write_back(folded, values: dict):
    """``folded`` with the constants at ``values``' (binding var, argument) sites replaced."""
    @mutator
    class _Writer(PyExprMutator):
        def __init__(self, mod):
            super().__init__(mod)
            self.current = None
            self.done = 0

        def visit_var_binding_(self, binding):
            self.current = binding.var
            super().visit_var_binding_(binding)

        def visit_call_(self, call):
            cur = self.current
            hits = {i: v for (bv, i), v in values.items() if cur is not None and bv.same_as(cur)}
            if not hits:
                return super().visit_call_(call)
            args = [self.visit_expr(a) for a in call.args]
            for i, arr in hits.items():
                args[i] = relax.const(arr, str(arr.dtype))
                self.done += 1
            self.current = None  # nested calls of the same binding are not sites
            return relax.Call(call.op, args, call.attrs, call.ty_args)

    writer = _Writer(folded)
    new = writer.visit_expr(folded["main"])
    if writer.done != len(values):  # pragma: no cover - sites come from the same function
        raise AssertionError(f"wrote {writer.done} of {len(values)} parameters back")
    out = tvm.IRModule(dict(folded.functions.items()), attrs=folded.attrs)
    out["main"] = new
    relax.analysis.well_formed(out)
    return out
