"""Wikidata5M (the KEPLER paper's graph) from its official release files, as a :class:`DescribedKG`.

The release is not bundled (it is 4.6M entities and a 1 GB text file); a user who has downloaded it
points plmkit at the folder holding the extracted files::

    wikidata5m_transductive_{train,valid,test}.txt   head<TAB>relation<TAB>tail (Q and P ids)
    wikidata5m_inductive_{train,valid,test}.txt      the same, with valid/test entities unseen in train
    wikidata5m_text.txt                              Qid<TAB>description (a Wikipedia abstract)
    wikidata5m_relation.txt (optional)               Pid<TAB>alias<TAB>alias... (from wikidata5m_alias)

    >>> kg = wikidata5m_kg("~/data/wikidata5m", "inductive", max_train=200_000)   # doctest: +SKIP

Triples whose entities have no description are dropped (and counted): a description-based model
cannot embed them. ``max_train`` keeps a seeded random sample of training triples for small budgets;
valid and test stay whole, so numbers remain comparable with published ones on the same split.
"""
from __future__ import annotations

import logging
import random
from pathlib import Path

from ..errors import ConfigError, PlmkitError
from .kg import DescribedKG, KGSplit, Triple

SETTINGS = ("transductive", "inductive")
PARTS = ("train", "valid", "test")
TEXT_FILE = "wikidata5m_text.txt"
RELATION_FILE = "wikidata5m_relation.txt"
log = logging.getLogger(__name__)


def triples_file(folder: str | Path, setting: str, part: str) -> Path:
    return Path(folder).expanduser() / f"wikidata5m_{setting}_{part}.txt"


def is_wikidata5m(folder: str | Path) -> bool:
    """Whether ``folder`` holds a Wikidata5M release (either setting's training file and the text)."""
    return (Path(folder).expanduser() / TEXT_FILE).is_file() and any(
        triples_file(folder, s, "train").is_file() for s in SETTINGS)


def _read_lines(path: Path):
    try:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                yield n, line.rstrip("\n")
    except UnicodeDecodeError as e:
        raise PlmkitError(f"{path} is not UTF-8 text (byte {e.start}): pass the extracted release files") from e


def _read_triples(path: Path) -> list[Triple]:
    out: list[Triple] = []
    for n, line in _read_lines(path):
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) != 3 or not all(c.strip() for c in cols):
            raise ConfigError(f"{path}:{n}: expected 'head<TAB>relation<TAB>tail', got {line[:80]!r}")
        h, r, t = (c.strip() for c in cols)
        out.append((h, r, t))
    return out


def _read_table(path: Path, wanted: set[str] | None, max_words: int | None) -> dict[str, str]:
    """``id -> first text column`` of a tab-separated file, for ids in ``wanted`` (all when None)."""
    out: dict[str, str] = {}
    for _, line in _read_lines(path):
        key, sep, rest = line.partition("\t")
        if not sep or (wanted is not None and key not in wanted):
            continue
        text = rest.split("\t")[0].strip()
        if text:
            out[key] = " ".join(text.split()[:max_words]) if max_words else text
    return out


def wikidata5m_kg(folder: str | Path, setting: str = "transductive", *, max_train: int | None = None,
                  max_description_words: int | None = 128, seed: int = 0) -> DescribedKG:
    """The ``setting`` split of a Wikidata5M release in ``folder`` (see the module docstring).

    ``max_description_words`` cuts each Wikipedia abstract (encoders read the first tokens only;
    None keeps all). Relations are described by their first alias when ``wikidata5m_relation.txt``
    is present, else by their P-id.
    """
    if setting not in SETTINGS:
        raise ConfigError(f"setting must be one of {SETTINGS}, got {setting!r}")
    d = Path(folder).expanduser()
    missing = [p.name for p in [*(triples_file(d, setting, part) for part in PARTS), d / TEXT_FILE]
               if not p.is_file()]
    if missing:
        raise PlmkitError(f"{d} lacks {', '.join(missing)}: download wikidata5m_{setting}.tar.gz and "
                          "wikidata5m_text.tar.gz (https://deepgraphlearning.github.io/project/wikidata5m) and "
                          "extract them there")
    parts = {part: _read_triples(triples_file(d, setting, part)) for part in PARTS}
    if max_train is not None and len(parts["train"]) > max_train:
        parts["train"] = sorted(random.Random(seed).sample(parts["train"], max_train))
    entities = {e for rows in parts.values() for h, _, t in rows for e in (h, t)}
    descriptions = _read_table(d / TEXT_FILE, entities, max_description_words)
    dropped = {}
    for part, rows in parts.items():
        kept = [tr for tr in rows if tr[0] in descriptions and tr[2] in descriptions]
        dropped[part] = len(rows) - len(kept)
        parts[part] = kept
    if not parts["train"] or not parts["test"]:
        raise PlmkitError(f"no {setting} triples in {d} have descriptions in {TEXT_FILE} for both entities")
    relations = {r for rows in parts.values() for _, r, _ in rows}
    rel_file = d / RELATION_FILE
    relation_texts = _read_table(rel_file, relations, None) if rel_file.is_file() else {}
    used = {e for rows in parts.values() for h, _, t in rows for e in (h, t)}
    split = KGSplit(parts["train"], parts["valid"], parts["test"], inductive=setting == "inductive")
    if any(dropped.values()):
        log.warning("Wikidata5M %s: dropped triples without a description for both entities: %s", setting,
                    ", ".join(f"{p} {n}" for p, n in dropped.items()))
    return DescribedKG(split, {e: descriptions[e] for e in used}, relation_texts,
                       f"wikidata5m-{setting}" + (f"-train{max_train}-seed{seed}" if max_train else ""))
