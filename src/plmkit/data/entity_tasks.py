"""Knowledge-driven tasks for entity-aware encoders (ERNIE): entity typing and relation classification.

>>> from plmkit.data.entity_tasks import entity_typing_task, geo_relation_task
>>> typing = entity_typing_task()            # doctest: +SKIP
>>> typing.train[0]                          # doctest: +SKIP
{'text': 'the team is a unit', 'start': 14, 'end': 18, 'mention': 'unit', 'label': 0, 'synset': '...', ...}
>>> geo_relation_task().counts()["test"]     # doctest: +SKIP

- **Entity typing** (:func:`entity_typing_task`): WordNet's gloss examples (:func:`~plmkit.data.wordnet.wordnet_examples`),
  the illustrated word as the mention, its synset's supersense (lexname, e.g. ``noun.animal``) as the label and the
  synset as the gold entity. Split by synset, so test synsets are unseen.
- **Relation classification** (:func:`geo_relation_task`): neutral sentences naming two entities of
  :func:`~plmkit.data.geonames.geonames_graph`; the wording never tells the relation, only knowledge of the
  entities does (train and test use different templates, and every template serves every label).

Both are seeded and deterministic; splits are train / validation / test, and ``counts()`` summarises them.
"""
from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ConfigError, PlmkitError

Row = dict
SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class EntityTask:
    """A task over entity mentions: rows carry char spans, gold entity ids and an int ``label``."""
    name: str
    labels: tuple[str, ...]  # names of labels 0, 1, ...
    train: list[Row]
    validation: list[Row]
    test: list[Row]
    info: dict[str, Any] = field(default_factory=dict, compare=False)  # how the task was built (dropped, skipped)

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def split(self, name: str) -> list[Row]:
        if name not in SPLITS:
            raise ConfigError(f"split must be train, validation or test, got '{name}'")
        return getattr(self, name)

    def counts(self) -> dict[str, dict[str, int]]:
        """Rows per split and label name, plus ``total`` per split."""
        out = {}
        for s in SPLITS:
            c = Counter(r["label"] for r in self.split(s))
            out[s] = {name: c[i] for i, name in enumerate(self.labels)} | {"total": len(self.split(s))}
        return out


def _check_shares(validation: float, test: float) -> None:
    if not (0 < validation < 1 and 0 < test < 1 and validation + test < 1):
        raise ConfigError(f"validation and test must be shares in (0, 1) summing below 1, got {validation}, {test}")


# --- 1. Entity typing from WordNet examples -----------------------------------------------------------------------

def _split_by_synset(rows: list[Row], validation: float, test: float,
                     rng: np.random.Generator) -> tuple[list[Row], list[Row], list[Row]]:
    """(train, validation, test): per label, whole synsets in a seeded order go to test, then to validation, each
    until it holds its share of the label's rows; the rest to train."""
    train: list[Row] = []
    val: list[Row] = []
    held: list[Row] = []
    for label in sorted({r["label"] for r in rows}):
        by_synset: dict[str, list[Row]] = defaultdict(list)
        for r in rows:
            if r["label"] == label:
                by_synset[r["synset"]].append(r)
        synsets = sorted(by_synset)
        total = sum(len(v) for v in by_synset.values())
        fill = [(held, test * total), (val, validation * total), (train, float("inf"))]
        part, filled = 0, 0
        for i in rng.permutation(len(synsets)):
            if filled >= fill[part][1]:
                part, filled = part + 1, 0
            fill[part][0].extend(by_synset[synsets[i]])
            filled += len(by_synset[synsets[i]])
    return train, val, held


def entity_typing_task(seed: int = 0, pos: tuple[str, ...] = ("n",), max_per_class: int | None = None,
                       min_per_class: int = 50, validation: float = 0.15, test: float = 0.2) -> EntityTask:
    """Typing of a WordNet word in its gloss example: label = the synset's supersense (lexname).

    Rows: ``{"text", "start", "end", "mention", "label", "synset", "lemma"}`` (``mention == text[start:end]``, the
    lemma's form in the example; ``synset`` the gold entity id). Supersenses with fewer than ``min_per_class``
    examples are dropped (nouns: ``noun.Tops``, ``noun.plant``, ``noun.motive`` at 50); ``max_per_class`` keeps at
    most that many per supersense, whole synsets in a seeded order. Splits hold disjoint synsets, stratified by
    label, with ``validation`` and ``test`` shares of each label's examples; a text already in an earlier split
    (train, then validation) is dropped from the later one. ``info`` records the dropped and skipped examples."""
    from .wordnet import wordnet_example_counts, wordnet_examples

    _check_shares(validation, test)
    if min_per_class < 3 or (max_per_class is not None and max_per_class < min_per_class):
        raise ConfigError(f"need 3 <= min_per_class <= max_per_class, got {min_per_class}, {max_per_class}")
    rng = np.random.default_rng(seed)
    examples = wordnet_examples(pos)
    per_class = Counter(r["lexname"] for r in examples)
    labels = tuple(sorted(l for l, n in per_class.items() if n >= min_per_class))
    index = {l: i for i, l in enumerate(labels)}
    rows = [{"text": r["text"], "start": r["start"], "end": r["end"], "mention": r["text"][r["start"]:r["end"]],
             "label": index[r["lexname"]], "synset": r["synset"], "lemma": r["lemma"]}
            for r in examples if r["lexname"] in index]
    if max_per_class is not None:
        rows = _cap_by_synset(rows, max_per_class, rng)
    train_rows, val_rows, test_rows = _split_by_synset(rows, validation, test, rng)
    seen = {r["text"] for r in train_rows}
    val_kept = [r for r in val_rows if r["text"] not in seen]
    seen |= {r["text"] for r in val_kept}
    test_kept = [r for r in test_rows if r["text"] not in seen]
    splits = [[part[i] for i in rng.permutation(len(part))] for part in (train_rows, val_kept, test_kept)]
    info = {"pos": tuple(pos), "seed": seed, "wordnet_examples": wordnet_example_counts(pos),
            "dropped_classes": {l: n for l, n in sorted(per_class.items()) if l not in index},
            "dropped_repeated_texts": len(val_rows) - len(val_kept) + len(test_rows) - len(test_kept)}
    return EntityTask(f"wordnet-typing-{''.join(pos)}-seed{seed}", labels, *splits, info=info)


def _cap_by_synset(rows: list[Row], cap: int, rng: np.random.Generator) -> list[Row]:
    """At most ``cap`` rows per label: whole synsets in a seeded order, the last one cut short."""
    by_label: dict[int, dict[str, list[Row]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        by_label[r["label"]][r["synset"]].append(r)
    out: list[Row] = []
    for label in sorted(by_label):
        synsets = sorted(by_label[label])
        kept: list[Row] = []
        for i in rng.permutation(len(synsets)):
            kept += by_label[label][synsets[i]][:cap - len(kept)]
            if len(kept) >= cap:
                break
        out += kept
    return out


# --- 2. Relation classification over geonames ---------------------------------------------------------------------

RELATION_LABELS = ("capital_of", "city_in", "neighbour_of", "same_continent", "none")

# Neutral sentences: none says how {head} and {tail} relate; each serves every label alike.
RELATION_TEMPLATES = (
    "We flew from {head} to {tail} last spring.",
    "{head} and {tail} were on the list.",
    "I have a postcard from {head} and one from {tail}.",
    "She mentioned {head} and then {tail} in her talk.",
    "The report covers {head} as well as {tail}.",
    "My cousin has visited {head} and {tail}.",
    "The article compared {head} with {tail}.",
    "Our next trip takes us to {head} and {tail}.",
    "He collects stamps from {head} and from {tail}.",
    "Before {tail}, the guide talked about {head}.",
    "The museum shows photographs of {head} and of {tail}.",
    "Both {head} and {tail} appear in tomorrow's quiz.",
    "The documentary was filmed in {head} and also in {tail}.",
    "Her blog has posts about {head} and {tail}.",
    "They printed maps of {head} and {tail} for the class.",
    "I read a news story about {tail} and another one about {head}.",
    "The conference had guests from {head} and {tail}.",
    "A friend sent me a letter from {head} and later one from {tail}.",
    "The podcast episode was about {head}, then {tail}.",
    "Someone at the table brought up {tail}, and someone else {head}.",
)
_SLOT = re.compile(r"\{(head|tail)\}")
_SPAN_KEYS = ("head_start", "head_end", "tail_start", "tail_end")


def fill_template(template: str, head: str, tail: str) -> tuple[str, dict[str, int]]:
    """The sentence and its ``head_start``, ``head_end``, ``tail_start``, ``tail_end`` char offsets."""
    text, spans, last = "", {}, 0
    for m in _SLOT.finditer(template):
        text += template[last:m.start()]
        name = head if m.group(1) == "head" else tail
        spans[f"{m.group(1)}_start"], spans[f"{m.group(1)}_end"] = len(text), len(text) + len(name)
        text += name
        last = m.end()
    return text + template[last:], spans


@dataclass(frozen=True)
class _Geo:
    """The entities a relation task may name, and the facts it needs, read from the geonames graph."""
    names: dict[str, str]  # entity id -> surface name
    country_of: dict[str, str]  # city -> its country
    capitals: frozenset[str]  # cities that are their country's capital
    continent: dict[str, str]  # country -> continent id
    neighbours: frozenset[frozenset[str]]  # unordered country pairs sharing a border


def _words(name: str) -> str:
    """A name as space-padded lower-case words, so ``a in b`` tests word-for-word containment."""
    return " " + " ".join(re.split(r"[\s-]+", name.strip().lower())) + " "


def _geo_entities(min_population: int, min_capital_population: int, min_country_population: int) -> _Geo:
    """Countries of at least ``min_country_population`` with a continent; cities of at least ``min_population``
    (capitals: ``min_capital_population``) in those countries, skipping a name that several of the graph's cities
    share or that overlaps a country's name word for word (``Djibouti``, ``Mexico City``, ``Bissau``)."""
    from .geonames import geonames_graph

    entities, triples = geonames_graph(min(100_000, min_population, min_capital_population))
    by_rel: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for h, r, t in triples:
        by_rel[r].append((h, t))
    continent = {h: t for h, t in by_rel["continent"]
                 if entities[h]["population"] >= min_country_population}
    city_names = Counter(e["name"].strip() for e in entities.values() if e["kind"] == "city")
    country_words = [_words(e["name"]) for e in entities.values() if e["kind"] == "country"]
    capitals = {t for _, t in by_rel["capital"]}
    country_of = {}
    for city, country in by_rel["city_in"]:
        name, pop = entities[city]["name"].strip(), entities[city]["population"]
        words = _words(name)
        if country in continent and city_names[name] == 1 and pop >= (
                min_capital_population if city in capitals else min_population) and \
                not any(c in words or words in c for c in country_words):
            country_of[city] = country
    return _Geo(names={k: entities[k]["name"].strip() for k in [*continent, *country_of]},
                country_of=country_of, capitals=frozenset(c for c in capitals if c in country_of),
                continent=continent,
                neighbours=frozenset(frozenset(p) for p in by_rel["neighbour"] if set(p) <= continent.keys()))


def _candidates(geo: _Geo) -> dict[str, list[tuple[str, str]]]:
    """Every (head, tail) pair per label; ``none`` is split into ``none_capital``, ``none_city`` (a city and another
    country of its country's continent) and ``none_country`` (countries of different continents)."""
    countries = sorted(geo.continent)
    by_continent: dict[str, list[str]] = defaultdict(list)
    for c in countries:
        by_continent[geo.continent[c]].append(c)
    out: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for city, country in sorted(geo.country_of.items()):
        out["capital_of" if city in geo.capitals else "city_in"].append((city, country))
        others = [c for c in by_continent[geo.continent[country]] if c != country] or \
            [c for c in countries if c != country]
        out["none_capital" if city in geo.capitals else "none_city"] += [(city, c) for c in others]
    for i, a in enumerate(countries):
        for b in countries[i + 1:]:
            if frozenset((a, b)) in geo.neighbours:
                out["neighbour_of"].append((a, b))
            else:
                out["same_continent" if geo.continent[a] == geo.continent[b] else "none_country"].append((a, b))
    return out


def _three_way(n: int, validation: float, test: float) -> tuple[int, int]:
    """Sizes of test and validation for ``n`` items (at least one each when n >= 3)."""
    n_test = max(1, round(test * n)) if n >= 3 else 0
    n_val = max(1, round(validation * n)) if n >= 3 else 0
    return n_test, n_val


def _balanced_pairs(cands: dict[str, list[tuple[str, str]]], per_class: int | None,
                    rng: np.random.Generator) -> dict[str, list[tuple[str, str]]]:
    """``per_class`` pairs per label (default and at most: the smallest label's count), drawn without replacement;
    ``none`` takes half city-country pairs (half of those with a capital), half country-country pairs."""
    def draw(label: str, k: int) -> list[tuple[str, str]]:
        return [cands[label][i] for i in rng.choice(len(cands[label]), size=min(k, len(cands[label])), replace=False)]

    n = min(len(cands[l]) for l in RELATION_LABELS[:-1])
    n = n if per_class is None else min(n, per_class)
    pairs = {l: draw(l, n) for l in RELATION_LABELS[:-1]}
    n_city = n // 2
    pairs["none"] = draw("none_capital", n_city // 2) + draw("none_city", n_city - n_city // 2) + \
        draw("none_country", n - n_city)
    return pairs


def geo_relation_task(seed: int = 0, min_population: int = 500_000, min_capital_population: int = 100_000,
                      min_country_population: int = 100_000, per_class: int | None = None,
                      validation: float = 0.15, test: float = 0.2, test_templates: int = 6,
                      templates: tuple[str, ...] = RELATION_TEMPLATES) -> EntityTask:
    """Classify how two geonames entities named in a neutral sentence relate (:data:`RELATION_LABELS`).

    ``capital_of``: the head city is the capital of the tail country; ``city_in``: a non-capital city in the
    country; ``neighbour_of``: countries sharing a border; ``same_continent``: countries of one continent, not
    neighbours; ``none``: half a city and another country of its own country's continent (half of these cities
    capitals), half two countries of different continents. Country pairs come in either order (seeded). So
    city-country and country-country pairs each take three labels: the entity types never decide the label
    (checked, ``info["labels_by_types"]``). Each label gets ``per_class`` pairs (default: as many as the smallest
    label has), split into test, validation and train by shares; no pair is in two splits. Test sentences use
    ``test_templates`` of the ``templates`` (a seeded choice), train and validation the others.

    Rows: ``{"text", "head_start", "head_end", "tail_start", "tail_end", "head", "tail", "label", "template"}``
    (head, tail: entity ids; template: the index in ``templates``). Entities: see :func:`_geo_entities`."""
    _check_shares(validation, test)
    bad = [t for t in templates if sorted(_SLOT.findall(t)) != ["head", "tail"]]
    if bad:
        raise ConfigError(f"each template needs one {{head}} and one {{tail}}, not: {bad[0]!r}")
    if not 1 <= test_templates < len(templates):
        raise ConfigError(f"test_templates must be in 1..{len(templates) - 1}, got {test_templates}")
    if per_class is not None and per_class < 4:
        raise ConfigError(f"per_class must be at least 4 (none needs both entity types), got {per_class}")
    rng = np.random.default_rng(seed)
    geo = _geo_entities(min_population, min_capital_population, min_country_population)
    cands = _candidates(geo)
    pairs = _balanced_pairs(cands, per_class, rng)
    order = rng.permutation(len(templates)).tolist()
    template_ids = {"test": sorted(order[:test_templates]), "train": sorted(order[test_templates:])}
    splits: dict[str, list[Row]] = {s: [] for s in SPLITS}
    for label_id, label in enumerate(RELATION_LABELS):
        mine = [pairs[label][i] for i in rng.permutation(len(pairs[label]))]
        n_test, n_val = _three_way(len(mine), validation, test)
        for split, chunk in (("test", mine[:n_test]), ("validation", mine[n_test:n_test + n_val]),
                             ("train", mine[n_test + n_val:])):
            allowed = template_ids["test" if split == "test" else "train"]
            for head, tail in chunk:
                if head in geo.continent and rng.random() < 0.5:  # a country pair: either order
                    head, tail = tail, head
                t = allowed[int(rng.integers(len(allowed)))]
                text, spans = fill_template(templates[t], geo.names[head], geo.names[tail])
                splits[split].append({"text": text, **{key: spans[key] for key in _SPAN_KEYS}, "head": head,
                                      "tail": tail, "label": label_id, "template": t})
    splits = {s: [rows[i] for i in rng.permutation(len(rows))] for s, rows in splits.items()}
    kinds = _labels_by_types([r for rows in splits.values() for r in rows])
    if any(len(labels) < 2 for labels in kinds.values()):
        raise PlmkitError(f"entity types alone decide the label here ({kinds}); use a larger per_class")
    info = {"seed": seed, "pairs_per_class": len(pairs["capital_of"]), "templates": template_ids,
            "labels_by_types": kinds, "candidates": {l: len(v) for l, v in sorted(cands.items())},
            "entities": {"countries": len(geo.continent), "cities": len(geo.country_of), "capitals": len(geo.capitals)}}
    return EntityTask(f"geonames-relations-seed{seed}", RELATION_LABELS, splits["train"], splits["validation"],
                      splits["test"], info=info)


def _labels_by_types(rows: list[Row]) -> dict[str, list[str]]:
    """The labels seen per pair of entity kinds, e.g. ``{"city-country": ["capital_of", "city_in", "none"]}``."""
    out: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        out[f"{r['head'].split(':')[1]}-{r['tail'].split(':')[1]}"].add(RELATION_LABELS[r["label"]])
    return {k: sorted(v) for k, v in sorted(out.items())}


QUESTION_TEMPLATES = {  # relation -> question about the subject (``{s}``); the object is the answer
    "capital": "What is the capital of {s}?",
    "currency": "What is the currency of {s}?",
    "continent": "Which continent is {s} in?",
    "country": "Which country is {s} in?",
}


@dataclass(frozen=True)
class QuestionTask:
    """Closed-book questions about entities: rows carry ``question``, ``answer``, the ``subject`` entity id and its
    char span (``subject_start``, ``subject_end``), the ``relation`` and the ``object`` entity id."""
    name: str
    train: list[Row]
    validation: list[Row]
    test: list[Row]
    info: dict[str, Any] = field(default_factory=dict, compare=False)

    def split(self, name: str) -> list[Row]:
        if name not in SPLITS:
            raise ConfigError(f"split must be train, validation or test, got '{name}'")
        return getattr(self, name)

    def counts(self) -> dict[str, dict[str, int]]:
        return {s: dict(Counter(r["relation"] for r in getattr(self, s))) for s in SPLITS}


def entity_questions(seed: int = 0, min_population: int = 500_000, min_capital_population: int = 100_000,
                     min_country_population: int = 1_000_000, validation: float = 0.15, test: float = 0.3
                     ) -> QuestionTask:
    """EntityQuestions-style closed-book questions from the geonames graph: a country's capital, currency and
    continent, and a city's country (:data:`QUESTION_TEMPLATES`), over the entities the relation task names
    (unambiguous names, populous places). Split by subject, seeded: no subject is asked about in two splits."""
    from .geonames import geonames_graph

    _check_shares(validation, test)
    geo = _geo_entities(min_population, min_capital_population, min_country_population)
    entities, triples = geonames_graph(min(100_000, min_population, min_capital_population))
    objects: dict[tuple[str, str], str] = {}
    for h, r, t in triples:
        if h in geo.continent and r in ("capital", "currency", "continent"):
            if r != "capital" or t in geo.country_of:
                objects[h, r] = t
    for city, country in geo.country_of.items():
        objects[city, "country"] = country
    by_subject: dict[str, list[Row]] = defaultdict(list)
    for (subject, relation), obj in sorted(objects.items()):
        name = geo.names[subject]
        question = QUESTION_TEMPLATES[relation].format(s=name)
        start = question.index(name)
        by_subject[subject].append({"question": question, "answer": entities[obj]["name"].strip(),
                                    "subject": subject, "subject_start": start, "subject_end": start + len(name),
                                    "relation": relation, "object": obj})
    subjects = sorted(by_subject)
    order = np.random.default_rng(seed).permutation(len(subjects))
    n_test, n_val = _three_way(len(subjects), validation, test)
    parts = {"test": order[:n_test], "validation": order[n_test:n_test + n_val], "train": order[n_test + n_val:]}
    rows = {k: [r for i in idx for r in by_subject[subjects[i]]] for k, idx in parts.items()}  # seeded order
    return QuestionTask("geonames-questions", rows["train"], rows["validation"], rows["test"],
                        info={"subjects": len(subjects), "seed": seed})
