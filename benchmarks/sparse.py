"""Block-sparse (BSR) matmul against our dense kernel and onnxruntime, per sparsity.

For ``x [M, K] @ W [K, N]`` (default M=128; 768x3072 and 3072x768, BERT-base's FFN), llvm on
this host: our dense kernel (``tvm_hcprune.build`` of the matmul), onnxruntime's MatMul
(``--threads`` intra-op threads), and the BSR kernel (:mod:`tvm_hcprune.backend.cpu.bsr`) at
each block sparsity, with the weight sparsified by :func:`tvm_hcprune.sparsify`. Prints the
speed-up of BSR over dense per sparsity, the crossover sparsity (the lowest measured one at
which BSR wins) and the ratio dense / onnxruntime; times are interleaved rounds in one run,
the best round kept.

With ``--database PATH`` (a database from ``hcprune tune`` of these layers) or ``--tune N``
(tune each sparsified layer here with ``hc.tune``, N trials), the BSR kernel the build
applies from the records (its tuned knobs) is timed next to the default one
(``bsr_tuned@s``; the default kernel where no record matches the layer).

Then a BERT-style encoder (:func:`tvm_hcprune.testing.onnx_models.bert_encoder`: 4 layers,
hidden 384, 12 heads, FFN 1536, 128 tokens) with its FFN layers at ``--bert-sparsity`` block
sparsity: the whole model built with BSR (``hc.build(sparse=True)``) against the dense build
of the same sparsified module (``sparse=False``; outputs checked equal, rtol 1e-4), and
onnxruntime on the dense model; plus where the time goes per kernel family in both builds.

With ``--mixed 0.5[,0.35]`` (issue #15 item 3), the same encoder pruned to each
``Latency(fraction=f)`` twice from one measured latency table (its BSR entries included):
channel pruning only, and the mixed budget (``prune(..., sparse=True)``: per layer channel
cuts or block sparsity, whichever loses less importance per ms saved). Dense, channel-only
and mixed builds are timed in interleaved rounds (the fraction of each is the median over
rounds of its time / the dense time of the same round); which layers went BSR and which got
channel cuts is printed. ``--mixed-weights gaussian,lognormal-blocks:1`` repeats it with
every matmul weight block scaled by ``exp(N(0, 1))`` (synthetic: block norms then vary more
than channel norms, as in trained weights; the generator's Gaussian weights give block
sparsity no importance advantage over channel cuts), and ``structured`` gives the first FFN
its importance in a fifth of its blocks and the second FFN in a quarter of its channels.
``--shapes ""`` and ``--no-bert`` skip the other parts.

Usage::

    python benchmarks/sparse.py [--m 128] [--shapes 768x3072,3072x768]
                                [--sparsities 0.5,0.7,0.8,0.9,0.95] [--no-bert]
                                [--bert-sparsity 0.9] [--database DB.json | --tune N]
                                [--mixed 0.5,0.35 [--mixed-closed-loop N]] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _matmul_module(m, k, n, w):
    from tvm import relax

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((m, k), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.matmul(x, relax.const(w)))
        bb.emit_func_output(out)
    return bb.get()


def _ort_session(k, n, w, threads):
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", n])],
        [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), so,
                                providers=["CPUExecutionProvider"])


def _ort_best(w, x, threads: int, number: int, rounds: int) -> float:
    """Best of ``rounds`` mean seconds of onnxruntime's ``x @ w`` (``number`` runs each)."""
    sess = _ort_session(w.shape[0], w.shape[1], w, threads)
    for _ in range(3):
        sess.run(None, {"x": x})
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(number):
            sess.run(None, {"x": x})
        best = min(best, (time.perf_counter() - t0) / number)
    return best


def _ort_time_in_child(w, x, args) -> float:
    """:func:`_ort_best` run in a fresh process (its own thread pool)."""
    with tempfile.TemporaryDirectory(prefix="hcprune_sparse_") as tmp:
        npz = Path(tmp) / "mm.npz"
        np.savez(npz, w=w, x=x)
        out = subprocess.run(
            [sys.executable, __file__, "--ort-child", str(npz), "--threads", str(args.threads),
             "--number", str(args.number), "--rounds", str(args.rounds)],
            capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"onnxruntime timing failed:\n{out.stderr[-2000:]}")
    return float(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--m", type=int, default=128)
    ap.add_argument("--shapes", default="768x3072,3072x768")
    ap.add_argument("--ort-child", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--sparsities", default="0.5,0.7,0.8,0.9,0.95")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--number", type=int, default=10)
    ap.add_argument("--bert", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--bert-sparsity", type=float, default=0.9)
    ap.add_argument("--json", type=Path, help="write the figures here (atomically)")
    ap.add_argument("--database", type=Path,
                    help="time the BSR kernels with this database's tuned knobs too")
    ap.add_argument("--blocks", default="",
                    help="other block shapes (e.g. 1x8,4x16): BSR vs dense and the crossover "
                         "sparsity for each, besides the profile's default block")
    ap.add_argument("--tune", type=int, default=0, metavar="N",
                    help="tune each sparsified layer with N trials and time its tuned kernel")
    ap.add_argument("--mixed", default="", metavar="F[,F]",
                    help="latency fractions: channel-only vs mixed (channels + block "
                         "sparsity) budget plans of the BERT-style encoder, timed")
    ap.add_argument("--mixed-closed-loop", type=int, default=0, metavar="N",
                    help="correct each --mixed plan by timing it (MeasuredLatency(refine=N))")
    ap.add_argument("--mixed-widths", type=int, default=4,
                    help="candidate widths per group of --mixed's latency table")
    ap.add_argument("--mixed-weights", default="gaussian",
                    help="comma-separated weight variants of --mixed's encoder: gaussian "
                         "(bert_encoder's own), lognormal-blocks:SIGMA (every block of every "
                         "matmul weight scaled by exp(N(0, SIGMA)): block norms vary more "
                         "than channel norms, as in trained weights; synthetic), structured "
                         "(the first FFN's importance in a fifth of its blocks, the second's "
                         "in a quarter of its channels: the tutorial's case)")
    args = ap.parse_args(argv)
    if args.ort_child:
        data = np.load(args.ort_child)
        print(_ort_best(data["w"], data["x"], args.threads, args.number, args.rounds))
        return 0
    os.environ.setdefault("TVM_NUM_THREADS", str(args.threads))

    import tvm
    from tvm import relax

    import tvm_hcprune as hc
    from tvm_hcprune.backend.cpu.bsr import bsr_kernel, to_bsr
    from tvm_hcprune.hardware.sparse_cost import default_block
    from tvm_hcprune.utils import atomic_write_text

    target = hc.parse_target({"kind": "llvm", "num-cores": args.threads})
    prof = hc.profile_for(target)
    block = default_block(prof)
    dev = tvm.cpu()
    rng = np.random.default_rng(0)
    out = {"host": {"mcpu": prof.mcpu, "profile": prof.name, "threads": args.threads},
           "m": args.m, "block": list(block), "shapes": {}}
    print(f"host {prof.mcpu} ({prof.name}), block {block[0]}x{block[1]}, M={args.m}")
    for shape in [v for v in args.shapes.split(",") if v]:
        k, n = (int(v) for v in shape.split("x"))
        w = rng.standard_normal((k, n)).astype("float32")
        x = rng.standard_normal((args.m, k)).astype("float32")
        xt = tvm.runtime.tensor(x, dev)
        runners = {}
        vm = relax.VirtualMachine(hc.build(_matmul_module(args.m, k, n, w), target,
                                           sparse=False), dev)
        runners["dense"] = vm.time_evaluator("main", dev, number=args.number)
        for s in (float(v) for v in args.sparsities.split(",")):
            sparse, _ = hc.sparsify(_matmul_module(args.m, k, n, w), sparsity=s, block=block,
                                    target=target)
            ws = sparse["main"].body.blocks[0].bindings[0].value.args[1].value.numpy()
            data, indices, indptr, npad = to_bsr(ws, block)
            lib = tvm.compile(tvm.IRModule({"main": bsr_kernel(args.m, k, npad, data.shape[0],
                                                               *block)}), target)
            bufs = [tvm.runtime.tensor(a, dev) for a in (x, data, indices, indptr)]
            bufs.append(tvm.runtime.empty((args.m, npad), "float32", dev))
            got = bufs[-1]
            lib["main"](*bufs)
            assert np.allclose(got.numpy()[:, :n], x @ ws, rtol=1e-4, atol=1e-3)
            runners[f"bsr@{s}"] = (lib, bufs)
            tuned = _tuned_kernel(sparse, target, args)
            if tuned is not None:
                lib_t = tvm.compile(tvm.IRModule({"main": tuned}), target)
                lib_t["main"](*bufs)
                assert np.allclose(got.numpy()[:, :n], x @ ws, rtol=1e-4, atol=1e-3)
                runners[f"bsr_tuned@{s}"] = (lib_t, bufs)
                knobs = tuned.attrs["hcprune.bsr_knobs"] if "hcprune.bsr_knobs" in tuned.attrs \
                    else None
                out.setdefault("tuned_knobs", {})[f"{shape}@{s}"] = (
                    None if knobs is None else {k: str(v) for k, v in knobs.items()})
        best = {name: float("inf") for name in [*runners, "ort"]}
        for _ in range(args.rounds):
            for name, r in runners.items():
                if name == "dense":
                    t = float(np.median(r(xt).results))
                else:
                    lib, bufs = r
                    t = float(np.median(lib.mod.time_evaluator("main", dev,
                                                               number=args.number)(
                        *bufs).results))
                best[name] = min(best[name], t)
        # onnxruntime in its own process: its spinning thread pool slowed TVM's kernels
        # timed after it in the same process (dense read 3.7 ms there, 1.7 ms alone)
        best["ort"] = _ort_time_in_child(w, x, args)
        rows = {name: {"ms": v * 1e3} for name, v in best.items()}
        for name in rows:
            if name.startswith("bsr"):
                rows[name]["speedup_vs_dense"] = best["dense"] / best[name]
            if name.startswith("bsr_tuned@"):
                rows[name]["speedup_vs_default_bsr"] = best["bsr@" + name[10:]] / best[name]
        wins = [float(nm[4:]) for nm, r in rows.items()
                if nm.startswith("bsr@") and r["speedup_vs_dense"] > 1.0]
        out["shapes"][shape] = {"rows": rows, "dense_over_ort": best["dense"] / best["ort"],
                                "crossover_sparsity": min(wins) if wins else None}
        print(f"{shape}: dense {best['dense'] * 1e3:.3f} ms, onnxruntime "
              f"{best['ort'] * 1e3:.3f} ms (dense/ORT {best['dense'] / best['ort']:.2f}); "
              + ", ".join(f"{nm} {r['speedup_vs_dense']:.2f}x" for nm, r in rows.items()
                          if nm.startswith("bsr@"))
              + f"; crossover {out['shapes'][shape]['crossover_sparsity']}", flush=True)
        if args.blocks:
            out["shapes"][shape]["other_blocks"] = _other_blocks(
                args, target, x, w, runners["dense"], xt)
        tuned_rows = {nm: r for nm, r in rows.items() if nm.startswith("bsr_tuned@")}
        if tuned_rows:
            print(f"{shape} tuned BSR kernels: " + ", ".join(
                f"{nm[10:]}: {r['ms']:.3f} ms ({r['speedup_vs_default_bsr']:.2f}x the default "
                f"{rows['bsr@' + nm[10:]]['ms']:.3f} ms)" for nm, r in tuned_rows.items()),
                flush=True)
    if args.bert:
        out["bert"] = bert(args, target)
    if args.mixed:
        out["mixed"] = mixed(args, target)
    if args.json:
        atomic_write_text(args.json, json.dumps(out, indent=2))
    return 0


def _other_blocks(args, target, x, w, dense, xt) -> dict:
    """BSR vs dense per sparsity for each block of ``--blocks`` (the default kernel), timed
    in interleaved rounds with the dense kernel again; with each block's crossover."""
    import tvm

    import tvm_hcprune as hc
    from tvm_hcprune.backend.cpu.bsr import bsr_kernel, to_bsr

    dev = tvm.cpu()
    m, (k, n) = args.m, w.shape
    res = {}
    for spec in args.blocks.split(","):
        block = tuple(int(v) for v in spec.split("x"))
        libs = {}
        for s in (float(v) for v in args.sparsities.split(",")):
            sparse, _ = hc.sparsify(_matmul_module(m, k, n, w), sparsity=s, block=block,
                                    target=target)
            ws = sparse["main"].body.blocks[0].bindings[0].value.args[1].value.numpy()
            data, indices, indptr, npad = to_bsr(ws, block)
            lib = tvm.compile(tvm.IRModule({"main": bsr_kernel(m, k, npad, data.shape[0],
                                                               *block)}), target)
            bufs = [tvm.runtime.tensor(a, dev) for a in (x, data, indices, indptr)]
            bufs.append(tvm.runtime.empty((m, npad), "float32", dev))
            lib["main"](*bufs)
            assert np.allclose(bufs[-1].numpy()[:, :n], x @ ws, rtol=1e-4, atol=1e-3)
            libs[s] = (lib, bufs)
        best = {"dense": float("inf"), **{s: float("inf") for s in libs}}
        for _ in range(args.rounds):
            best["dense"] = min(best["dense"], float(np.median(dense(xt).results)))
            for s, (lib, bufs) in libs.items():
                t = lib.mod.time_evaluator("main", dev, number=args.number)(*bufs)
                best[s] = min(best[s], float(np.median(t.results)))
        speed = {str(s): best["dense"] / best[s] for s in libs}
        wins = [s for s in libs if best["dense"] / best[s] > 1.0]
        res[spec] = {"speedup_vs_dense": speed, "crossover_sparsity": min(wins) if wins else None}
        print(f"  block {spec}: " + ", ".join(f"bsr@{s} {v:.2f}x" for s, v in speed.items())
              + f"; crossover {res[spec]['crossover_sparsity']}", flush=True)
    return res


def _tuned_kernel(sparse, target, args):
    """The BSR kernel the build compiles for the one-layer module ``sparse`` with
    ``--database`` (or after ``--tune``), or None without either."""
    import tvm

    import tvm_hcprune as hc
    from tvm_hcprune.backend.cpu.bsr import BSR_ATTR
    from tvm_hcprune.backend.pipeline import apply_database

    if args.database is not None:
        db = hc.load_database(args.database, target)
    elif args.tune:
        db = hc.tune(sparse, target, trials=args.tune, progress=False)
    else:
        return None
    fused = apply_database(sparse, target, db)
    kernels = [f for _, f in fused.functions_items() if isinstance(f, tvm.tirx.PrimFunc)
               and f.attrs is not None and BSR_ATTR in f.attrs]
    return kernels[0].with_attr("global_symbol", "main") if kernels else None


def bert(args, target) -> dict:
    """Whole-model BSR vs dense build of a BERT-style encoder with sparse FFN layers."""
    import onnx
    import tvm
    from tvm import relax

    import tvm_hcprune as hc
    from tvm_hcprune.backend.timing import by_family, kernel_times
    from tvm_hcprune.testing.onnx_models import bert_encoder

    model = bert_encoder()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bert.onnx"
        onnx.save(model, path)
        mod = hc.load_onnx(str(path), log=lambda *_: None)
    ffn = 4 * 384
    sparse, report = hc.sparsify(mod, sparsity=args.bert_sparsity, target=target,
                                 layers=lambda _n, _op, shape: ffn in shape)
    dev = tvm.cpu()
    x = np.random.default_rng(0).standard_normal((1, 128, 384)).astype("float32")
    xt = tvm.runtime.tensor(x, dev)
    # one kernel per layer (chain_kernels=False) so that kernel_times sees the families
    vms = {"dense": relax.VirtualMachine(hc.build(sparse, target, sparse=False,
                                                  chain_kernels=False), dev),
           "bsr": relax.VirtualMachine(hc.build(sparse, target, sparse=True,
                                                chain_kernels=False), dev)}
    ref = vms["dense"]["main"](xt).numpy()
    got = vms["bsr"]["main"](xt).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()))
    sess = _ort_model_session(model, args.threads)
    best = {"dense": float("inf"), "bsr": float("inf"), "ort": float("inf")}
    families: dict[str, dict[str, float]] = {"dense": {}, "bsr": {}}
    for _ in range(args.rounds):
        for name, vm in vms.items():
            t = float(np.median(vm.time_evaluator("main", dev, number=args.number)(xt)
                                .results))
            best[name] = min(best[name], t)
            for fam, ms in by_family(kernel_times(vm, [xt], number=3)).items():
                families[name][fam] = min(families[name].get(fam, float("inf")), ms)
        t0 = time.perf_counter()
        for _ in range(args.number):
            sess.run(None, {"input": x})
        best["ort"] = min(best["ort"], (time.perf_counter() - t0) / args.number)
    res = {"sparsity": args.bert_sparsity, "sparse_layers": len(report.layers),
           "ms": {k: v * 1e3 for k, v in best.items()},
           "speedup_bsr_vs_dense": best["dense"] / best["bsr"],
           "dense_over_ort": best["dense"] / best["ort"],
           "kernel_ms": {k: dict(sorted(v.items(), key=lambda kv: -kv[1]))
                         for k, v in families.items()}}
    print(f"BERT-style encoder (4x384, FFN 1536, 128 tokens), {len(report.layers)} FFN "
          f"layers at {args.bert_sparsity:.0%}: dense build {best['dense'] * 1e3:.2f} ms, "
          f"BSR build {best['bsr'] * 1e3:.2f} ms ({res['speedup_bsr_vs_dense']:.2f}x), "
          f"onnxruntime (dense model) {best['ort'] * 1e3:.2f} ms")
    for name, fams in res["kernel_ms"].items():
        print(f"  {name}: " + ", ".join(f"{f} {ms:.2f}" for f, ms in list(fams.items())[:8]))
    return res


def mixed(args, target) -> dict:
    """Channel-only vs mixed latency-budget plans of the BERT-style encoder, measured."""
    import onnx

    import tvm_hcprune as hc
    from tvm_hcprune.testing.onnx_models import bert_encoder

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bert.onnx"
        onnx.save(bert_encoder(), path)
        dense_mod = hc.load_onnx(str(path), log=lambda *_: None)
    out = {}
    for variant in args.mixed_weights.split(","):
        mod = _weights_variant(dense_mod, variant, target)
        print(f"--mixed, weights {variant}", flush=True)
        out[variant] = _mixed_one(args, target, mod)
    return out


def _weights_variant(mod, variant, target):
    """``mod`` itself (gaussian) or with every matmul weight block scaled log-normally."""
    import tvm_hcprune as hc
    from tvm_hcprune.hardware.sparse_cost import default_block
    from tvm_hcprune.transform.sparsify_blocks import sparsifiable_layers
    from tvm_hcprune.utils.relax import bindings, replace_constants

    if variant == "gaussian":
        return mod
    if variant == "structured":
        return _structured(mod, target)
    kind, _, sigma = variant.partition(":")
    if kind != "lognormal-blocks" or not sigma:
        raise SystemExit(f"unknown --mixed-weights variant {variant!r}")
    bk, bn = default_block(hc.profile_for(target))
    rng = np.random.default_rng(7)
    calls = {b.var.name: b.value for b in bindings(mod["main"])}
    updates = {}
    for name, _op, (k, n) in sparsifiable_layers(mod):
        w = calls[name].args[1].value.numpy()
        scale = np.exp(rng.normal(0.0, float(sigma), (-(-k // bk), -(-n // bn))))
        updates[name] = {1: (w * np.kron(scale, np.ones((bk, bn)))[:k, :n]).astype(w.dtype)}
    return replace_constants(mod, updates)


def _structured(mod, target):
    """The first FFN's weights faint (x0.01) outside a fifth of their blocks, the second
    FFN's outside a quarter of its channels (the tutorial's case)."""
    import tvm_hcprune as hc
    from tvm_hcprune.hardware.sparse_cost import default_block
    from tvm_hcprune.transform.sparsify_blocks import sparsifiable_layers
    from tvm_hcprune.utils.relax import bindings, replace_constants

    bk, bn = default_block(hc.profile_for(target))
    rng = np.random.default_rng(3)
    ffn = [(n, s) for n, _op, s in sparsifiable_layers(mod) if 1536 in s]  # W1, W2 per layer
    calls = {b.var.name: b.value for b in bindings(mod["main"])}
    w = {n: calls[n].args[1].value.numpy().copy() for n, _ in ffn[:4]}
    for name, (k, n) in ffn[:2]:
        keep = np.kron(rng.random((k // bk, n // bn)) < 0.2, np.ones((bk, bn)))
        w[name] *= np.where(keep > 0, 1.0, 0.01).astype(np.float32)
    faint = rng.random(1536) >= 0.25
    w[ffn[2][0]][:, faint] *= 0.01
    w[ffn[3][0]][faint, :] *= 0.01
    return replace_constants(mod, {n: {1: a} for n, a in w.items()})


def _mixed_one(args, target, mod) -> dict:
    import tvm_hcprune as hc
    from tvm_hcprune.latency.measure import measure_rounds

    graph = hc.analyze(mod)
    model = hc.MeasuredLatency(widths=args.mixed_widths, refine=args.mixed_closed_loop,
                               repeats=args.rounds)
    t0 = time.perf_counter()
    # the table with its BSR entries (measured once, cached; both plans read it)
    table = model.for_graph(graph, target, hc.profile_for(target).channel_multiple,
                            sparse_levels=hc.SparseOptions().levels)
    table_s = time.perf_counter() - t0
    res = {"table_s": table_s, "table_kernels_measured": table.measured, "fractions": {}}
    for f in (float(v) for v in args.mixed.split(",")):
        plans = {}
        for kind, sparse in (("channels", False), ("mixed", True)):
            pruned, rep = hc.prune(mod, budget=hc.Latency(fraction=f), target=target,
                                   graph=graph, latency_model=model, sparse=sparse)
            plans[kind] = (pruned, rep)
        rounds = measure_rounds([graph.mod] + [p for p, _ in plans.values()], target,
                                repeats=args.rounds, number=args.number)
        base = np.array(rounds[0])
        row = {"dense_ms": float(np.median(base))}
        for (kind, (_p, rep)), t in zip(plans.items(), rounds[1:], strict=True):
            layers = rep.layers
            row[kind] = {
                "measured_ms": float(np.median(t)),
                "measured_fraction": float(np.median(np.array(t) / base)),
                "predicted_fraction": rep.predicted_ms / rep.dense_predicted_ms,
                "bsr_layers": {c.name: c.sparsity for c in layers if c.format == "bsr"},
                "cut_layers": [c.name for c in layers if c.cin_after < c.cin_before
                               or c.cout_after < c.cout_before],
                "kept_groups": {str(g): len(k) for g, k in rep.plan.kept.items()},
                "closed_loop": rep.plan.config.get("closed_loop"),
            }
        row["mixed_over_channels"] = (row["mixed"]["measured_fraction"]
                                      / row["channels"]["measured_fraction"])
        res["fractions"][f"{f:g}"] = row
        print(f"BERT-style encoder, Latency(fraction={f:g}): dense {row['dense_ms']:.2f} ms; "
              + "; ".join(f"{k} {row[k]['measured_ms']:.2f} ms = "
                          f"{row[k]['measured_fraction']:.3f}x dense (table "
                          f"{row[k]['predicted_fraction']:.3f}x)" for k in ("channels", "mixed"))
              + f"; mixed / channel-only {row['mixed_over_channels']:.3f}", flush=True)
        m = row["mixed"]
        print("  mixed: BSR " + (", ".join(f"{n} {s:.0%}" for n, s in m["bsr_layers"].items())
                                 or "none") + "; channel cuts " + (", ".join(m["cut_layers"])
                                                                   or "none")
              + f"; groups {m['kept_groups']}; channel-only groups "
              f"{row['channels']['kept_groups']}", flush=True)
    return res


def _ort_model_session(model, threads):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), so,
                                providers=["CPUExecutionProvider"])


if __name__ == "__main__":
    sys.exit(main())
