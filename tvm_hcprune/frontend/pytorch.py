"""PyTorch models in, through ``torch.export`` and TVM's ``from_exported_program``.

``load_torch(module, example_args)`` returns a Relax module like :func:`load_onnx` does:
static shapes, weights as constants, one tensor output unwrapped from its tuple. torch is
optional (``pip install tvm-hcprune[torch]``) and imported only here, when asked for.
"""

from __future__ import annotations

from pathlib import Path

import tvm
from tvm import relax

from tvm_hcprune.errors import HCPruneError
from tvm_hcprune.utils.relax import static_shape

__all__ = ["load_torch"]


def _torch():
    try:
        import torch  # deferred: optional and slow to import (the .[torch] extra)
    except ImportError:
        raise HCPruneError("load_torch needs PyTorch: pip install 'tvm-hcprune[torch]' "
                           "(torch==2.13.0, CPU build)") from None
    return torch


def _exported(module, example_args, dynamic_shapes):
    torch = _torch()
    if isinstance(module, torch.export.ExportedProgram):
        return module
    if isinstance(module, str | Path):
        path = Path(module)
        if not path.is_file():
            raise HCPruneError(f"model file {path} does not exist")
        try:
            return torch.export.load(str(path))
        except Exception as err:  # noqa: BLE001 - torch raises many types for a bad file
            raise HCPruneError(f"{path} is not a saved torch.export program (torch.export.save)"
                               f": {type(err).__name__}: {str(err)[:200]}") from None
    if not isinstance(module, torch.nn.Module):
        raise HCPruneError(f"load_torch expects a torch.nn.Module, an ExportedProgram or a .pt2 "
                           f"path, got {type(module).__name__}")
    if example_args is None:
        raise HCPruneError("load_torch needs example_args: the inputs that fix the static "
                           "shapes, e.g. (torch.randn(1, 3, 224, 224),)")
    if not isinstance(example_args, tuple | list):
        example_args = (example_args,)
    try:
        return torch.export.export(module.eval(), tuple(example_args),
                                   dynamic_shapes=dynamic_shapes)
    except Exception as err:  # noqa: BLE001 - torch.export raises many error types
        raise HCPruneError(f"torch.export could not export {type(module).__name__}: "
                           f"{type(err).__name__}: {str(err).strip().splitlines()[0][:300]}"
                           ) from None


def load_torch(module, example_args=None, dynamic_shapes=None) -> tvm.IRModule:
    """Import a PyTorch model as a Relax module with static shapes and constant weights.

    Parameters
    ----------
    module : torch.nn.Module, torch.export.ExportedProgram or path
        The model (exported here with ``torch.export.export`` in eval mode), an exported
        program, or a ``.pt2`` file written by ``torch.export.save``.
    example_args : tuple of torch.Tensor
        Example inputs; their shapes become the module's static input shapes.
    dynamic_shapes : optional
        Passed to ``torch.export.export``. tvm_hcprune prunes static shapes only: a module
        whose inputs stay symbolic is refused with the dimension named.

    Returns
    -------
    tvm.IRModule
        ``main`` takes the example inputs' shapes and returns the model's output.

    Raises
    ------
    HCPruneError
        torch missing, the model does not export, or a dynamic input dimension remains.

    Examples
    --------
    >>> import torch, tvm_hcprune as hc  # doctest: +SKIP
    >>> mod = hc.load_torch(model, (torch.randn(1, 3, 224, 224),))  # doctest: +SKIP
    >>> pruned, report = hc.prune(mod, ratio=0.3)  # doctest: +SKIP
    """
    ep = _exported(module, example_args, dynamic_shapes)
    # deferred: TVM's torch frontend imports torch (optional)
    from tvm.relax.frontend.torch import from_exported_program

    try:
        mod = from_exported_program(ep, keep_params_as_input=False,
                                    unwrap_unit_return_tuple=True)
    except Exception as err:  # noqa: BLE001 - unsupported ops raise assorted errors
        raise HCPruneError(f"TVM's PyTorch frontend cannot import this program: "
                           f"{type(err).__name__}: {str(err).strip()[:300]}") from None
    for p in mod["main"].params:
        if static_shape(p) is None:
            raise HCPruneError(f"input {p.name_hint!r} has a dynamic shape ({p.ty}); "
                               "tvm_hcprune needs static shapes: export with "
                               "dynamic_shapes=None and example inputs of the deployed shape")
    # max_pool2d's unused indices (zeros_like) and the tuples around them: fold the
    # projections of literal tuples, then drop what no longer feeds the output
    mod = relax.transform.CanonicalizeBindings()(mod)
    return relax.transform.DeadCodeElimination(["main"])(mod)
