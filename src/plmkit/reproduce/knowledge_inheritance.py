"""Recipe ``knowledge-inheritance``: a larger BERT pretrained from scratch with and without a smaller teacher.

On plmkit's English corpus (Wikipedia sample, Austen, Moby Dick, Lee news, WordNet glosses; validation
documents held out by a hash of their id) with one WordPiece vocabulary trained on the training documents: a
small teacher is pretrained first, then the larger student from scratch twice per seed, on the same data
order, budget and initial weights: plain MLM, and KI (KD weight decaying linearly to 0). The curves are
validation MLM loss against training FLOPs (the teacher's forward passes counted) and against wall-clock;
the saving is the compute at which KI first reaches the plain student's final validation loss. Both
students are then fine-tuned on the fortunes topic task (text the pretraining corpus does not contain).
"""
from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..pretrain import CorpusConfig, KIConfig, PretrainConfig, compute_to_reach, corpus_texts, packed_corpus
from ..pretrain import pretrain, study_tokenizer
from .registry import Budgets, RecipeContext, recipe


@dataclass(frozen=True)
class DownstreamSettings:
    task: str = "topics4"
    steps: int = 150
    batch_size: int = 16
    lr: float = 2e-4
    max_length: int = 64
    max_test: int | None = None


@dataclass(frozen=True)
class KISettings:
    corpus: CorpusConfig
    vocab_size: int
    teacher: PretrainConfig
    student: PretrainConfig
    ki: KIConfig
    seeds: tuple[int, ...]
    downstream: DownstreamSettings


QUICK = KISettings(
    corpus=CorpusConfig(max_chars=3_000_000, block_size=64, validation_fraction=0.05), vocab_size=4096,
    teacher=PretrainConfig(size="xs", steps=250, batch_size=16, lr=1e-3, warmup_steps=20, eval_every=50),
    student=PretrainConfig(size="s", steps=100, batch_size=16, lr=1e-3, warmup_steps=10, eval_every=20),
    ki=KIConfig(ki_steps=60), seeds=(0,), downstream=DownstreamSettings(steps=60, max_test=200))
FULL = KISettings(
    corpus=CorpusConfig(block_size=128, validation_fraction=0.03), vocab_size=8192,
    teacher=PretrainConfig(size="s", steps=1500, batch_size=32, lr=1e-3, warmup_steps=75, eval_every=100),
    student=PretrainConfig(size="m", steps=1200, batch_size=32, lr=1e-3, warmup_steps=60, eval_every=100),
    ki=KIConfig(ki_steps=600), seeds=(0, 1), downstream=DownstreamSettings(steps=300))


def _saving(plain: list[dict], ki: list[dict], key: str) -> dict[str, float | None]:
    """Compute (``flops`` or ``seconds``) at which KI reaches the plain run's final loss, as a saving."""
    target = plain[-1]["val_loss"]
    spent = plain[-1][key]
    reach = compute_to_reach([(p[key], p["val_loss"]) for p in ki], target)
    return {"plain": spent, "ki_to_reach": reach, "saving": None if reach is None else 1 - reach / spent}


def _downstream(ctx: RecipeContext, folder: str, S: DownstreamSettings, seed: int) -> dict[str, float]:
    from ..data.tasks import classification_task
    from ..train.classify import accuracy_on, fine_tuned_head

    task = classification_task(S.task, seed=0)
    model, tok = fine_tuned_head(folder, task, ctx.out_dir / "finetune-tmp", steps=S.steps, batch_size=S.batch_size,
                                 lr=S.lr, max_length=S.max_length, seed=seed)
    test = task.test[:S.max_test]
    return {"accuracy": accuracy_on(model, tok, test, max_length=S.max_length), "n_test": len(test)}


def _plot(ctx: RecipeContext, runs: list[dict], teacher: dict) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key, label in ((axes[0], "flops", "training FLOPs (teacher forward counted)"),
                           (axes[1], "seconds", "wall-clock seconds")):
        for r in runs:
            for variant, style in (("plain", "-"), ("ki", "--")):
                c = r[variant]["curve"]
                ax.plot([p[key] for p in c], [p["val_loss"] for p in c], style,
                        label=f"{'KI' if variant == 'ki' else 'plain'} student, seed {r['seed']}")
        c = teacher["curve"]
        ax.plot([p[key] for p in c], [p["val_loss"] for p in c], ":", color="grey", label="teacher (own pretraining)")
        ax.set_xlabel(label)
        ax.set_ylabel("validation MLM loss (nats)")
        ax.legend(fontsize=7)
    fig.suptitle("Knowledge Inheritance: student validation loss against compute", fontsize=10)
    return [ctx.save_figure(fig, "knowledge_inheritance.png")]


@recipe(
    "knowledge-inheritance", "Knowledge Inheritance: a larger BERT pretrained from scratch with a smaller teacher",
    "knowledge_inheritance",
    paper_claim="Knowledge distillation from an existing smaller PLM, as auxiliary supervision during "
                "pretraining, trains a larger PLM more efficiently (KI reaches the teacher-free model's loss with "
                "less compute).",
    citation="Qin et al., Knowledge Inheritance for Pre-trained Language Models, NAACL 2022, arXiv:2105.13880",
    budgets=Budgets(quick=QUICK, full=FULL),
)
def run(ctx: RecipeContext) -> dict[str, Any]:
    S: KISettings = ctx.settings
    for old in ctx.out_dir.glob("*"):  # a recipe run starts afresh (plmkit pretrain resumes instead)
        if old.is_dir():
            shutil.rmtree(old)
    corpus_cfg = dataclasses.replace(S.corpus, seed=ctx.seed)
    with ctx.phase("corpus"):
        tok = study_tokenizer("bert", corpus_texts(corpus_cfg), vocab_size=S.vocab_size,
                              out_dir=ctx.out_dir / "tokenizer")
        corpus = packed_corpus(tok, corpus_cfg)
    train_blocks, val_blocks = corpus.train, corpus.validation
    with ctx.phase("teacher"):
        teacher_model, teacher = pretrain(ctx.out_dir / "teacher", train_blocks, val_blocks, tok,
                                          dataclasses.replace(S.teacher, seed=ctx.seed), progress=ctx.progress)
    runs = []
    for seed in S.seeds:
        cfg = dataclasses.replace(S.student, seed=seed)
        run_ = {"seed": seed}
        for variant in ("plain", "ki"):
            with ctx.phase(f"student-{variant}"):
                _, res = pretrain(ctx.out_dir / f"student-{variant}-seed{seed}", train_blocks, val_blocks, tok, cfg,
                                  teacher=teacher_model if variant == "ki" else None, ki=S.ki, progress=ctx.progress)
            with ctx.phase("downstream"):
                down = _downstream(ctx, f"{res.out_dir}/model", S.downstream, seed)
            run_[variant] = {"curve": res.curve, "final_val_loss": res.final_val_loss, "params": res.params,
                             "downstream": down, "mixed_precision": res.mixed_precision}
        run_["saving_flops"] = _saving(run_["plain"]["curve"], run_["ki"]["curve"], "flops")
        run_["saving_seconds"] = _saving(run_["plain"]["curve"], run_["ki"]["curve"], "seconds")
        runs.append(run_)
    return _report(ctx, S, corpus, teacher, runs)


def _mean(xs: list[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return float(np.mean(vals)) if len(vals) == len(xs) and vals else None


def _report(ctx: RecipeContext, S: KISettings, corpus, teacher, runs: list[dict]) -> dict[str, Any]:
    fmt = lambda x: "not reached" if x is None else f"{100 * x:.1f}%"  # noqa: E731
    teacher_flops = teacher.curve[-1]["flops"]
    rows = []
    for r in runs:
        f, s = r["saving_flops"], r["saving_seconds"]
        with_teacher = (None if f["ki_to_reach"] is None else 1 - (f["ki_to_reach"] + teacher_flops) / f["plain"])
        rows.append([r["seed"], f"{r['plain']['final_val_loss']:.3f}", f"{r['ki']['final_val_loss']:.3f}",
                     fmt(f["saving"]), fmt(s["saving"]), fmt(with_teacher),
                     f"{100 * r['plain']['downstream']['accuracy']:.1f}",
                     f"{100 * r['ki']['downstream']['accuracy']:.1f}"])
    saving = _mean([r["saving_flops"]["saving"] for r in runs])
    measured: dict[str, Any] = {
        "saving_flops": saving, "saving_seconds": _mean([r["saving_seconds"]["saving"] for r in runs]),
        "plain.final_val_loss": float(np.mean([r["plain"]["final_val_loss"] for r in runs])),
        "ki.final_val_loss": float(np.mean([r["ki"]["final_val_loss"] for r in runs])),
        "teacher.final_val_loss": teacher.final_val_loss,
        "plain.downstream_accuracy": float(np.mean([r["plain"]["downstream"]["accuracy"] for r in runs])),
        "ki.downstream_accuracy": float(np.mean([r["ki"]["downstream"]["accuracy"] for r in runs])),
    }
    T, St, D = S.teacher, S.student, S.downstream
    tables = [{
        "title": f"Student ({St.size}, {runs[0]['plain']['params']:,} matmul parameters) with and without KI from "
                 f"the teacher ({T.size}, {teacher.params:,}); {St.steps} steps of {St.batch_size} blocks of "
                 f"{S.corpus.block_size} tokens; saving = compute at which KI first reaches the plain student's final "
                 f"validation loss, against the plain run's total; downstream = {D.task} test accuracy (%) after "
                 f"{D.steps} fine-tuning steps",
        "columns": ["seed", "plain val loss", "KI val loss", "saving (FLOPs, teacher forward counted)",
                    "saving (wall-clock)", "saving (teacher pretraining counted too)", "plain downstream",
                    "KI downstream"],
        "rows": rows}]
    headline = {"metric": "compute saved by KI to reach the plain student's final validation loss (FLOPs, teacher "
                          "forward counted; mean over seeds)",
                "ours": None if saving is None else round(saving, 3),
                "paper": "less compute than training from scratch (abstract: KI's training efficiency is superior)",
                "peer": "bert2BERT / LiGO (weight growth) described in docs, not run"}
    notes = [
        f"Corpus: {corpus.documents[0]} training and {corpus.documents[1]} validation documents "
        f"({corpus.tokens[0]:,} / {corpus.tokens[1]:,} tokens), WordPiece vocabulary {S.vocab_size} trained on the "
        "training documents only; masked positions of the validation set fixed by the seed, the same for every "
        "model.",
        f"KI: schedule {S.ki.schedule}, KD weight 1 -> 0 at step {S.ki.ki_steps}, temperature {S.ki.temperature}; "
        f"after step {S.ki.ki_steps} the teacher no longer runs and costs nothing. The teacher's own pretraining "
        f"({teacher_flops:.3g} FLOPs) is counted only in the third saving column.",
        f"FLOPs: 6·N·tokens per training step plus 2·N_teacher·tokens per teacher forward (plmkit.eval.flops); "
        f"trained in {runs[0]['plain']['mixed_precision']} on this CPU.",
        "Nothing is selected: fixed settings; the downstream test split is only evaluated.",
    ]
    if ctx.quick:
        notes.append("Quick run: a 3 MB slice of the corpus, one seed, 150 student steps: far from converged, so the "
                     "saving here says little. The full run (plmkit reproduce knowledge-inheritance) trains the "
                     "teacher 1,500 and each student 1,200 steps on the whole corpus, with 2 seeds.")
    return {"headline": headline, "measured": measured, "tables": tables, "plots": _plot(ctx, runs, teacher.__dict__),
            "details": {"settings": dataclasses.asdict(S), "teacher": teacher.__dict__, "runs": runs},
            "notes": notes}
