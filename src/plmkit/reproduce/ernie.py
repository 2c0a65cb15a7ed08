"""Recipe ``ernie``: MiniLM made knowledge-enhanced with TransE vectors of WordNet and geonames, on two tasks that
need knowledge, with the paper's ablations.

Entities: TransE (PyKEEN) on WordNet (the neighbourhood of the synsets the study's texts link to, or all of it)
and on the geonames graph, one 100-d table. Linking: plmkit's alias linker (WordNet noun lemmas and their forms,
sense order as the prior; geonames names, population as the prior). Pretraining: dEA + MLM on linked English
text (Wikipedia sample, Lee news, Austen, WordNet glosses; a piece holding a task's test or validation sentence is
dropped, since the glosses quote the typing task's examples), from
MiniLM with its fitted MLM head. Tasks (:mod:`plmkit.data.entity_tasks`): the supersense of the word a WordNet
example sentence illustrates (linked by the linker, not by the gold synset), and the relation between two
geonames places named in a neutral sentence (test templates unseen). Each variant is fine-tuned the same way
(CLS head, marked mentions) and scored on the test split; nothing is chosen on test.
"""
from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..knowledge.entities import KGEConfig
from ..knowledge.ernie.config import ERNIEConfig
from ..knowledge.ernie.study import KnowledgeSettings, TuningChoice
from ..train.loop import TuneConfig
from .registry import Budgets, RecipeContext, recipe
from .shared import MLMHeadSettings

PAPER = {"typing": "FIGER acc 52.0 -> 57.2; OpenEntity F1 73.6 -> 75.6",
         "relation": "FewRel F1 84.9 -> 88.3; TACRED F1 66.0 -> 68.0"}


@dataclass(frozen=True)
class ERNIESettings:
    head: MLMHeadSettings
    knowledge: KnowledgeSettings
    ernie: ERNIEConfig
    tune: TuneConfig
    pretrain_texts: int = 4000
    pretrain_steps: int = 300
    pretrain_batch: int = 16
    pretrain_lr: float = 1e-4
    variants: tuple[str, ...] = ("plain", "ernie", "ernie-no-dea", "ernie-random", "ernie-gold")
    tasks: tuple[str, ...] = ("typing", "relation")
    typing_max_train: int | None = None
    max_test: int | None = None
    seeds: tuple[int, ...] = (0, 1, 2)
    kepler_steps: int = 200  # the KEPLER run whose description embeddings the kepler variant reads
    kepler_entities: int = 5000
    # fine-tuning settings per task, chosen on its validation split with the plain encoder (one: no selection)
    typing_choices: tuple[TuningChoice, ...] = (TuningChoice("bce", 1e-4),)
    relation_choices: tuple[TuningChoice, ...] = (TuningChoice("ce", 1e-4),)
    max_validation: int | None = 500

    def choices(self, kind: str) -> tuple[TuningChoice, ...]:
        return self.typing_choices if kind == "typing" else self.relation_choices


QUICK = ERNIESettings(head=MLMHeadSettings(steps=20, max_length=64),  # the kepler / dpt quick head: one cache entry
                      knowledge=KnowledgeSettings(kge=KGEConfig(dim=32, epochs=2, negatives=4)),
                      ernie=ERNIEConfig(), tune=TuneConfig(steps=16, batch_size=8, lr=1e-4, max_length=48),
                      pretrain_texts=96, pretrain_steps=6, pretrain_batch=8,
                      variants=("plain", "ernie", "ernie-random"),
                      typing_max_train=200, max_test=120, seeds=(0,),
                      # typing: the full run's validation choice (docs/results/ernie.json, tuning table)
                      typing_choices=(TuningChoice("ce", 3e-4),))
FULL = ERNIESettings(head=MLMHeadSettings(steps=300), knowledge=KnowledgeSettings(),
                     ernie=ERNIEConfig(), tune=TuneConfig(steps=200, batch_size=16, lr=1e-4, max_length=64),
                     pretrain_steps=200, max_test=1000,
                     variants=("plain", "ernie", "ernie-random", "ernie-gold", "ernie-no-dea", "ernie-no-dea-random",
                               "ernie-kepler-no-dea"),
                     typing_choices=(TuningChoice("bce", 1e-4), TuningChoice("bce", 1e-3), TuningChoice("ce", 1e-4),
                                     TuningChoice("ce", 3e-4)),
                     relation_choices=(TuningChoice("ce", 1e-4), TuningChoice("ce", 3e-4)))


def entity_tasks(names: tuple[str, ...], seed: int, typing_max_train: int | None = None) -> dict[str, Any]:
    """The ERNIE study's tasks by name (``typing``, ``relation``), the typing training split cut when asked."""
    from ..data.entity_tasks import entity_typing_task, geo_relation_task

    out = {}
    if "typing" in names:
        t = entity_typing_task(seed=seed)
        out["typing"] = dataclasses.replace(t, train=t.train[:typing_max_train]) if typing_max_train else t
    if "relation" in names:
        out["relation"] = geo_relation_task(seed=seed)
    return out


@recipe(
    "ernie",
    title="ERNIE: knowledge-graph entities fused into MiniLM's upper blocks",
    system="ernie",
    paper_claim="Fusing TransE entity vectors into BERT's upper layers (K-encoder aggregators) and pretraining with a "
                "denoising entity auto-encoder improves knowledge-driven tasks: entity typing (FIGER 52.0 -> 57.2 "
                "accuracy, OpenEntity F1 73.6 -> 75.6) and relation classification (FewRel F1 84.9 -> 88.3, TACRED "
                "66.0 -> 68.0), while staying comparable on common NLP tasks.",
    citation="Zhang et al., ERNIE: Enhanced Language Representation with Informative Entities, ACL 2019, "
             "arXiv:1905.07129",
    budgets=Budgets(quick=QUICK, full=FULL),
)
def run(ctx: RecipeContext) -> dict[str, Any]:
    from ..knowledge.ernie import ERNIE, encode_with_entities, load_ernie, pretrain, save_ernie
    from ..knowledge.ernie.study import (VARIANTS, knowledge_table, link_study, linking_quality, run_variant,
                                         select_tuning)
    from ..train.loop import TrainConfig
    from .shared import minilm_mlm

    S: ERNIESettings = ctx.settings
    tasks = entity_tasks(S.tasks, ctx.seed, S.typing_max_train)
    with ctx.phase("linkers"):
        linked = link_study(tasks, S.pretrain_texts, seed=ctx.seed)
        linkers, texts, corpus_mentions, task_mentions = (linked.linkers, linked.texts, linked.mentions,
                                                          linked.task_mentions)
        linking = {k: linking_quality(t.test[:S.max_test], k, linkers[k]) for k, t in tasks.items()}
    wordnet_ids = linked.wordnet_ids({r["synset"] for t in tasks.values() for r in t.train + t.test if "synset" in r})
    with ctx.phase("KG embeddings"):
        entities = knowledge_table(S.knowledge, seed=ctx.seed, wordnet_entities=wordnet_ids, progress=ctx.progress)
    with ctx.phase("MiniLM + MLM head"):
        lm, tok, head_info = minilm_mlm(S.head, progress=ctx.progress)
    with tempfile.TemporaryDirectory() as tmp_:
        tmp = Path(tmp_)
        with ctx.phase("dEA pretraining"):
            ernie = ERNIE(lm, entities.vectors, S.ernie, seed=ctx.seed)
            records = encode_with_entities(tok, texts, corpus_mentions, entities, max_length=S.tune.max_length)
            pre = pretrain(ernie, tok, records, TrainConfig(
                out_dir=str(tmp / "pretrain"), max_steps=S.pretrain_steps, batch_size=S.pretrain_batch,
                lr=S.pretrain_lr, warmup_steps=max(1, S.pretrain_steps // 10), resume=False, seed=ctx.seed,
                mixed_precision="auto", progress=ctx.progress, log_every=max(1, S.pretrain_steps // 10)))
            save_ernie(ernie, tmp / "ernie", tok, entities.ids)
        aligned = sum(sum(1 for e in r["entity_ids"] if e) for r in records)

        def load_plain():
            return minilm_mlm(S.head)[0]

        def load_pretrained():
            return load_ernie(tmp / "ernie")[0]

        tables = {"transe": entities}
        if "typing" in tasks and any(VARIANTS[v].table == "kepler" for v in S.variants):
            with ctx.phase("KEPLER embeddings"):
                tables["kepler"] = _kepler_table(S, ctx, head_info["path"], tasks["typing"], task_mentions, tmp)
        rows, selection, chosen = [], [], {}
        for kind, task in tasks.items():
            chosen[kind] = S.choices(kind)[0]
            if len(S.choices(kind)) > 1:
                with ctx.phase(f"{kind} tuning on validation"):
                    chosen[kind], tried = select_tuning(
                        S.choices(kind), task, kind, tokenizer=tok, entities=entities, linker=linkers[kind],
                        load_plain=load_plain, tune=S.tune, seed=S.seeds[0], max_validation=S.max_validation,
                        work=tmp)
                selection += [{"task": kind, **r} for r in tried]
            tune = dataclasses.replace(S.tune, lr=chosen[kind].lr)
            for name in _trained(S, kind):
                for seed in S.seeds:
                    with ctx.phase(f"{kind} fine-tuning"):
                        rows += [{"task": kind, **r} for r in run_variant(
                            VARIANTS[name], task, kind, tokenizer=tok, entities=tables[VARIANTS[name].table],
                            linker=linkers[kind],
                            load_plain=load_plain, load_ernie=load_pretrained, tune=tune, seed=seed,
                            ernie_config=S.ernie, max_test=S.max_test, work=tmp,
                            multi_label=chosen[kind].loss == "bce")]
    pretraining = {"texts": len(texts), "aligned_entities": aligned, "steps": S.pretrain_steps,
                   "t_layers": ernie.t_layers, "blocks": ernie.t_layers + len(ernie.aggregators),
                   "loss_first": pre.losses[0] if pre.losses else None, "loss_last": pre.losses[-1] if pre.losses else None,
                   "seconds": round(pre.totals.get("seconds", 0.0), 1)}
    tuning = {"chosen": {k: dataclasses.asdict(c) for k, c in chosen.items()}, "validation": selection}
    return _report(ctx, S, tasks, entities, linking, pretraining, rows, tuning)


def _trained(S: ERNIESettings, kind: str) -> list[str]:
    """The variants fine-tuned on a task (KEPLER's vectors cover WordNet synsets: typing only)."""
    from ..knowledge.ernie.study import VARIANTS

    return [v for v in S.variants if kind == "typing" or VARIANTS[v].table != "kepler"]


def _kepler_table(S: ERNIESettings, ctx: RecipeContext, encoder: str, task, mentions, tmp: Path):
    """Train KEPLER (MiniLM with its fitted MLM head, on a WordNet subgraph) and read the typing task's synsets
    (linked and gold) from their glosses with its encoder."""
    from ..knowledge.kepler import KEPLERConfig
    from ..knowledge.kepler_run import kepler_train
    from ..knowledge.ernie.study import kepler_table

    kepler_train(tmp / "kepler", kg="wordnet", encoder=encoder, entities=S.kepler_entities, steps=S.kepler_steps,
                 config=KEPLERConfig(pooling="mean"), seed=ctx.seed, progress=ctx.progress)
    synsets = {m.entity for m in mentions if not m.entity.startswith("geo:")}
    synsets |= {r["synset"] for r in task.train + task.test}
    return kepler_table(tmp / "kepler", synsets, progress=ctx.progress)


def _summary(rows: list[dict], task: str, variant: str) -> dict[str, float]:
    sel = [r for r in rows if r["task"] == task and r["variant"] == variant]
    acc = [100 * r["accuracy"] for r in sel]
    f1 = [100 * r["macro_f1"] for r in sel]
    return {"acc": float(np.mean(acc)), "acc_std": float(np.std(acc)), "f1": float(np.mean(f1)),
            "f1_std": float(np.std(f1)), "n": sel[0]["n"], "entities": sel[0]["entities_per_test_example"]}


def _reported(S: ERNIESettings, kind: str) -> list[str]:
    """The variants in a task's table: those run, and the no-entities test of each that has one."""
    from ..knowledge.ernie.study import VARIANTS

    out = []
    for v in _trained(S, kind):
        out += [v] + ([f"{v}-no-entities-at-test"] if VARIANTS[v].also_without else [])
    return out


def _report(ctx: RecipeContext, S: ERNIESettings, tasks: dict, entities, linking: dict, pretraining: dict,
            rows: list[dict], tuning: dict) -> dict[str, Any]:
    fmt = lambda m, s: f"{m:.1f} ± {s:.1f}"  # noqa: E731
    tables, measured = [], {}
    for kind, task in tasks.items():
        table = []
        for v in _reported(S, kind):
            s = _summary(rows, kind, v)
            table.append([v, fmt(s["acc"], s["acc_std"]), fmt(s["f1"], s["f1_std"]), s["entities"]])
            measured[f"{kind}.{v}.accuracy"] = s["acc"]
            measured[f"{kind}.{v}.macro_f1"] = s["f1"]
        tables.append({"title": f"{kind}: test accuracy and macro-F1 (%), mean ± std over seeds {list(S.seeds)}; "
                                f"{len(task.labels)} classes, {len(task.train)} train / "
                                f"{_summary(rows, kind, S.variants[0])['n']} test examples",
                       "columns": ["variant", "accuracy", "macro-F1", "entities per test example"], "rows": table})
        measured[f"{kind}.train"] = len(task.train)
    tables.append({"title": "Entity linking on the tasks' own test mentions (the linker, not the gold entity)",
                   "columns": ["task", "linked", "linked to the gold entity", "mentions"],
                   "rows": [[k, f"{100 * v['linked']:.1f}%", f"{100 * v['correct']:.1f}%", v["mentions"]]
                            for k, v in linking.items()]})
    if tuning["validation"]:
        tables.append({"title": f"Fine-tuning setting chosen on validation (plain MiniLM, seed {S.seeds[0]}, up to "
                                f"{S.max_validation} validation examples; the chosen one serves every variant)",
                       "columns": ["task", "loss", "lr", "validation accuracy", "validation macro-F1", "chosen"],
                       "rows": [[r["task"], r["loss"], r["lr"], f"{100 * r['accuracy']:.1f}",
                                 f"{100 * r['macro_f1']:.1f}",
                                 "yes" if tuning["chosen"][r["task"]] == {"loss": r["loss"], "lr": r["lr"]} else ""]
                                for r in tuning["validation"]]})
    for k, c in tuning["chosen"].items():
        measured[f"{k}.tuning"] = f"{c['loss']} lr {c['lr']}"
    for k, v in linking.items():
        measured[f"{k}.linked"] = v["linked"]
        measured[f"{k}.linked_gold"] = v["correct"]
    if not {"plain", "ernie"} <= set(S.variants):
        raise ConfigError("the ernie recipe compares 'plain' and 'ernie'; keep both in its variants")
    gain = {k: measured[f"{k}.ernie.accuracy"] - measured[f"{k}.plain.accuracy"] for k in tasks}
    headline = {"metric": "test accuracy, MiniLM -> ERNIE (TransE entities, dEA pretraining), mean over seeds",
                "ours": "; ".join(f"{k} {measured[f'{k}.plain.accuracy']:.1f} -> {measured[f'{k}.ernie.accuracy']:.1f}"
                                  for k in tasks),
                "paper": "FIGER 52.0 -> 57.2; FewRel F1 84.9 -> 88.3 (BERT-base -> ERNIE)",
                "peer": "random entity vectors / no entities at test (in the tables)"}
    measured.update({f"{k}.gain": g for k, g in gain.items()})
    kge = [p for p in entities.meta.get("parts", [])]
    notes = [
        f"Entity table: {len(entities)} entities, {entities.dim}-d TransE (PyKEEN) per graph: "
        + "; ".join(f"{p.get('kg')}: {p.get('entities')} entities, {p.get('triples')} triples, "
                    f"{p.get('train_seconds')} s" for p in kge) + ".",
        f"dEA + MLM pretraining: {pretraining['texts']} linked texts holding {pretraining['aligned_entities']} aligned "
        f"entities, {pretraining['steps']} steps of {S.pretrain_batch}, loss {pretraining['loss_first']:.3f} -> "
        f"{pretraining['loss_last']:.3f} ({pretraining['seconds']} s). Aggregators in blocks {pretraining['t_layers']}-"
        f"{pretraining['blocks'] - 1} of MiniLM's {pretraining['blocks']}, fusion starting at zero. No validation or "
        "test sentence of either task is in the pretraining text (pieces holding one are dropped).",
        f"Fine-tuning: {S.tune.steps} steps of {S.tune.batch_size}, every variant of a task the same; the loss and "
        "learning rate per task: " + "; ".join(f"{k} {c['loss']} at lr {c['lr']}" for k, c in tuning["chosen"].items())
        + " (chosen on validation where several were tried); no setting chosen on test.",
        "Variants: plain = MiniLM (same MLM-head checkpoint) with the same head; ernie-no-dea = aggregators added at "
        "fine-tuning; ernie-random = the table replaced by norm-matched random vectors; ernie-no-dea-random = the "
        "same for ernie-no-dea (its control); ernie-no-entities-at-test = "
        "the ernie model fine-tuned with entities, tested without; ernie-gold = the task's mentions given their gold "
        "entity (an upper bound on linking); ernie-kepler-no-dea = aggregators added at fine-tuning over KEPLER's "
        f"description embeddings of the synsets (a KEPLER run of {S.kepler_steps} steps on a {S.kepler_entities}-synset "
        "WordNet subgraph, MiniLM encoder, mean pooling; typing only), to set beside ernie-no-dea (TransE).",
        f"Paper's gains (BERT-base, Wikidata, 4 knowledge-driven benchmarks): typing {PAPER['typing']}; relations "
        f"{PAPER['relation']}.",
    ]
    if ctx.quick:
        notes.append(f"Quick run: {S.pretrain_steps} dEA steps, {S.tune.steps} fine-tuning steps, one seed, "
                     f"{S.typing_max_train} typing training examples, {S.max_test} test examples, "
                     f"{S.knowledge.kge.dim}-d TransE of {S.knowledge.kge.epochs} epochs: a smoke run whose accuracies "
                     "say little; `plmkit reproduce ernie` is the measurement.")
    return {"headline": headline, "measured": measured, "tables": tables, "plots": _plot(ctx, S, tasks, rows),
            "details": {"settings": dataclasses.asdict(S), "rows": rows, "linking": linking, "tuning": tuning,
                        "pretraining": pretraining, "entities": entities.meta},
            "notes": notes}


def _plot(ctx: RecipeContext, S: ERNIESettings, tasks: dict, rows: list[dict]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tasks), figsize=(5.2 * len(tasks), 3.8), squeeze=False)
    for ax, kind in zip(axes[0], tasks):
        names = _reported(S, kind)
        stats = [_summary(rows, kind, v) for v in names]
        ax.barh(range(len(stats)), [s["acc"] for s in stats], xerr=[s["acc_std"] for s in stats], capsize=3,
                color=["#888" if v == "plain" else "#3a7" for v in names])
        ax.set_yticks(range(len(stats)), names)
        ax.invert_yaxis()
        ax.set_xlabel("test accuracy (%)")
        ax.set_title(kind)
    return [ctx.save_figure(fig, "ernie.png")]
