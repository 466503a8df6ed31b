"""Fuzz the pruning pass: random graphs over the handled ops, each pruned at a random ratio
and checked against the mask oracle (``tvm_hcprune.testing.fuzz``).

Prints and (with ``--json``) writes ``graphs``, ``crashes`` (any exception while importing,
analysing, pruning or running), ``oracle_failures`` (pruned output differs from the masked
reference), ``frozen_only`` (graphs where no group could be pruned), ``seconds``, the
block kinds drawn and the failures (seed, blocks, error) to replay with
``check_model(*random_model(seed)[:1], seed)``.

    python benchmarks/fuzz.py --n 1000 [--seed 0] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter

from tvm_hcprune.testing.fuzz import check_model, random_model
from tvm_hcprune.utils import atomic_write_text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="number of graphs")
    ap.add_argument("--seed", type=int, default=0, help="first seed (graphs use seed..seed+n)")
    ap.add_argument("--json", dest="json_path", default=None)
    args = ap.parse_args(argv)
    if args.n < 1:
        ap.error("--n must be at least 1")

    t0 = time.perf_counter()
    counts, kinds, failures = Counter(), Counter(), []
    for seed in range(args.seed, args.seed + args.n):
        model, blocks = random_model(seed)
        kinds.update(blocks)
        rec = check_model(model, seed)
        counts[rec["outcome"]] += 1
        counts["frozen_only"] += rec["frozen_only"]
        if rec["outcome"] != "ok":
            failures.append({**rec, "blocks": blocks})
            print(f"seed {seed} {rec['outcome']}: {blocks}: {rec['error'][-300:]}", flush=True)
        done = seed - args.seed + 1
        if done % 50 == 0:
            print(f"{done}/{args.n} graphs, {counts['crash']} crashes, "
                  f"{counts['oracle']} oracle failures", flush=True)
    result = {
        "graphs": args.n,
        "crashes": counts["crash"],
        "oracle_failures": counts["oracle"],
        "frozen_only": counts["frozen_only"],
        "seconds": round(time.perf_counter() - t0, 1),
        "first_seed": args.seed,
        "blocks": dict(sorted(kinds.items())),
        "failures": failures,
    }
    print(json.dumps({k: v for k, v in result.items() if k not in ("blocks", "failures")}))
    if args.json_path:
        atomic_write_text(args.json_path, json.dumps(result, indent=2) + "\n")
    return 0 if not failures else 1


if __name__ == "__main__":
    raise SystemExit(main())
