"""Compressed SmolLM2 side by side: fp32, plmkit int8 and int4 (kernels chosen by timing), the torch dynamic
int8 peer, torchao int8 weight-only and llama.cpp (Q8_0, Q4_1) where installed, and a cooked model
(structurally pruned layers, KV-head groups and FFNs + int8).

    python benchmarks/cook_speed.py [--model smollm2] [--cooked DIR] [--prune-layers 0.5] [--prune-heads 0.34]
                                    [--prune 0.25] [--threads 2] [--repeats 3]

In one process, contenders interleaved: batch-1 greedy decode tokens/s (median, spread beside it), prefill
tokens/s of one 256-token sequence, perplexity on held-out English passages, weight bytes; llama.cpp is
timed right after, on the asset's GGUF. ``--cooked`` takes a folder written by ``plmkit cook`` (its last
stage); without it the cooked contender is built here in the shape the ``bmcook`` recipe trains: every
other layer removed (``--prune-layers``), the KV-head groups and FFN neurons with the smallest weight norms
removed (untrained: its speed and bytes are those of a trained cooked model of that shape, its perplexity
is not), then int8. The CPU is printed with the numbers.

Last line: ``int8_decode_speedup=<x> int8_ppl_ratio=<y> cooked_decode_speedup=<z> cooked_bytes_ratio=<w>``
(speed-ups over fp32, perplexity int8 / fp32, bytes fp32 / cooked).
"""
from __future__ import annotations

import argparse
import copy
import statistics

import torch

from plmkit.assets.models import load_model
from plmkit.assets.models import gguf_file
from plmkit.compress.bench import (FP32, INT4, INT8, TORCH_DYNAMIC, TORCHAO, compare_lm_speed, llama_cpp_rows,
                                   peer_status, torch_dynamic_int8, torchao_int8, weight_bytes)
from plmkit.compress.quant import QuantConfig, cpu_description, quantize
from plmkit.data import text, token_batches
from plmkit.eval import perplexity

COOKED = "cooked"


def _shape_pruned_int8(model: torch.nn.Module, layers: float, heads: float, ffn: float) -> torch.nn.Module:
    """Evenly spaced layers kept, then per layer the KV groups and FFN neurons of largest weight norm, then int8."""
    from plmkit import arch
    from plmkit.analysis.prune import prune_ffn_neurons
    from plmkit.arch.resize import make_config_plain, remove_kv_groups, remove_layers

    m = copy.deepcopy(model)
    n = len(arch.layers(m))
    if layers:
        remove_layers(m, torch.linspace(0, n - 1, max(1, round(n * (1 - layers)))).round().long().tolist())
    geo = arch.attention(m)
    if heads:
        keep = max(1, round(geo.n_kv_heads * (1 - heads)))
        remove_kv_groups(m, [layer.attn_k.weight.reshape(geo.n_kv_heads, -1).norm(dim=1).topk(keep).indices
                             for layer in arch.layers(m)])
    d_ff = arch.layers(m)[0].d_ff
    if ffn:
        keep = {}
        for layer in arch.layers(m):
            score = layer.ffn_in_weight().norm(dim=1) * layer.ffn_out_weight().norm(dim=0)
            keep[f"{layer.name}.ffn.neurons"] = score.topk(round(d_ff * (1 - ffn))).indices
        prune_ffn_neurons(m, keep)
        make_config_plain(m, d_ff)
    quantize(m, QuantConfig(bits=8, kernel="auto"))
    return m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2", help="asset name or local causal-LM folder (default smollm2)")
    ap.add_argument("--cooked", default=None, help="a stage folder written by `plmkit cook` (default: build one)")
    ap.add_argument("--prune-layers", type=float, default=0.5, help="share of layers removed when building the "
                                                                    "cooked model (default 0.5)")
    ap.add_argument("--prune-heads", type=float, default=0.34, help="share of KV-head groups removed when building "
                                                                   "the cooked model (default 0.34: 1 of 3)")
    ap.add_argument("--prune", type=float, default=0.25, help="FFN share removed when building the cooked model "
                                                              "(default 0.25)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--new-tokens", type=int, default=16, help="decoded tokens per measurement (default 16)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats after a warm-up (default 3)")
    ap.add_argument("--passages", type=int, default=24, help="held-out passages for perplexity (default 24)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    model, tok = load_model(args.model)
    held = text.english_corpus(max_chars=60_000, seed=0)[1::2][: args.passages]
    contenders = {FP32: model}
    for bits, name in ((8, INT8), (4, INT4)):
        m = copy.deepcopy(model)
        quantize(m, QuantConfig(bits=bits, kernel="auto"))
        contenders[name] = m
    contenders[TORCH_DYNAMIC] = torch_dynamic_int8(model)
    ao = torchao_int8(model)
    if ao is not None:
        contenders[TORCHAO] = ao
    contenders[COOKED] = (load_model(args.cooked)[0] if args.cooked
                          else _shape_pruned_int8(model, args.prune_layers, args.prune_heads, args.prune))

    ids = tok("The history of the town begins", return_tensors="pt").input_ids
    prefill_ids = tok(" ".join(held), return_tensors="pt").input_ids[:, :256]
    speed = compare_lm_speed(contenders, ids, prefill_ids, new_tokens=args.new_tokens, repeats=args.repeats)
    native = llama_cpp_rows(str(gguf_file("smollm2")), ids[0].tolist(), prefill_ids[0].tolist(),
                            new_tokens=args.new_tokens, repeats=args.repeats,
                            threads=args.threads) if args.model == "smollm2" else {}
    ppl = {k: perplexity(m, token_batches(tok, held, 8, 128)) for k, m in contenders.items()}
    nbytes = {k: weight_bytes(m) for k, m in contenders.items()}
    shape = (f"layers -{args.prune_layers:.0%}, KV groups -{args.prune_heads:.0%}, FFN -{args.prune:.0%} by norm, "
             "untrained, int8")
    print(f"# {cpu_description()}; torch {torch.__version__}; peers {peer_status()}; {args.passages} passages; "
          f"cooked: {args.cooked or shape}")
    base = speed[FP32]
    print(f"{'contender':28s} {'decode tok/s':>12s} {'x fp32':>7s} {'spread':>7s} {'prefill tok/s':>13s} {'x fp32':>7s} "
          f"{'ppl':>8s} {'weight MB':>9s} {'bytes ratio':>11s}")
    for k in contenders:
        s = speed[k]
        runs = [1 / r for r in s["decode_runs_s"]]
        spread = (max(runs) - min(runs)) / statistics.median(runs) if len(runs) > 1 else 0.0
        print(f"{k:28s} {s['decode_tok_s']:12.2f} {s['decode_tok_s'] / base['decode_tok_s']:7.2f} {spread:7.2f} "
              f"{s['prefill_tok_s']:13.1f} {s['prefill_tok_s'] / base['prefill_tok_s']:7.2f} {ppl[k]:8.2f} "
              f"{nbytes[k] / 1e6:9.1f} {nbytes[FP32] / nbytes[k]:11.2f}")
    for k, s in native.items():
        print(f"{k:28s} {s['decode_tok_s']:12.2f} {s['decode_tok_s'] / base['decode_tok_s']:7.2f} {'':7s} "
              f"{s['prefill_tok_s']:13.1f} {s['prefill_tok_s'] / base['prefill_tok_s']:7.2f} {'-':>8s} "
              f"{s['bytes'] / 1e6:9.1f} {nbytes[FP32] / s['bytes']:11.2f}")
    if "llama.cpp Q8_0" in native:
        ratio = speed[INT8]["decode_tok_s"] / native["llama.cpp Q8_0"]["decode_tok_s"]
        print(f"# plmkit int8 decode / llama.cpp Q8_0 decode: {ratio:.2f}")
    print(f"int8_decode_speedup={speed[INT8]['decode_tok_s'] / base['decode_tok_s']:.2f} "
          f"int8_ppl_ratio={ppl[INT8] / ppl[FP32]:.3f} "
          f"cooked_decode_speedup={speed[COOKED]['decode_tok_s'] / base['decode_tok_s']:.2f} "
          f"cooked_bytes_ratio={nbytes[FP32] / nbytes[COOKED]:.2f}")


if __name__ == "__main__":
    main()
