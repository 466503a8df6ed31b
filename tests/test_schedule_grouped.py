"""Grouped (non-depthwise) convs on tvm_hcprune's blocked kernel.

Regression for the intermittent wrong outputs of grouped NHWC convs: when a group's output
channels were not a multiple of the output block, the per-tile write-back was widened to the
next group's channels (uninitialised registers, written concurrently with the tile that owns
them). Two checks catch it: every output element must be written exactly once by the
scheduled kernel (run serially with the stores turned into counters), and the built model
must equal TVM's default pipeline on 1 and 2 threads over repeated runs.
"""

import re

import numpy as np
import pytest
import tvm
from tvm import relax

from tvm_hcprune.backend.cpu import rules as cpu_rules
from tvm_hcprune.backend.pipeline import get_pipeline, scheduled_kernels
from tvm_hcprune.testing import heap_workspaces

TARGET = tvm.target.Target({"kind": "llvm", "mcpu": "haswell", "num-cores": 2})


def grouped_module(ic, oc, hw, k, groups, layout, kernel_layout=None, pad=1):
    """conv2d (groups) + bias + clip in ``layout`` with a constant weight."""
    rng = np.random.default_rng(ic * 7 + oc + groups)
    oihw = rng.standard_normal((oc, ic // groups, k, k)).astype("float32")
    kernel_layout = kernel_layout or ("OIHW" if layout == "NCHW" else "OHWI")
    w = np.ascontiguousarray(np.transpose(oihw, ["OIHW".index(a) for a in kernel_layout]))
    shape = (1, ic, *hw) if layout == "NCHW" else (1, *hw, ic)
    bshape = (1, oc, 1, 1) if layout == "NCHW" else (oc,)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, relax.const(w), padding=pad, groups=groups,
                                           data_layout=layout, kernel_layout=kernel_layout))
            y = bb.emit(relax.op.add(y, relax.const(rng.standard_normal(bshape).astype("f4"))))
            out = bb.emit_output(relax.op.clip(y, 0.0, 6.0))
        bb.emit_func_output(out)
    return bb.get()


def write_counts(func) -> np.ndarray:
    """How often the scheduled kernel ``func`` writes each element of its output.

    The output (last parameter) stores become ``out[i] = out[i] + 1`` and parallel loops
    serial; the function is compiled and run on a zero output.
    """
    script = func.script()
    out_name = func.params[-1].name
    pattern = re.compile(rf"^(\s+)({re.escape(out_name)}\[[^\]]*\]) = .*$", re.MULTILINE)
    script, n_stores = pattern.subn(r"\1\2 = \2 + T.float32(1.0)", script)
    assert n_stores >= 1, "no store to the output found"
    script = script.replace("T.parallel(", "T.serial(").replace("T.vectorized(", "T.serial(")
    counted = tvm.script.from_source(script)
    ex = tvm.compile(tvm.IRModule({"main": counted.with_attr("global_symbol", "main")}),
                     target=TARGET)
    rng = np.random.default_rng(0)
    args = [tvm.runtime.tensor(rng.standard_normal([int(s) for s in p.shape]).astype("f4"))
            for p in func.params[:-1]]
    out = tvm.runtime.tensor(np.zeros([int(s) for s in func.params[-1].shape], "float32"))
    ex["main"](*args, out)
    return out.numpy()


CASES = {
    # ic, oc, (h, w), k, groups, layout
    "nhwc_g3_ocg3_remainder": (6, 9, (5, 5), 3, 3, "NHWC"),  # the CI failure
    "nchw_g3_ocg6_remainder": (12, 18, (8, 8), 3, 3, "NCHW"),
    "nchw_g2_ocg12_remainder": (8, 24, (6, 7), 3, 2, "NCHW"),
    "nhwc_g4_ocg8_aligned": (32, 32, (6, 6), 1, 4, "NHWC"),
    "nchw_g2_ocg32_two_blocks": (32, 64, (5, 9), 3, 2, "NCHW"),
    "nchw_g4_ocg16_aligned": (32, 64, (7, 7), 3, 4, "NCHW"),
}


def _kernel(mod):
    kernels = scheduled_kernels(mod, TARGET)
    assert len(kernels) == 1, f"the grouped conv must take tvm_hcprune's kernel: {kernels}"
    return next(iter(kernels.values()))


@pytest.mark.parametrize("case", sorted(CASES))
def test_grouped_writes_every_output_once(case):
    """The scheduled grouped kernel writes each output element exactly once."""
    ic, oc, hw, k, g, layout = CASES[case]
    func = _kernel(grouped_module(ic, oc, hw, k, g, layout))
    assert "tirx.is_scheduled" in func.script()
    np.testing.assert_array_equal(write_counts(func), 1.0)


def test_write_count_check_catches_widened_writeback(monkeypatch):
    """With the per-tile write-back forced on a remainder grouped conv (the old schedule),
    the write-count check sees channels written twice."""
    monkeypatch.setattr(cpu_rules, "WRITEBACK_ATTR", "no_such_attr")  # default: per tile
    ic, oc, hw, k, g, layout = CASES["nhwc_g3_ocg3_remainder"]
    counts = write_counts(_kernel(grouped_module(ic, oc, hw, k, g, layout)))
    assert counts.max() > 1.0


def test_aligned_grouped_takes_remainder_free_path():
    """Per-group channels that are multiples of the block (as pruned grouped convs keep
    them): exact weight blocks, write-back fused into the register tile, no predicate."""
    func = _kernel(grouped_module(32, 64, (7, 8), 3, 4, "NCHW"))
    script = func.script()
    wshape = [int(s) for s in func.params[1].shape]  # [G, OCB, ICB, KH, KW, IB, OB]
    assert wshape[0] == 4 and wshape[1] * wshape[6] == 16 and wshape[2] * wshape[5] == 8
    assert "T.where" not in script
    # the tile's accumulators stay in registers: no heap workspace for them, only for the
    # packed input
    # one kernel per layer (a chain's intermediates are workspaces by design)
    ex = tvm.compile(grouped_module(32, 64, (7, 8), 3, 4, "NCHW"), TARGET,
                     relax_pipeline=get_pipeline(TARGET, strict=True,
                                                  chain_kernels=False))
    workspaces = heap_workspaces(ex)
    assert all(name.startswith("hcp_pack") for name in workspaces), workspaces


def _run(ex, x, threads):
    cfg = tvm.get_global_func("runtime.config_threadpool")
    cfg(0, threads)
    try:
        vm = relax.VirtualMachine(ex, tvm.cpu())
        return [vm["main"](tvm.runtime.tensor(x)).numpy() for _ in range(5)]
    finally:
        cfg(0, 2)


@pytest.mark.parametrize("case", ["nhwc_g3_ocg3_remainder", "nchw_g3_ocg6_remainder",
                                  "nchw_g4_ocg16_aligned"])
def test_grouped_matches_default_repeatedly(case):
    """Built model == TVM's default pipeline (rtol 1e-5), 5 runs each on 1 and 2 threads."""
    ic, oc, hw, k, g, layout = CASES[case]
    mod = grouped_module(ic, oc, hw, k, g, layout)
    shape = [int(s) for s in mod["main"].params[0].ty.shape]
    x = np.random.default_rng(3).standard_normal(shape).astype("float32")
    ref_vm = relax.VirtualMachine(
        tvm.compile(mod, TARGET, relax_pipeline=relax.get_default_pipeline(TARGET)), tvm.cpu())
    ref = ref_vm["main"](tvm.runtime.tensor(x)).numpy()
    ex = tvm.compile(mod, TARGET, relax_pipeline=get_pipeline(TARGET, strict=True))
    atol = 1e-5 * max(1.0, float(np.abs(ref).max()))
    for threads in (1, 2):
        for out in _run(ex, x, threads):
            np.testing.assert_allclose(out, ref, rtol=1e-5, atol=atol)
