"""Recipe ``skill-neurons``: skill neurons of prompt-tuned MiniLM (and, in the full run, SmolLM2) on real tasks.

Per task and prompt-tuning seed: a soft prompt of 16 tokens is tuned with the backbone frozen; each FFN neuron is
scored by the accuracy of thresholding its activation at the prompt positions (threshold = train mean, accuracy on
validation); scores are averaged over seeds. Then: accuracy on test with the top skill neurons of every layer
perturbed against the same number of random neurons per layer; the overlap of the top sets between tasks; the same
neurons perturbed in LoRA- and BitFit-tuned models of a task; and a pruned model keeping only the top skill
neurons of the upper layers, saved, reloaded and timed against the unpruned one beside its FLOPs bound.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from ..analysis import neurons
from ..analysis import skill_neurons as sn
from ..device import model_device
from ..data.tasks import BinaryTask, binary_task
from .registry import Budgets, RecipeContext, recipe


@dataclass(frozen=True)
class SkillSettings:
    tasks: tuple[str, ...]
    seeds: tuple[int, ...]
    tune: sn.SkillConfig
    fractions: tuple[float, ...]  # per-layer fractions perturbed
    perturbations: tuple[sn.Perturbation, ...]
    top: float = 0.02  # the "top skill neurons" of overlap tables
    max_train: int | None = None
    max_eval: int | None = None  # cap of validation and test rows
    transfer_task: str | None = "topics"  # LoRA / BitFit models of this task
    transfer_steps: int = 200
    prune_task: str = "topics"
    prune_keep: tuple[float, ...] = (0.1, 0.3)
    speed_batches: tuple[int, ...] = (1, 16)
    repeats: int = 10
    lm: str | None = None  # a causal LM scored on ``lm_task`` (last-token site)
    lm_task: str = "topics"
    lm_steps: int = 150
    lm_seeds: tuple[int, ...] = (0,)


QUICK = SkillSettings(tasks=("topics",), seeds=(0,), tune=sn.SkillConfig(steps=40, max_length=32),
                      fractions=(0.05, 0.2), perturbations=(sn.Perturbation("noise", 0.5),), max_train=320,
                      max_eval=120, transfer_task=None, prune_keep=(0.2,), speed_batches=(16,), repeats=3)
FULL = SkillSettings(tasks=("topics", "drugs", "polarity"), seeds=(0, 1, 2), tune=sn.SkillConfig(steps=200),
                     fractions=(0.02, 0.05, 0.1, 0.2), perturbations=(sn.Perturbation("noise", 0.5),), max_eval=200,
                     lm="smollm2", lm_steps=100)


def _task(name: str, S: SkillSettings, seed: int) -> BinaryTask:
    t = binary_task(name, seed=seed, max_train=S.max_train)
    if S.max_eval:
        t = replace(t, validation=t.validation[:S.max_eval], test=t.test[:S.max_eval])
    return t


def _ms(xs: list[float], digits: int = 3) -> str:
    return f"{np.mean(xs):.{digits}f} ± {np.std(xs):.{digits}f}" if len(xs) > 1 else f"{xs[0]:.{digits}f}"


def _study(ctx: RecipeContext, S: SkillSettings, model_name: str, task: BinaryTask, cfg: sn.SkillConfig,
           seeds: tuple[int, ...]) -> dict[str, Any]:
    """Prompt-tune once per seed, score, and run the perturbation curves on every seed's model."""
    runs, models = [], []
    for seed in seeds:
        with ctx.phase(f"prompt tuning {model_name}"):
            t0 = time.perf_counter()
            model, tok = sn.prompt_tune(model_name, task, replace(cfg, progress=ctx.progress), seed=seed)
            tune_s = time.perf_counter() - t0
        with ctx.phase("scores"):
            scores = sn.skill_scores(model, tok, task, max_length=cfg.max_length)
        if not runs:
            with ctx.phase("scores"):
                stats = neurons.activation_stats(model, sn.labelled_batches(tok, task.train, 32, cfg.max_length,
                                                                            model_device(model)), pool="tokens")
            act_std = float(np.mean([st.std.mean() for st in stats.values()]))
        runs.append({"seed": seed, "tune_s": tune_s, "validation": sn.accuracy(model, tok, task.validation, cfg.max_length),
                     "test": sn.accuracy(model, tok, task.test, cfg.max_length), "scores": scores})
        models.append((model, tok))
    mean = sn.mean_scores([r["scores"] for r in runs])
    curves = {}
    for p in S.perturbations:
        rows = []
        with ctx.phase("perturbation"):
            for (model, tok), r in zip(models, runs):
                part = sn.perturbation_curve(model, tok, task.test, mean, S.fractions, perturbation=p,
                                             seeds=(r["seed"],), max_length=cfg.max_length)
                rows += [{**x, "run": r["seed"]} for x in part]
        curves[f"{p.kind}:{p.scale:g}"] = sn.summarise_curve(rows)
    return {"model": model_name, "task": task.name, "runs": runs, "scores": mean, "curves": curves, "act_std": act_std,
            "n": {s: len(task.split(s)) for s in ("train", "validation", "test")}, "models": models,
            "layers": sn.site_scores_table(mean, S.top)}


def _transfer(ctx: RecipeContext, S: SkillSettings, study: dict[str, Any], task: BinaryTask) -> list[dict]:
    """The prompt-found skill neurons perturbed in LoRA- and BitFit-tuned models of the same task."""
    out = []
    cfg = replace(S.tune, steps=S.transfer_steps, progress=ctx.progress)
    p = S.perturbations[0]
    for tuning in ("lora", "bitfit"):
        with ctx.phase(f"{tuning} tuning"):
            model, tok = sn.tune("minilm", task, cfg, seed=0, tuning=tuning)
        with ctx.phase("perturbation"):
            rows = sn.perturbation_curve(model, tok, task.test, study["scores"], S.fractions, perturbation=p,
                                         seeds=(0,), max_length=cfg.max_length)
        out.append({"tuning": tuning, "perturbation": f"{p.kind}:{p.scale:g}", "curve": sn.summarise_curve(rows)})
    return out


def _prune(ctx: RecipeContext, S: SkillSettings, study: dict[str, Any], task: BinaryTask) -> list[dict]:
    model, tok = study["models"][0]
    max_length = S.tune.max_length
    base_acc = sn.accuracy(model, tok, task.test, max_length)
    out = []
    for keep in S.prune_keep:
        with ctx.phase("prune"):
            pruned, report = sn.prune_to_skill(model, tok, task, study["scores"], keep, max_length=max_length)
            folder = sn.save_task_model(pruned, tok, ctx.out_dir / "pruned" / f"{task.name}-keep{keep:g}")
            reloaded, _ = sn.load_task_model(folder)
        row = {"keep": keep, "params_before": report.params_before, "params_after": report.params_after,
               "accuracy": sn.accuracy(pruned, tok, task.test, max_length), "unpruned": base_acc,
               "reloaded": sn.accuracy(reloaded, tok, task.test, max_length), "folder": str(folder), "speed": []}
        with ctx.phase("timing"):
            for b in S.speed_batches:
                row["speed"].append(sn.prefill_speed(model, pruned, tok, task.texts("test"), batch_size=b,
                                                     max_length=max_length, repeats=S.repeats))
        out.append(row)
    return out


def _plots(ctx: RecipeContext, studies: list[dict], transfer: list[dict]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    for st in studies:
        for key, curve in st["curves"].items():
            fig, ax = plt.subplots(figsize=(5, 3.4))
            base = next(c["mean"] for c in curve if c["selection"] == "none")
            for sel, colour in (("skill", "tab:red"), ("random", "tab:blue")):
                pts = [c for c in curve if c["selection"] == sel]
                x = [0.0] + [c["fraction"] for c in pts]
                m = np.array([base] + [c["mean"] for c in pts])
                s = np.array([0.0] + [c["std"] for c in pts])
                ax.plot(x, m, "o-", color=colour, label=f"{sel} neurons")
                ax.fill_between(x, m - s, m + s, color=colour, alpha=0.2)
            ax.set_xlabel("fraction of each layer's neurons perturbed")
            ax.set_ylabel("test accuracy")
            ax.set_title(f"{st['model']} / {st['task']}: {key}", fontsize=9)
            ax.legend(fontsize=8)
            names.append(ctx.save_figure(fig, f"perturb_{st['model']}_{st['task']}_{key.replace(':', '')}.png"))
        fig, axes = plt.subplots(1, len(st["scores"]), figsize=(2 * len(st["scores"]), 2.4), sharey=True)
        for ax, (site, v) in zip(np.atleast_1d(axes), st["scores"].items()):
            ax.hist(v, bins=30, color="tab:gray")
            ax.set_title(site.replace(".ffn.neurons", ""), fontsize=8)
        np.atleast_1d(axes)[0].set_ylabel("neurons")
        fig.suptitle(f"{st['model']} / {st['task']}: skill score |acc - 0.5| per layer", fontsize=9)
        names.append(ctx.save_figure(fig, f"scores_{st['model']}_{st['task']}.png"))
    return names


@recipe(
    "skill-neurons",
    "Skill neurons: neurons whose activations at the soft prompt predict the task",
    system="skill_neurons",
    paper_claim="After prompt tuning, some FFN neurons are highly predictive of the task labels; perturbing them "
                "hurts accuracy far more than perturbing random neurons; similar tasks share skill neurons; they "
                "matter for adapter/BitFit models too; keeping only them prunes the model with a real speed-up.",
    citation="Wang et al., Finding Skill Neurons in Pre-trained Transformer-based Language Models, EMNLP 2022",
    budgets=Budgets(quick=QUICK, full=FULL),
)
def run(ctx: RecipeContext) -> dict[str, Any]:
    S: SkillSettings = ctx.settings
    torch.manual_seed(ctx.seed)
    tasks = {name: _task(name, S, ctx.seed) for name in S.tasks}
    studies = [_study(ctx, S, "minilm", tasks[t], S.tune, S.seeds) for t in S.tasks]
    by_task = {st["task"]: st for st in studies}
    overlaps = [{"a": a, "b": b, **sn.overlap(by_task[a]["scores"], by_task[b]["scores"], S.top)}
                for i, a in enumerate(S.tasks) for b in S.tasks[i + 1:]]
    transfer = _transfer(ctx, S, by_task[S.transfer_task], tasks[S.transfer_task]) if S.transfer_task else []
    pruning = _prune(ctx, S, by_task[S.prune_task], tasks[S.prune_task])
    for st in studies:
        st.pop("models")
    if S.lm:
        lm_task = _task(S.lm_task, S, ctx.seed)
        lm = _study(ctx, S, S.lm, lm_task, replace(S.tune, steps=S.lm_steps), S.lm_seeds)
        lm.pop("models")
        studies.append(lm)
    return _report(ctx, S, studies, overlaps, transfer, pruning)


def _report(ctx: RecipeContext, S: SkillSettings, studies: list[dict], overlaps: list[dict], transfer: list[dict],
            pruning: list[dict]) -> dict[str, Any]:
    tables, measured = [], {}
    tables.append({
        "title": f"Prompt tuning ({S.tune.virtual_tokens} soft tokens, backbone frozen, head trained), accuracy",
        "columns": ["model", "task", "train / val / test", "validation", "test", "seeds", "tune s"],
        "rows": [[st["model"], st["task"], "/".join(str(st["n"][s]) for s in ("train", "validation", "test")),
                  _ms([r["validation"] for r in st["runs"]]), _ms([r["test"] for r in st["runs"]]), len(st["runs"]),
                  f"{np.mean([r['tune_s'] for r in st['runs']]):.0f}"] for st in studies]})
    rows = []
    for st in studies:
        for key, curve in st["curves"].items():
            base = next(c for c in curve if c["selection"] == "none")
            for f in S.fractions:
                sk = next(c for c in curve if c["selection"] == "skill" and c["fraction"] == f)
                rd = next(c for c in curve if c["selection"] == "random" and c["fraction"] == f)
                rows.append([st["model"], st["task"], key, f"{f:.0%}", f"{base['mean']:.3f}",
                             f"{sk['mean']:.3f} ± {sk['std']:.3f}", f"{rd['mean']:.3f} ± {rd['std']:.3f}",
                             f"{100 * (rd['mean'] - sk['mean']):+.1f}"])
                measured[f"{st['model']}.{st['task']}.{key}.f{f:g}.skill"] = sk["mean"]
                measured[f"{st['model']}.{st['task']}.{key}.f{f:g}.random"] = rd["mean"]
    tables.append({"title": "Test accuracy with each layer's top skill neurons perturbed vs the same number of random "
                            "neurons per layer (mean ± std over prompt-tuning seeds)",
                   "columns": ["model", "task", "perturbation", "fraction", "unperturbed", "skill perturbed",
                               "random perturbed", "extra drop from skill (points)"], "rows": rows})
    if overlaps:
        tables.append({"title": f"Task specificity: Spearman of all neuron scores and Jaccard of the top {S.top:.0%} per "
                                "layer (polarity and drugs are both sentiment; topics is not)",
                       "columns": ["task A", "task B", "Spearman", "Jaccard"],
                       "rows": [[o["a"], o["b"], f"{o['spearman']:.3f}", f"{o['jaccard']:.3f}"] for o in overlaps]})
        for o in overlaps:
            measured[f"overlap.{o['a']}-{o['b']}.spearman"] = o["spearman"]
            measured[f"overlap.{o['a']}-{o['b']}.jaccard"] = o["jaccard"]
    if transfer:
        trows = []
        for t in transfer:
            base = next(c for c in t["curve"] if c["selection"] == "none")["mean"]
            for f in S.fractions:
                sk = next(c for c in t["curve"] if c["selection"] == "skill" and c["fraction"] == f)["mean"]
                rd = next(c for c in t["curve"] if c["selection"] == "random" and c["fraction"] == f)["mean"]
                trows.append([t["tuning"], t["perturbation"], f"{f:.0%}", f"{base:.3f}", f"{sk:.3f}", f"{rd:.3f}"])
                measured[f"transfer.{t['tuning']}.f{f:g}.skill"], measured[f"transfer.{t['tuning']}.f{f:g}.random"] = sk, rd
        tables.append({"title": f"Transfer: the prompt-found skill neurons of {S.transfer_task} perturbed in LoRA- and "
                                "BitFit-tuned MiniLM of the same task",
                       "columns": ["tuning", "perturbation", "fraction", "unperturbed", "skill perturbed",
                                   "random perturbed"], "rows": trows})
    prows = []
    for p in pruning:
        for s in p["speed"]:
            prows.append([f"{p['keep']:.0%}", f"{p['params_before']:,} -> {p['params_after']:,}",
                          f"{p['unpruned']:.3f}", f"{p['accuracy']:.3f}", f"{p['reloaded']:.3f}", s["batch"],
                          f"{s['speedup']:.2f}x", f"{s['bound']:.2f}x"])
            measured[f"prune.keep{p['keep']:g}.b{s['batch']}.speedup"] = s["speedup"]
            measured[f"prune.keep{p['keep']:g}.b{s['batch']}.bound"] = s["bound"]
        measured[f"prune.keep{p['keep']:g}.accuracy"] = p["accuracy"]
        measured[f"prune.keep{p['keep']:g}.unpruned"] = p["unpruned"]
    tables.append({"title": f"Pruning {S.prune_task}: keep the top skill neurons of the upper half of the layers (removed "
                            "neurons' train mean folded into the ffn_out bias); saved, reloaded with load_model; "
                            f"wall-clock median of {S.repeats} interleaved prefill runs",
                   "columns": ["kept", "parameters", "unpruned acc", "pruned acc", "reloaded acc", "batch",
                               "speed-up", "FLOPs bound"], "rows": prows})
    first = studies[0]
    key = next(iter(first["curves"]))
    f = S.fractions[-1]
    sk, rd = measured[f"minilm.{first['task']}.{key}.f{f:g}.skill"], measured[f"minilm.{first['task']}.{key}.f{f:g}.random"]
    headline = {"metric": f"MiniLM / {first['task']}: test accuracy with {f:.0%} of each layer perturbed ({key}), "
                          "skill vs random neurons",
                "ours": f"{sk:.3f} vs {rd:.3f}",
                "paper": "skill-neuron perturbation drops accuracy much more than random (RoBERTa-base, SST-2 etc.)",
                "peer": "-"}
    notes = [
        "Skill score = |accuracy - 0.5| of thresholding a neuron's activation at its train mean, on the validation "
        "split, max over the 16 prompt positions; top neurons are chosen per layer. MiniLM has no MLM head, so the "
        "prompt feeds a sequence-classification head (trained with the prompt; the backbone stays frozen).",
        "A causal LM's prompt positions precede the text and cannot see it; SmolLM2 is read at its last real token.",
        "Perturbations act on every token position; 'noise:0.5' adds Gaussian noise of std 0.5, 'zero' sets the "
        "neurons to 0. Mean per-neuron std of the FFN activations over the train tokens (first seed's model): "
        + ", ".join(f"{st['model']}/{st['task']} {st['act_std']:.3f}" for st in studies) + ". Random controls draw "
        "the same number of neurons in every layer.",
    ]
    if ctx.quick:
        notes.insert(0, "Quick run: one task, one seed, 40 prompt-tuning steps, capped splits; the full run has 3 "
                        "tasks x 3 seeds, transfer to LoRA/BitFit and SmolLM2.")
    return {"measured": measured, "headline": headline, "tables": tables,
            "plots": _plots(ctx, studies, transfer),
            "details": {"studies": [{**{k: v for k, v in st.items() if k not in ("scores", "runs")},
                                     "runs": [{k: v for k, v in r.items() if k != "scores"} for r in st["runs"]]}
                                    for st in studies],
                "overlaps": overlaps, "transfer": transfer, "pruning": pruning},
            "notes": notes}
