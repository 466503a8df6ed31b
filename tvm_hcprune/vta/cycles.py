"""An ESTIMATE of VTA execution cycles (not a cycle-accurate model).

Event-driven over the three in-order queues and the four token FIFOs, with the overlap of
load, compute and store that the tokens allow. Per-instruction costs (assumptions, roughly
the HLS design's initiation intervals and a 64-bit DMA bus):

* GEMM: 1 cycle per executed micro-op (reset included) + 4 cycles of pipeline fill;
* ALU: 2 cycles per executed micro-op + 4;
* LOAD/STORE: ``DMA_LATENCY`` + ``ceil(row_bytes / bus_bytes)`` per row + 1 cycle per
  padded element; a NOP (x_size = 0) and FINISH cost 1 cycle.

Every figure this module returns is labelled ``"estimate"``.
"""

from __future__ import annotations

from collections import deque

from tvm_hcprune.hardware.vta import DEFAULT_CONFIG, VTAConfig
from tvm_hcprune.vta import isa
from tvm_hcprune.vta.sim import (
    COMPUTE_Q,
    LOAD_Q,
    QUEUE_NAMES,
    STORE_Q,
    VTADeadlockError,
    queue_of,
    token_flags,
)

DMA_LATENCY = 32
GEMM_FILL = 4
ALU_FILL = 4
ALU_II = 2


def _elem_bytes(cfg: VTAConfig, insn) -> int:
    mem = insn.memory_type
    return {isa.MEM_UOP: 4, isa.MEM_INP: cfg.elem_bytes("inp"), isa.MEM_WGT: cfg.elem_bytes("wgt"),
            isa.MEM_ACC: cfg.elem_bytes("acc"), isa.MEM_OUT: cfg.elem_bytes("out"),
            isa.MEM_ACC_8BIT: cfg.batch * cfg.block_out}.get(mem, 1)


def insn_cycles(insn, cfg: VTAConfig = DEFAULT_CONFIG) -> int:
    """Estimated cycles of one instruction, ignoring dependency waits."""
    if insn.opcode in (isa.OP_LOAD, isa.OP_STORE):
        if insn.x_size == 0:
            return 1
        bus = cfg.bus_bits // 8
        row = -(-(insn.x_size * _elem_bytes(cfg, insn)) // bus)
        width = insn.x_pad_0 + insn.x_size + insn.x_pad_1
        height = insn.y_pad_0 + insn.y_size + insn.y_pad_1
        pads = width * height - insn.x_size * insn.y_size
        return DMA_LATENCY + insn.y_size * row + pads
    if insn.opcode == isa.OP_GEMM:
        return insn.iter_out * insn.iter_in * (insn.uop_end - insn.uop_bgn) + GEMM_FILL
    if insn.opcode == isa.OP_ALU:
        return ALU_II * insn.iter_out * insn.iter_in * (insn.uop_end - insn.uop_bgn) + ALU_FILL
    return 1


def estimate_cycles(program, cfg: VTAConfig | None = None) -> dict:
    """Estimate the cycles of a program (instructions or 128-bit ints).

    Returns
    -------
    dict
        ``cycles`` (launch to last instruction), ``seconds`` at ``cfg.clock_mhz``,
        ``busy`` cycles per queue, and ``"label": "estimate"``.
    """
    cfg = cfg or DEFAULT_CONFIG
    queues = (deque(), deque(), deque())
    for item in program:
        insn = item if isinstance(item, isa._Insn) else isa.decode(int(item))
        q = queue_of(insn)
        queues[q].append((insn, *token_flags(insn, q)))
    fifos = {"l2g": deque(), "g2l": deque(), "g2s": deque(), "s2g": deque()}
    clock = [0, 0, 0]
    busy = [0, 0, 0]
    while any(queues):
        progressed = False
        for q in (LOAD_Q, COMPUTE_Q, STORE_Q):
            dq = queues[q]
            while dq:
                insn, pops, pushes = dq[0]
                if any(not fifos[t] for t in pops):
                    break
                start = max([clock[q]] + [fifos[t].popleft() for t in pops])
                dur = insn_cycles(insn, cfg)
                clock[q] = start + dur
                busy[q] += dur
                for t in pushes:
                    fifos[t].append(clock[q])
                dq.popleft()
                progressed = True
        if not progressed:
            raise VTADeadlockError("cycle estimate: the program deadlocks (a pop without push).")
    cycles = max(clock)
    return {"cycles": cycles, "seconds": cycles / (cfg.clock_mhz * 1e6),
            "busy": dict(zip(QUEUE_NAMES, busy, strict=True)), "label": "estimate"}
