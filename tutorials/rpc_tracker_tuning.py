"""
Tune and run on a device through TVM's RPC tracker
==================================================

On a real deployment the model is compiled on a workstation and measured on the board: a
tracker runs somewhere both can reach, the board runs an RPC server registered under a
key, and ``hc.tune`` / ``hcprune run`` ask the tracker for a server of that key. The
commands a user runs::

    # on any host reachable by both (here: 127.0.0.1)
    python -m tvm.exec.rpc_tracker --host 0.0.0.0 --port 9190
    # on the board (e.g. a Raspberry Pi 4), after installing TVM's runtime there
    python -m tvm.exec.rpc_server --tracker TRACKER_IP:9190 --key rasp4
    # on the workstation
    hcprune tune model.onnx --target '{"kind": "llvm", "mtriple": "aarch64-linux-gnu",
        "mcpu": "cortex-a72"}' --prune-ratio 0.5 --trials 2000 --rpc-tracker TRACKER_IP:9190
        --rpc-key rasp4 -o db.json
    hcprune run model.so --inputs in.npz --rpc-tracker TRACKER_IP:9190 --rpc-key rasp4
        --print-time

This tutorial starts a tracker and one server on 127.0.0.1 (the "board" is this machine),
tunes a pruned model through them, and runs it remotely. Run::

    python tutorials/rpc_tracker_tuning.py [--quick] [--out-dir DIR]

``--quick`` (or ``HCPRUNE_TUTORIAL_QUICK=1``) measures 4 trials.
"""

# %%
# Set-up: a tracker and a server on this machine
# ----------------------------------------------
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from tvm.relax.frontend.onnx import from_onnx

import tvm_hcprune as hc
from tvm_hcprune.testing import onnx_models, run_relax
from tvm_hcprune.tuning import rpc

KEY = "tutorial-board"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(*args: str) -> subprocess.Popen:
    """``python -m ARGS`` in its own process group (stopped as a whole at the end)."""
    return subprocess.Popen([sys.executable, "-m", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True,
                            env=dict(os.environ, TVM_NUM_THREADS="1"))


def stop(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=20)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="tuning through the RPC tracker")
    ap.add_argument("--quick", action="store_true",
                    default=bool(os.environ.get("HCPRUNE_TUTORIAL_QUICK")))
    ap.add_argument("--out-dir", default=None)
    args = ap.parse_args(argv)
    out_dir = Path(args.out_dir or tempfile.mkdtemp(prefix="hcprune-tutorial-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    trials = 4 if args.quick else 256

    port = free_port()
    tracker = f"127.0.0.1:{port}"
    procs = [spawn("tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port", str(port),
                   "--port-end", str(port + 1))]
    try:
        server_port = free_port()
        procs.append(spawn("tvm.exec.rpc_server", "--host", "127.0.0.1", "--port",
                           str(server_port), "--port-end", str(server_port + 1),
                           "--tracker", tracker, "--key", KEY))
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(hc.HCPruneError):
                if rpc.check_key(tracker, KEY) >= 1:
                    break
            if time.monotonic() > deadline:
                raise SystemExit("the RPC server did not register with the tracker")
            time.sleep(0.5)
        print(f"tracker {tracker}: {rpc.check_key(tracker, KEY)} server(s) for key {KEY!r}")

        # %%
        # 1. Prune for the board's target
        # -------------------------------
        # The target names the board's CPU; here the host itself (x86, AVX2 code).
        target = {"kind": "llvm", "mcpu": "znver3", "num-cores": 1}
        mod = from_onnx(onnx_models.small_resnet(width=16, image=16, num_classes=4))
        pruned, report = hc.prune(mod, ratio=0.5, target=target)
        print(report.summary().splitlines()[1])

        # %%
        # 2. Tune: every candidate is measured on the tracker's servers
        # -------------------------------------------------------------
        db = hc.tune(pruned, target, trials=trials, trials_per_task=1, rpc_tracker=tracker,
                     rpc_key=KEY, output=out_dir / "db.json", progress=False)
        print(f"database: {len(db)} record(s), measured by {db.meta['runner']}")

        # %%
        # 3. Build with the records, run on the board, compare with a local run
        # ---------------------------------------------------------------------
        lib = out_dir / "pruned.so"
        hc.build(pruned, target, database=db).export_library(str(lib))
        x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype("float32")
        outputs, times = rpc.run_remote(lib, {"input": x}, tracker, KEY, repeat=3,
                                        timeout=60)
        local = run_relax(pruned, [x], build=hc.build)
        diff = float(np.abs(outputs[0] - local).max())
        print(f"remote run: {np.median(times) * 1e3:.3f} ms median; "
              f"max |remote - local| = {diff:.1e}")
        assert diff < 1e-4
    finally:
        for p in reversed(procs):
            stop(p)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
