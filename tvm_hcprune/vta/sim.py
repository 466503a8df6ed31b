"""Functional VTA simulator (numpy): DRAM, four SRAMs, three in-order queues, profiler.

The model follows the published functional simulator's observable behaviour (see
``shared/specs/vta.md`` §2-§3): instructions are routed to a load, a compute and a store
queue; each queue executes in order, popping dependency tokens before and pushing them after
an instruction; a program ends with FINISH. Where the reference simulator would spin forever
on a missing token this one raises :class:`VTADeadlockError`.

Profiler counters (same formulas as the reference simulator):

``inp/wgt/acc/uop_load_nbytes``
    ``x_size * y_size * element_bytes`` per LOAD (padding not counted; ACC_8BIT counts as ACC).
``out_store_nbytes``
    ``x_size * y_size * out_element_bytes`` per STORE.
``gemm_counter`` / ``alu_counter``
    ``iter_out * iter_in * (uop_end - uop_bgn)`` per non-reset GEMM / per ALU instruction.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Iterable, Sequence

import numpy as np

from tvm_hcprune.errors import HCPruneError
from tvm_hcprune.hardware.vta import DEFAULT_CONFIG, VTAConfig
from tvm_hcprune.vta import isa

COUNTERS = (
    "inp_load_nbytes", "wgt_load_nbytes", "acc_load_nbytes", "uop_load_nbytes",
    "out_store_nbytes", "gemm_counter", "alu_counter",
)
DEBUG_SKIP_EXEC = 1

LOAD_Q, COMPUTE_Q, STORE_Q = 0, 1, 2
QUEUE_NAMES = ("load", "compute", "store")
# (queue, flag) -> token FIFO; ``None`` marks a flag that the queue does not have
_TOKEN_OF = {
    (LOAD_Q, "pop_next"): "g2l", (LOAD_Q, "push_next"): "l2g",
    (COMPUTE_Q, "pop_prev"): "l2g", (COMPUTE_Q, "pop_next"): "s2g",
    (COMPUTE_Q, "push_prev"): "g2l", (COMPUTE_Q, "push_next"): "g2s",
    (STORE_Q, "pop_prev"): "g2s", (STORE_Q, "push_prev"): "s2g",
}


class VTASimulationError(HCPruneError):
    """A program does something the hardware cannot (out-of-range SRAM, bad memory type)."""


class VTADeadlockError(VTASimulationError):
    """No queue can make progress: an instruction waits for a token nobody will push."""


def queue_of(insn) -> int:
    """The queue an instruction is routed to by the fetch module."""
    if insn.opcode == isa.OP_LOAD:
        return LOAD_Q if insn.memory_type in (isa.MEM_INP, isa.MEM_WGT) else COMPUTE_Q
    if insn.opcode == isa.OP_STORE:
        return STORE_Q
    return COMPUTE_Q


def token_flags(insn, queue: int) -> tuple[list[str], list[str]]:
    """Token FIFOs an instruction pops from and pushes to; raises on flags its queue lacks."""
    pops, pushes = [], []
    for flag in ("pop_prev", "pop_next", "push_prev", "push_next"):
        if getattr(insn, flag):
            fifo = _TOKEN_OF.get((queue, flag))
            if fifo is None:
                raise VTASimulationError(
                    f"{isa.disassemble_one(insn)}: the {QUEUE_NAMES[queue]} queue has no "
                    f"{flag} neighbour; clear that flag."
                )
            (pops if flag.startswith("pop") else pushes).append(fifo)
    return pops, pushes


class DRAM:
    """Byte-addressed device memory with a bump allocator (addresses are byte offsets).

    Parameters
    ----------
    nbytes : int
        Initial capacity; it grows on demand.
    align : int
        Alignment of allocations (a multiple of every element size, 256 B by default).
    """

    def __init__(self, nbytes: int = 1 << 20, align: int = 256):
        self.data = np.zeros(nbytes, dtype=np.uint8)
        self.align = align
        self.top = 0

    def alloc(self, nbytes: int) -> int:
        """Reserve ``nbytes`` and return the byte address."""
        addr = -(-self.top // self.align) * self.align
        end = addr + max(int(nbytes), 1)
        if end > len(self.data):
            new = np.zeros(max(end, 2 * len(self.data)), dtype=np.uint8)
            new[: len(self.data)] = self.data
            self.data = new
        self.top = end
        return addr

    def reset(self) -> None:
        """Free every allocation."""
        self.top = 0

    def write(self, addr: int, array: np.ndarray) -> None:
        raw = np.ascontiguousarray(array).view(np.uint8).ravel()
        if addr < 0 or addr + raw.size > len(self.data):
            raise VTASimulationError(f"DRAM write [{addr}, {addr + raw.size}) is out of range.")
        self.data[addr: addr + raw.size] = raw

    def read(self, addr: int, dtype, shape) -> np.ndarray:
        dtype = np.dtype(dtype)
        n = int(np.prod(shape)) * dtype.itemsize
        if addr < 0 or addr + n > len(self.data):
            raise VTASimulationError(f"DRAM read [{addr}, {addr + n}) is out of range.")
        return self.data[addr: addr + n].view(dtype).reshape(shape).copy()

    def view(self, addr: int, dtype, shape) -> np.ndarray:
        """A writable view (no copy) of ``shape`` elements of ``dtype`` at ``addr``."""
        dtype = np.dtype(dtype)
        n = int(np.prod(shape)) * dtype.itemsize
        if addr < 0 or addr + n > len(self.data):
            raise VTASimulationError(f"DRAM access [{addr}, {addr + n}) is out of range.")
        return self.data[addr: addr + n].view(dtype).reshape(shape)

    def put(self, array: np.ndarray) -> int:
        """Allocate and copy ``array`` in; return its byte address."""
        addr = self.alloc(array.nbytes)
        self.write(addr, array)
        return addr


@dataclasses.dataclass
class RunInfo:
    """What one :meth:`Simulator.run` did."""

    instructions: int
    per_queue: tuple[int, int, int]
    leftover_tokens: dict


class Simulator:
    """The functional VTA simulator.

    Parameters
    ----------
    config : VTAConfig, optional
        Hardware configuration (default: 1x16x16, int8/int8/int32).
    dram_bytes : int
        Initial DRAM size (it grows on demand).

    Examples
    --------
    >>> sim = Simulator()
    >>> sim.run(program)          # list of instructions, 128-bit ints, or bytes
    >>> sim.stats()["gemm_counter"]
    """

    def __init__(self, config: VTAConfig | None = None, dram_bytes: int = 1 << 20,
                 schedule: str = "greedy", seed: int = 0):
        if schedule not in ("greedy", "random"):
            raise HCPruneError(f"schedule must be 'greedy' or 'random', got {schedule!r}.")
        self.schedule = schedule
        self._rng = np.random.default_rng(seed)
        self.cfg = config or DEFAULT_CONFIG
        c = self.cfg
        self.dram = DRAM(dram_bytes)
        self.inp = np.zeros((c.inp_depth, c.batch, c.block_in), np.int8)
        self.wgt = np.zeros((c.wgt_depth, c.block_out, c.block_in), np.int8)
        self.acc = np.zeros((c.acc_depth, c.batch, c.block_out), np.int32)
        self.uop = np.zeros(c.uop_depth, np.uint32)
        self.debug_flag = 0
        self._stats = dict.fromkeys(COUNTERS, 0)
        self._eb = {isa.MEM_INP: c.elem_bytes("inp"), isa.MEM_WGT: c.elem_bytes("wgt"),
                    isa.MEM_ACC: c.elem_bytes("acc"), isa.MEM_UOP: 4,
                    isa.MEM_OUT: c.elem_bytes("out"),
                    isa.MEM_ACC_8BIT: c.batch * c.block_out}

    # ---- profiler -----------------------------------------------------------------------
    def clear_stats(self) -> None:
        """Zero the seven profiler counters."""
        self._stats = dict.fromkeys(COUNTERS, 0)

    def stats(self) -> dict:
        """The seven profiler counters (a copy)."""
        return dict(self._stats)

    def debug_mode(self, flag: int) -> None:
        """Set the debug flags; ``DEBUG_SKIP_EXEC`` counts without moving data."""
        self.debug_flag = int(flag)

    @property
    def skip_exec(self) -> bool:
        return bool(self.debug_flag & DEBUG_SKIP_EXEC)

    # ---- running ------------------------------------------------------------------------
    def run(self, program: Sequence | bytes | Iterable) -> RunInfo:
        """Execute a program until every queue is empty; the compute queue must end with FINISH.

        With ``schedule="greedy"`` the queues are serviced in a fixed order (load, compute,
        store), each running as far as its tokens allow: every stage runs as far ahead as it
        may, which turns a missing buffer-release token into a wrong result. With
        ``schedule="random"`` one instruction of a random runnable queue executes at a time
        (as the reference simulator's random start does), which also exposes missing
        data-ready tokens.

        Raises
        ------
        VTADeadlockError
            When no queue can progress (a pop whose token is never pushed).
        VTASimulationError
            On an out-of-range access, an invalid flag, or a missing FINISH.
        """
        if isinstance(program, bytes | bytearray):
            program = isa.decode_program(bytes(program))
        queues = (deque(), deque(), deque())
        n = 0
        for item in program:
            insn = item if isinstance(item, isa._Insn) else isa.decode(int(item))
            q = queue_of(insn)
            queues[q].append((insn, *token_flags(insn, q)))
            n += 1
        per_queue = tuple(len(q) for q in queues)
        fin = [i for i, (x, _, _) in enumerate(queues[COMPUTE_Q]) if x.opcode == isa.OP_FINISH]
        if not fin:
            raise VTASimulationError("the program has no FINISH; end it with synchronize().")
        if fin != [len(queues[COMPUTE_Q]) - 1]:
            raise VTASimulationError("FINISH must be the last compute instruction, once.")
        tokens = {"l2g": 0, "g2l": 0, "g2s": 0, "s2g": 0}

        def ready(q):
            return queues[q] and all(tokens[t] for t in queues[q][0][1])

        def step(q):
            insn, pops, pushes = queues[q].popleft()
            for t in pops:
                tokens[t] -= 1
            self._execute(insn)
            for t in pushes:
                tokens[t] += 1

        while any(queues):
            progressed = False
            if self.schedule == "random":
                runnable = [q for q in (LOAD_Q, COMPUTE_Q, STORE_Q) if ready(q)]
                if runnable:
                    step(runnable[int(self._rng.integers(len(runnable)))])
                    progressed = True
            else:
                for q in (LOAD_Q, COMPUTE_Q, STORE_Q):
                    while ready(q):
                        step(q)
                        progressed = True
            if not progressed:
                fronts = "; ".join(
                    f"{QUEUE_NAMES[i]}: {isa.disassemble_one(queues[i][0][0])}"
                    for i in range(3) if queues[i])
                raise VTADeadlockError(
                    f"VTA deadlock: no queue can proceed (tokens {tokens}); waiting fronts: "
                    f"{fronts}. A dependency pop has no matching push: add the push "
                    "(runtime.dep_push) or drop the pop."
                )
        return RunInfo(n, per_queue, {k: v for k, v in tokens.items() if v})

    # ---- instructions -------------------------------------------------------------------
    def _execute(self, insn) -> None:
        op = insn.opcode
        if op == isa.OP_LOAD:
            self._load(insn)
        elif op == isa.OP_STORE:
            self._store(insn)
        elif op == isa.OP_GEMM:
            self._gemm(insn)
        elif op == isa.OP_ALU:
            self._alu(insn)

    def _sram(self, mem):
        return {isa.MEM_INP: self.inp, isa.MEM_WGT: self.wgt, isa.MEM_ACC: self.acc,
                isa.MEM_ACC_8BIT: self.acc, isa.MEM_UOP: self.uop}[mem]

    def _load(self, x) -> None:
        mem = x.memory_type
        if mem not in (isa.MEM_INP, isa.MEM_WGT, isa.MEM_ACC, isa.MEM_UOP, isa.MEM_ACC_8BIT):
            raise VTASimulationError(f"LOAD into memory {isa.MEM_NAMES.get(mem, mem)} is "
                                     "invalid; LOAD targets UOP, INP, WGT, ACC or ACC_8BIT.")
        if x.x_size == 0:
            return
        eb = self._eb[mem]
        key = {isa.MEM_INP: "inp", isa.MEM_WGT: "wgt", isa.MEM_ACC: "acc",
               isa.MEM_ACC_8BIT: "acc", isa.MEM_UOP: "uop"}[mem]
        # ACC_8BIT reads int8 from DRAM but is counted at the accumulator element size
        counted = self._eb[isa.MEM_ACC] if mem == isa.MEM_ACC_8BIT else eb
        self._stats[f"{key}_load_nbytes"] += x.x_size * x.y_size * counted
        sram = self._sram(mem)
        width = x.x_pad_0 + x.x_size + x.x_pad_1
        height = x.y_pad_0 + x.y_size + x.y_pad_1
        if x.sram_base + width * height > len(sram):
            raise VTASimulationError(
                f"{isa.disassemble_one(x)} writes SRAM [{x.sram_base}, "
                f"{x.sram_base + width * height}) beyond its {len(sram)} elements; "
                "use a smaller tile.")
        if x.y_size and x.x_stride < x.x_size:
            raise VTASimulationError(f"{isa.disassemble_one(x)}: x_stride < x_size.")
        if self.skip_exec and mem != isa.MEM_UOP:
            return
        if mem == isa.MEM_UOP:
            dtype, shape = np.uint32, ()
        elif mem == isa.MEM_ACC_8BIT:
            dtype, shape = np.int8, sram.shape[1:]
        else:
            dtype, shape = sram.dtype, sram.shape[1:]
        nelem = (x.y_size - 1) * x.x_stride + x.x_size
        src = self.dram.view(x.dram_base * eb, dtype, (nelem, *shape))
        rows = np.arange(x.y_size)[:, None] * x.x_stride + np.arange(x.x_size)[None, :]
        tile = np.zeros((height, width, *shape), dtype=sram.dtype)
        tile[x.y_pad_0: x.y_pad_0 + x.y_size, x.x_pad_0: x.x_pad_0 + x.x_size] = src[rows]
        sram[x.sram_base: x.sram_base + width * height] = tile.reshape(-1, *shape)

    def _store(self, x) -> None:
        if x.memory_type != isa.MEM_OUT:
            raise VTASimulationError(
                f"STORE from memory {isa.MEM_NAMES.get(x.memory_type, x.memory_type)} is "
                "invalid; STORE reads OUT (the accumulator truncated to int8).")
        if x.y_pad_0 or x.y_pad_1 or x.x_pad_0 or x.x_pad_1:
            raise VTASimulationError("STORE cannot pad; set every pad field to 0.")
        if x.x_size == 0:
            return
        eb = self._eb[isa.MEM_OUT]
        self._stats["out_store_nbytes"] += x.x_size * x.y_size * eb
        n = x.x_size * x.y_size
        if x.sram_base + n > len(self.acc):
            raise VTASimulationError(f"{isa.disassemble_one(x)} reads beyond the accumulator.")
        if x.y_size and x.x_stride < x.x_size:
            raise VTASimulationError(f"{isa.disassemble_one(x)}: x_stride < x_size.")
        if self.skip_exec:
            return
        vals = self.acc[x.sram_base: x.sram_base + n].astype(np.int8)  # wraps: low 8 bits
        nelem = (x.y_size - 1) * x.x_stride + x.x_size
        view = self.dram.view(x.dram_base * eb, np.int8, (nelem, *self.acc.shape[1:]))
        rows = np.arange(x.y_size)[:, None] * x.x_stride + np.arange(x.x_size)[None, :]
        view[rows.ravel()] = vals

    def _indices(self, x, with_wgt: bool):
        """Flattened (dst, src, wgt) index arrays in execution order (i, j, k)."""
        u = self.uop[x.uop_bgn: x.uop_end].astype(np.int64)
        dst, src, wgt = u & 0x7FF, (u >> 11) & 0x7FF, (u >> 22) & 0x3FF
        i = np.arange(x.iter_out, dtype=np.int64)[:, None, None]
        j = np.arange(x.iter_in, dtype=np.int64)[None, :, None]
        d = (dst[None, None, :] + i * x.dst_factor_out + j * x.dst_factor_in).ravel()
        s = (src[None, None, :] + i * x.src_factor_out + j * x.src_factor_in).ravel()
        w = None
        if with_wgt:
            w = (wgt[None, None, :] + i * x.wgt_factor_out + j * x.wgt_factor_in).ravel()
        return d, s, w

    def _check_loop(self, x, kind):
        if x.uop_end < x.uop_bgn or x.uop_end > len(self.uop):
            raise VTASimulationError(f"{isa.disassemble_one(x)}: micro-op range "
                                     f"[{x.uop_bgn}, {x.uop_end}) is invalid.")

    def _gemm(self, x) -> None:
        self._check_loop(x, "GEMM")
        n = x.iter_out * x.iter_in * (x.uop_end - x.uop_bgn)
        if not x.reset:
            self._stats["gemm_counter"] += n
        if n == 0 or self.skip_exec:
            return
        d, s, w = self._indices(x, with_wgt=not x.reset)
        if d.max() >= len(self.acc):
            raise VTASimulationError(f"{isa.disassemble_one(x)} indexes the accumulator "
                                     "out of range.")
        if x.reset:
            self.acc[d] = 0
            return
        if s.max() >= len(self.inp) or w.max() >= len(self.wgt):
            raise VTASimulationError(f"{isa.disassemble_one(x)} indexes inp/wgt out of range.")
        # (n, batch, in) x (n, out, in) -> (n, batch, out); exact in int32
        prod = np.einsum("nbi,noi->nbo", self.inp[s].astype(np.int32),
                         self.wgt[w].astype(np.int32))
        lo, hi = int(d.min()), int(d.max()) + 1
        width = prod.shape[1] * prod.shape[2]
        idx = ((d - lo)[:, None] * width + np.arange(width)[None, :]).ravel()
        sums = np.bincount(idx, weights=prod.reshape(-1).astype(np.float64),
                           minlength=(hi - lo) * width)
        block = self.acc[lo:hi].reshape(-1).astype(np.int64) + sums.astype(np.int64)
        self.acc[lo:hi] = block.astype(np.int32).reshape(hi - lo, *self.acc.shape[1:])

    def _alu(self, x) -> None:
        self._check_loop(x, "ALU")
        if x.alu_opcode not in isa.ALU_NAMES:
            raise VTASimulationError(f"unknown ALU opcode {x.alu_opcode}; use 0..4.")
        n = x.iter_out * x.iter_in * (x.uop_end - x.uop_bgn)
        self._stats["alu_counter"] += n
        if n == 0 or self.skip_exec:
            return
        d, s, _ = self._indices(x, with_wgt=False)
        if d.max() >= len(self.acc) or (not x.use_imm and s.max() >= len(self.acc)):
            raise VTASimulationError(f"{isa.disassemble_one(x)} indexes the accumulator "
                                     "out of range.")
        if self._alu_vectorisable(d, s, x.use_imm):
            a = self.acc[d]
            b = np.int64(x.imm) if x.use_imm else self.acc[s].astype(np.int64)
            self.acc[d] = alu_apply(x.alu_opcode, a, b)
        else:  # a later micro-op reads what an earlier one wrote: keep program order
            for dd, ss in zip(d.tolist(), s.tolist(), strict=True):
                b = np.int64(x.imm) if x.use_imm else self.acc[ss].astype(np.int64)
                self.acc[dd] = alu_apply(x.alu_opcode, self.acc[dd], b)

    @staticmethod
    def _alu_vectorisable(d, s, use_imm) -> bool:
        """True when reading all operands first gives the same result as program order."""
        if len(np.unique(d)) != len(d):
            return False
        if use_imm:
            return True
        # the (unique) step that writes each source element, or n if none does
        order = np.argsort(d)
        pos = np.searchsorted(d, s, sorter=order)
        pos = np.minimum(pos, len(d) - 1)
        hit = d[order[pos]] == s
        writer = np.where(hit, order[pos], len(d))
        return bool(np.all(writer >= np.arange(len(d))))


def alu_apply(opcode: int, a: np.ndarray, b) -> np.ndarray:
    """One ALU operation on int32 values with int32 wraparound.

    ``SHR`` shifts right arithmetically by ``b``; a negative ``b`` shifts left by ``-b``.
    Right shifts of 31 or more give the sign; left shifts of 32 or more give 0.
    """
    a64 = np.asarray(a).astype(np.int64)
    b64 = np.broadcast_to(np.asarray(b, dtype=np.int64), a64.shape)
    if opcode == isa.ALU_MIN:
        r = np.minimum(a64, b64)
    elif opcode == isa.ALU_MAX:
        r = np.maximum(a64, b64)
    elif opcode == isa.ALU_ADD:
        r = a64 + b64
    elif opcode == isa.ALU_MUL:
        r = a64 * b64
    elif opcode == isa.ALU_SHR:
        right = np.right_shift(a64, np.clip(b64, 0, 31))
        left = np.where(b64 <= -32, 0, np.left_shift(a64, np.clip(-b64, 0, 32)))
        r = np.where(b64 >= 0, right, left)
    else:
        raise VTASimulationError(f"unknown ALU opcode {opcode}; use 0..4.")
    # int32 wraparound: keep the low 32 bits
    return ((r + (1 << 31)) % (1 << 32) - (1 << 31)).astype(np.int32)
