"""Standard editing benchmarks, CounterFact and zsRE, read into plmkit's :class:`EditSet`.

The files are not bundled; a user who has them passes the JSON file. Three layouts are read:

- **CounterFact** as released with ROME/MEMIT (``counterfact.json``): records with
  ``requested_rewrite`` (``prompt`` with ``{}`` for the subject, ``subject``, ``relation_id``,
  ``target_new.str``, ``target_true.str``), ``paraphrase_prompts`` and ``neighborhood_prompts``.
- **zsRE** as released with MEND/ROME (``zsre_mend_eval.json``): records with ``subject``, ``src``
  (the question), ``alt`` (the new answer), ``answers`` (the real ones), ``rephrase``, ``loc``
  (an unrelated Natural Questions question, prefixed ``nq question:``) and ``loc_ans``.
- **EasyEdit's flat layout**: records with ``prompt``, ``target_new``, ``ground_truth``,
  ``rephrase_prompt``, ``locality_prompt``, ``locality_ground_truth`` (and ``subject``).

Probe kinds map onto plmkit's: the edit's prompt is ``direct``, its paraphrases ``paraphrase``
(in scope, answer = the new target); CounterFact's neighbourhood prompts (other subjects, same
relation) are ``same-relation`` with the real target as answer; zsRE's and EasyEdit's locality
questions are ``unrelated`` (out of scope, answer = their own gold). The note for an edit is its
prompt completed with the new target.
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from ..errors import ConfigError, PlmkitError
from .edits import Edit, EditSet, Probe

LAYOUTS = ("counterfact", "zsre", "easyedit")


def detect_layout(record: dict) -> str:
    if "requested_rewrite" in record:
        return "counterfact"
    if {"src", "alt"} <= record.keys():
        return "zsre"
    if {"prompt", "target_new"} <= record.keys():
        return "easyedit"
    raise ConfigError(f"unknown editing record (keys {sorted(record)[:8]}): expected CounterFact "
                      "('requested_rewrite'), zsRE ('src', 'alt') or EasyEdit ('prompt', 'target_new') records")


def _statement(prompt: str, answer: str) -> str:
    prompt = prompt.strip()
    return f"{prompt} {answer}" + ("" if prompt.endswith("?") else ".")


def _str(x: Any) -> str:
    return str(x["str"] if isinstance(x, dict) else x).strip()


def _record(i: int, rec: dict, layout: str) -> tuple[Edit, list[Probe]]:
    """One edit and its probes (split assigned later)."""
    if layout == "counterfact":
        rw = rec["requested_rewrite"]
        subject, new, old = rw["subject"], _str(rw["target_new"]), _str(rw["target_true"])
        prompt = rw["prompt"].format(subject) if "{}" in rw["prompt"] else rw["prompt"]
        relation = rw.get("relation_id", "counterfact")
        paraphrases = list(rec.get("paraphrase_prompts", []))
        outside = [(q, [old], "same-relation") for q in rec.get("neighborhood_prompts", [])]
    elif layout == "zsre":
        subject, new, prompt = rec.get("subject", ""), _str(rec["alt"]), rec["src"]
        answers = rec.get("answers") or [""]
        old, relation = _str(answers[0]), "zsre"
        paraphrases = [rec["rephrase"]] if rec.get("rephrase") else []
        outside = [(_nq(rec["loc"]), [_str(rec["loc_ans"])], "unrelated")] if rec.get("loc") else []
    else:
        subject, new, prompt = rec.get("subject", ""), _str(rec["target_new"]), rec["prompt"]
        old, relation = _str(rec.get("ground_truth", "")), rec.get("relation", "easyedit")
        rephrase = rec.get("rephrase_prompt") or []
        paraphrases = [rephrase] if isinstance(rephrase, str) else list(rephrase)
        outside = ([(_nq(rec["locality_prompt"]), [_str(rec["locality_ground_truth"])], "unrelated")]
                   if rec.get("locality_prompt") else [])
    if not new or not prompt:
        raise ConfigError(f"record {i}: empty prompt or new target")
    edit = Edit(i, subject, relation, old, new, _statement(prompt, new))
    probes = [Probe(prompt, "direct", [new], [i], subject, relation)]
    probes += [Probe(q, "paraphrase", [new], [i], subject, relation) for q in paraphrases]
    probes += [Probe(q, kind, gold, [i], "", relation) for q, gold, kind in outside if q and gold[0]]
    return edit, probes


def _nq(question: str) -> str:
    q = question.strip()
    q = q[len("nq question:"):].strip() if q.lower().startswith("nq question:") else q
    return q[0].upper() + q[1:] + ("" if q.endswith("?") else "?") if q else q


def load_edit_benchmark(path: str | Path, *, layout: str | None = None, limit: int | None = None,
                        validation_share: float = 0.2, seed: int = 0) -> EditSet:
    """A CounterFact or zsRE file (see the module docstring) as an :class:`EditSet`.

    ``limit`` keeps the first records; ``validation_share`` of the edits (seeded) tune thresholds,
    the rest are test. Validation probes whose question also occurs, verbatim, among the test
    probes are dropped (:meth:`EditSet.separate_splits`), so no threshold is tuned on a test question.
    """
    p = Path(path)
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PlmkitError(f"{p} does not exist: pass a CounterFact (counterfact.json) or zsRE "
                          "(zsre_mend_eval.json) file") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PlmkitError(f"{p} is not a JSON file of editing records ({e})") from None
    if isinstance(raw, dict):
        raw = raw.get("data", raw.get("records"))
    if not isinstance(raw, list) or not raw or not all(isinstance(r, dict) for r in raw):
        raise ConfigError(f"{p}: expected a JSON list of editing records")
    raw = raw[:limit] if limit else raw
    layout = layout or detect_layout(raw[0])
    if layout not in LAYOUTS:
        raise ConfigError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    edits, probes = [], []
    for i, rec in enumerate(raw):
        try:
            e, ps = _record(i, rec, layout)
        except (KeyError, TypeError, IndexError) as err:
            raise ConfigError(f"{p}: record {i} is not a {layout} record (missing or bad field {err})") from None
        edits.append(e)
        probes += ps
    order = list(range(len(edits)))
    random.Random(seed).shuffle(order)
    val = set(order[:int(round(validation_share * len(edits)))])
    for e in edits:
        e.split = "validation" if e.id in val else "test"
    for pr in probes:
        pr.split = edits[pr.edit_ids[0]].split
    es = EditSet(edits, probes, seed, {"source": str(p), "layout": layout, "n_edits": len(edits)})
    es.separate_splits()
    return es
