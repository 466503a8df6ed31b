"""Latency tables measured on an RPC device, and the closed loop that corrects a latency
budget's plan by measuring the pruned model.

The RPC tests start a real tracker and server on 127.0.0.1 (subprocesses, torn down after)
and prove the kernels ran on the server from its own log: one ``load_module`` line per
library this process uploaded. The closed-loop logic is checked exactly with a runner whose
"measurement" is a known function of the plan.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import onnx
import pytest
import tvm
from test_rpc import stop_process
from tvm import relax

import tvm_hcprune as hc
from tvm_hcprune.cli import main
from tvm_hcprune.errors import HCPruneError
from tvm_hcprune.latency import MeasuredLatency, RooflineModel, latency_table
from tvm_hcprune.testing.onnx_models import GraphBuilder
from tvm_hcprune.testing.oracle import masked_reference
from tvm_hcprune.transform.prune_channels import budget_plan
from tvm_hcprune.tuning import rpc as hrpc

KEY = "hcprune-latency"
IMAGE = 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(args, log=None) -> subprocess.Popen:
    env = dict(os.environ, TVM_NUM_THREADS="1")
    out = log if log is not None else subprocess.DEVNULL
    return subprocess.Popen([sys.executable, "-m", *args], env=env, stdout=out, stderr=out,
                            start_new_session=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A tracker and one server of KEY logging to a file; yields (tracker, log path)."""
    log_path = tmp_path_factory.mktemp("rpc") / "server.log"
    port = _free_port()
    procs = [_spawn(["tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port", str(port),
                     "--port-end", str(port + 1)])]
    tracker = f"127.0.0.1:{port}"
    log = open(log_path, "w")  # noqa: SIM115 - closed in the finally below
    try:
        sport = _free_port()
        procs.append(_spawn(["tvm.exec.rpc_server", "--host", "127.0.0.1", "--port",
                             str(sport), "--port-end", str(sport + 1), "--tracker", tracker,
                             "--key", KEY], log))
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            with contextlib.suppress(HCPruneError):
                if hrpc.servers_for_key(hrpc.tracker_summary(tracker, 5), KEY) >= 1:
                    break
            time.sleep(0.5)
        else:
            raise TimeoutError("the RPC server did not register")
        yield tracker, log_path
    finally:
        for proc in reversed(procs):
            stop_process(proc)
        log.close()


def _loads(log_path) -> int:
    """Libraries the server loaded (its log's ``load_module`` lines)."""
    return log_path.read_text().count("load_module")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    g = GraphBuilder(7)
    x = g.conv_bn("input", 3, 32, 3)
    x = g.conv_bn(x, 32, 32, 3)
    out = g.head(x, 32, 4)
    path = tmp_path_factory.mktemp("m") / "m.onnx"
    onnx.save(g.model(out, [1, 3, IMAGE, IMAGE], [1, 4], "rpc_cnn"), path)
    return path, hc.load_onnx(path, log=lambda *_: None)


def test_latency_table_measured_on_the_rpc_server(server, model, tmp_path):
    """Every layer kernel and both whole-model timings ran on the server (it loaded each
    uploaded library); the table is cached under the device key, so a second run with the
    same key measures nothing, and a local run does not reuse the remote figures."""
    tracker, log_path = server
    _path, mod = model
    graph = hc.analyze(mod)
    before = _loads(log_path)
    runner = hrpc.RPCRunner(tracker, KEY)
    opts = {"widths": 2, "repeats": 2, "number": 2, "cache_dir": tmp_path, "progress": False}
    table = latency_table(graph, "llvm", runner=runner, **opts)
    assert table.device == f"rpc:{KEY}" and table.measured > 0
    assert runner.uploads >= 3  # kernels of >= 1 layer module + the dense and low models
    deadline = time.monotonic() + 10
    while _loads(log_path) - before < runner.uploads and time.monotonic() < deadline:
        time.sleep(0.2)  # the server's log is flushed asynchronously
    assert _loads(log_path) - before == runner.uploads
    ms = [t.ms for t in table.layers.values()]
    assert all(np.all(np.isfinite(m)) and np.all(m > 0) for m in ms)
    assert table.dense_ms > 0
    caches = [json.loads(p.read_text())["target"] for p in tmp_path.glob("*.json")]
    assert any(c.endswith(f"|rpc:{KEY}") for c in caches)
    again = latency_table(graph, "llvm", runner=hrpc.RPCRunner(tracker, KEY), **opts)
    assert again.measured == 0 and again.dense_ms == table.dense_ms
    assert _loads(log_path) - before == runner.uploads  # nothing more was sent
    local = latency_table(graph, "llvm", **opts)
    assert local.device == "local" and local.measured > 0


def test_unknown_rpc_key_fails_before_measuring(server):
    """A key no server registered: a clear error naming the registered keys."""
    tracker, _log = server
    with pytest.raises(HCPruneError, match=KEY):
        hrpc.RPCRunner(tracker, "no-such-device")


class _KnownRunner:
    """A runner whose pruned model "measures" ``dense_ms * macs_fraction ** 0.6``: the
    latency the loop must find, unlike the roofline table's prediction."""

    device = "fake"

    def __init__(self, graph):
        self.graph = graph
        self.calls = 0
        self.sizes = []  # models timed per call (the dense one first)

    def models(self, mods, target, database=None, repeats=5, number=5, **_):
        self.calls += 1
        self.sizes.append(len(mods))
        return [10.0] + [10.0 * (hc.analyze(m).total_macs / self.graph.total_macs) ** 0.6
                         for m in mods[1:]]


class _RooflineSpec(MeasuredLatency):
    def for_graph(self, graph, target, align, min_channels=1):
        return RooflineModel(target)


def test_closed_loop_lands_within_tolerance(model):
    """Measured at 0.5 of the dense latency within 5%: the loop re-plans until the
    measurement (a known function of the plan) is within tolerance; the report and the plan
    record every step; the result equals the masked reference of the chosen plan."""
    _path, mod = model
    graph = hc.analyze(mod)
    runner = _KnownRunner(graph)
    spec = _RooflineSpec(runner=runner, refine=4, tolerance=0.05, progress=False)
    # two convs: with the first one protected (the budgets' default) 0.5 is out of reach
    pruned, report = hc.prune(mod, budget=hc.Latency(fraction=0.5), graph=graph, target="llvm",
                              latency_model=spec, align=4, prune_first_conv=True)
    steps = report.plan.config["closed_loop"]
    # the table's plan missed; at least one re-plan (both allocations timed in each round)
    assert runner.calls >= len(steps) >= 2
    assert abs(steps[0]["error"]) > 0.05
    final = steps[report.plan.config["closed_loop_pick"]]
    assert abs(final["error"]) <= 0.05
    macs = report.macs_fraction
    assert final["measured_fraction"] == pytest.approx(macs ** 0.6)
    x = np.random.default_rng(0).standard_normal((1, 3, IMAGE, IMAGE)).astype("float32")
    outs = [relax.VirtualMachine(hc.build(m, "llvm"), tvm.cpu())["main"](
        tvm.runtime.tensor(x)).numpy() for m in (pruned, masked_reference(mod, report.plan))]
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-4, atol=1e-5)


def test_closed_loop_compares_allocations_at_equal_measured_latency(model):
    """With compare_uniform the knapsack's allocation, the uniform one and the uniform ratio
    (when its plan differs from theirs) are each corrected by measurement, timed in the same
    rounds, before ``choose`` compares them: every plan it is offered measures within
    tolerance of the goal (a known function of the plan, which the roofline table misses),
    and the one it picks is returned with the scores."""
    _path, mod = model
    graph = hc.analyze(mod)
    runner = _KnownRunner(graph)
    spec = _RooflineSpec(runner=runner, refine=4, tolerance=0.05, progress=False)
    offered = []

    def choose(plans):
        offered.append(plans)
        return 1, [0.3, 0.1, 0.2][:len(plans)]

    config = hc.PruneConfig(prune_first_conv=True)
    plan, *_ = budget_plan(graph, config, 4, hc.Latency(fraction=0.7), "llvm", spec,
                           choose=choose)
    (plans,) = offered  # asked once, after the loop
    knap, uni = plans[:2]
    starts = [p.config["allocation_start"] for p in plans]  # the ratio: when it differs
    assert starts in (["dense", "uniform"], ["dense", "uniform", "ratio"])
    assert knap.kept != uni.kept
    for p in plans:
        final = p.config["closed_loop"][p.config["closed_loop_pick"]]
        assert abs(final["error"]) <= 0.05
        macs = graph.count_after(p)[0] / graph.total_macs
        assert final["measured_fraction"] == pytest.approx(macs ** 0.6)
    assert max(runner.sizes) == 1 + len(plans)  # dense and every family's plan in one run
    assert plan.kept == uni.kept and plan.config["allocation_start"] == "uniform"
    assert plan.config["allocation_scores"] == dict(zip(starts, [0.3, 0.1, 0.2], strict=False))
    assert plan.config["closed_loop_timed"] == sum(runner.sizes)


def test_closed_loop_on_the_rpc_device(server, model, tmp_path):
    """The closed loop times the pruned model on the same runner as the table: the server
    loads the dense and every pruned model it measures."""
    tracker, log_path = server
    _path, mod = model
    graph = hc.analyze(mod)
    runner = hrpc.RPCRunner(tracker, KEY)
    spec = MeasuredLatency(runner=runner, widths=2, repeats=2, number=2, cache_dir=tmp_path,
                           progress=False, refine=1)
    latency_table(graph, "llvm", runner=runner, widths=2, repeats=2, number=2,
                  cache_dir=tmp_path, progress=False)
    uploads = runner.uploads
    _pruned, report = hc.prune(mod, budget=hc.Latency(fraction=0.6), graph=graph,
                               target="llvm", latency_model=spec, prune_first_conv=True)
    steps = report.plan.config["closed_loop"]
    assert 1 <= len(steps) <= 2
    # dense + the pruned plans of every round (the knapsack's and the uniform one)
    assert runner.uploads - uploads == report.plan.config["closed_loop_timed"] >= 2 * len(steps)
    assert all(s["measured_ms"] > 0 and s["dense_ms"] > 0 for s in steps)


def test_cli_rpc_flags(server, model, tmp_path, monkeypatch, capsys):
    """hcprune compile --latency-budget with --rpc-tracker/--rpc-key measures on the device;
    a missing key, a lone flag or RPC flags without a latency budget exit 2, writing
    nothing."""
    tracker, log_path = server
    path, _mod = model
    monkeypatch.setenv("TVM_HCPRUNE_CACHE", str(tmp_path / "cache"))
    before = _loads(log_path)
    out = tmp_path / "m.so"
    assert main(["compile", str(path), "--latency-budget", "0.7x", "--rpc-tracker", tracker,
                 "--rpc-key", KEY, "--target", "llvm", "--prune-first-conv",
                 "-o", str(out)]) == 0
    assert out.stat().st_size > 0
    time.sleep(0.5)
    assert _loads(log_path) > before
    bad = tmp_path / "bad.so"
    for flags, why in (
        (["--latency-budget", "0.7x", "--rpc-tracker", tracker, "--rpc-key", "nope"], "nope"),
        (["--latency-budget", "0.7x", "--rpc-tracker", tracker], "go together"),
        (["--macs-budget", "0.7x", "--rpc-tracker", tracker, "--rpc-key", KEY],
         "add --latency-budget"),
    ):
        assert main(["compile", str(path), *flags, "-o", str(bad)]) == 2
        assert why in capsys.readouterr().err
        assert not bad.exists()


# a device target of its own ISA level (AVX2 code: runs on any x86-64-v3 host, this one too)
DEVICE = {"kind": "llvm", "mcpu": "znver3"}


def _links(log) -> list[str]:
    """The wrapper's link commands (not its ``-dumpmachine`` queries)."""
    text = log.read_text() if log.exists() else ""
    return [ln for ln in text.splitlines() if "-shared" in ln]


def test_cross_compiler_links_what_the_server_runs(server, model, tmp_path, logging_cc,
                                                   monkeypatch, capsys):
    """RPCRunner(cc=...) links every uploaded layer and model library with the given
    compiler and its options (the wrapper logged one link per upload) for the device's
    target, and the server loaded each of them; the CLI's --cross-compiler does the same for
    the budget's measurements and links the -o library too."""
    tracker, log_path = server
    path, mod = model
    cc, cc_log = logging_cc
    monkeypatch.setenv("TVM_HCPRUNE_CACHE", str(tmp_path / "cache"))
    graph = hc.analyze(mod)
    before = _loads(log_path)
    runner = hrpc.RPCRunner(tracker, KEY, cc=cc, cc_options="-DHCPRUNE_DEVICE_LINK")
    table = latency_table(graph, DEVICE, runner=runner, repeats=2, number=2, progress=False)
    assert table.measured > 0 and runner.uploads >= 3
    links = _links(cc_log)
    assert len(links) == runner.uploads
    assert all("-DHCPRUNE_DEVICE_LINK" in ln and "/hcp_" in ln for ln in links)
    deadline = time.monotonic() + 10
    while _loads(log_path) - before < runner.uploads and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _loads(log_path) - before == runner.uploads
    runner.close()  # the only server is free for the CLI's session
    # the CLI: same target and key, so the table is cached; the closed loop's dense and
    # pruned models and the -o library are linked by the wrapper
    out = tmp_path / "m.so"
    n_links = len(_links(cc_log))
    assert main(["compile", str(path), "--latency-budget", "0.7x", "--rpc-tracker", tracker,
                 "--rpc-key", KEY, "--target", json.dumps(DEVICE), "--cross-compiler", cc,
                 "--prune-first-conv", "-o", str(out)]) == 0, capsys.readouterr().err
    new = _links(cc_log)[n_links:]
    assert len(new) >= 3  # >= 1 closed-loop step (dense + pruned) and the -o library
    assert any(str(out.parent) in ln and "/hcp_" not in ln for ln in new)  # the -o link
    x = np.random.default_rng(0).standard_normal((1, 3, IMAGE, IMAGE)).astype("float32")
    got, _ = hrpc.run_remote(out, {"input": x}, tracker, KEY, timeout=30)
    assert got[0].shape == (1, 4) and np.all(np.isfinite(got[0]))


def test_cross_compiler_for_tuning_candidates(server, tmp_path, logging_cc):
    """hc.tune's builder with a cross compiler links each candidate into a .so with it, and
    MetaSchedule's RPC runner measures that library on the server."""
    from tvm.s_tir import meta_schedule as ms
    from tvm.script import tirx as T

    from tvm_hcprune.tuning.tune import in_process_builder

    tracker, log_path = server
    cc, cc_log = logging_cc

    @T.prim_func
    def add(a: T.Buffer((64,), "float32"), b: T.Buffer((64,), "float32")):
        for i in range(64):
            b[i] = a[i] + T.float32(1)

    target = tvm.target.Target(DEVICE)
    builder = in_process_builder(tmp_path, hrpc.cross_compiler(cc))
    (built,) = builder.build([ms.builder.BuilderInput(tvm.IRModule({"main": add}), target)])
    assert built.error_msg is None and built.artifact_path.endswith(".so")
    assert len(_links(cc_log)) == 1 and built.artifact_path in _links(cc_log)[0]
    before = _loads(log_path)
    runner = hrpc.make_rpc_runner(tracker, KEY, session_timeout=30, number=2)
    args = ms.arg_info.ArgInfo.from_prim_func(add)
    (future,) = runner.run([ms.runner.RunnerInput(built.artifact_path, "cpu", args)])
    result = future.result()
    assert result.error_msg is None and min(float(s) for s in result.run_secs) > 0
    deadline = time.monotonic() + 10
    while _loads(log_path) == before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _loads(log_path) - before == 1


def test_missing_cross_compiler_names_the_flag(server, model, tmp_path, capsys):
    """A compiler that does not exist: HCPruneError naming --cross-compiler and the fix,
    before any measurement (Python, tune, CLI); the CLI exits 2 and writes nothing."""
    tracker, _log = server
    path, mod = model
    for cc in ("no-such-cross-g++", str(tmp_path / "missing-g++")):
        with pytest.raises(HCPruneError, match="--cross-compiler.*full path"):
            hrpc.RPCRunner(tracker, KEY, cc=cc)
    with pytest.raises(HCPruneError, match="needs --cross-compiler"):
        hrpc.cross_compiler(None, "-static")
    with pytest.raises(HCPruneError, match="--cross-compiler.*install"):
        hc.tune(mod, DEVICE, trials=2, rpc_tracker=tracker, rpc_key=KEY,
                cross_compiler="no-such-cross-g++")
    with pytest.raises(HCPruneError, match="RPC device"):
        hc.tune(mod, DEVICE, trials=2, cross_compiler="g++")
    bad = tmp_path / "bad.so"
    assert main(["compile", str(path), "--latency-budget", "0.7x", "--rpc-tracker", tracker,
                 "--rpc-key", KEY, "--cross-compiler", "no-such-cross-g++",
                 "-o", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "--cross-compiler" in err and "install" in err and not bad.exists()
    assert main(["tune", str(path), "--trials", "2", "--cross-compiler", "g++",
                 "-o", str(tmp_path / "db.json")]) == 2
    assert "--rpc-tracker" in capsys.readouterr().err
