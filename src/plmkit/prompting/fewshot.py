"""The LM-BFF few-shot protocol: K examples per class for train and K for dev, drawn per seed; the rest is test.

>>> from plmkit.data.tasks import classification_task
>>> from plmkit.prompting.fewshot import few_shot_split
>>> split = few_shot_split(classification_task("polarity"), k=16, seed=1)   # doctest: +SKIP
>>> len(split.train), len(split.dev), len(split.test)                        # doctest: +SKIP
(32, 32, 136)

Every method of a run sees the same splits (the seed alone decides them). Results are reported as mean (std)
over the splits with a failure rate: the share of runs whose test accuracy is at or below the majority-class
accuracy of that split's test set.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..data.tasks import ClassificationTask, Row
from ..errors import ConfigError


@dataclass(frozen=True)
class FewShotSplit:
    task: str
    seed: int
    k: int | None  # examples per class in train and in dev; None: the task's full splits
    train: list[Row]
    dev: list[Row]
    test: list[Row]
    label_names: tuple[str, ...]

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def majority_accuracy(self) -> float:
        """Accuracy on test of always answering its most frequent class."""
        counts = np.bincount([r["label"] for r in self.test], minlength=self.num_labels)
        return float(counts.max() / max(1, counts.sum()))


def few_shot_split(task: ClassificationTask, k: int | None, seed: int, max_test: int | None = None) -> FewShotSplit:
    """``k`` examples per class for train and ``k`` more for dev, drawn with ``seed`` from all of the task's rows;
    the rest is test (``max_test`` keeps a seeded, per-class proportional sample of it). ``k=None`` uses the
    task's own train / validation / test splits (full data)."""
    rng = np.random.default_rng(seed)
    if k is None:
        test = _sample_stratified(task.test, max_test, rng)
        return FewShotSplit(task.name, seed, None, list(task.train), list(task.validation), test, task.label_names)
    if k < 1:
        raise ConfigError(f"k must be >= 1 (examples per class), got {k}")
    train, dev, rest = [], [], []
    rows = task.rows()
    for label in range(task.num_labels):
        mine = [r for r in rows if r["label"] == label]
        if len(mine) < 2 * k + 1:
            raise ConfigError(f"task '{task.name}' has {len(mine)} rows of class '{task.label_names[label]}': "
                              f"k={k} needs at least {2 * k + 1} (k train, k dev, one test); lower --k")
        order = rng.permutation(len(mine))
        train += [mine[i] for i in order[:k]]
        dev += [mine[i] for i in order[k:2 * k]]
        rest += [mine[i] for i in order[2 * k:]]
    shuffle = lambda xs: [xs[i] for i in rng.permutation(len(xs))]  # noqa: E731
    return FewShotSplit(task.name, seed, k, shuffle(train), shuffle(dev), _sample_stratified(rest, max_test, rng),
                        task.label_names)


def _sample_stratified(rows: list[Row], n: int | None, rng: np.random.Generator) -> list[Row]:
    """``rows`` shuffled; with ``n`` only about ``n`` of them, each class keeping its share (at least one)."""
    if n is None or n >= len(rows):
        return [rows[i] for i in rng.permutation(len(rows))]
    labels = sorted({r["label"] for r in rows})
    kept: list[Row] = []
    for label in labels:
        mine = [r for r in rows if r["label"] == label]
        take = max(1, round(n * len(mine) / len(rows)))
        kept += [mine[i] for i in rng.permutation(len(mine))[:take]]
    return [kept[i] for i in rng.permutation(len(kept))]


def few_shot_splits(task: ClassificationTask, k: int | None, seeds: Sequence[int],
                    max_test: int | None = None) -> list[FewShotSplit]:
    return [few_shot_split(task, k, s, max_test) for s in seeds]


@dataclass
class MethodResult:
    """One method over the splits of a run: test accuracy per split, with the summary the papers report."""

    method: str
    task: str
    k: int | None
    accuracies: list[float] = field(default_factory=list)
    majorities: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    extra: list[dict] = field(default_factory=list)  # per split: whatever the method reports (e.g. the sequences)
    resumed: int = 0  # splits taken from an earlier run's store (see harness.run_fewshot)

    def add(self, accuracy: float, split: FewShotSplit, seconds: float, extra: dict | None = None) -> None:
        self.accuracies.append(float(accuracy))
        self.majorities.append(split.majority_accuracy())
        self.seconds.append(round(float(seconds), 2))
        self.extra.append(extra or {})

    def summary(self) -> dict:
        acc = np.array(self.accuracies)
        failures = [a <= m + 1e-9 for a, m in zip(self.accuracies, self.majorities)]
        return {"method": self.method, "task": self.task, "k": self.k, "runs": len(acc),
                "mean": float(acc.mean()) if len(acc) else None,
                "std": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
                "failure_rate": float(np.mean(failures)) if failures else None,
                "accuracies": self.accuracies, "majority": self.majorities, "seconds": self.seconds,
                "extra": self.extra, "resumed": self.resumed}


def format_summary(s: dict) -> str:
    """``mean (std)`` in percent with the failure rate, e.g. ``71.3 (4.2), fail 0/5``."""
    fails = round(s["failure_rate"] * s["runs"]) if s["runs"] else 0
    return f"{100 * s['mean']:.1f} ({100 * s['std']:.1f}), fail {fails}/{s['runs']}"
