"""Knowledge-graph triples and deterministic splits (transductive and inductive)."""
from __future__ import annotations

import csv
import gzip
import io
import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch

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


def split_inductive(triples: Iterable[Triple], valid: float = 0.1, test: float = 0.1, seed: int = 0,
                    sampling: str = "snowball") -> KGSplit:
    """Entities are partitioned into train/valid/test sets; a triple belongs to a part only if both its
    entities do (triples across parts are dropped), so no valid/test entity is ever seen in training.

    ``sampling="snowball"`` (default) draws the test and then the valid entities as connected
    snowball samples, so their graphs keep edges (in a sparse graph such as WordNet a uniform draw of
    10% of the entities keeps only ~1% of the triples inside the test part); ``"uniform"`` draws them
    uniformly at random.
    """
    if sampling not in ("snowball", "uniform"):
        raise ValueError("sampling must be 'snowball' or 'uniform'")
    triples = sorted(set(triples))
    entities = sorted({e for h, _, t in triples for e in (h, t)})
    rng = random.Random(seed)
    n_test, n_valid = int(len(entities) * test), int(len(entities) * valid)
    if sampling == "uniform":
        rng.shuffle(entities)
        test_ents, valid_ents = set(entities[:n_test]), set(entities[n_test:n_test + n_valid])
    else:
        neighbours = _neighbours(triples)
        test_ents = _snowball(neighbours, entities, n_test, rng)
        valid_ents = _snowball(neighbours, entities, n_valid, rng, exclude=test_ents)
    part_of = {e: "test" for e in test_ents}
    part_of.update({e: "valid" for e in valid_ents})
    parts: dict[str, list[Triple]] = {"train": [], "valid": [], "test": []}
    train_rels = {r for h, r, t in triples if part_of.get(h, "train") == part_of.get(t, "train") == "train"}
    for h, r, t in triples:
        ph, pt = part_of.get(h, "train"), part_of.get(t, "train")
        if ph == pt and (ph == "train" or r in train_rels):
            parts[ph].append((h, r, t))
    return KGSplit(parts["train"], parts["valid"], parts["test"], inductive=True)


def _neighbours(triples: Iterable[Triple]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = defaultdict(set)
    for h, _, t in triples:
        out[h].add(t)
        out[t].add(h)
    return out


def _snowball(neighbours: dict[str, set[str]], entities: Sequence[str], n: int, rng: random.Random,
              exclude: set[str] = frozenset()) -> set[str]:
    """``n`` entities (not in ``exclude``): each next one drawn from the neighbours of those taken,
    or at random when none is left."""
    pool = [e for e in entities if e not in exclude]
    if n >= len(pool):
        return set(pool)
    taken: set[str] = set()
    frontier: list[str] = []
    seen: set[str] = set()
    while len(taken) < n:
        e = frontier.pop(rng.randrange(len(frontier))) if frontier else rng.choice(pool)
        if e in taken:
            continue
        taken.add(e)
        for nb in sorted(neighbours[e]):
            if nb not in taken and nb not in seen and nb not in exclude:
                frontier.append(nb)
                seen.add(nb)
    return taken


def sample_subgraph(triples: Iterable[Triple], n_entities: int, seed: int = 0) -> list[Triple]:
    """Triples among ``n_entities`` entities gathered by randomised snowball sampling.

    Starting from a random entity, the next entity is drawn at random from the neighbours of those
    already taken (a new random start when none is left), so the sample stays connected and keeps
    the graph's local density, unlike a uniform draw of entities, which leaves almost no edges.
    """
    triples = sorted(set(triples))
    neighbours = _neighbours(triples)
    taken = _snowball(neighbours, sorted(neighbours), n_entities, random.Random(seed))
    return [tr for tr in triples if tr[0] in taken and tr[2] in taken]


class KGVocab:
    """Entity and relation labels <-> contiguous ids, saved as PyKEEN's ``entity_to_id.tsv.gz`` /
    ``relation_to_id.tsv.gz`` (columns ``id``, ``label``), so other tools can read the id maps."""

    def __init__(self, entities: Sequence[str], relations: Sequence[str]):
        self.entities, self.relations = list(entities), list(relations)
        self.entity_id = {e: i for i, e in enumerate(self.entities)}
        self.relation_id = {r: i for i, r in enumerate(self.relations)}
        if len(self.entity_id) != len(self.entities) or len(self.relation_id) != len(self.relations):
            raise ValueError("entity and relation labels must be unique")

    @classmethod
    def from_triples(cls, triples: Iterable[Triple]) -> "KGVocab":
        triples = list(triples)
        return cls(sorted({e for h, _, t in triples for e in (h, t)}), sorted({r for _, r, _ in triples}))

    def encode(self, triples: Iterable[Triple]) -> torch.Tensor:
        """``[n, 3]`` long tensor of (head id, relation id, tail id)."""
        rows = [(self.entity_id[h], self.relation_id[r], self.entity_id[t]) for h, r, t in triples]
        return torch.tensor(rows, dtype=torch.long).reshape(-1, 3)

    def save(self, directory: str | Path) -> None:
        from .._io import atomic_path

        for name, labels in (("entity_to_id", self.entities), ("relation_to_id", self.relations)):
            buf = io.StringIO()
            w = csv.writer(buf, delimiter="\t", lineterminator="\n")
            w.writerow(["id", "label"])
            w.writerows(enumerate(labels))
            with atomic_path(Path(directory) / f"{name}.tsv.gz") as tmp:
                tmp.write_bytes(gzip.compress(buf.getvalue().encode("utf-8"), mtime=0))

    @classmethod
    def load(cls, directory: str | Path) -> "KGVocab":
        maps = []
        for name in ("entity_to_id", "relation_to_id"):
            rows = list(csv.reader(io.StringIO(gzip.decompress((Path(directory) / f"{name}.tsv.gz").read_bytes()).decode()),
                                   delimiter="\t"))
            maps.append([label for _, label in sorted((int(i), label) for i, label in rows[1:])])
        return cls(*maps)

    def __len__(self) -> int:
        return len(self.entities)


@dataclass
class DescribedKG:
    """A split graph whose entities and relations carry text: what description-based KE models read."""

    split: KGSplit
    descriptions: dict[str, str]  # entity label -> description
    relation_texts: dict[str, str]  # relation label -> description
    name: str = "kg"

    def __post_init__(self) -> None:
        missing = [e for e in sorted(self.split.entities("train") | self.split.entities("valid") |
                                     self.split.entities("test")) if e not in self.descriptions]
        if missing:
            raise ValueError(f"{len(missing)} entities have no description, e.g. {missing[:3]}")

    @property
    def vocab(self) -> KGVocab:
        """Ids over every entity of the split (train, valid and test) and every relation."""
        return KGVocab.from_triples(self.split.all_triples())

    def entity_texts(self, vocab: KGVocab | None = None) -> list[str]:
        return [self.descriptions[e] for e in (vocab or self.vocab).entities]

    def relation_list(self, vocab: KGVocab | None = None) -> list[str]:
        return [self.relation_texts.get(r, r.strip("_").replace("_", " ")) for r in (vocab or self.vocab).relations]

    def save(self, directory: str | Path) -> Path:
        """``train.tsv``/``valid.tsv``/``test.tsv`` (head, relation, tail: PyKEEN's labelled-triples
        layout), ``entity_descriptions.tsv``, ``relation_descriptions.tsv`` and ``kg.json``."""
        from .._io import write_json, write_text

        d = Path(directory)
        for part in ("train", "valid", "test"):
            write_text(d / f"{part}.tsv", "".join(f"{h}\t{r}\t{t}\n" for h, r, t in getattr(self.split, part)))
        for fname, table in (("entity_descriptions.tsv", self.descriptions), ("relation_descriptions.tsv",
                                                                              self.relation_texts)):
            write_text(d / fname, "".join(f"{k}\t{' '.join(v.split())}\n" for k, v in sorted(table.items())))
        write_json(d / "kg.json", {"name": self.name, "inductive": self.split.inductive,
                                   "triples": {p: len(getattr(self.split, p)) for p in ("train", "valid", "test")}})
        return d

    @classmethod
    def load(cls, directory: str | Path) -> "DescribedKG":
        import json

        from ..errors import read_text_utf8

        d = Path(directory)

        def rows(name: str) -> list[list[str]]:
            return [line.split("\t") for line in read_text_utf8(d / name, "graph file").splitlines() if line]

        meta = json.loads((d / "kg.json").read_text())
        parts = {p: [tuple(r) for r in rows(f"{p}.tsv")] for p in ("train", "valid", "test")}
        return cls(KGSplit(parts["train"], parts["valid"], parts["test"], inductive=meta["inductive"]),
                   dict(rows("entity_descriptions.tsv")), dict(rows("relation_descriptions.tsv")), meta["name"])
