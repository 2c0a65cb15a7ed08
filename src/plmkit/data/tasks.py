"""Text-classification tasks built from the bundled real assets, each split train / validation / test.

>>> from plmkit.data.tasks import binary_task
>>> task = binary_task("polarity")          # doctest: +SKIP
>>> task.train[0]                            # doctest: +SKIP
{'text': '...', 'label': 1}

- ``polarity``: Pang & Lee movie-review sentences (pos = 1), 200 sentences;
- ``drugs``: drugs.com reviews, positive (1) against negative (0), neutral dropped; the asset's test file is
  the test split, its train file gives train and validation;
- ``topics``: fortunes, ``science`` (1) against ``politics`` (0), stratified (texts filed under both dropped);
- ``sentiment3``: drugs.com reviews, negative (0) / neutral (1) / positive (2), split like ``drugs``;
- ``topics4``: fortunes of four categories (:data:`FORTUNE_TOPICS`), texts filed under several dropped.

Splits are drawn once per ``seed`` (``numpy.random.default_rng``) and stratified by label; settings are
chosen on ``validation``, never on ``test``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import ConfigError

Row = dict  # {"text": str, "label": int}
FORTUNE_TOPICS = ("computers", "politics", "science", "songs-poems")


@dataclass(frozen=True)
class ClassificationTask:
    name: str
    train: list[Row]
    validation: list[Row]
    test: list[Row]
    label_names: tuple[str, ...]  # names of labels 0, 1, ...

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def rows(self) -> list[Row]:
        """Every row of the three splits."""
        return self.train + self.validation + self.test

    def split(self, name: str) -> list[Row]:
        if name not in ("train", "validation", "test"):
            raise ConfigError(f"split must be train, validation or test, got '{name}'")
        return getattr(self, name)

    def texts(self, split: str) -> list[str]:
        return [r["text"] for r in self.split(split)]

    def labels(self, split: str) -> np.ndarray:
        return np.array([r["label"] for r in self.split(split)], np.int64)


BinaryTask = ClassificationTask  # the two-class tasks' older name


def _stratified(rows: list[Row], shares: tuple[float, ...], rng: np.random.Generator) -> list[list[Row]]:
    """Split rows into len(shares) + 1 parts (the last takes the rest), per label, then shuffle each part."""
    parts: list[list[Row]] = [[] for _ in range(len(shares) + 1)]
    for label in sorted({r["label"] for r in rows}):
        mine = [r for r in rows if r["label"] == label]
        order = rng.permutation(len(mine))
        start = 0
        for i, share in enumerate(shares):
            n = round(share * len(mine))
            parts[i] += [mine[j] for j in order[start:start + n]]
            start += n
        parts[-1] += [mine[j] for j in order[start:]]
    return [[p[i] for i in rng.permutation(len(p))] for p in parts]


def _dedup(rows: list[Row]) -> list[Row]:
    """Whitespace-normalised texts, first occurrence kept; a text seen with two labels is dropped."""
    labels: dict[str, set] = {}
    for r in rows:
        labels.setdefault(" ".join(r["text"].split()), set()).add(r["label"])
    return [{"text": t, "label": next(iter(ls))} for t, ls in labels.items() if len(ls) == 1 and t]


def _polarity(rng: np.random.Generator) -> ClassificationTask:
    from .text import pang_lee

    rows = _dedup([{"text": r["text"], "label": int(r["label"] == "pos")} for r in pang_lee()])
    test, val, train = _stratified(rows, (0.25, 0.15), rng)
    return ClassificationTask("polarity", train, val, test, ("negative", "positive"))


def _drug_task(rng: np.random.Generator, name: str, labels: tuple[str, ...]) -> ClassificationTask:
    from .text import drug_reviews

    def rows(split: str) -> list[Row]:
        return _dedup([{"text": r["text"], "label": labels.index(r["label"])}
                       for r in drug_reviews(split) if r["label"] in labels])

    val, train = _stratified(rows("train"), (0.15,), rng)
    test = rows("test")
    seen = {r["text"] for r in train + val}
    return ClassificationTask(name, train, val, [r for r in test if r["text"] not in seen], labels)


def _drugs(rng: np.random.Generator) -> ClassificationTask:
    return _drug_task(rng, "drugs", ("negative", "positive"))


def _sentiment3(rng: np.random.Generator) -> ClassificationTask:
    return _drug_task(rng, "sentiment3", ("negative", "neutral", "positive"))


def fortune_topic_rows(categories: tuple[str, ...] = FORTUNE_TOPICS) -> list[Row]:
    """Fortunes of ``categories`` labelled by their index, whitespace-normalised and deduplicated; a text filed
    under several of the categories is dropped (its label is ambiguous)."""
    from collections import Counter

    from .text import fortunes

    by_cat = {cat: list(dict.fromkeys(" ".join(r["text"].split()) for r in fortunes(cat))) for cat in categories}
    seen = Counter(t for texts in by_cat.values() for t in texts)
    return [{"text": t, "label": label} for label, cat in enumerate(categories) for t in by_cat[cat]
            if seen[t] == 1 and t]


def _topics4(rng: np.random.Generator) -> ClassificationTask:
    test, val, train = _stratified(fortune_topic_rows(), (0.2, 0.15), rng)
    return ClassificationTask("topics4", train, val, test, FORTUNE_TOPICS)


def _topics(rng: np.random.Generator) -> ClassificationTask:
    from .text import fortunes

    rows = _dedup([{"text": r["text"], "label": int(cat == "science")}
                   for cat in ("politics", "science") for r in fortunes(cat)])
    test, val, train = _stratified(rows, (0.2, 0.15), rng)
    return ClassificationTask("topics", train, val, test, ("politics", "science"))


TASKS: dict[str, Callable[[np.random.Generator], ClassificationTask]] = {
    "polarity": _polarity, "drugs": _drugs, "topics": _topics}
MULTICLASS_TASKS: dict[str, Callable[[np.random.Generator], ClassificationTask]] = {
    "sentiment3": _sentiment3, "topics4": _topics4}
ALL_TASKS = {**TASKS, **MULTICLASS_TASKS}


def classification_task(name: str, seed: int = 0, max_train: int | None = None) -> ClassificationTask:
    """The task ``name`` (one of :data:`ALL_TASKS`), split with ``seed``; ``max_train`` caps the train split."""
    if name not in ALL_TASKS:
        raise ConfigError(f"unknown task '{name}'; choose from {', '.join(ALL_TASKS)}")
    task = ALL_TASKS[name](np.random.default_rng(seed))
    if max_train is not None:
        task = ClassificationTask(task.name, task.train[:max_train], task.validation, task.test, task.label_names)
    return task


def binary_task(name: str, seed: int = 0, max_train: int | None = None) -> ClassificationTask:
    """The two-class task ``name`` (one of :data:`TASKS`), split with ``seed``; ``max_train`` caps the train split."""
    if name not in TASKS:
        raise ConfigError(f"unknown task '{name}'; choose from {', '.join(TASKS)}")
    return classification_task(name, seed, max_train)
