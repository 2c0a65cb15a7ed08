"""Recipe ``eren``: editing by notes on counterfactual geonames edits, EREN beside its baselines.

SmolLM2-135M-Instruct reads, MiniLM retrieves. Edits and probes come from
:func:`plmkit.data.edits.build_edit_set`; thresholds (EREN's reader relevance and the SERAC-like
similarity scope) are tuned on validation edits, then every method answers the same test probes
with the notebook holding N = 1, 10, 100 and 1000 notes.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..assets import load_model
from ..device import fast_dtype
from ..data.edits import EditSet, Probe, build_edit_set, fact_claims
from ..editing import EREN, ERENConfig, Notebook, Reader
from ..editing.eren import CHECK_SCORING, VERDICTS
from ..editing.baselines import fine_tune_on_statements
from ..editing.benchmark import (
    METHODS as READING_METHODS,
    ONE_HOP,
    editors,
    fill_notebook,
    one_note_hits,
    probe_rows,
    scope_scores,
    score,
    tune_on_validation,
)
from ..eval import answer_contained
from ..eval.editing import IN_SCOPE, OUT_OF_SCOPE
from .registry import Budgets, RecipeContext, recipe

METHODS = READING_METHODS + ("fine-tuning",)
PAPER = {  # flan-t5-xl reader, CounterFact-Hard: ES / BP / EQ
    "one-step MRC": (98.4, 24.5, 39.2), "SERAC": (96.9, 51.4, 67.2), "EREN": (96.9, 96.8, 96.9)}


@dataclass(frozen=True)
class ErenSettings:
    n_eval: int  # test edits evaluated per notebook size
    sizes: tuple[int, ...]  # notes in the notebook (N)
    tune_edits: int  # validation edits for the thresholds
    tune_probes: int
    two_hop: int  # two-hop test questions (0: skipped)
    ft_sizes: tuple[int, ...]  # notebook sizes where the fine-tuning baseline runs
    ft_epochs: int
    methods: tuple[str, ...] = METHODS
    fact_check: bool = True
    fact_check_methods: tuple[str, ...] | None = None  # the editors whose verdicts are scored (None: all of methods)


QUICK = ErenSettings(n_eval=8, sizes=(1000,), tune_edits=12, tune_probes=40, two_hop=0, ft_sizes=(), ft_epochs=3,
                     methods=("unedited", "one-step reading", "SERAC-like scope", "EREN (reader relevance)",
                              "EREN (reader relevance, top note)", "EREN (reader + similarity)"),
                     fact_check_methods=("unedited", "EREN (reader relevance)"))
FULL = ErenSettings(n_eval=100, sizes=(1, 10, 100, 1000), tune_edits=150, tune_probes=500, two_hop=50,
                    ft_sizes=(10, 100, 1000), ft_epochs=3)


def _editors(reader: Reader, nb: Notebook, thresholds: dict[str, float],
             methods: tuple[str, ...] = METHODS) -> dict[str, EREN]:
    return editors(reader, nb, thresholds, methods)


def _auc(scores: list[float], probes: list[Probe]) -> float:
    from sklearn.metrics import roc_auc_score

    keep = [(s, p.kind in IN_SCOPE) for s, p in zip(scores, probes) if p.kind in ONE_HOP]
    return float(roc_auc_score([k for _, k in keep], [s for s, _ in keep]))


def _tune(reader: Reader, nb: Notebook, es: EditSet, S: ErenSettings, rng: random.Random) -> dict[str, Any]:
    out: dict[str, Any] = tune_on_validation(reader, nb, es, S.tune_edits, S.tune_probes, rng)
    probes = out.pop("probes")
    out["auc"] = {"reader": _auc(scope_scores(EREN(reader, nb), probes), probes),
                  "similarity": _auc(scope_scores(EREN(reader, nb, ERENConfig(relevance="similarity")), probes,
                                                  kind="similarity"), probes),
                  "combined": _auc(scope_scores(EREN(reader, nb, ERENConfig(relevance="combined", **out["combined"])),
                                                probes, kind="combined"), probes)}
    return out


def _groups(es: EditSet, size: int, S: ErenSettings, rng: random.Random) -> list[tuple[list[int], list[int]]]:
    """(notebook edit ids, evaluated edit ids) per notebook for one regime."""
    in_two_hop = {i for p in es.probes if p.kind == "two-hop" for i in p.edit_ids}
    test = [e.id for e in es.split("test") if e.id not in in_two_hop]
    chosen = rng.sample(test, S.n_eval)
    if size < S.n_eval:
        return [(chosen[i:i + size], chosen[i:i + size]) for i in range(0, S.n_eval, size)]
    rest = [e.id for e in es.edits if e.id not in set(chosen)]
    return [(chosen + rng.sample(rest, size - len(chosen)), chosen)]


def _answer(editor: EREN, probes: list[Probe], hits=None):
    return editor.answer_batch([p.question for p in probes], hits=hits)


def _fine_tuned(ctx: RecipeContext, es: EditSet, groups, S: ErenSettings, unedited: dict) -> dict[str, Any]:
    rows, seconds = [], 0.0
    for notebook_ids, eval_ids in groups:
        model, tok = load_model("smollm2", task="causal-lm")
        statements = es.statements(notebook_ids)
        steps = max(10, S.ft_epochs * len(statements) // 8)
        t = time.perf_counter()
        fine_tune_on_statements(model, tok, statements, ctx.out_dir / "ft", steps=steps, batch_size=8,
                                progress=ctx.progress, seed=ctx.seed)
        seconds += time.perf_counter() - t
        probes = es.probes_for(eval_ids, ONE_HOP)
        reader = Reader(model.to(fast_dtype()), tok, max_new_tokens=16)
        rows += probe_rows(probes, _answer(EREN(reader, None), probes), unedited)
    return {"rows": rows, "train_seconds": seconds}


def _evaluate(ctx: RecipeContext, reader: Reader, nb: Notebook, es: EditSet, S: ErenSettings, thresholds: dict,
              rng: random.Random) -> dict[str, Any]:
    from tqdm.auto import tqdm

    base = EREN(reader, None)
    regimes: dict[int, dict] = {}
    reading = [m for m in S.methods if m != "fine-tuning"]
    bar = tqdm(total=len(S.sizes) * (len(reading) + 1), desc="eren", disable=not ctx.progress)
    for size in S.sizes:
        groups = _groups(es, size, S, rng)
        eval_probes = [p for _, ids in groups for p in es.probes_for(ids, ONE_HOP)]
        with ctx.phase("answer: unedited"):
            unedited = {p.question: a.text for p, a in zip(eval_probes, _answer(base, eval_probes))}
        by_method: dict[str, list[dict]] = {m: [] for m in reading}
        for notebook_ids, eval_ids in groups:
            probes = es.probes_for(eval_ids, ONE_HOP)
            hits = one_note_hits(nb, es, probes) if size == 1 else None
            if size > 1:
                fill_notebook(nb, es, notebook_ids)
            for name, editor in _editors(reader, nb, thresholds, S.methods).items():
                with ctx.phase(f"answer: {name}"):
                    by_method[name] += probe_rows(probes, _answer(editor, probes, hits), unedited)
        bar.update(len(reading))
        if size in S.ft_sizes and "fine-tuning" in S.methods:
            with ctx.phase("fine-tuning baseline"):
                ft = _fine_tuned(ctx, es, groups, S, unedited)
            by_method["fine-tuning"] = ft["rows"]
        bar.update(1)
        regimes[size] = {"scores": {m: score(rows) for m, rows in by_method.items()},
                         "read_rate": {m: _read_rate(rows) for m, rows in by_method.items()},
                         "n_probes": len(eval_probes), "n_notebooks": len(groups),
                         **({"ft_train_seconds": ft["train_seconds"]} if "fine-tuning" in by_method else {})}
    out: dict[str, Any] = {"regimes": regimes, "two_hop": {}, "n_two_hop": 0, "fact_check": None}
    if S.two_hop:  # both edits in a notebook of every edit
        with ctx.phase("two-hop"):
            hop = [p for p in es.probes if p.kind == "two-hop" and p.split == "test"][:S.two_hop]
            fill_notebook(nb, es, [e.id for e in es.edits])
            editors = _editors(reader, nb, thresholds, S.methods)
            editors["EREN (reader relevance, 2 hops)"] = EREN(reader, nb, ERENConfig(threshold=thresholds["reader"],
                                                                                     hops=2))
            editors["EREN (reader relevance, top note, 2 hops)"] = EREN(
                reader, nb, ERENConfig(threshold=thresholds["reader"], max_notes=1, hops=2))
            out["two_hop"] = {name: float(np.mean([answer_contained(a.text, p.answers)
                                                   for p, a in zip(hop, _answer(ed, hop))]))
                              for name, ed in editors.items()}
            out["n_two_hop"] = len(hop)
    if S.fact_check:
        with ctx.phase("fact checking"):
            out["fact_check"] = _fact_check(reader, nb, es, S, thresholds, rng)
    return out


def _verdict_stats(verdicts: list[str], before: list[str], claims: list[dict]) -> dict[str, Any]:
    """Accuracy per claim kind; 3-way accuracy and macro-F1 on the claims an edit decides (its statement
    supports, the fact it overrides refutes); unrelated claims: verdict unchanged from the unedited reader."""
    from sklearn.metrics import f1_score

    decided = [(v, c["label"]) for v, c in zip(verdicts, claims) if c["kind"] in ("edited", "old fact")]
    gold = sorted({g for _, g in decided})
    acc = {k: float(np.mean([v == c["label"] for v, c in zip(verdicts, claims) if c["kind"] == k]))
           for k in ("edited", "old fact")}
    same = float(np.mean([v == b for v, b, c in zip(verdicts, before, claims) if c["kind"] == "unrelated"]))
    return {**acc, "unrelated_unchanged": same, "accuracy": float(np.mean([v == g for v, g in decided])),
            "macro_f1": float(f1_score([g for _, g in decided], [v for v, _ in decided], labels=gold,
                                       average="macro", zero_division=0)),
            "labels": {lab: verdicts.count(lab) / len(verdicts) for lab in VERDICTS}}


def _majority(claims: list[dict]) -> dict[str, float]:
    """The majority-class baseline on the claims an edit decides."""
    from sklearn.metrics import f1_score

    gold = [c["label"] for c in claims if c["kind"] in ("edited", "old fact")]
    top = max(sorted(set(gold)), key=gold.count)
    return {"label": top, "accuracy": gold.count(top) / len(gold),
            "macro_f1": float(f1_score(gold, [top] * len(gold), labels=sorted(set(gold)), average="macro",
                                       zero_division=0))}


def _fact_check(reader: Reader, nb: Notebook, es: EditSet, S: ErenSettings, thresholds: dict,
                rng: random.Random) -> dict[str, Any]:
    """Verdicts on claims built from edits. The option scoring (sum, per-token mean, or calibrated against a
    content-free prompt) is chosen by EREN's macro-F1 on validation edits; test claims come from a
    100-note notebook of test edits."""
    val = rng.sample([e.id for e in es.split("validation")], min(S.n_eval, len(es.split("validation"))))
    fill_notebook(nb, es, val)
    vclaims = fact_claims(es, val)
    vtexts = [c["claim"] for c in vclaims]
    validation = {}
    for scoring in CHECK_SCORING:
        before = [v.label for v in EREN(reader, None, ERENConfig(check_scoring=scoring)).check_batch(vtexts)]
        ed = EREN(reader, nb, ERENConfig(threshold=thresholds["reader"], check_scoring=scoring))
        validation[scoring] = _verdict_stats([v.label for v in ed.check_batch(vtexts)], before, vclaims)
    best = max(CHECK_SCORING, key=lambda k: validation[k]["macro_f1"])

    groups = _groups(es, 100, S, rng)
    fill_notebook(nb, es, groups[0][0])
    claims = fact_claims(es, groups[0][1])
    texts = [c["claim"] for c in claims]
    befores = {sc: [v.label for v in EREN(reader, None, ERENConfig(check_scoring=sc)).check_batch(texts)]
               for sc in CHECK_SCORING}
    out = {}
    for name, editor in _editors(reader, nb, thresholds, S.fact_check_methods or S.methods).items():
        if name == "EREN (paper prompt)":
            continue  # its relevance is a generated answer; fact checking scores options instead
        for scoring in (CHECK_SCORING if name == "EREN (reader relevance)" else (best,)):
            editor.config.check_scoring = scoring
            row = f"{name}, {scoring}" + (" (chosen on validation)" if scoring == best else "")
            out[row] = _verdict_stats([v.label for v in editor.check_batch(texts)], befores[scoring], claims)
    return {"n_claims": len(claims), "n_validation_claims": len(vclaims), "scoring": best,
            "validation_macro_f1": {k: v["macro_f1"] for k, v in validation.items()},
            "majority": _majority(claims), "methods": out}


def _read_rate(rows: list[dict]) -> dict[str, float]:
    """How often the answer came from the notes, in scope and out of scope."""
    def rate(kinds):
        xs = [r["source"] == "notes" for r in rows if r["kind"] in kinds]
        return float(np.mean(xs)) if xs else float("nan")
    return {"in_scope": rate(IN_SCOPE), "out_of_scope": rate(OUT_OF_SCOPE)}


def _plots(ctx: RecipeContext, ev: dict) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted(ev["regimes"])
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    for ax, key, title in zip(axes, ("EQ_unchanged", "ES", "BP_unchanged"),
                              ("EQ (ES with BP = out-of-scope answers unchanged)", "ES: edit success (answer contained)",
                               "BP: out-of-scope answers unchanged")):
        for m in METHODS:
            pts = [(n, ev["regimes"][n]["scores"][m]["contained"][key]) for n in sizes
                   if m in ev["regimes"][n]["scores"]]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=m)
        ax.set(xscale="log", title=title, xlabel="notes in the notebook (N)", ylim=(-0.02, 1.02))
        ax.legend(fontsize=7)
    ctx.save_figure(fig, "eren_eq_by_notebook_size.png")
    return ["eren_eq_by_notebook_size.png"]


@recipe(
    "eren",
    "EREN: editing a model by notes it reads only when relevant (SmolLM2 reader, geonames counterfactuals)",
    system="eren",
    paper_claim="EREN (flan-t5-xl) on CounterFact-Hard: ES 96.9 / BP 96.8 / EQ 96.9, against SERAC 96.9/51.4/67.2 and "
                "one-step reading 98.4/24.5/39.2; it also answers questions needing several edits.",
    citation="Chen et al., Robust and Scalable Model Editing for Large Language Models (EREN), COLING 2024, "
             "arXiv:2403.17431",
    budgets=Budgets(quick=QUICK, full=FULL),
)
def run(ctx: RecipeContext) -> dict[str, Any]:
    S: ErenSettings = ctx.settings
    rng = random.Random(ctx.seed)
    torch.manual_seed(ctx.seed)
    with ctx.phase("edit set, reader, notebook"):
        es = build_edit_set(1000, n_two_hop=50, seed=ctx.seed)
        es.save(ctx.out_dir / "edit_set.json")
        reader = Reader.load("smollm2", max_new_tokens=16)  # dtype: plmkit.device.fast_dtype()
        db = ctx.out_dir / "notebook.db"
        for suffix in ("", "-wal", "-shm"):
            db.with_name(db.name + suffix).unlink(missing_ok=True)
        nb = Notebook(db)
    t = time.perf_counter()
    with ctx.phase("tune thresholds (validation edits)"):
        tuned = _tune(reader, nb, es, S, rng)
    ev = _evaluate(ctx, reader, nb, es, S, tuned, rng)
    seconds = time.perf_counter() - t
    plots = _plots(ctx, ev)
    sizes = sorted(ev["regimes"])
    pct = lambda x: "-" if x != x else f"{100 * x:.1f}"  # noqa: E731
    tables = []
    for n in sizes:
        reg = ev["regimes"][n]
        rows = []
        for m, sc in reg["scores"].items():
            c, e, rr = sc["contained"], sc["exact"], reg["read_rate"][m]
            rows.append([m, pct(c["ES"]), pct(c["BP_unchanged"]), pct(c["EQ_unchanged"]), pct(c["BP"]),
                         pct(c["BP_known"]), pct(c["EQ_known"]), pct(e["EQ_unchanged"]), pct(rr["in_scope"]),
                         pct(rr["out_of_scope"])])
        if n == sizes[-1]:
            rows += [[f"paper: {m}", *map(str, v), "", "", "", "", "", ""] for m, v in PAPER.items()]
        first = next(iter(reg["scores"].values()))["contained"]["n"]
        tables.append({
            "title": f"N = {n} note(s) in the notebook ({reg['n_notebooks']} notebook(s); probes: "
                     f"{', '.join(f'{k} {v}' for k, v in first.items())}); answer-contained match unless marked",
            "columns": ["method", "ES", "BP (unchanged)", "EQ", "BP (real fact)", "BP (known)", "EQ (known)",
                        "EQ exact match", "read notes: in scope", "out of scope"],
            "rows": rows})
    if ev["two_hop"]:
        tables.append({"title": f"Two-hop questions needing two edits (N = {len(es.edits)}, n={ev['n_two_hop']})",
                       "columns": ["method", "accuracy (answer contained)"],
                       "rows": [[m, pct(v)] for m, v in ev["two_hop"].items()]})
    fc = ev["fact_check"]
    if fc:
        maj = fc["majority"]
        tables.append({"title": f"Fact checking ({fc['n_claims']} test claims, notebook of 100 edits): accuracy on "
                                "edited statements (supports) and the facts they override (refutes), 3-way accuracy "
                                "and macro-F1 on those; verdicts on unrelated true claims unchanged from the "
                                "unedited reader; share of each verdict. Option scoring chosen by macro-F1 on "
                                f"{fc['n_validation_claims']} validation claims: "
                                + ", ".join(f"{k} {v:.3f}" for k, v in fc["validation_macro_f1"].items()),
                       "columns": ["method, option scoring", "edited", "old fact", "3-way accuracy", "macro-F1",
                                   "unrelated unchanged", "supports", "refutes", "not enough info"],
                       "rows": [[m, pct(r["edited"]), pct(r["old fact"]), pct(r["accuracy"]), f"{r['macro_f1']:.3f}",
                                 pct(r["unrelated_unchanged"]), *(pct(x) for x in r["labels"].values())]
                                for m, r in fc["methods"].items()]
                               + [[f"majority class ({maj['label']})", "", "", pct(maj["accuracy"]),
                                   f"{maj['macro_f1']:.3f}", "", "", "", ""]]})
    big = ev["regimes"][sizes[-1]]["scores"]
    measured = {f"N={n}.{m}.{k}": ev["regimes"][n]["scores"][m]["contained"][k]
                for n in sizes for m in ev["regimes"][n]["scores"]
                for k in ("ES", "BP_unchanged", "EQ_unchanged", "BP", "BP_known", "EQ_known")}
    measured.update({"threshold.reader": tuned["reader"], "threshold.similarity": tuned["similarity"],
                     "scope_auc.reader": tuned["auc"]["reader"], "scope_auc.similarity": tuned["auc"]["similarity"],
                     "scope_auc.combined": tuned["auc"]["combined"],
                     **{f"combined.{k}": v for k, v in tuned["combined"].items()}})
    if fc:
        measured.update({f"fact_check.{m}.{k}": r[k] for m, r in fc["methods"].items()
                         for k in ("accuracy", "macro_f1", "edited", "old fact", "unrelated_unchanged")})
        measured.update({"fact_check.majority.accuracy": fc["majority"]["accuracy"],
                         "fact_check.majority.macro_f1": fc["majority"]["macro_f1"]})
    eq = {m: big[m]["contained"]["EQ_unchanged"] for m in big}
    main = big["EREN (reader relevance)"]["contained"]
    serac = big.get("SERAC-like scope", {}).get("contained")
    headline = {
        "metric": f"EQ at N = {sizes[-1]} notes, EREN (reader relevance), ES {pct(main['ES'])} / BP "
                  f"{pct(main['BP_unchanged'])}",
        "ours": pct(main["EQ_unchanged"]),
        "paper": f"{PAPER['EREN'][2]} (flan-t5-xl, CounterFact-Hard)",
        "peer": f"SERAC-like scope EQ {pct(serac['EQ_unchanged'])}" if serac else None,
    }
    notes = [
        f"Every method answers the same {ev['regimes'][sizes[-1]]['n_probes']} probes of test edits; only "
        "the thresholds were tuned, on validation edits (disjoint from test).",
        f"Thresholds tuned on {tuned['n_probes']} validation probes: reader relevance {tuned['reader']:.2f} nats "
        f"per note token (scope ROC AUC {tuned['auc']['reader']:.3f}), SERAC-like retrieval similarity "
        f"{tuned['similarity']:.3f} (AUC {tuned['auc']['similarity']:.3f}). EREN (reader + similarity): "
        f"{tuned['combined']['reader_weight']:.2f} x PMI + {tuned['combined']['similarity_weight']:.2f} x similarity "
        f">= {tuned['combined']['combined_threshold']:.2f}, weights by a balanced logistic regression on the same "
        f"validation probes (AUC {tuned['auc']['combined']:.3f} there, so not a held-out figure).",
        "ES: in-scope probes (direct question and two paraphrases) whose answer contains the edited object. "
        "BP (unchanged), as in the paper: out-of-scope answers identical to the unedited reader's; EQ is the "
        "harmonic mean of ES and it. BP (real fact): out-of-scope answers containing the real fact; BP (known): "
        "the same, only on probes the unedited reader answered right (the 135M reader knows few geographic "
        "facts, so BP against the real fact is low for every method, the unedited model included).",
        "Exact match compares the whole generated line with the answer; the 135M reader answers in full "
        "sentences ('The capital of X is Y.'), so exact-match scores are near zero for every method.",
        f"At N={sizes[-1]}: EQ " + ", ".join(f"{m} {pct(v)}" for m, v in eq.items()) + ".",
        "Paper rows: flan-t5-xl (3B) reader on CounterFact-Hard, BP as unchanged answers; ours: a 135M reader.",
    ]
    if ctx.quick:
        notes.insert(0, f"Quick run: {S.n_eval} test edits at N = {', '.join(map(str, S.sizes))}, methods "
                        f"{', '.join(S.methods)}; thresholds from {S.tune_edits} validation edits; no two-hop, fact "
                        "checking or fine-tuning baseline (the full run has them, with 100 test edits at N = 1, 10, "
                        "100 and 1000). With this few probes a difference of one answer moves ES/BP by several points.")
    return {
        "measured": measured,
        "headline": headline,
        "tables": tables,
        "plots": plots,
        "details": {"tuning": tuned, "evaluation": ev, "seconds": seconds, "reader_dtype": str(reader.model.dtype)},
        "notes": notes,
    }
