"""Recipe ``kepler``: description-based knowledge embeddings on WordNet, beside structural KE peers.

MiniLM encodes WordNet glosses as entity descriptions. A snowball-sampled WordNet subgraph is
split twice: transductively (held-out triples, every entity seen in training) and inductively
(held-out entities, none seen in training). On each split, in one run:

- PyKEEN TransE, and RotatE in the full run (transductive only: they have no vector for an unseen entity);
- the frozen encoder's description embeddings with TransE relation vectors fitted on top;
- KEPLER (KE + MLM), and in the full run its KE-only and relation-description variants.

MiniLM ships without an MLM head, so one is fitted first on the frozen encoder; its held-out MLM
loss is the reference the KEPLER runs are compared with.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ..data.wordnet import wordnet_kg
from ..device import mixed_precision
from ..eval.lm import masked_lm_loss
from ..knowledge.baselines import pykeen_link_prediction
from ..knowledge.kepler import KEPLER, KEPLERConfig, train_frozen_transe, train_kepler
from ..knowledge.kepler_run import evaluate_embeddings, lm_texts
from ..train import TrainConfig
from .registry import Budgets, RecipeContext, recipe
from .shared import MLMHeadSettings, minilm_mlm

PAPER_INDUCTIVE = {"MRR": 0.402, "Hits@10": 0.730}  # KEPLER on Wikidata5M, inductive setting
METRICS = ("MRR", "MR", "Hits@1", "Hits@3", "Hits@10")
MAIN = "KEPLER (KE + MLM)"
MLM_ONLY = "control (MLM only, KE weight 0)"  # same steps, passages and start as MAIN: what the LM side owes KE
POOLING = "mean"  # MiniLM is a mean-pooling sentence encoder; the paper's RoBERTa used the first token


@dataclass(frozen=True)
class KeplerSettings:
    entities: int  # snowball-sampled WordNet subgraph size
    steps: int  # KEPLER optimizer steps per variant
    batch_size: int
    head: MLMHeadSettings  # the MLM head fitted on the frozen encoder (shared through the cache)
    frozen_steps: int  # relation fitting on the start encoder's fixed embeddings: the frozen baseline, and
    #                    the warm start of KEPLER's relation table (the same fit, reused)
    pykeen_epochs: int
    pykeen_models: tuple[str, ...]
    variants: dict[str, tuple[str, ...]] = field(default_factory=dict)  # setting -> KEPLER variants
    mlm_heldout: int = 200  # held-out passages for the MLM loss
    lr: float = 5e-5
    relation_lr: float = 1e-2


QUICK = KeplerSettings(entities=600, steps=16, batch_size=16, head=MLMHeadSettings(steps=20, max_length=64),
                       frozen_steps=300, pykeen_epochs=20, pykeen_models=("TransE",),
                       variants={"transductive": (), "inductive": (MAIN, MLM_ONLY)}, mlm_heldout=48)
FULL = KeplerSettings(entities=5000, steps=300, batch_size=16, head=MLMHeadSettings(steps=300), frozen_steps=1000,
                      pykeen_epochs=100, pykeen_models=("TransE", "RotatE"),
                      variants={"transductive": (MAIN, "KEPLER (KE only)", "KEPLER (relation descriptions)", MLM_ONLY),
                                "inductive": (MAIN, "KEPLER (KE only)", MLM_ONLY)})


def _variant_config(name: str) -> KEPLERConfig:
    return KEPLERConfig(pooling=POOLING, lm_weight=0.0 if "KE only" in name else 1.0,
                        ke_weight=0.0 if name == MLM_ONLY else 1.0,
                        relation_descriptions="relation descriptions" in name)


def _train_config(out_dir, steps: int, batch_size: int, lr: float, seed: int, progress: bool, **kw) -> TrainConfig:
    return TrainConfig(out_dir=str(out_dir), max_steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                       progress=progress, resume=False, **kw)


def _frozen(graph, start: str, S: KeplerSettings, ctx: RecipeContext, out_dir) -> dict[str, Any]:
    """The start encoder's own description embeddings (no KE training) + relation vectors fitted on them."""
    t0 = time.perf_counter()
    vocab = graph.vocab
    model, tok = KEPLER.from_pretrained(start, len(vocab.relations), KEPLERConfig(pooling=POOLING))
    ents = model.embed_texts(tok, graph.entity_texts(vocab), progress=ctx.progress, desc="embedding entities")
    fitted = train_frozen_transe(ents, vocab.encode(graph.split.train), len(vocab.relations),
                                 _train_config(out_dir, S.frozen_steps, 128, 1e-2, ctx.seed, ctx.progress),
                                 model.config)
    relations = fitted.relation_embeddings.weight.detach()
    out = evaluate_embeddings(graph, vocab, ents, relations, model.config)
    return {**out, "seconds": round(time.perf_counter() - t0, 1), "relations": relations}


def _kepler(graph, start: str, name: str, S: KeplerSettings, ctx: RecipeContext, texts, heldout, out_dir,
            warm_relations: torch.Tensor) -> dict[str, Any]:
    """Train one KEPLER variant from ``start`` and evaluate its embeddings (and its MLM loss after).

    The relation table starts from ``warm_relations``: TransE relations fitted on the start encoder's
    fixed embeddings of the training entities (the frozen baseline's fit, which is exactly what
    kepler_run.warm_start_relations computes), so joint training does not begin by pulling the
    encoder towards random relation vectors."""
    t0 = time.perf_counter()
    vocab, config = graph.vocab, _variant_config(name)
    model, tok = KEPLER.from_pretrained(start, len(vocab.relations), config)
    descriptions, train_ids = graph.entity_texts(vocab), vocab.encode(graph.split.train)
    if not config.relation_descriptions:
        with torch.no_grad():
            model.relation_embeddings.weight.copy_(warm_relations)
    # negatives come from the training triples' entities only, so an inductive run never reads a test entity
    result = train_kepler(model, tok, descriptions, train_ids,
                          _train_config(out_dir / "train", S.steps, S.batch_size, S.lr, ctx.seed, ctx.progress,
                                        warmup_steps=max(1, S.steps // 10), log_every=max(1, S.steps // 20),
                                        mixed_precision=mixed_precision()),
                          texts=texts, relation_texts=graph.relation_list(vocab), relation_lr=S.relation_lr)
    ents = model.embed_texts(tok, descriptions, progress=ctx.progress, desc="embedding entities")
    rels = model.relation_vectors(tok, graph.relation_list(vocab))
    out = evaluate_embeddings(graph, vocab, ents, rels, config)
    lm_after = masked_lm_loss(model.lm, tok, heldout, seed=ctx.seed) if heldout else None
    return {**out, "seconds": round(time.perf_counter() - t0, 1), "losses": result.losses, "lm_loss_after": lm_after}


def _plots(ctx: RecipeContext, results: dict[str, dict[str, Any]], curves: dict[str, list[float]]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    for ax, metric in zip(axes[:2], ("MRR", "Hits@10")):
        methods = list(dict.fromkeys([*results["transductive"], *results["inductive"]]))
        x = range(len(methods))
        for i, setting in enumerate(("transductive", "inductive")):
            vals = [results[setting][m]["both"][metric] if results[setting].get(m) else float("nan")
                    for m in methods]  # no bar: not run, or not possible (PyKEEN, inductive)
            ax.bar([j + 0.4 * i for j in x], vals, width=0.4, label=setting)
            for j, v in zip(x, vals):
                if v != v and setting == "inductive":
                    ax.text(j + 0.4, 0.005, "n/a", ha="center", va="bottom", fontsize=7)
        top = max((r["both"][metric] for rows in results.values() for r in rows.values() if r), default=1.0)
        ax.set_ylim(0, top * 1.3)
        ax.set_xticks([j + 0.2 for j in x], methods, rotation=25, ha="right", fontsize=8)
        ax.set_title(f"{metric} (both directions, filtered)")
        ax.legend(fontsize=8, loc="upper left", ncol=2)
    for name, losses in curves.items():
        axes[2].plot(losses, label=name)
    axes[2].set_title("KEPLER training loss, KE + MLM (per logged window)")
    axes[2].set_xlabel("window")
    axes[2].legend(fontsize=7)
    ctx.save_figure(fig, "kepler.png")
    return ["kepler.png"]


def _pykeen_through_plmkit(graph, model, theirs: dict[str, float]) -> dict[str, Any]:
    """A PyKEEN model scored by plmkit's evaluator: its metrics (``query_entity_first`` included) and the largest
    relative difference from PyKEEN's own evaluator on the same test triples."""
    from ..eval.ranking import link_prediction
    from ..knowledge.kepler_run import evaluation_triples

    ev = evaluation_triples(graph, graph.vocab, "test")
    with torch.no_grad():
        ours = link_prediction(lambda h, r: model.score_t(torch.stack([h, r], 1)),
                               lambda r, t: model.score_h(torch.stack([r, t], 1)),
                               ev["triples"], ev["filter"], len(graph.vocab))
    diff = max(abs(ours["both"][k] - theirs[k]) / max(abs(theirs[k]), 1e-12) for k in METRICS)
    return {"plmkit_evaluator": ours, "evaluator_max_rel_diff": diff}


@recipe(
    "kepler", "KEPLER: knowledge embeddings from entity descriptions, trained with language modelling", "kepler",
    paper_claim="Encoding entity descriptions with a PLM and training knowledge embedding jointly with MLM gives "
                "text-enhanced knowledge embeddings that also work inductively, for entities unseen in training "
                "(Wikidata5M inductive: MRR 0.402, Hits@10 0.730), without hurting language modelling.",
    citation="Wang et al., KEPLER: A Unified Model for Knowledge Embedding and Pre-trained Language "
             "Representation, TACL 2021, arXiv:1911.06136",
    budgets=Budgets(quick=QUICK, full=FULL),
)
def run(ctx: RecipeContext) -> dict[str, Any]:
    S: KeplerSettings = ctx.settings
    torch.manual_seed(ctx.seed)
    t_all = time.perf_counter()
    texts, heldout = lm_texts(seed=ctx.seed)
    heldout = heldout[:S.mlm_heldout]
    # One MLM head for MiniLM, fitted on the frozen encoder (from the cache when built before).
    with ctx.phase("MLM head (fit or cache)"):
        lm, tok, head_cache = minilm_mlm(S.head, progress=ctx.progress)
    with ctx.phase("MLM loss"):
        mlm = {}
        if not ctx.quick:
            from ..assets import load_model

            raw, _ = load_model("minilm", task="masked-lm")
            mlm["MiniLM, untrained MLM head"] = masked_lm_loss(raw, tok, heldout, seed=ctx.seed)
            del raw
        mlm["MiniLM (frozen) + fitted MLM head: KEPLER's start"] = masked_lm_loss(lm, tok, heldout, seed=ctx.seed)
    start = head_cache["path"]
    del lm

    results: dict[str, dict[str, Any]] = {}
    graphs: dict[str, dict[str, int]] = {}
    curves: dict[str, list[float]] = {}
    for setting in ("transductive", "inductive"):
        with ctx.phase("graph"):
            graph = wordnet_kg(S.entities, inductive=setting == "inductive", seed=ctx.seed)
        graphs[setting] = {"entities": len(graph.vocab), **{p: len(getattr(graph.split, p)) for p in
                                                            ("train", "valid", "test")}}
        rows: dict[str, Any] = {}
        for peer in S.pykeen_models:
            if setting == "transductive":
                def pykeen_row(peer=peer) -> dict[str, Any]:
                    r = pykeen_link_prediction(graph, peer, epochs=S.pykeen_epochs, seed=ctx.seed,
                                               progress=ctx.progress)
                    r.update(_pykeen_through_plmkit(graph, r.pop("pykeen_model"), r["both"]))
                    return r

                with ctx.phase("PyKEEN"):
                    rows[f"PyKEEN {peer}"] = ctx.resumable(f"{setting}-pykeen-{peer}", pykeen_row)
            else:
                rows[f"PyKEEN {peer}"] = None  # no vector for an unseen entity
        with ctx.phase("frozen baseline"):  # each step resumable: a full run that stopped goes on from the last
            frozen = ctx.resumable(f"{setting}-frozen", lambda: _frozen(graph, start, S, ctx,
                                                                        ctx.out_dir / f"{setting}-frozen"),
                                   start=head_cache["key"])
        relations = torch.tensor(frozen.pop("relations"), dtype=torch.float32)
        rows["frozen MiniLM + fitted relations"] = frozen
        for name in S.variants[setting]:
            slug = name.split("(")[1].split(",")[0].rstrip(")").replace(" ", "-").replace("+", "plus")
            with ctx.phase("KEPLER"):
                r = ctx.resumable(f"{setting}-{slug}", lambda name=name, slug=slug: _kepler(
                    graph, start, name, S, ctx, texts, heldout, ctx.out_dir / f"{setting}-{slug}", relations),
                    start=head_cache["key"])
            curves[f"{setting}: {name}"] = r.pop("losses")
            mlm[f"after {name}, {setting}"] = r.pop("lm_loss_after")
            rows[name] = r
        results[setting] = rows

    fmt = lambda v: f"{v:.1f}" if isinstance(v, float) and v > 5 else f"{v:.3f}"  # noqa: E731
    tables = []
    for setting in ("transductive", "inductive"):
        g = graphs[setting]
        protocol = ("every entity ranked, filtered on train+valid+test" if setting == "transductive" else
                    "the test graph's entities ranked, filtered on the test graph")
        rows = []
        for m, r in results[setting].items():
            if r is None:
                rows.append([m, *["n/a"] * len(METRICS), "cannot embed entities unseen in training"])
            else:
                rows.append([m, *(fmt(r["both"][k]) for k in METRICS), f"{r['seconds']:.0f} s"])
        if setting == "inductive":
            rows.append(["paper: KEPLER on Wikidata5M (inductive)", f"{PAPER_INDUCTIVE['MRR']:.3f}", "", "", "",
                         f"{PAPER_INDUCTIVE['Hits@10']:.3f}", "RoBERTa-base, 4.8M entities"])
        tables.append({"title": f"{setting.capitalize()} link prediction, WordNet subgraph ({g['entities']} entities; "
                                f"triples train {g['train']} / valid {g['valid']} / test {g['test']}); {protocol}; "
                                "head and tail pooled, realistic ties",
                       "columns": ["method", *METRICS, "time / note"], "rows": rows})
    def scored_by_plmkit(r: dict[str, Any]) -> dict[str, Any]:  # PyKEEN rows: plmkit's scoring of its model
        return r.get("plmkit_evaluator") or r

    first = [[s, m, *(f"{100 * scored_by_plmkit(r)[side]['query_entity_first']:.1f}%" for side in ("tail", "head"))]
             for s, rows_ in results.items() for m, r in rows_.items() if r]
    tables.append({"title": "Test queries whose own entity outscores every ranked candidate (the head when tails "
                            "are ranked, and the reverse); the protocol keeps it as a candidate",
                   "columns": ["setting", "method", "tail queries", "head queries"], "rows": first})
    agreement = {m: r["evaluator_max_rel_diff"] for m, r in results["transductive"].items()
                 if r and "evaluator_max_rel_diff" in r}
    tables.append({"title": f"Masked-LM loss on {len(heldout)} held-out English passages (nats per masked token, "
                            "same masks for every model)",
                   "columns": ["model", "MLM loss"], "rows": [[k, f"{v:.3f}"] for k, v in mlm.items()]})
    measured = {f"{s}.{m}.{k}": r["both"][k] for s, rows in results.items() for m, r in rows.items() if r
                for k in METRICS}
    measured.update({f"mlm_loss.{k}": v for k, v in mlm.items()})
    measured.update({f"evaluator_max_rel_diff.{m}": v for m, v in agreement.items()})
    ind = results["inductive"]
    peer = results["transductive"].get("PyKEEN TransE")
    headline = {
        "metric": "inductive MRR (test entities unseen in training), KEPLER (KE + MLM) vs frozen MiniLM "
                  f"{ind['frozen MiniLM + fitted relations']['both']['MRR']:.3f}",
        "ours": round(ind[MAIN]["both"]["MRR"], 3),
        "paper": f"{PAPER_INDUCTIVE['MRR']} (Wikidata5M, RoBERTa-base)",
        "peer": (f"PyKEEN TransE transductive MRR {peer['both']['MRR']:.3f} (no inductive vector)" if peer else None),
    }
    precision = mixed_precision()
    notes = [
        f"Encoder: all-MiniLM-L6-v2 (22M parameters), {POOLING}-pooled description embeddings (it was trained "
        "as a mean-pooling sentence encoder; the paper pools RoBERTa's first token). TransE with gamma 4 and "
        "the L2 norm, one filtered corrupted head and tail per triple, as in KEPLER's code.",
        f"KEPLER: {S.steps} steps of {S.batch_size} triples plus {S.batch_size} MLM passages (lr {S.lr}, relation "
        f"table lr {S.relation_lr}, mixed precision '{precision}', chosen for this CPU by plmkit.device), with the "
        f"relation table warm-started from the frozen baseline's fit on the start encoder's fixed embeddings "
        f"({S.frozen_steps} steps). The start: MiniLM with an MLM head fitted for {S.head.steps} steps on the frozen "
        "encoder "
        f"(cache {'hit' if head_cache['hit'] else 'built'}, key {head_cache['key'][:12]}). PyKEEN "
        f"({', '.join(S.pykeen_models)}): {S.pykeen_epochs} epochs, dim 200, 32 negatives per triple, "
        "self-adversarial loss, Adam lr 0.01, evaluated by PyKEEN's own evaluator. The same PyKEEN models scored "
        "by plmkit's evaluator differ from it by at most "
        + ", ".join(f"{v:.1e} ({m})" for m, v in agreement.items()) + " (largest relative difference over "
        "MRR, MR and Hits@k).",
        "No configuration is selected here (fixed settings, no search), so valid triples are unused and every "
        "number is on test.",
        "The paper's number is for a different graph (Wikidata5M) and a 125M encoder pretrained with KEPLER "
        "for days; set beside ours for scale only.",
    ]
    if ctx.quick:
        trained = [f"{k}: {', '.join(v)}" for k, v in S.variants.items() if v]
        notes.insert(0, f"Quick run: {S.entities}-entity graphs; KEPLER trained for {S.steps} steps only where listed "
                        f"({'; '.join(trained)}); PyKEEN {'/'.join(S.pykeen_models)} at {S.pykeen_epochs} epochs; MLM "
                        f"loss on {len(heldout)} passages. At this budget KEPLER moves little from its start (the "
                        "frozen encoder with fitted relations), and differences of a few points between methods are "
                        "within run-to-run noise; the full run trains every variant in both settings.")
    return {
        "measured": measured,
        "headline": headline,
        "cache": {"minilm-mlm-head": head_cache},
        "tables": tables,
        "plots": _plots(ctx, results, curves),
        "details": {"graphs": graphs, "results": results, "mlm_loss": mlm, "pooling": POOLING,
                    "seconds": round(time.perf_counter() - t_all, 1)},
        "notes": notes,
    }
