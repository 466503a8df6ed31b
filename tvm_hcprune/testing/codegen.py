"""What compiled CPU code allocates: the buffers a kernel gets from TVM's workspace pool."""

from __future__ import annotations

import re

__all__ = ["heap_workspaces"]

# the LLVM IR of a ``TVMBackendAllocWorkspace`` call (through its function pointer) on the
# CPU (device type 1), and the buffer it names
_WORKSPACE = re.compile(r"%(\w+) = tail call ptr %\w+\(i32 1, i32 %\S+, i64 \d+")


def heap_workspaces(compiled) -> list[str]:
    """Names of the buffers that compiled CPU code allocates as heap workspaces, in order.

    TVM 0.27 keeps a kernel-local buffer on the stack only when it is global-scope and
    under 1024 bytes; every other one is a ``TVMBackendAllocWorkspace`` call.

    Parameters
    ----------
    compiled : str or executable
        LLVM IR text, or what ``tvm.compile`` returns (its host module's IR is read).

    Examples
    --------
    >>> ex = tvm.compile(mod, {"kind": "llvm", "mcpu": "znver3"})  # doctest: +SKIP
    >>> heap_workspaces(ex)  # doctest: +SKIP
    ['hcp_pack']
    """
    if not isinstance(compiled, str):
        mod = compiled.mod  # a PrimFunc's LLVM module, or a Relax VM holding it
        compiled = (mod if mod.kind == "llvm" else mod.imports[0]).inspect_source("ll")
    return _WORKSPACE.findall(compiled)
