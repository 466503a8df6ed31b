"""Instruction-level tests of the functional simulator (modelled on VTA's unit tests)."""

import numpy as np
import pytest

from tvm_hcprune.vta import isa
from tvm_hcprune.vta.runtime import COMPUTE_STAGE, LOAD_STAGE, STORE_STAGE, CommandQueue, kernel
from tvm_hcprune.vta.sim import (
    DEBUG_SKIP_EXEC,
    Simulator,
    VTADeadlockError,
    VTASimulationError,
    alu_apply,
)

RNG = np.random.default_rng(7)


def _rand(shape, lo=-128, hi=128, dtype=np.int8):
    return RNG.integers(lo, hi, shape).astype(dtype)


def _acc_roundtrip(rt, acc_vals, ops_fn):
    """Load int32 values into acc, run ``ops_fn(rt)``, store (int8) and return the result."""
    n = acc_vals.shape[0]
    a = rt.put(acc_vals)
    o = rt.alloc(n * 16)
    rt.load_2d(isa.MEM_ACC, 0, rt.elem_addr(a, "acc"), 1, n, n)
    ops_fn(rt)
    rt.dep_push(COMPUTE_STAGE, STORE_STAGE)
    rt.dep_pop(COMPUTE_STAGE, STORE_STAGE)
    rt.store_2d(0, rt.elem_addr(o, "out"), 1, n, n)
    rt.synchronize()
    return rt.get(o, np.int8, acc_vals.shape)


def test_load_store_round_trip():
    """ACC load -> STORE gives the int8-truncated values; counters use the formulas."""
    rt = CommandQueue()
    vals = _rand((24, 1, 16), -(1 << 31), 1 << 31, np.int64).astype(np.int32)
    out = _acc_roundtrip(rt, vals, lambda rt: None)
    np.testing.assert_array_equal(out, vals.astype(np.int8))
    s = rt.sim.stats()
    assert s["acc_load_nbytes"] == 24 * 64 and s["out_store_nbytes"] == 24 * 16


def test_padded_load_and_strided_store():
    """A padded 2-D INP load places zeros around a strided DRAM window."""
    sim = Simulator()
    src = _rand((6, 10, 1, 16))  # 6 rows x 10 elements
    addr = sim.dram.put(src)
    base = addr // 16
    # rows 1..4, cols 2..8 (x_size 7, stride 10), pads y(2,1) x(1,3)
    prog = [isa.MemInsn(memory_type=isa.MEM_INP, sram_base=5, dram_base=base + 1 * 10 + 2,
                        y_size=4, x_size=7, x_stride=10, y_pad_0=2, y_pad_1=1, x_pad_0=1,
                        x_pad_1=3),
            isa.FinishInsn()]
    sim.run(prog)
    got = sim.inp[5: 5 + 7 * 11].reshape(7, 11, 1, 16)
    want = np.zeros((7, 11, 1, 16), np.int8)
    want[2:6, 1:8] = src[1:5, 2:9]
    np.testing.assert_array_equal(got, want)
    assert sim.stats()["inp_load_nbytes"] == 4 * 7 * 16  # padding not counted


def _gemm_program(rt, x, w, nthread):
    """out[t] = x[t] @ w[t].T for each virtual thread t, interleaved with tokens."""
    m, kb = x.shape[1], x.shape[2]
    nb = w.shape[1]
    xa = [rt.put(x[t]) for t in range(nthread)]
    wa = [rt.put(w[t]) for t in range(nthread)]
    outs = [rt.alloc(m * nb * 16) for _ in range(nthread)]
    inp_sz, wgt_sz, acc_sz = m * kb, nb * kb, m * nb
    for t in range(nthread):
        rt.load_2d(isa.MEM_INP, t * inp_sz, rt.elem_addr(xa[t], "inp"), 1, m * kb, m * kb)
        rt.load_2d(isa.MEM_WGT, t * wgt_sz, rt.elem_addr(wa[t], "wgt"), 1, nb * kb, nb * kb)
        rt.dep_push(LOAD_STAGE, COMPUTE_STAGE)
    for t in range(nthread):
        rt.dep_pop(LOAD_STAGE, COMPUTE_STAGE)
        rt.push_gemm(kernel("reset", [(t * acc_sz + i, 0, 0) for i in range(m * nb)]), reset=True)
        # loops: output block (dst+1, wgt+kb), input block (src+1, wgt+1); uops over rows
        rt.push_gemm(kernel("gemm", [(t * acc_sz + r * nb, t * inp_sz + r * kb, t * wgt_sz)
                                     for r in range(m)], [(nb, 1, 0, kb), (kb, 0, 1, 1)]))
        rt.dep_push(COMPUTE_STAGE, STORE_STAGE)
    for t in range(nthread):
        rt.dep_pop(COMPUTE_STAGE, STORE_STAGE)
        rt.store_2d(t * acc_sz, rt.elem_addr(outs[t], "out"), 1, m * nb, m * nb)
    rt.synchronize()
    return [rt.get(outs[t], np.int8, (m, nb, 1, 16)) for t in range(nthread)]


@pytest.mark.parametrize("nthread", [1, 2])
def test_gemm_virtual_threads(nthread):
    """GEMM with one or two virtual threads equals numpy (int32, then int8 truncation)."""
    m, kb, nb = 3, 2, 2
    x = _rand((nthread, m, kb, 1, 16))
    w = _rand((nthread, nb, kb, 16, 16))
    rt = CommandQueue()
    outs = _gemm_program(rt, x, w, nthread)
    for t in range(nthread):
        xf = x[t].reshape(m, kb * 16).astype(np.int64)
        wf = w[t].transpose(0, 2, 1, 3).reshape(nb * 16, kb * 16).astype(np.int64)
        want = (xf @ wf.T).astype(np.int32).astype(np.int8)
        np.testing.assert_array_equal(outs[t].reshape(m, nb * 16), want)
    assert rt.sim.stats()["gemm_counter"] == nthread * m * nb * kb


ALU_CASES = [(isa.ALU_MIN, np.minimum), (isa.ALU_MAX, np.maximum), (isa.ALU_ADD, np.add),
             (isa.ALU_MUL, np.multiply), (isa.ALU_SHR, None)]


@pytest.mark.parametrize("opcode, fn", ALU_CASES, ids=[isa.ALU_NAMES[o] for o, _ in ALU_CASES])
@pytest.mark.parametrize("use_imm", [True, False], ids=["imm", "tensor"])
def test_alu_ops(opcode, fn, use_imm):
    """Each ALU op, immediate or tensor-tensor, matches numpy with int32 wraparound."""
    n = 16
    if opcode == isa.ALU_SHR:
        a = _rand((2 * n, 1, 16), -(1 << 20), 1 << 20, np.int64).astype(np.int32)
        a[n:] = _rand((n, 1, 16), -9, 10, np.int32)  # shift amounts, negative = left
    else:
        a = _rand((2 * n, 1, 16), -(1 << 16), 1 << 16, np.int64).astype(np.int32)
    imm = -3 if opcode == isa.ALU_SHR else 1234
    b = np.int64(imm) if use_imm else a[n:].astype(np.int64)
    x = a[:n].astype(np.int64)
    if opcode == isa.ALU_SHR:
        want = np.where(b >= 0, x >> np.maximum(b, 0), x << np.maximum(-b, 0))
    else:
        want = fn(x, b)
    want = want.astype(np.int32)  # wraps
    # loops: 2 x 8 elements, one uop; src points at the second half
    k = kernel("alu", [(0, n, 0)], [(2, 8, 8, 0), (8, 1, 1, 0)])
    rt = CommandQueue()
    out = _acc_roundtrip(rt, a, lambda rt: rt.push_alu(k, opcode, imm if use_imm else None))
    np.testing.assert_array_equal(out[:n], want.astype(np.int8))
    np.testing.assert_array_equal(rt.sim.acc[:n], want)
    assert rt.sim.stats()["alu_counter"] == n


def test_relu_and_shift_clip():
    """ReLU (MAX 0) and shift-and-clip (SHR 8, MAX -127, MIN 127) as in VTA's unit tests."""
    n = 8
    a = _rand((n, 1, 16), -(1 << 17), 1 << 17, np.int64).astype(np.int32)
    loops = [(n, 1, 1, 0)]
    rt = CommandQueue()
    out = _acc_roundtrip(rt, a, lambda rt: rt.push_alu(kernel("relu", [(0, 0, 0)], loops),
                                                       isa.ALU_MAX, 0))
    np.testing.assert_array_equal(out, np.maximum(a, 0).astype(np.int8))

    def shift_clip(rt):
        rt.push_alu(kernel("shr", [(0, 0, 0)], loops), isa.ALU_SHR, 8)
        rt.push_alu(kernel("max", [(0, 0, 0)], loops), isa.ALU_MAX, -127)
        rt.push_alu(kernel("min", [(0, 0, 0)], loops), isa.ALU_MIN, 127)

    rt = CommandQueue()
    out = _acc_roundtrip(rt, a, shift_clip)
    np.testing.assert_array_equal(out, np.clip(a >> 8, -127, 127).astype(np.int8))
    assert rt.sim.stats()["alu_counter"] == 3 * n


def test_alu_order_dependent_loop():
    """A loop whose later micro-ops read earlier results runs in program order (prefix sum)."""
    n = 6
    a = _rand((n, 1, 16), -100, 100, np.int32)
    k = kernel("scan", [(1, 0, 0)], [(n - 1, 1, 1, 0)])  # acc[i+1] += acc[i]
    rt = CommandQueue()
    _acc_roundtrip(rt, a, lambda rt: rt.push_alu(k, isa.ALU_ADD))
    np.testing.assert_array_equal(rt.sim.acc[:n], np.cumsum(a, axis=0))


def test_alu_shift_extremes():
    """SHR >= 31 gives the sign; left shifts wrap; shifts of 32+ to the left give 0."""
    a = np.array([-5, 5, 1 << 30, 3], np.int32)
    np.testing.assert_array_equal(alu_apply(isa.ALU_SHR, a, 40), [-1, 0, 0, 0])
    np.testing.assert_array_equal(alu_apply(isa.ALU_SHR, a, -2), [-20, 20, 0, 12])
    np.testing.assert_array_equal(alu_apply(isa.ALU_SHR, a, -32), [0, 0, 0, 0])
    np.testing.assert_array_equal(alu_apply(isa.ALU_ADD, np.array([2**31 - 1], np.int32), 1),
                                  [-(2**31)])


def test_missing_token_raises_deadlock():
    """A pop with no matching push raises VTADeadlockError instead of hanging."""
    sim = Simulator()
    prog = [isa.GemmInsn(reset=1, uop_end=0, pop_prev=1), isa.FinishInsn()]
    with pytest.raises(VTADeadlockError, match="deadlock"):
        sim.run(prog)
    rt = CommandQueue()
    rt.dep_pop(LOAD_STAGE, COMPUTE_STAGE)          # waits for a load that never pushes
    rt.push_gemm(kernel("r", [(0, 0, 0)]), reset=True)
    with pytest.raises(VTADeadlockError):
        rt.synchronize()


def test_program_errors():
    """Bad programs raise VTASimulationError with a reason."""
    sim = Simulator()
    with pytest.raises(VTASimulationError, match="no FINISH"):
        sim.run([isa.GemmInsn()])
    with pytest.raises(VTASimulationError, match="beyond"):
        sim.run([isa.MemInsn(memory_type=isa.MEM_INP, sram_base=2047, y_size=1, x_size=2,
                             x_stride=2), isa.FinishInsn()])
    with pytest.raises(VTASimulationError, match="no pop_prev"):
        sim.run([isa.MemInsn(memory_type=isa.MEM_INP, pop_prev=1), isa.FinishInsn()])
    with pytest.raises(VTASimulationError, match="cannot pad"):
        sim.run([isa.MemInsn(opcode=isa.OP_STORE, memory_type=isa.MEM_OUT, x_pad_0=1),
                 isa.FinishInsn()])


def test_skip_exec_counts_without_moving_data():
    """Skip-exec mode yields the same counters as execution and leaves the SRAMs untouched."""
    m, kb, nb = 2, 3, 2
    x, w = _rand((1, m, kb, 1, 16)), _rand((1, nb, kb, 16, 16))
    rt = CommandQueue()
    _gemm_program(rt, x, w, 1)
    sim2 = Simulator()
    sim2.debug_mode(DEBUG_SKIP_EXEC)
    rt2 = CommandQueue(sim2)
    _gemm_program(rt2, x, w, 1)
    assert rt.sim.stats() == sim2.stats()
    assert not sim2.inp.any() and not sim2.acc.any()
    sim2.clear_stats()
    assert set(sim2.stats().values()) == {0}


def test_uop_cache_fifo_eviction():
    """Kernels are loaded once per signature and re-loaded after FIFO eviction."""
    rt = CommandQueue()
    big = kernel("big", [(0, 0, 0)] * 5000)
    other = kernel("other", [(0, 0, 0)] * 4000)
    rt.push_gemm(big, reset=True)
    rt.push_gemm(big, reset=True)     # cached
    rt.push_gemm(other, reset=True)   # wraps to 0, evicts big
    rt.push_gemm(big, reset=True)     # wraps again, evicts other, reloaded
    rt.synchronize()
    assert rt.sim.stats()["uop_load_nbytes"] == 4 * (5000 + 4000 + 5000)


def test_acc_8bit_load_sign_extends():
    """LOAD ACC_8BIT reads int8 elements and sign-extends them into the accumulator."""
    sim = Simulator()
    vals = _rand((5, 1, 16))
    base = sim.dram.put(vals) // 16
    sim.run([isa.MemInsn(memory_type=isa.MEM_ACC_8BIT, sram_base=7, dram_base=base, y_size=1,
                         x_size=5, x_stride=5), isa.FinishInsn()])
    np.testing.assert_array_equal(sim.acc[7:12], vals.astype(np.int32))
    assert sim.stats()["acc_load_nbytes"] == 5 * 64
