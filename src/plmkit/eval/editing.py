"""Editing metrics: edit success (ES), behaviour preservation (BP) and their harmonic mean (EQ)."""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

from .metrics import answer_contained, exact_match, normalize_answer

IN_SCOPE = ("direct", "paraphrase")
OUT_OF_SCOPE = ("same-subject", "same-relation", "unrelated")  # unrelated: zsRE's Natural Questions
MATCHES = {"contained": answer_contained, "exact": exact_match}


def harmonic_mean(a: float, b: float) -> float:
    return 0.0 if a + b == 0 else 2 * a * b / (a + b)


def _mean(xs: Sequence[bool]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def edit_scores(results: Iterable[Mapping], match: str = "contained") -> dict:
    """ES, BP and EQ from per-probe results.

    Each result has ``kind`` (direct, paraphrase, same-subject, same-relation, two-hop),
    ``prediction``, ``answers`` and, for out-of-scope probes, optionally ``known`` (did the
    unedited model answer it right) and ``unedited`` (its answer). ``match`` is ``contained`` (a
    gold answer occurs in the prediction) or ``exact``. ``BP`` scores against the real fact;
    ``BP_known`` only on the probes the unedited model knew; ``BP_unchanged`` is the share of
    out-of-scope answers identical (after normalisation) to the unedited model's. ``two_hop`` is
    reported apart from ES.
    """
    if match not in MATCHES:
        raise ValueError(f"match must be one of {tuple(MATCHES)}")
    hit = MATCHES[match]
    by_kind: dict[str, list[bool]] = {}
    known: list[bool] = []
    unchanged: list[bool] = []
    for r in results:
        ok = hit(r["prediction"], r["answers"])
        by_kind.setdefault(r["kind"], []).append(ok)
        if r["kind"] in OUT_OF_SCOPE and r.get("known"):
            known.append(ok)
        if r["kind"] in OUT_OF_SCOPE and r.get("unedited") is not None:
            unchanged.append(normalize_answer(r["prediction"]) == normalize_answer(r["unedited"]))
    es = _mean([x for k in IN_SCOPE for x in by_kind.get(k, [])])
    bp = _mean([x for k in OUT_OF_SCOPE for x in by_kind.get(k, [])])
    bp_known, bp_same = _mean(known), _mean(unchanged)
    return {
        "ES": es, "BP": bp, "EQ": harmonic_mean(es, bp),
        "BP_known": bp_known, "EQ_known": harmonic_mean(es, bp_known),
        "BP_unchanged": bp_same, "EQ_unchanged": harmonic_mean(es, bp_same),
        "two_hop": _mean(by_kind.get("two-hop", [])),
        "by_kind": {k: _mean(v) for k, v in sorted(by_kind.items())},
        "n": {k: len(v) for k, v in sorted(by_kind.items())} | {"known": len(known), "unchanged": len(unchanged)},
        "protocol": {"match": match, "in_scope": list(IN_SCOPE), "out_of_scope": list(OUT_OF_SCOPE),
                     "ground_truth_out_of_scope": "real fact"},
    }
