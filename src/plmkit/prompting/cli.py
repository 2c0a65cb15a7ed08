"""``plmkit fewshot``, ``plmkit autoseq search`` and ``plmkit dpt pretrain-discriminator``."""
from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..errors import ConfigError


def _lm_loader(model: str):
    """``minilm`` has no MLM head: the cached MiniLM + fitted head stands in; anything else loads as it is."""
    from .harness import default_lm_loader, fresh_copies

    if model == "minilm":
        from ..reproduce.shared import MLMHeadSettings, minilm_mlm

        return fresh_copies(lambda: minilm_mlm(MLMHeadSettings())[:2])
    return default_lm_loader(model)


def _prompt(args: argparse.Namespace):
    from .prompts import load_prompt

    return load_prompt(args.prompt or args.task)


def _autoseq_config(args: argparse.Namespace):
    from .autoseq import AutoSeqConfig

    return AutoSeqConfig(beam=args.beam, max_tokens=args.max_tokens, rerank_pool=args.rerank_pool,
                         per_label=args.per_label, max_length=args.max_length)


def _cmd_fewshot(args: argparse.Namespace) -> None:
    from .._io import write_json
    from ..cache import model_identity
    from ..device import cpu_info
    from .dpt import DPTConfig, load_discriminator
    from .fewshot import format_summary
    from .harness import FewShotConfig, fresh_copies, plot_summaries, run_fewshot, summary_table
    from .scoring import PromptTuneConfig

    if "dpt" in args.method and not args.discriminator:
        raise ConfigError("--method dpt needs --discriminator DIR (an ELECTRA discriminator, or one written by "
                          "`plmkit dpt pretrain-discriminator --out DIR`)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tune = PromptTuneConfig(steps=args.steps, lr=args.lr, max_length=args.max_length, progress=False)
    cfg = FewShotConfig(model=args.model, tune=tune,
                        autoseq=_autoseq_config(args), dpt=DPTConfig(steps=args.steps, lr=args.lr,
                                                                      max_length=args.max_length),
                        head_steps=args.steps, max_length=args.max_length)
    disc = fresh_copies(lambda: load_discriminator(args.discriminator)) if args.discriminator else None
    results = run_fewshot(args.task, args.method, None if args.full_data else args.k, range(args.seeds), cfg,
                          prompt=_prompt(args), max_test=args.max_test, lm_loader=_lm_loader(args.model),
                          discriminator_loader=disc, progress=not args.no_progress,
                          store=out / "runs", resume=not args.no_resume,
                          store_inputs={"model": model_identity(args.model), "discriminator":
                                        model_identity(args.discriminator) if args.discriminator else None})
    summaries = [r.summary() for r in results.values()]
    title = f"{args.task}, K={'full' if args.full_data else args.k}, {args.seeds} splits, {args.model}"
    write_json(out / "results.json", {"summaries": summaries, "table": summary_table(summaries, title),
                                      "config": {k: v for k, v in vars(args).items() if k != "fn"}, "cpu": cpu_info()})
    fig = plot_summaries(summaries, title)
    fig.savefig(out / "fewshot.png", dpi=110)
    for s in summaries:
        print(f"{s['method']:>14}  {format_summary(s)}")
    print(f"wrote {out / 'results.json'} and {out / 'fewshot.png'}")


def _cmd_autoseq(args: argparse.Namespace) -> None:
    import json

    from .._io import write_json
    from ..data.tasks import classification_task
    from .autoseq import search
    from .fewshot import few_shot_split

    model, tok = _lm_loader(args.model)()
    split = few_shot_split(classification_task(args.task), args.k, args.seed)
    prompt = _prompt(args)
    found = search(model, tok, prompt, split, replace(_autoseq_config(args), single_token=args.single_token),
                   seed=args.seed, progress=not args.no_progress)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "search.json", {"task": args.task, "k": args.k, "seed": args.seed, "model": args.model,
                                     **found.to_dict()})
    write_json(out / "prompt.json", prompt.with_words(found.sequences).to_dict())
    for name, seq in zip(split.label_names, found.sequences):
        print(f"{name:>12}: {json.dumps(seq)}")
    print(f"dev accuracy {100 * found.dev_accuracy:.1f}% (zero-shot), {found.combinations_scored} combinations, "
          f"{found.seconds:.1f} s, {found.forward_passes} forward passes")
    print(f"wrote {out / 'search.json'}; use the sequences with `plmkit fewshot --prompt {out / 'prompt.json'}`")


def _cmd_dpt(args: argparse.Namespace) -> None:
    from .._io import write_json
    from ..reproduce.shared import DiscriminatorSettings, MLMHeadSettings, minilm_mlm, train_discriminator

    settings = DiscriminatorSettings(generator=MLMHeadSettings(steps=args.generator_steps), rtd_steps=args.steps,
                                     batch_size=args.batch_size, lr=args.lr, max_length=args.max_length,
                                     corpus_chars=args.corpus_chars, seed=args.seed)
    generator, tok, _ = minilm_mlm(settings.generator, progress=not args.no_progress)
    out = Path(args.out)
    disc, meta = train_discriminator(settings, generator, tok, out / "_train", progress=not args.no_progress)
    disc.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    before, after = meta["rtd_before"], meta["rtd_after"]
    write_json(out / "rtd.json", {"before": before, "after": after, "train_passages": meta["train_passages"],
                                  "heldout_passages": meta["heldout_passages"], "settings": vars(args) | {"fn": None}})
    print(f"RTD accuracy on {meta['heldout_passages']} held-out passages: {100 * before['accuracy']:.1f}% -> "
          f"{100 * after['accuracy']:.1f}% (all-original baseline {100 * after['all_original_baseline']:.1f}%, "
          f"recall on replaced {100 * after['replaced_recall']:.1f}%)")
    print(f"wrote an ElectraForPreTraining to {out}; checkpoints under {out / '_train'} (rerun to resume)")


def _cmd_dpt_qa(args: argparse.Namespace) -> None:
    from .._io import write_json
    from ..device import cpu_info
    from . import dpt_qa
    from .dpt import load_discriminator

    disc, tok = load_discriminator(args.discriminator)
    config = dpt_qa.SpanConfig(steps=args.steps, lr=args.lr, max_length=args.max_length)
    runs = dpt_qa.compare_on_fact_passages(disc, tok, encoder=args.encoder, n_train=args.n_train, n_test=args.n_test,
                                           seeds=range(args.seeds), config=config, progress=not args.no_progress)
    table = dpt_qa.qa_table(runs, f"geonames fact passages, {args.n_train} train / {args.n_test} test questions, "
                                  f"{args.steps} steps, {args.seeds} seeds")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "qa.json", {"runs": runs, "table": table, "cpu": cpu_info(),
                                 "config": {k: v for k, v in vars(args).items() if k != "fn"}})
    for row in table["rows"]:
        print(f"{row[0]:>28}  EM {row[1]}  F1 {row[2]}")
    print(f"wrote {out / 'qa.json'}")


def _common(p: argparse.ArgumentParser, default_model: str) -> None:
    from ..data.tasks import ALL_TASKS

    p.add_argument("--task", default="polarity", choices=sorted(ALL_TASKS), help="asset task (default polarity)")
    p.add_argument("--model", default=default_model,
                   help=f"language model: asset name or folder (default {default_model}; minilm gets its fitted MLM "
                        "head from the cache)")
    p.add_argument("--prompt", default=None, help="prompt JSON (template, label_words); default: the task's manual one")
    p.add_argument("--k", type=int, default=16, help="examples per class in train and in dev (default 16)")
    p.add_argument("--max-length", type=int, default=128, help="tokens per input (default 128)")
    p.add_argument("--beam", type=int, default=50, help="AutoSeq beam width (default 50)")
    p.add_argument("--max-tokens", type=int, default=20, help="longest label sequence searched (default 20)")
    p.add_argument("--rerank-pool", type=int, default=50, help="candidates per class re-ranked (default 50)")
    p.add_argument("--per-label", type=int, default=5, help="top candidates per class combined on dev (default 5)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_parser(sub: Any) -> None:
    """Register ``plmkit fewshot``, ``plmkit autoseq`` and ``plmkit dpt`` on the main parser's subcommands."""
    from .harness import METHODS

    f = sub.add_parser("fewshot", help="few-shot methods side by side on the same LM-BFF splits (mean, std, failures)")
    _common(f, "smollm2")
    f.add_argument("--method", nargs="+", default=["manual"], choices=METHODS,
                   help="one or more methods (default manual)")
    f.add_argument("--seeds", type=int, default=5, help="sampled splits, seeds 0..N-1 (default 5)")
    f.add_argument("--full-data", action="store_true", help="the task's full train / validation / test instead of K")
    f.add_argument("--max-test", type=int, default=None, help="cap the test rows per split (per-class share kept)")
    f.add_argument("--steps", type=int, default=30, help="tuning steps of every method (0: zero-shot prompts)")
    f.add_argument("--lr", type=float, default=1e-5, help="learning rate of prompt-based fine-tuning and DPT")
    f.add_argument("--discriminator", default=None, help="ELECTRA discriminator folder for --method dpt")
    f.add_argument("--out", required=True, help="folder for results.json, fewshot.png and runs/ (one JSON per "
                   "finished method and split: rerunning the same command resumes from them)")
    f.add_argument("--no-resume", action="store_true",
                   help="run every method and split again (runs/ is rewritten, not read)")
    f.set_defaults(fn=_cmd_fewshot)

    a = sub.add_parser("autoseq", help="AutoSeq: search label sequences for a task's classes")
    asub = a.add_subparsers(dest="action", required=True, metavar="ACTION", title="actions", help="search")
    s = asub.add_parser("search", help="beam search + contrastive re-ranking on K train examples, chosen on K dev")
    _common(s, "smollm2")
    s.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    s.add_argument("--single-token", action="store_true", help="the single-word baseline: one word-initial token")
    s.add_argument("--out", required=True, help="folder for search.json and prompt.json")
    a.set_defaults(fn=_cmd_autoseq)

    d = sub.add_parser("dpt", help="DPT: make an ELECTRA-style discriminator from MiniLM")
    dsub = d.add_subparsers(dest="action", required=True, metavar="ACTION", title="actions",
                            help="pretrain-discriminator or qa")
    pd = dsub.add_parser("pretrain-discriminator",
                         help="continue MiniLM on replaced-token detection (generator: MiniLM + fitted MLM head)")
    pd.add_argument("--out", required=True, help="folder for the ElectraForPreTraining, its tokenizer and rtd.json")
    pd.add_argument("--steps", type=int, default=1500, help="RTD steps (default 1500)")
    pd.add_argument("--batch-size", type=int, default=16, help="passages per step (default 16)")
    pd.add_argument("--lr", type=float, default=1e-4, help="learning rate (default 1e-4)")
    pd.add_argument("--max-length", type=int, default=64, help="tokens per passage (default 64)")
    pd.add_argument("--corpus-chars", type=int, default=400_000, help="English text used (default 400000)")
    pd.add_argument("--generator-steps", type=int, default=300, help="MLM-head fitting steps of the generator "
                                                                     "(default 300, cached)")
    pd.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    pd.add_argument("--no-progress", action="store_true", help="no progress bars")
    pd.set_defaults(fn=_cmd_dpt)
    qa = dsub.add_parser("qa", help="extractive QA on geonames fact passages: DPT span tagging vs a start/end head")
    qa.add_argument("--discriminator", required=True, help="ELECTRA discriminator folder (or 'minilm': converted)")
    qa.add_argument("--encoder", default="minilm", help="encoder of the start/end-head baseline (default minilm)")
    qa.add_argument("--n-train", type=int, default=64, help="training questions (default 64)")
    qa.add_argument("--n-test", type=int, default=200, help="test questions, on unseen countries (default 200)")
    qa.add_argument("--steps", type=int, default=150, help="tuning steps of each method (default 150)")
    qa.add_argument("--lr", type=float, default=1e-4, help="learning rate (default 1e-4)")
    qa.add_argument("--max-length", type=int, default=192, help="tokens per question + passage (default 192)")
    qa.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1: country split and training (default 3)")
    qa.add_argument("--out", required=True, help="folder for qa.json")
    qa.add_argument("--no-progress", action="store_true", help="no progress bars")
    qa.set_defaults(fn=_cmd_dpt_qa)
