"""BSR entries of the latency tables (mixed budgets): the layers that can run on the BSR
kernel, rebuilt alone with a given fraction of their weight blocks zeroed, compiled by
:func:`tvm_hcprune.build` (whose format choice puts them on the BSR kernel) and timed with
their epilogue (on the BSR path bias and activation are kernels of their own)."""

from __future__ import annotations

import tvm

from tvm_hcprune.backend.pipeline import build
from tvm_hcprune.latency.layers import layer_module, layer_specs
from tvm_hcprune.latency.measure import layer_kernel_ms
from tvm_hcprune.planning.mixed import layer_weight_kn
from tvm_hcprune.transform.sparsify_blocks import sparsify

__all__ = ["bsr_layer_module", "bsr_specs", "bsr_timer"]


def bsr_specs(graph, specs=None) -> list:
    """The :class:`~tvm_hcprune.latency.layers.LayerSpec` of ``graph``'s layers the BSR
    kernel can run (matmuls with a constant 2-D weight, ungrouped unpadded 1x1 convs).

    Examples
    --------
    >>> [s.name for s in bsr_specs(analyze(mod))]  # doctest: +SKIP
    ['lv', 'lv2']
    """
    specs = layer_specs(graph) if specs is None else specs
    return [s for s in specs if not (s.fixed or s.depthwise)
            and layer_weight_kn(s.call) is not None]


def bsr_layer_module(spec, sparsity: float, block: tuple[int, int], seed: int = 0) -> tuple:
    """``(IRModule, inputs)``: the layer at its dense widths with ``sparsity`` of its weight
    blocks zeroed (random weights, the weakest blocks by norm, as ``sparsify`` picks).

    Examples
    --------
    >>> mod, inputs = bsr_layer_module(spec, 0.9, (1, 16))  # doctest: +SKIP
    """
    mod, inputs = layer_module(spec, spec.in_full, spec.out_full, seed)
    sparse, _report = sparsify(mod, float(sparsity), tuple(block))
    return sparse, inputs


def bsr_timer(mod, inputs, target, database=None):
    """Compile ``mod`` (a :func:`bsr_layer_module`) on this machine; returns ``timer(number)
    -> ms`` of its layer kernel and the kernels after it (bias, activation).

    Examples
    --------
    >>> timer = bsr_timer(*bsr_layer_module(spec, 0.9, (1, 16)), "llvm")  # doctest: +SKIP
    >>> timer(10)  # doctest: +SKIP
    0.21
    """
    # one kernel per layer (not chained): layer_kernel_ms finds the layer's kernels by name
    vm = tvm.relax.VirtualMachine(build(mod, target, database=database, chain_kernels=False),
                                  tvm.cpu())
    args = [tvm.runtime.tensor(a) for a in inputs]
    layer_kernel_ms(vm, args, number=1, epilogue=True)  # warm-up
    return lambda number: layer_kernel_ms(vm, args, number=number, epilogue=True)
