"""CUDA helpers: targets MetaSchedule accepts, builds with dlight rules, offline kernel checks.

TVM compiles CUDA source lazily (nvrtc/nvcc run only when the module is loaded on a GPU), so
a build on a machine without a GPU proves little by itself. :func:`nvcc_compile` compiles the
generated source with ``nvcc`` (no GPU needed) and :func:`kernel_param_shapes` reads the
buffer shapes of the scheduled kernels, so CI can check that kernels follow pruned widths.
"""

from __future__ import annotations

import json
import re
import shutil

import tvm
from tvm.support import nvcc

from tvm_hcprune.backend.pipeline import build, get_pipeline
from tvm_hcprune.errors import HCPruneError
from tvm_hcprune.hardware.target import parse_target

_KERNEL_RE = re.compile(
    r'extern\s+"C"\s+__global__\s+void\s+(?:__launch_bounds__\(\d+\)\s+)?(\w+)\s*\('
)
_PTX_ENTRY_RE = re.compile(r"\.(?:visible\s+)?\.entry\s+(\w+)\s*\(")
_ARCH_RE = re.compile(r"^sm_\d+[a-z]?$")


def cuda_target(arch: str = "sm_80", host=None):
    """A CUDA target for ``arch`` with the limits MetaSchedule needs, host llvm.

    MetaSchedule's ``TuneContext`` fails unless the target has ``max_threads_per_block``;
    the values are those of NVIDIA's data-center parts (A100/H100 class).
    """
    if not isinstance(arch, str) or not _ARCH_RE.match(arch):
        raise HCPruneError(f"CUDA arch {arch!r} must look like sm_80 or sm_90a")
    spec = {
        "kind": "cuda",
        "arch": arch,
        "max_threads_per_block": 1024,
        "max_num_threads": 1024,
        "max_shared_memory_per_block": 49152,
        "thread_warp_size": 32,
        "host": host if host is not None else {"kind": "llvm"},
    }
    return parse_target(spec)


def with_limits(target):
    """``target`` (a CUDA target) with MetaSchedule's required limits added when missing."""
    target = parse_target(target)
    if target.kind.name != "cuda":
        return target
    d = json.loads(str(target))
    d.setdefault("max_threads_per_block", 1024)
    d.setdefault("max_shared_memory_per_block", 49152)
    d.setdefault("thread_warp_size", 32)
    return parse_target(d)


def build_cuda(mod, target, database=None):
    """Compile ``mod`` for a CUDA target with tvm_hcprune's pipeline (dlight GPU rules).

    ``database`` (tuned records) is applied first, dlight schedules the rest.
    """
    target = with_limits(target)
    if target.kind.name != "cuda":
        raise HCPruneError(f"build_cuda needs a cuda target, got {target.kind.name!r}")
    return build(mod, target, database=database)


def lowered_module(mod, target, database=None):
    """The module after tvm_hcprune's Relax pipeline for ``target`` (scheduled PrimFuncs)."""
    target = with_limits(target)
    with target:
        return get_pipeline(target, database)(mod)


def _walk(module):
    yield module
    for sub in module.imports:
        yield from _walk(sub)


def cuda_source(ex) -> str:
    """The generated CUDA C++ source of a compiled executable (``tvm.compile`` output)."""
    root = ex.mod if hasattr(ex, "mod") else ex
    for module in _walk(root):
        if module.kind == "cuda":
            return module.inspect_source()
    raise HCPruneError("the executable holds no CUDA module (was it built for a cuda target?)")


def kernel_names(source: str) -> list[str]:
    """Names of the ``__global__`` kernels in CUDA source."""
    # declarations and definitions both match; keep each name once, in order
    return list(dict.fromkeys(_KERNEL_RE.findall(source)))


def ptx_entries(ptx: str | bytes) -> list[str]:
    """Names of the ``.entry`` functions of a PTX listing."""
    if isinstance(ptx, bytes):
        ptx = ptx.decode("utf-8", errors="replace")
    return list(dict.fromkeys(_PTX_ENTRY_RE.findall(ptx)))


def have_nvcc() -> bool:
    """Whether ``nvcc`` is on the PATH."""
    return shutil.which("nvcc") is not None


def nvcc_compile(source: str, arch: str = "sm_80", target_format: str = "ptx") -> bytes:
    """Compile CUDA source offline with nvcc (``tvm.support.nvcc.compile_cuda``).

    Parameters
    ----------
    source : str
        CUDA C++ source (:func:`cuda_source`).
    arch : str
        ``sm_XX``; the compile runs inside a matching CUDA target scope (TVM reads the
        arch from there).
    target_format : ``"ptx"``, ``"cubin"`` or ``"fatbin"``

    Raises
    ------
    HCPruneError
        nvcc is missing or rejects the source (the message holds nvcc's error).
    """
    if not have_nvcc():
        raise HCPruneError("nvcc is not on the PATH; install the CUDA toolkit to check kernels")
    if not _ARCH_RE.match(arch):
        raise HCPruneError(f"CUDA arch {arch!r} must look like sm_80")
    with tvm.target.Target({"kind": "cuda", "arch": arch}):
        try:
            return bytes(nvcc.compile_cuda(source, target_format=target_format,
                                           compiler="nvcc"))
        except Exception as err:  # noqa: BLE001 - nvcc failures arrive as RuntimeError
            raise HCPruneError(f"nvcc rejected the generated CUDA source: {err}") from err


def kernel_param_shapes(lowered) -> dict[str, list[tuple[int, ...]]]:
    """Buffer shapes of each PrimFunc's parameters in a lowered module.

    Parameters
    ----------
    lowered : tvm.IRModule
        :func:`lowered_module` output.

    Returns
    -------
    dict
        PrimFunc name -> list of parameter buffer shapes (static dims as ints).
    """
    out: dict[str, list[tuple[int, ...]]] = {}
    for gv, func in lowered.functions.items():
        if not isinstance(func, tvm.tirx.PrimFunc):
            continue
        shapes = []
        for param in func.params:
            shape = getattr(param, "shape", None)  # TVM 0.27: buffer params are typed Vars
            if shape is None:
                continue
            shapes.append(tuple(int(d) if isinstance(d, tvm.tirx.IntImm) else -1
                                for d in shape))
        out[gv.name_hint] = shapes
    return out


def has_gpu() -> bool:
    """Whether a CUDA device is present (and TVM was built with CUDA)."""
    try:
        return bool(tvm.cuda(0).exist)
    except Exception:  # noqa: BLE001 - runtime without CUDA support
        return False
