"""Closed-book entity questions for a causal LM, with and without a knowledge plug.

A few-shot prompt (``Question: … / Answer: …`` pairs from the training split, then the question) is answered by
greedy decoding. With the plug, the subject's mapped vector goes in before its mention in the question; the
whole prompt is run again at every decoding step (no KV cache), so the pseudo-token stays where it belongs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ...device import to_device
from ...errors import ConfigError
from ...train.loop import TrainConfig, TrainResult
from .maptune import train_mapper
from .plug import CONTROLS, plug_collate, under_controls
from .records import token_mentions, with_descriptions


@dataclass(frozen=True)
class _Mention:
    start: int
    end: int
    entity: str


def few_shot_prefix(rows: Sequence[dict], shots: int = 4, seed: int = 0) -> str:
    """``shots`` question-answer pairs from ``rows`` (one per relation in turn, seeded) as a prompt prefix."""
    rng = np.random.default_rng(seed)
    by_relation: dict[str, list[dict]] = {}
    for r in rows:
        by_relation.setdefault(r["relation"], []).append(r)
    picked, relations = [], sorted(by_relation)
    while len(picked) < shots and relations:
        rel = relations[len(picked) % len(relations)]
        pool = [r for r in by_relation[rel] if r not in picked]
        if not pool:
            relations.remove(rel)
            continue
        picked.append(pool[int(rng.integers(len(pool)))])
    return "".join(f"Question: {r['question']}\nAnswer: {r['answer']}\n\n" for r in picked)


def question_records(tokenizer: Any, rows: Sequence[dict], entities: Any, prefix: str = "", *,
                     describe: Any = None, with_answer: bool = False, max_length: int = 256) -> list[dict]:
    """Prompt records ``{"input_ids", "mentions", "answer"}``: ``prefix`` + the question + ``"\\nAnswer:"``, the
    subject's mention with its plug-table row (``describe``: the subject's description written in before it
    instead, no mention). ``with_answer`` appends `` answer\\n`` and marks its tokens in ``answer_tokens``
    (task-specific map-tuning)."""
    texts, mentions = [], []
    for r in rows:
        q = f"{prefix}Question: {r['question']}\nAnswer:"
        start = len(prefix) + len("Question: ") + r["subject_start"]
        texts.append(q)
        mentions.append([_Mention(start, start + r["subject_end"] - r["subject_start"], r["subject"])])
    if describe is not None:
        texts, mentions = with_descriptions(texts, mentions, describe), [[] for _ in texts]
    records = token_mentions(tokenizer, texts, mentions, entities, max_length=max_length)
    for rec, r in zip(records, rows):
        rec["answer"] = r["answer"]
        if with_answer:
            extra = tokenizer(f" {r['answer']}\n", add_special_tokens=False)["input_ids"]
            rec["answer_tokens"] = (len(rec["input_ids"]), len(rec["input_ids"]) + len(extra))
            rec["input_ids"] = rec["input_ids"] + extra
    return records


@torch.no_grad()
def greedy_answers(model: nn.Module, tokenizer: Any, records: Sequence[dict], *, entities: bool = True,
                   max_new_tokens: int = 8, batch_size: int = 16) -> list[str]:
    """Greedy continuations of each record's prompt up to the first line break (the attached plug's pseudo-tokens
    in place when ``entities``)."""
    if getattr(tokenizer, "padding_side", "right") != "left":
        raise ConfigError("decoding a batch needs left padding: set tokenizer.padding_side = 'left'")
    model.eval()
    collate = plug_collate(tokenizer, entities=entities)
    out = []
    for i in range(0, len(records), batch_size):
        chunk = [{"input_ids": list(r["input_ids"]), "mentions": r["mentions"]} for r in records[i:i + batch_size]]
        new: list[list[int]] = [[] for _ in chunk]
        done = [False] * len(chunk)
        for _ in range(max_new_tokens):
            batch = collate(chunk)
            nxt = model(**to_device(batch, model)).logits[:, -1].argmax(-1).tolist()
            for j, (row, tok_id) in enumerate(zip(chunk, nxt)):
                if not done[j]:
                    row["input_ids"].append(tok_id)
                    new[j].append(tok_id)
                    done[j] = "\n" in tokenizer.decode(new[j]) or tok_id == tokenizer.eos_token_id
            if all(done):
                break
        out += [tokenizer.decode(g, skip_special_tokens=True).strip().split("\n")[0].strip() for g in new]
    return out


def answer_scores(answers: Sequence[str], records: Sequence[dict]) -> dict[str, float]:
    """Exact match and answer-contained rates (SQuAD normalisation)."""
    from ...eval.metrics import answer_contained, exact_match

    gold = [r["answer"] for r in records]
    return {"exact_match": float(np.mean([exact_match(a, g) for a, g in zip(answers, gold)])),
            "contained": float(np.mean([answer_contained(a, g) for a, g in zip(answers, gold)])), "n": len(gold)}


def question_controls(model: nn.Module, tokenizer: Any, records: Sequence[dict], mapper: nn.Module,
                      table: torch.Tensor, *, described: Sequence[dict] | None = None,
                      controls: Sequence[str] = CONTROLS, seed: int = 0, max_new_tokens: int = 8) -> dict[str, dict]:
    """Answer ``records`` under each control (see :mod:`plmkit.knowledge.plugin.plug`): scores and the answers."""
    def run(recs: Sequence[dict], entities: bool) -> dict:
        answers = greedy_answers(model, tokenizer, recs, entities=entities, max_new_tokens=max_new_tokens)
        return {**answer_scores(answers, recs), "answers": answers}

    return under_controls(model, mapper, table, controls, run, records, described, seed=seed)


def answer_collate(tokenizer: Any):
    """Batches of :func:`question_records` built ``with_answer``: LM labels on the answer's tokens only."""
    base = plug_collate(tokenizer)

    def collate(rows: list[dict]) -> dict:
        batch = base([{"input_ids": r["input_ids"], "mentions": r["mentions"]} for r in rows])
        t = batch["input_ids"].shape[1]
        labels = torch.full_like(batch["input_ids"], -100)
        left = getattr(tokenizer, "padding_side", "right") == "left"
        for b, r in enumerate(rows):
            off = t - len(r["input_ids"]) if left else 0
            a, e = r["answer_tokens"]
            labels[b, off + a:off + e] = batch["input_ids"][b, off + a:off + e]
        batch["labels"] = labels
        return batch

    return collate


def question_map_tune(model: nn.Module, mapper: nn.Module, table: torch.Tensor, tokenizer: Any,
                      records: Sequence[dict], config: TrainConfig, *, dropout: float = 0.25) -> TrainResult:
    """Task-specific map-tuning on questions: only ``mapper`` trains, on the LM loss of the gold answers
    (records from :func:`question_records` with ``with_answer=True``); the model stays frozen and the plug
    attached."""
    if not records or "answer_tokens" not in records[0]:
        raise ConfigError("question map-tuning needs records built with question_records(..., with_answer=True)")
    return train_mapper(model, mapper, table, records, config, answer_collate(tokenizer), dropout=dropout)
