"""Calibration: activation statistics and reconstruction data from real input samples.

``calibrate(mod, samples)`` runs the dense Relax module, compiled once for the host CPU, on
each sample and records, for every ``relax.nn.conv2d`` and ``relax.matmul`` binding of
``main`` (keyed by the name of the binding's var, e.g. ``"lv12"``):

* per-channel statistics of the layer's **input** (its first argument) and **output**
  (the binding itself): mean ``|x|``, APoZ (fraction of values ``<= 0``, which is the
  fraction of zeros when the tensor comes out of a ReLU), mean and variance;
* for least-squares reconstruction, ``X`` and ``Y`` at randomly chosen output positions:
  conv2d: ``X[r] = `` the input patch that produces output position ``r``, shape
  ``[rows, C_in, kh, kw]`` (zero padding included, channels first whatever the layout),
  ``Y[r] = `` the output channels there, ``[rows, C_out]``; so for ``groups == 1``
  ``Y ~= X.reshape(rows, -1) @ W.reshape(C_out, -1).T`` with ``W`` in OIHW.
  matmul: ``X`` ``[rows, K]`` input rows, ``Y`` ``[rows, N]`` output rows.
  ``Y`` is the raw output of the conv/matmul, before any bias ``add``.

How the intermediate tensors are exposed: ``main`` is copied, turned into plain bindings
(``relax.transform.ToNonDataflow``), its result replaced by a tuple of every tapped var
followed by the original result, then ``Normalize`` and ``ConvertToDataflow``; the module
is compiled once with Relax's default CPU pipeline and run per sample.

Memory is bounded: every layer keeps the same number of rows,
``min(max_rows, max_bytes // bytes_per_row_of_all_layers)``, spread evenly over the
samples, so ``X`` and ``Y`` together never exceed ``max_bytes`` (default 1 GiB: for
ResNet-50 at 224x224, 54 layers and 330 kB per row, that is 3,254 rows per layer at any
number of samples). Statistics are streamed (float64 sums); besides ``X``/``Y`` only one
sample's intermediate tensors are alive at a time.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tvm
import tvm_ffi
from tvm import relax

from tvm_hcprune.errors import HCPruneError
from tvm_hcprune.recovery.runner import (
    as_samples,
    check_samples,
    compile_module,
    module_input,
    run_first,
    vm_runner,
)
from tvm_hcprune.utils import atomic_write
from tvm_hcprune.utils.progress import progress_bar
from tvm_hcprune.utils.relax import with_taps

__all__ = ["Calibration", "ChannelStats", "LayerCalibration", "calibrate", "tap_module",
           "with_taps"]

_OPS = {"relax.nn.conv2d": "conv2d", "relax.matmul": "matmul"}
_FORMAT = "tvm_hcprune.recovery.calibration/1"


@dataclass(frozen=True, eq=False)
class ChannelStats:
    """Per-channel statistics of one tensor over all calibration samples.

    Attributes
    ----------
    mean_abs, apoz, mean, var : numpy.ndarray
        float64 ``[C]``: mean of ``|x|``, fraction of ``x <= 0``, mean and variance of ``x``,
        over samples and every non-channel position.
    count : int
        Values per channel that went into the statistics.
    """

    mean_abs: np.ndarray
    apoz: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    count: int

    @property
    def channels(self) -> int:
        return int(self.mean_abs.shape[0])


@dataclass(frozen=True, eq=False)
class LayerCalibration:
    """Calibration data of one conv2d / matmul binding.

    Attributes
    ----------
    name : str
        The binding var's name (the key).
    op : str
        ``"conv2d"`` or ``"matmul"``.
    input_var : str
        Name of the var feeding the layer (its first argument).
    input_stats, output_stats : ChannelStats
    X, Y : numpy.ndarray or None
        Reconstruction data (see the module docstring); None when ``skipped`` says why.
    attrs : dict
        conv2d: ``strides, padding (top, left, bottom, right), dilation, groups,
        kernel (kh, kw), data_layout, kernel_layout, out_layout``; both ops:
        ``input_channel_axis, output_channel_axis``.
    skipped : str
        Why ``X``/``Y`` were not collected ("" when they were).
    """

    name: str
    op: str
    input_var: str
    input_stats: ChannelStats
    output_stats: ChannelStats
    X: np.ndarray | None
    Y: np.ndarray | None
    attrs: dict = field(default_factory=dict)
    skipped: str = ""

    @property
    def rows(self) -> int:
        return 0 if self.X is None else int(self.X.shape[0])


class Calibration:
    """Result of :func:`calibrate`: one :class:`LayerCalibration` per conv2d/matmul binding.

    Mapping-like: ``cal["lv12"]``, ``"lv12" in cal``, ``for name in cal``, ``cal.layers``.

    Attributes
    ----------
    layers : dict of str to LayerCalibration
        In binding order.
    n_samples : int
    fingerprint : str
        ``tvm_ffi.structural_hash`` of the calibrated module's ``main`` (check it before
        using the data on a module: :meth:`matches`).
    meta : dict
        ``max_rows, max_bytes, seed, seconds``.
    samples : numpy.ndarray or None
        The inputs it was made from (in memory only, not saved): ``prune`` recalibrates
        the module it analyses from them when this calibration was made on another one.

    Examples
    --------
    >>> cal = tvm_hcprune.calibrate(mod, samples)  # doctest: +SKIP
    >>> cal.save("cal.npz"); cal.layers  # doctest: +SKIP
    """

    def __init__(self, layers: dict[str, LayerCalibration], n_samples: int, fingerprint: str,
                 meta: dict | None = None, samples: np.ndarray | None = None):
        self.samples = samples
        self.layers = dict(layers)
        self.n_samples = int(n_samples)
        self.fingerprint = str(fingerprint)
        self.meta = dict(meta or {})

    def __getitem__(self, name: str) -> LayerCalibration:
        try:
            return self.layers[name]
        except KeyError:
            raise HCPruneError(f"no calibration for binding {name!r}; calibrated layers: "
                               f"{list(self.layers)}") from None

    def __contains__(self, name) -> bool:
        return name in self.layers

    def __iter__(self) -> Iterator[str]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __repr__(self) -> str:
        return (f"Calibration({len(self.layers)} layers, {self.n_samples} samples, "
                f"{self.nbytes / 2**20:.1f} MiB)")

    @property
    def nbytes(self) -> int:
        """Bytes held by the reconstruction arrays ``X`` and ``Y``."""
        return sum((lc.X.nbytes + lc.Y.nbytes) for lc in self.layers.values()
                   if lc.X is not None)

    def matches(self, mod) -> bool:
        """Whether ``mod`` is structurally the module that was calibrated."""
        return _fingerprint(mod) == self.fingerprint

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        """Write an ``.npz`` file atomically (no pickles); return its path."""
        path = Path(path)
        arrays: dict[str, np.ndarray] = {}
        layers_meta = []
        for i, lc in enumerate(self.layers.values()):
            for side, st in (("in", lc.input_stats), ("out", lc.output_stats)):
                for k in ("mean_abs", "apoz", "mean", "var"):
                    arrays[f"{i}.{side}.{k}"] = getattr(st, k)
            if lc.X is not None:
                arrays[f"{i}.X"] = lc.X
                arrays[f"{i}.Y"] = lc.Y
            layers_meta.append({
                "name": lc.name, "op": lc.op, "input_var": lc.input_var, "attrs": lc.attrs,
                "skipped": lc.skipped, "in_count": lc.input_stats.count,
                "out_count": lc.output_stats.count, "has_xy": lc.X is not None,
            })
        meta = {"format": _FORMAT, "n_samples": self.n_samples,
                "fingerprint": self.fingerprint, "meta": self.meta, "layers": layers_meta}
        arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode("utf-8"), np.uint8)
        with atomic_write(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        """Read a file written by :meth:`save`."""
        path = Path(path)
        if not path.is_file():
            raise HCPruneError(f"calibration file {str(path)!r} not found")
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(bytes(z["__meta__"]).decode("utf-8"))
                if meta.get("format") != _FORMAT:
                    raise HCPruneError(f"{path} is not a tvm_hcprune calibration file "
                                       f"(format {meta.get('format')!r})")
                layers = {}
                for i, lm in enumerate(meta["layers"]):
                    def stats(side, count, i=i):
                        return ChannelStats(*(z[f"{i}.{side}.{k}"] for k in
                                              ("mean_abs", "apoz", "mean", "var")), count)

                    layers[lm["name"]] = LayerCalibration(
                        lm["name"], lm["op"], lm["input_var"],
                        stats("in", lm["in_count"]), stats("out", lm["out_count"]),
                        z[f"{i}.X"] if lm["has_xy"] else None,
                        z[f"{i}.Y"] if lm["has_xy"] else None,
                        lm["attrs"], lm["skipped"],
                    )
        except (KeyError, ValueError, OSError) as err:
            if isinstance(err, HCPruneError):
                raise
            raise HCPruneError(f"cannot read calibration file {path}: {err}") from err
        return cls(layers, meta["n_samples"], meta["fingerprint"], meta["meta"])


# --------------------------------------------------------------------------- IR side


def _fingerprint(mod) -> str:
    """``tvm_ffi.structural_hash`` of ``main`` (constant contents included), as hex."""
    return format(int(tvm_ffi.structural_hash(mod["main"])) & (2**64 - 1), "016x")


def _ints(xs) -> list[int]:
    return [int(getattr(x, "value", x)) for x in xs]


def _shape_of(expr) -> list[int] | None:
    ty = expr.ty
    shape = getattr(ty, "shape", None)
    if shape is None or not hasattr(shape, "values"):
        return None
    try:
        return _ints(shape.values)
    except (TypeError, ValueError):
        return None


def _layer_specs(func) -> list[dict]:
    """conv2d / matmul bindings of ``func`` in order, with what calibration needs."""
    specs = []
    for block in func.body.blocks:
        for b in block.bindings:
            call = b.value
            if not isinstance(call, relax.Call) or not hasattr(call.op, "name"):
                continue
            op = _OPS.get(call.op.name)
            if op is None:
                continue
            data = call.args[0]
            is_var = isinstance(data, relax.Var)
            spec = {"name": b.var.name, "op": op, "var": b.var, "input": data,
                    "input_name": data.name if is_var else "", "skipped": "", "attrs": {}}
            in_shape, out_shape = _shape_of(data), _shape_of(b.var)
            if not is_var:
                spec["skipped"] = "input is not a variable (constant input)"
            if in_shape is None or out_shape is None:
                raise HCPruneError(f"binding {b.var.name!r} ({op}) has a dynamic shape; "
                                   "calibration needs static shapes (pin them at import)")
            spec["in_shape"], spec["out_shape"] = in_shape, out_shape
            if op == "conv2d":
                at = call.attrs
                dl, kl, ol = str(at.data_layout), str(at.kernel_layout), str(at.out_layout)
                w_shape = _shape_of(call.args[1])
                spec["attrs"] = {
                    "strides": _ints(at.strides), "padding": _ints(at.padding),
                    "dilation": _ints(at.dilation), "groups": int(at.groups),
                    "kernel": [w_shape[kl.index("H")], w_shape[kl.index("W")]]
                    if w_shape is not None and set("HW") <= set(kl) else None,
                    "data_layout": dl, "kernel_layout": kl, "out_layout": ol,
                    "input_channel_axis": dl.index("C") if "C" in dl else None,
                    "output_channel_axis": ol.index("C") if "C" in ol else None,
                }
                if dl not in ("NCHW", "NHWC") or ol not in ("NCHW", "NHWC"):
                    spec["skipped"] = spec["skipped"] or (
                        f"layout {dl}->{ol} (only NCHW/NHWC patches are collected)")
                if spec["attrs"]["input_channel_axis"] is None:
                    raise HCPruneError(f"conv2d {b.var.name!r} has layout {dl} without a "
                                       "channel axis 'C'; cannot calibrate it")
            else:
                spec["attrs"] = {"input_channel_axis": len(in_shape) - 1,
                                 "output_channel_axis": len(out_shape) - 1}
            specs.append(spec)
    return specs


def tap_module(mod):
    """Copy of ``mod`` whose ``main`` also returns every conv2d/matmul input and output.

    Returns
    -------
    (tapped_mod, specs, tap_names)
        ``tapped_mod["main"]`` returns ``(*taps, original_result)``; ``tap_names[i]`` is the
        var name of tap ``i``; ``specs`` describe the layers (see :func:`calibrate`).
    """
    plain = relax.transform.ToNonDataflow()(relax.transform.Normalize()(mod))
    func = plain["main"]
    specs = _layer_specs(func)
    if not specs:
        raise HCPruneError("main has no conv2d or matmul binding; nothing to calibrate")
    names = [s["name"] for s in specs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise HCPruneError(f"binding names {dup} occur more than once in main; calibration "
                           "keys layers by name (rename the vars, e.g. re-import the model)")
    taps, tap_names = [], []
    for s in specs:
        for v in (s["input"], s["var"]):
            if isinstance(v, relax.Var) and not any(v.same_as(t) for t in taps):
                taps.append(v)
                tap_names.append(v.name)
    if len(set(tap_names)) != len(tap_names):
        raise HCPruneError(f"tapped var names are not unique ({tap_names}); calibration keys "
                           "tensors by name")
    return with_taps(plain, taps), specs, tap_names


# --------------------------------------------------------------------------- numeric side


class _StatsAcc:
    def __init__(self, channels: int):
        self.abs = np.zeros(channels)
        self.nonpos = np.zeros(channels)
        self.sum = np.zeros(channels)
        self.sq = np.zeros(channels)
        self.count = 0
        self.last_sample = -1  # a var feeding several layers is counted once per sample

    def add(self, x: np.ndarray, axis: int) -> None:
        a = np.moveaxis(x, axis, 0).reshape(x.shape[axis], -1).astype(np.float64)
        self.abs += np.abs(a).sum(1)
        self.nonpos += (a <= 0).sum(1)
        self.sum += a.sum(1)
        self.sq += np.square(a).sum(1)
        self.count += a.shape[1]

    def result(self) -> ChannelStats:
        n = max(self.count, 1)
        mean = self.sum / n
        return ChannelStats(self.abs / n, self.nonpos / n, mean,
                            np.maximum(self.sq / n - mean**2, 0.0), self.count)


def _row_bytes(spec) -> int:
    """float32 bytes of one X row + one Y row of a layer (0 if skipped)."""
    if spec["skipped"]:
        return 0
    at = spec["attrs"]
    if spec["op"] == "conv2d":
        c_in = spec["in_shape"][at["input_channel_axis"]]
        c_out = spec["out_shape"][at["output_channel_axis"]]
        kh, kw = at["kernel"]
        return 4 * (c_in * kh * kw + c_out)
    return 4 * (spec["in_shape"][-1] + spec["out_shape"][-1])


def _positions(spec) -> int:
    """Output positions per sample (rows available)."""
    if spec["op"] == "conv2d":
        ol = spec["attrs"]["out_layout"]
        shp = spec["out_shape"]
        return shp[ol.index("N")] * shp[ol.index("H")] * shp[ol.index("W")]
    return int(np.prod(spec["out_shape"][:-1]))


def _conv_rows(x: np.ndarray, y: np.ndarray, at: dict, pos: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """Input patches and output vectors at flat output positions ``pos`` (n, h, w order)."""
    if at["data_layout"] == "NHWC":
        x = x.transpose(0, 3, 1, 2)
    if at["out_layout"] == "NHWC":
        y = y.transpose(0, 3, 1, 2)
    _, _, oh_n, ow_n = y.shape
    n_idx, rem = np.divmod(pos, oh_n * ow_n)
    oh, ow = np.divmod(rem, ow_n)
    pt, pl, pb, pr = at["padding"]
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    (sh, sw), (dh, dw), (kh, kw) = at["strides"], at["dilation"], at["kernel"]
    ih = oh[:, None] * sh + np.arange(kh)[None] * dh  # [r, kh]
    iw = ow[:, None] * sw + np.arange(kw)[None] * dw  # [r, kw]
    patches = xp[n_idx[:, None, None], :, ih[:, :, None], iw[:, None, :]]  # [r, kh, kw, C]
    rows_x = np.ascontiguousarray(patches.transpose(0, 3, 1, 2), np.float32)
    rows_y = np.ascontiguousarray(y[n_idx, :, oh, ow], np.float32)  # [r, C_out]
    return rows_x, rows_y


def _matmul_rows(x: np.ndarray, y: np.ndarray, pos: np.ndarray):
    return (np.ascontiguousarray(x.reshape(-1, x.shape[-1])[pos], np.float32),
            np.ascontiguousarray(y.reshape(-1, y.shape[-1])[pos], np.float32))


def calibrate(mod, samples, max_rows: int = 4096, max_bytes: int = 2**30, seed: int = 0,
              target=None, *, progress: bool = True) -> Calibration:
    """Run the dense module on ``samples`` and collect per-layer calibration data.

    Parameters
    ----------
    mod : tvm.IRModule
        The dense Relax module (one input, weights as constants).
    samples : Dataset, (samples, labels), array ``[N, *input_shape]`` or list of arrays
        Real inputs; labels are ignored. A leading batch axis of 1 may be omitted.
    max_rows : int
        Upper bound of reconstruction rows kept per layer (over all samples).
    max_bytes : int
        Upper bound of the bytes of all ``X`` and ``Y`` arrays together.
    seed : int
        Seed of the choice of output positions.
    target : optional
        CPU target to compile for (default: the host CPU).
    progress : bool
        Show a tqdm progress bar.

    Returns
    -------
    Calibration

    Raises
    ------
    HCPruneError
        Empty samples, shape/dtype not matching the model input, NaN/Inf in the samples,
        a module without conv2d/matmul, dynamic shapes, bad limits.

    Examples
    --------
    >>> graph = tvm_hcprune.analyze(mod)  # doctest: +SKIP
    >>> cal = tvm_hcprune.calibrate(graph.mod, samples, max_rows=2048)  # doctest: +SKIP
    """
    if not isinstance(max_rows, int) or max_rows < 1:
        raise HCPruneError(f"max_rows must be an integer >= 1, got {max_rows!r}")
    if not isinstance(max_bytes, int) or max_bytes < 0:
        raise HCPruneError(f"max_bytes must be an integer >= 0, got {max_bytes!r}")
    name, shape, dtype = module_input(mod)
    arr, _, _ = as_samples(samples)
    arr = check_samples(arr, shape, dtype, name)
    n = arr.shape[0]

    t0 = time.perf_counter()
    tapped, specs, tap_names = tap_module(mod)
    vm = tvm.relax.VirtualMachine(compile_module(tapped, target), tvm.cpu())
    runner = vm_runner(vm, name, shape, dtype)

    total_row_bytes = sum(_row_bytes(s) for s in specs)
    rows_cap = max_rows if total_row_bytes == 0 else min(max_rows,
                                                         max_bytes // total_row_bytes)
    rng = np.random.default_rng(seed)
    plans, bufs = [], []
    for s in specs:
        if s["skipped"] or rows_cap == 0:
            plans.append(None)
            bufs.append(None)
            continue
        per = _positions(s)
        # rows of sample i: an even share of rows_cap, at most the positions available
        share = [min(per, rows_cap * (i + 1) // n - rows_cap * i // n) for i in range(n)]
        plans.append(share)
        total = sum(share)
        at = s["attrs"]
        if s["op"] == "conv2d":
            c_in = s["in_shape"][at["input_channel_axis"]]
            x_shape = (total, c_in, *at["kernel"])
            y_shape = (total, s["out_shape"][at["output_channel_axis"]])
        else:
            x_shape, y_shape = (total, s["in_shape"][-1]), (total, s["out_shape"][-1])
        bufs.append([np.empty(x_shape, np.float32), np.empty(y_shape, np.float32), 0])

    acc: dict[str, _StatsAcc] = {}
    for i in progress_bar(range(n), enabled=progress, desc="calibrate", leave=False):
        outs = run_first(runner, arr[i]) if i == 0 else runner.outputs(arr[i])
        vals = dict(zip(tap_names, outs[: len(tap_names)], strict=True))
        for s, plan, buf in zip(specs, plans, bufs, strict=True):
            at = s["attrs"]
            xin = vals[s["input_name"]] if s["input_name"] else None
            yout = vals[s["name"]]
            for var, val, ax in ((s["input_name"], xin, at["input_channel_axis"]),
                                 (s["name"], yout, at["output_channel_axis"])):
                if val is None:
                    continue
                if var not in acc:
                    acc[var] = _StatsAcc(val.shape[ax])
                if acc[var].last_sample != i:
                    acc[var].add(val, ax)
                    acc[var].last_sample = i
            if plan is None or plan[i] == 0:
                continue
            pos = rng.choice(_positions(s), size=plan[i], replace=False)
            if s["op"] == "conv2d":
                rx, ry = _conv_rows(xin, yout, at, pos)
            else:
                rx, ry = _matmul_rows(xin, yout, pos)
            k = buf[2]
            buf[0][k:k + len(pos)] = rx
            buf[1][k:k + len(pos)] = ry
            buf[2] = k + len(pos)

    empty = ChannelStats(np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0), 0)
    layers = {}
    for s, buf in zip(specs, bufs, strict=True):
        in_name = s["input_name"]
        skipped = s["skipped"] or ("" if buf is not None else
                                   f"max_bytes={max_bytes} leaves no row for reconstruction")
        layers[s["name"]] = LayerCalibration(
            s["name"], s["op"], in_name,
            acc[in_name].result() if in_name in acc else empty, acc[s["name"]].result(),
            None if buf is None else buf[0][: buf[2]], None if buf is None else buf[1][: buf[2]],
            s["attrs"], skipped,
        )
    meta = {"max_rows": max_rows, "max_bytes": max_bytes, "seed": seed,
            "rows_per_layer": int(rows_cap), "seconds": round(time.perf_counter() - t0, 2)}
    return Calibration(layers, n, _fingerprint(mod), meta, samples=arr)
