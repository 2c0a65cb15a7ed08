"""Classification, QA and retrieval metrics on plain Python/numpy inputs."""
from __future__ import annotations

import re
import string
from typing import Sequence

import numpy as np


def accuracy(pred: Sequence, gold: Sequence) -> float:
    if len(pred) != len(gold):
        raise ValueError(f"{len(pred)} predictions for {len(gold)} labels")
    return float(np.mean([p == g for p, g in zip(pred, gold)])) if gold else float("nan")


def f1(pred: Sequence, gold: Sequence, average: str = "macro", labels: Sequence | None = None) -> float:
    """Macro or micro F1 (scikit-learn's definitions)."""
    from sklearn.metrics import f1_score

    return float(f1_score(list(gold), list(pred), average=average, labels=labels, zero_division=0))


def normalize_answer(s: str) -> str:
    """Lower-case, drop punctuation and articles, fold white space (SQuAD's normalisation)."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def exact_match(pred: str, golds: str | Sequence[str]) -> bool:
    golds = [golds] if isinstance(golds, str) else golds
    return any(normalize_answer(pred) == normalize_answer(g) for g in golds)


def answer_contained(pred: str, golds: str | Sequence[str]) -> bool:
    """True if a normalised gold answer occurs as a whole-word span of the normalised prediction."""
    golds = [golds] if isinstance(golds, str) else golds
    p = f" {normalize_answer(pred)} "
    return any(normalize_answer(g) and f" {normalize_answer(g)} " in p for g in golds)


def average_precision(labels: Sequence[int], scores: Sequence[float]) -> float:
    """Average precision of ranking by ``scores`` for binary ``labels`` (scikit-learn's definition)."""
    from sklearn.metrics import average_precision_score

    labels = np.asarray(labels)
    if labels.sum() == 0:
        return float("nan")
    return float(average_precision_score(labels, np.asarray(scores)))
