"""tvm_hcprune.backend.timing: per-kernel times of a built model."""

import numpy as np
import tvm
from tvm import relax

from tvm_hcprune.backend.pipeline import build
from tvm_hcprune.backend.timing import by_family, kernel_times

TARGET = tvm.target.Target({"kind": "llvm", "mcpu": "haswell", "num-cores": 2})


def test_kernel_times_cover_every_kernel_and_keep_the_result():
    """Every compiled kernel of a two-conv model is timed once; the instrument is removed
    afterwards and the model's output is unchanged."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 8, 10, 12), "float32"))
    w2 = np.random.default_rng(0).standard_normal((8, 16, 1, 1)).astype("float32")
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.relu(relax.op.nn.conv2d(x, relax.const(
                np.random.default_rng(1).standard_normal((16, 8, 3, 3)).astype("float32")),
                padding=1)))
            out = bb.emit_output(relax.op.nn.conv2d(y, relax.const(w2)))
        bb.emit_func_output(out)
    ex = build(bb.get(), TARGET, database=False, chain_kernels=False)  # one kernel per layer
    vm = relax.VirtualMachine(ex, tvm.cpu())
    xt = tvm.runtime.tensor(np.random.default_rng(2).standard_normal((1, 8, 10, 12)).astype("f4"))
    ref = vm["main"](xt).numpy()
    times = kernel_times(vm, [xt], number=3)
    # two conv kernels (blocked activations between them) and the layout transforms at the
    # model's boundaries
    kernels = [t for t in times if "hcp" in t.name]
    assert len(kernels) == 2 and len(times) == 4 and all(t.ms > 0 for t in times)
    assert all("layout_transform" in t.name for t in times if t not in kernels)
    assert times[0].shapes[0] == (1, 8, 10, 12) and times[-1].shapes[-1] == (1, 8, 10, 12)
    fam = by_family(times)
    assert abs(sum(fam.values()) - sum(t.ms for t in times)) < 1e-9
    np.testing.assert_array_equal(vm["main"](xt).numpy(), ref)
