"""Recipe ``variator``: compression plugins on a fine-tuned MiniLM (and, in the full run, SmolLM2).

For each k, plugins are distilled from the unplugged model (backbone frozen) on the train texts, then
scored on held-out test texts; prefill FLOPs and wall-clock are measured side by side in this process,
beside the bound with the FFN share measured in the same run. Peer: ToMe-style token merging between
blocks (training-free), at the merge rate whose FLOPs come closest to the plugins' at k = 4.
Plugins are saved per k and seed, and re-loaded onto the same model to check the swap is exact.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from ..plugins import variator
from ..plugins.variator import VariatorConfig, tasks
from ..plugins.variator.measure import prefill_cost, token_merging_peer
from .registry import Budgets, RecipeContext, recipe
from .shared import ClassifierSettings, TopicSplit, topic_classifier


@dataclass(frozen=True)
class LMSettings:
    ks: tuple[int, ...] = (2, 4)
    hidden: int = 16  # SmolLM2 (d=576, 30 blocks): under 1% of its parameters
    steps: int = 100
    batch_size: int = 8
    lr: float = 1e-3
    loss: str = "logits"
    corpus_chars: int = 400_000
    n_test: int = 48
    max_length: int = 128


@dataclass(frozen=True)
class VariatorSettings:
    ks: tuple[int, ...]
    seeds: tuple[int, ...]
    steps: int  # distillation steps per plugin set
    classifier: ClassifierSettings
    n_test: int | None  # texts of each of validation and test (None: all)
    repeats: int  # interleaved timing repeats
    # (loss, exact_prefix, unlabeled fortunes added to the distillation text) candidates, chosen on validation
    grid: tuple[tuple[str, int, int], ...] = (("both", 1, 6000),)
    hidden: int = 24  # MiniLM (d=384): keeps the plugins under 1% of its parameters at k = 4
    batch_size: int = 16
    lr: float = 1e-3
    speed_batches: tuple[int, ...] = (1, 16)
    tome: bool = True
    lm: LMSettings | None = None


# quick: the ReLU-FFN classifier the moefication recipe's quick run fine-tunes, shared through plmkit.cache
QUICK = VariatorSettings(ks=(4,), seeds=(0,), steps=40, n_test=240, repeats=5,
                         classifier=ClassifierSettings(relu=True, steps=60, lr=3e-4, max_length=48))
FULL = VariatorSettings(ks=(2, 4, 8), seeds=(0, 1, 2), steps=600, n_test=None, repeats=15,
                        grid=(("hidden", 0, 0), ("both", 1, 0), ("both", 1, 6000)),
                        classifier=ClassifierSettings(steps=150), lm=LMSettings())


def _ms(xs: list[float], scale: float = 1.0, digits: int = 2) -> str:
    xs = [x * scale for x in xs]
    return f"{np.mean(xs):.{digits}f} ± {np.std(xs):.{digits}f}" if len(xs) > 1 else f"{xs[0]:.{digits}f}"


class _Plugins:
    """Distils plugin sets for the classifier, once per (k, loss, exact_prefix, unlabeled, seed), saved under
    the run."""

    def __init__(self, ctx: RecipeContext, S: VariatorSettings, model, tok, data: tasks.TaskData):
        self.ctx, self.S, self.model, self.tok, self.data = ctx, S, model, tok, data
        self.done: dict[tuple, dict[str, Any]] = {}

    def get(self, k: int, loss: str, prefix: int, unlabeled: int, seed: int) -> dict[str, Any]:
        """Plugs the set (training it the first time); returns its training record."""
        key = (k, loss, prefix, unlabeled, seed)
        if key in self.done:
            variator.load(self.model, self.done[key]["path"])
            return self.done[key]
        S, ctx = self.S, self.ctx
        cfg = VariatorConfig(k=k, hidden=S.hidden, loss=loss, exact_prefix=prefix,
                             extra={"task": "topics", "model": "minilm-topic-classifier"})
        with ctx.phase(f"distil k={k}"):
            t0 = time.perf_counter()
            data = replace(self.data, unlabeled=self.data.unlabeled[:unlabeled])
            res = tasks.train_plugins(self.model, self.tok, data, cfg, ctx.out_dir / "_train", steps=S.steps,
                                      batch_size=S.batch_size, lr=S.lr, seed=seed, progress=ctx.progress)
            seconds = time.perf_counter() - t0
        path = variator.save(self.model, ctx.out_dir / "plugins" / f"k{k}-{loss}-prefix{prefix}-u{unlabeled}-seed{seed}")
        n, share = variator.extra_parameters(self.model)
        self.done[key] = {"path": path, "loss_first": res.losses[0], "loss_last": res.losses[-1],
                          "train_s": seconds, "extra_params": n, "extra_share": share}
        return self.done[key]


def _classifier(ctx: RecipeContext, S: VariatorSettings) -> dict[str, Any]:
    split = TopicSplit(seed=ctx.seed)
    cs = replace(S.classifier, split=split)
    with ctx.phase("classifier (fine-tune or cache)"):
        model, tok, info = topic_classifier(cs, progress=ctx.progress)
    data = tasks.task_data("topics", max_length=cs.max_length, n_test=S.n_test, seed=split.seed,
                           unlabeled=max(g[2] for g in S.grid))
    with ctx.phase("evaluate plain"):
        plain = {s: tasks.evaluate(model, tok, data, s)["accuracy"] for s in ("validation", "test")}
    out: dict[str, Any] = {"plain": plain["test"], "plain_validation": plain["validation"], "rows": [], "speed": [],
                           "grid": [], "cache": info,
                           "n": {"train": len(data.train), "validation": len(data.validation), "test": len(data.test)}}
    plugins = _Plugins(ctx, S, model, tok, data)
    k_select = 4 if 4 in S.ks else S.ks[0]
    for loss, prefix, unlabeled in S.grid:
        rec = plugins.get(k_select, loss, prefix, unlabeled, S.seeds[0])
        with ctx.phase("evaluate plugged"):
            acc = tasks.evaluate(model, tok, data, "validation")["accuracy"]
        out["grid"].append({"k": k_select, "loss": loss, "exact_prefix": prefix, "unlabeled": unlabeled,
                            "validation_acc": acc, "loss_last": rec["loss_last"]})
        variator.detach(model)
    best = max(out["grid"], key=lambda g: g["validation_acc"])  # the first of equals, in grid order
    loss, prefix, unlabeled = best["loss"], best["exact_prefix"], best["unlabeled"]
    out["chosen"] = {"loss": loss, "exact_prefix": prefix, "unlabeled": unlabeled}
    out["n"]["unlabeled"] = len(data.unlabeled[:unlabeled])
    batches = {b: tasks.sample_batch(tok, data, b) for b in S.speed_batches}
    for k in S.ks:
        row: dict[str, Any] = {"k": k, "accuracy": [], "validation": [], "reloaded": [], "loss_first": [],
                               "loss_last": [], "train_s": []}
        for seed in S.seeds:
            rec = plugins.get(k, loss, prefix, unlabeled, seed)
            for name in ("loss_first", "loss_last", "train_s"):
                row[name].append(rec[name])
            row["extra_params"], row["extra_share"] = rec["extra_params"], rec["extra_share"]
            with ctx.phase("evaluate plugged"):
                row["accuracy"].append(tasks.evaluate(model, tok, data)["accuracy"])
                row["validation"].append(tasks.evaluate(model, tok, data, "validation")["accuracy"])
            if seed == S.seeds[0]:
                with ctx.phase("prefill cost"):
                    for batch in batches.values():
                        out["speed"].append(prefill_cost(model, batch, repeats=S.repeats).to_dict())
            variator.detach(model)
            variator.load(model, rec["path"])  # the saved plugins, swapped back onto the same model
            row["reloaded"].append(tasks.evaluate(model, tok, data)["accuracy"])
            variator.detach(model)
        out["rows"].append(row)
    if S.tome and 4 in S.ks:
        b = max(S.speed_batches)
        target = next(s["flops_plugged"] for s in out["speed"] if s["k"] == 4 and s["batch_size"] == b)
        with ctx.phase("token merging peer"):
            out["tome"] = token_merging_peer(model, tok, data.test, data.labels, data.max_length, batches[b], target,
                                             S.repeats)
    return out


def _lm(ctx: RecipeContext, S: LMSettings, seed: int) -> dict[str, Any]:
    with ctx.phase("SmolLM2"):
        model, tok, _ = tasks.load_task_model("text", "smollm2")
        data = tasks.task_data("text", max_length=S.max_length, n_test=S.n_test, corpus_chars=S.corpus_chars,
                               seed=seed)
        out: dict[str, Any] = {"plain": tasks.evaluate(model, tok, data)["ppl"], "rows": [], "speed": []}
        for k in S.ks:
            cfg = VariatorConfig(k=k, hidden=S.hidden, loss=S.loss, extra={"task": "text", "model": "smollm2"})
            res = tasks.train_plugins(model, tok, data, cfg, ctx.out_dir / "_train_lm", steps=S.steps,
                                      batch_size=S.batch_size, lr=S.lr, seed=seed, progress=ctx.progress)
            out["rows"].append({"k": k, "ppl": tasks.evaluate(model, tok, data)["ppl"], "losses": res.losses,
                                "extra_share": variator.extra_parameters(model)[1]})
            out["speed"].append(prefill_cost(model, tasks.sample_batch(tok, data, 8), repeats=5).to_dict())
            variator.save(model, ctx.out_dir / "plugins" / f"smollm2-k{k}")
            variator.detach(model)
    return out


def _plots(ctx: RecipeContext, cls: dict[str, Any]) -> list[str]:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ks = [r["k"] for r in cls["rows"]]
    acc = [np.mean(r["accuracy"]) for r in cls["rows"]]
    err = [np.std(r["accuracy"]) for r in cls["rows"]]
    axes[0].errorbar(ks, acc, yerr=err, marker="o", label="plugins (mean ± std over seeds)")
    axes[0].axhline(cls["plain"], color="k", ls="--", label="no plugins")
    if "tome" in cls:
        axes[0].scatter([4], [cls["tome"]["accuracy"]], marker="x", color="C3", label=f"token merging r={cls['tome']['r']}")
    axes[0].set(xlabel="k (tokens merged per group)", ylabel="test accuracy", title="Fortune topics, MiniLM",
                xscale="log", xticks=ks, xticklabels=[str(k) for k in ks])
    axes[0].legend(fontsize=8)
    for i, b in enumerate(sorted({s["batch_size"] for s in cls["speed"]})):
        cells = [s for s in cls["speed"] if s["batch_size"] == b]
        x = np.arange(len(cells)) + i * 0.38
        axes[1].bar(x, [s["speedup"] for s in cells], width=0.35, label=f"measured, batch {b}", color=f"C{i}")
        axes[1].scatter(x, [s["bound_time"] for s in cells], marker="_", s=400, color="k")
    axes[1].set(xticks=np.arange(len(ks)) + 0.19, xticklabels=[f"k={k}" for k in ks], ylabel="prefill speed-up",
                title="Wall-clock speed-up (bars) and bound (black ticks)")
    axes[1].legend(fontsize=8)
    return [ctx.save_figure(fig, "variator.png")]


@recipe(
    "variator",
    "Variator: compression plugins that run FFNs on k-times shorter sequences",
    system="variator",
    paper_claim="53% of the compute saved with 0.9% extra parameters and a performance drop under 2% (T5-base, "
                "seven datasets); plugins with different ratios swapped at run time by workload.",
    citation="Xiao et al., Variator: Accelerating Pre-trained Models with Plug-and-Play Compression Modules, "
             "Findings of EMNLP 2023",
    budgets=Budgets(quick=QUICK, full=FULL),
)
def run(ctx: RecipeContext) -> dict[str, Any]:
    S: VariatorSettings = ctx.settings
    torch.manual_seed(ctx.seed)
    cls = _classifier(ctx, S)
    lm = _lm(ctx, S.lm, ctx.seed) if S.lm else None
    import shutil

    for tmp in ("_train", "_train_lm"):
        shutil.rmtree(ctx.out_dir / tmp, ignore_errors=True)
    plain = cls["plain"]
    chosen = cls["chosen"]
    tables = [{
        "title": f"Settings chosen on validation (n={cls['n']['validation']}; no plugins: "
                 f"{cls['plain_validation']:.3f}): distillation loss x exact prefix x unlabeled text, k={cls['grid'][0]['k']}, "
                 f"seed {S.seeds[0]}",
        "columns": ["loss", "exact prefix", "unlabeled fortunes", "validation acc", "final distil loss", "chosen"],
        "rows": [[g["loss"], g["exact_prefix"], g["unlabeled"], f"{g['validation_acc']:.3f}", f"{g['loss_last']:.4f}",
                  "yes" if all(g[c] == chosen[c] for c in chosen) else ""]
                 for g in cls["grid"]]}, {
        "title": f"MiniLM fine-tuned on fortune topics (test n={cls['n']['test']}); plugins distilled for {S.steps} "
                 f"steps of {S.batch_size} on {cls['n']['train']} train texts + {cls['n']['unlabeled']} unlabeled fortunes of "
                 f"other categories, r={S.hidden}, loss {chosen['loss']}, exact prefix {chosen['exact_prefix']} (chosen "
                 f"on validation); no plugins: test accuracy {plain:.3f}",
        "columns": ["k", "test accuracy", "drop (points)", "validation accuracy", "reloaded from disk", "extra params",
                    "distil loss first -> last", "distil s", "seeds"],
        "rows": [[r["k"], _ms(r["accuracy"], digits=3), _ms([plain - a for a in r["accuracy"]], 100, 1),
                  _ms(r["validation"], digits=3),
                  _ms(r["reloaded"], digits=3), f"{r['extra_params']:,} ({r['extra_share']:.2%})",
                  f"{np.mean(r['loss_first']):.4f} -> {np.mean(r['loss_last']):.4f}", f"{np.mean(r['train_s']):.0f}",
                  len(r["accuracy"])] for r in cls["rows"]]}, {
        "title": "Prefill cost, plugged vs unplugged, measured side by side (FLOPs by torch's counter; wall-clock "
                 f"median of {S.repeats} interleaved runs); p_ffn = the FFNs' measured share",
        "columns": ["k", "batch", "tokens", "FLOPs saved", "p_ffn (FLOPs)", "p_ffn (time)", "speed-up", "bound (time)",
                    "plain ms", "plugged ms"],
        "rows": [[s["k"], s["batch_size"], s["tokens"], f"{s['flops_saved']:.1%}", f"{s['p_ffn_flops']:.3f}",
                  f"{s['p_ffn_time']:.3f}", f"{s['speedup']:.2f}x", f"{s['bound_time']:.2f}x", f"{s['plain_ms']:.1f}",
                  f"{s['plugged_ms']:.1f}"] for s in cls["speed"]]}]
    measured: dict[str, float] = {"minilm.plain_acc": plain}
    for r in cls["rows"]:
        measured[f"minilm.k{r['k']}.acc"] = float(np.mean(r["accuracy"]))
        measured[f"minilm.k{r['k']}.drop_points"] = float(100 * (plain - np.mean(r["accuracy"])))
        measured[f"minilm.k{r['k']}.extra_share"] = r["extra_share"]
    for s in cls["speed"]:
        measured[f"minilm.k{s['k']}.b{s['batch_size']}.speedup"] = s["speedup"]
        measured[f"minilm.k{s['k']}.b{s['batch_size']}.bound"] = s["bound_time"]
        measured[f"minilm.k{s['k']}.b{s['batch_size']}.flops_saved"] = s["flops_saved"]
    if "tome" in cls:
        t = cls["tome"]
        tables.append({"title": "Peer: token merging between blocks (training-free), r chosen to match the plugins' "
                                "FLOPs at k = 4 on the batch-16 prefill",
                       "columns": ["r per block", "accuracy", "drop (points)", "FLOPs", "speed-up (batch 16)"],
                       "rows": [[t["r"], f"{t['accuracy']:.3f}", f"{100 * (plain - t['accuracy']):.1f}",
                                 f"{t['flops']:,}", f"{t['speedup']:.2f}x"]]})
        measured["tome.acc"], measured["tome.speedup"] = t["accuracy"], t["speedup"]
    if lm:
        tables.append({"title": f"SmolLM2-135M, causal plugins distilled on logits (KL) for {S.lm.steps} steps, "
                                f"perplexity on {S.lm.n_test} held-out passages (no plugins: {lm['plain']:.2f})",
                       "columns": ["k", "perplexity", "ratio to plain", "extra params", "prefill speed-up (batch 8)",
                                   "bound"],
                       "rows": [[r["k"], f"{r['ppl']:.2f}", f"{r['ppl'] / lm['plain']:.3f}", f"{r['extra_share']:.2%}",
                                 f"{s['speedup']:.2f}x", f"{s['bound_time']:.2f}x"]
                                for r, s in zip(lm["rows"], lm["speed"])]})
        measured["smollm2.plain_ppl"] = lm["plain"]
        for r in lm["rows"]:
            measured[f"smollm2.k{r['k']}.ppl"] = r["ppl"]
    head = next((s for s in cls["speed"] if s["k"] == 4 and s["batch_size"] == max(S.speed_batches)), None)
    headline = {
        "metric": "MiniLM k=4: prefill speed-up (batch 16) / accuracy drop (points) / extra parameters",
        "ours": (f"{head['speedup']:.2f}x (bound {head['bound_time']:.2f}x) / "
                 f"{measured['minilm.k4.drop_points']:.1f} / {measured['minilm.k4.extra_share']:.2%}") if head else "-",
        "paper": "53% compute saved / < 2 / 0.9%",
        "peer": (f"token merging r={cls['tome']['r']}: {cls['tome']['speedup']:.2f}x, drop "
                 f"{100 * (plain - cls['tome']['accuracy']):.1f}") if "tome" in cls else "-",
    }
    notes = [
        "Plugins wrap every FFN of MiniLM (6 blocks); the backbone is frozen and the distillation teacher is the "
        "same model with the plugins bypassed (loss 'hidden': MSE on the last hidden states, padding excluded; "
        "'logits': KL of the class distributions; 'both': their sum). 'exact prefix 1' runs the [CLS] position's "
        "FFN uncompressed (the classifier reads that token) and groups the rest. Distillation needs no labels, so "
        "fortunes of the other (non-topic) categories can be added to the distillation text; none equals a "
        "validation or test text.",
        "Accuracy is on the stratified test split; the classifier and the plugins were trained on the train split "
        "only, and the loss / exact-prefix / unlabeled-text setting was chosen on the validation split, never on "
        "test.",
        "The bound is 1/(1 - p_ffn (1 - 1/k)) with p_ffn timed in the same run (the model against itself with its "
        "FFNs replaced by zeros); the plugins' own work (scoring, decompression) is what keeps measured below it.",
        "Cache: topic classifier " + ("hit" if cls["cache"].get("hit") else "built") + ".",
    ]
    if ctx.quick:
        notes.insert(0, f"Quick run: k={'/'.join(map(str, S.ks))}, {len(S.seeds)} seed, {S.steps} distillation steps, "
                        f"test n={cls['n']['test']}, the ReLU-FFN MiniLM classifier of the moefication recipe (fine-tuned once, "
                        "shared through the cache), no SmolLM2; the full run (GELU classifier) adds k=2/8, 3 seeds, {FULL.steps} steps, a "
                        "settings grid chosen on validation and SmolLM2 perplexity.")
    return {"measured": measured, "headline": headline, "tables": tables, "plots": _plots(ctx, cls),
            "cache": {"minilm-topic-classifier": cls["cache"]}, "details": {"minilm": cls, "smollm2": lm},
            "notes": notes}
