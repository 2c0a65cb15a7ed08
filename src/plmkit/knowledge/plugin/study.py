"""The pieces a Knowledge Plugin study is made of, shared by the recipe and the CLI: the general mapper map-tuned on
linked text, downstream classifiers trained without knowledge (full fine-tuning, LoRA, prompt tuning), and one
plug-and-play evaluation with its controls and task-specific map-tuning.

Tasks and linking are the ERNIE study's (:mod:`plmkit.data.entity_tasks`, :func:`plmkit.knowledge.entities.kb_linker`);
the entity table is its TransE table, with a zero row in front for entities it lacks.
"""
from __future__ import annotations

import copy
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ... import arch
from ...errors import ConfigError
from ...train.loop import TrainConfig
from ..ernie.finetune import MARKS, marked_task, scores
from .mapper import Mapper, MapperConfig
from .maptune import MapTuneConfig, map_tune
from .inject import detach
from .plug import CONTROLS, evaluate_controls, plugged, predict_classes, task_map_tune
from .records import token_mentions, with_descriptions

TUNINGS = ("full", "lora", "prompt")
DESCRIPTION_ROOM = 96  # word pieces allowed beyond max_length for the descriptions written into a text


@dataclass(frozen=True)
class MapTuning:
    """How a mapper is trained: steps, batch, learning rate (the mapper alone trains), dropout on the frozen model."""

    steps: int = 300
    batch_size: int = 16
    lr: float = 1e-3
    dropout: float = 0.25
    max_length: int = 64
    kind: str = "linear"

    def train_config(self, out_dir: str | Path, seed: int, progress: bool = False) -> TrainConfig:
        return TrainConfig(out_dir=str(out_dir), max_steps=self.steps, batch_size=self.batch_size, lr=self.lr,
                           warmup_steps=max(1, self.steps // 10), resume=False, seed=seed, mixed_precision="auto",
                           progress=progress, log_every=max(1, self.steps // 10))


@dataclass(frozen=True)
class Downstream:
    """How the downstream classifiers are trained, without knowledge: ``steps`` of ``batch_size``; learning rates
    for full fine-tuning, LoRA (rank ``lora_rank``) and prompt tuning (``virtual_tokens`` soft tokens)."""

    steps: int = 200
    batch_size: int = 16
    full_lr: float = 1e-4
    lora_lr: float = 1e-3
    prompt_lr: float = 3e-2
    lora_rank: int = 8
    virtual_tokens: int = 16
    max_length: int = 64


def describe_entity(entity: str) -> str | None:
    """A short text of a WordNet synset (its gloss) or a geonames entity (its facts); None when unknown."""
    from ...data.geonames import geonames_descriptions
    from ...data.wordnet import wordnet_graph

    if entity.startswith("geo:"):
        return geonames_descriptions().get(entity)
    synset = wordnet_graph().synsets.get(entity)
    return synset.description if synset is not None else None


def general_mapper(lm: nn.Module, tokenizer: Any, entities: Any, texts: Sequence[str], mentions: Sequence[Sequence[Any]],
                   settings: MapTuning, out_dir: str | Path, *, seed: int = 0, progress: bool = False,
                   heldout: float = 0.1) -> tuple[Mapper, dict[str, Any]]:
    """Map-tune a mapper on linked ``texts`` with the masked (or causal) LM ``lm`` frozen; returns the mapper (the
    plug detached again) and what was trained (mentions, losses, seconds) with the mention loss on the held-out
    ``heldout`` share of the texts under each control (:func:`~plmkit.knowledge.plugin.plug.mention_loss_controls`)."""
    from .plug import mention_loss_controls
    from .records import plug_table

    records = [r for r in token_mentions(tokenizer, texts, mentions, entities, max_length=settings.max_length,
                                         keep_unknown=False) if r["mentions"]]
    if len(records) < 2:
        raise ConfigError("fewer than two texts hold a mention of an entity in the table; link the texts with a "
                          "linker over the table's knowledge graph")
    n_held = max(1, int(len(records) * heldout))
    train, held = records[n_held:], records[:n_held]
    dim = lm.get_input_embeddings().weight.shape[1]
    mlm = not arch.is_causal(lm)
    mapper = Mapper(MapperConfig(kg_dim=entities.dim, model_dim=dim, kind=settings.kind), seed=seed)
    table = plug_table(entities.vectors)
    result = map_tune(lm, mapper, table, tokenizer, train, settings.train_config(out_dir, seed, progress),
                      MapTuneConfig(dropout=settings.dropout, mlm=mlm))
    detach(lm)
    mapper.eval()
    losses = mention_loss_controls(lm, tokenizer, held, mapper, table, mlm=mlm, seed=seed)
    return mapper, {"texts": len(train), "mentions": sum(len(r["mentions"]) for r in train),
                    "heldout_texts": len(held), "heldout_mention_loss": losses,
                    "steps": settings.steps, "loss_first": result.losses[0] if result.losses else None,
                    "loss_last": result.losses[-1] if result.losses else None,
                    "seconds": round(result.totals.get("seconds", 0.0), 1)}


def downstream_model(model_name: str, texts: Sequence[str], labels: Sequence[int], num_labels: int, tuning: str,
                     settings: Downstream, *, seed: int = 0, progress: bool = False) -> tuple[nn.Module, Any]:
    """A sequence classifier trained on ``texts`` without any knowledge: ``full`` fine-tuning, ``lora`` or
    ``prompt`` tuning (peft, the backbone frozen, the head trained). Returns (model in eval mode, tokenizer)."""
    from ...analysis.skill_neurons import SkillConfig, tune
    from ...assets.models import quiet_load_report

    if tuning not in TUNINGS:
        raise ConfigError(f"unknown tuning '{tuning}'; choose from {', '.join(TUNINGS)}")

    @dataclass
    class _Task:
        train: list
        label_names: tuple

    config = SkillConfig(virtual_tokens=settings.virtual_tokens, steps=settings.steps,
                         batch_size=settings.batch_size, lr=settings.prompt_lr, delta_lr=settings.lora_lr,
                         full_lr=settings.full_lr, lora_rank=settings.lora_rank, max_length=settings.max_length,
                         progress=progress)
    rows = [{"text": t, "label": int(y)} for t, y in zip(texts, labels)]
    with quiet_load_report():  # the new head's MISSING keys are expected
        return tune(model_name, _Task(rows, tuple(str(i) for i in range(num_labels))), config, seed=seed,
                    tuning=tuning)


@dataclass
class PlugTask:
    """A task's rows as plug records: ``train`` / ``test`` (``{"input_ids", "mentions", "label"}``), the marked
    texts the downstream models train on, and the test texts with descriptions written in."""

    kind: str
    num_labels: int
    train_texts: list[str]
    train: list[dict]
    test: list[dict]
    test_described: list[dict]


def plug_task(task: Any, kind: str, tokenizer: Any, entities: Any, linker: Any, *, max_length: int = 64,
              max_train: int | None = None, max_test: int | None = None) -> PlugTask:
    """Mark the task's mentions, link them, and tokenize train and test with each mention's plug-table row."""
    def build(rows: list[dict]) -> tuple[list[str], list[dict], list[list[Any]]]:
        texts, mentions = marked_task(rows, kind, linker)
        recs = token_mentions(tokenizer, texts, mentions, entities, max_length=max_length)
        for rec, r in zip(recs, rows):
            rec["label"] = int(r["label"])
        return texts, recs, mentions

    train_rows, test_rows = task.train[:max_train], task.test[:max_test]
    train_texts, train, _ = build(train_rows)
    test_texts, test, test_mentions = build(test_rows)
    marks = "".join(MARKS[kind])
    described = tokenizer(with_descriptions(test_texts, test_mentions, describe_entity, marks=marks),
                          truncation=True, max_length=max_length + DESCRIPTION_ROOM)["input_ids"]
    test_described = [{"input_ids": list(ids), "mentions": [], "label": r["label"]} for ids, r in zip(described, test)]
    return PlugTask(kind, task.num_labels, train_texts, train, test, test_described)


def plug_and_play(model_name: str, data: PlugTask, tokenizer: Any, mapper: Mapper, table: torch.Tensor, *,
                  tuning: str, downstream: Downstream, task_mapping: MapTuning | None, seed: int, work: Path,
                  controls: Sequence[str] = CONTROLS, progress: bool = False) -> list[dict[str, Any]]:
    """Train one downstream model without knowledge, then score it on the test records under every control and,
    with ``task_mapping``, after task-specific map-tuning of a copy of the general mapper (the model frozen).
    One row per condition."""
    model, _ = downstream_model(model_name, data.train_texts, [r["label"] for r in data.train], data.num_labels,
                                tuning, downstream, seed=seed, progress=progress)
    results = evaluate_controls(model, tokenizer, data.test, mapper, table, description_records=data.test_described,
                                controls=controls, seed=seed)
    if task_mapping is not None:
        tuned = copy.deepcopy(mapper)
        with tempfile.TemporaryDirectory(dir=work) as tmp:
            task_map_tune(model, tuned, table, tokenizer, data.train, task_mapping.train_config(tmp, seed, progress),
                          dropout=task_mapping.dropout)
        detach(model)
        with plugged(model, tuned.eval(), table):
            results["task-specific plug"] = scores(predict_classes(model, tokenizer, data.test), data.test)
    per_example = sum(len(r["mentions"]) for r in data.test) / max(len(data.test), 1)
    return [{"task": data.kind, "tuning": tuning, "seed": seed, "condition": c, **s,
             "mentions_per_test_example": round(per_example, 2)} for c, s in results.items()]


@dataclass(frozen=True)
class QuestionSettings:
    """The entity-question study of a causal LM: general map-tuning on linked text, ``shots`` few-shot examples
    from the training split, greedy answers of up to ``max_new_tokens``, task-specific map-tuning on the training
    questions' answers (None: skipped), at most ``max_test`` test questions."""

    general: MapTuning = MapTuning(steps=200, batch_size=8)
    task_mapping: MapTuning | None = MapTuning(steps=100, batch_size=8, max_length=256)
    shots: int = 4  # one example per relation (the prefix takes the relations in turn)
    max_new_tokens: int = 8
    max_test: int | None = None


def balanced(rows: Sequence[dict], n: int | None, key: str = "relation") -> list[dict]:
    """Up to ``n`` rows taken in turn from each ``key`` value (in the rows' order), so a cut keeps every relation."""
    if n is None or n >= len(rows):
        return list(rows)
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r[key], []).append(r)
    out, queues = [], [list(g) for _, g in sorted(groups.items())]
    while len(out) < n and any(queues):
        for q in queues:
            if q and len(out) < n:
                out.append(q.pop(0))
    return out


def entity_question_study(lm: nn.Module, tokenizer: Any, entities: Any, texts: Sequence[str],
                          mentions: Sequence[Sequence[Any]], questions: Any, settings: QuestionSettings, *,
                          seed: int, work: Path, progress: bool = False) -> tuple[list[dict], dict[str, Any]]:
    """Map-tune a mapper for the causal LM ``lm`` on linked text, then answer the test questions closed-book under
    every control and after task-specific map-tuning. Rows per condition (exact match, contained, per relation),
    and the map-tuning record."""
    from .qa import (answer_scores, few_shot_prefix, greedy_answers, question_controls, question_map_tune,
                     question_records)
    from .records import plug_table

    tokenizer.padding_side = "left"  # decoding batches
    mapper, general = general_mapper(lm, tokenizer, entities, texts, mentions, settings.general, work / f"qa{seed}",
                                     seed=seed, progress=progress)
    table = plug_table(entities.vectors)
    prefix = few_shot_prefix(questions.train, settings.shots, seed)
    test_rows = balanced(questions.test, settings.max_test)
    records = question_records(tokenizer, test_rows, entities, prefix)
    described = question_records(tokenizer, test_rows, entities, prefix, describe=describe_entity)
    results = question_controls(lm, tokenizer, records, mapper, table, described=described, seed=seed,
                                max_new_tokens=settings.max_new_tokens)
    if settings.task_mapping is not None:
        tuned = copy.deepcopy(mapper)
        train = question_records(tokenizer, questions.train, entities, prefix, with_answer=True)
        with tempfile.TemporaryDirectory(dir=work) as tmp:
            question_map_tune(lm, tuned, table, tokenizer, train, settings.task_mapping.train_config(tmp, seed, progress),
                              dropout=settings.task_mapping.dropout)
        answers = greedy_answers(lm, tokenizer, records, max_new_tokens=settings.max_new_tokens)
        detach(lm)
        results["task-specific plug"] = {**answer_scores(answers, records), "answers": answers}
    rows = []
    for condition, r in results.items():
        by_relation = {}
        for rel in sorted({q["relation"] for q in test_rows}):
            idx = [i for i, q in enumerate(test_rows) if q["relation"] == rel]
            by_relation[rel] = answer_scores([r["answers"][i] for i in idx], [records[i] for i in idx])["contained"]
        rows.append({"task": "questions", "seed": seed, "condition": condition, "exact_match": r["exact_match"],
                     "contained": r["contained"], "n": r["n"], "contained_by_relation": by_relation,
                     "examples": [[q["question"], q["answer"], a] for q, a in zip(test_rows[:5], r["answers"][:5])]})
    return rows, general


def kg_parts(entities: Any) -> dict[str, Any]:
    """The joined table cut back into one table per graph (``geo:`` ids are geonames, the rest WordNet)."""
    from ..entities import EntityEmbeddings

    out = {}
    for kg, keep in (("wordnet", lambda i: not i.startswith("geo:")), ("geonames", lambda i: i.startswith("geo:"))):
        rows = [j for j, i in enumerate(entities.ids) if keep(i)]
        if rows:
            out[kg] = EntityEmbeddings([entities.ids[j] for j in rows], entities.vectors[rows].clone(),
                                       meta={"kg": kg, "from": entities.meta.get("parts", [])})
    return out


def domain_mappers(lm: nn.Module, tokenizer: Any, entities: Any, texts: Sequence[str], settings: MapTuning,
                   work: Path, *, seed: int = 0, progress: bool = False) -> dict[str, dict[str, Any]]:
    """One mapper per knowledge graph for the same frozen model, each map-tuned on the texts linked to its own
    graph, then swapped in turn (detached and attached with its own table): each one's held-out mention loss per
    control on its own graph's text (see :func:`general_mapper`)."""
    from ..entities import kb_linker

    out = {}
    for kg, part in kg_parts(entities).items():
        mentions = kb_linker(kg).link(list(texts))
        _, info = general_mapper(lm, tokenizer, part, texts, mentions, settings, work / f"domain-{kg}", seed=seed,
                                 progress=progress)
        out[kg] = info
    return out
