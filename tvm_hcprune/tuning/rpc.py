"""TVM RPC tracker helpers with bounded waits: check a tracker, tune and run on its devices.

TVM's own client waits without bound in two places: ``connect_tracker`` retries a refused
connection for 60 s (and a silent host for the TCP timeout), and ``TrackerSession.request``
queues a request until a server with the key is free -- forever when the key is unknown or
every server died. Everything here uses sockets with timeouts instead, so an unreachable
tracker, an unknown key or a dead server gives an :class:`~tvm_hcprune.errors.HCPruneError`
(or, inside tuning, one failed measurement) within a bounded time.

Start a tracker and a server (``--port-end`` must be above ``--port``; it defaults to 9199)::

    python -m tvm.exec.rpc_tracker --host 0.0.0.0 --port 9190 --port-end 9199
    python -m tvm.exec.rpc_server --tracker HOST:9190 --key mydevice --port 9090 --port-end 9099
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import struct
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tvm
from tvm import relax, rpc
from tvm.rpc import base
from tvm.s_tir import meta_schedule as ms
from tvm.support import cc as tvm_cc
from tvm.support.popen_pool import PopenPoolExecutor

from tvm_hcprune.backend.pipeline import build, prepare
from tvm_hcprune.errors import HCPruneError
from tvm_hcprune.latency.measure import LAYER_KERNELS, random_inputs
from tvm_hcprune.utils.progress import progress_bar

#: seconds to wait for the tracker to answer a connection or a query
DEFAULT_CONNECT_TIMEOUT = 10.0
#: seconds to wait for a free server of the key
DEFAULT_REQUEST_TIMEOUT = 60.0


@dataclass(frozen=True)
class Tracker:
    """Address of an RPC tracker.

    Parameters
    ----------
    host : str
    port : int
    """

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def parse_tracker(text) -> Tracker:
    """Parse ``"host:port"`` (or a :class:`Tracker`, or a ``(host, port)`` pair)."""
    if isinstance(text, Tracker):
        return text
    if isinstance(text, tuple | list) and len(text) == 2:
        host, port = text
    else:
        text = str(text).strip()
        host, sep, port = text.rpartition(":")
        if not sep or not host:
            raise HCPruneError(
                f"RPC tracker {text!r} must look like HOST:PORT, e.g. 127.0.0.1:9190"
            )
    try:
        port = int(port)
    except (TypeError, ValueError) as err:
        raise HCPruneError(f"RPC tracker port {port!r} is not a number (HOST:PORT)") from err
    if not 0 < port < 65536:
        raise HCPruneError(f"RPC tracker port {port} is out of range 1..65535")
    return Tracker(str(host), port)


def cross_compiler(cc=None, options=None):
    """The ``fcompile`` of ``export_library`` that links libraries for an RPC device.

    A device of another ISA (an AArch64 board served from an x86 host) cannot load a
    library linked by the host's compiler: the kernels are compiled by LLVM for the device's
    target (``mtriple``/``mcpu``), then linked into a shared library by ``cc``, as tvmc's
    ``--cross-compiler`` did.

    Parameters
    ----------
    cc : str, callable or None
        A compiler command or path (``"aarch64-linux-gnu-g++"``), or an ``fcompile``
        function (e.g. ``tvm.support.cc.cross_compiler(...)``, used as given). None: the
        host's default compiler (returns None).
    options : str or list of str, optional
        Extra linker options (tvmc's ``--cross-compiler-options``), e.g.
        ``"--sysroot=/opt/sysroot -static-libstdc++"``; a string is split like a shell
        would.

    Returns
    -------
    callable or None
        ``fcompile(output, objects, options=None)`` with ``output_format`` ``"so"``.

    Raises
    ------
    HCPruneError
        The compiler is not found or not executable (the message names
        ``--cross-compiler`` and how to fix it), or options are given without a compiler.

    Examples
    --------
    >>> fcompile = cross_compiler("aarch64-linux-gnu-g++")  # doctest: +SKIP
    >>> runner = RPCRunner("127.0.0.1:9190", "rasp4", cc="aarch64-linux-gnu-g++")
    ... # doctest: +SKIP
    """
    if isinstance(options, str):
        options = shlex.split(options)
    options = list(options or [])
    if cc is None:
        if options:
            raise HCPruneError("--cross-compiler-options needs --cross-compiler (the "
                               "compiler the options are for)")
        return None
    if callable(cc):
        return tvm_cc.cross_compiler(cc, options) if options else cc
    text = str(cc).strip()
    path = shutil.which(text) if text else None
    if path is None:
        raise HCPruneError(
            f"--cross-compiler {text!r}: no such executable "
            + ("file" if os.sep in text else "on PATH")
            + "; install the device's cross toolchain (e.g. `apt install "
            "g++-aarch64-linux-gnu` for AArch64 devices) or give the compiler's full path, "
            "e.g. --cross-compiler /usr/bin/aarch64-linux-gnu-g++")

    base = options

    def fcompile(output, objects, options=None):
        tvm_cc.create_shared(output, list(objects), options=[*base, *(options or [])],
                             cc=path)

    fcompile.output_format = "so"
    fcompile.get_target_triple = tvm_cc.get_target_by_dump_machine(path)
    fcompile.compiler = path
    return fcompile


def _open(tracker: Tracker, timeout: float) -> socket.socket:
    try:
        sock = socket.create_connection((tracker.host, tracker.port), timeout=timeout)
    except OSError as err:
        raise HCPruneError(
            f"cannot reach the RPC tracker at {tracker} ({err}); start one with "
            f"`python -m tvm.exec.rpc_tracker --host {tracker.host} --port {tracker.port} "
            f"--port-end {tracker.port + 10}` or fix --rpc-tracker"
        ) from err
    sock.settimeout(timeout)
    try:
        sock.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
        magic = struct.unpack("<i", base.recvall(sock, 4))[0]
    except (OSError, RuntimeError, struct.error) as err:
        sock.close()
        raise HCPruneError(f"{tracker} does not answer like a TVM RPC tracker ({err})") from err
    if magic != base.RPC_TRACKER_MAGIC:
        sock.close()
        raise HCPruneError(f"{tracker} is not a TVM RPC tracker (wrong magic number)")
    return sock


def tracker_summary(tracker, timeout: float = DEFAULT_CONNECT_TIMEOUT) -> dict:
    """The tracker's summary (``server_info`` and ``queue_info``), within ``timeout`` s."""
    tracker = parse_tracker(tracker)
    sock = _open(tracker, timeout)
    try:
        base.sendjson(sock, [base.TrackerCode.SUMMARY])
        value = base.recvjson(sock)
    except (OSError, RuntimeError, ValueError) as err:
        raise HCPruneError(f"the RPC tracker at {tracker} did not answer ({err})") from err
    finally:
        sock.close()
    if not value or value[0] != base.TrackerCode.SUCCESS:
        raise HCPruneError(f"the RPC tracker at {tracker} answered {value!r}")
    return value[1]


def servers_for_key(summary: dict, key: str) -> int:
    """Number of servers registered under ``key`` in a tracker summary."""
    count = 0
    for item in summary.get("server_info", []):
        name = str(item.get("key", ""))
        # servers register as "server:<key>"
        if name.split(":", 1)[-1] == key:
            count += 1
    return count


def check_key(tracker, key: str, timeout: float = DEFAULT_CONNECT_TIMEOUT) -> int:
    """Raise unless ``tracker`` is reachable and has servers for ``key``; return their count."""
    if not key:
        raise HCPruneError("an RPC key is required with an RPC tracker (--rpc-key)")
    tracker = parse_tracker(tracker)
    summary = tracker_summary(tracker, timeout)
    count = servers_for_key(summary, key)
    if count == 0:
        keys = sorted(
            {str(i.get("key", "")).split(":", 1)[-1] for i in summary.get("server_info", [])}
        )
        raise HCPruneError(
            f"the RPC tracker at {tracker} has no server with key {key!r} "
            f"(registered keys: {keys or 'none'}); start one with `python -m "
            f"tvm.exec.rpc_server --tracker {tracker} --key {key}` or fix --rpc-key"
        )
    return count


def request_session(tracker, key: str, timeout: float = DEFAULT_REQUEST_TIMEOUT,
                    session_timeout: float = 0, priority: int = 1):
    """Request a server of ``key`` from the tracker and connect, waiting at most ``timeout``.

    Parameters
    ----------
    tracker : str or Tracker
        ``"host:port"``.
    key : str
        The device key servers registered with.
    timeout : float
        Seconds to wait for a free server (the tracker queues requests).
    session_timeout : float
        Seconds after which the server ends the session (0: no limit).
    priority : int
        Request priority (higher first).

    Returns
    -------
    tvm.rpc.RPCSession

    Raises
    ------
    HCPruneError
        Unreachable tracker, or no free server within ``timeout`` (unknown key, all busy or
        dead).
    """
    tracker = parse_tracker(tracker)
    deadline = time.monotonic() + timeout
    last_err: Exception | None = None
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        sock = _open(tracker, min(left, DEFAULT_CONNECT_TIMEOUT))
        sock.settimeout(left)
        try:
            base.sendjson(sock, [base.TrackerCode.REQUEST, key, "", priority])
            value = base.recvjson(sock)
        except (OSError, RuntimeError, ValueError) as err:
            last_err = err
            sock.close()
            if isinstance(err, TimeoutError | socket.timeout):
                break
            continue
        sock.close()
        if not value or value[0] != base.TrackerCode.SUCCESS:
            last_err = RuntimeError(f"tracker answered {value!r}")
            continue
        url, port, matchkey = value[1]
        try:
            return rpc.connect(url, port, matchkey, session_timeout)
        except Exception as err:  # noqa: BLE001 - a server that died after registering
            last_err = err
            time.sleep(0.2)
    raise HCPruneError(
        f"no free RPC server with key {key!r} at tracker {tracker} within {timeout:g} s"
        + (f" (last error: {last_err})" if last_err else "")
        + "; check `python -m tvm.exec.query_rpc_tracker --host "
        f"{tracker.host} --port {tracker.port}`"
    )


def create_session_for_runner(rpc_config):
    """``f_create_session`` for MetaSchedule's RPCRunner: a request with a bounded wait."""
    return request_session(
        Tracker(rpc_config.tracker_host, int(rpc_config.tracker_port)),
        rpc_config.tracker_key,
        timeout=float(rpc_config.session_timeout_sec),
        session_timeout=float(rpc_config.session_timeout_sec),
        priority=int(rpc_config.session_priority),
    )


def make_rpc_runner(tracker, key: str, *, session_timeout: float = 60.0, number: int = 3,
                    repeat: int = 1, min_repeat_ms: int = 50, max_workers: int | None = None):
    """A MetaSchedule ``RPCRunner`` measuring on the tracker's ``key`` servers, in parallel.

    The tracker and key are checked first (:func:`check_key`); ``max_workers`` defaults to
    the number of servers. Every measurement is bounded: the session request waits at most
    ``session_timeout`` and a worker that exceeds ``session_timeout`` (+ 30 s) is killed, so
    a server that dies mid-tuning costs one failed measurement, never a hang. The runner
    uploads the builder's artifact as is (a ``.tar`` is linked by the device at load time;
    :func:`tvm_hcprune.tune`'s ``cross_compiler=`` makes the builder link ``.so`` files
    here instead).
    """
    tracker = parse_tracker(tracker)
    count = check_key(tracker, key)
    workers = max_workers or count
    config = ms.runner.RPCConfig(
        tracker_host=tracker.host,
        tracker_port=tracker.port,
        tracker_key=key,
        session_priority=1,
        session_timeout_sec=int(session_timeout),
    )
    evaluator = ms.runner.EvaluatorConfig(
        number=number, repeat=repeat, min_repeat_ms=min_repeat_ms,
        enable_cpu_cache_flush=False,
    )
    runner = ms.runner.RPCRunner(
        config, evaluator, f_create_session=create_session_for_runner, max_workers=workers
    )
    # bound every measurement: RPCRunner's own pool has no timeout
    inst = runner._inst  # noqa: SLF001 - the derived object's Python instance
    inst.pool.shutdown()
    inst.pool = PopenPoolExecutor(max_workers=workers, timeout=session_timeout + 30)
    return runner


def run_remote(lib_path, inputs: dict, tracker, key: str, *, repeat: int = 0,
               timeout: float = DEFAULT_REQUEST_TIMEOUT, device: str = "cpu",
               entry: str = "main"):
    """Upload a compiled model (``export_library`` output) and run it on an RPC device.

    Parameters
    ----------
    lib_path : str or PathLike
        The ``.so`` written by ``hcprune compile`` / ``export_library``.
    inputs : dict
        Input name -> numpy array, in the function's parameter order.
    tracker, key : str
        Tracker ``host:port`` and device key.
    repeat : int
        When > 0, also time the model (``repeat`` runs) and return the times.
    timeout : float
        Seconds to wait for a free server (the session ends after ``4 * timeout``).
    device : str
        ``"cpu"`` or ``"cuda"``.

    Returns
    -------
    (outputs, times) : (list of numpy.ndarray, list of float seconds)
    """
    sess = request_session(tracker, key, timeout=timeout, session_timeout=4 * timeout)
    name = os.path.basename(str(lib_path))
    sess.upload(str(lib_path))
    rlib = sess.load_module(name)
    dev = sess.cuda() if device == "cuda" else sess.cpu()
    vm = relax.VirtualMachine(rlib, dev)
    args = [tvm.runtime.tensor(v, dev) for v in inputs.values()]
    out = vm[entry](*args)
    outputs = flatten_outputs(out)
    times: list[float] = []
    if repeat > 0:
        vm.set_input(entry, *args)
        timer = vm.time_evaluator("invoke_stateful", dev, number=1, repeat=repeat)
        times = [float(t) for t in timer(entry).results]
    return outputs, times


def flatten_outputs(out) -> list:
    """VM outputs (a tensor or nested tuple of tensors) as a flat list of numpy arrays."""
    if isinstance(out, tvm.runtime.Tensor):
        return [out.numpy()]
    if hasattr(out, "numpy"):
        return [out.numpy()]
    result = []
    for item in out:
        result.extend(flatten_outputs(item))
    return result


class RPCRunner:
    """Times layers and models on a device of an RPC tracker.

    One session is held for the runner's life. A layer's kernels (the PrimFuncs of its
    compiled module whose names hold ``conv``, ``dense`` or ``matmul``, as
    :func:`layer_kernel_ms` counts them locally) are exported as one library, uploaded and
    timed one by one with ``time_evaluator`` on the device, on random arguments of the
    shapes the functions declare; the fastest of ``number`` calls counts. Models are
    exported whole and timed in the device's Relax VM.

    The libraries are compiled for the ``target`` the caller passes (the device's, e.g.
    ``{"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72"}``) and linked
    here with ``cc`` (:func:`cross_compiler`), so a device of another ISA needs no compiler.

    Parameters
    ----------
    tracker : str
        ``host:port`` of the tracker.
    key : str
        The device key its servers registered with.
    timeout : float
        Seconds to wait for a free server.
    cc : str or callable, optional
        The cross compiler that links the uploaded libraries (tvmc's ``--cross-compiler``),
        e.g. ``"aarch64-linux-gnu-g++"`` or ``tvm.support.cc.cross_compiler(...)``; default:
        the host's compiler.
    cc_options : str or list of str, optional
        Its extra options (tvmc's ``--cross-compiler-options``).

    Examples
    --------
    >>> runner = RPCRunner("127.0.0.1:9190", "rasp4", cc="aarch64-linux-gnu-g++")
    ... # doctest: +SKIP
    >>> table = latency_table(analyze(mod), {"kind": "llvm", "mtriple": "aarch64-linux-gnu"},
    ...                       runner=runner)  # doctest: +SKIP
    """

    def __init__(self, tracker, key: str, timeout: float = 60.0, cc=None, cc_options=None):
        self.fcompile = cross_compiler(cc, cc_options)  # a missing compiler fails first
        check_key(tracker, key)
        self.tracker, self.key, self.timeout = str(tracker), key, float(timeout)
        self._sess = None
        self._dir = tempfile.TemporaryDirectory(prefix="hcprune-rpc-")
        self.uploads = 0  # libraries sent to the device

    @property
    def device(self) -> str:
        """``rpc:KEY``: what measurements from this runner are cached under."""
        return f"rpc:{self.key}"

    def close(self) -> None:
        """End the session with the server (it is free for other clients); a later
        measurement requests a new one."""
        self._sess = None

    def _session(self):
        if self._sess is None:
            self._sess = request_session(self.tracker, self.key, timeout=self.timeout)
        return self._sess

    def _upload(self, module) -> object:
        path = Path(self._dir.name) / f"hcp_{uuid.uuid4().hex}.so"
        module.export_library(str(path), fcompile=self.fcompile)
        sess = self._session()
        sess.upload(str(path))
        self.uploads += 1
        return sess.load_module(path.name)

    def layer(self, mod, inputs, target, database=None):
        """Compile one layer's module and upload its kernels; returns ``timer(number) ->
        ms``, the sum over the layer's kernels of the fastest of ``number`` calls."""
        # one kernel per layer (not chained): the layer's own kernels are timed by name
        ex = build(mod, target, database=database, chain_kernels=False)
        fused = prepare(mod, target)
        kernels = [(gv.name_hint, f) for gv, f in fused.functions_items()
                   if isinstance(f, tvm.tirx.PrimFunc)
                   and any(k in gv.name_hint for k in LAYER_KERNELS)]
        if not kernels:
            raise HCPruneError("the layer's compiled module has no conv/dense/matmul kernel "
                               "to time on the device (a tvm_hcprune bug: please report it)")
        rlib = self._upload(ex.mod.imports[0])
        dev = self._session().cpu()
        rng = np.random.default_rng(0)
        calls = []
        for name, func in kernels:
            args = []
            for p in func.params:  # TVM 0.27: buffer parameters are typed Vars
                shape = [int(d) for d in p.shape]
                args.append(tvm.runtime.tensor(
                    rng.standard_normal(shape).astype(str(p.dtype)), dev))
            calls.append((name, args))
        evaluators: dict = {}

        def timer(number: int) -> float:
            evs = evaluators.get(number)
            if evs is None:
                evs = evaluators[number] = [
                    (rlib.time_evaluator(name, dev, number=1, repeat=max(1, number)), args)
                    for name, args in calls]
            return float(sum(min(ev(*args).results) for ev, args in evs)) * 1e3

        timer(1)  # warm-up
        return timer

    def models(self, mods, target, database=None, repeats: int = 7, number: int = 5,
               progress: bool = False, desc: str = "timing", inputs=None) -> list[float]:
        """Median whole-model milliseconds of each module or executable on the device,
        timed in interleaved rounds like :func:`measure_models` (``inputs``: per model, a
        list of arrays; default random ones, which executables need)."""
        dev = self._session().cpu()
        evals = []
        for i, m in enumerate(mods):
            ex = build(m, target, database=database) if isinstance(m, tvm.IRModule) else m
            vm = relax.VirtualMachine(self._upload(ex.mod), dev)
            x = inputs[i] if inputs is not None else random_inputs(m)
            vm.set_input("main", *[tvm.runtime.tensor(a, dev) for a in x])
            ev = vm.time_evaluator("invoke_stateful", dev, number=1, repeat=number + 1)
            ev("main")  # warm-up
            evals.append(ev)
        times = [[] for _ in mods]
        for _ in progress_bar(range(repeats), enabled=progress, desc=desc):
            for i, ev in enumerate(evals):
                times[i].append(min(ev("main").results[1:]) * 1e3)
        return [float(np.median(t)) for t in times]

