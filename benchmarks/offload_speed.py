"""Decoding under a budget of resident weight bytes: plmkit's offload (fp32 and int8) vs accelerate's.

    python benchmarks/offload_speed.py [--model smollm2] [--budgets 50,25,10] [--threads 2] [--rss]

At each budget (a share of the model's fp32 weight bytes), in one process and interleaved repeat by repeat:
the full-memory fp32 model, plmkit fp32 streaming from the model's safetensors, plmkit int8 streaming an
int8 copy (written once to a temporary folder), and accelerate's disk offload (``device_map="auto"`` with
``max_memory`` and an ``offload_folder``, as its docs describe). Reported: batch-1 decode tokens/s (median
of the repeats, spread beside it), prefill tokens/s of one 4 x 128 batch, resident weight bytes, weight
bytes streamed per token and the copy bound (the measured copy bandwidth / bytes per token; zero-copy
mapping can beat it). ``--rss``
also measures each contender's peak RSS in a process of its own. The CPU is printed with the numbers.

Last line: ``speedup_vs_accelerate=<x> int8_speedup_vs_accelerate=<y> peak_resident_ratio=<z>`` at 25%.
"""
from __future__ import annotations

import argparse
import tempfile

import torch

from plmkit.assets.models import MODEL_ASSETS, load_model, model_path
from plmkit.data import text
from plmkit.device import cpu_info
from plmkit.infer.bench import compare_offload, contender_rss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2", help="asset name or local causal-LM folder (default smollm2)")
    ap.add_argument("--budgets", default="50,25,10", help="comma-separated budgets in %% (default 50,25,10)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--new-tokens", type=int, default=16, help="decoded tokens per measurement (default 16)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats after a warm-up (default 3)")
    ap.add_argument("--no-accelerate", action="store_true", help="leave accelerate's offload out")
    ap.add_argument("--no-int8", action="store_true", help="leave plmkit int8 out")
    ap.add_argument("--rss", action="store_true", help="also measure peak RSS per contender (one process each)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    folder = str(model_path(args.model)) if args.model in MODEL_ASSETS else args.model
    budgets = [f"{b.strip()}%" for b in args.budgets.split(",")]
    info = cpu_info()
    print(f"CPU: {info['cpu']} (kernels {info['capability']}, native bf16: {info['native_bf16'] or 'none'}); "
          f"torch {torch.__version__}, {args.threads} threads")
    model, tok = load_model(folder)
    sents = text.english_corpus(max_chars=20_000, seed=3)
    prompt = tok(sents[0][:200], return_tensors="pt")["input_ids"][:, :16]
    prefill = tok(" ".join(sents[1:60]), return_tensors="pt")["input_ids"][:, :512].reshape(4, 128)
    with tempfile.TemporaryDirectory(prefix="plmkit-int8-") as qdir:
        qfolder = None
        if not args.no_int8:
            from plmkit.compress.quant import quantize_int8, save_quantized

            quantize_int8(model)
            save_quantized(model, qdir, tokenizer=tok)
            qfolder = qdir
        del model
        comparison = compare_offload(folder, qfolder, budgets, prompt_ids=prompt, prefill_ids=prefill,
                                     new_tokens=args.new_tokens, repeats=args.repeats,
                                     with_accelerate=not args.no_accelerate, progress=print)
        rss = contender_rss(folder, qfolder, budgets, not args.no_accelerate) if args.rss else {}
    cells, bandwidth, full = comparison.cells, comparison.bandwidth, comparison.full
    print(f"\nread bandwidth (warm page cache, preadv): {bandwidth / 1e9:.2f} GB/s")
    floor = rss.get(("none", "-"))
    if floor:
        print(f"peak RSS floor (the same code on a one-layer, 64-wide copy): {floor / 1e6:.0f} MB")
    print(f"{'contender':26s} {'budget':>6s} {'decode tok/s':>12s} {'x fp32':>7s} {'spread':>7s} {'prefill tok/s':>13s} "
          f"{'resident MB':>11s} {'measured MB':>11s} {'MB/token':>8s} {'copy bound':>11s} {'greedy=':>7s} {'peak RSS MB':>11s} {'over floor':>10s}")
    for c in cells:
        if c.error:
            print(f"{c.contender:26s} {c.budget:>6s}  failed: {c.error}")
            continue
        r = rss.get((c.contender, c.budget))
        print(f"{c.contender:26s} {c.budget:>6s} {c.decode_tps:12.2f} {c.decode_tps / full.decode_tps:7.2f} "
              f"{c.decode_spread:7.2f} {c.prefill_tps:13.1f} {c.resident_bytes / 1e6:11.1f} "
              f"{(c.measured_peak_bytes / 1e6 if c.measured_peak_bytes else float('nan')):11.1f} "
              f"{c.streamed_per_token / 1e6:8.1f} {c.bound_tps:11.1f} {str(c.same_greedy):>7s} "
              f"{(r / 1e6 if r else float('nan')):11.0f} {((r - floor) / 1e6 if r and floor else float('nan')):10.0f}")

    nan = float("nan")
    head = {k: nan if v is None else v for k, v in comparison.headline("25%").items()}
    print(f"speedup_vs_accelerate={head['speedup_vs_accelerate']:.2f} "
          f"int8_speedup_vs_accelerate={head['int8_speedup_vs_accelerate']:.2f} "
          f"peak_resident_ratio={head['peak_resident_ratio']:.3f}")

if __name__ == "__main__":
    main()
