"""VTAConfig constants and JSON; the ISA codec's bit positions, round trips and disassembler."""

import json
import random

import pytest

from tvm_hcprune.errors import HCPruneError
from tvm_hcprune.hardware.vta import VTAConfig
from tvm_hcprune.vta import isa


def test_default_config_derived_sizes():
    """The default config is 1x16x16 int8/int8/int32 with the published SRAM depths."""
    c = VTAConfig()
    assert (c.batch, c.block_in, c.block_out) == (1, 16, 16)
    assert (c.inp_width, c.wgt_width, c.acc_width, c.out_width) == (8, 8, 32, 8)
    assert (c.uop_depth, c.inp_depth, c.wgt_depth, c.acc_depth) == (8192, 2048, 1024, 2048)
    assert (c.elem_bytes("inp"), c.elem_bytes("wgt"), c.elem_bytes("acc"),
            c.elem_bytes("out"), c.elem_bytes("uop")) == (16, 256, 64, 16, 4)
    assert (c.log_uop_depth, c.log_inp_depth, c.log_wgt_depth, c.log_acc_depth) == (13, 11, 10, 11)
    assert c.log_out_buff_size == 15
    assert c.bitstream == "1x16_i8w8a32_15_15_18_17"
    assert c.peak_gops == pytest.approx(51.2)


def test_config_file_round_trip(tmp_path):
    """save() writes parameters plus derived sizes; load() reads them back (and checks them)."""
    c = VTAConfig(log_acc_buff_size=16)
    p = tmp_path / "vta_config.json"
    c.save(p)
    assert VTAConfig.load(p) == c
    d = json.loads(p.read_text())
    assert d["ACC_DEPTH"] == 1024 and d["LOG_ACC_BUFF_SIZE"] == 16
    # the published file format (no derived keys) loads too
    p.write_text(json.dumps({"TARGET": "sim", "HW_VER": "0.0.2", "LOG_INP_WIDTH": 3,
                             "LOG_WGT_WIDTH": 3, "LOG_ACC_WIDTH": 5, "LOG_BATCH": 0,
                             "LOG_BLOCK": 4, "LOG_UOP_BUFF_SIZE": 15, "LOG_INP_BUFF_SIZE": 15,
                             "LOG_WGT_BUFF_SIZE": 18, "LOG_ACC_BUFF_SIZE": 17}))
    assert VTAConfig.load(p) == VTAConfig()


@pytest.mark.parametrize("payload, words", [
    ({"LOG_BLOCK": 4, "BOGUS": 1}, "unknown keys"),
    ({"LOG_BLOCK": 4, "ACC_DEPTH": 7}, "disagree"),
    ({"LOG_INP_WIDTH": 4}, "int8"),
])
def test_config_bad_input(tmp_path, payload, words):
    """Bad config files raise HCPruneError naming the problem."""
    p = tmp_path / "c.json"
    p.write_text(json.dumps(payload))
    with pytest.raises(HCPruneError, match=words):
        VTAConfig.load(p)
    with pytest.raises(HCPruneError, match="does not exist"):
        VTAConfig.load(tmp_path / "missing.json")


# golden bit positions straight from the spec's table (LSB first, [lo, hi))
GOLDEN = {
    isa.MemInsn: {"pop_prev": (3, 4), "pop_next": (4, 5), "push_prev": (5, 6),
                  "push_next": (6, 7), "memory_type": (7, 10), "sram_base": (10, 26),
                  "dram_base": (26, 58), "y_size": (64, 80), "x_size": (80, 96),
                  "x_stride": (96, 112), "y_pad_0": (112, 116), "y_pad_1": (116, 120),
                  "x_pad_0": (120, 124), "x_pad_1": (124, 128)},
    isa.GemmInsn: {"reset": (7, 8), "uop_bgn": (8, 21), "uop_end": (21, 35),
                   "iter_out": (35, 49), "iter_in": (49, 63), "dst_factor_out": (64, 75),
                   "dst_factor_in": (75, 86), "src_factor_out": (86, 97),
                   "src_factor_in": (97, 108), "wgt_factor_out": (108, 118),
                   "wgt_factor_in": (118, 128)},
    isa.AluInsn: {"reset": (7, 8), "uop_bgn": (8, 21), "uop_end": (21, 35),
                  "iter_out": (35, 49), "iter_in": (49, 63), "dst_factor_out": (64, 75),
                  "dst_factor_in": (75, 86), "src_factor_out": (86, 97),
                  "src_factor_in": (97, 108), "alu_opcode": (108, 111), "use_imm": (111, 112)},
}


def _blank(cls):
    kw = {name: 0 for name, _, _ in cls.FIELDS if name != "opcode"}
    return cls(**kw)


@pytest.mark.parametrize("cls", list(GOLDEN))
def test_golden_bit_positions(cls):
    """Setting one field to all ones sets exactly its bits (above the opcode)."""
    base = _blank(cls).encode()
    assert base == cls().opcode  # only the opcode bits remain
    for name, (lo, hi) in GOLDEN[cls].items():
        insn = _blank(cls)
        setattr(insn, name, (1 << (hi - lo)) - 1)
        assert insn.encode() ^ base == ((1 << hi) - (1 << lo)), name
        assert getattr(isa.decode(insn.encode()), name) == (1 << (hi - lo)) - 1


def test_opcodes_and_immediate():
    """Opcodes sit in bits 0-2; the ALU immediate is signed 16-bit in bits 112-127."""
    assert isa.MemInsn(opcode=isa.OP_STORE).encode() & 7 == 1
    assert isa.GemmInsn().encode() & 7 == 2
    assert isa.FinishInsn().encode() == 3
    assert isa.AluInsn().encode() & 7 == 4
    w = _blank(isa.AluInsn)
    w.imm = -1
    assert w.encode() >> 112 == 0xFFFF
    w.imm = -32768
    assert w.encode() >> 112 == 0x8000 and isa.decode(w.encode()).imm == -32768
    w.imm = 32767
    assert isa.decode(w.encode()).imm == 32767
    with pytest.raises(HCPruneError, match="signed"):
        isa.AluInsn(imm=40000).encode()
    with pytest.raises(HCPruneError, match="does not fit 13 bits"):
        isa.GemmInsn(uop_bgn=1 << 13).encode()


def test_uop_bits():
    """Micro-op: dst[0:11], src[11:22], wgt[22:32]."""
    assert isa.Uop(0x7FF, 0, 0).encode() == 0x7FF
    assert isa.Uop(0, 0x7FF, 0).encode() == 0x7FF << 11
    assert isa.Uop(0, 0, 0x3FF).encode() == 0x3FF << 22
    assert isa.Uop.decode(isa.Uop(5, 6, 7).encode()) == isa.Uop(5, 6, 7)
    with pytest.raises(HCPruneError):
        isa.Uop(2048, 0, 0).encode()


def test_random_round_trips():
    """Random field values survive encode -> bytes -> decode for every instruction type."""
    rng = random.Random(0)
    for _ in range(300):
        cls = rng.choice([isa.MemInsn, isa.GemmInsn, isa.AluInsn])
        kw = {}
        for name, lo, hi in cls.FIELDS:
            if name == "opcode":
                continue
            width = hi - lo
            if name in cls.SIGNED:
                kw[name] = rng.randrange(-(1 << (width - 1)), 1 << (width - 1))
            else:
                kw[name] = rng.randrange(0, 1 << width)
        if cls is isa.MemInsn:
            kw["opcode"] = rng.choice([isa.OP_LOAD, isa.OP_STORE])
        insn = cls(**kw)
        data = insn.to_bytes()
        assert len(data) == 16
        assert isa.decode(data) == insn
        assert isa.decode_program(isa.encode_program([insn, insn])) == [insn, insn]


def test_disassembler_readable():
    """The disassembler names opcodes, memories, ALU ops and dependency flags."""
    prog = [isa.MemInsn(memory_type=isa.MEM_INP, sram_base=3, dram_base=9, y_size=2,
                        x_size=4, x_stride=8, y_pad_0=1, push_next=1),
            isa.GemmInsn(reset=1, uop_end=2, iter_out=3, pop_prev=1),
            isa.AluInsn(alu_opcode=isa.ALU_SHR, use_imm=1, imm=-2, uop_end=1),
            isa.MemInsn(opcode=isa.OP_STORE, memory_type=isa.MEM_OUT),
            isa.FinishInsn()]
    text = isa.disassemble(isa.encode_program(prog), uops=[isa.Uop(1, 2, 3).encode()])
    assert "LOAD INP sram=3 dram=9 y=2 x=4 stride=8 pad(y=1,0 x=0,0)  [push_next]" in text
    assert "GEMM-RESET uop[0:2] out=3" in text and "[pop_prev]" in text
    assert "ALU-SHR imm=-2" in text
    assert "NOP-STORE OUT" in text and "FINISH" in text
    assert "dst=1 src=2 wgt=3" in text
    with pytest.raises(HCPruneError, match="unknown VTA opcode"):
        isa.decode(7)
