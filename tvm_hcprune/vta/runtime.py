"""Command-queue runtime: builds instruction streams and runs them on the simulator.

The runtime mirrors the published VTA runtime's semantics (not its code): 2-D loads and
stores, micro-op kernels recorded once per signature with up to two loops and cached in the
micro-op SRAM (FIFO eviction), dependency push/pop between the load (1), compute (2) and
store (3) stages with pending-pop coalescing, and ``synchronize`` which closes the stream
with the final token exchange and FINISH, then runs it.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict

import numpy as np

from tvm_hcprune.errors import HCPruneError
from tvm_hcprune.vta import isa
from tvm_hcprune.vta.sim import RunInfo, Simulator

LOAD_STAGE, COMPUTE_STAGE, STORE_STAGE = 1, 2, 3
_MEM_STAGE = {isa.MEM_INP: LOAD_STAGE, isa.MEM_WGT: LOAD_STAGE, isa.MEM_UOP: COMPUTE_STAGE,
              isa.MEM_ACC: COMPUTE_STAGE, isa.MEM_ACC_8BIT: COMPUTE_STAGE}


@dataclasses.dataclass(frozen=True)
class UopKernel:
    """A recorded micro-op kernel.

    Attributes
    ----------
    site : str
        The call site (kernels are cached per site and content, as the runtime does).
    uops : tuple of Uop
        The micro-ops, executed in order inside the loops.
    loops : tuple of (extent, dst_factor, src_factor, wgt_factor)
        Outermost first; at most two.
    """

    site: str
    uops: tuple
    loops: tuple

    def words(self) -> np.ndarray:
        return np.array([u.encode() for u in self.uops], dtype=np.uint32)

    def loop_fields(self) -> dict:
        # a loop of extent 1 never applies its factors: encode them as 0 (they may not fit)
        loops = [lp if lp[0] != 1 else (1, 0, 0, 0) for lp in self.loops]
        loops += [(1, 0, 0, 0)] * (2 - len(loops))
        (eo, do, so, wo), (ei, di, si, wi) = loops
        return dict(iter_out=eo, iter_in=ei, dst_factor_out=do, dst_factor_in=di,
                    src_factor_out=so, src_factor_in=si, wgt_factor_out=wo, wgt_factor_in=wi)


class KernelRecorder:
    """Records one micro-op kernel: ``loop_begin``/``push``/``loop_end`` (also a context).

    Examples
    --------
    >>> rec = KernelRecorder("gemm")
    >>> with rec.loop(16, dst=1, src=0, wgt=16):
    ...     rec.push(dst=0, src=0, wgt=0)
    >>> kernel = rec.end()
    """

    def __init__(self, site: str):
        self.site = site
        self._loops: list = []
        self._open = 0
        self._uops: list = []
        self._push_depth: int | None = None

    def loop_begin(self, extent: int, dst: int = 0, src: int = 0, wgt: int = 0) -> None:
        if self._uops:
            raise HCPruneError("micro-op loops must enclose every push; begin loops first.")
        if len(self._loops) == 2:
            raise HCPruneError("a micro-op kernel has at most two loops (iter_out, iter_in); "
                               "unroll the outer loops into pushes or into separate kernels.")
        self._loops.append((int(extent), int(dst), int(src), int(wgt)))
        self._open += 1

    def loop_end(self) -> None:
        if self._open == 0:
            raise HCPruneError("loop_end without loop_begin.")
        self._open -= 1

    def loop(self, extent: int, dst: int = 0, src: int = 0, wgt: int = 0):
        rec = self

        class _Ctx:
            def __enter__(self):
                rec.loop_begin(extent, dst, src, wgt)
                return rec

            def __exit__(self, *exc):
                rec.loop_end()
                return False

        return _Ctx()

    def push(self, dst: int, src: int = 0, wgt: int = 0) -> None:
        if self._open != len(self._loops):
            raise HCPruneError("every micro-op must sit inside all of the kernel's loops.")
        self._uops.append(isa.Uop(int(dst), int(src), int(wgt)))

    def end(self) -> UopKernel:
        if self._open:
            raise HCPruneError("a micro-op loop was left open; call loop_end().")
        if not self._uops:
            raise HCPruneError("an empty micro-op kernel; push at least one micro-op.")
        return UopKernel(self.site, tuple(self._uops), tuple(self._loops))


def kernel(site: str, uops, loops=()) -> UopKernel:
    """Shorthand: a kernel from ``[(dst, src, wgt), ...]`` and ``[(extent, d, s, w), ...]``."""
    rec = KernelRecorder(site)
    for lp in loops:
        rec.loop_begin(*lp)
    for u in uops:
        rec.push(*u)
    for _ in loops:
        rec.loop_end()
    return rec.end()


class CommandQueue:
    """Instruction stream builder bound to a :class:`~tvm_hcprune.vta.sim.Simulator`.

    Parameters
    ----------
    sim : Simulator, optional
        The device; a fresh default simulator if omitted.
    encode : bool
        Send the stream to the simulator as encoded 128-bit words (exercises the codec).
    """

    def __init__(self, sim: Simulator | None = None, encode: bool = True):
        self.sim = sim or Simulator()
        self.cfg = self.sim.cfg
        self.encode = encode
        self.insns: list = []
        self._last = {LOAD_STAGE: None, COMPUTE_STAGE: None, STORE_STAGE: None}
        self._pending = {LOAD_STAGE: set(), COMPUTE_STAGE: set(), STORE_STAGE: set()}
        self._cache: OrderedDict = OrderedDict()  # key -> (begin, end)
        self._kernel_dram: dict = {}
        self._uop_top = 0
        self.kernels_loaded = 0
        self.runs: list[RunInfo] = []

    # ---- device memory ------------------------------------------------------------------
    def put(self, array: np.ndarray) -> int:
        """Copy an array to DRAM; returns its byte address (256-byte aligned)."""
        return self.sim.dram.put(np.ascontiguousarray(array))

    def alloc(self, nbytes: int) -> int:
        return self.sim.dram.alloc(nbytes)

    def release_dram(self) -> None:
        """Free every DRAM buffer (cached micro-op kernels are re-sent when next missed)."""
        self.sim.dram.reset()
        self._kernel_dram.clear()

    def get(self, addr: int, dtype, shape) -> np.ndarray:
        return self.sim.dram.read(addr, dtype, shape)

    def elem_addr(self, byte_addr: int, mem: str) -> int:
        """Byte address -> element index of memory ``mem`` (the ISA's dram_base unit)."""
        eb = self.cfg.elem_bytes(mem)
        if byte_addr % eb:
            raise HCPruneError(f"DRAM address {byte_addr} is not aligned to {mem} elements "
                               f"({eb} B); allocate through CommandQueue.put/alloc.")
        return byte_addr // eb

    # ---- instruction emission -----------------------------------------------------------
    def _emit(self, stage: int, insn) -> None:
        for flag in self._pending[stage]:
            setattr(insn, flag, 1)
        self._pending[stage] = set()
        self.insns.append(insn)
        self._last[stage] = insn

    def _nop(self, stage: int):
        if stage == LOAD_STAGE:
            return isa.MemInsn(opcode=isa.OP_LOAD, memory_type=isa.MEM_INP)
        if stage == COMPUTE_STAGE:
            return isa.MemInsn(opcode=isa.OP_LOAD, memory_type=isa.MEM_UOP)
        return isa.MemInsn(opcode=isa.OP_STORE, memory_type=isa.MEM_OUT)

    def load_2d(self, mem: int, sram_base: int, dram_base: int, y_size: int, x_size: int,
                x_stride: int, y_pad_0: int = 0, y_pad_1: int = 0, x_pad_0: int = 0,
                x_pad_1: int = 0) -> None:
        """A 2-D LOAD (bases in elements of ``mem``); INP/WGT go to the load stage."""
        if mem not in _MEM_STAGE:
            raise HCPruneError(f"cannot LOAD into {isa.MEM_NAMES.get(mem, mem)}.")
        self._emit(_MEM_STAGE[mem], isa.MemInsn(
            opcode=isa.OP_LOAD, memory_type=mem, sram_base=sram_base, dram_base=dram_base,
            y_size=y_size, x_size=x_size, x_stride=x_stride, y_pad_0=y_pad_0, y_pad_1=y_pad_1,
            x_pad_0=x_pad_0, x_pad_1=x_pad_1))

    def store_2d(self, sram_base: int, dram_base: int, y_size: int, x_size: int,
                 x_stride: int) -> None:
        """A 2-D STORE of the accumulator (int8-truncated) to DRAM (bases in OUT elements)."""
        self._emit(STORE_STAGE, isa.MemInsn(
            opcode=isa.OP_STORE, memory_type=isa.MEM_OUT, sram_base=sram_base,
            dram_base=dram_base, y_size=y_size, x_size=x_size, x_stride=x_stride))

    def _ensure_kernel(self, k: UopKernel) -> int:
        """Make ``k`` resident in the micro-op SRAM; returns its begin index."""
        key = (k.site, k.uops, k.loops)
        hit = self._cache.get(key)
        if hit is not None:
            return hit[0]
        n = len(k.uops)
        depth = self.cfg.uop_depth
        if n > depth:
            raise HCPruneError(f"micro-op kernel {k.site!r} has {n} micro-ops, more than the "
                               f"{depth}-entry micro-op SRAM; use smaller tiles.")
        if self._uop_top + n > depth:
            self._uop_top = 0
        begin, end = self._uop_top, self._uop_top + n
        for other, (b, e) in list(self._cache.items()):  # FIFO eviction of overlaps
            if b < end and begin < e:
                del self._cache[other]
        addr = self._kernel_dram.get(key)
        if addr is None:
            addr = self.put(k.words())
            self._kernel_dram[key] = addr
        self._emit(COMPUTE_STAGE, isa.MemInsn(
            opcode=isa.OP_LOAD, memory_type=isa.MEM_UOP, sram_base=begin,
            dram_base=self.elem_addr(addr, "uop"), y_size=1, x_size=n, x_stride=n))
        self._cache[key] = (begin, end)
        self._uop_top = end
        self.kernels_loaded += 1
        return begin

    def push_gemm(self, k: UopKernel, reset: bool = False) -> None:
        """Issue a GEMM (or a GEMM reset) running kernel ``k``."""
        begin = self._ensure_kernel(k)
        self._emit(COMPUTE_STAGE, isa.GemmInsn(reset=int(reset), uop_bgn=begin,
                                               uop_end=begin + len(k.uops),
                                               **k.loop_fields()))

    def push_alu(self, k: UopKernel, opcode: int, imm: int | None = None) -> None:
        """Issue an ALU op; ``imm`` given means immediate mode, else acc[src] is the operand."""
        begin = self._ensure_kernel(k)
        f = k.loop_fields()
        f.pop("wgt_factor_out")
        f.pop("wgt_factor_in")
        self._emit(COMPUTE_STAGE, isa.AluInsn(
            uop_bgn=begin, uop_end=begin + len(k.uops), alu_opcode=opcode,
            use_imm=int(imm is not None), imm=0 if imm is None else int(imm), **f))

    # ---- dependencies -------------------------------------------------------------------
    @staticmethod
    def _check_pair(frm: int, to: int) -> None:
        if frm not in (1, 2, 3) or to not in (1, 2, 3) or abs(frm - to) != 1:
            raise HCPruneError(f"dependency {frm}->{to} is invalid: stages are load=1, "
                               "compute=2, store=3 and tokens only flow between neighbours.")

    def dep_push(self, frm: int, to: int) -> None:
        """Stage ``frm`` signals stage ``to`` after everything it has issued so far."""
        self._check_pair(frm, to)
        flag = "push_next" if frm < to else "push_prev"
        last = self._last[frm]
        if last is None or getattr(last, flag) or last.opcode == isa.OP_FINISH:
            self._emit(frm, self._nop(frm))
            last = self._last[frm]
        setattr(last, flag, 1)

    def dep_pop(self, frm: int, to: int) -> None:
        """Stage ``to`` waits for a token from ``frm`` before its next instruction."""
        self._check_pair(frm, to)
        flag = "pop_prev" if frm < to else "pop_next"
        if flag in self._pending[to]:  # coalesce: flush the earlier pop as a NOP
            self._emit(to, self._nop(to))
        self._pending[to].add(flag)

    # ---- running ------------------------------------------------------------------------
    def synchronize(self) -> RunInfo:
        """Close the stream (final token exchange, FINISH), run it, and start a new stream."""
        # pops still pending in the load/store stages go first, so that the final pushes
        # below really come after everything those stages do
        for stage in (LOAD_STAGE, STORE_STAGE):
            if self._pending[stage]:
                self._emit(stage, self._nop(stage))
        self.dep_push(STORE_STAGE, COMPUTE_STAGE)
        self.dep_push(LOAD_STAGE, COMPUTE_STAGE)
        self.dep_pop(STORE_STAGE, COMPUTE_STAGE)
        self.dep_pop(LOAD_STAGE, COMPUTE_STAGE)
        if self._pending[COMPUTE_STAGE]:  # FINISH itself carries no pops
            self._emit(COMPUTE_STAGE, self._nop(COMPUTE_STAGE))
        self.insns.append(isa.FinishInsn())
        program = [i.encode() for i in self.insns] if self.encode else list(self.insns)
        self.last_program = list(self.insns)
        self.insns = []
        self._last = {LOAD_STAGE: None, COMPUTE_STAGE: None, STORE_STAGE: None}
        info = self.sim.run(program)
        self.runs.append(info)
        return info

    def disassemble(self) -> str:
        """The pending (not yet synchronised) stream, readable."""
        return isa.disassemble(self.insns)
