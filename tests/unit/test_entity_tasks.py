"""ERNIE's knowledge-driven tasks: WordNet entity typing and geonames relation classification (real assets, ~2 s)."""
from __future__ import annotations

import re
from collections import Counter

import pytest

from plmkit.data.entity_tasks import (RELATION_LABELS, RELATION_TEMPLATES, EntityTask, entity_typing_task,
                                      fill_template, geo_relation_task)
from plmkit.data.geonames import geonames_graph
from plmkit.data.wordnet import gloss_examples, lemma_forms, wordnet_example_counts, wordnet_examples
from plmkit.errors import ConfigError


@pytest.fixture(scope="module")
def typing() -> EntityTask:
    return entity_typing_task(seed=0)


@pytest.fixture(scope="module")
def relations() -> EntityTask:
    return geo_relation_task(seed=0)


def _norm(text: str) -> str:
    return re.sub(r"[\s_-]+", " ", text.lower())


def _is_form(mention: str, lemma: str) -> bool:
    """Whether ``mention`` spells a form of the noun ``lemma`` (separators and case aside)."""
    return _norm(mention) in {_norm(f) for f in lemma_forms(lemma, "n")}


def test_lemma_forms_use_exceptions_and_suffix_rules():
    assert {"geese", "boxes", "cities", "women"} <= lemma_forms("goose", "n") | lemma_forms("box", "n") | \
        lemma_forms("city", "n") | lemma_forms("woman", "n")
    assert {"ran", "running", "runs"} <= lemma_forms("run", "v")
    assert {"looked_up", "looking_up"} <= lemma_forms("look_up", "v")
    assert "governors_general" in lemma_forms("governor_general", "n")  # from noun.exc
    assert "secretaries-general" in lemma_forms("secretary_general", "n")
    assert {"happier", "bigger"} <= lemma_forms("happy", "a") | lemma_forms("big", "a")


def test_gloss_examples_follow_the_definition():
    gloss = 'an assemblage of parts; "how big is that part compared to the whole?"; "the team is a unit"'
    assert gloss_examples(gloss) == ["how big is that part compared to the whole?", "the team is a unit"]
    assert gloss_examples('the word "quoted" in a definition') == []


def test_wordnet_examples_point_at_a_form_of_the_lemma():
    rows = wordnet_examples()
    counts = wordnet_example_counts()
    assert counts["kept"] == len(rows) > 11_000 and counts["skipped"] < 0.02 * counts["examples"]
    for r in rows:
        mention = r["text"][r["start"]:r["end"]]
        assert _is_form(mention, r["lemma"]), r
        assert r["lexname"].startswith("noun.") and r["synset"].endswith("-n")
    unit = [r for r in rows if r["text"] == "the team is a unit"]
    assert unit and unit[0]["lemma"] == "unit" and (unit[0]["start"], unit[0]["end"]) == (14, 18)
    plural = next(r for r in rows if r["text"] == "he told his story to some conservative worthies")
    assert plural["text"][plural["start"]:plural["end"]] == "worthies" and plural["lemma"] == "worthy"
    with pytest.raises(ConfigError, match="pos"):
        wordnet_examples(("x",))


def test_entity_typing_splits_by_synset_with_spans_on_the_mention(typing):
    assert typing.labels == tuple(sorted(typing.labels)) and all(l.startswith("noun.") for l in typing.labels)
    assert set(typing.info["dropped_classes"]) == {"noun.Tops", "noun.motive", "noun.plant"}
    assert all(n < 50 for n in typing.info["dropped_classes"].values())
    synsets = {s: {r["synset"] for r in typing.split(s)} for s in ("train", "validation", "test")}
    texts = {s: {r["text"] for r in typing.split(s)} for s in ("train", "validation", "test")}
    for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
        assert not synsets[a] & synsets[b] and not texts[a] & texts[b]
    for r in typing.train + typing.validation + typing.test:
        assert r["mention"] == r["text"][r["start"]:r["end"]] and 0 <= r["label"] < typing.num_labels
        assert _is_form(r["mention"], r["lemma"]), r
    counts = typing.counts()
    assert set(counts) == {"train", "validation", "test"}
    assert all(counts[s][l] > 0 for s in counts for l in typing.labels)  # every class in every split
    assert 0.15 < counts["test"]["total"] / sum(c["total"] for c in counts.values()) < 0.25


def test_entity_typing_is_seeded_and_capped(typing):
    assert entity_typing_task(seed=0) == typing
    other = entity_typing_task(seed=1)
    assert {r["synset"] for r in other.test} != {r["synset"] for r in typing.test}
    capped = entity_typing_task(seed=0, max_per_class=60, min_per_class=60)
    per_class = Counter(r["label"] for s in ("train", "validation", "test") for r in capped.split(s))
    assert max(per_class.values()) <= 60 and "noun.animal" not in capped.labels  # noun.animal has ~50
    with pytest.raises(ConfigError, match="validation and test"):
        entity_typing_task(test=0.9)
    with pytest.raises(ConfigError, match="min_per_class"):
        entity_typing_task(min_per_class=100, max_per_class=10)


def test_fill_template_spans():
    text, spans = fill_template("Before {tail}, the guide talked about {head}.", "Lyon", "Peru")
    assert text == "Before Peru, the guide talked about Lyon."
    assert text[spans["head_start"]:spans["head_end"]] == "Lyon"
    assert text[spans["tail_start"]:spans["tail_end"]] == "Peru"


def _facts() -> dict:
    """The graph's facts the labels rest on, recomputed here."""
    entities, triples = geonames_graph()
    return {"entities": entities, "country_of": {h: t for h, r, t in triples if r == "city_in"},
            "continent": {h: t for h, r, t in triples if r == "continent"},
            "capitals": {t for h, r, t in triples if r == "capital"},
            "neighbours": {(h, t) for h, r, t in triples if r == "neighbour"}}


def _gold(row: dict, facts: dict) -> str:
    """The label of a row's (head, tail) pair by the graph."""
    h, t = row["head"], row["tail"]
    if h in facts["country_of"]:  # a city and a country
        if facts["country_of"][h] != t:
            return "none"
        return "capital_of" if h in facts["capitals"] else "city_in"
    if (h, t) in facts["neighbours"]:
        return "neighbour_of"
    return "same_continent" if facts["continent"][h] == facts["continent"][t] else "none"


def test_relation_labels_match_the_graph_and_spans_the_names(relations):
    facts = _facts()
    entities = facts["entities"]
    rows = relations.train + relations.validation + relations.test
    for r in rows:
        assert RELATION_LABELS[r["label"]] == _gold(r, facts)
        assert r["text"][r["head_start"]:r["head_end"]] == entities[r["head"]]["name"].strip()
        assert r["text"][r["tail_start"]:r["tail_end"]] == entities[r["tail"]]["name"].strip()
        assert r["text"] == fill_template(RELATION_TEMPLATES[r["template"]], entities[r["head"]]["name"].strip(),
                                          entities[r["tail"]]["name"].strip())[0]
    # city names are unambiguous: one city of that name in the graph, not a country's name
    city_names = Counter(e["name"].strip() for e in entities.values() if e["kind"] == "city")
    country_names = {e["name"].strip() for e in entities.values() if e["kind"] == "country"}
    for r in rows:
        if r["head"].startswith("geo:city:"):
            name = entities[r["head"]]["name"].strip()
            assert city_names[name] == 1 and name not in country_names
            capital = r["head"] in facts["capitals"]
            assert entities[r["head"]]["population"] >= (100_000 if capital else 500_000)


def test_relation_splits_are_balanced_and_disjoint(relations):
    counts = relations.counts()
    for split in ("train", "validation", "test"):
        assert len({counts[split][l] for l in RELATION_LABELS}) == 1 and counts[split]["total"] > 0
    assert counts["test"]["capital_of"] >= 20
    pairs = {s: {frozenset((r["head"], r["tail"])) for r in relations.split(s)} for s in ("train", "validation", "test")}
    for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
        assert not pairs[a] & pairs[b]
    assert sum(map(len, pairs.values())) == sum(c["total"] for c in counts.values())  # one row per pair
    templates = {s: {r["template"] for r in relations.split(s)} for s in ("train", "validation", "test")}
    assert len(RELATION_TEMPLATES) >= 16 and not (templates["train"] | templates["validation"]) & templates["test"]
    assert len(templates["test"]) >= 4 and len(templates["train"]) >= 10


def test_relation_entity_types_do_not_decide_the_label(relations):
    by_types: dict[str, set[str]] = {}
    for r in relations.train + relations.validation + relations.test:
        kinds = f"{r['head'].split(':')[1]}-{r['tail'].split(':')[1]}"
        by_types.setdefault(kinds, set()).add(RELATION_LABELS[r["label"]])
    assert by_types == {"city-country": {"capital_of", "city_in", "none"},
                        "country-country": {"neighbour_of", "same_continent", "none"}}
    assert relations.info["labels_by_types"] == {k: sorted(v) for k, v in sorted(by_types.items())}


def test_relation_task_is_seeded_and_validated(relations):
    assert geo_relation_task(seed=0) == relations
    assert geo_relation_task(seed=1).test != relations.test
    small = geo_relation_task(seed=0, per_class=20)
    assert all(small.counts()[s]["total"] == 5 * n for s, n in (("train", 13), ("validation", 3), ("test", 4)))
    with pytest.raises(ConfigError, match="test_templates"):
        geo_relation_task(test_templates=len(RELATION_TEMPLATES))
    with pytest.raises(ConfigError, match="one {head} and one {tail}"):
        geo_relation_task(templates=("{head} only.", *RELATION_TEMPLATES))
    with pytest.raises(ConfigError, match="per_class"):
        geo_relation_task(per_class=2)


def test_entity_questions_split_by_subject_with_answers_from_the_graph():
    from plmkit.data.entity_tasks import QUESTION_TEMPLATES, entity_questions
    from plmkit.data.geonames import geonames_graph

    t = entity_questions(seed=0)
    entities, triples = geonames_graph()
    facts = {(h, r): o for h, r, o in triples}
    subjects = [{r["subject"] for r in t.split(s)} for s in ("train", "validation", "test")]
    assert not (subjects[0] & subjects[1]) and not (subjects[0] & subjects[2]) and not (subjects[1] & subjects[2])
    for r in t.train[:50] + t.test[:50]:
        assert r["question"][r["subject_start"]:r["subject_end"]] == entities[r["subject"]]["name"].strip()
        assert r["answer"] == entities[r["object"]]["name"].strip()
        relation = "city_in" if r["relation"] == "country" else r["relation"]
        assert facts[r["subject"], relation] == r["object"]
        assert r["question"] == QUESTION_TEMPLATES[r["relation"]].format(s=entities[r["subject"]]["name"].strip())
    assert set(t.counts()["test"]) == set(QUESTION_TEMPLATES)
    assert entity_questions(seed=0).test == t.test and entity_questions(seed=1).test != t.test
