"""Does ordering experts by co-selection pay? Runs per token and batch-1 FFN time, side by side.

    python benchmarks/moefication_expert_order.py [--threads 2] [--layer 15]

SmolLM2 is MoEfied twice from the same weights and calibration text, with and without
``order_experts``; the same layer of each is timed on the same 64 real tokens, one token per call,
calls interleaved. Fewer runs of adjacent selected experts = fewer matmul calls per token.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from plmkit import load_model
from plmkit.compress.moefication import MoEficationConfig, collect_ffn_inputs, moe_layers, moefy
from plmkit.compress.moefication.layer import _runs
from plmkit.data import text, token_batches


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--layer", type=int, default=15)
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = load_model("smollm2")
    corpus = text.english_corpus(max_chars=60_000, seed=1)
    calib, held = corpus[: len(corpus) // 2], corpus[len(corpus) // 2:]
    x = collect_ffn_inputs(model, token_batches(tok, held, 8, 128), 64)[args.layer]
    singles = [x[i:i + 1] for i in range(len(x))]
    for experts in (8, 16):
        layers, runs = {}, {}
        for order in (False, True):
            m = copy.deepcopy(model)
            moefy(m, MoEficationConfig(experts=experts, active=0.25, router_steps=100, calibration_tokens=2048,
                                       order_experts=order), calibration=token_batches(tok, calib, 8, 128),
                  progress=False)
            layers[order] = list(moe_layers(m))[args.layer]
            with torch.no_grad():
                sel = layers[order].select(x)
            runs[order] = statistics.mean(len(_runs(r.nonzero().flatten().tolist())) for r in sel)
        times: dict[bool, list[float]] = {False: [], True: []}
        with torch.no_grad():
            for _ in range(args.repeats):
                for order in (False, True):
                    t = time.perf_counter()
                    for s in singles:
                        layers[order](s)
                    times[order].append((time.perf_counter() - t) / len(singles))
        plain, ordered = statistics.median(times[False]), statistics.median(times[True])
        print(f"E={experts} at 25%: runs per token {runs[False]:.2f} -> {runs[True]:.2f}; batch-1 FFN "
              f"{plain * 1e6:.0f} us -> {ordered * 1e6:.0f} us (speed-up {plain / ordered:.2f}x)")


if __name__ == "__main__":
    main()
