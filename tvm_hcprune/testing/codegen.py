"""What compiled CPU code allocates: the buffers a kernel gets from TVM's workspace pool."""

from __future__ import annotations

import re

__all__ = ["assert_matches_default", "heap_workspaces"]

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


def assert_matches_default(mod, target, x, rtol: float = 1e-5):
    """Compile ``mod`` with TVM's default pipeline and with tvm_hcprune's (strict: a rule
    that fails raises), run both on ``x`` and assert the outputs agree (``rtol``, and an
    absolute tolerance of ``rtol`` times the largest output magnitude, at least 1).

    Parameters
    ----------
    mod : tvm.IRModule
    target : tvm.target.Target
    x : numpy.ndarray
        The single input.
    rtol : float

    Returns
    -------
    numpy.ndarray
        tvm_hcprune's output.

    Examples
    --------
    >>> from tvm_hcprune.testing.relax_models import inverted_residual
    >>> x = np.zeros((1, 16, 7, 7), "float32")  # doctest: +SKIP
    >>> assert_matches_default(inverted_residual(16, 32, 7), target, x)  # doctest: +SKIP
    """
    import numpy as np
    import tvm
    from tvm import relax

    from tvm_hcprune.backend.pipeline import get_pipeline

    def run(pipeline):
        ex = tvm.compile(mod, target, relax_pipeline=pipeline)
        return relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()

    ref = run(relax.get_default_pipeline(target))
    ours = run(get_pipeline(target, strict=True))
    scale = max(1.0, float(np.abs(ref).max()))
    np.testing.assert_allclose(ours, ref, rtol=rtol, atol=rtol * scale)
    return ours
