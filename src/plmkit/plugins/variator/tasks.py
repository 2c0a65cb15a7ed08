"""The real tasks plugins are trained and scored on (shared by the CLI, the recipe and the benchmark).

- ``topics``: MiniLM fine-tuned on fortune topics (4 real categories, :func:`plmkit.reproduce.shared.fortune_topics`);
  plugins are distilled on the train texts, accuracy is scored on the test split.
- ``text``: a causal LM (SmolLM2) on English passages (:func:`plmkit.data.text.english_corpus`); even
  passages train the plugins, odd ones are held out for perplexity.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...errors import ConfigError
from ...train import TrainConfig, TrainResult, causal_lm_collate
from .config import VariatorConfig
from .model import attach
from .train import distill

TASKS = ("topics", "text")


@dataclass(frozen=True)
class TaskData:
    task: str
    train: list[str]
    test: list[str]
    labels: list[int] | None  # test labels (classification)
    max_length: int
    validation: list[str] = field(default_factory=list)  # for choosing settings; never the test split
    validation_labels: list[int] | None = None
    unlabeled: list[str] = field(default_factory=list)  # extra in-domain text for distillation (no labels needed)

    def split(self, name: str) -> tuple[list[str], list[int] | None]:
        """(texts, labels) of ``test`` or ``validation``."""
        if name == "test":
            return self.test, self.labels
        if name == "validation":
            return self.validation, self.validation_labels
        raise ConfigError(f"split must be 'test' or 'validation', got '{name}'")


def task_data(task: str, *, max_length: int | None = None, n_test: int | None = None, corpus_chars: int = 400_000,
              unlabeled: int = 0, seed: int = 0) -> TaskData:
    """Train texts (for distillation), validation and the scored test split of ``task``.

    ``unlabeled`` (``topics`` only): up to that many fortunes of the other categories, drawn with ``seed``,
    as extra distillation text; none of them equals a text of any topic split.
    """
    if task == "topics":
        from ...reproduce.shared import TopicSplit, fortune_topics

        parts = fortune_topics(TopicSplit(seed=seed))
        test, val = parts["test"][:n_test], parts["validation"][:n_test]
        extra = _other_fortunes(parts, unlabeled, seed) if unlabeled else []
        return TaskData(task, [r["text"] for r in parts["train"]], [r["text"] for r in test],
                        [r["label"] for r in test], max_length or 64, [r["text"] for r in val],
                        [r["label"] for r in val], extra)
    if unlabeled:
        raise ConfigError("unlabeled text is an option of the 'topics' task (the 'text' task is unlabeled already)")
    if task == "text":
        from ...data.text import english_corpus

        corpus = english_corpus(max_chars=corpus_chars, seed=seed)
        held = corpus[1::2]  # odd passages: validation and test halves
        n = n_test or len(held) // 2
        return TaskData(task, corpus[::2], held[1::2][:n], None, max_length or 128, held[::2][:n], None)
    raise ConfigError(f"unknown task '{task}'; choose from {', '.join(TASKS)}")


def _other_fortunes(parts: dict[str, list[dict]], n: int, seed: int) -> list[str]:
    import numpy as np

    from ...data.text import fortunes
    from ...reproduce.shared import TOPICS

    norm = lambda t: " ".join(t.split())  # noqa: E731
    taken = {norm(r["text"]) for rows in parts.values() for r in rows}
    pool = list(dict.fromkeys(norm(r["text"]) for r in fortunes() if r["category"] not in TOPICS))
    pool = [t for t in pool if t not in taken]
    order = np.random.default_rng(seed).permutation(len(pool))[:n]
    return [pool[i] for i in order]


def load_task_model(task: str, model: str, *, progress: bool = False) -> tuple[nn.Module, Any, dict]:
    """The model a task plugs: for ``topics`` with ``model="minilm"``, the fine-tuned fortune-topic classifier
    (built once, then from the cache); otherwise ``model`` loaded as it is (a classifier folder for
    ``topics``, a causal LM for ``text``)."""
    from ...assets import load_model

    if task == "topics" and model == "minilm":
        from ...reproduce.shared import ClassifierSettings, topic_classifier

        return topic_classifier(ClassifierSettings(), progress=progress)
    kind = "sequence-classification" if task == "topics" else "causal-lm"
    m, tok = load_model(model, task=kind)
    return m.eval(), tok, {}


def train_plugins(model: nn.Module, tokenizer, data: TaskData, config: VariatorConfig, out_dir: str | Path, *,
                  steps: int, batch_size: int = 16, lr: float = 1e-3, seed: int = 0, mixed_precision: str = "auto",
                  progress: bool = True) -> TrainResult:
    """Attach fresh plugins (seeded) and distil them on the task's train texts (and its unlabeled ones)."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    attach(model, config, seed=seed)
    ids = tokenizer(data.train + data.unlabeled, truncation=True, max_length=data.max_length)["input_ids"]
    records = [{"input_ids": e} for e in ids if len(e) >= 2]
    train_config = TrainConfig(out_dir=str(out_dir), max_steps=steps, batch_size=batch_size, lr=lr,
                          warmup_steps=max(1, steps // 10), resume=False, progress=progress, seed=seed,
                          mixed_precision=mixed_precision, log_every=max(1, steps // 10))
    return distill(model, records, train_config, collate_fn=causal_lm_collate(tokenizer))


def evaluate(model: nn.Module, tokenizer, data: TaskData, split: str = "test", batch_size: int = 32
             ) -> dict[str, float]:
    """``{"accuracy"}`` on a classification split, ``{"ppl"}`` on held-out text (``split``: test or validation)."""
    from ...data.batching import token_batches
    from ...device import model_device

    texts, labels = data.split(split)
    model.eval()
    if data.labels is not None:
        from ...train.classify import predict_labels

        from ...eval import accuracy

        preds = predict_labels(model, tokenizer, texts, max_length=data.max_length, batch_size=batch_size)
        return {"accuracy": accuracy(preds, labels)}
    from ...eval.lm import perplexity

    return {"ppl": perplexity(model, token_batches(tokenizer, texts, 8, data.max_length, device=model_device(model)))}


def sample_batch(tokenizer, data: TaskData, batch_size: int) -> dict[str, torch.Tensor]:
    """A prefill batch of test texts, padded to the longest (what the timing runs)."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    enc = tokenizer(data.test[:batch_size], padding=True, truncation=True, max_length=data.max_length,
                    return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
