"""Run editors on an edit set: answer probes, tune scope thresholds, score ES/BP/EQ."""
from __future__ import annotations

import random
from typing import Any, Sequence

import numpy as np

from ..data.edits import EditSet, Probe
from ..errors import ConfigError
from ..eval.editing import IN_SCOPE, OUT_OF_SCOPE, edit_scores, harmonic_mean
from ..eval.metrics import answer_contained
from .eren import EREN, ERENConfig
from .notebook import Hit, Notebook
from .reader import Reader

METHODS = ("unedited", "one-step reading", "SERAC-like scope", "EREN (paper prompt)", "EREN (reader relevance)",
           "EREN (reader + similarity)",
           "EREN (reader relevance, top note)")
ONE_HOP = IN_SCOPE + OUT_OF_SCOPE  # every probe kind but two-hop


def probe_rows(probes: Sequence[Probe], answers, unedited: dict[str, str] | None = None) -> list[dict]:
    """Per-probe results in the form :func:`plmkit.eval.editing.edit_scores` reads.

    ``unedited`` maps a question to the unedited model's answer: out-of-scope rows then carry it
    (for ``BP_unchanged``) and whether it was right (``known``)."""
    unedited = unedited or {}
    rows = []
    for p, a in zip(probes, answers):
        before = unedited.get(p.question) if p.kind in OUT_OF_SCOPE else None
        rows.append({"question": p.question, "kind": p.kind, "answers": p.answers, "prediction": a.text,
                     "source": a.source, "unedited": before,
                     "known": None if before is None else answer_contained(before, p.answers)})
    return rows


def fill_notebook(notebook: Notebook, edit_set: EditSet, edit_ids: Sequence[int]) -> None:
    """Make ``notebook`` hold exactly the statements of ``edit_ids``."""
    notebook.clear()
    if edit_ids:
        notebook.add(edit_set.statements(edit_ids))


def one_note_hits(notebook: Notebook, edit_set: EditSet, probes: Sequence[Probe]) -> list[list[Hit]]:
    """For the one-edit-at-a-time regime: each probe sees only its own edit's note(s).

    The notebook holds every statement so that each hit carries a real id and retrieval score."""
    fill_notebook(notebook, edit_set, sorted({i for p in probes for i in p.edit_ids}))
    notes = notebook.notes()
    by_text = {n.text: (n, v) for n, v in zip(notes, notebook.encoder.encode([n.text for n in notes]))}
    hits = []
    for row, p in zip(notebook.encoder.encode([p.question for p in probes]), probes):
        own = [by_text[s] for s in edit_set.statements(p.edit_ids)]
        hits.append(sorted((Hit(n, float(row @ v)) for n, v in own), key=lambda h: -h.score))
    return hits


def best_threshold(in_scope: Sequence[float], out_of_scope: Sequence[float]) -> float:
    """The threshold that best separates "read the notes" (in scope) from "do not" (out of scope):
    it maximises the harmonic mean of the two rates, as EQ does."""
    pos, neg = np.asarray(in_scope, dtype=float), np.asarray(out_of_scope, dtype=float)
    cands = np.unique(np.concatenate([pos, neg]))
    if not len(cands):
        raise ValueError("no scores to tune a threshold on")
    best = max(cands, key=lambda t: (harmonic_mean(float((pos >= t).mean()) if len(pos) else 0.0,
                                                   float((neg < t).mean()) if len(neg) else 0.0), -t))
    return float(best)


def scope_scores(eren: EREN, probes: Sequence[Probe] | Sequence[str], hits: Sequence[Sequence[Hit]] | None = None,
                 kind: str = "reader") -> list[float]:
    """Per probe (or question), the largest relevance score of its retrieved notes: reader PMI, retrieval score
    (``similarity``) or ``eren``'s weighted sum of both (``combined``)."""
    questions = [p if isinstance(p, str) else p.question for p in probes]
    hits = eren._retrieve(questions) if hits is None else hits
    if kind == "similarity":
        return [max((h.score for h in r), default=-np.inf) for r in hits]
    rows = eren.combined_scores(questions, hits) if kind == "combined" else eren.relevance_scores(questions, hits)
    return [max(s, default=-np.inf) for s in rows]


def tune_scope(eren: EREN, questions: Sequence[str], in_scope: Sequence[bool]) -> dict[str, float]:
    """The scope settings from labelled questions against ``eren``'s notebook: ``threshold`` (the reader's
    relevance), ``similarity_threshold`` (retrieval score), each the one that best separates questions the notes
    bear on from the others (:func:`best_threshold`), and the ``combined`` weights and threshold
    (:func:`fit_combined`). Sets them on ``eren.config``."""
    if len(questions) != len(in_scope):
        raise ValueError("one in_scope flag per question")
    if not any(in_scope) or all(in_scope):
        raise ConfigError("tuning needs questions the notes answer (in scope) and questions they do not")
    probes = [Probe(q, "direct" if s else "unrelated", [], [], "", "") for q, s in zip(questions, in_scope)]
    return {"threshold": tune(eren, probes), "similarity_threshold": tune(eren, probes, kind="similarity"),
            **tune_combined(eren, probes)}


def tune_combined(eren: EREN, probes: Sequence[Probe], hits=None) -> dict[str, float]:
    """:func:`tune` of the combined scope: the weights and the threshold, set on ``eren.config`` and returned as
    ``ERENConfig`` fields."""
    t = tune(eren, probes, hits, kind="combined")
    return {"reader_weight": eren.config.reader_weight, "similarity_weight": eren.config.similarity_weight,
            "combined_threshold": t}


def fit_combined(eren: EREN, probes: Sequence[Probe], hits=None) -> tuple[float, float]:
    """``reader_weight`` and ``similarity_weight`` from validation probes, in place: a balanced logistic
    regression of in scope vs out of scope on each probe's largest reader PMI and largest retrieval score
    (features standardised, weights given back in their units)."""
    from sklearn.linear_model import LogisticRegression

    keep = [i for i, p in enumerate(probes) if p.kind in IN_SCOPE or p.kind in OUT_OF_SCOPE]
    probes = [probes[i] for i in keep]
    hits = None if hits is None else [hits[i] for i in keep]
    x = np.column_stack([scope_scores(eren, probes, hits, "reader"), scope_scores(eren, probes, hits, "similarity")])
    y = np.array([p.kind in IN_SCOPE for p in probes])
    if not np.isfinite(x).all() or y.all() or not y.any():
        raise ConfigError("fitting the combined scope needs in- and out-of-scope probes with retrieved notes")
    scale = x.std(0) + 1e-9
    w = LogisticRegression(class_weight="balanced").fit(x / scale, y).coef_[0] / scale
    eren.config.reader_weight, eren.config.similarity_weight = float(w[0]), float(w[1])
    return float(w[0]), float(w[1])


def tune(eren: EREN, probes: Sequence[Probe], hits=None, kind: str = "reader") -> float:
    """Tune ``threshold`` (reader), ``similarity_threshold`` or ``combined_threshold`` (after
    :func:`fit_combined` set the weights) on validation probes, in place."""
    if kind == "combined":
        fit_combined(eren, probes, hits)
    scores = scope_scores(eren, probes, hits, kind)
    t = best_threshold([s for s, p in zip(scores, probes) if p.kind in IN_SCOPE],
                       [s for s, p in zip(scores, probes) if p.kind in OUT_OF_SCOPE])
    key = {"similarity": "similarity_threshold", "combined": "combined_threshold"}.get(kind, "threshold")
    setattr(eren.config, key, t)
    return t


def score(rows: list[dict]) -> dict:
    """ES/BP/EQ under both matching protocols."""
    return {m: edit_scores(rows, m) for m in ("contained", "exact")}


def editors(reader: Reader, notebook: Notebook, thresholds: dict[str, float],
            methods: Sequence[str] = METHODS) -> dict[str, EREN]:
    """The reading editors compared on an edit set (``thresholds``: ``reader`` and ``similarity``)."""
    built = {
        "unedited": lambda: EREN(reader, None),
        "one-step reading": lambda: EREN(reader, notebook, ERENConfig(relevance="always")),
        "SERAC-like scope": lambda: EREN(reader, notebook, ERENConfig(relevance="similarity",
                                                                      similarity_threshold=thresholds["similarity"])),
        "EREN (paper prompt)": lambda: EREN(reader, notebook, ERENConfig(relevance="generate")),
        "EREN (reader relevance)": lambda: EREN(reader, notebook, ERENConfig(threshold=thresholds["reader"])),
        "EREN (reader + similarity)": lambda: EREN(reader, notebook, ERENConfig(
            relevance="combined", threshold=thresholds["reader"], **thresholds.get("combined", {}))),
        "EREN (reader relevance, top note)": lambda: EREN(reader, notebook,
                                                          ERENConfig(threshold=thresholds["reader"], max_notes=1)),
    }
    return {k: f() for k, f in built.items() if k in methods}


def tune_on_validation(reader: Reader, notebook: Notebook, edit_set: EditSet, n_edits: int | None = None,
                       n_probes: int | None = None, rng: random.Random | None = None) -> dict[str, Any]:
    """The thresholds (``reader``, ``similarity``, and the ``combined`` weights and threshold) tuned on
    validation edits only: the notebook holds
    ``n_edits`` of them (all by default) and ``n_probes`` of their one-hop probes are scored (returned
    under ``probes``)."""
    rng = rng or random.Random(0)
    val = [e.id for e in edit_set.split("validation")]
    if not val:
        raise ConfigError("the edit set has no validation edits to tune thresholds on")
    val = rng.sample(val, min(n_edits or len(val), len(val)))
    fill_notebook(notebook, edit_set, val)
    probes = edit_set.probes_for(val, ONE_HOP)
    probes = rng.sample(probes, min(n_probes or len(probes), len(probes)))
    return {"reader": tune(EREN(reader, notebook), probes),
            "similarity": tune(EREN(reader, notebook, ERENConfig(relevance="similarity")), probes, kind="similarity"),
            "combined": tune_combined(EREN(reader, notebook, ERENConfig(relevance="combined")), probes),
            "n_probes": len(probes), "probes": probes}


def edit_benchmark(reader: Reader, notebook: Notebook, edit_set: EditSet, *, n_eval: int = 100,
                   notebook_size: int | None = None, tune_edits: int | None = 200, tune_probes: int | None = 500,
                   methods: Sequence[str] = ("unedited", "one-step reading", "SERAC-like scope",
                                             "EREN (reader relevance)"),
                   seed: int = 0, progress: bool = False) -> dict[str, Any]:
    """ES/BP/EQ of each editor on ``n_eval`` test edits of ``edit_set`` (CounterFact, zsRE or geonames),
    with the notebook holding ``notebook_size`` test edits (default: every test edit), after tuning
    the thresholds on validation edits. Returns thresholds, per-method scores and sizes."""
    from tqdm.auto import tqdm

    rng = random.Random(seed)
    thresholds = tune_on_validation(reader, notebook, edit_set, tune_edits, tune_probes, rng)
    thresholds.pop("probes")
    test = [e.id for e in edit_set.split("test")]
    if not test:
        raise ConfigError("the edit set has no test edits")
    chosen = rng.sample(test, min(n_eval, len(test)))
    size = max(len(chosen), min(notebook_size or len(test), len(test)))
    rest = [i for i in test if i not in set(chosen)]
    fill_notebook(notebook, edit_set, chosen + rng.sample(rest, size - len(chosen)))
    probes = edit_set.probes_for(chosen, ONE_HOP)
    questions = [p.question for p in probes]
    unedited = {q: a.text for q, a in zip(questions, EREN(reader, None).answer_batch(questions))}
    out: dict[str, Any] = {"thresholds": thresholds, "n_eval": len(chosen), "notebook_size": size,
                           "n_probes": {k: sum(p.kind == k for p in probes) for k in ONE_HOP}, "scores": {}}
    for name, editor in tqdm(editors(reader, notebook, thresholds, methods).items(), desc="editors",
                             disable=not progress):
        answers = editor.answer_batch(questions)
        out["scores"][name] = score(probe_rows(probes, answers, unedited))
    return out
