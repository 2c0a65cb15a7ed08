"""MoEfication wall-clock: MoE vs dense, measured side by side in one process (SmolLM2, MiniLM).

    python benchmarks/moefication_speed.py [--quick] [--threads 2] [--dtype float32] [--out DIR]

For each expert layout (number of experts E) and active fraction (10/25/50%, rounded to whole
experts), it times one FFN layer (batch-1 decode over 64 different real tokens, so each call picks
its own experts; and a batched prefill) and the whole model
(SmolLM2 greedy decode with a KV cache; batched prefill), dense vs MoE, runs interleaved, and prints
each speed-up beside its Amdahl bound:
- FFN bound: 1 / (f + r), f = active fraction, r = router time / dense FFN time (both measured);
- model bound: 1 / ((1 - p) + p*f + r_model), p = the FFN share of the dense step time, measured
  by timing the same step with every FFN replaced by a zero function.
It also plots how the union of selected experts grows with the number of tokens in a batch.
Every ratio is the median of ``repeats`` interleaved (dense, MoE) pairs (``plmkit.eval.measure_speedup``)
and is printed with its spread (the pairs' interquartile range over the median); a cell whose ratio
exceeds its bound or whose spread exceeds ``--tolerance`` is measured again, and flagged if it stays so.
A 100%-active row per layout is the control: the MoE path with every expert on, against dense.
The last line is ``ffn_speedup=<x> ffn_spread=... bound=<y> model_speedup=<z> ... flagged_cells=n/N``
for 25% active at batch 1 with the default (first) layout.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
from pathlib import Path

import torch
from torch import nn

from plmkit import arch, load_model
from plmkit.compress.moefication import MoEficationConfig, moe_layers, moefy, set_selection
from plmkit.data import text, token_batches
from plmkit.eval.timing import compare, interleaved, measure_speedup


def median_time(fns: dict[str, callable], repeats: int, inner: int) -> dict[str, float]:
    """Median seconds per call of each fn (``inner`` calls per timed run), the fns interleaved round-robin."""
    def batched(fn):
        def run() -> None:
            for _ in range(inner):
                fn()
        return run

    for fn in fns.values():  # one warm-up call each
        fn()
    times = interleaved({k: batched(fn) for k, fn in fns.items()}, repeats=repeats, warmup=0)
    return {k: statistics.median(v) / inner for k, v in times.items()}


class ZeroFFN(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


def decode_fn(model: nn.Module, prompt: torch.Tensor, steps: int):
    """One call = prefill ``prompt`` (untimed share is small and equal for both) then ``steps`` greedy tokens."""
    def run() -> None:
        with torch.no_grad():
            out = model(input_ids=prompt, use_cache=True)
            cache, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
            for _ in range(steps):
                out = model(input_ids=nxt, past_key_values=cache, use_cache=True)
                cache, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
    return run


def forward_fn(model: nn.Module, batch: dict):
    def run() -> None:
        with torch.no_grad():
            model(**batch)
    return run


def ffn_share(model: nn.Module, fn_of, repeats: int) -> float:
    """Measured share of the FFNs in the time of ``fn_of(model)``."""
    no_ffn = copy.deepcopy(model)
    for layer in arch.layers(no_ffn):
        arch.replace_ffn(layer, ZeroFFN())
    t = median_time({"dense": fn_of(model), "no_ffn": fn_of(no_ffn)}, repeats, 1)
    return max(0.0, (t["dense"] - t["no_ffn"]) / t["dense"])


def bound(p: float, f: float, r: float) -> float:
    return 1.0 / ((1.0 - p) + p * f + r)


def moefied(model, tok, experts: int, texts, steps: int, seed: int = 0):
    m = copy.deepcopy(model)
    rep = moefy(m, MoEficationConfig(experts=experts, active=0.25, router_steps=steps, calibration_tokens=2048),
                calibration=token_batches(tok, texts, 8, 128), seed=seed, progress=False)
    return m, rep


def layer_inputs(model, tok, texts, n_tokens: int) -> torch.Tensor:
    from plmkit.compress.moefication import collect_ffn_inputs

    mid = len(arch.layers(model)) // 2
    return collect_ffn_inputs(model, token_batches(tok, texts, 8, 128), n_tokens)[mid]


def run_model(name: str, args, rows: list[dict], union: dict) -> dict:
    model, tok = load_model(name, task="causal-lm" if name == "smollm2" else "base", dtype=getattr(torch, args.dtype))
    model.eval()
    corpus = text.english_corpus(max_chars=60_000, seed=1)
    calib, held = corpus[: len(corpus) // 2], corpus[len(corpus) // 2:]
    x_all = layer_inputs(model, tok, held, 512).to(model.dtype)
    mid = len(arch.layers(model)) // 2
    dense_layer = arch.layers(model)[mid]
    dense_ffn = lambda x: arch.ffn_apply(dense_layer, x)  # noqa: E731  (BERT: intermediate + output.dense)
    prefill = next(token_batches(tok, held[:args.prefill_batch], args.prefill_batch, 128))
    prompt = next(token_batches(tok, held[:1], 1, 16))["input_ids"]
    is_lm = name == "smollm2"
    whole = (lambda m: decode_fn(m, prompt, args.decode_steps)) if is_lm else None
    whole_pre = lambda m: forward_fn(m, prefill)  # noqa: E731
    p_decode = ffn_share(model, whole, args.repeats) if is_lm else None
    p_prefill = ffn_share(model, whole_pre, max(3, args.repeats // 2))
    print(f"\n== {name} ({args.dtype}, {torch.get_num_threads()} threads): FFN share of time: "
          f"decode {p_decode if p_decode is None else round(p_decode, 3)}, prefill {p_prefill:.3f}")
    result = {"model": name, "ffn_share_decode": p_decode, "ffn_share_prefill": p_prefill}
    for E in args.experts:
        moe_model, rep = moefied(model, tok, E, calib, args.router_steps)
        moe = list(moe_layers(moe_model))[mid]
        result.setdefault("recall_at_25", {})[E] = {k: rep.mean(k) for k in ("router_recall", "random_recall",
                                                                              "oracle_recall")}
        print(f"-- E={E}: {moe.size} neurons per expert; router recall at 25% (mean over layers) "
              f"{rep.mean('router_recall'):.3f}, random {rep.mean('random_recall'):.3f}, "
              f"oracle {rep.mean('oracle_recall'):.3f}")
        for f in [*args.fractions, 1.0]:  # 1.0: the control, every expert active (what the MoE path costs)
            set_selection(moe_model, active=f)
            k = moe.k
            fa = k / E
            singles = [x_all[i:i + 1] for i in range(args.inner)]  # a different real token each call
            for label, x in (("decode b=1", None), (f"prefill n={args.prefill_tokens}", x_all[:args.prefill_tokens])):
                if x is None:  # one call = every token of ``singles`` in turn; reported per token
                    fns = {"dense": lambda: [dense_ffn(s) for s in singles], "moe": lambda: [moe(s) for s in singles],
                           "router": lambda: [moe.router(s) for s in singles]}
                    per = len(singles)
                else:
                    fns = {"dense": lambda: dense_ffn(x), "moe": lambda: moe(x), "router": lambda: moe.router(x)}
                    per = 1
                with torch.no_grad():
                    r = 1.0 / compare(fns["dense"], fns["router"], repeats=args.repeats, warmup=1).ratio
                    sp = measure_speedup(fns["dense"], fns["moe"], repeats=args.repeats, bound=bound(1.0, fa, r),
                                         tolerance=args.tolerance, retries=args.retries)
                rows.append(_row(name, E, k, fa, "ffn", label, sp, per))
                _print(rows[-1], "FFN  ", 3)
            r_layer = rows[-2]["bound"]  # the decode row's bound encodes its router ratio
            cases = [("prefill", whole_pre, p_prefill)] + ([("decode", whole, p_decode)] if is_lm else [])
            for label, fn_of, p in cases:
                router_share = (1 / r_layer - fa) * p  # router time as a share of the dense model step
                sp = measure_speedup(fn_of(model), fn_of(moe_model), repeats=args.repeats,
                                     bound=bound(p, fa, router_share), tolerance=args.tolerance, retries=args.retries)
                rows.append(_row(name, E, k, fa, "model", label, sp, 1))
                _print(rows[-1], "MODEL", 1)
        set_selection(moe_model, active=0.25)
        with torch.no_grad():
            sel = moe.select(x_all)
        union[f"{name} E={E}"] = {b: float(torch.stack([sel[i:i + b].any(0) for i in range(0, len(sel) - b + 1, b)])
                                             .float().mean()) for b in (1, 2, 4, 8, 16, 32, 64, 128)}
        del moe_model
    return result


def _row(model: str, E: int, k: int, fa: float, scope: str, case: str, sp, per: int) -> dict:
    c = sp.comparison
    return {"model": model, "experts": E, "k": k, "active": fa, "scope": scope, "case": case,
            "dense_ms": c.baseline_s / per * 1e3, "moe_ms": c.candidate_s / per * 1e3, "speedup": sp.ratio,
            "spread": sp.spread, "bound": sp.bound, "attempts": sp.attempts, "flagged": sp.flagged}


def _print(row: dict, scope: str, digits: int) -> None:
    print(f"E={row['experts']:3d} k={row['k']:2d} ({row['active']:5.1%}) {scope} {row['case']:16s} "
          f"dense {row['dense_ms']:8.{digits}f} ms  moe {row['moe_ms']:8.{digits}f} ms  speed-up {row['speedup']:.2f}x "
          f"±{row['spread']:.0%}  bound {row['bound']:.2f}x" + (f"  [FLAG after {row['attempts']} tries: "
                                                               f"{row['flagged']}]" if row["flagged"] else ""))


def plot_union(union: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, curve in union.items():
        ax.plot(list(curve), list(curve.values()), marker="o", label=name)
    ax.set(xscale="log", xlabel="tokens in the batch", ylabel="fraction of experts needed by the batch",
           title="expert union at 25% active per token (middle layer)", ylim=(0, 1.05))
    ax.axhline(0.25, color="grey", lw=0.8, ls=":")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repeats and layouts (about 5 minutes on 2 cores)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                    help="weights' dtype; auto: bfloat16 only where this CPU runs it natively (plmkit.device)")
    ap.add_argument("--models", nargs="+", default=["smollm2", "minilm"])
    ap.add_argument("--out", default="reports/benchmarks", help="where the JSON and the union plot go")
    ap.add_argument("--tolerance", type=float, default=0.25,
                    help="re-measure a cell whose ratios spread wider than this (relative IQR), or whose speed-up "
                         "exceeds its bound by more (default 0.25)")
    ap.add_argument("--retries", type=int, default=2, help="re-measurements of a suspect cell before it is flagged")
    args = ap.parse_args()
    from plmkit.device import cpu_info, fast_dtype

    if args.dtype == "auto":
        args.dtype = str(fast_dtype("cpu")).removeprefix("torch.")
    args.cpu = cpu_info()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    args.experts = [8, 16] if args.quick else [8, 16, 32, 48]
    args.fractions = [0.1, 0.25, 0.5]
    args.repeats = 5 if args.quick else 11  # each ratio: the median of this many interleaved pairs
    args.inner = 64  # distinct real tokens per batch-1 timing call
    args.decode_steps = 16 if args.quick else 32
    args.prefill_batch, args.prefill_tokens = 4, 256
    args.router_steps = 100 if args.quick else 300
    rows: list[dict] = []
    union: dict = {}
    models = [run_model(m, args, rows, union) for m in args.models]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "moefication_speed.json").write_text(json.dumps({"args": vars(args), "models": models, "rows": rows,
                                                            "union": union}, indent=2))
    plot_union(union, out / "moefication_union.png")
    print("\nexpert union at 25% active:", json.dumps(union))
    print(f"wrote {out / 'moefication_speed.json'} and {out / 'moefication_union.png'}")
    pick = lambda scope, case: next(r for r in rows if r["model"] == args.models[0] and r["experts"] == args.experts[0]  # noqa: E731
                                    and abs(r["active"] - 0.25) < 1e-9 and r["scope"] == scope and case in r["case"])
    ffn, model = pick("ffn", "decode"), pick("model", "decode" if args.models[0] == "smollm2" else "prefill")
    control = next(r for r in rows if r["model"] == args.models[0] and r["experts"] == args.experts[0]
                   and r["active"] == 1.0 and r["scope"] == "ffn" and "decode" in r["case"])
    flagged = sum(bool(r["flagged"]) for r in rows)
    print(f"ffn_speedup={ffn['speedup']:.2f} ffn_spread={ffn['spread']:.2f} bound={ffn['bound']:.2f} "
          f"model_speedup={model['speedup']:.2f} model_spread={model['spread']:.2f} "
          f"all_active_ffn_speedup={control['speedup']:.2f} flagged_cells={flagged}/{len(rows)}")


if __name__ == "__main__":
    main()
