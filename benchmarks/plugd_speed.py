"""PlugD: per-query compute, wall-clock and bytes per document beside concatenation, a reused KV prefix and no
document, with the accuracy each reaches, all measured in one process.

    python benchmarks/plugd_speed.py [--quick] [--threads 2] [--pretrain-steps N] [--adapter-steps N] [--out DIR]

Runs the ``plugd`` recipe's pipeline on SmolLM2 (map network pretrained on English prose, every document encoded
once into a plugin store, one LoRA adapter per task and method) and prints its accuracy and cost tables. The
per-query FLOPs come from torch's counter; the wall-clock is the median of interleaved runs at batch 1. The last
line is ``compute_saved=<x> accuracy_drop=<y> bytes_vs_kv=<z>``: compute_saved = 1 - PlugD's per-query FLOPs /
concatenation's (documents encoded ahead of time), accuracy_drop = concatenation's accuracy minus PlugD's in
points (mean of the two tasks), bytes_vs_kv = a plugin's bytes / one task's KV prefix bytes per document.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path

import torch

from plmkit.reproduce import plugd as recipe
from plmkit.reproduce.registry import RecipeContext


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the recipe's quick settings (a smoke run; accuracies "
                                                         "mean nothing at that budget)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--pretrain-steps", type=int, default=None, help="map-network pretraining steps (default: the "
                                                                     "recipe's full setting)")
    ap.add_argument("--adapter-steps", type=int, default=None, help="steps per LoRA adapter (default: full setting)")
    ap.add_argument("--n-test", type=int, default=None, help="test documents (default: full setting)")
    ap.add_argument("--cost-queries", type=int, default=None, help="queries timed per method (default: full setting)")
    ap.add_argument("--repeats", type=int, default=None, help="interleaved timing repeats (default: full setting)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the splits, samples and adapters (default 0)")
    ap.add_argument("--out", default=None, help="keep the run folder (map network, store, adapters) here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    S = recipe.QUICK if args.quick else recipe.FULL
    changes = {k: v for k, v in {"pretrain_steps": args.pretrain_steps, "adapter_steps": args.adapter_steps,
                                 "n_test": args.n_test, "cost_queries": args.cost_queries,
                                 "repeats": args.repeats}.items() if v is not None}
    S = dataclasses.replace(S, **changes)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="plugd-bench-"))
    ctx = RecipeContext(out_dir=out, quick=args.quick, seed=args.seed, progress=False, settings=S)
    res = recipe.run(ctx)
    for table in res["tables"]:
        print(f"\n{table['title']}")
        print(" | ".join(table["columns"]))
        for row in table["rows"]:
            print(" | ".join(str(c) for c in row))
    print("\nsettings:", json.dumps(dataclasses.asdict(S)))
    print("cpu:", json.dumps(res["details"]["cpu"]))
    m = res["measured"]
    print(f"compute_saved={m['compute_saved']:.3f} accuracy_drop={m['accuracy_drop']:.1f} "
          f"bytes_vs_kv={m['bytes_vs_kv']:.4f}")


if __name__ == "__main__":
    main()
