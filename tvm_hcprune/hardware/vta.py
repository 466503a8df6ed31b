"""VTA hardware configuration: the JSON parameters and every size derived from them.

The default is the published ``1x16_i8w8a32_15_15_18_17`` configuration: batch 1, 16x16
GEMM blocks, int8 inputs and weights, int32 accumulators, and 32 KiB / 32 KiB / 256 KiB /
128 KiB of micro-op / input / weight / accumulator SRAM.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from tvm_hcprune.errors import HCPruneError
from tvm_hcprune.utils import atomic_write_text

_JSON_KEYS = (
    "TARGET", "HW_VER", "LOG_INP_WIDTH", "LOG_WGT_WIDTH", "LOG_ACC_WIDTH", "LOG_BATCH",
    "LOG_BLOCK", "LOG_UOP_BUFF_SIZE", "LOG_INP_BUFF_SIZE", "LOG_WGT_BUFF_SIZE",
    "LOG_ACC_BUFF_SIZE",
)


@dataclasses.dataclass(frozen=True)
class VTAConfig:
    """A VTA configuration (the keys of ``vta_config.json``) with derived sizes.

    Parameters
    ----------
    target : str
        ``"sim"`` for the functional simulator (the only target executed here).
    hw_ver : str
        Bitstream version string.
    log_inp_width, log_wgt_width, log_acc_width : int
        log2 of the input, weight and accumulator element widths in bits (3, 3, 5).
    log_batch : int
        log2 of the GEMM batch (rows of the input block).
    log_block : int
        log2 of the GEMM block (input and output channels per block).
    log_uop_buff_size, log_inp_buff_size, log_wgt_buff_size, log_acc_buff_size : int
        log2 of the SRAM sizes in bytes.
    clock_mhz : float
        Clock used by the cycle estimate (not part of the published JSON).
    bus_bits : int
        DMA bus width used by the cycle estimate (not part of the published JSON).
    """

    target: str = "sim"
    hw_ver: str = "0.0.2"
    log_inp_width: int = 3
    log_wgt_width: int = 3
    log_acc_width: int = 5
    log_batch: int = 0
    log_block: int = 4
    log_uop_buff_size: int = 15
    log_inp_buff_size: int = 15
    log_wgt_buff_size: int = 18
    log_acc_buff_size: int = 17
    clock_mhz: float = 100.0
    bus_bits: int = 64

    def __post_init__(self):
        if self.log_inp_width != 3 or self.log_wgt_width != 3:
            raise HCPruneError(
                "VTAConfig: only int8 inputs and weights (LOG_INP_WIDTH = LOG_WGT_WIDTH = 3) "
                f"are simulated, got {self.log_inp_width}/{self.log_wgt_width}; use 3."
            )
        if self.log_acc_width != 5:
            raise HCPruneError(
                f"VTAConfig: only int32 accumulators (LOG_ACC_WIDTH = 5) are simulated, got "
                f"{self.log_acc_width}; use 5."
            )
        for name in ("log_batch", "log_block"):
            if not 0 <= getattr(self, name) <= 6:
                raise HCPruneError(f"VTAConfig: {name.upper()} must be in [0, 6].")
        # every SRAM must hold at least one element and its index must fit the ISA fields
        for mem in ("uop", "inp", "wgt", "acc"):
            if self.depth(mem) < 1:
                raise HCPruneError(
                    f"VTAConfig: LOG_{mem.upper()}_BUFF_SIZE is too small to hold one element."
                )
        if self.log_uop_depth > 13 or self.log_inp_depth > 11 or self.log_acc_depth > 11 \
                or self.log_wgt_depth > 10:
            raise HCPruneError(
                "VTAConfig: an SRAM is deeper than the 128-bit instruction's index fields allow "
                "(uop 13, inp 11, acc 11, wgt 10 bits); lower its LOG_*_BUFF_SIZE."
            )

    # ---- derived sizes -----------------------------------------------------------------
    @property
    def batch(self) -> int:
        """GEMM batch (rows of an input block)."""
        return 1 << self.log_batch

    @property
    def block_in(self) -> int:
        """Input channels per block."""
        return 1 << self.log_block

    @property
    def block_out(self) -> int:
        """Output channels per block."""
        return 1 << self.log_block

    @property
    def inp_width(self) -> int:
        return 1 << self.log_inp_width

    @property
    def wgt_width(self) -> int:
        return 1 << self.log_wgt_width

    @property
    def acc_width(self) -> int:
        return 1 << self.log_acc_width

    @property
    def out_width(self) -> int:
        """Output element width in bits (the input width)."""
        return self.inp_width

    @property
    def log_out_buff_size(self) -> int:
        """log2 bytes of the (virtual) output buffer: the accumulator at the output width."""
        return self.log_acc_buff_size + self.log_inp_width - self.log_acc_width

    def elem_bytes(self, mem: str) -> int:
        """Bytes of one element of memory ``mem`` (uop, inp, wgt, acc, out)."""
        sizes = {
            "uop": 4,
            "inp": self.batch * self.block_in * self.inp_width // 8,
            "wgt": self.block_out * self.block_in * self.wgt_width // 8,
            "acc": self.batch * self.block_out * self.acc_width // 8,
            "out": self.batch * self.block_out * self.out_width // 8,
        }
        if mem not in sizes:
            raise HCPruneError(f"unknown VTA memory {mem!r}; use one of {sorted(sizes)}.")
        return sizes[mem]

    def depth(self, mem: str) -> int:
        """Number of elements memory ``mem`` holds."""
        log = {
            "uop": self.log_uop_buff_size, "inp": self.log_inp_buff_size,
            "wgt": self.log_wgt_buff_size, "acc": self.log_acc_buff_size,
            "out": self.log_out_buff_size,
        }[mem]
        return (1 << log) // self.elem_bytes(mem)

    @property
    def uop_depth(self) -> int:
        return self.depth("uop")

    @property
    def inp_depth(self) -> int:
        return self.depth("inp")

    @property
    def wgt_depth(self) -> int:
        return self.depth("wgt")

    @property
    def acc_depth(self) -> int:
        return self.depth("acc")

    @property
    def log_uop_depth(self) -> int:
        return self.uop_depth.bit_length() - 1

    @property
    def log_inp_depth(self) -> int:
        return self.inp_depth.bit_length() - 1

    @property
    def log_wgt_depth(self) -> int:
        return self.wgt_depth.bit_length() - 1

    @property
    def log_acc_depth(self) -> int:
        return self.acc_depth.bit_length() - 1

    @property
    def macs_per_uop(self) -> int:
        """Multiply-accumulates done by one GEMM micro-op."""
        return self.batch * self.block_in * self.block_out

    @property
    def peak_gops(self) -> float:
        """Peak throughput at ``clock_mhz``: one GEMM micro-op per cycle, 2 ops per MAC."""
        return 2 * self.macs_per_uop * self.clock_mhz / 1000.0

    @property
    def bitstream(self) -> str:
        """The bitstream name, e.g. ``1x16_i8w8a32_15_15_18_17``."""
        return (
            f"{self.batch}x{self.block_in}_i{self.inp_width}w{self.wgt_width}a{self.acc_width}"
            f"_{self.log_uop_buff_size}_{self.log_inp_buff_size}_{self.log_wgt_buff_size}"
            f"_{self.log_acc_buff_size}"
        )

    # ---- JSON ---------------------------------------------------------------------------
    def to_json_dict(self) -> dict:
        """The ``vta_config.json`` keys (upper case) plus the estimate's clock and bus."""
        d = {k: getattr(self, k.lower()) for k in _JSON_KEYS}
        d["CLOCK_MHZ"] = self.clock_mhz
        d["BUS_BITS"] = self.bus_bits
        return d

    def derived(self) -> dict:
        """Every derived size, for printing and for the JSON dump."""
        return {
            "BATCH": self.batch, "BLOCK_IN": self.block_in, "BLOCK_OUT": self.block_out,
            "INP_WIDTH": self.inp_width, "WGT_WIDTH": self.wgt_width,
            "ACC_WIDTH": self.acc_width, "OUT_WIDTH": self.out_width,
            "LOG_OUT_BUFF_SIZE": self.log_out_buff_size,
            "INP_ELEM_BYTES": self.elem_bytes("inp"), "WGT_ELEM_BYTES": self.elem_bytes("wgt"),
            "ACC_ELEM_BYTES": self.elem_bytes("acc"), "OUT_ELEM_BYTES": self.elem_bytes("out"),
            "UOP_DEPTH": self.uop_depth, "INP_DEPTH": self.inp_depth,
            "WGT_DEPTH": self.wgt_depth, "ACC_DEPTH": self.acc_depth,
            "LOG_UOP_DEPTH": self.log_uop_depth, "LOG_INP_DEPTH": self.log_inp_depth,
            "LOG_WGT_DEPTH": self.log_wgt_depth, "LOG_ACC_DEPTH": self.log_acc_depth,
            "BITSTREAM": self.bitstream,
        }

    @classmethod
    def from_json_dict(cls, d: dict) -> VTAConfig:
        """Build from a ``vta_config.json``-style dict; unknown keys raise."""
        known = set(_JSON_KEYS) | {"CLOCK_MHZ", "BUS_BITS"}
        derived_keys = set(cls().derived())
        unknown = set(d) - known - derived_keys
        if unknown:
            raise HCPruneError(
                f"VTAConfig: unknown keys {sorted(unknown)}; allowed: {sorted(known)}."
            )
        kwargs = {k.lower(): v for k, v in d.items() if k in known}
        cfg = cls(**kwargs)
        # derived values present in the file must agree with the parameters
        mism = {k: (v, cfg.derived()[k]) for k, v in d.items()
                if k in derived_keys and cfg.derived()[k] != v}
        if mism:
            raise HCPruneError(
                f"VTAConfig: derived values in the file disagree with its parameters: {mism}; "
                "remove them or fix the LOG_* keys."
            )
        return cfg

    def to_json(self) -> str:
        return json.dumps({**self.to_json_dict(), **self.derived()}, indent=2)

    def save(self, path: str | os.PathLike) -> None:
        """Write the configuration (parameters and derived sizes) as JSON, atomically."""
        atomic_write_text(path, self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> VTAConfig:
        """Read a ``vta_config.json``-style file."""
        p = Path(path)
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise HCPruneError(
                f"VTA config file {p} does not exist; pass an existing path.") from None
        except json.JSONDecodeError as err:
            raise HCPruneError(f"VTA config file {p} is not valid JSON: {err}.") from err
        if not isinstance(d, dict):
            raise HCPruneError(f"VTA config file {p} must hold a JSON object.")
        return cls.from_json_dict(d)


DEFAULT_CONFIG = VTAConfig()
