"""Run few-shot methods side by side on the same LM-BFF splits.

Methods (:data:`METHODS`):

- ``manual``: prompt-based fine-tuning of a language model with the task's manual label words (``tune.steps=0``:
  zero-shot), scored by the label words' log-probability;
- ``autoseq`` / ``single-word``: the same, with label sequences (or single tokens) found by
  :func:`plmkit.prompting.autoseq.search` on the split's train and dev examples;
- ``dpt``: :mod:`plmkit.prompting.dpt` on a discriminator;
- ``finetune`` / ``prompt-tuning`` / ``lora``: a classification head on the backbone, trained with every weight,
  a peft soft prompt (frozen backbone) or peft LoRA (:func:`plmkit.analysis.skill_neurons.tune`).

>>> from plmkit.prompting.harness import FewShotConfig, run_fewshot
>>> results = run_fewshot("polarity", ["manual", "finetune"], k=16, seeds=range(5))   # doctest: +SKIP
>>> results["manual"].summary()["mean"]                                             # doctest: +SKIP
"""
from __future__ import annotations

import copy
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..data.tasks import ClassificationTask
from ..errors import ConfigError
from .autoseq import AutoSeqConfig
from .dpt import DPTConfig
from .fewshot import FewShotSplit, MethodResult, few_shot_splits
from .prompts import Prompt, load_prompt
from .scoring import PromptTuneConfig

METHODS = ("manual", "autoseq", "single-word", "dpt", "finetune", "prompt-tuning", "lora")
LM_METHODS = ("manual", "autoseq", "single-word")
HEAD_TUNINGS = {"finetune": "full", "prompt-tuning": "prompt", "lora": "lora"}

Loader = Callable[[], tuple[Any, Any]]  # () -> (fresh model, tokenizer)


@dataclass(frozen=True)
class FewShotConfig:
    """Settings shared by every method of a run (each method reads its own part)."""

    model: str = "smollm2"  # backbone of the LM methods and the classification-head baselines
    tune: PromptTuneConfig = PromptTuneConfig()  # prompt-based fine-tuning (LM methods)
    autoseq: AutoSeqConfig = AutoSeqConfig()
    dpt: DPTConfig = DPTConfig()
    head_steps: int = 30  # classification-head baselines: steps, learning rates, soft-prompt length, batch
    finetune_lr: float = 5e-5
    prompt_lr: float = 3e-2
    lora_lr: float = 1e-3
    virtual_tokens: int = 16
    batch_size: int = 8
    max_length: int = 128
    mixed_precision: str = "auto"


def fresh_copies(load: Loader) -> Loader:
    """A loader that builds once and hands out deep copies (every run starts from the same weights)."""
    held: list = []

    def fresh() -> tuple[Any, Any]:
        if not held:
            held.extend(load())
        return copy.deepcopy(held[0]), held[1]

    return fresh


def default_lm_loader(name: str) -> Loader:
    from ..assets import load_model

    return fresh_copies(lambda: load_model(name))


def run_method(method: str, split: FewShotSplit, prompt: Prompt, config: FewShotConfig, *,
               lm_loader: Loader | None = None, discriminator_loader: Loader | None = None,
               seed: int = 0) -> tuple[float, dict]:
    """Train ``method`` on ``split.train`` (choosing on ``split.dev``), return (test accuracy, extra)."""
    if method not in METHODS:
        raise ConfigError(f"unknown few-shot method '{method}'; choose from {', '.join(METHODS)}")
    with tempfile.TemporaryDirectory() as tmp:
        if method in LM_METHODS:
            return _lm_method(method, split, prompt, config, lm_loader or default_lm_loader(config.model), tmp, seed)
        if method == "dpt":
            if discriminator_loader is None:
                raise ConfigError("the dpt method needs a discriminator: pass --discriminator DIR (an ELECTRA "
                                  "discriminator, or one made by `plmkit dpt pretrain-discriminator`)")
            return _dpt_method(split, prompt, config, discriminator_loader, tmp, seed)
        return _head_method(HEAD_TUNINGS[method], split, config, tmp, seed)


def _lm_method(method, split, prompt, config, loader, tmp, seed) -> tuple[float, dict]:
    from . import autoseq
    from .scoring import accuracy, prompt_finetune

    model, tok = loader()
    extra: dict = {}
    if method != "manual":
        search_cfg = replace(config.autoseq, single_token=method == "single-word", max_length=config.max_length)
        found = autoseq.search(model, tok, prompt, split, search_cfg, seed=seed)
        prompt = prompt.with_words(found.sequences)
        extra = {"sequences": list(found.sequences), "search_dev_accuracy": found.dev_accuracy,
                 "search_seconds": round(found.seconds, 2), "search_forward_passes": found.forward_passes,
                 "combinations_scored": found.combinations_scored}
    if config.tune.steps > 0:
        prompt_finetune(model, tok, prompt, split.train, tmp, config.tune, seed=seed)
        extra["dev_accuracy"] = accuracy(model, tok, prompt, split.dev, max_length=config.max_length)
    else:  # zero-shot: the search already scored these sequences on dev
        extra["dev_accuracy"] = extra.get("search_dev_accuracy") if method != "manual" else accuracy(
            model, tok, prompt, split.dev, max_length=config.max_length)
    extra["label_words"] = list(prompt.label_words)
    return accuracy(model, tok, prompt, split.test, max_length=config.max_length), extra


def _dpt_method(split, prompt, config, loader, tmp, seed) -> tuple[float, dict]:
    from .dpt import DPTClassifier, dpt_accuracy, train_dpt

    disc, tok = loader()
    clf = DPTClassifier(disc, split.num_labels)
    train_dpt(clf, tok, prompt, split.train, tmp, replace(config.dpt, max_length=config.max_length), seed=seed)
    return dpt_accuracy(clf, tok, prompt, split.test, max_length=config.max_length), {
        "dev_accuracy": dpt_accuracy(clf, tok, prompt, split.dev, max_length=config.max_length),
        "class_bias": clf.class_bias.detach().tolist()}


def _head_method(tuning, split, config, tmp, seed) -> tuple[float, dict]:
    from ..analysis import skill_neurons as sn

    cfg = sn.SkillConfig(virtual_tokens=config.virtual_tokens, steps=config.head_steps, batch_size=config.batch_size,
                         lr=config.prompt_lr, delta_lr=config.lora_lr, full_lr=config.finetune_lr,
                         max_length=config.max_length, mixed_precision=config.mixed_precision)
    model, tok = sn.tune(config.model, split, cfg, seed=seed, tuning=tuning, out_dir=tmp)
    return sn.accuracy(model, tok, split.test, max_length=config.max_length), {
        "dev_accuracy": sn.accuracy(model, tok, split.dev, max_length=config.max_length)}


def run_fewshot(task: str | ClassificationTask, methods: Sequence[str], k: int | None = 16,
                seeds: Sequence[int] = range(5), config: FewShotConfig = FewShotConfig(), *,
                prompt: Prompt | None = None, max_test: int | None = None, lm_loader: Loader | None = None,
                discriminator_loader: Loader | None = None, progress: bool = True,
                store: str | Path | None = None, store_inputs: Mapping[str, Any] | None = None,
                resume: bool = True) -> dict[str, MethodResult]:
    """Every method on the same splits of ``task`` (an asset task's name, or a task; one split per seed);
    returns {method: MethodResult}.

    ``store``: a folder where each finished (method, split) run is written as JSON the moment it ends; a rerun
    with the same task, K, settings, prompt, plmkit version and ``store_inputs`` (what identifies the loaders'
    models) takes those runs from there, so a long run that stopped resumes where it was. A stored run keeps
    its own seconds and CPU; ``MethodResult.resumed`` counts the runs taken from the store. ``resume=False`` runs
    every method and split again (and stores the new runs)."""
    from tqdm.auto import tqdm

    from ..data.tasks import classification_task

    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ConfigError(f"unknown few-shot method(s) {bad}; choose from {', '.join(METHODS)}")
    task = classification_task(task) if isinstance(task, str) else task
    prompt = prompt or load_prompt(task.name)
    splits = few_shot_splits(task, k, list(seeds), max_test)
    lm_loader = lm_loader or (default_lm_loader(config.model) if set(methods) & set(LM_METHODS) else None)
    cells = _CellStore(store, {"task": task.name, "k": k, "config": config, "prompt": prompt,
                               "max_test": max_test, "inputs": store_inputs or {}}, resume) if store else None
    results = {m: MethodResult(m, task.name, k) for m in methods}
    bar = tqdm(total=len(methods) * len(splits), desc=f"few-shot {task.name}", disable=not progress)
    for split in splits:
        for m in methods:
            done = cells.get(m, split.seed) if cells else None
            if done is not None:
                acc, seconds, extra = done["accuracy"], done["seconds"], done["extra"]
                results[m].resumed += 1
            else:
                t = time.perf_counter()
                acc, extra = run_method(m, split, prompt, config, lm_loader=lm_loader,
                                        discriminator_loader=discriminator_loader, seed=split.seed)
                seconds = time.perf_counter() - t
                if cells:
                    cells.put(m, split.seed, acc, seconds, extra)
            results[m].add(acc, split, seconds, extra)
            bar.update(1)
            bar.set_postfix(method=m, acc=f"{acc:.3f}")
    bar.close()
    return results


class _CellStore:
    """One JSON file per finished (method, split) run, named by the run's settings: what makes few-shot runs
    resumable (a :class:`plmkit.cache.StepStore` whose records are the run's accuracy, seconds and extras)."""

    def __init__(self, folder: str | Path, identity: Mapping[str, Any], resume: bool = True):
        from ..cache import StepStore

        self.steps = StepStore(folder, "fewshot-run", identity, resume)
        self.prefix = f"{identity['task']}-k{'full' if identity['k'] is None else identity['k']}"

    def get(self, method: str, seed: int) -> dict | None:
        return self.steps.get(f"{self.prefix}-{method}-split{seed}")

    def put(self, method: str, seed: int, accuracy: float, seconds: float, extra: dict) -> None:
        from ..device import cpu_info

        self.steps.put(f"{self.prefix}-{method}-split{seed}",
                       {"method": method, "split_seed": seed, "accuracy": float(accuracy),
                        "seconds": round(seconds, 2), "extra": extra, "cpu": cpu_info().get("cpu")})


def resumed_note(summaries: Sequence[dict]) -> list[str]:
    """A report note when some runs of ``summaries`` came from an earlier, stopped run's store (else none)."""
    n, total = sum(s.get("resumed", 0) for s in summaries), sum(s["runs"] for s in summaries)
    return [f"{n} of {total} runs were taken from an earlier, stopped run of this command (kept in runs/, each "
            "with its own seconds and CPU)."] if n else []


# --- tables and plots -----------------------------------------------------------------------------------------

def summary_table(summaries: Sequence[dict], title: str) -> dict:
    """A report table (title, columns, rows) of :meth:`MethodResult.summary` dicts: mean (std), failures."""
    from .fewshot import format_summary

    return {"title": title,
            "columns": ["task", "K", "method", "test accuracy, mean (std) %", "failures (<= majority)",
                        "majority %", "dev accuracy %", "s per run"],
            "rows": [[s["task"], "full" if s["k"] is None else s["k"], s["method"], format_summary(s).split(",")[0],
                      f"{round(s['failure_rate'] * s['runs'])}/{s['runs']}",
                      f"{100 * sum(s['majority']) / len(s['majority']):.1f}",
                      f"{100 * _mean([e.get('dev_accuracy') for e in s['extra']]):.1f}",
                      f"{sum(s['seconds']) / len(s['seconds']):.1f}"] for s in summaries]}


def _mean(xs: Sequence[float | None]) -> float:
    vals = [x for x in xs if x is not None]
    return sum(vals) / len(vals) if vals else float("nan")


def plot_summaries(summaries: Sequence[dict], title: str):
    """A matplotlib figure, one panel per task. With one K per task: each method's mean test accuracy (bar, std
    as error bar), every split (dots) and the majority-class line. With several: accuracy against K, a line per
    method (mean, std as error bar) and the majority class as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks: dict[str, dict] = {}
    for s in summaries:
        tasks.setdefault(s["task"], {}).setdefault(s["k"], []).append(s)
    if all(len(by_k) == 1 for by_k in tasks.values()):
        return _bar_panels([(task, k, ss) for task, by_k in tasks.items() for k, ss in by_k.items()], title, plt)
    fig, axes = plt.subplots(1, len(tasks), figsize=(max(6.0, 4.6 * len(tasks)), 3.8), squeeze=False)
    for ax, (task, by_k) in zip(axes[0], tasks.items()):
        ks = list(by_k)
        xs = range(len(ks))
        for method in dict.fromkeys(s["method"] for ss in by_k.values() for s in ss):
            pts = [(x, s) for x, k in zip(xs, ks) for s in by_k[k] if s["method"] == method]
            ax.errorbar([x for x, _ in pts], [100 * s["mean"] for _, s in pts], yerr=[100 * s["std"] for _, s in pts],
                        marker="o", capsize=3, label=method)
        ax.plot(list(xs), [100 * _mean(by_k[k][0]["majority"]) for k in ks], ls="--", color="#888", lw=1,
                label="majority class")
        ax.set_xticks(list(xs), ["full" if k is None else str(k) for k in ks])
        ax.set_xlabel("K (examples per class)")
        ax.set_ylabel("test accuracy %")
        ax.set_title(task)
        ax.legend(fontsize=7)
    return _titled(fig, title)


def _bar_panels(panels: list[tuple], title: str, plt):
    fig, axes = plt.subplots(1, len(panels), figsize=(max(6.0, 4.2 * len(panels)), 3.8), squeeze=False)
    for ax, (task, k, ss) in zip(axes[0], panels):
        xs = range(len(ss))
        ax.bar(xs, [100 * s["mean"] for s in ss], yerr=[100 * s["std"] for s in ss], color="#9ab", capsize=3)
        for x, s in zip(xs, ss):
            ax.scatter([x] * len(s["accuracies"]), [100 * a for a in s["accuracies"]], s=10, color="#234", zorder=3)
        ax.axhline(100 * _mean(ss[0]["majority"]), ls="--", color="#b55", lw=1, label="majority class")
        ax.set_xticks(list(xs), [s["method"] for s in ss], rotation=30, ha="right")
        ax.set_title(f"{task}, K={'full' if k is None else k}")
        ax.set_ylabel("test accuracy %")
        ax.legend(fontsize=7, loc="lower right")
    return _titled(fig, title)


def _titled(fig, title: str):
    import textwrap

    fig.suptitle("\n".join(textwrap.wrap(title, 90)), fontsize=9)
    return fig
