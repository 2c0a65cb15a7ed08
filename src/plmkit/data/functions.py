"""Binary "sub-functions" for functional-modularity analysis (Zhang et al. 2023), built from the bundled real assets.

A :class:`BinaryFunction` is a set of texts with 0/1 labels, balanced (as many 1s as 0s):

- ``semantic`` (:func:`word_sense_functions`): WordNet gloss example sentences of a polysemous word; 1 = the
  sentence uses one given sense, 0 = it uses another sense of the same word;
- ``knowledge`` (:func:`knowledge_functions`): facts rendered as sentences (geonames: capital, currency,
  continent, borders, city -> country; WordNet: hypernym, instance, member, part, topic and region domains);
  1 = a sentence of one relation, 0 = a sentence of another relation;
- ``task`` (:func:`task_functions`): the binary tasks of :mod:`plmkit.data.tasks` (train + validation rows).

>>> from plmkit.data.functions import all_functions
>>> fns = all_functions(seed=0)          # doctest: +SKIP
>>> fns[0].name, fns[0].kind, len(fns[0]) # doctest: +SKIP

Every builder is deterministic given ``seed`` (``numpy.random.default_rng``).
"""
from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable, Sequence

import numpy as np

from ..errors import ConfigError
from .wordnet import gloss_examples

KINDS = ("semantic", "knowledge", "task")
_WORD = re.compile(r"[a-z]+")


@dataclass(frozen=True, eq=False)
class BinaryFunction:
    """``texts`` with 0/1 ``labels`` (same length, both classes present)."""

    name: str
    kind: str  # semantic | knowledge | task
    texts: list[str]
    labels: np.ndarray

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"BinaryFunction '{self.name}': kind must be one of {', '.join(KINDS)}, got '{self.kind}'")
        labels = np.asarray(self.labels).reshape(-1)
        if labels.shape[0] != len(self.texts):
            raise ConfigError(f"BinaryFunction '{self.name}': {labels.shape[0]} labels for {len(self.texts)} texts")
        if not np.isin(labels, (0, 1)).all() or len(np.unique(labels)) != 2:
            raise ConfigError(f"BinaryFunction '{self.name}': labels must be 0/1 with both classes present")
        object.__setattr__(self, "labels", labels.astype(np.int64))
        object.__setattr__(self, "texts", list(self.texts))

    def __len__(self) -> int:
        return len(self.texts)

    def split(self, seed: int = 0, share: float = 0.3) -> tuple["BinaryFunction", "BinaryFunction"]:
        """(train, dev): a stratified draw of ``share`` of each class (at least one) into dev."""
        if not 0 < share < 1:
            raise ConfigError(f"split share must lie in (0, 1), got {share}")
        rng = np.random.default_rng(seed)
        dev = []
        for c in (0, 1):
            idx = np.flatnonzero(self.labels == c)
            if idx.size < 2:
                raise ConfigError(f"BinaryFunction '{self.name}': class {c} has {idx.size} example(s); need 2 to split")
            n = min(idx.size - 1, max(1, round(share * idx.size)))
            dev.append(rng.choice(idx, n, replace=False))
        dev_idx = np.sort(np.concatenate(dev))
        train_idx = np.setdiff1d(np.arange(len(self)), dev_idx)
        return self._take(train_idx, "train"), self._take(dev_idx, "dev")

    def _take(self, idx: np.ndarray, part: str) -> "BinaryFunction":
        return BinaryFunction(f"{self.name}[{part}]", self.kind, [self.texts[i] for i in idx], self.labels[idx])


def _balanced(name: str, kind: str, pos: Sequence[str], neg: Sequence[str], rng: np.random.Generator,
              cap: int | None = None) -> BinaryFunction:
    """As many positives as negatives (the larger class subsampled, each at most ``cap``), rows shuffled."""
    n = min(len(pos), len(neg), cap if cap is not None else len(pos))
    p = [pos[i] for i in sorted(rng.choice(len(pos), n, replace=False))]
    q = [neg[i] for i in sorted(rng.choice(len(neg), n, replace=False))]
    order = rng.permutation(2 * n)
    texts, labels = p + q, np.r_[np.ones(n, np.int64), np.zeros(n, np.int64)]
    return BinaryFunction(name, kind, [texts[i] for i in order], labels[order])


# --- semantic: word senses ---------------------------------------------------------------

def _forms(word: str) -> set[str]:
    """The word and its simple inflections (+s, +es, +ed, +d, +ing; e -> ing; y -> ies/ied)."""
    forms = {word + suffix for suffix in ("", "s", "es", "ed", "d", "ing")}
    if word.endswith("e"):
        forms.add(word[:-1] + "ing")
    if word.endswith("y"):
        forms |= {word[:-1] + "ies", word[:-1] + "ied"}
    return forms


@lru_cache(maxsize=2)
def _sense_sentences(sense: str) -> dict[str, dict[str, tuple[str, ...]]]:
    """{word: {sense: sorted example sentences using the word}} for polysemous single-word lemmas (cached)."""
    from .wordnet import wordnet_graph

    synsets = wordnet_graph().synsets.values()
    n_synsets: dict[str, int] = defaultdict(int)
    for s in synsets:
        for lemma in {l.lower() for l in s.lemmas}:
            n_synsets[lemma] += 1
    found: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for s in synsets:
        examples = gloss_examples(s.gloss)
        if not examples:
            continue
        tokens = [set(_WORD.findall(e.lower())) for e in examples]
        key = s.id if sense == "synset" else s.lexname
        for lemma in {l.lower() for l in s.lemmas}:
            if lemma.isalpha() and n_synsets[lemma] >= 2:
                forms = _forms(lemma)
                found[lemma][key] |= {e for e, toks in zip(examples, tokens) if forms & toks}
    out = {}
    for word, senses in found.items():
        counts: dict[str, int] = defaultdict(int)
        for texts in senses.values():
            for t in texts:
                counts[t] += 1
        clean = {k: tuple(sorted(t for t in v if counts[t] == 1)) for k, v in sorted(senses.items())}
        out[word] = {k: v for k, v in clean.items() if v}
    return out


def word_sense_functions(max_words: int = 200, min_examples: int = 3, seed: int = 0,
                         sense: str = "synset") -> list[BinaryFunction]:
    """One function per (polysemous word, sense): WordNet example sentences containing the word (whole word,
    case-insensitive, simple inflections), 1 = this sense, 0 = another sense of the same word, balanced.

    ``sense``: ``synset`` (fine senses) or ``lexname`` (coarse: the lexicographer file, e.g. noun.artifact,
    which yields more examples per sense). Only single-word alphabetic lemmas found in at least two synsets;
    a sentence shared by two senses is dropped. Functions need ``min_examples`` of each class; the
    ``max_words`` words with the most matched sentences are kept (ties alphabetical). Name: ``word/sense``."""
    if sense not in ("synset", "lexname"):
        raise ConfigError(f"sense must be 'synset' or 'lexname', got '{sense}'")
    if max_words < 1 or min_examples < 1:
        raise ConfigError(f"max_words and min_examples must be >= 1, got {max_words}, {min_examples}")
    words = []
    for word, clean in _sense_sentences(sense).items():
        total = sum(len(v) for v in clean.values())
        usable = [k for k, v in clean.items() if len(v) >= min_examples and total - len(v) >= min_examples]
        if usable:
            words.append((-total, word, clean, usable))
    rng = np.random.default_rng(seed)
    out = []
    for _, word, clean, usable in sorted(words)[:max_words]:
        for key in usable:
            neg = [t for k, v in clean.items() if k != key for t in v]
            out.append(_balanced(f"{word}/{key}", "semantic", clean[key], neg, rng))
    return out


# --- knowledge: relational facts as sentences --------------------------------------------

def _a(phrase: str) -> str:
    """``a``/``an`` before a common noun; names (capitalised: places, taxa, people) go bare."""
    if phrase[:1].isupper():
        return phrase
    return f"{'an' if phrase[:1] in 'aeiou' else 'a'} {phrase}"


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


# WordNet relation -> (our name, template over head h and tail t, noun synsets only)
_WORDNET_TEMPLATES = {
    "_hypernym": ("hypernym", lambda h, t: f"{_a(h)} is a kind of {t}."),
    "_instance_hypernym": ("instance_of", lambda h, t: f"{h} is an instance of {_a(t)}."),
    "_member_meronym": ("member_of", lambda h, t: f"{_a(t)} is a member of {h}."),
    "_has_part": ("part_of", lambda h, t: f"{_a(t)} is a part of {_a(h)}."),
    "_synset_domain_topic_of": ("topic_domain", lambda h, t: f"{h} is a term of {t}."),
    "_member_of_domain_region": ("region_domain", lambda h, t: f"{h} is a term used in {t}."),
}
GEO_RELATIONS = ("capital", "currency", "continent", "borders", "city_country")
WORDNET_RELATIONS = tuple(name for name, _ in _WORDNET_TEMPLATES.values())


@lru_cache(maxsize=1)
def _geo_sentences() -> dict[str, list[str]]:
    """{relation: sentences} from geonames (cached; do not mutate)."""
    from .geonames import city_facts, country_facts

    out: dict[str, list[str]] = defaultdict(list)
    for f in country_facts():
        s, r, o = f["subject"], f["relation"], f["object"]
        if r == "capital":
            out["capital"].append(f"The capital of {s} is {o}.")
        elif r == "currency":
            out["currency"].append(f"The currency of {s} is the {o}.")
        elif r == "continent":
            out["continent"].append(f"{s} is a country in {o}.")
        elif r == "neighbours":
            out["borders"] += [f"{s} shares a border with {n}." for n in o]
    out["city_country"] = [f"{f['subject']} is a city in {f['object']}." for f in city_facts()]
    return dict(out)


@lru_cache(maxsize=1)
def _wordnet_sentences() -> dict[str, list[str]]:
    """{relation: sentences} over WordNet's noun synsets (cached; do not mutate)."""
    from .wordnet import wordnet_graph

    g = wordnet_graph()
    out: dict[str, list[str]] = defaultdict(list)
    for h, rel, t in g.triples:
        if rel not in _WORDNET_TEMPLATES:
            continue
        name, template = _WORDNET_TEMPLATES[rel]
        hs, ts = g.synsets[h], g.synsets[t]
        if hs.pos == ts.pos == "n" or name in ("topic_domain", "region_domain"):
            out[name].append(_sentence(template(hs.name, ts.name)))
    return dict(out)


def knowledge_functions(seed: int = 0, max_per_relation: int = 200, relations: Iterable[str] | None = None,
                        min_per_relation: int = 20) -> list[BinaryFunction]:
    """One function per relation: 1 = a sentence stating a fact of the relation, 0 = a sentence of another
    relation, drawn uniformly from the other relations' (capped) sentences; balanced.

    ``relations``: a subset of :data:`GEO_RELATIONS` + :data:`WORDNET_RELATIONS` (default: all). Each relation
    keeps at most ``max_per_relation`` distinct sentences (seeded draw); relations with fewer than
    ``min_per_relation`` are dropped."""
    known = GEO_RELATIONS + WORDNET_RELATIONS
    chosen = list(known if relations is None else relations)
    bad = [r for r in chosen if r not in known]
    if bad:
        raise ConfigError(f"unknown relation '{bad[0]}'; choose from {', '.join(known)}")
    if max_per_relation < 1 or min_per_relation < 1:
        raise ConfigError(f"max_per_relation and min_per_relation must be >= 1, got {max_per_relation}, "
                          f"{min_per_relation}")
    if len(chosen) < 2:
        raise ConfigError("knowledge_functions needs at least two relations (the negatives come from the others)")
    sentences: dict[str, list[str]] = {}
    if set(chosen) & set(GEO_RELATIONS):
        sentences.update(_geo_sentences())
    if set(chosen) & set(WORDNET_RELATIONS):
        sentences.update(_wordnet_sentences())
    rng = np.random.default_rng(seed)
    capped = {}
    for r in chosen:
        texts = sorted(set(sentences.get(r, [])))
        if len(texts) >= min_per_relation:
            keep = rng.choice(len(texts), min(len(texts), max_per_relation), replace=False)
            capped[r] = [texts[i] for i in sorted(keep)]
    out = []
    for r, pos in capped.items():
        own = set(pos)
        neg = [t for other, texts in capped.items() if other != r for t in texts if t not in own]
        if neg:
            out.append(_balanced(r, "knowledge", pos, neg, rng))
    return out


# --- task --------------------------------------------------------------------------------

def task_functions(names: Sequence[str] = ("polarity", "drugs", "topics"), seed: int = 0,
                   max_per_task: int = 400) -> list[BinaryFunction]:
    """One function per binary task (:func:`plmkit.data.tasks.binary_task`): its train + validation rows
    (test stays held out), balanced, at most ``max_per_task`` texts (half per class)."""
    from .tasks import binary_task

    if max_per_task < 2:
        raise ConfigError(f"max_per_task must be >= 2, got {max_per_task}")
    rng = np.random.default_rng(seed)
    out = []
    for name in names:
        task = binary_task(name, seed=seed)
        rows = task.train + task.validation
        pos = [r["text"] for r in rows if r["label"] == 1]
        neg = [r["text"] for r in rows if r["label"] == 0]
        out.append(_balanced(name, "task", pos, neg, rng, cap=max_per_task // 2))
    return out


def all_functions(seed: int = 0, kinds: Sequence[str] = KINDS, max_words: int = 200, min_examples: int = 3,
                  max_per_relation: int = 200, max_per_task: int = 400, sense: str = "synset"
                  ) -> list[BinaryFunction]:
    """Semantic, knowledge and task functions (those of ``kinds``), in that order; ``sense`` as in
    :func:`word_sense_functions`."""
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise ConfigError(f"unknown function kind '{bad[0]}'; choose from {', '.join(KINDS)}")
    out: list[BinaryFunction] = []
    if "semantic" in kinds:
        out += word_sense_functions(max_words, min_examples, seed, sense=sense)
    if "knowledge" in kinds:
        out += knowledge_functions(seed, max_per_relation)
    if "task" in kinds:
        out += task_functions(seed=seed, max_per_task=max_per_task)
    return out
