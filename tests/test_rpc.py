"""RPC: a real tracker and two real servers on 127.0.0.1 (subprocesses, torn down after).

Checks: the tracker sees both servers; an unreachable tracker, an unknown key and a dead
server fail with HCPruneError (or a failed measurement) within a bounded time; tuning runs
through the servers; a pruned model runs remotely with outputs equal to the local run.
That work ran on the servers is read from the servers' own logs: TVM's RPC server logs
``load_module <path>`` for every module a client uploaded and loaded there.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import tvm_hcprune as hc
from tvm_hcprune.errors import HCPruneError
from tvm_hcprune.testing.onnx_models import GraphBuilder
from tvm_hcprune.tuning import rpc as hrpc

KEY = "hcprune-test"
TARGET = {"kind": "llvm", "mcpu": "znver3", "num-cores": 2}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(args: list[str], log=None) -> subprocess.Popen:
    """Start ``python -m args``; its stderr (where TVM's RPC server logs) goes to ``log``."""
    env = dict(os.environ, TVM_NUM_THREADS="1")
    err = subprocess.DEVNULL if log is None else open(log, "wb")
    try:
        return subprocess.Popen([sys.executable, "-m", *args], env=env,
                                stdout=subprocess.DEVNULL, stderr=err,
                                start_new_session=True)
    finally:
        if log is not None:
            err.close()  # the child keeps its own descriptor


# the logs of the module tracker's servers (filled by the ``tracker`` fixture)
SERVER_LOGS: list = []


def _server_loads() -> list[list[str]]:
    """Per server, the ``load_module`` lines it logged so far: one per module a client
    uploaded to that server and loaded there (a measurement or a remote run)."""
    out = []
    for log in SERVER_LOGS:
        text = log.read_text("utf-8", "replace") if log.exists() else ""
        out.append([ln for ln in text.splitlines() if "load_module" in ln])
    return out


def _loaded_since(before: list[list[str]]) -> list[str]:
    """The ``load_module`` lines logged since ``before`` (a :func:`_server_loads` result)."""
    return [ln for old, new in zip(before, _server_loads(), strict=True)
            for ln in new[len(old):]]


def stop_process(proc: subprocess.Popen) -> None:
    """Stop a server started in its own session: SIGTERM, then SIGKILL after 10 s."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def _start_server(tracker_port: int, key: str, log=None) -> subprocess.Popen:
    port = _free_port()
    return _spawn(["tvm.exec.rpc_server", "--host", "127.0.0.1", "--port", str(port),
                   "--port-end", str(port + 1), "--tracker", f"127.0.0.1:{tracker_port}",
                   "--key", key], log)


def _wait_for(tracker: str, key: str, count: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(HCPruneError):
            if hrpc.servers_for_key(hrpc.tracker_summary(tracker, 5), key) >= count:
                return
        time.sleep(0.5)
    raise TimeoutError(f"{count} server(s) for {key} did not register within {timeout} s")


@pytest.fixture(scope="module")
def tracker(tmp_path_factory):
    """A tracker with two servers of KEY, logging to SERVER_LOGS; yields 'host:port'."""
    port = _free_port()
    procs = [_spawn(["tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port", str(port),
                     "--port-end", str(port + 1)])]
    addr = f"127.0.0.1:{port}"
    logs = tmp_path_factory.mktemp("rpc_logs")
    SERVER_LOGS[:] = [logs / "server0.log", logs / "server1.log"]
    try:
        procs += [_start_server(port, KEY, log) for log in SERVER_LOGS]
        _wait_for(addr, KEY, 2)
        yield addr
    finally:
        for proc in reversed(procs):
            stop_process(proc)


def tiny_cnn(width: int = 16):
    g = GraphBuilder(0)
    x = g.conv_bn("input", 3, width, 3)
    y = g.conv_bn(x, width, width, 3, act=None)
    x = g.op("Relu", [g.op("Add", [y, x])])
    out = g.head(x, width, 4)
    return g.model(out, [1, 3, 10, 10], [1, 4], "tiny_cnn")


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    import onnx

    path = tmp_path_factory.mktemp("m") / "tiny.onnx"
    onnx.save(tiny_cnn(), path)
    mod = hc.load_onnx(str(path), log=lambda *a: None)
    pmod, _ = hc.prune(mod, ratio=0.5, target=TARGET)
    return pmod


def test_tracker_sees_both_servers(tracker):
    assert hrpc.check_key(tracker, KEY) == 2


@pytest.mark.parametrize("text", ["localhost", "host:port", ":9190", "h:70000"])
def test_bad_tracker_address(text):
    with pytest.raises(HCPruneError):
        hrpc.parse_tracker(text)


def test_unreachable_tracker_fails_fast():
    """Nothing listens on the port: a clear error well within the connect timeout."""
    start = time.monotonic()
    with pytest.raises(HCPruneError, match="cannot reach the RPC tracker"):
        hrpc.check_key(f"127.0.0.1:{_free_port()}", KEY, timeout=3)
    assert time.monotonic() - start < 10


def test_unknown_key_fails_with_registered_keys(tracker):
    with pytest.raises(HCPruneError, match=f"registered keys: \\['{KEY}'\\]"):
        hrpc.check_key(tracker, "no-such-device")
    start = time.monotonic()
    with pytest.raises(HCPruneError, match="no free RPC server"):
        hrpc.request_session(tracker, "no-such-device", timeout=2)
    assert time.monotonic() - start < 15


def test_tune_rejects_unknown_key_before_work(tracker, tmp_path):
    out = tmp_path / "db.json"
    with pytest.raises(HCPruneError, match="no server with key"):
        hc.tune(None, TARGET, trials=2, rpc_tracker=tracker, rpc_key="nope", output=out)
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.tuning
def test_tune_through_rpc_servers(tracker, pruned, tmp_path):
    """Measurements run on the tracker's servers (RPCRunner, both in parallel) and give
    valid records that the pipeline applies: the servers' logs show at least one uploaded
    module loaded per valid measurement, and the two whole-model builds of the model check
    (records vs rules only) loaded on a server."""
    out = tmp_path / "db.json"
    before = _server_loads()
    db, stats = hc.tune(pruned, TARGET, trials=4, trials_per_task=1, rpc_tracker=tracker,
                        rpc_key=KEY, output=out, progress=False, return_stats=True,
                        seed_rules=False, session_timeout=60)
    assert stats.valid > 0 and out.exists()
    assert db.meta["runner"] == "rpc"
    loaded = _loaded_since(before)
    assert len(loaded) >= stats.valid, (len(loaded), stats.valid, SERVER_LOGS)
    # "never slower than the rules" on the device: without seeds no task was checked, so
    # the whole model, with the records and rules-only, was timed on a server
    model = stats.model
    assert "ratio" in model and model["timed_on"] == f"RPC key {KEY!r} at {tracker}", model
    checks = [ln for ln in loaded if "hcprune_model_check_" in ln]
    assert sorted(ln.rsplit("_", 1)[-1] for ln in checks) == ["rules.so", "tuned.so"], checks
    assert len(db) == (len(stats.unchecked) if model["kept"] == "tuned" else 0)
    from tvm_hcprune.backend.database import load_database

    assert len(load_database(out, TARGET)) == len(db)


@pytest.mark.slow
def test_pruned_model_runs_remotely_like_locally(tracker, pruned, tmp_path):
    import tvm
    from tvm import relax

    ex = hc.build(pruned, TARGET)
    lib = tmp_path / "net.so"
    ex.export_library(str(lib))
    x = np.random.default_rng(0).standard_normal((1, 3, 10, 10)).astype("float32")
    local = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    before = _server_loads()
    outputs, times = hrpc.run_remote(lib, {"input": x}, tracker, KEY, repeat=2, timeout=30)
    np.testing.assert_allclose(outputs[0], local, rtol=1e-6, atol=1e-6)
    assert len(times) == 2
    # one server received the library and loaded it
    loaded = _loaded_since(before)
    assert len(loaded) == 1 and loaded[0].endswith("net.so"), loaded


@pytest.mark.slow
def test_cli_run_over_rpc(tracker, pruned, tmp_path, capsys):
    """`hcprune run --rpc-tracker --rpc-key` prints times and writes the remote outputs."""
    from tvm_hcprune.cli import main

    lib = tmp_path / "net.so"
    hc.build(pruned, TARGET).export_library(str(lib))
    x = np.random.default_rng(1).standard_normal((1, 3, 10, 10)).astype("float32")
    np.savez(tmp_path / "in.npz", input=x)
    status = main(["run", str(lib), "--inputs", str(tmp_path / "in.npz"), "--rpc-tracker",
                   tracker, "--rpc-key", KEY, "--print-time", "--repeat", "2", "--outputs",
                   str(tmp_path / "out.npz")])
    assert status == 0
    assert "Execution time summary" in capsys.readouterr().out
    outputs, _ = hrpc.run_remote(lib, {"input": x}, tracker, KEY, timeout=30)
    np.testing.assert_allclose(np.load(tmp_path / "out.npz")["output_0"], outputs[0])
    status = main(["run", str(lib), "--inputs", str(tmp_path / "in.npz"), "--rpc-tracker",
                   tracker, "--rpc-key", "absent"])
    assert status == 2


@pytest.mark.slow
def test_dead_server_gives_failed_measurement_not_hang(tracker, tmp_path):
    """A key whose only server was killed: a measurement returns an error within the
    session bound, and a session request fails within its timeout."""
    from tvm.s_tir import meta_schedule as ms

    port = int(tracker.rsplit(":", 1)[1])
    server = _start_server(port, "doomed")
    try:
        _wait_for(tracker, "doomed", 1)
        runner = hrpc.make_rpc_runner(tracker, "doomed", session_timeout=3)
    finally:
        stop_process(server)
    # a trivial artifact: MetaSchedule never gets to upload it
    arg = ms.arg_info.TensorInfo("float32", [4])
    start = time.monotonic()
    (future,) = runner.run([ms.runner.RunnerInput(str(tmp_path / "none.tar"), "cpu", [arg])])
    result = future.result()
    assert result.error_msg and result.run_secs is None
    with pytest.raises(HCPruneError, match="no free RPC server"):
        hrpc.request_session(tracker, "doomed", timeout=3)
    assert time.monotonic() - start < 60


def test_tune_bsr_kernel_through_rpc_servers(tracker):
    """A BSR layer tuned over RPC: the servers run its knob choices on the model's real
    index arrays (copied to the remote device), every measurement valid."""
    from test_bsr_tune import sparse_matmul

    from tvm_hcprune.tuning.bsr import is_bsr_func

    mod, _ = sparse_matmul()
    _, stats = hc.tune(mod, TARGET, trials=6, trials_per_task=3, rpc_tracker=tracker,
                       rpc_key=KEY, progress=False, return_stats=True, session_timeout=60,
                       model_check=False)
    bsr = [r for r in stats.measured.records() if is_bsr_func(r.workload.mod["main"])]
    assert len(bsr) >= 3, (len(bsr), stats.errors)  # the seed and its knob choices
    assert all(max(float(s) for s in r.run_secs) < 1e9 for r in bsr)


@pytest.mark.slow
@pytest.mark.tuning
def test_tune_through_rpc_with_a_cross_compiler(tracker, pruned, logging_cc):
    """With cross_compiler=, every candidate measured on the servers and both builds of
    the model check are linked into a .so by that compiler (a wrapper that logs its calls
    and runs the host g++), and the servers loaded those libraries."""
    cc, log = logging_cc
    before = _server_loads()
    db, stats = hc.tune(pruned, TARGET, trials=2, trials_per_task=1, rpc_tracker=tracker,
                        rpc_key=KEY, progress=False, return_stats=True, seed_rules=False,
                        session_timeout=60, cross_compiler=cc,
                        cross_compiler_options=["-DHCPRUNE_DEVICE_LINK"])
    assert stats.valid > 0
    links = [ln for ln in log.read_text().splitlines() if "-shared" in ln]
    assert all("-DHCPRUNE_DEVICE_LINK" in ln for ln in links)
    assert sum("tvm_tmp_mod.so" in ln for ln in links) >= stats.valid
    loaded = _loaded_since(before)
    assert sum(ln.endswith("tvm_tmp_mod.so") for ln in loaded) >= stats.valid
    if "ratio" in stats.model:  # the model check ran on a server, linked here too
        assert sum("hcprune_model_check_" in ln for ln in links) == 2
