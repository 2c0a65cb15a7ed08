"""``plmkit pretrain`` (from scratch, optionally with a KI teacher) and ``plmkit selective-mask``."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..errors import ConfigError, read_text_utf8


def _teacher(folder: str, family: str):
    from ..assets import load_model

    path = Path(folder) / "model" if (Path(folder) / "model" / "config.json").exists() else Path(folder)
    if not (path / "config.json").exists():
        raise ConfigError(f"--teacher {folder}: no model there; pass the --out folder of an earlier `plmkit pretrain`")
    return load_model(str(path), task="masked-lm" if family == "bert" else "causal-lm")


def _cmd_pretrain(args: argparse.Namespace) -> None:
    from . import CorpusConfig, KIConfig, PretrainConfig, corpus_texts, packed_corpus, pretrain, study_tokenizer

    out = Path(args.out)
    config = PretrainConfig(family=args.family, size=args.size, steps=args.steps, batch_size=args.batch_size,
                            lr=args.lr, warmup_steps=args.warmup_steps, eval_every=args.eval_every, seed=args.seed)
    corpus = CorpusConfig(corpus=args.corpus, max_chars=args.max_chars, block_size=args.block_size, seed=args.seed,
                          validation_fraction=args.validation_fraction)
    teacher = teacher_tok = None
    if args.teacher:
        teacher, teacher_tok = _teacher(args.teacher, args.family)
    source = args.tokenizer
    if (out / "tokenizer" / "tokenizer.json").exists():  # a rerun resumes with the tokenizer it trained
        source = str(out / "tokenizer")
    elif source is None:
        source = str(Path(args.teacher) / "tokenizer") if args.teacher else "train"
        if args.teacher and not Path(source).is_dir():
            source = str(Path(args.teacher) / "model")
    texts = corpus_texts(corpus) if source == "train" else None
    tok = study_tokenizer(args.family, texts, source=source, vocab_size=args.vocab_size, out_dir=out / "tokenizer")
    packed = packed_corpus(tok, corpus)
    ki = KIConfig(schedule=args.ki, ki_steps=args.ki_steps, temperature=args.temperature, alpha=args.alpha)
    print(f"corpus: {packed.documents[0]} / {packed.documents[1]} documents, {len(packed.train)} / "
          f"{len(packed.validation)} blocks of {args.block_size} tokens; CPU {_cpu()}")
    _, res = pretrain(out, packed.train, packed.validation, tok, config, teacher=teacher, ki=ki if teacher else None,
                      teacher_tokenizer=teacher_tok, progress=not args.no_progress)
    last = res.curve[-1]
    print(f"{args.family}-{args.size}: {res.params:,} matmul parameters; validation loss {res.final_val_loss:.4f} "
          f"after {last['step']} steps, {last['tokens']:,.0f} tokens, {last['flops']:.3g} FLOPs "
          f"(teacher {last.get('teacher_flops', 0):.3g}), {last['seconds']:.0f} s in {res.mixed_precision}"
          + (f" (resumed from step {res.resumed_from})" if res.resumed_from else ""))
    print(f"model: {out / 'model'}; checkpoints: {out / 'checkpoints'}; curve: {out / 'metrics.jsonl'}")


def _cpu() -> str:
    from ..device import cpu_info

    c = cpu_info()
    return f"{c['cpu']} ({c['cores']} cores, {c['capability']}, bf16 {'fast' if c['bf16_fast'] else 'slow'})"


def _labelled_rows(args: argparse.Namespace) -> list[dict]:
    from ..data.tasks import classification_task
    from ..data.text import iter_sentences

    if args.labelled:
        rows = [json.loads(line) for line in read_text_utf8(args.labelled, "labelled file").splitlines()
                if line.strip()]
        if not rows or not {"text", "label"} <= set(rows[0]):
            raise ConfigError(f"{args.labelled}: expected JSON lines with 'text' and 'label' (an integer class)")
    else:
        rows = classification_task(args.task, seed=0).train
    return [{"text": s, "label": int(r["label"])} for r in rows for s in iter_sentences(r["text"]) if len(s) > 10]


def _cmd_selective_mask(args: argparse.Namespace) -> None:
    from .._io import write_json
    from ..assets import load_model
    from .selective_masking import SelectiveMaskConfig, TokenTagger, save_masked, selective_masks, token_importance
    from .selective_masking import train_tagger

    if not Path(args.corpus).is_file():
        raise ConfigError(f"--corpus {args.corpus}: no such file (one passage per line expected)")
    corpus = [line.strip() for line in read_text_utf8(args.corpus, "corpus").splitlines() if line.strip()]
    if not corpus:
        raise ConfigError(f"{args.corpus}: no text (one passage per line expected)")
    config = SelectiveMaskConfig(threshold=args.threshold, rule=args.rule, mask_rate=args.mask_rate,
                                 max_length=args.max_length, tagger_steps=args.tagger_steps, seed=args.seed)
    classifier, tok = load_model(args.classifier, task="sequence-classification")
    encoder = load_model(args.encoder, task="base")[0] if args.encoder else classifier
    rows = _labelled_rows(args)[:args.max_sentences]
    imp = token_importance(classifier, tok, [r["text"] for r in rows], [r["label"] for r in rows], config)
    tagger = TokenTagger(encoder)
    out = Path(args.out)
    tag = train_tagger(tagger, tok, imp, out / "_tagger_train", config, progress=not args.no_progress)
    tagger.save(out / "tagger")
    masked = selective_masks(tagger, tok, corpus, config)
    save_masked(masked, out / "masked")
    labelled = sum(len(x) for x in imp.important)
    summary = {"config": config.to_dict(), "labelled_sentences": len(imp.ids), "sentences_seen": imp.sentences_seen,
               "important_share": sum(map(sum, imp.important)) / max(labelled, 1),
               "tagger_train_accuracy": tag.train_accuracy, "stats": masked.stats,
               "flops": {"labelling": imp.flops, "tagger": tag.flops, "tagging": masked.flops}}
    write_json(out / "selective_mask.json", summary)
    s = masked.stats
    print(f"labelled {len(imp.ids)} of {imp.sentences_seen} sentences ({100 * summary['important_share']:.1f}% of "
          f"tokens important); tagger accuracy {100 * tag.train_accuracy:.1f}%")
    print(f"masked {s['sequences']} passages: {100 * s['mask_rate']:.1f}% of tokens ({100 * s['share_mask']:.0f}% "
          f"[MASK], {100 * s['share_random']:.0f}% random, {100 * s['share_kept']:.0f}% kept) -> {out / 'masked'}")


def add_parser(sub: Any) -> None:
    """Register ``plmkit pretrain`` and ``plmkit selective-mask``."""
    from .corpus import CORPORA
    from .knowledge_inheritance import SCHEDULES
    from .models import FAMILIES, SIZES

    p = sub.add_parser("pretrain", help="pretrain a model from scratch on English text (optionally with a KI teacher); "
                                        "rerun the same command to resume")
    p.add_argument("--family", choices=FAMILIES, default="bert", help="bert (masked LM) or llama (causal LM)")
    p.add_argument("--size", choices=list(SIZES), default="s", help="named size (default s)")
    p.add_argument("--corpus", choices=CORPORA, default="english", help="text corpus (default english)")
    p.add_argument("--max-chars", type=int, default=None, help="use only this many characters of the corpus")
    p.add_argument("--block-size", type=int, default=128, help="tokens per packed block (default 128)")
    p.add_argument("--validation-fraction", type=float, default=0.05,
                   help="share of documents held out for the validation loss (default 0.05)")
    p.add_argument("--tokenizer", default=None,
                   help="train (a new vocabulary on the corpus), minilm, smollm2 or a tokenizer folder (default: "
                        "the teacher's, else train)")
    p.add_argument("--vocab-size", type=int, default=8192, help="vocabulary of a trained tokenizer (default 8192)")
    p.add_argument("--steps", type=int, default=1000, help="optimizer steps (default 1000)")
    p.add_argument("--batch-size", type=int, default=32, help="blocks per step (default 32)")
    p.add_argument("--lr", type=float, default=5e-4, help="peak learning rate (default 5e-4)")
    p.add_argument("--warmup-steps", type=int, default=50, help="linear warm-up steps (default 50)")
    p.add_argument("--eval-every", type=int, default=100,
                   help="validation loss and a kept checkpoint every N steps (default 100)")
    p.add_argument("--teacher", default=None, help="--out folder of a smaller pretrained model: Knowledge Inheritance")
    p.add_argument("--ki", choices=SCHEDULES, default="linear", help="KD weight schedule (default linear)")
    p.add_argument("--ki-steps", type=int, default=1000, help="step where the KD weight reaches 0 (default 1000)")
    p.add_argument("--temperature", type=float, default=2.0, help="distillation temperature (default 2)")
    p.add_argument("--alpha", type=float, default=0.5, help="KD weight of the constant schedule (default 0.5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights, data order and masks (default 0)")
    p.add_argument("--out", required=True, help="run folder: checkpoints/, metrics.jsonl, model/, tokenizer/")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(fn=_cmd_pretrain)

    s = sub.add_parser("selective-mask", help="selective masking: label important tokens with a fine-tuned "
                                              "classifier, train a tagger, write a masked in-domain corpus")
    s.add_argument("--classifier", required=True, help="fine-tuned sequence classifier folder (with its tokenizer)")
    s.add_argument("--corpus", required=True, help="in-domain text file, one passage per line")
    s.add_argument("--task", default="topics4", help="plmkit task whose training split is labelled (default topics4)")
    s.add_argument("--labelled", default=None, help="JSON lines of {text, label} to label instead of --task")
    s.add_argument("--encoder", default=None, help="encoder of the tagger (default: the classifier's own)")
    s.add_argument("--rule", choices=("reference", "delta"), default="reference",
                   help="buffer rule (default reference)")
    s.add_argument("--threshold", type=float, default=0.01, help="the rule's threshold on P(gold) (default 0.01)")
    s.add_argument("--mask-rate", type=float, default=0.15, help="at most this share of tokens masked (default 0.15)")
    s.add_argument("--max-length", type=int, default=128, help="tokens per passage (default 128)")
    s.add_argument("--max-sentences", type=int, default=None, help="label at most this many sentences")
    s.add_argument("--tagger-steps", type=int, default=200, help="tagger training steps (default 200)")
    s.add_argument("--seed", type=int, default=0, help="seed of the tagger and the 80/10/10 draws (default 0)")
    s.add_argument("--out", required=True,
                   help="folder for masked/ (a datasets folder), tagger/ and selective_mask.json")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.set_defaults(fn=_cmd_selective_mask)
