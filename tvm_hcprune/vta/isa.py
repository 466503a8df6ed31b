"""VTA instruction set: bit-exact 128-bit instructions and 32-bit micro-ops, and a disassembler.

Every field is given as ``(name, lo, hi)``: bits ``lo`` (inclusive) to ``hi`` (exclusive),
counted from the least significant bit of the little-endian word. Encoding checks every value
against its field width and raises :class:`~tvm_hcprune.errors.HCPruneError` on overflow.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import ClassVar

from tvm_hcprune.errors import HCPruneError

# opcodes
OP_LOAD, OP_STORE, OP_GEMM, OP_FINISH, OP_ALU = 0, 1, 2, 3, 4
OPCODE_NAMES = {OP_LOAD: "LOAD", OP_STORE: "STORE", OP_GEMM: "GEMM", OP_FINISH: "FINISH",
                OP_ALU: "ALU"}
# memory ids
MEM_UOP, MEM_WGT, MEM_INP, MEM_ACC, MEM_OUT, MEM_ACC_8BIT = 0, 1, 2, 3, 4, 5
MEM_NAMES = {MEM_UOP: "UOP", MEM_WGT: "WGT", MEM_INP: "INP", MEM_ACC: "ACC", MEM_OUT: "OUT",
             MEM_ACC_8BIT: "ACC_8BIT"}
# ALU opcodes
ALU_MIN, ALU_MAX, ALU_ADD, ALU_SHR, ALU_MUL = 0, 1, 2, 3, 4
ALU_NAMES = {ALU_MIN: "MIN", ALU_MAX: "MAX", ALU_ADD: "ADD", ALU_SHR: "SHR", ALU_MUL: "MUL"}

COMMON_FIELDS = (
    ("opcode", 0, 3), ("pop_prev", 3, 4), ("pop_next", 4, 5), ("push_prev", 5, 6),
    ("push_next", 6, 7),
)
MEM_FIELDS = COMMON_FIELDS + (
    ("memory_type", 7, 10), ("sram_base", 10, 26), ("dram_base", 26, 58),
    ("y_size", 64, 80), ("x_size", 80, 96), ("x_stride", 96, 112),
    ("y_pad_0", 112, 116), ("y_pad_1", 116, 120), ("x_pad_0", 120, 124), ("x_pad_1", 124, 128),
)
_LOOP_FIELDS = (
    ("reset", 7, 8), ("uop_bgn", 8, 21), ("uop_end", 21, 35), ("iter_out", 35, 49),
    ("iter_in", 49, 63), ("dst_factor_out", 64, 75), ("dst_factor_in", 75, 86),
    ("src_factor_out", 86, 97), ("src_factor_in", 97, 108),
)
GEMM_FIELDS = COMMON_FIELDS + _LOOP_FIELDS + (("wgt_factor_out", 108, 118),
                                              ("wgt_factor_in", 118, 128))
ALU_FIELDS = COMMON_FIELDS + _LOOP_FIELDS + (("alu_opcode", 108, 111), ("use_imm", 111, 112),
                                             ("imm", 112, 128))
FINISH_FIELDS = COMMON_FIELDS
UOP_FIELDS = (("dst", 0, 11), ("src", 11, 22), ("wgt", 22, 32))

INSN_BYTES = 16
UOP_BYTES = 4


def _pack(fields, values: dict, signed=()) -> int:
    word = 0
    for name, lo, hi in fields:
        v = int(values[name])
        width = hi - lo
        if name in signed:
            if not -(1 << (width - 1)) <= v < (1 << (width - 1)):
                raise HCPruneError(
                    f"VTA field {name}={v} does not fit {width} signed bits; "
                    f"use a value in [{-(1 << (width - 1))}, {(1 << (width - 1)) - 1}]."
                )
            v &= (1 << width) - 1
        elif not 0 <= v < (1 << width):
            raise HCPruneError(
                f"VTA field {name}={v} does not fit {width} bits (bits {lo}..{hi - 1}); "
                f"use a value in [0, {(1 << width) - 1}] or a smaller tile."
            )
        word |= v << lo
    return word


def _unpack(fields, word: int, signed=()) -> dict:
    out = {}
    for name, lo, hi in fields:
        width = hi - lo
        v = (word >> lo) & ((1 << width) - 1)
        if name in signed and v >= 1 << (width - 1):
            v -= 1 << width
        out[name] = v
    return out


@dataclasses.dataclass
class _Insn:
    pop_prev: int = 0
    pop_next: int = 0
    push_prev: int = 0
    push_next: int = 0

    FIELDS: ClassVar[tuple] = ()
    SIGNED: ClassVar[tuple] = ()

    def values(self) -> dict:
        return {name: getattr(self, name) for name, _, _ in self.FIELDS if name != "opcode"}

    def encode(self) -> int:
        """The 128-bit instruction as a Python int."""
        return _pack(self.FIELDS, {"opcode": self.opcode, **self.values()}, self.SIGNED)

    def to_bytes(self) -> bytes:
        return self.encode().to_bytes(INSN_BYTES, "little")

    def deps(self) -> str:
        flags = [n for n in ("pop_prev", "pop_next", "push_prev", "push_next") if getattr(self, n)]
        return " ".join(flags)


@dataclasses.dataclass
class MemInsn(_Insn):
    """LOAD or STORE: a 2-D DMA between DRAM and an SRAM, with zero padding on loads.

    ``sram_base`` and ``dram_base`` count elements of the memory type, not bytes.
    """

    opcode: int = OP_LOAD
    memory_type: int = MEM_INP
    sram_base: int = 0
    dram_base: int = 0
    y_size: int = 0
    x_size: int = 0
    x_stride: int = 0
    y_pad_0: int = 0
    y_pad_1: int = 0
    x_pad_0: int = 0
    x_pad_1: int = 0

    FIELDS: ClassVar[tuple] = MEM_FIELDS


@dataclasses.dataclass
class GemmInsn(_Insn):
    """GEMM: two loops over the micro-ops ``[uop_bgn, uop_end)``; ``reset`` zeroes acc."""

    opcode: int = OP_GEMM
    reset: int = 0
    uop_bgn: int = 0
    uop_end: int = 0
    iter_out: int = 1
    iter_in: int = 1
    dst_factor_out: int = 0
    dst_factor_in: int = 0
    src_factor_out: int = 0
    src_factor_in: int = 0
    wgt_factor_out: int = 0
    wgt_factor_in: int = 0

    FIELDS: ClassVar[tuple] = GEMM_FIELDS


@dataclasses.dataclass
class AluInsn(_Insn):
    """ALU: ``acc[dst] = op(acc[dst], imm if use_imm else acc[src])`` over two loops."""

    opcode: int = OP_ALU
    reset: int = 0
    uop_bgn: int = 0
    uop_end: int = 0
    iter_out: int = 1
    iter_in: int = 1
    dst_factor_out: int = 0
    dst_factor_in: int = 0
    src_factor_out: int = 0
    src_factor_in: int = 0
    alu_opcode: int = ALU_ADD
    use_imm: int = 0
    imm: int = 0

    FIELDS: ClassVar[tuple] = ALU_FIELDS
    SIGNED: ClassVar[tuple] = ("imm",)


@dataclasses.dataclass
class FinishInsn(_Insn):
    """FINISH: ends the program (runs in the compute queue)."""

    opcode: int = OP_FINISH

    FIELDS: ClassVar[tuple] = FINISH_FIELDS


@dataclasses.dataclass(frozen=True)
class Uop:
    """A micro-op: accumulator, input (GEMM) or accumulator (ALU) and weight indices."""

    dst: int
    src: int
    wgt: int = 0

    def encode(self) -> int:
        return _pack(UOP_FIELDS, dataclasses.asdict(self))

    @classmethod
    def decode(cls, word: int) -> Uop:
        return cls(**_unpack(UOP_FIELDS, int(word)))


Insn = MemInsn | GemmInsn | AluInsn | FinishInsn


def decode(word: int | bytes) -> Insn:
    """Decode a 128-bit instruction (an int, or 16 little-endian bytes)."""
    if isinstance(word, bytes | bytearray):
        if len(word) != INSN_BYTES:
            raise HCPruneError(f"a VTA instruction is {INSN_BYTES} bytes, got {len(word)}.")
        word = int.from_bytes(word, "little")
    word = int(word)
    if not 0 <= word < 1 << 128:
        raise HCPruneError("a VTA instruction must be a non-negative 128-bit integer.")
    opcode = word & 7
    cls = {OP_LOAD: MemInsn, OP_STORE: MemInsn, OP_GEMM: GemmInsn, OP_ALU: AluInsn,
           OP_FINISH: FinishInsn}.get(opcode)
    if cls is None:
        raise HCPruneError(f"unknown VTA opcode {opcode}; valid opcodes are 0..4.")
    vals = _unpack(cls.FIELDS, word, cls.SIGNED)
    return cls(**vals)


def encode_program(insns: Iterable[Insn]) -> bytes:
    """Concatenate instructions into the byte stream the fetch module reads."""
    return b"".join(i.to_bytes() for i in insns)


def decode_program(data: bytes) -> list[Insn]:
    """Split a byte stream into instructions."""
    if len(data) % INSN_BYTES:
        raise HCPruneError(f"instruction stream length {len(data)} is not a multiple of 16.")
    return [decode(data[i:i + INSN_BYTES]) for i in range(0, len(data), INSN_BYTES)]


def disassemble_one(insn: Insn | int) -> str:
    """One readable line for an instruction."""
    if not isinstance(insn, _Insn):
        insn = decode(insn)
    name = OPCODE_NAMES[insn.opcode]
    deps = insn.deps()
    deps = f"  [{deps}]" if deps else ""
    if isinstance(insn, MemInsn):
        mem = MEM_NAMES.get(insn.memory_type, f"MEM{insn.memory_type}")
        if insn.x_size == 0:
            return f"NOP-{name} {mem}{deps}"
        pad = ""
        if insn.y_pad_0 or insn.y_pad_1 or insn.x_pad_0 or insn.x_pad_1:
            pad = (f" pad(y={insn.y_pad_0},{insn.y_pad_1} x={insn.x_pad_0},{insn.x_pad_1})")
        return (f"{name} {mem} sram={insn.sram_base} dram={insn.dram_base} "
                f"y={insn.y_size} x={insn.x_size} stride={insn.x_stride}{pad}{deps}")
    if isinstance(insn, GemmInsn):
        kind = "GEMM-RESET" if insn.reset else "GEMM"
        return (f"{kind} uop[{insn.uop_bgn}:{insn.uop_end}] "
                f"out={insn.iter_out}(d{insn.dst_factor_out},s{insn.src_factor_out},"
                f"w{insn.wgt_factor_out}) in={insn.iter_in}(d{insn.dst_factor_in},"
                f"s{insn.src_factor_in},w{insn.wgt_factor_in}){deps}")
    if isinstance(insn, AluInsn):
        op = ALU_NAMES.get(insn.alu_opcode, f"OP{insn.alu_opcode}")
        operand = f"imm={insn.imm}" if insn.use_imm else "tensor"
        return (f"ALU-{op} {operand} uop[{insn.uop_bgn}:{insn.uop_end}] "
                f"out={insn.iter_out}(d{insn.dst_factor_out},s{insn.src_factor_out}) "
                f"in={insn.iter_in}(d{insn.dst_factor_in},s{insn.src_factor_in}){deps}")
    return f"FINISH{deps}"


def disassemble(insns: Iterable[Insn | int] | bytes, uops=None) -> str:
    """A numbered listing of a program; optionally followed by a micro-op listing.

    Parameters
    ----------
    insns : iterable of instructions or ints, or bytes
        The program.
    uops : iterable of int or Uop, optional
        Micro-op words to list after the program.
    """
    if isinstance(insns, bytes | bytearray):
        insns = decode_program(bytes(insns))
    lines = [f"{i:5d}: {disassemble_one(x)}" for i, x in enumerate(insns)]
    if uops is not None:
        lines.append("micro-ops:")
        for i, u in enumerate(uops):
            u = u if isinstance(u, Uop) else Uop.decode(int(u))
            lines.append(f"{i:5d}: dst={u.dst} src={u.src} wgt={u.wgt}")
    return "\n".join(lines)
