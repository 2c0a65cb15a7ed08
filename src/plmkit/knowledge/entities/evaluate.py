"""How well a linker finds and resolves labelled mentions: coverage, precision, recall.

    >>> samples = wordnet_link_samples(n=2000)                                  # doctest: +SKIP
    >>> evaluate_linker(wordnet_linker(), samples)                              # doctest: +SKIP
    {'n': 2000, 'coverage': 0.9..., 'exact_span': 0.8..., 'precision': 0.4..., 'recall': 0.4..., ...}
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterable, Sequence

from .linker import Linker


@dataclass(frozen=True)
class LinkSample:
    """One labelled mention: ``text[start:end]`` refers to ``entity``."""

    text: str
    start: int
    end: int
    entity: str


def evaluate_linker(linker: Linker, samples: Iterable[LinkSample | tuple[str, int, int, str]],
                    batch_size: int = 256) -> dict[str, float]:
    """Score ``linker`` on labelled mentions (``(text, start, end, gold entity)`` rows; only one mention of
    each text is labelled, so mentions elsewhere in the text are neither right nor wrong).

    For each sample the predicted mention overlapping the gold span most is the linker's answer there:

    - ``coverage``: share of gold spans with an overlapping predicted mention (found at all);
    - ``exact_span``: share of gold spans predicted with exactly the gold offsets;
    - ``precision``: right entity among the covered spans; ``recall``: right entity among all spans
      (= coverage x precision); ``f1`` their harmonic mean;
    - ``mentions_per_text``: predicted mentions per text (how much else the linker tags).
    """
    rows = [s if isinstance(s, LinkSample) else LinkSample(*s) for s in samples]
    covered = exact = correct = mentions = 0
    for i in range(0, len(rows), batch_size):
        batch = rows[i:i + batch_size]
        for s, found in zip(batch, linker.link([s.text for s in batch])):
            mentions += len(found)
            overlap = [(min(m.end, s.end) - max(m.start, s.start), m) for m in found
                       if m.start < s.end and s.start < m.end]
            if not overlap:
                continue
            m = max(overlap, key=lambda x: x[0])[1]
            covered += 1
            exact += (m.start, m.end) == (s.start, s.end)
            correct += m.entity == s.entity
    n = len(rows)
    precision = correct / covered if covered else 0.0
    recall = correct / n if n else 0.0
    return {"n": n, "coverage": covered / n if n else 0.0, "exact_span": exact / n if n else 0.0,
            "precision": precision, "recall": recall,
            "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
            "mentions_per_text": mentions / n if n else 0.0}


def wordnet_link_samples(pos: Sequence[str] = ("n",), n: int | None = None, seed: int = 0) -> list[LinkSample]:
    """Labelled mentions from WordNet's gloss examples (:func:`plmkit.data.wordnet.wordnet_examples`): the
    example's span of the lemma it illustrates, labelled with the gloss's synset. A seeded sample of ``n``
    (all: None). The gold sense is often not a lemma's most frequent one (glosses of rare senses carry
    examples too), so this is a hard test of a frequency prior."""
    from ...data.wordnet import wordnet_examples

    rows = [LinkSample(r["text"], r["start"], r["end"], r["synset"]) for r in wordnet_examples(tuple(pos))]
    if n is not None and n < len(rows):
        rows = random.Random(seed).sample(rows, n)
    return rows
