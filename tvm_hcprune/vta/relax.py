"""Relax integration: int8 quantisation and offload of conv2d/dense layers to the simulator.

The flow::

    plan = quantize(mod, samples)            # calibrate: symmetric per-tensor int8 scales
    ex = build(mod, plan, mode="vta")        # eligible layers -> the simulator, rest -> llvm
    ref = build(mod, plan, mode="llvm")      # the same int8 model, every layer on llvm
    ex(x) == ref(x)                          # bit for bit

Quantisation is symmetric and per tensor, with power-of-two scales ``2**e`` chosen from the
calibration maximum (``e = ceil(log2(max|t| / 127))``) for each offloaded layer's input,
weight and output, so requantisation is an exact shift on VTA's ALU. Each offloaded layer
becomes::

    xq  = int8(clip(round(x / 2**ex), -127, 127))                  # llvm
    acc = conv2d(xq, Wq) + bias_q  (+ 2**(shift-1) to round)        # VTA GEMM + ALU ADD
    yq  = int8(clip(acc >> shift, -127, 127))                       # VTA ALU SHR/MAX/MIN
    y   = float(yq) * 2**ey                                          # llvm

with ``shift = ey - ex - ew`` (a negative shift is a left shift). A layer is offloaded when it
is a ``conv2d`` (groups 1, dilation 1, NCHW/OIHW, symmetric padding <= 15) or a 2-D
``matmul`` with a constant weight, its input channels are a multiple of 16 (output channels
are zero-padded to 16), and it is not the first such layer (the first layer stays in float
on the CPU, as VTA's own deployment recipe does). A bias ``add`` of a per-channel constant
that directly follows the layer is fused.

In ``mode="vta"`` the layer is ``R.call_dps_packed("tvm_hcprune.vta.conv2d" | ".dense")``, a
global function registered here that packs the tensors, generates the instruction stream
and runs it on a process-wide simulator (see :func:`device`). In ``mode="llvm"`` the same
integer arithmetic is written with Relax ops. The profiler is also exposed as the global
functions ``vta.simulator.profiler_clear``, ``vta.simulator.profiler_status`` (JSON) and
``vta.simulator.profiler_debug_mode``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time

import numpy as np
import tvm
import tvm_ffi
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from tvm_hcprune.errors import HCPruneError
from tvm_hcprune.hardware.vta import DEFAULT_CONFIG, VTAConfig
from tvm_hcprune.transform.fold_batch_norm import FoldBatchNorm
from tvm_hcprune.utils.relax import (
    bindings,
    dtype_of,
    is_const,
    op_name,
    static_shape,
    use_counts,
)
from tvm_hcprune.vta import ops
from tvm_hcprune.vta.cycles import estimate_cycles
from tvm_hcprune.vta.runtime import CommandQueue
from tvm_hcprune.vta.sim import Simulator

FUNC_CONV2D = "tvm_hcprune.vta.conv2d"
FUNC_DENSE = "tvm_hcprune.vta.dense"
QMAX = 127

_DEVICE: dict = {"rt": None, "log": [], "record": True}


# ---- the device (process-wide simulator) ----------------------------------------------------
def device(config: VTAConfig | None = None, reset: bool = False) -> CommandQueue:
    """The process-wide command queue and simulator used by the offloaded layers."""
    rt = _DEVICE["rt"]
    if rt is None or reset or (config is not None and rt.cfg != config):
        rt = CommandQueue(Simulator(config or DEFAULT_CONFIG))
        _DEVICE["rt"] = rt
    return rt


def layer_log() -> list[dict]:
    """One record per offloaded layer call since :func:`clear_layer_log`: counters, cycles."""
    return list(_DEVICE["log"])


def clear_layer_log() -> None:
    _DEVICE["log"] = []


def _run_layer(kind: str, fn) -> np.ndarray:
    rt = device()
    rt.release_dram()
    before = rt.sim.stats()
    t0 = time.perf_counter()
    y = fn(rt)
    wall = time.perf_counter() - t0
    after = rt.sim.stats()
    if _DEVICE["record"]:
        _DEVICE["log"].append({
            "kind": kind, "wall_s": wall,
            "counters": {k: after[k] - before[k] for k in after},
            "estimated_cycles": estimate_cycles(rt.last_program, rt.cfg)["cycles"],
        })
    return y


def _params(p) -> list[int]:
    return [int(v) for v in p.numpy().tolist()]


def _conv2d_packed_func(x, w, b, params, out):
    sh, sw, ph, pw, shift, lo, hi, has_bias = _params(params)
    y = _run_layer("conv2d", lambda rt: ops.conv2d(
        x.numpy(), w.numpy(), b.numpy() if has_bias else None, (sh, sw), (ph, pw), shift,
        (lo, hi), rt=rt))
    out.copyfrom(np.ascontiguousarray(y))


def _dense_packed_func(x, w, b, params, out):
    shift, lo, hi, has_bias = _params(params)
    y = _run_layer("dense", lambda rt: ops.dense(
        x.numpy(), w.numpy(), b.numpy() if has_bias else None, shift, (lo, hi), rt=rt))
    out.copyfrom(np.ascontiguousarray(y))


def _profiler_clear():
    device().sim.clear_stats()


def _profiler_status() -> str:
    return json.dumps(device().sim.stats())


def _profiler_debug_mode(flag):
    device().sim.debug_mode(int(flag))


def register_functions() -> None:
    """Register the offload and profiler global functions (idempotent)."""
    for name, fn in ((FUNC_CONV2D, _conv2d_packed_func), (FUNC_DENSE, _dense_packed_func),
                     ("vta.simulator.profiler_clear", _profiler_clear),
                     ("vta.simulator.profiler_status", _profiler_status),
                     ("vta.simulator.profiler_debug_mode", _profiler_debug_mode)):
        tvm_ffi.register_global_func(name, fn, override=True)


register_functions()


# ---- finding and quantising layers ----------------------------------------------------------
def _exp2(maxabs: float) -> int:
    """Exponent e of the power-of-two scale 2**e that maps maxabs to at most 127."""
    if not maxabs > 0 or not math.isfinite(maxabs):
        return 0
    return math.ceil(math.log2(maxabs / QMAX))


@dataclasses.dataclass(eq=False)
class Candidate:
    """A conv2d/matmul binding of ``main`` and whether it can run on VTA.

    Variables are the module's own ``relax.Var`` objects (names are not unique after some
    passes); ``name`` is for display: the variable name and the binding's position.
    """

    var: relax.Var
    kind: str  # "conv2d" | "dense"
    input: relax.Expr
    output: relax.Var  # the fused bias add's var, or ``var``
    name: str
    eligible: bool
    reason: str = ""
    bias: relax.Var | None = None


@dataclasses.dataclass(eq=False)
class QuantLayer:
    """How one offloaded layer is quantised (all scales are powers of two)."""

    name: str
    kind: str
    x_exp: int
    w_exp: int
    y_exp: int
    weight: np.ndarray  # int8: OIHW (conv) or (N, K) (dense)
    bias: np.ndarray | None  # int32 (including the rounding offset), or None
    strides: tuple = (1, 1)
    padding: tuple = (0, 0)
    output: relax.Var | None = None
    input_shape: tuple = ()  # the layer's float input (for the schedule search)

    @property
    def shift(self) -> int:
        return self.y_exp - self.x_exp - self.w_exp


@dataclasses.dataclass
class QuantPlan:
    """Calibrated int8 quantisation of the offloadable layers of one (prepared) module.

    ``layers`` maps the layer's ``relax.Var`` in that module to its :class:`QuantLayer`;
    ``skipped`` maps display names of the layers kept on the CPU to the reason.
    """

    layers: dict
    skipped: dict
    config: VTAConfig = DEFAULT_CONFIG

    def summary(self) -> str:
        lines = [f"{len(self.layers)} layer(s) offloaded to VTA, {len(self.skipped)} kept on "
                 "the CPU"]
        for q in self.layers.values():
            lines.append(f"  {q.name}: {q.kind} W{list(q.weight.shape)} shift {q.shift}")
        for name, why in self.skipped.items():
            lines.append(f"  {name}: CPU ({why})")
        return "\n".join(lines)


def find_candidates(mod, config: VTAConfig = DEFAULT_CONFIG, skip_first: bool = True
                    ) -> list[Candidate]:
    """Every conv2d / matmul-with-constant-weight binding of ``main``, in program order."""
    main_bindings = list(bindings(mod["main"]))
    counts = use_counts(mod["main"])
    cands: list[Candidate] = []
    seen_first = False
    for i, b in enumerate(main_bindings):
        v = b.value
        name = op_name(v)
        if name not in ("relax.nn.conv2d", "relax.matmul"):
            continue
        kind = "conv2d" if name == "relax.nn.conv2d" else "dense"
        if kind == "dense" and not is_const(v.args[1]):
            continue  # activation x activation matmul: not a layer
        x = v.args[0]
        c = Candidate(b.var, kind, x, b.var, f"{b.var.name}#{i}", True)
        reason = _ineligible(v, kind, config)
        if not seen_first and skip_first:
            reason = reason or "first layer stays on the CPU"
        seen_first = True
        if not isinstance(x, relax.Var):
            reason = reason or "input is not a variable"
        if reason:
            c.eligible, c.reason = False, reason
        elif counts.get(b.var, 0) == 1:
            # fuse a per-channel constant bias add that directly uses the result
            for nb in main_bindings[i + 1:]:
                if op_name(nb.value) == "relax.add":
                    a0, a1 = nb.value.args
                    if a0.same_as(b.var) and is_const(a1):
                        if _bias_vector(a1, kind, static_shape(v)) is not None:
                            c.output = nb.var
                            c.bias = nb.var
                        break
                    if a0.same_as(b.var):
                        break
        cands.append(c)
    return cands


def _bias_vector(const, kind, out_shape) -> np.ndarray | None:
    arr = const.value.numpy()
    if arr.dtype != np.float32 or out_shape is None:
        return None
    ch = out_shape[1]
    if kind == "conv2d" and arr.shape in ((1, ch, 1, 1), (ch, 1, 1)):
        return arr.reshape(ch)
    if kind == "dense" and arr.shape in ((ch,), (1, ch)):
        return arr.reshape(ch)
    return None


def _ineligible(call, kind, cfg: VTAConfig) -> str:
    x, w = call.args
    if dtype_of(x) != "float32":
        return f"input dtype {dtype_of(x)} (float32 expected)"
    if not is_const(w):
        return "weight is not a constant"
    ws = list(w.value.numpy().shape)
    xs = static_shape(x)
    if xs is None:
        return "dynamic input shape"
    if kind == "conv2d":
        a = call.attrs
        if int(a.groups) != 1:
            return f"groups={int(a.groups)} (VTA needs 1)"
        if [int(d) for d in a.dilation] != [1, 1]:
            return "dilation != 1"
        if (a.data_layout, a.kernel_layout) != ("NCHW", "OIHW") or a.out_layout not in (
                "NCHW", None, ""):
            return f"layout {a.data_layout}/{a.kernel_layout}"
        pad = [int(p) for p in a.padding]
        if len(pad) == 4 and (pad[0] != pad[2] or pad[1] != pad[3]):
            return f"asymmetric padding {pad}"
        if max(pad) > 15:
            return f"padding {max(pad)} > 15"
        cin = ws[1]
    else:
        if len(xs) != 2 or len(ws) != 2:
            return "matmul is not 2-D"
        cin = ws[0]
    if cin % cfg.block_in:
        return f"{cin} input channels is not a multiple of {cfg.block_in}"
    return ""


def _tap_module(mod, exprs: list):
    """``main`` returning the listed variables of ``main`` (for calibration)."""
    func = mod["main"]
    where = {}
    for j, p in enumerate(func.params):
        where[p] = ("param", j)
    k = 0
    for block in func.body.blocks:
        for b in block.bindings:
            where[b.var] = ("binding", k)
            k += 1
    pos = [where[e] for e in exprs]
    nd = relax.transform.ToNonDataflow()(mod)["main"]
    new_bindings = [b.var for block in nd.body.blocks for b in block.bindings]
    new_vars = [nd.params[i] if kind == "param" else new_bindings[i] for kind, i in pos]
    body = relax.SeqExpr(nd.body.blocks, relax.Tuple(new_vars))
    ret_ty = relax.TupleType([v.ty for v in new_vars])
    new = relax.Function(nd.params, body, ret_ty, True, nd.attrs)
    return relax.transform.Normalize()(tvm.IRModule({"main": new}))


def _prepare(mod):
    """FoldConstant, then fold batch norms into convs when that pass is available."""
    mod = relax.transform.FoldConstant()(mod)
    return relax.transform.FoldConstant()(FoldBatchNorm()(mod))


def quantize(mod, samples, config: VTAConfig = DEFAULT_CONFIG, skip_first: bool = True,
             target=None) -> tuple:
    """Calibrate int8 scales for every offloadable layer.

    Parameters
    ----------
    mod : tvm.IRModule
        Float Relax module (static shapes, constant weights), e.g. from ``load_onnx``.
    samples : iterable of np.ndarray
        Calibration inputs for ``main``'s single input.
    config : VTAConfig
    skip_first : bool
        Keep the first conv/dense layer in float on the CPU.
    target : optional
        Host target for the calibration run (default llvm).

    Returns
    -------
    (tvm.IRModule, QuantPlan)
        The prepared float module (constants folded, batch norms folded) the plan refers
        to, and the plan.
    """
    mod = _prepare(mod)
    cands = find_candidates(mod, config, skip_first)
    offl = [c for c in cands if c.eligible]
    skipped = {c.name: c.reason for c in cands if not c.eligible}
    if not offl:
        return mod, QuantPlan({}, skipped, config)
    exprs = []
    for c in offl:
        exprs += [c.input, c.output]
    tap = _tap_module(mod, exprs)
    tgt = tvm.target.Target(target or {"kind": "llvm"})
    vm = relax.VirtualMachine(tvm.compile(tap, tgt), tvm.cpu())
    maxabs = np.zeros(len(exprs))
    nsamp = 0
    for x in samples:
        outs = vm["main"](tvm.runtime.tensor(np.asarray(x, np.float32)))
        for i in range(len(exprs)):
            maxabs[i] = max(maxabs[i], float(np.abs(outs[i].numpy()).max()))
        nsamp += 1
    if nsamp == 0:
        raise HCPruneError("quantize() needs at least one calibration sample.")
    values = {b.var: b.value for b in list(bindings(mod["main"]))}
    layers = {}
    for i, c in enumerate(offl):
        call = values[c.var]
        w = call.args[1].value.numpy().astype(np.float64)
        if c.kind == "dense":
            w = w.T  # (K, N) -> (N, K)
        w_exp = _exp2(float(np.abs(w).max()))
        wq = np.clip(np.round(w / 2.0 ** w_exp), -QMAX, QMAX).astype(np.int8)
        x_exp, y_exp = _exp2(maxabs[2 * i]), _exp2(maxabs[2 * i + 1])
        bias_f = None
        if c.bias is not None:
            bias_f = _bias_vector(values[c.bias].args[1], c.kind, static_shape(call))
            bias_f = bias_f.astype(np.float64)
        shift = y_exp - x_exp - w_exp
        bias = None
        if bias_f is not None or shift > 0:
            acc_scale = 2.0 ** (x_exp + w_exp)
            nout = wq.shape[0]
            bias = np.zeros(nout, np.int64) if bias_f is None else np.round(bias_f / acc_scale)
            if shift > 0:
                bias = bias + (1 << (shift - 1))  # round half up instead of flooring
            bias = np.clip(bias, -(2**31), 2**31 - 1).astype(np.int32)
        strides, padding = (1, 1), (0, 0)
        if c.kind == "conv2d":
            strides = tuple(int(s) for s in call.attrs.strides)
            pad = [int(p) for p in call.attrs.padding]
            padding = (pad[0], pad[1])
        layers[c.var] = QuantLayer(c.name, c.kind, x_exp, w_exp, y_exp, wq, bias, strides,
                                   padding, c.output,
                                   tuple(static_shape(call.args[0]) or ()))
    return mod, QuantPlan(layers, skipped, config)


# ---- the rewrite ---------------------------------------------------------------------------
@mutator
class _Offloader(PyExprMutator):
    def __init__(self, mod, plan: QuantPlan, mode: str):
        super().__init__(mod)
        self.plan = plan
        self.mode = mode
        self.done: dict = {}

    def visit_var_binding_(self, binding):
        q = self.plan.layers.get(binding.var)
        if q is not None:
            y = self._emit_layer(q, binding.value)
            if q.output.same_as(binding.var):
                super().visit_var_binding_(relax.VarBinding(binding.var, y))
            else:  # bias fused: the add binding takes the result (the conv var has no use)
                self.done[q.output] = y
            return
        y = self.done.pop(binding.var, None)
        if y is not None:
            super().visit_var_binding_(relax.VarBinding(binding.var, y))
            return
        super().visit_var_binding_(binding)

    def _emit_layer(self, q: QuantLayer, call):
        bb = self.builder_
        x = self.visit_expr(call.args[0])
        f32 = "float32"
        xs = relax.op.multiply(x, relax.const(2.0 ** -q.x_exp, f32))
        xq = bb.emit(relax.op.astype(relax.op.clip(relax.op.round(xs), -QMAX, QMAX), "int8"))
        out_shape = static_shape(call)
        nout = out_shape[1]
        bias = q.bias if q.bias is not None else np.zeros(q.weight.shape[0], np.int32)
        if self.mode == "vta":
            if q.kind == "conv2d":
                params = [*q.strides, *q.padding, q.shift, -QMAX, QMAX, int(q.bias is not None)]
                func = FUNC_CONV2D
            else:
                params = [q.shift, -QMAX, QMAX, int(q.bias is not None)]
                func = FUNC_DENSE
            yq = bb.emit(relax.call_dps_packed(
                func, relax.Tuple([xq, relax.const(q.weight, "int8"),
                                   relax.const(bias, "int32"),
                                   relax.const(np.array(params, np.int64), "int64")]),
                relax.TensorType(out_shape, "int8")))
        else:
            if q.kind == "conv2d":
                acc = relax.op.nn.conv2d(xq, relax.const(q.weight, "int8"), q.strides,
                                         q.padding, out_dtype="int32")
                bshape = (1, nout, 1, 1)
            else:
                acc = relax.op.matmul(xq, relax.const(np.ascontiguousarray(q.weight.T), "int8"),
                                      out_dtype="int32")
                bshape = (1, nout)
            if q.bias is not None:
                acc = relax.op.add(acc, relax.const(q.bias.reshape(bshape), "int32"))
            if q.shift > 0:
                acc = relax.op.right_shift(acc, relax.const(q.shift, "int32"))
            elif q.shift < 0:
                acc = relax.op.left_shift(acc, relax.const(-q.shift, "int32"))
            acc = relax.op.clip(acc, -QMAX, QMAX)
            yq = bb.emit(relax.op.astype(acc, "int8"))
        return relax.op.multiply(relax.op.astype(yq, f32), relax.const(2.0 ** q.y_exp, f32))


def offload(mod, plan: QuantPlan, mode: str = "vta"):
    """Rewrite the planned layers: ``mode="vta"`` calls the simulator, ``"llvm"`` uses int ops.

    ``mod`` must be the prepared module :func:`quantize` returned.
    """
    if mode not in ("vta", "llvm"):
        raise HCPruneError(f"mode must be 'vta' or 'llvm', got {mode!r}.")
    present = {b.var for b in list(bindings(mod["main"]))}
    missing = [q.name for v, q in plan.layers.items() if v not in present]
    if missing:
        raise HCPruneError(f"the quantisation plan names layers {missing} that this module "
                           "lacks; pass the module returned by quantize().")
    new = _Offloader(mod, plan, mode).visit_expr(mod["main"])
    new = relax.analysis.remove_all_unused(new)
    out = tvm.IRModule(dict(mod.functions.items()), attrs=mod.attrs)
    out["main"] = new
    out = relax.transform.Normalize()(out)
    relax.analysis.well_formed(out)
    return out


@tvm.transform.module_pass(opt_level=0, name="OffloadToVTA")
class OffloadToVTA:
    """Module pass form of :func:`offload`.

    Parameters
    ----------
    plan : QuantPlan
    mode : {"vta", "llvm"}
    """

    def __init__(self, plan: QuantPlan, mode: str = "vta"):
        self.plan = plan
        self.mode = mode

    def transform_module(self, mod, _ctx):
        return offload(mod, self.plan, self.mode)


class VTAExecutable:
    """A compiled module with offloaded layers; call it with a numpy input."""

    def __init__(self, mod, target=None):
        self.mod = mod
        self.target = tvm.target.Target(target or {"kind": "llvm"})
        self.vm = relax.VirtualMachine(tvm.compile(mod, self.target), tvm.cpu())

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = self.vm["main"](tvm.runtime.tensor(np.asarray(x, np.float32)))
        return out.numpy() if hasattr(out, "numpy") else out[0].numpy()


def build_vta(mod, plan: QuantPlan, mode: str = "vta", target=None) -> VTAExecutable:
    """Offload (``mode="vta"``) or lower to int8 llvm ops (``"llvm"``), then compile.

    Unlike :func:`tvm_hcprune.build` (a ``tvm.compile`` executable), this returns a
    :class:`VTAExecutable`: callable on a numpy input, with the simulator's counters.

    Examples
    --------
    >>> qmod, plan = quantize(mod, samples)  # doctest: +SKIP
    >>> y = build_vta(qmod, plan)(x)  # doctest: +SKIP
    """
    return VTAExecutable(offload(mod, plan, mode), target)


def _register_pipeline() -> None:
    try:
        @relax.register_pipeline("hcprune_vta")
        def _pipeline(plan: QuantPlan | None = None, mode: str = "vta"):
            """Offload with ``plan`` (from :func:`quantize`), then the default pipeline."""
            @tvm.transform.module_pass(opt_level=0, name="HCPruneVTAPipeline")
            def _p(mod, _ctx):
                if plan is None:
                    raise HCPruneError("the hcprune_vta pipeline needs plan=quantize(...)[1]: "
                                       "relax.get_pipeline('hcprune_vta', plan=plan).")
                mod = offload(mod, plan, mode)
                return relax.get_default_pipeline(tvm.target.Target.current())(mod)
            return _p
    except ValueError:  # already registered (module reloaded)
        pass


_register_pipeline()
