"""
Block-sparse FFN layers: sparsify, see the format each layer gets, and the speed
================================================================================

Channel pruning removes whole channels; block sparsity keeps the shapes and zeroes
``bk x bn`` blocks of a weight, the weakest first. ``hc.sparsify`` does that (the block is the
target's vector: 1x8 on AVX2, 1x16 on AVX-512) and says per layer whether the CPU build will
run it as a block-sparse (BSR) kernel or dense, and why. Run::

    python tutorials/block_sparse_ffn.py [--quick] [--out-dir DIR]

``--quick`` (or ``HCPRUNE_TUTORIAL_QUICK=1``) uses hidden 128 / FFN 512 / 32 tokens; the real
setting is BERT-base-like, hidden 768 / FFN 3072 / 128 tokens. Timings on a machine shared
with other work are not meaningful: ``benchmarks/sparse.py`` measures properly.
"""

# %%
# Set-up: the FFN stack of a transformer encoder
# ----------------------------------------------
from __future__ import annotations

import argparse
import os

import numpy as np
import tvm
from tvm import relax

import tvm_hcprune as hc
from tvm_hcprune.testing import masked_reference, run_relax
from tvm_hcprune.transform.sparsify_blocks import sparsifiable_layers
from tvm_hcprune.utils.relax import bindings, replace_constants


def ffn_stack(hidden, ffn, tokens, layers=2, seed=0):
    """``layers`` x (LayerNorm -> Linear -> GELU -> Linear -> residual) over ``[1, T, H]``."""
    rng = np.random.default_rng(seed)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, tokens, hidden), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            h = x
            for _ in range(layers):
                gamma = relax.const(np.ones(hidden, "float32"))
                beta = relax.const(np.zeros(hidden, "float32"))
                w1 = rng.standard_normal((hidden, ffn)).astype("float32") / hidden**0.5
                w2 = rng.standard_normal((ffn, hidden)).astype("float32") / ffn**0.5
                y = bb.emit(relax.op.nn.layer_norm(h, gamma, beta, axes=[-1]))
                y = bb.emit(relax.op.nn.gelu(relax.op.matmul(y, relax.const(w1))))
                h = bb.emit(relax.op.add(h, relax.op.matmul(y, relax.const(w2))))
            out = bb.emit_output(h)
        bb.emit_func_output(out)
    return bb.get()


def structured_ffn(mod, blocks, channels, seed=0):
    """``mod`` with FFN ``blocks``' weights faint outside a fifth of their 1x16 blocks and
    FFN ``channels``' weights faint outside a quarter of its hidden channels."""
    rng = np.random.default_rng(seed)
    layers = [name for name, _op, _shape in sparsifiable_layers(mod)]  # W1, W2 per FFN
    weights = {b.var.name: b.value.args[1].value.numpy() for b in bindings(mod["main"])
               if b.var.name in layers}
    w1, w2 = layers[2 * blocks], layers[2 * blocks + 1]
    new = {}
    for name in (w1, w2):
        w = weights[name]
        keep = np.kron(rng.random((w.shape[0], w.shape[1] // 16)) < 0.2, np.ones((1, 16)))
        new[name] = {1: (w * np.where(keep > 0, 1.0, 0.01)).astype("float32")}
    w1, w2 = layers[2 * channels], layers[2 * channels + 1]
    faint = rng.random(weights[w1].shape[1]) >= 0.25
    a, b = weights[w1].copy(), weights[w2].copy()
    a[:, faint] *= 0.01
    b[faint, :] *= 0.01
    new.update({w1: {1: a}, w2: {1: b}})
    return replace_constants(mod, new)


def latency_ms(ex, x, number=10):
    vm = relax.VirtualMachine(ex, tvm.cpu())
    arg = tvm.runtime.tensor(x)
    return float(np.median(vm.time_evaluator("main", tvm.cpu(), number=number)(arg).results)
                 * 1e3)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="block-sparse FFN tutorial")
    ap.add_argument("--quick", action="store_true",
                    default=bool(os.environ.get("HCPRUNE_TUTORIAL_QUICK")))
    ap.add_argument("--out-dir", default=None)
    args = ap.parse_args(argv)
    hidden, ffn, tokens = (128, 512, 32) if args.quick else (768, 3072, 128)
    mod = ffn_stack(hidden, ffn, tokens)
    x = np.random.default_rng(1).standard_normal((1, tokens, hidden)).astype("float32")

    # %%
    # 1. Sparsify: 90% of the blocks of every matmul weight set to zero
    # -----------------------------------------------------------------
    sparse, report = hc.sparsify(mod, sparsity=0.9)
    print(report.summary())

    # %%
    # 2. The format choice, and the same outputs either way
    # -----------------------------------------------------
    # The sparsified module still holds dense constants, so every target can run it; the
    # CPU build turns the layers the report marks ``bsr`` into BSR kernels.
    ref = run_relax(sparse, [x])  # TVM's default pipeline, dense
    bsr_ex, dense_ex = hc.build(sparse), hc.build(sparse, sparse=False)
    for name, ex in (("BSR", bsr_ex), ("dense", dense_ex)):
        got = run_relax(sparse, [x], build=lambda m, t, e=ex: e)
        err = float(np.abs(got - ref).max() / np.abs(ref).max())
        print(f"{name:5s} build vs TVM's default pipeline: max relative difference {err:.1e}")
        assert err < 1e-4

    # %%
    # 3. The speed (meaningful only on a quiet machine)
    # -------------------------------------------------
    t_bsr, t_dense = latency_ms(bsr_ex, x), latency_ms(dense_ex, x)
    print(f"sparsified model: BSR build {t_bsr:.3f} ms, dense build {t_dense:.3f} ms "
          f"({t_dense / t_bsr:.2f}x)")

    # %%
    # 4. Per-layer sparsity from calibration data
    # -------------------------------------------
    # With samples, each layer is sparsified alone at a few levels and the output error
    # measured; the sparsity then goes where it hurts least, the zeroed fraction of all
    # blocks staying 90%.
    samples = np.random.default_rng(2).standard_normal((4, 1, tokens, hidden)).astype(
        "float32")
    _, calibrated = hc.sparsify(mod, sparsity=0.9, calibration=samples,
                                levels=(0.8, 0.9, 0.95))
    print("calibrated: " + ", ".join(f"{la.name} {la.sparsity:.0%}"
                                     for la in calibrated.layers)
          + f" (all blocks: {calibrated.zero_fraction:.1%} zero)")

    # %%
    # 5. Or let the build time each layer
    # -----------------------------------
    # ``sparse="measure"`` times every block-sparse layer's BSR and dense kernels here and
    # keeps the faster, instead of the estimate.
    measured = hc.build(sparse, sparse="measure")
    got = run_relax(sparse, [x], build=lambda m, t: measured)
    assert float(np.abs(got - ref).max() / np.abs(ref).max()) < 1e-4

    # %%
    # 6. One latency budget, channels and blocks mixed
    # ------------------------------------------------
    # ``hc.prune(mod, budget=hc.Latency(...), sparse=True)`` lets every matmul (and 1x1
    # conv) either lose channels or go block-sparse (50/70/90% of its blocks zeroed), in one
    # knapsack: the latency table (measured here, cached) holds each layer's BSR time at
    # those sparsities next to its times at candidate widths, and each step takes whatever
    # loses the least importance per millisecond saved (block scores are ``sparsify``'s
    # norms). The plan records both; the channels are removed, then the blocks zeroed, and
    # ``hc.build`` runs the sparse layers on the BSR kernel. The report says which layer got
    # which, and why (``hcprune prune|compile --latency-budget 0.5x --allow-sparse`` on the
    # command line).
    #
    # Which wins depends on where the importance lies. With the Gaussian weights above,
    # blocks and channels hold importance alike and channel cuts save more time per
    # importance lost (they shrink two matmuls at once), so the mixed budget cuts channels
    # only. Here the first FFN's weights hold their importance in a fifth of their blocks
    # (as after movement pruning, say), the second FFN's in a quarter of its channels.
    # Both plans below meet the same budget on the table; their measured times differ as far
    # as the table's stand-alone BSR timings miss the whole model's (``MeasuredLatency``'s
    # closed loop, ``refine``, re-plans on measured times; ``benchmarks/sparse.py --mixed``
    # compares the two plans on a BERT-style encoder).
    mod = structured_ffn(mod, blocks=0, channels=1, seed=3)
    model = hc.MeasuredLatency(widths=3, repeats=3, refine=1 if args.quick else 2,
                               progress=False)
    budget = hc.Latency(fraction=0.7)
    mixed, mixed_report = hc.prune(mod, budget=budget, target="llvm", latency_model=model,
                                   sparse=True)
    channels, channel_report = hc.prune(mod, budget=budget, target="llvm",
                                        latency_model=model)
    for c in mixed_report.layers:
        print(f"{c.name}: in {c.cin_before}->{c.cin_after}, out {c.cout_before}->"
              f"{c.cout_after}, {c.sparsity:.0%} blocks zeroed -> {c.format}: {c.why}")
    print("plan: " + str(mixed_report.plan.to_dict().get("sparse")))
    # the oracle: the original module with the removed channels and the zeroed blocks
    oracle = run_relax(masked_reference(mod, mixed_report.plan), [x])
    got = run_relax(mixed, [x], build=hc.build)
    assert float(np.abs(got - oracle).max() / np.abs(oracle).max()) < 1e-4
    t_mixed, t_channels = latency_ms(hc.build(mixed), x), latency_ms(hc.build(channels), x)
    print(f"at {budget.describe()}: mixed plan {t_mixed:.3f} ms, channel-only plan "
          f"{t_channels:.3f} ms (dense build {t_dense:.3f} ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
