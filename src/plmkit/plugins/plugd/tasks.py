"""The documents, the two tasks on them, and plugin-pretraining examples, all from the installed assets.

Documents render a country's geonames facts as a short text; every fact a question or claim asks about is in
its document. Question answering (capital, currency, continent, largest city; greedy generation, exact match)
and fact verification (true claims, and false ones that take another country's value; " True" vs " False")
share the documents, so one stored plugin serves both. Splits are by document: test documents are never seen
in training. Pretraining examples come from English prose (next-sentence generation, recurring-span
prediction), never from the task documents.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ...errors import ConfigError

QUESTIONS = {"capital": "What is the capital of {}?", "currency": "What is the currency of {}?",
             "continent": "On which continent is {}?", "largest_city": "What is the largest city of {}?"}
CLAIMS = {"capital": "The capital of {} is {}.", "currency": "The currency of {} is the {}.",
          "continent": "{} is in {}.", "largest_city": "The largest city of {} is {}."}
TASKS = ("qa", "verify")
MODES = ("concat", "plugd", "closed")  # the document in the input, as a plugin, or not at all


def _join(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def country_documents() -> list[dict[str, Any]]:
    """``{"id", "country", "text", "facts"}`` for every country with a capital, currency and continent."""
    from ...data.geonames import city_facts, countries

    largest: dict[str, str] = {}
    for c in city_facts():  # by population, largest first
        largest.setdefault(c["object"], c["subject"])
    docs = []
    for c in countries():
        if not (c["capital"] and c["currency"] and c["continent"]):
            continue
        facts = {"capital": c["capital"], "currency": c["currency"], "continent": c["continent"]}
        text = (f"{c['name']} is a country in {c['continent']}. Its capital is {c['capital']} and its currency is "
                f"the {c['currency']}.")
        if c["neighbours"]:
            text += f" It borders {_join(c['neighbours'][:4])}."
        city = largest.get(c["name"])
        if city and city != c["capital"]:
            facts["largest_city"] = city
            text += f" Its largest city is {city}."
        if c["population"]:
            text += f" About {c['population']:,} people live there."
        docs.append({"id": f"country/{c['code']}", "country": c["name"], "text": text, "facts": facts})
    return docs


@dataclass(frozen=True)
class Split:
    train: list[dict]
    validation: list[dict]
    test: list[dict]


def split_documents(docs: Sequence[dict], n_validation: int, n_test: int, seed: int = 0) -> Split:
    """A seeded split by document."""
    if n_validation + n_test >= len(docs):
        raise ConfigError(f"{len(docs)} documents cannot give {n_validation} validation and {n_test} test ones")
    order = list(docs)
    random.Random(seed).shuffle(order)
    return Split(order[n_validation + n_test:], order[:n_validation], order[n_validation:n_validation + n_test])


def qa_examples(docs: Sequence[dict]) -> list[dict]:
    """One question per (document, fact): ``{"doc", "prompt", "target", "answer"}``."""
    return [{"doc": d["id"], "prompt": f"Question: {QUESTIONS[rel].format(d['country'])}\nAnswer:",
             "target": f" {value}\n", "answer": value} for d in docs for rel, value in d["facts"].items()]


def verification_examples(docs: Sequence[dict], seed: int = 0) -> list[dict]:
    """One claim per (document, fact), true or (half of the time, seeded) false with another document's value:
    ``{"doc", "prompt", "target", "label"}``."""
    rng = random.Random(seed)
    values: dict[str, list[str]] = {}
    for d in docs:
        for rel, v in d["facts"].items():
            values.setdefault(rel, []).append(v)
    out = []
    for d in docs:
        for rel, value in d["facts"].items():
            label = rng.random() < 0.5
            if not label:
                others = [v for v in values[rel] if v != value]
                if not others:
                    continue
                value = rng.choice(others)
            claim = CLAIMS[rel].format(d["country"], value)
            out.append({"doc": d["id"], "prompt": f"Claim: {claim}\nTrue or False?\nAnswer:",
                        "target": " True" if label else " False", "label": label})
    return out


def examples(task: str, docs: Sequence[dict], seed: int = 0) -> list[dict]:
    if task == "qa":
        return qa_examples(docs)
    if task == "verify":
        return verification_examples(docs, seed)
    raise ConfigError(f"unknown task '{task}'; choose from {TASKS}")


def with_document(example: dict, text: str) -> str:
    """The concatenation baseline's input: the document, then the example's prompt."""
    return f"{text}\n{example['prompt']}"


_WORD = re.compile(r"[A-Za-z][A-Za-z'-]{3,}")


def pretraining_examples(passages: Sequence[str], n: int, seed: int = 0, max_doc_chars: int = 500) -> list[dict]:
    """Plugin-pretraining examples from English passages: ``{"text", "prompt", "target"}`` where ``text`` is the
    document a plugin is made of. Half are next-sentence generation (the sentence after the document), half
    recurring-span prediction (a word of the next sentence that also occurs in the document, blanked)."""
    from ...data.text import iter_sentences

    rng = random.Random(seed)
    out: list[dict] = []
    for passage in passages:
        sentences = list(iter_sentences(passage))
        if len(sentences) < 3:
            continue
        cut = rng.randint(2, len(sentences) - 1)
        doc = " ".join(sentences[:cut])[-max_doc_chars:]
        nxt = sentences[cut]
        if len(nxt) > 200:
            continue
        recurring = sorted({w for w in _WORD.findall(nxt) if w in doc})
        if recurring and rng.random() < 0.5:
            span = rng.choice(recurring)
            blanked = re.sub(rf"\b{re.escape(span)}\b", "___", nxt, count=1)
            out.append({"text": doc, "prompt": f"Fill the blank: {blanked}\nBlank:", "target": f" {span}\n"})
        else:
            out.append({"text": doc, "prompt": "Next sentence:", "target": f" {nxt}\n"})
        if len(out) >= n:
            break
    return out


def lm_collate(tokenizer: Any, max_length: int = 256):
    """Right-padded prompt + target with the loss on the target only; rows with a ``plugin`` (n, d) pass the
    plugins on as a list."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def collate(rows: list[dict]) -> dict[str, Any]:
        ids, labels = [], []
        for r in rows:
            p = tokenizer(r["input"], add_special_tokens=False)["input_ids"]
            t = tokenizer(r["target"], add_special_tokens=False)["input_ids"]
            seq = (p + t)[-max_length:]
            lab = ([-100] * len(p) + t)[-max_length:]
            ids.append(seq)
            labels.append(lab)
        n = max(len(s) for s in ids)
        batch = {"input_ids": torch.tensor([s + [pad] * (n - len(s)) for s in ids]),
                 "attention_mask": torch.tensor([[1] * len(s) + [0] * (n - len(s)) for s in ids]),
                 "labels": torch.tensor([lab + [-100] * (n - len(lab)) for lab in labels])}
        if "plugin" in rows[0]:
            batch["plugins"] = [r["plugin"] for r in rows]
        return batch

    return collate


def normalize(answer: str) -> str:
    a = answer.strip().split("\n")[0].strip().lower().rstrip(".")
    return re.sub(r"^the ", "", a)
