"""Knowledge-graph triples and deterministic splits (transductive and inductive)."""
from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from typing import Iterable

Triple = tuple[str, str, str]  # (head, relation, tail)


@dataclass
class KGSplit:
    train: list[Triple]
    valid: list[Triple]
    test: list[Triple]
    inductive: bool = False

    def entities(self, part: str = "train") -> set[str]:
        return {e for h, _, t in getattr(self, part) for e in (h, t)}

    def all_triples(self) -> list[Triple]:
        return self.train + self.valid + self.test


def split_transductive(triples: Iterable[Triple], valid: float = 0.03, test: float = 0.03,
                       seed: int = 0) -> KGSplit:
    """Random split where every valid/test entity and relation also occurs in train (WN18RR-style).

    A triple goes to evaluation only if removing it leaves both its entities and its relation in
    the remaining training graph, so nothing is evaluated that training never saw.
    """
    triples = sorted(set(triples))
    random.Random(seed).shuffle(triples)
    degree = Counter(e for h, _, t in triples for e in (h, t))
    rel_count = Counter(r for _, r, _ in triples)
    want = {"valid": int(len(triples) * valid), "test": int(len(triples) * test)}
    parts: dict[str, list[Triple]] = {"train": [], "valid": [], "test": []}
    for tr in triples:
        h, r, t = tr
        target = "test" if len(parts["test"]) < want["test"] else "valid" if len(parts["valid"]) < want["valid"] else None
        if target and degree[h] > 1 and degree[t] > 1 and rel_count[r] > 1 and h != t:
            parts[target].append(tr)
            degree[h] -= 1
            degree[t] -= 1
            rel_count[r] -= 1
        else:
            parts["train"].append(tr)
    return KGSplit(parts["train"], parts["valid"], parts["test"])


def split_inductive(triples: Iterable[Triple], valid: float = 0.1, test: float = 0.1, seed: int = 0) -> KGSplit:
    """Entities are partitioned into train/valid/test sets; a triple belongs to a part only if both its
    entities do (triples across parts are dropped), so no valid/test entity is ever seen in training."""
    triples = sorted(set(triples))
    entities = sorted({e for h, _, t in triples for e in (h, t)})
    random.Random(seed).shuffle(entities)
    n_test, n_valid = int(len(entities) * test), int(len(entities) * valid)
    part_of = {e: "test" for e in entities[:n_test]}
    part_of.update({e: "valid" for e in entities[n_test:n_test + n_valid]})
    parts: dict[str, list[Triple]] = {"train": [], "valid": [], "test": []}
    train_rels = {r for h, r, t in triples if part_of.get(h, "train") == part_of.get(t, "train") == "train"}
    for h, r, t in triples:
        ph, pt = part_of.get(h, "train"), part_of.get(t, "train")
        if ph == pt and (ph == "train" or r in train_rels):
            parts[ph].append((h, r, t))
    return KGSplit(parts["train"], parts["valid"], parts["test"], inductive=True)
