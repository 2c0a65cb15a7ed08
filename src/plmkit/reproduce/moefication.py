"""Recipe ``moefication``: how much quality MoEfied FFNs keep, on real models and real data.

- MiniLM fine-tuned on fortune topics (real English text, 4 classes): accuracy retained.
- SmolLM2-135M: perplexity on held-out real text, and zero-shot capital-city cloze accuracy.
For each split (balanced k-means, co-activation) x router (MLP, similarity) x activation treatment
(original GELU/SiLU, ReLU-fied + short fine-tuning), at several active fractions of experts; and
CATS-style neuron magnitude masks at the same fractions (quality only, no speed path).
"""
from __future__ import annotations

import copy
import time
from typing import Any

import numpy as np
import torch

from ..assets import load_model
from ..compress.moefication import MoEficationConfig, moefy, relufy, set_selection
from ..compress.moefication.relu import magnitude_mask, remove_magnitude_mask
from ..data import geonames, text, token_batches
from ..eval import accuracy, next_token_accuracy, perplexity
from ..train import TrainConfig, causal_lm_collate, train
from ..train.classify import fine_tune_classifier, predict_labels
from .registry import RecipeContext, recipe

EXPERTS = 16
FRACTIONS = (0.125, 0.25, 0.5)
GRID = [(s, r) for s in ("kmeans", "coactivation") for r in ("mlp", "similarity")]


def _settings(quick: bool) -> dict[str, Any]:
    if quick:
        return dict(seeds=(0,), lm_chars=200_000, lm_held=24, lm_ft_steps=40, lm_ft_batch=4, zs=80,
                    cls_steps=150, cls_len=64, router_steps=150, calib_tokens=2048,
                    lm_grid=[("kmeans", "mlp"), ("coactivation", "mlp")], relu_grid=[("kmeans", "mlp")])
    return dict(seeds=(0, 1, 2), lm_chars=1_000_000, lm_held=96, lm_ft_steps=400, lm_ft_batch=8, zs=200,
                cls_steps=400, cls_len=128, router_steps=400, calib_tokens=8192, lm_grid=GRID, relu_grid=GRID)


def _fine_tune(model, data, collate, steps: int, batch: int, lr: float, out_dir, progress: bool, seed: int):
    """A short fine-tune with plmkit's loop (no checkpoints); returns (seconds, TrainResult), model in eval mode."""
    model.train()
    t = time.perf_counter()
    res = train(model, data, TrainConfig(out_dir=str(out_dir), max_steps=steps, batch_size=batch, lr=lr,
                                         warmup_steps=max(1, steps // 10), resume=False, progress=progress,
                                         seed=seed), collate_fn=collate)
    model.eval()
    return time.perf_counter() - t, res


def _fine_tune_lm(model, tok, texts, steps: int, batch: int, out_dir, progress: bool, seed: int) -> dict:
    data = [{"input_ids": e} for e in tok(list(texts), truncation=True, max_length=128)["input_ids"] if len(e) > 16]
    seconds, res = _fine_tune(model, data, causal_lm_collate(tok), steps, batch, 2e-4, out_dir, progress, seed)
    return {"steps": steps, "batch": batch, "tokens": steps * batch * 128, "seconds": seconds,
            "loss_first": res.losses[0] if res.losses else None, "loss_last": res.losses[-1] if res.losses else None}


TOPICS = ("computers", "politics", "science", "songs-poems")


def _fortune_topics(seed: int, test_share: float = 0.2) -> tuple[list[dict], list[dict]]:
    """Topic classification of real English fortunes (4 categories), split per category by ``seed``."""
    rng = np.random.default_rng(seed)
    train_rows, test_rows = [], []
    for label, cat in enumerate(TOPICS):
        rows = [{"text": " ".join(r["text"].split()), "label": label} for r in text.fortunes(cat)]
        order = rng.permutation(len(rows))
        n_test = int(round(test_share * len(rows)))
        test_rows += [rows[i] for i in order[:n_test]]
        train_rows += [rows[i] for i in order[n_test:]]
    shuffle = lambda xs: [xs[i] for i in rng.permutation(len(xs))]  # noqa: E731
    return shuffle(train_rows), shuffle(test_rows)


def _cls_accuracy(model, tok, rows: list[dict], max_length: int) -> dict[str, float]:
    """Accuracy, and the share of the most predicted class (near 1 = the model collapsed to one class)."""
    preds = predict_labels(model, tok, [r["text"] for r in rows], max_length=max_length)
    return {"acc": accuracy(preds, [r["label"] for r in rows]),
            "top_class_share": max(np.bincount(preds)) / len(preds)}


def _fine_tune_cls(model, tok, rows, steps, max_length, out_dir, progress, seed) -> float:
    t = time.perf_counter()
    fine_tune_classifier(model, tok, rows, out_dir, steps=steps, batch_size=16, lr=1e-4, max_length=max_length,
                         seed=seed, progress=progress)
    return time.perf_counter() - t


def _mean_std(xs: list[float]) -> tuple[float, float]:
    return float(np.mean(xs)), float(np.std(xs))


def _grid(base, tok, calib_texts, grid, seeds, S, evaluate, treatment, progress) -> tuple[list[dict], list[dict]]:
    """MoEfy copies of ``base`` for each split x router x seed; evaluate at each active fraction."""
    rows, recalls = [], []
    for split, router in grid:
        scores: dict[float, list[float]] = {f: [] for f in FRACTIONS}
        for seed in seeds:
            m = copy.deepcopy(base)
            cfg = MoEficationConfig(experts=EXPERTS, split=split, router=router, active=0.25,
                                    router_steps=S["router_steps"], calibration_tokens=S["calib_tokens"])
            rep = moefy(m, cfg, calibration=token_batches(tok, calib_texts, 8, 128), seed=seed, progress=progress)
            recalls.append({"treatment": treatment, "split": split, "router": router, "seed": seed,
                            "layers": [l.__dict__ for l in rep.layers],
                            "router_recall": rep.mean("router_recall"), "random_recall": rep.mean("random_recall"),
                            "oracle_recall": rep.mean("oracle_recall")})
            for f in FRACTIONS:
                set_selection(m, active=f)
                scores[f].append(evaluate(m))
            del m
        for f in FRACTIONS:
            rows.append({"treatment": treatment, "split": split, "router": router, "active": f,
                         "scores": scores[f]})
    return rows, recalls


def _magnitude_rows(model, tok, calib_texts, evaluate, treatment) -> list[dict]:
    rows = []
    for f in FRACTIONS:
        magnitude_mask(model, f, token_batches(tok, calib_texts, 8, 128))
        rows.append({"treatment": treatment, "split": "neurons", "router": "magnitude (CATS)", "active": f,
                     "scores": [evaluate(model)]})
        remove_magnitude_mask(model)
    return rows


def _minilm(ctx: RecipeContext, S: dict) -> dict[str, Any]:
    train_rows, test_rows = _fortune_topics(ctx.seed)
    out: dict[str, Any] = {"rows": [], "recalls": [], "dense": {}, "cost": {}, "n_train": len(train_rows),
                           "n_test": len(test_rows)}
    for treatment in ("gelu", "relu"):
        torch.manual_seed(ctx.seed)
        model, tok = load_model("minilm", task="sequence-classification", num_labels=len(TOPICS))
        if treatment == "relu":
            relufy(model)
        out["cost"][treatment] = _fine_tune_cls(model, tok, train_rows, S["cls_steps"], S["cls_len"],
                                                ctx.out_dir / f"minilm-{treatment}", ctx.progress, ctx.seed)
        evaluate = lambda m: _cls_accuracy(m, tok, test_rows, S["cls_len"])  # noqa: E731
        out["dense"][treatment] = evaluate(model)
        calib = [r["text"] for r in train_rows]
        rows, recalls = _grid(model, tok, calib, GRID, S["seeds"], S, evaluate, treatment, ctx.progress)
        out["rows"] += rows + _magnitude_rows(model, tok, calib, evaluate, treatment)
        out["recalls"] += recalls
    return out


def _smollm2(ctx: RecipeContext, S: dict) -> dict[str, Any]:
    model, tok = load_model("smollm2")
    corpus = text.english_corpus(max_chars=S["lm_chars"], seed=ctx.seed)
    calib, held = corpus[::2], corpus[1::2][: S["lm_held"]]
    facts = [f for f in geonames.country_facts() if f["relation"] == "capital"]
    facts = [facts[i] for i in np.random.default_rng(ctx.seed).permutation(len(facts))[: S["zs"]]]
    prompts = [f"The capital of {f['subject']} is" for f in facts]
    answers = [f["object"] for f in facts]

    def evaluate(m) -> dict[str, float]:
        return {"ppl": perplexity(m, token_batches(tok, held, 8, 128)),
                "capital_acc": next_token_accuracy(m, tok, prompts, answers)}

    out: dict[str, Any] = {"rows": [], "recalls": [], "dense": {"silu": evaluate(model)}}
    rows, recalls = _grid(model, tok, calib, S["lm_grid"], S["seeds"], S, evaluate, "silu", ctx.progress)
    out["rows"] += rows + _magnitude_rows(model, tok, calib, evaluate, "silu")
    out["recalls"] += recalls
    relu = relufy(copy.deepcopy(model))
    out["dense"]["relu (no fine-tuning)"] = evaluate(relu)
    out["relu_cost"] = _fine_tune_lm(relu, tok, calib, S["lm_ft_steps"], S["lm_ft_batch"], ctx.out_dir / "smollm2-relu",
                                     ctx.progress, ctx.seed)
    out["dense"]["relu"] = evaluate(relu)
    rows, recalls = _grid(relu, tok, calib, S["relu_grid"], S["seeds"], S, evaluate, "relu", ctx.progress)
    out["rows"] += rows
    out["recalls"] += recalls
    return out


def _plots(ctx: RecipeContext, cls: dict, lm: dict) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    panels = [(axes[0], cls, lambda s, t: s["acc"] / cls["dense"][t]["acc"],
               "MiniLM fortune topics: accuracy retained"),
              (axes[1], lm, lambda s, t: s["ppl"], "SmolLM2: held-out perplexity (log)"),
              (axes[2], lm, lambda s, t: s["capital_acc"] / max(lm["dense"]["silu"]["capital_acc"], 1e-9),
               "SmolLM2: capital cloze accuracy retained (vs dense SiLU)")]
    for ax, res, metric, title in panels:
        groups: dict[str, list[dict]] = {}
        for r in res["rows"]:
            groups.setdefault(f"{r['treatment']} {r['split']}/{r['router']}", []).append(r)
        for label, rs in groups.items():
            vals = [[metric(s, r["treatment"]) for s in r["scores"]] for r in rs]
            ax.errorbar([r["active"] for r in rs], [np.mean(v) for v in vals], yerr=[np.std(v) for v in vals],
                        marker="o", capsize=3, ls="--" if label.startswith(("relu", "gelu relu")) else "-",
                        label=label)
        ax.set(title=title, xlabel="active fraction of FFN", xticks=FRACTIONS)
        ax.legend(fontsize=6)
    axes[0].axhline(0.95, color="grey", ls=":", lw=0.8)
    axes[1].set_yscale("log")
    for t, d in lm["dense"].items():
        axes[1].axhline(d["ppl"], color="grey", ls=":", lw=0.8)
    ctx.save_figure(fig, "retained_performance.png")

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, res in (("MiniLM", cls), ("SmolLM2", lm)):
        for rec in res["recalls"]:
            if rec["seed"] != 0 or rec["split"] != "kmeans":
                continue
            ax.plot([l["router_recall"] for l in rec["layers"]], marker=".",
                    label=f"{name} {rec['treatment']} {rec['router']} router (seed {rec['seed']})")
        rec = res["recalls"][0]
        ax.plot([l["oracle_recall"] for l in rec["layers"]], "k:", lw=0.8)
    ax.axhline(0.25, color="grey", ls="--", lw=0.8, label="random router (k/E = 0.25)")
    ax.set(title="router recall per layer: share of activation mass in the chosen 25% of experts (dotted: oracle)",
           xlabel="layer", ylabel="recall", ylim=(0, 1))
    ax.title.set_fontsize(8)
    ax.legend(fontsize=6)
    ctx.save_figure(fig, "router_recall.png")
    return ["retained_performance.png", "router_recall.png"]


def _table_rows(res: dict, fmt) -> list[list[Any]]:
    out = []
    for r in res["rows"]:
        out.append([r["treatment"], r["split"], r["router"], f"{r['active']:.1%}", *fmt(r), len(r["scores"])])
    return out


@recipe(
    "moefication",
    "MoEfication: FFNs as mixtures of experts, quality kept at each active fraction",
    system="moefication",
    paper_claim="Using 10-30% of FFN parameters keeps over 95% of the original performance (ReLU T5/BERT); "
                "about 2x inference speed-up with 25% of FFN parameters (FLOPs).",
    citation="Zhang et al., MoEfication: Transformer Feed-forward Layers are Mixtures of Experts, Findings of ACL 2022",
)
def run(ctx: RecipeContext) -> dict[str, Any]:
    S = _settings(ctx.quick)
    torch.manual_seed(ctx.seed)
    cls = _minilm(ctx, S)
    lm = _smollm2(ctx, S)
    plots = _plots(ctx, cls, lm)
    ms = lambda xs: ("%.3f ± %.3f" % _mean_std(xs)) if len(xs) > 1 else f"{xs[0]:.3f}"  # noqa: E731
    cls_fmt = lambda r: [ms([s["acc"] for s in r["scores"]]),  # noqa: E731
                         ms([s["acc"] / cls["dense"][r["treatment"]]["acc"] for s in r["scores"]]),
                         ms([s["top_class_share"] for s in r["scores"]])]
    lm_fmt = lambda r: [ms([s["ppl"] for s in r["scores"]]),  # noqa: E731
                        ms([s["capital_acc"] for s in r["scores"]])]
    recall_rows = [[name, r["treatment"], r["split"], r["router"], r["seed"], round(r["router_recall"], 3),
                    round(r["random_recall"], 3), round(r["oracle_recall"], 3)]
                   for name, res in (("MiniLM", cls), ("SmolLM2", lm)) for r in res["recalls"]]

    def best(res, treatment, f, key):
        rs = [r for r in res["rows"] if r["treatment"] == treatment and r["active"] == f and r["router"] != "magnitude (CATS)"]
        return max(float(np.mean([key(s) for s in r["scores"]])) for r in rs)

    measured = {
        "minilm.gelu.dense_acc": cls["dense"]["gelu"]["acc"], "minilm.relu.dense_acc": cls["dense"]["relu"]["acc"],
        **{f"minilm.{t}.best_retained@{f:g}": best(cls, t, f, lambda s: s["acc"]) / cls["dense"][t]["acc"]
           for t in ("gelu", "relu") for f in FRACTIONS},
        "smollm2.dense_ppl": lm["dense"]["silu"]["ppl"], "smollm2.relu_ft_ppl": lm["dense"]["relu"]["ppl"],
        **{f"smollm2.silu.best_ppl@{f:g}": -best(lm, "silu", f, lambda s: -s["ppl"]) for f in FRACTIONS},
        **{f"smollm2.relu.best_ppl@{f:g}": -best(lm, "relu", f, lambda s: -s["ppl"]) for f in FRACTIONS},
    }
    d = lm["dense"]
    return {
        "measured": measured,
        "tables": [
            {"title": f"MiniLM fine-tuned on fortune topics ({len(TOPICS)} classes: {', '.join(TOPICS)}; "
                      f"{S['cls_steps']} steps of 16 on {cls['n_train']} texts; test n={cls['n_test']}); {EXPERTS} experts per "
                      f"FFN; dense accuracy GELU {cls['dense']['gelu']['acc']:.3f}, ReLU-fied (ReLU from the start "
                      f"of fine-tuning) {cls['dense']['relu']['acc']:.3f}",
             "columns": ["activation", "split", "router", "active", "accuracy", "retained", "top class share",
                         "seeds"],
             "rows": _table_rows(cls, cls_fmt)},
            {"title": f"SmolLM2-135M: held-out perplexity ({S['lm_held']} passages) and capital cloze accuracy "
                      f"(n={S['zs']}); dense SiLU ppl {d['silu']['ppl']:.1f} / acc {d['silu']['capital_acc']:.3f}; "
                      f"ReLU swap without training ppl {d['relu (no fine-tuning)']['ppl']:.0f}; after "
                      f"{lm['relu_cost']['steps']} steps ({lm['relu_cost']['tokens']:,} tokens, "
                      f"{lm['relu_cost']['seconds']:.0f} s) ppl {d['relu']['ppl']:.1f} / acc "
                      f"{d['relu']['capital_acc']:.3f}",
             "columns": ["activation", "split", "router", "active", "perplexity", "capital acc", "seeds"],
             "rows": _table_rows(lm, lm_fmt)},
            {"title": "Router recall (mean over layers, held-out calibration tokens, 25% of experts)",
             "columns": ["model", "activation", "split", "router", "seed", "router", "random", "oracle"],
             "rows": recall_rows},
        ],
        "plots": plots,
        "details": {"minilm": cls, "smollm2": lm, "settings": {k: v for k, v in S.items()}},
        "notes": [
            "Active fractions are of experts per token (16 equal experts per FFN, so 12.5% = 2 experts); the "
            "magnitude (CATS) rows keep that fraction of individual neurons by a calibrated |act(gate)| "
            "threshold and compute the FFN densely: they measure quality only.",
            "Speed is measured separately: python benchmarks/moefication_speed.py (wall-clock, MoE vs dense).",
            f"MiniLM fine-tuning took {cls['cost']['gelu']:.0f} s (GELU) and {cls['cost']['relu']:.0f} s (ReLU).",
        ],
    }
