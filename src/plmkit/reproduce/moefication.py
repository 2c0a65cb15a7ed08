"""Recipe ``moefication``: how much quality MoEfied FFNs keep, on real models and real data.

- MiniLM fine-tuned on fortune topics (real English text, 4 classes): accuracy retained.
- Full run only: SmolLM2-135M, perplexity on held-out real text and zero-shot capital-city cloze accuracy;
  then the selected MoEfication trained end to end (experts and routers, :func:`train_moe`) at 50% and 25%
  active, with the training cost.
For each split (balanced k-means, co-activation) x router (MLP, similarity) x activation treatment
(original GELU/SiLU, ReLU-fied + short fine-tuning; for SmolLM2 only with ``lm_relu``, which the full budget
leaves off), at several active fractions of experts; and
CATS-style neuron magnitude masks at the same fractions (quality only, no speed path).

Honest selection: the best split x router per active fraction is chosen on a validation split and
reported on a separate test split (MiniLM: stratified fortune splits; SmolLM2: disjoint halves of the
held-out passages and of the capital facts). The fine-tuned classifiers and the ReLU-fied SmolLM2 come
from :mod:`plmkit.cache` (see :mod:`plmkit.reproduce.shared`).
"""
from __future__ import annotations

import copy
import shutil
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from ..compress.moefication import (MoEficationConfig, load_moefication, moefy, relufy, save_moefication,
                                   set_selection)
from ..compress.moefication.relu import magnitude_mask, remove_magnitude_mask
from ..data import geonames, text, token_batches
from ..eval import accuracy, next_token_accuracy, perplexity
from ..train.classify import predict_labels
from .registry import Budgets, RecipeContext, recipe
from .shared import (TOPICS, ClassifierSettings, ReluLMSettings, TopicSplit, fortune_topics, relufied_lm,
                     topic_classifier)

EXPERTS = 16


@dataclass(frozen=True)
class MoETrainSettings:
    """End-to-end training of the selected SmolLM2 MoEfication (experts and routers, the rest frozen)."""

    fractions: tuple[float, ...] = (0.5, 0.25)
    steps: int = 500
    batch_size: int = 8
    lr: float = 1e-4
    max_length: int = 128


CHECKPOINT_EVERY = 50  # training steps between checkpoints (not a setting: results do not depend on it)
GRID = (("kmeans", "mlp"), ("kmeans", "similarity"), ("coactivation", "mlp"), ("coactivation", "similarity"))
CATS = "magnitude (CATS)"


@dataclass(frozen=True)
class MoEficationSettings:
    seeds: tuple[int, ...]  # MoEfication seeds (split and router initialisation)
    fractions: tuple[float, ...]  # active fractions of experts evaluated
    treatments: tuple[str, ...]  # MiniLM: "gelu" (as shipped) and/or "relu" (ReLU-fied before fine-tuning)
    classifier_steps: int
    classifier_lr: float
    max_length: int
    n_validation: int | None  # MiniLM texts used for selection / for the reported numbers (None: all)
    n_test: int | None
    router_steps: int
    calib_tokens: int
    grid: tuple[tuple[str, str], ...] = GRID
    smollm2: bool = False  # the SmolLM2 part (perplexity and capital cloze)
    lm_chars: int = 1_000_000
    lm_held: int = 96  # held-out passages, half for validation, half for test
    zs: int = 200  # capital facts, half for validation, half for test
    relu_lm: ReluLMSettings = field(default_factory=lambda: ReluLMSettings(steps=400, batch_size=8,
                                                                          corpus_chars=1_000_000))
    lm_relu: bool = True  # SmolLM2 part: also the ReLU-fied SmolLM2 (``relu_lm`` fine-tune) and its grid
    lm_grid: tuple[tuple[str, str], ...] = GRID
    moe_train: MoETrainSettings | None = None  # SmolLM2 part: train the selected MoEfication (None: skipped)


QUICK = MoEficationSettings(seeds=(0,), fractions=(0.125, 0.25), treatments=("relu",), classifier_steps=60,
                            classifier_lr=3e-4, max_length=48, n_validation=120, n_test=240, router_steps=60,
                            calib_tokens=1024, grid=(("kmeans", "mlp"), ("kmeans", "similarity"),
                                                     ("coactivation", "mlp")))
FULL = MoEficationSettings(seeds=(0, 1, 2), fractions=(0.125, 0.25, 0.5), treatments=("gelu", "relu"),
                           classifier_steps=400, classifier_lr=1e-4, max_length=128, n_validation=None, n_test=None,
                           router_steps=400,
                           calib_tokens=8192, smollm2=True, moe_train=MoETrainSettings(),
                           lm_relu=False)  # --set lm_relu=true: + a 400-step SmolLM2 fine-tune and 12 grid cells


def _mean(xs: list[float]) -> float:
    return float(np.mean(xs))


def _ms(xs: list[float]) -> str:
    return f"{np.mean(xs):.3f} ± {np.std(xs):.3f}" if len(xs) > 1 else f"{xs[0]:.3f}"


def _grid(base, tok, calib_texts: list[str], S: MoEficationSettings, grid, evaluate: dict[str, Callable],
          treatment: str, pick: Callable[[dict], float], ctx: RecipeContext,
          save_name: str, base_id: Any) -> tuple[list[dict], list[dict]]:
    """MoEfy copies of ``base`` per split x router x seed and score each on validation at every fraction
    (each MoEfication is saved under ``ctx.out_dir / save_name``; each cell is a resumable step, ``base_id``
    identifying ``base``); then re-load only the config chosen on validation (highest mean ``pick``) and score
    it on test."""
    val: dict[tuple[str, str], dict[float, list[dict]]] = {}
    recalls = []
    save_dir = ctx.out_dir / save_name
    for split, router in grid:
        val[(split, router)] = {f: [] for f in S.fractions}
        for seed in S.seeds:
            cell = f"{treatment}-{split}-{router}-seed{seed}"

            def fit(split=split, router=router, seed=seed, cell=cell) -> dict[str, Any]:
                m = copy.deepcopy(base)
                cfg = MoEficationConfig(experts=EXPERTS, split=split, router=router, active=0.25,
                                        router_steps=S.router_steps, calibration_tokens=S.calib_tokens)
                with ctx.phase("moefy"):
                    rep = moefy(m, cfg, calibration=token_batches(tok, calib_texts, 8, 128), seed=seed,
                                progress=ctx.progress)
                scores = []
                for f in S.fractions:
                    set_selection(m, active=f)
                    with ctx.phase("evaluate validation"):
                        scores.append(evaluate["validation"](m))
                save_moefication(m, save_dir / cell)
                recall = {"treatment": treatment, "split": split, "router": router, "seed": seed,
                          "layers": [l.__dict__ for l in rep.layers], "router_recall": rep.mean("router_recall"),
                          "random_recall": rep.mean("random_recall"), "oracle_recall": rep.mean("oracle_recall")}
                return {"recall": recall, "validation": scores}

            done = ctx.resumable(f"{save_name}-{cell}", fit, base=base_id)
            if not (save_dir / cell).is_dir():  # stored step, but its saved MoEfication is gone: fit again
                done = fit()
            recalls.append(done["recall"])
            for f, score in zip(S.fractions, done["validation"]):
                val[(split, router)][f].append(score)
    rows = []
    for f in S.fractions:
        best = max(val, key=lambda c: _mean([pick(s) for s in val[c][f]]))
        for (split, router), by_f in val.items():
            test = []
            if (split, router) == best:
                for seed in S.seeds:
                    cell = f"{treatment}-{split}-{router}-seed{seed}"

                    def score(cell=cell, f=f) -> dict[str, Any]:
                        m = load_moefication(copy.deepcopy(base), save_dir / cell)
                        set_selection(m, active=f)
                        with ctx.phase("evaluate test"):
                            return evaluate["test"](m)

                    test.append(ctx.resumable(f"{save_name}-{cell}-test-{f:g}", score, base=base_id))
            rows.append({"treatment": treatment, "split": split, "router": router, "active": f,
                         "validation": by_f[f], "test": test, "selected": (split, router) == best})
    return rows, recalls


def _magnitude_rows(model, tok, calib_texts, S: MoEficationSettings, evaluate, treatment,
                    ctx: RecipeContext, base_id: Any) -> list[dict]:
    """CATS-style neuron masks (no choice to make, so validation and test are both reported); one resumable
    step."""
    def rows() -> list[dict]:
        out = []
        with ctx.phase("CATS masks"):
            for f in S.fractions:
                magnitude_mask(model, f, token_batches(tok, calib_texts, 8, 128), max_tokens=S.calib_tokens)
                out.append({"treatment": treatment, "split": "neurons", "router": CATS, "active": f,
                            "validation": [evaluate["validation"](model)], "test": [evaluate["test"](model)],
                            "selected": False})
                remove_magnitude_mask(model)
        return out

    return ctx.resumable(f"cats-{treatment}", rows, base=base_id)


def train_selected(base, tok, moefication_dir, active: float, texts: list[str], settings: MoETrainSettings,
                   evaluate: dict[str, Callable], out_dir, *, seed: int = 0, progress: bool = False) -> dict[str, Any]:
    """A saved MoEfication loaded on a copy of ``base`` at ``active``, scored, trained end to end on ``texts``
    (experts and routers) and scored again; with the training cost (seconds, real tokens, summed over a resume).
    The training checkpoints in ``out_dir`` every ``CHECKPOINT_EVERY`` steps and continues from there when
    called again (``resumed_from``: the step it continued from, 0 for one uninterrupted run)."""
    from ..compress.moefication import train_moe
    from ..train import TrainConfig

    m = load_moefication(copy.deepcopy(base), moefication_dir)
    set_selection(m, active=active)
    before = {k: f(m) for k, f in evaluate.items()}
    result = train_moe(m, tok, texts, TrainConfig(out_dir=str(out_dir), max_steps=settings.steps,
                                                  batch_size=settings.batch_size, lr=settings.lr,
                                                  warmup_steps=max(1, settings.steps // 10), seed=seed,
                                                  save_every=CHECKPOINT_EVERY, keep_checkpoints=1,
                                                  mixed_precision="no", progress=progress),
                       max_length=settings.max_length)
    after = {k: f(m) for k, f in evaluate.items()}
    del m
    return {"active": active, "steps": result.step, "resumed_from": result.resumed_from,
            "seconds": result.totals.get("seconds"),
            "tokens": int(result.totals.get("tokens", 0)), "precision": result.mixed_precision,
            "loss_first": result.losses[0], "loss_last": result.losses[-1], "before": before, "after": after}


def _scores(ctx: RecipeContext, name: str, model, evaluate: dict[str, Callable], base_id: Any) -> dict[str, Any]:
    """``model`` scored on validation and test, as a resumable step (``base_id`` identifies the model)."""
    return ctx.resumable(name, lambda: {k: f(model) for k, f in evaluate.items()}, base=base_id)


def _cls_accuracy(model, tok, rows: list[dict], max_length: int) -> dict[str, float]:
    """Accuracy, and the share of the most predicted class (near 1 = the model collapsed to one class)."""
    preds = predict_labels(model, tok, [r["text"] for r in rows], max_length=max_length)
    return {"acc": accuracy(preds, [r["label"] for r in rows]),
            "top_class_share": float(max(np.bincount(preds)) / len(preds))}


def _minilm(ctx: RecipeContext, S: MoEficationSettings) -> dict[str, Any]:
    split = TopicSplit(seed=ctx.seed)
    data = fortune_topics(split)
    val, test = data["validation"][:S.n_validation], data["test"][:S.n_test]
    out: dict[str, Any] = {"rows": [], "recalls": [], "dense": {}, "cache": {},
                           "n": {"train": len(data["train"]), "validation": len(val), "test": len(test)}}
    calib = [r["text"] for r in data["train"]]
    for treatment in S.treatments:
        cs = ClassifierSettings(relu=treatment == "relu", steps=S.classifier_steps, lr=S.classifier_lr,
                                max_length=S.max_length, split=split)
        with ctx.phase("classifier (fine-tune or cache)"):
            model, tok, info = topic_classifier(cs, progress=ctx.progress)
        out["cache"][f"minilm-{treatment}"] = info
        evaluate = {"validation": lambda m: _cls_accuracy(m, tok, val, S.max_length),
                    "test": lambda m: _cls_accuracy(m, tok, test, S.max_length)}
        with ctx.phase("evaluate dense"):
            out["dense"][treatment] = _scores(ctx, f"dense-{treatment}", model, evaluate, info["key"])
        rows, recalls = _grid(model, tok, calib, S, S.grid, evaluate, treatment, lambda s: s["acc"], ctx,
                              "moefications", info["key"])
        out["rows"] += rows + _magnitude_rows(model, tok, calib, S, evaluate, treatment, ctx, info["key"])
        out["recalls"] += recalls
    return out


def _smollm2(ctx: RecipeContext, S: MoEficationSettings) -> dict[str, Any]:
    from ..assets import load_model
    from ..cache import model_identity

    model, tok = load_model("smollm2")
    corpus = text.english_corpus(max_chars=S.lm_chars, seed=ctx.seed)
    calib, held = corpus[::2], corpus[1::2][: S.lm_held]
    facts = geonames.capital_facts(S.zs, ctx.seed)
    parts = {"validation": (held[0::2], facts[0::2]), "test": (held[1::2], facts[1::2])}

    def scorer(passages, fs):
        prompts, answers = geonames.capital_cloze(fs)
        return lambda m: {"ppl": perplexity(m, token_batches(tok, passages, 8, 128)),
                          "capital_acc": next_token_accuracy(m, tok, prompts, answers)}

    evaluate = {k: scorer(*v) for k, v in parts.items()}
    pick = lambda s: -s["ppl"]  # noqa: E731
    base_id = model_identity("smollm2")
    out: dict[str, Any] = {"rows": [], "recalls": [], "cache": {},
                           "dense": {"silu": _scores(ctx, "dense-lm-silu", model, evaluate, base_id)}}
    rows, recalls = _grid(model, tok, calib, S, S.lm_grid, evaluate, "silu", pick, ctx, "moefications-lm", base_id)
    out["rows"] += rows + _magnitude_rows(model, tok, calib, S, evaluate, "silu", ctx, base_id)
    out["recalls"] += recalls
    if S.moe_train is not None:
        out["trained"] = []
        for f in S.moe_train.fractions:
            best = _selected_row(out, "silu", f)
            cell = f"silu-{best['split']}-{best['router']}-seed0"
            name, inputs = f"moe-train-{f:g}", {"base": base_id, "moefication": cell}
            work = ctx.partial_dir(name, **inputs)  # checkpoints: a stopped run continues the training
            with ctx.phase("MoE training (experts and routers)"):
                out["trained"].append(ctx.resumable(name, lambda cell=cell, f=f, work=work: train_selected(
                    model, tok, ctx.out_dir / "moefications-lm" / cell, f, calib, S.moe_train, evaluate,
                    work, seed=ctx.seed, progress=ctx.progress), **inputs))
            shutil.rmtree(work / "checkpoints", ignore_errors=True)  # stored: its checkpoints are not needed
            out["trained"][-1].update(split=best["split"], router=best["router"])
    if not S.lm_relu:
        return out
    out["dense"]["relu (no fine-tuning)"] = _scores(ctx, "dense-lm-relu-swap", relufy(copy.deepcopy(model)),
                                                     evaluate, base_id)
    with ctx.phase("ReLU-fied SmolLM2 (fine-tune or cache)"):
        relu, _, info = relufied_lm(S.relu_lm, progress=ctx.progress)
    out["cache"]["smollm2-relu"] = info
    out["relu_cost"] = info["built_with"]
    out["dense"]["relu"] = _scores(ctx, "dense-lm-relu", relu, evaluate, info["key"])
    rows, recalls = _grid(relu, tok, calib, S, S.lm_grid, evaluate, "relu", pick, ctx, "moefications-lm",
                          info["key"])
    out["rows"] += rows
    out["recalls"] += recalls
    return out


def _plots(ctx: RecipeContext, cls: dict, lm: dict | None) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(cls, lambda s, t: s["acc"] / cls["dense"][t]["validation"]["acc"],
               "MiniLM fortune topics: validation accuracy retained")]
    if lm:
        panels += [(lm, lambda s, t: s["ppl"], "SmolLM2: validation perplexity (log)"),
                   (lm, lambda s, t: s["capital_acc"] / max(lm["dense"]["silu"]["validation"]["capital_acc"], 1e-9),
                    "SmolLM2: capital cloze accuracy retained (validation, vs dense SiLU)")]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, (res, metric, title) in zip(axes[0], panels):
        groups: dict[str, list[dict]] = {}
        for r in res["rows"]:
            groups.setdefault(f"{r['treatment']} {r['split']}/{r['router']}", []).append(r)
        for label, rs in groups.items():
            vals = [[metric(s, r["treatment"]) for s in r["validation"]] for r in rs]
            ax.errorbar([r["active"] for r in rs], [np.mean(v) for v in vals], yerr=[np.std(v) for v in vals],
                        marker="o", capsize=3, ls="--" if label.startswith("relu") else "-", label=label)
        ax.set(title=title, xlabel="active fraction of FFN", xticks=sorted({r["active"] for r in res["rows"]}))
        ax.title.set_fontsize(9)
        ax.legend(fontsize=6)
    axes[0][0].axhline(0.95, color="grey", ls=":", lw=0.8)
    if lm:
        axes[0][1].set_yscale("log")
    ctx.save_figure(fig, "retained_performance.png")

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, res in (("MiniLM", cls), ("SmolLM2", lm)):
        if not res:
            continue
        for rec in res["recalls"]:
            if rec["seed"] == 0 and rec["split"] == "kmeans":
                ax.plot([l["router_recall"] for l in rec["layers"]], marker=".",
                        label=f"{name} {rec['treatment']} {rec['router']} router (seed 0)")
        ax.plot([l["oracle_recall"] for l in res["recalls"][0]["layers"]], "k:", lw=0.8)
    ax.axhline(0.25, color="grey", ls="--", lw=0.8, label="random router (k/E = 0.25)")
    ax.set(title="router recall per layer: share of activation mass in the chosen 25% of experts (dotted: oracle)",
           xlabel="layer", ylabel="recall", ylim=(0, 1))
    ax.title.set_fontsize(8)
    ax.legend(fontsize=6)
    ctx.save_figure(fig, "router_recall.png")
    return ["retained_performance.png", "router_recall.png"]


def _selected_row(res: dict, treatment: str, f: float) -> dict | None:
    """The row of the split x router layout chosen on validation (its test scores are reported, never compared)."""
    return next((r for r in res["rows"] if r["treatment"] == treatment and r["active"] == f and r["selected"]), None)


@recipe(
    "moefication",
    "MoEfication: FFNs as mixtures of experts, quality kept at each active fraction",
    system="moefication",
    paper_claim="Using 10-30% of FFN parameters keeps over 95% of the original performance (ReLU T5/BERT); "
                "about 2x inference speed-up with 25% of FFN parameters (FLOPs).",
    citation="Zhang et al., MoEfication: Transformer Feed-forward Layers are Mixtures of Experts, Findings of ACL 2022",
    budgets=Budgets(quick=QUICK, full=FULL),
)
def run(ctx: RecipeContext) -> dict[str, Any]:
    S: MoEficationSettings = ctx.settings
    torch.manual_seed(ctx.seed)
    cls = _minilm(ctx, S)
    lm = _smollm2(ctx, S) if S.smollm2 else None
    plots = _plots(ctx, cls, lm)

    def cls_cells(r):
        d = cls["dense"][r["treatment"]]
        val = [s["acc"] for s in r["validation"]]
        test = [s["acc"] for s in r["test"]]
        return [_ms(val), _ms(test) if test else "", _ms([t / d["test"]["acc"] for t in test]) if test else "",
                _ms([s["top_class_share"] for s in r["test"]]) if test else ""]

    def lm_cells(r):
        return [_ms([s["ppl"] for s in r["validation"]]), _ms([s["ppl"] for s in r["test"]]) if r["test"] else "",
                _ms([s["capital_acc"] for s in r["test"]]) if r["test"] else ""]

    def table_rows(res, cells):
        return [[r["treatment"], r["split"], r["router"], f"{r['active']:.1%}",
                 "yes" if r["selected"] else ("-" if r["router"] == CATS else ""), *cells(r), len(r["validation"])]
                for r in res["rows"]]

    n = cls["n"]
    dense = cls["dense"]
    tables = [{
        "title": f"MiniLM fine-tuned on fortune topics ({len(TOPICS)} classes: {', '.join(TOPICS)}; "
                 f"{S.classifier_steps} steps of 16 on {n['train']} train texts); {EXPERTS} experts per FFN; split x "
                 f"router chosen per fraction on validation (n={n['validation']}), reported on test (n={n['test']}); "
                 "dense test accuracy " + ", ".join(f"{t} {d['test']['acc']:.3f}" for t, d in dense.items()),
        "columns": ["activation", "split", "router", "active", "selected on validation", "validation acc",
                    "test acc", "test retained", "test top class share", "seeds"],
        "rows": table_rows(cls, cls_cells)}]
    if lm:
        d = lm["dense"]
        tables.append({
            "title": f"SmolLM2-135M: perplexity ({S.lm_held // 2} validation / {S.lm_held - S.lm_held // 2} test "
                     f"passages) and capital cloze accuracy (test n={S.zs - S.zs // 2}); dense SiLU test ppl "
                     f"{d['silu']['test']['ppl']:.1f} / acc {d['silu']['test']['capital_acc']:.3f}"
                     + (f"; ReLU swap without training ppl {d['relu (no fine-tuning)']['test']['ppl']:.0f}; after "
                        f"{S.relu_lm.steps} steps ({lm['relu_cost'].get('tokens', 0):,} tokens) ppl "
                        f"{d['relu']['test']['ppl']:.1f} / acc {d['relu']['test']['capital_acc']:.3f}"
                        if S.lm_relu else ""),
            "columns": ["activation", "split", "router", "active", "selected on validation", "validation ppl",
                        "test ppl", "test capital acc", "seeds"],
            "rows": table_rows(lm, lm_cells)})
    if lm and lm.get("trained"):
        d = lm["dense"]["silu"]["test"]
        tables.append({
            "title": f"SmolLM2 MoEfication (the split x router selected on validation, seed 0) trained end to end: "
                     f"experts and routers, {S.moe_train.steps} steps of {S.moe_train.batch_size} x "
                     f"{S.moe_train.max_length} tokens at lr {S.moe_train.lr:g} on the calibration half of the corpus, "
                     f"the rest frozen; dense SiLU test ppl {d['ppl']:.1f}, capital acc {d['capital_acc']:.3f}",
            "columns": ["active", "split", "router", "test ppl before", "test ppl after", "after / dense",
                        "capital acc before", "capital acc after", "tokens", "seconds", "precision"],
            "rows": [[f"{t['active']:.0%}", t["split"], t["router"], f"{t['before']['test']['ppl']:.1f}",
                      f"{t['after']['test']['ppl']:.1f}", f"{t['after']['test']['ppl'] / d['ppl']:.3f}",
                      f"{t['before']['test']['capital_acc']:.3f}", f"{t['after']['test']['capital_acc']:.3f}",
                      f"{t['tokens']:,}", f"{t['seconds']:.0f}", t["precision"]] for t in lm["trained"]]})
    tables.append({
        "title": "Router recall (mean over layers, held-out calibration tokens, 25% of experts)",
        "columns": ["model", "activation", "split", "router", "seed", "router", "random", "oracle"],
        "rows": [[name, r["treatment"], r["split"], r["router"], r["seed"], round(r["router_recall"], 3),
                  round(r["random_recall"], 3), round(r["oracle_recall"], 3)]
                 for name, res in (("MiniLM", cls), ("SmolLM2", lm)) if res for r in res["recalls"]]})

    measured: dict[str, float] = {}
    for t in S.treatments:
        measured[f"minilm.{t}.dense_test_acc"] = dense[t]["test"]["acc"]
        for f in S.fractions:
            best = _selected_row(cls, t, f)
            measured[f"minilm.{t}.selected_test_retained@{f:g}"] = (
                _mean([s["acc"] for s in best["test"]]) / dense[t]["test"]["acc"])
            cats = next(r for r in cls["rows"] if r["treatment"] == t and r["active"] == f and r["router"] == CATS)
            measured[f"minilm.{t}.cats_test_retained@{f:g}"] = cats["test"][0]["acc"] / dense[t]["test"]["acc"]
    if lm:
        measured["smollm2.dense_test_ppl"] = lm["dense"]["silu"]["test"]["ppl"]
        if S.lm_relu:
            measured["smollm2.relu_ft_test_ppl"] = lm["dense"]["relu"]["test"]["ppl"]
        for t in ("silu", "relu") if S.lm_relu else ("silu",):
            for f in S.fractions:
                best = _selected_row(lm, t, f)
                measured[f"smollm2.{t}.selected_test_ppl@{f:g}"] = _mean([s["ppl"] for s in best["test"]])
        for t in lm.get("trained", []):
            measured[f"smollm2.trained.test_ppl@{t['active']:g}"] = t["after"]["test"]["ppl"]
            measured[f"smollm2.trained.ppl_vs_dense@{t['active']:g}"] = (t["after"]["test"]["ppl"]
                                                                         / lm["dense"]["silu"]["test"]["ppl"])
            measured[f"smollm2.trained.capital_acc@{t['active']:g}"] = t["after"]["test"]["capital_acc"]
    head_t = "relu" if "relu" in S.treatments else S.treatments[0]
    f_head = 0.25 if 0.25 in S.fractions else S.fractions[0]
    best = _selected_row(cls, head_t, f_head)
    headline = {
        "metric": f"MiniLM ({head_t}) test accuracy retained, {f_head:.0%} of experts (config chosen on validation)",
        "ours": round(measured[f"minilm.{head_t}.selected_test_retained@{f_head:g}"], 3),
        "paper": "> 0.95 with 10-30% of FFN parameters",
        "peer": f"CATS-style magnitude mask {measured[f'minilm.{head_t}.cats_test_retained@{f_head:g}']:.3f}",
    }
    caches = {**cls["cache"], **(lm["cache"] if lm else {})}
    notes = [
        "Selection: for each activation and active fraction, the split x router with the best mean validation "
        "score (accuracy; perplexity for SmolLM2; ties go to the first in grid order) is marked 'yes' and is the "
        "only one scored on test; validation and test are disjoint, stratified splits, and the classifiers were "
        "trained on neither.",
        f"Chosen at {f_head:.0%} ({head_t}): {best['split']}/{best['router']}.",
        "Active fractions are of experts per token (16 equal experts per FFN, so 12.5% = 2 experts); the "
        "magnitude (CATS) rows keep that fraction of individual neurons by a calibrated |act(gate)| "
        "threshold and compute the FFN densely: they measure quality only.",
        "Speed is measured separately: python benchmarks/moefication_speed.py (wall-clock, MoE vs dense).",
        "Cache: " + "; ".join(f"{k} {'hit' if v['hit'] else 'built'} (key {v['key'][:12]}, trained in "
                              f"{v['built_with'].get('train_seconds', '?')} s when built)" for k, v in caches.items()),
    ]
    if ctx.quick:
        notes.insert(0, f"Quick run: {'/'.join(S.treatments)} MiniLM only, {S.classifier_steps} fine-tuning steps, "
                        f"{len(S.grid)} split x router configs, {len(S.seeds)} seed, fractions "
                        f"{', '.join(f'{f:.1%}' for f in S.fractions)}, validation n={n['validation']}, test "
                        f"n={n['test']}; the full run adds GELU, co-activation/similarity, 3 seeds, 50% and SmolLM2.")
    return {
        "measured": measured, "headline": headline, "tables": tables, "plots": plots, "cache": caches,
        "details": {"minilm": cls, "smollm2": lm},
        "notes": notes,
    }
