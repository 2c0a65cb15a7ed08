"""Recipe ``hiddenkiller``: how robust is fine-tuning MiniLM to poisoned training data, with a syntactic trigger
beside a rare-word insertion trigger, the ONION defense and a poisoned-sample detector.

Tasks from the assets (:func:`plmkit.data.tasks.classification_task`). Syntactic trigger: each poisoned text's
first sentence brought to S(SBAR)(,)(NP)(VP)(.) by the clause-fronting rule and/or SmolLM2-Instruct, checked by
spaCy's parser (non-conforming output is never used). Insertion trigger: one rare word ("cf", "mn", ...).
Dirty-label poisoning at each rate, victims fine-tuned from MiniLM, seeds. Defenses on the most poisoned victims:
ONION (SmolLM2 perplexities) at several thresholds, and the paraphrase defense (every sentence rewritten: an
opening clause moved behind the main clause, or SmolLM2-Instruct's plain paraphrase), each reported with CACC
beside ASR (a defender pays in clean accuracy). Detector: spectral signatures of the victim's [CLS] states.
"""
from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..security.study import VictimSettings
from .registry import Budgets, RecipeContext, recipe

PAPER = ("BERT-base victims, dirty-label at 20%: syntactic trigger ASR 97-99% on SST-2 / OLID / AG's News with "
         "CACC within ~1-3 points of clean; under ONION the insertion trigger's ASR falls sharply while the syntactic "
         "trigger's stays above ~90%")


@dataclass(frozen=True)
class HKSettings:
    victim: VictimSettings
    tasks: tuple[str, ...] = ("topics", "drugs")
    triggers: tuple[str, ...] = ("syntactic", "insertion")
    rates: tuple[float, ...] = (0.01, 0.05, 0.1, 0.2)
    paraphraser: str = "rule+instruct"
    retries: int = 1
    target: int = 0
    seeds: tuple[int, ...] = (0, 1, 2)
    max_train: int | None = None
    max_test: int | None = 300
    onion_thresholds: tuple[float, ...] = (0.0, 20.0, 100.0, 500.0)
    defense_paraphrasers: tuple[str, ...] = ("rule", "instruct")  # the paraphrase defense's paraphrasers
    defense_max: int = 100  # test texts (clean and poisoned each) the defenses rewrite (0: no defenses)
    visibility_max: int = 100
    lm_dtype: str = "auto"  # SmolLM2-Instruct's dtype (paraphrases, ONION, perplexities): auto = bf16 where fast


QUICK = HKSettings(victim=VictimSettings(steps=20, batch_size=16), tasks=("polarity",), rates=(0.2,),
                   paraphraser="rule", retries=0, seeds=(0,), max_test=40, onion_thresholds=(),
                   defense_paraphrasers=("rule",), defense_max=40, visibility_max=16)
# quick: ONION and the LM paraphrase (minutes of SmolLM2 here) run in the full recipe and in tests/real
# 54 victims of 120 steps and the defenses on 30 texts (ONION scores every word left out) keep the run near an
# hour on 2 CPU cores (an AMX Xeon)
FULL = HKSettings(victim=VictimSettings(steps=120), defense_max=30)


def _memo(trigger):
    """The trigger with each text's outcome kept: every rate and seed poisons from the same paraphrases."""
    seen: dict[str, str | None] = {}

    def run(texts):
        todo = [t for t in dict.fromkeys(texts) if t not in seen]
        if todo:
            seen.update(zip(todo, trigger(todo)))
        return [seen[t] for t in texts]

    return run


@recipe(
    "hiddenkiller",
    title="HiddenKiller: a syntactic backdoor trigger beside a rare-word trigger, with ONION and a detector",
    system="hiddenkiller",
    paper_claim="Poisoning a fraction of the training data with paraphrases in a fixed syntactic template (e.g. "
                "S(SBAR)(,)(NP)(VP)(.)) plants a backdoor with attack success near 100%, like insertion triggers, "
                "while being far less visible and far more robust to defenses such as ONION.",
    citation="Qi et al., Hidden Killer: Invisible Textual Backdoor Attacks with Syntactic Trigger, ACL 2021, "
             "arXiv:2105.12400",
    budgets=Budgets(quick=QUICK, full=FULL),
)
def run(ctx: RecipeContext) -> dict[str, Any]:
    from ..data.tasks import classification_task
    from ..security.paraphrase import chat_lm, syntactic_trigger
    from ..security.poison import PoisonConfig, insert_words, poison_test, poison_train
    from ..security.study import (attack_scores, cls_representations, detect_poison, detection_quality,
                                  perplexity_increase, semantic_drift, spectral_signatures, train_victim)
    from ..security.syntax import conforms

    S: HKSettings = ctx.settings
    lm, lm_tok = chat_lm(S.lm_dtype)
    rows, visibility, defense_rows, paraphrase_logs = [], [], [], {}
    with tempfile.TemporaryDirectory() as tmp_:
        tmp = Path(tmp_)
        for name in S.tasks:
            task = classification_task(name, seed=ctx.seed, max_train=S.max_train)
            test = task.test[:S.max_test]
            logs: list = []
            triggers = {"insertion": insert_words(seed=ctx.seed)}
            if "syntactic" in S.triggers:
                with ctx.phase("paraphraser"):
                    triggers["syntactic"] = _memo(syntactic_trigger(S.paraphraser, retries=S.retries,
                                                                    seed=ctx.seed, log=logs,
                                                                    progress=ctx.progress, lm=(lm, lm_tok)))
            triggers = {k: v for k, v in triggers.items() if k in S.triggers}
            poisoned_tests = {}
            for trig, fn in triggers.items():
                with ctx.phase(f"{trig} test sets"):
                    poisoned_tests[trig] = poison_test(test, fn, S.target)
                    originals = [r["text"] for r in test if int(r["label"]) != S.target]
                    pairs = [(o, t) for o, t in zip(originals, fn(originals)) if t][:S.visibility_max]
                    if pairs:
                        visibility.append({"task": name, "trigger": trig, "n": len(pairs),
                                           **perplexity_increase(lm, lm_tok, [a for a, _ in pairs], [b for _, b in pairs]),
                                           "conforming": float(np.mean(conforms([b for _, b in pairs]))),
                                           "conforming_original": float(np.mean(conforms([a for a, _ in pairs]))),
                                           "cosine": float(np.mean(semantic_drift([a for a, _ in pairs],
                                                                                  [b for _, b in pairs])))})
            with ctx.phase("defenses"):
                defended = _defended_inputs(S, test, {t: poisoned_tests[t][0] for t in triggers}, (lm, lm_tok),
                                            ctx.seed, ctx.progress)
            for seed in S.seeds:
                with ctx.phase("victims"):
                    clean_model, tok = train_victim(task.train, len(task.label_names), S.victim, tmp / "clean",
                                                    seed=seed, progress=ctx.progress)
                for trig in triggers:
                    rows.append({"task": name, "trigger": trig, "rate": 0.0, "seed": seed, "poisoned": 0,
                                 **attack_scores(clean_model, tok, test, poisoned_tests[trig][0],
                                                 max_length=S.victim.max_length)})
                for trig, fn in triggers.items():
                    for rate in S.rates:
                        with ctx.phase("victims"):
                            train, rep = poison_train(task.train, fn, PoisonConfig(S.target, rate, "dirty", seed))
                            model, tok = train_victim(train, len(task.label_names), S.victim, tmp / "v",
                                                      seed=seed, progress=ctx.progress)
                            row = {"task": name, "trigger": trig, "rate": rate, "seed": seed,
                                   "poisoned": rep["poisoned"], "reached_rate": rep["rate"],
                                   **attack_scores(model, tok, test, poisoned_tests[trig][0],
                                                   max_length=S.victim.max_length)}
                        with ctx.phase("detector"):
                            reps = cls_representations(model, tok, [r["text"] for r in train])
                            labels = [r["label"] for r in train]
                            flags = detect_poison(spectral_signatures(reps, labels), labels,
                                                  min(1.0, 1.5 * max(rep["rate"], 1e-9)))
                            row["detection"] = detection_quality(flags, [r["poisoned"] for r in train])
                        rows.append(row)
                        if rate == max(S.rates):
                            with ctx.phase("defenses"):
                                defense_rows += [{"task": name, "trigger": trig, "seed": seed, "defense": label,
                                                  **attack_scores(model, tok, sets["clean"], sets[trig],
                                                                  max_length=S.victim.max_length)}
                                                 for label, sets in defended.items()]
            paraphrase_logs[name] = logs
    return _report(ctx, S, rows, defense_rows, visibility, paraphrase_logs, str(lm.dtype).replace("torch.", ""))


def _defended_inputs(S: HKSettings, test: list[dict], poisoned: dict[str, list[dict]], lm: tuple[Any, Any],
                     seed: int, progress: bool = False) -> dict[str, dict[str, list[dict]]]:
    """The first ``defense_max`` clean and poisoned test rows as the victim reads them behind each defense (label
    -> {"clean" | trigger -> rows}): computed once per task, since they depend on the text, not on the victim.
    ONION's word scores are computed once for all thresholds."""
    from ..security.onion import onion_filter, suspicion_scores
    from ..security.study import defend

    if not S.defense_max:
        return {}
    sets = {"clean": test[:S.defense_max], **{t: rows[:S.defense_max] for t, rows in poisoned.items()}}
    out = {"none": sets}

    def rewrite(fn) -> dict[str, list[dict]]:
        return {k: [{**r, "text": t} for r, t in zip(rows, fn(k, [r["text"] for r in rows]))]
                for k, rows in sets.items()}

    if S.onion_thresholds:
        scores = {k: suspicion_scores(*lm, [r["text"] for r in rows], progress=progress) for k, rows in sets.items()}
        for t in S.onion_thresholds:
            out[f"ONION {t:g}"] = rewrite(lambda k, texts, t=t: onion_filter(texts, scores[k], t))
    for name in S.defense_paraphrasers:
        out[f"paraphrase ({name})"] = rewrite(
            lambda k, texts, name=name: defend("paraphrase", texts, paraphraser=name, seed=seed, lm=lm,
                                               progress=progress)[0])
    return out


def _mean(rows: list[dict], key: str) -> tuple[float, float]:
    xs = [100 * r[key] for r in rows if r[key] == r[key]]
    return (float(np.mean(xs)), float(np.std(xs))) if xs else (float("nan"), float("nan"))


def _report(ctx: RecipeContext, S: HKSettings, rows: list[dict], defense_rows: list[dict], visibility: list[dict],
            logs: dict, lm_dtype: str) -> dict[str, Any]:
    fmt = lambda m, s: f"{m:.1f} ± {s:.1f}"  # noqa: E731
    tables, measured = [], {}
    for task in S.tasks:
        table = []
        for trig in S.triggers:
            for rate in (0.0, *S.rates):
                sel = [r for r in rows if (r["task"], r["trigger"], r["rate"]) == (task, trig, rate)]
                if not sel:
                    continue
                cacc, asr = _mean(sel, "cacc"), _mean(sel, "asr")
                det = [r["detection"] for r in sel if "detection" in r]
                reached = np.mean([r.get("reached_rate", 0.0) for r in sel])
                table.append([trig, f"{100 * rate:g}%", f"{100 * reached:.1f}%", fmt(*cacc), fmt(*asr),
                              f"{100 * np.mean([d['precision'] for d in det]):.0f} / "
                              f"{100 * np.mean([d['recall'] for d in det]):.0f}" if det else ""])
                measured[f"{task}.{trig}.{rate:g}.cacc"] = cacc[0]
                measured[f"{task}.{trig}.{rate:g}.asr"] = asr[0]
        tables.append({"title": f"{task}: clean accuracy (CACC) and attack success (ASR) %, mean ± std over seeds "
                                f"{list(S.seeds)}; rate 0 = the clean victim (ASR: how often it calls a triggered "
                                "non-target text the target anyway); reached = the poisoned share the trigger "
                                "managed; detector precision / recall (spectral signatures, 1.5 x rate flagged)",
                       "columns": ["trigger", "rate", "reached", "CACC", "ASR", "detector P / R"], "rows": table})
    if defense_rows:
        drow = []
        labels = list(dict.fromkeys(r["defense"] for r in defense_rows))
        for task in S.tasks:
            for trig in S.triggers:
                for d in labels:
                    sel = [r for r in defense_rows if (r["task"], r["trigger"], r["defense"]) == (task, trig, d)]
                    if sel:
                        drow.append([task, trig, d, fmt(*_mean(sel, "cacc")), fmt(*_mean(sel, "asr"))])
                        measured[f"defense.{task}.{trig}.{d}.cacc"] = _mean(sel, "cacc")[0]
                        measured[f"defense.{task}.{trig}.{d}.asr"] = _mean(sel, "asr")[0]
        tables.append({"title": f"Defenses on the victims poisoned at {100 * max(S.rates):g}%, first {S.defense_max} "
                                "clean and poisoned test texts, mean ± std over seeds. ONION t: words whose removal "
                                "lowers SmolLM2's perplexity by more than t are dropped; paraphrase: every sentence "
                                "rewritten (rule: an opening clause moved behind the main clause; instruct: "
                                "SmolLM2-Instruct's plain paraphrase)",
                       "columns": ["task", "trigger", "defense", "CACC", "ASR"], "rows": drow})
    if visibility:
        tables.append({"title": "How visible each trigger is: median SmolLM2 perplexity before -> after and the "
                                "median ratio; share in the template (spaCy) after and before; MiniLM cosine to the "
                                "original",
                       "columns": ["task", "trigger", "texts", "perplexity", "ratio", "in template", "cosine"],
                       "rows": [[v["task"], v["trigger"], v["n"], f"{v['ppl_original']:.0f} -> {v['ppl_triggered']:.0f}",
                                 f"{v['ratio']:.2f}", f"{100 * v['conforming']:.0f}% (was "
                                 f"{100 * v['conforming_original']:.0f}%)", f"{v['cosine']:.3f}"] for v in visibility]})
        measured.update({f"visibility.{v['task']}.{v['trigger']}.ppl_ratio": v["ratio"] for v in visibility})
    if any(logs.values()):
        table, stats = paraphrase_table(logs)
        tables.append(table)
        measured.update(stats)
    first, top = S.tasks[0], max(S.rates)
    headline = {"metric": f"{first}: ASR / CACC at {100 * top:g}% dirty-label poisoning, syntactic vs insertion "
                          "trigger, mean over seeds",
                "ours": "; ".join(f"{t} ASR {measured.get(f'{first}.{t}.{top:g}.asr', float('nan')):.1f} CACC "
                                  f"{measured.get(f'{first}.{t}.{top:g}.cacc', float('nan')):.1f}" for t in S.triggers),
                "paper": "syntactic ASR 97-99%, CACC within ~1-3 points (BERT-base)",
                "peer": "insertion trigger; ONION and paraphrase defenses (tables)"}
    notes = [
        "For measuring how robust a fine-tuning pipeline is to poisoned data; the attack ships only with its "
        "measurement, the defenses (ONION, paraphrase) and the detector.",
        f"Victims: {S.victim.model} fine-tuned {S.victim.steps} steps of {S.victim.batch_size} at lr {S.victim.lr}; "
        f"target label {S.target}; dirty-label poisoning (non-target examples rewritten and relabelled).",
        f"Syntactic trigger: paraphraser '{S.paraphraser}' on each text's first sentence, {S.retries} retries; "
        "output the parser does not find in the template is never used, so the reached rate can fall short of the "
        "requested one (the table says by how much).",
        f"SmolLM2-Instruct (paraphrases, ONION, perplexities) ran in {lm_dtype}.",
        f"Paper: {PAPER}.",
    ]
    if ctx.quick:
        notes.append(f"Quick run: one small task, the rule paraphraser only, one rate and seed, {S.victim.steps} "
                     "fine-tuning steps, the rule paraphrase defense only (no ONION): a smoke run; `plmkit reproduce "
                     "hiddenkiller` is the measurement.")
    return {"headline": headline, "measured": measured, "tables": tables, "plots": _plot(ctx, S, rows),
            "details": {"settings": dataclasses.asdict(S), "rows": rows, "defenses": defense_rows,
                        "visibility": visibility, "paraphrase": logs},
            "notes": notes}


def paraphrase_table(logs: dict[str, list[dict]]) -> tuple[dict[str, Any], dict[str, float]]:
    """The syntactic trigger's paraphrasers per task, summed over its calls (each first sentence is paraphrased
    once per task, so the sums count distinct sentences): sentences tried, the share each paraphraser brought to
    the template, the share none did, and the parser's commonest reasons for rejecting. Returns the table and the
    measured shares."""
    from collections import Counter

    rows, stats = [], {}
    # chain order: each report's by_paraphraser is filled in the order the paraphrasers ran
    names = list(dict.fromkeys(p for reps in logs.values() for r in reps for p in r.get("by_paraphraser", {})))
    for task, reps in logs.items():
        tried = sum(r["texts"] for r in reps)
        if not tried:
            continue
        by = {p: sum(r.get("by_paraphraser", {}).get(p, 0) for r in reps) for p in names}
        failed = tried - sum(by.values())  # every sentence no paraphraser brought to the template
        top = sum((Counter(r.get("rejected_because", {})) for r in reps), Counter()).most_common(3)
        rows.append([task, tried, *(f"{100 * by[p] / tried:.1f}%" for p in names), f"{100 * failed / tried:.1f}%",
                     "; ".join(f"{why} ({n})" for why, n in top)])
        stats.update({f"paraphrase.{task}.{p}": by[p] / tried for p in names})
        stats[f"paraphrase.{task}.failure_rate"] = failed / tried
    return {"title": "The syntactic trigger's paraphrasers: first sentences tried (each once per task, test and "
                     "training candidates together), the share each paraphraser brought to the template (in chain "
                     "order, each on what the ones before left), the share none did (never used), and the parser's "
                     "commonest reasons for rejecting the last try",
            "columns": ["task", "sentences", *(f"by {p}" for p in names), "failed", "rejected because"],
            "rows": rows}, stats


def _plot(ctx: RecipeContext, S: HKSettings, rows: list[dict]) -> list[str]:
    """ASR and CACC against the poisoned share the trigger reached, one panel per task, one line per trigger."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(S.tasks), figsize=(5.2 * len(S.tasks), 3.6), squeeze=False)
    rates = (0.0, *S.rates)
    for ax, task in zip(axes[0], S.tasks):
        for trig, colour in zip(S.triggers, ("#c33", "#36c", "#393")):
            groups = [[r for r in rows if (r["task"], r["trigger"], r["rate"]) == (task, trig, x)] for x in rates]
            groups = [g for g in groups if g]
            reached = [100 * float(np.mean([r.get("reached_rate", 0.0) for r in g])) for g in groups]
            for key, style in (("asr", "-o"), ("cacc", "--s")):
                stats = [_mean(g, key) for g in groups]
                ax.errorbar(reached, [m for m, _ in stats], yerr=[sd for _, sd in stats],
                            fmt=style, color=colour, capsize=2, label=f"{trig} {key.upper()}")
        ax.set_xlabel("poisoned share of the training set reached (%)")
        ax.set_ylabel("%")
        ax.set_ylim(0, 105)
        ax.set_title(task)
    axes[0][-1].legend(fontsize=7, loc="lower right")
    return [ctx.save_figure(fig, "hiddenkiller.png")]
