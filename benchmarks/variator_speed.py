"""Variator: prefill wall-clock and FLOPs of compression plugins beside their bound, in one process.

    python benchmarks/variator_speed.py [--quick] [--threads 2] [--steps 600] [--plugins DIR] [--out DIR]

On MiniLM fine-tuned on fortune topics (the cached classifier of plmkit.reproduce.shared), it distils
k=4 plugins (or loads ``--plugins``), then measures side by side, runs interleaved:
- test accuracy with and without the plugins, and the plugins' share of the model's parameters;
- prefill at batch 1 and 16: FLOPs (torch's counter) and wall-clock, the speed-up as the median of
  ``--rounds`` rounds of interleaved repeats with its spread, beside the bound 1/(1 - p_ffn (1 - 1/k)),
  p_ffn timed in the same run. A speed-up above its bound or a spread over ``--tolerance`` is flagged
  and that cell measured again once;
- the token-merging peer (plmkit.compress.token_merging) at the r whose FLOPs match the plugins'.
The last line is ``k4_speedup=<x> bound=<y> accuracy_drop=<z> extra_params=<w>`` (batch 16;
accuracy_drop in percentage points; extra_params a fraction of the model's parameters).
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch

from plmkit.device import cpu_info
from plmkit.plugins import variator
from plmkit.plugins.variator import VariatorConfig, tasks
from plmkit.plugins.variator.measure import prefill_cost, token_merging_peer

SETTINGS = {"k": 4, "hidden": 24, "loss": "both", "exact_prefix": 1}  # the recipe's choice on validation
UNLABELED = 6000  # fortunes of other categories added to the distillation text (the recipe's choice)


def measure(model, batch, repeats: int, rounds: int, tolerance: float) -> dict:
    """Median over ``rounds`` of prefill_cost; re-measured once when flagged."""
    for attempt in (1, 2):
        costs = [prefill_cost(model, batch, repeats=repeats) for _ in range(rounds)]
        speed = [c.speedup for c in costs]
        bounds = [c.bound_time for c in costs]
        med, bound = statistics.median(speed), statistics.median(bounds)
        spread = (max(speed) - min(speed)) / med
        flags = [f for f, bad in (("above bound", med > bound * 1.05), (f"spread {spread:.0%}", spread > tolerance))
                 if bad]
        if not flags or attempt == 2:
            c = costs[speed.index(sorted(speed)[len(speed) // 2])].to_dict()
            return {**c, "speedup": med, "bound_time": bound, "spread": spread, "rounds": speed, "flags": flags,
                    "attempts": attempt}
        print(f"  re-measuring batch {batch['input_ids'].shape[0]}: {', '.join(flags)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer distillation steps, test texts and repeats")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--steps", type=int, default=None, help="distillation steps (default 600; quick 60)")
    ap.add_argument("--plugins", default=None, help="a folder from `plmkit variator train` instead of distilling")
    ap.add_argument("--repeats", type=int, default=None, help="interleaved repeats per round (default 10; quick 5)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds whose median is reported (default 3)")
    ap.add_argument("--tolerance", type=float, default=0.25, help="spread (max-min)/median that flags a cell")
    ap.add_argument("--out", default="benchmarks/out", help="folder for variator_speed.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    steps = args.steps or (60 if args.quick else 600)
    repeats = args.repeats or (5 if args.quick else 10)

    model, tok, cache = tasks.load_task_model("topics", "minilm")
    data = tasks.task_data("topics", n_test=240 if args.quick else None, unlabeled=UNLABELED)
    plain = tasks.evaluate(model, tok, data)["accuracy"]
    if args.plugins:
        variator.load(model, args.plugins)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            tasks.train_plugins(model, tok, data, VariatorConfig(**SETTINGS), tmp, steps=steps, progress=False)
    k = variator.config_of(model).k
    plugged = tasks.evaluate(model, tok, data)["accuracy"]
    n_extra, share = variator.extra_parameters(model)
    cells = {b: measure(model, tasks.sample_batch(tok, data, b), repeats, args.rounds, args.tolerance) for b in (1, 16)}
    b16 = tasks.sample_batch(tok, data, 16)
    variator.detach(model)
    tome = token_merging_peer(model, tok, data.test, data.labels, data.max_length, b16,
                              cells[16]["flops_plugged"], repeats)

    cpu = cpu_info()
    print(f"CPU: {cpu.get('cpu')}, {cpu.get('capability')}, bf16 fast: {cpu.get('bf16_fast')} ({args.threads} threads); test n={len(data.test)}; k={k}, "
          f"{n_extra:,} plugin parameters ({share:.2%})")
    print(f"accuracy: plain {plain:.4f}, plugged {plugged:.4f} (drop {100 * (plain - plugged):.2f} points); "
          f"token merging r={tome['r']}: {tome['accuracy']:.4f}, speed-up {tome['speedup']:.2f}x at batch 16")
    print(f"{'batch':>5} {'tokens':>6} {'FLOPs saved':>11} {'p_ffn':>6} {'speed-up':>9} {'spread':>7} {'bound':>6}  flags")
    for b, c in cells.items():
        print(f"{b:>5} {c['tokens']:>6} {c['flops_saved']:>10.1%} {c['p_ffn_time']:>6.3f} {c['speedup']:>8.2f}x "
              f"{c['spread']:>6.0%} {c['bound_time']:>5.2f}x  {', '.join(c['flags']) or '-'}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "variator_speed.json").write_text(json.dumps(
        {"cpu": cpu, "args": vars(args), "settings": SETTINGS, "steps": steps, "plain_acc": plain,
         "plugged_acc": plugged, "extra_params": n_extra, "extra_share": share, "cells": cells, "tome": tome,
         "cache": cache}, indent=2, default=str))
    print(f"wrote {out / 'variator_speed.json'}")
    print(f"k{k}_speedup={cells[16]['speedup']:.2f} bound={cells[16]['bound_time']:.2f} "
          f"accuracy_drop={100 * (plain - plugged):.2f} extra_params={share:.4f}")


if __name__ == "__main__":
    main()
