"""Recipe ``modularity``: functional experts in MiniLM (and, in the full run, SmolLM2), and their emergence.

Sub-functions (:mod:`plmkit.data.functions`): WordNet word senses, knowledge relations rendered as sentences
(geonames, WordNet), and the binary tasks. Each neuron's predictivity for a function is max(AP(y, a), AP(1 - y, a))
of its max-pooled activation. Experts are MoEfication's balanced k-means partition of each layer, a co-activation
partition, and a random partition of the same sizes; an expert is functional for a function when it holds
significantly many of the function's top-1% neurons (one-sided hypergeometric test, p <= 0.001). Perturbation:
a function's functional experts shuffled x 4 against random experts and the same number of top neurons, scored by
a linear probe on the last hidden state, for that function and the others. Emergence: a small BERT pretrained
here with masked-token prediction, scored at evenly spaced steps of its run.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..analysis import modularity as mod
from ..data.functions import BinaryFunction, all_functions
from .registry import Budgets, RecipeContext, recipe


@dataclass(frozen=True)
class PretrainSettings:
    """The small masked LM pretrained for the emergence curve (MiniLM's tokenizer)."""

    layers: int = 4
    hidden: int = 256
    ffn: int = 1024
    heads: int = 4
    steps: int = 1200
    every: int = 100  # score the functions every this many steps
    batch_size: int = 32
    lr: float = 5e-4
    max_length: int = 64
    corpus_chars: int = 2_000_000
    corpus: str = "english"  # english: every English text asset (plmkit.data.text.english_corpus); fortunes
    functions: int = 60  # functions scored along the run (an even spread over the kinds)
    experts: int = 32  # k-means experts of the final model


@dataclass(frozen=True)
class ModularitySettings:
    models: tuple[str, ...]
    experts: int  # experts per layer (MoEfication-style balanced partition)
    max_words: int  # word-sense functions: polysemous words
    max_per_relation: int
    max_per_task: int
    perturb_functions: int  # functions (per kind, with functional experts) perturbed
    perturb_seeds: tuple[int, ...]
    coactivation_texts: int
    pretrain: PretrainSettings | None
    perturb_models: tuple[str, ...] = ("minilm",)  # models whose functional experts are perturbed (the costly part)
    top: float = 0.01
    alpha: float = 0.001
    sense: str = "lexname"  # word senses grouped by WordNet supersense (more examples per sense)
    max_length: int = 64


QUICK = ModularitySettings(models=("minilm",), experts=32, max_words=12, max_per_relation=40, max_per_task=80,
                           perturb_functions=1, perturb_seeds=(0,), coactivation_texts=100,
                           pretrain=PretrainSettings(steps=30, every=10, batch_size=16, corpus_chars=100_000, corpus="fortunes",
                                                    functions=12))
FULL = ModularitySettings(models=("minilm", "smollm2"), experts=32, max_words=80, max_per_relation=150,
                          max_per_task=300, perturb_functions=2, perturb_seeds=(0, 1, 2), coactivation_texts=400,
                          pretrain=PretrainSettings(steps=480, every=40, functions=40))


def _scores(model, tok, fns: list[BinaryFunction], max_length: int) -> dict[str, dict[str, np.ndarray]]:
    return mod.functions_predictivity(model, tok, fns, max_length=max_length)


def _partitions(model, tok, S: ModularitySettings, texts: list[str], seed: int) -> dict[str, dict[str, np.ndarray]]:
    from ..analysis import neurons
    from ..data.batching import token_batches

    acts = neurons.neuron_activations(model, token_batches(tok, texts, 32, S.max_length), pool="tokens")
    parts = {"kmeans": mod.expert_partition(model, S.experts, "kmeans", seed=seed),
             "coactivation": mod.expert_partition(model, S.experts, "coactivation", seed=seed,
                                                  acts={k: torch.as_tensor(v) for k, v in acts.items()})}
    parts["random"] = mod.random_partition_like(parts["kmeans"], seed=seed)
    return parts


def _extents(scores, fns, parts, S) -> list[dict[str, Any]]:
    kinds = sorted({f.kind for f in fns})
    rows = []
    for pname, part in parts.items():
        n_func = {f.name: sum(len(v) for v in mod.functional_experts(scores[f.name], part, S.top, S.alpha).values())
                  for f in fns}
        for kind in kinds + ["all"]:
            sub = {f.name: scores[f.name] for f in fns if kind in ("all", f.kind)}
            best = mod.modularization_extent(sub, part, top=S.top, statistic="best")
            rows.append({"partition": pname, "kind": kind, "functions": len(sub), "extent_best": best.overall,
                         "by_layer": best.by_layer,
                         "functional_experts_per_function": float(np.mean([n_func[n] for n in sub]))})
    return rows


def _perturbation(model, tok, fns, scores, part, S, seed: int) -> list[dict[str, Any]]:
    """Functional experts of a few functions (per kind, the ones with most functional experts) shuffled x 4,
    against random experts and the same number of top neurons; probe accuracy on every chosen function."""
    experts_of = {f.name: mod.functional_experts(scores[f.name], part, S.top, S.alpha) for f in fns}
    counts = {n: sum(len(v) for v in e.values()) for n, e in experts_of.items()}
    chosen = []
    for kind in sorted({f.kind for f in fns}):
        mine = sorted((f for f in fns if f.kind == kind and counts[f.name]), key=lambda f: -counts[f.name])
        chosen += mine[:S.perturb_functions]
    splits = {f.name: f.split(seed=seed) for f in chosen}
    # the perturbed selections come from each function's train part only; its held-out part scores the probe
    train_scores = {n: mod.function_predictivity(model, tok, tr, max_length=S.max_length) for n, (tr, _) in splits.items()}
    probes = {n: mod.fit_probe(model, tok, tr, max_length=S.max_length) for n, (tr, _) in splits.items()}

    def accs(selection, s: int) -> dict[str, float]:
        return {n: mod.probe_accuracy(model, tok, tr, dev, selection, seed=s, probe=probes[n], max_length=S.max_length)
                for n, (tr, dev) in splits.items()}

    clean = accs(None, 0)
    rows = []
    for f in chosen:
        experts = mod.functional_experts(train_scores[f.name], part, S.top, S.alpha)
        if not any(len(v) for v in experts.values()):
            continue  # no functional expert on the train part alone: nothing to perturb
        functional = mod.expert_selection(part, experts)
        for s in S.perturb_seeds:
            selections = {"functional experts": functional,
                          "random experts": mod.expert_selection(part, mod.random_experts_like(experts, part, seed=s)),
                          "top neurons": mod.top_neurons_like(train_scores[f.name], functional)}
            for name, sel in selections.items():
                for target, acc in accs(sel, s).items():
                    rows.append({"perturbed": f.name, "kind": f.kind, "selection": name, "seed": s, "target": target,
                                 "own": target == f.name, "accuracy": acc, "clean": clean[target],
                                 "neurons": int(sum(len(v) for v in sel.values()))})
    return rows


def _summarise_perturbation(rows: list[dict]) -> list[dict[str, Any]]:
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        groups.setdefault((r["perturbed"], r["selection"], r["own"]), []).append(r["clean"] - r["accuracy"])
    return [{"perturbed": p, "selection": s, "target": "own" if own else "others", "drop_mean": float(np.mean(v)),
             "drop_std": float(np.std(v)), "n": len(v)} for (p, s, own), v in sorted(groups.items())]


def _pretrain_emergence(ctx: RecipeContext, S: ModularitySettings, fns: list[BinaryFunction]) -> dict[str, Any]:
    """Pretrain a small BERT from scratch (masked-token prediction through plmkit.train) and score the functions
    every ``every`` steps; Spearman between consecutive scorings at the neuron and the expert level."""
    import tempfile

    from transformers import BertConfig

    from ..assets import load_model
    from ..assets.models import build_from_config
    from ..data.text import english_corpus, fortunes
    from ..eval.lm import lm_loss
    from ..train import TrainConfig, train
    from ..train.heads import lm_collate

    P = S.pretrain
    _, tok = load_model("minilm", task="base")
    torch.manual_seed(ctx.seed)
    config = BertConfig(vocab_size=tok.vocab_size, hidden_size=P.hidden, num_hidden_layers=P.layers,
                        num_attention_heads=P.heads, intermediate_size=P.ffn, max_position_embeddings=128)
    model = build_from_config(config, task="masked-lm")
    if P.corpus == "fortunes":  # quick to read: the quick run's corpus
        texts = [r["text"] for r in fortunes()][:P.corpus_chars // 60]
    else:
        texts = english_corpus(max_chars=P.corpus_chars, seed=ctx.seed)
    ids = tok(texts, truncation=True, max_length=P.max_length)["input_ids"]
    data = [{"input_ids": i} for i in ids if len(i) > 4]
    fn_set = _spread([f for f in fns if len(f) >= 20], P.functions)
    snapshots: list[dict[str, Any]] = []

    def score(m) -> dict[str, float]:
        snapshots.append(mod.functions_predictivity(m, tok, fn_set, max_length=S.max_length))
        return {}

    model.eval()
    score(model)  # step 0: the random initialisation (eval mode, as the loop's later scorings)
    with tempfile.TemporaryDirectory() as tmp, ctx.phase("pretraining"):
        res = train(model, data, TrainConfig(out_dir=tmp, max_steps=P.steps, batch_size=P.batch_size, lr=P.lr,
                                             warmup_steps=max(1, P.steps // 20), eval_every=P.every, resume=False,
                                             progress=ctx.progress, seed=ctx.seed, mixed_precision="no",
                                             log_every=max(1, P.every // 2)),
                    lm_loss, collate_fn=lm_collate(tok, causal=False), eval_fn=score)
    part = mod.expert_partition(model, P.experts, "kmeans", seed=ctx.seed)  # the final model's experts
    steps = [0] + [e["step"] for e in res.evals]
    neuron, expert = [], []
    for a, b in zip(snapshots[:-1], snapshots[1:]):  # per function, then averaged
        neuron.append(float(np.mean([mod.stability(a[n], b[n]) for n in a])))
        expert.append(float(np.mean([mod.stability(mod.expert_scores(a[n], part), mod.expert_scores(b[n], part))
                                     for n in a])))
    return {"steps": steps, "neuron": neuron, "expert": expert, "losses": res.losses, "functions": len(fn_set),
            "data": len(data), "experts": P.experts}


def _spread(fns: list[BinaryFunction], n: int) -> list[BinaryFunction]:
    """Up to ``n`` functions, taken from the kinds in turn."""
    by_kind: dict[str, list[BinaryFunction]] = {}
    for f in fns:
        by_kind.setdefault(f.kind, []).append(f)
    out: list[BinaryFunction] = []
    while len(out) < n and any(by_kind.values()):
        for group in by_kind.values():
            if group and len(out) < n:
                out.append(group.pop(0))
    return out


def _plots(ctx: RecipeContext, studies: list[dict], emergence: dict | None) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    for st in studies:
        rows = [r for r in st["extent"] if r["kind"] != "all"]
        kinds = sorted({r["kind"] for r in rows})
        parts = list(dict.fromkeys(r["partition"] for r in rows))
        grid = np.array([[next(r["extent_best"] for r in rows if r["partition"] == p and r["kind"] == k)
                          for k in kinds] for p in parts])
        fig, ax = plt.subplots(figsize=(4.5, 2.8))
        im = ax.imshow(grid, cmap="viridis")
        ax.set_xticks(range(len(kinds)), kinds)
        ax.set_yticks(range(len(parts)), parts)
        for i in range(len(parts)):
            for j in range(len(kinds)):
                ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", color="w", fontsize=8)
        fig.colorbar(im, ax=ax)
        ax.set_title(f"{st['model']}: modularization extent (best expert)", fontsize=9)
        names.append(ctx.save_figure(fig, f"extent_{st['model']}.png"))
        layer_rows = [r for r in st["extent"] if r["kind"] == "all"]
        fig, ax = plt.subplots(figsize=(5, 3))
        for r in layer_rows:
            ax.plot(range(len(r["by_layer"])), list(r["by_layer"].values()), "o-", label=r["partition"])
        ax.axhline(1.0, color="gray", lw=0.8, ls="--")
        ax.set_xlabel("layer")
        ax.set_ylabel("extent")
        ax.legend(fontsize=8)
        ax.set_title(f"{st['model']}: extent per layer (all functions)", fontsize=9)
        names.append(ctx.save_figure(fig, f"extent_layers_{st['model']}.png"))
    if emergence and emergence["neuron"]:
        fig, ax = plt.subplots(figsize=(5, 3))
        x = emergence["steps"][1:]
        ax.plot(x, emergence["neuron"], "o-", label="neurons")
        ax.plot(x, emergence["expert"], "s-", label="experts")
        ax.set_xlabel("pretraining step")
        ax.set_ylabel("Spearman with previous scoring")
        ax.legend(fontsize=8)
        ax.set_title("Emergence: stability of predictivity", fontsize=9)
        names.append(ctx.save_figure(fig, "emergence.png"))
    return names


@recipe(
    "modularity",
    "Modularity analysis: functional experts in pretrained FFNs",
    system="modularity",
    paper_claim="Neurons specialise in functions, and MoEfication-style experts of FFN neurons are functional "
                "(they cluster a function's top neurons beyond chance); perturbing a function's experts hurts it "
                "more than other functions; experts stabilise earlier than neurons during pretraining.",
    citation="Zhang et al., Emergent Modularity in Pre-trained Transformers, Findings of ACL 2023",
    budgets=Budgets(quick=QUICK, full=FULL),
)
def run(ctx: RecipeContext) -> dict[str, Any]:
    from ..assets import load_model

    S: ModularitySettings = ctx.settings
    torch.manual_seed(ctx.seed)
    with ctx.phase("functions"):
        fns = all_functions(seed=ctx.seed, max_words=S.max_words, max_per_relation=S.max_per_relation,
                            max_per_task=S.max_per_task, sense=S.sense)
    texts = [t for f in fns for t in f.texts]
    texts = [texts[i] for i in np.random.default_rng(ctx.seed).permutation(len(texts))[:S.coactivation_texts]]
    studies = []
    for name in S.models:
        model, tok = load_model(name, task="base")
        with ctx.phase(f"predictivity {name}"):
            scores = _scores(model, tok, fns, S.max_length)
        with ctx.phase(f"experts {name}"):
            parts = _partitions(model, tok, S, texts, ctx.seed)
            extent = _extents(scores, fns, parts, S)
        rows = []
        if name in S.perturb_models:
            with ctx.phase(f"perturbation {name}"):
                rows = _perturbation(model, tok, fns, scores, parts["kmeans"], S, ctx.seed)
        studies.append({"model": name, "extent": extent, "perturbation": _summarise_perturbation(rows),
                        "perturbation_rows": rows})
        del model
    emergence = _pretrain_emergence(ctx, S, fns) if S.pretrain else None
    return _report(ctx, S, fns, studies, emergence)


def _report(ctx, S, fns, studies, emergence) -> dict[str, Any]:
    counts = {k: sum(f.kind == k for f in fns) for k in sorted({f.kind for f in fns})}
    tables, measured = [], {}
    for st in studies:
        tables.append({"title": f"{st['model']}: modularization extent (top {S.top:.0%} neurons of a function in the "
                                "expert holding most of them, over the same under random partitions of equal sizes; "
                                f"1 = no modularity) and functional experts per function (p <= {S.alpha}), "
                                f"{S.experts} experts per layer",
                       "columns": ["partition", "functions", "kind", "extent", "functional experts / function"],
                       "rows": [[r["partition"], r["functions"], r["kind"], f"{r['extent_best']:.3f}",
                                 f"{r['functional_experts_per_function']:.2f}"] for r in st["extent"]]})
        for r in st["extent"]:
            measured[f"{st['model']}.{r['partition']}.{r['kind']}.extent"] = r["extent_best"]
        if not st["perturbation"]:
            continue
        tables.append({"title": f"{st['model']}: probe accuracy drop (clean - perturbed) when a function's functional "
                                "experts (k-means) are shuffled x 4, vs random experts and as many top neurons; "
                                "'own' = that function, 'others' = the other perturbed functions",
                       "columns": ["perturbed function", "selection", "target", "drop (points)", "n"],
                       "rows": [[r["perturbed"], r["selection"], r["target"],
                                 f"{100 * r['drop_mean']:.1f} ± {100 * r['drop_std']:.1f}", r["n"]]
                                for r in st["perturbation"]]})
        for r in st["perturbation"]:
            measured[f"{st['model']}.perturb.{r['perturbed']}.{r['selection'].replace(' ', '_')}.{r['target']}"] = \
                r["drop_mean"]
    if emergence:
        tables.append({"title": f"Emergence: a {S.pretrain.layers}-layer BERT (d={S.pretrain.hidden}, "
                                f"FFN {S.pretrain.ffn}) pretrained here for {S.pretrain.steps} steps; Spearman of "
                                f"predictivity between consecutive scorings ({emergence['functions']} functions, "
                                f"{emergence['experts']} k-means experts of the final model)",
                       "columns": ["steps", "neuron level", "expert level"],
                       "rows": [[f"{a} -> {b}", f"{n:.3f}", f"{e:.3f}"] for a, b, n, e in
                                zip(emergence["steps"][:-1], emergence["steps"][1:], emergence["neuron"],
                                    emergence["expert"])]})
        measured["emergence.neuron_mean"] = float(np.mean(emergence["neuron"]))
        measured["emergence.expert_mean"] = float(np.mean(emergence["expert"]))
    first = studies[0]
    km = next(r for r in first["extent"] if r["partition"] == "kmeans" and r["kind"] == "all")
    rd = next(r for r in first["extent"] if r["partition"] == "random" and r["kind"] == "all")
    headline = {"metric": f"{first['model']}: modularization extent, k-means experts vs random partition",
                "ours": f"{km['extent_best']:.2f} vs {rd['extent_best']:.2f}",
                "paper": "functional experts well beyond the random baseline (T5, Switch Transformer)",
                "peer": "-"}
    notes = [f"Functions: {counts} (word senses grouped by WordNet supersense; knowledge from geonames and WordNet "
             "rendered as template sentences; tasks from the bundled reviews and fortunes).",
             "Extent: for each function and layer, the count of its top neurons in the expert holding most of them, "
             "divided by the mean of the same count under seeded random partitions with the same expert sizes; "
             "averaged over functions (plmkit.analysis.modularity.modularization_extent).",
             "Perturbation effect is read by a logistic-regression probe on the mean-pooled last hidden state, fit on "
             "clean activations; knowledge sentences differ by template, so their probes stay near 1 (a weak test "
             "for that kind).",
             "Emergence: the functions are scored on the live model at every scoring step of the run (the same "
             "weights the checkpoints hold); expert scores are the mean predictivity of each expert's neurons."]
    if ctx.quick:
        notes.insert(0, f"Quick run: MiniLM only, few functions, one perturbation seed, a {S.pretrain.steps}-step "
                        f"pretraining; the full run adds SmolLM2, more functions, 3 seeds and {FULL.pretrain.steps} "
                        "pretraining steps.")
    return {"measured": measured, "headline": headline, "tables": tables, "plots": _plots(ctx, studies, emergence),
            "details": {"studies": [{k: v for k, v in st.items() if k != "perturbation_rows"} for st in studies],
                        "emergence": emergence, "functions": counts}, "notes": notes}
