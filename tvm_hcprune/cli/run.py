"""``hcprune run``: run a compiled model locally or on an RPC device (tvmc run).

    hcprune run model.so --inputs in.npz [--rpc-tracker H:P --rpc-key K] \\
        --print-time --repeat 10 [--outputs out.npz] [--device cpu|cuda]

``--inputs`` is an ``.npz`` whose arrays are the model's inputs in parameter order (the
order ``numpy.savez`` stored them). ``--outputs`` writes ``output_0``, ``output_1``, ...
atomically.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import tvm
from tvm import relax

from tvm_hcprune.errors import HCPruneError
from tvm_hcprune.tuning.rpc import check_key, flatten_outputs, run_remote
from tvm_hcprune.utils import atomic_write


def register(subparsers) -> None:
    """Add ``hcprune run``."""
    p = subparsers.add_parser(
        "run", help="run a compiled model (tvmc run)",
        description="Run a library written by `hcprune compile`, locally or on a device "
                    "registered with a TVM RPC tracker.",
    )
    p.add_argument("library", help="compiled model (.so/.tar from `hcprune compile`)")
    p.add_argument("--inputs", required=True, help=".npz file with the input arrays")
    p.add_argument("--outputs", default=None, help="write the outputs to this .npz")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--rpc-tracker", default=None, help="RPC tracker HOST:PORT")
    p.add_argument("--rpc-key", default=None, help="RPC device key")
    p.add_argument("--print-time", action="store_true", help="print timing statistics")
    p.add_argument("--repeat", type=int, default=1, help="timed runs (with --print-time)")
    p.add_argument("--print-top", type=int, default=None, metavar="N",
                   help="print the top N classes of the first output")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds to wait for a free RPC server")
    p.set_defaults(func=run)


def read_inputs(path) -> dict[str, np.ndarray]:
    """Read an ``.npz`` of inputs, raising HCPruneError when it cannot."""
    path = Path(path)
    if not path.is_file():
        raise HCPruneError(f"inputs file {path} does not exist")
    try:
        data = path.read_bytes()
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {k: np.asarray(npz[k]) for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise HCPruneError(
            f"cannot read inputs file {path} ({err}); write it with numpy.savez(path, x=...)"
        ) from err
    if not arrays:
        raise HCPruneError(f"inputs file {path} holds no arrays")
    return arrays


def _run_local(lib_path, inputs, device, repeat, timing):
    try:
        lib = tvm.runtime.load_module(str(lib_path))
    except Exception as err:  # noqa: BLE001 - TVM raises its own error types
        raise HCPruneError(f"cannot load {lib_path} as a compiled model ({err})") from err
    dev = tvm.cuda() if device == "cuda" else tvm.cpu()
    if not dev.exist:
        raise HCPruneError(f"device {device} is not available on this machine")
    vm = relax.VirtualMachine(lib, dev)
    args = [tvm.runtime.tensor(v, dev) for v in inputs.values()]
    try:
        outputs = flatten_outputs(vm["main"](*args))
    except Exception as err:  # noqa: BLE001
        raise HCPruneError(
            f"running the model failed ({str(err).splitlines()[-1] if str(err) else err}); "
            f"check that --inputs holds {len(args)} array(s) in parameter order with the "
            "compiled shapes"
        ) from err
    times = []
    if timing:
        vm.set_input("main", *args)
        timer = vm.time_evaluator("invoke_stateful", dev, number=1, repeat=repeat)
        times = [float(t) for t in timer("main").results]
    return outputs, times


def run(args) -> int:
    """Run ``hcprune run``."""
    if args.repeat <= 0:
        raise HCPruneError(f"--repeat must be positive, got {args.repeat}")
    lib = Path(args.library)
    if not lib.is_file():
        raise HCPruneError(f"library {lib} does not exist; build it with `hcprune compile`")
    if bool(args.rpc_tracker) != bool(args.rpc_key):
        raise HCPruneError("--rpc-tracker and --rpc-key go together")
    inputs = read_inputs(args.inputs)
    if args.rpc_tracker:
        check_key(args.rpc_tracker, args.rpc_key)
        outputs, times = run_remote(lib, inputs, args.rpc_tracker, args.rpc_key,
                                    repeat=args.repeat if args.print_time else 0,
                                    timeout=args.timeout, device=args.device)
    else:
        outputs, times = _run_local(lib, inputs, args.device, args.repeat, args.print_time)
    if args.outputs:
        with atomic_write(args.outputs, suffix=".npz") as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **{f"output_{i}": o for i, o in enumerate(outputs)})
    for i, out in enumerate(outputs):
        print(f"output_{i}: shape {list(out.shape)} {out.dtype}")
    if args.print_top:
        scores = outputs[0].reshape(outputs[0].shape[0], -1)[0]
        top = np.argsort(-scores)[: args.print_top]
        for k in top:
            print(f"class {int(k)}: {float(scores[k]):.5f}")
    if args.print_time:
        ms = np.array(times) * 1e3
        print("Execution time summary:")
        print(" mean (ms)   median (ms)    max (ms)     min (ms)     std (ms)")
        print(f"{ms.mean():10.4f}   {np.median(ms):10.4f}   {ms.max():10.4f}   "
              f"{ms.min():10.4f}   {ms.std():10.4f}")
    return 0
