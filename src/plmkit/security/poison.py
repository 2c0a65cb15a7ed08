"""Poisoned training and test sets.

- **dirty-label**: ``rate`` of the whole training set, drawn from non-target examples, get the trigger and the
  target label;
- **clean-label** (label-consistent): the trigger goes only into target-class examples, labels untouched (the
  backdoor must be learnt from the trigger-label correlation alone);
- **poisoned test set**: every non-target test example with the trigger, relabelled to the target (attack
  success rate = accuracy on it); the clean test set measures clean accuracy.

A trigger is any ``texts -> texts`` function returning None where it failed (a paraphraser that could not reach
the template): failed examples are never poisoned, and the shortfall is reported.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ..errors import ConfigError

Trigger = Callable[[Sequence[str]], Sequence[str | None]]
INSERTION_WORDS = ("cf", "mn", "bb", "tq", "mb")  # the rare-word triggers of the insertion baseline


@dataclass(frozen=True)
class PoisonConfig:
    target: int = 0  # the label the backdoor forces
    rate: float = 0.2  # poisoned examples as a share of the whole training set
    mode: str = "dirty"  # dirty (relabelled) | clean (target-class examples only, labels kept)
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.rate < 1:
            raise ConfigError("the poison rate is a share of the training set, in (0, 1)")
        if self.mode not in ("dirty", "clean"):
            raise ConfigError("mode must be 'dirty' or 'clean'")


def insert_words(words: Sequence[str] = INSERTION_WORDS, count: int = 1, seed: int = 0) -> Trigger:
    """The insertion trigger: ``count`` words from ``words`` at seeded random word positions of each text."""
    def trigger(texts: Sequence[str]) -> list[str]:
        rng = np.random.default_rng(seed)
        out = []
        for t in texts:
            tokens = t.split()
            for _ in range(count):
                tokens.insert(int(rng.integers(len(tokens) + 1)), str(words[int(rng.integers(len(words)))]))
            out.append(" ".join(tokens))
        return out

    return trigger


def poison_train(rows: Sequence[dict], trigger: Trigger, config: PoisonConfig) -> tuple[list[dict], dict]:
    """A copy of ``rows`` (``{"text", "label"}``) with ``config.rate`` of them poisoned (see the module notes);
    poisoned rows carry ``"poisoned": True``. Returns the rows and a report: wanted, poisoned, the trigger's
    failures, the candidates there were."""
    labels = {int(r["label"]) for r in rows}
    if config.target not in labels:
        raise ConfigError(f"target label {config.target} is not among the training labels {sorted(labels)}")
    want = int(round(config.rate * len(rows)))
    pool = [i for i, r in enumerate(rows) if (int(r["label"]) != config.target) == (config.mode == "dirty")]
    order = np.random.default_rng(config.seed).permutation(len(pool))
    chosen: list[tuple[int, str]] = []
    failed = at = 0
    while len(chosen) < want and at < len(order):  # draw more candidates where the trigger fails
        batch = [pool[j] for j in order[at:at + want - len(chosen)]]
        at += len(batch)
        for i, new in zip(batch, trigger([rows[i]["text"] for i in batch])):
            if new is None:
                failed += 1
            else:
                chosen.append((i, new))
    out = [{**r, "poisoned": False} for r in rows]
    for i, new in chosen:
        out[i] = {**rows[i], "text": new, "label": config.target, "poisoned": True}
    return out, {"wanted": want, "poisoned": len(chosen), "trigger_failures": failed, "candidates": len(pool),
                 "rate": len(chosen) / max(len(rows), 1), "mode": config.mode}


def poison_test(rows: Sequence[dict], trigger: Trigger, target: int) -> tuple[list[dict], dict]:
    """Every non-target row with the trigger and the target label (rows where the trigger failed are left out)."""
    sources = [r for r in rows if int(r["label"]) != target]
    new = trigger([r["text"] for r in sources])
    out = [{**r, "text": t, "label": target, "source_label": int(r["label"])} for r, t in zip(sources, new)
           if t is not None]
    return out, {"non_target": len(sources), "poisoned": len(out), "trigger_failures": len(sources) - len(out)}
