"""Expensive artifacts several recipes need, built once and kept in :mod:`plmkit.cache`.

- :func:`topic_classifier`: MiniLM fine-tuned on real fortune topics (train split only), GELU or ReLU-fied.
- :func:`relufied_lm`: SmolLM2 with ReLU FFN activations after a short LM fine-tune.
- :func:`minilm_mlm`: MiniLM with an MLM head fitted on the frozen encoder (MiniLM ships without one).
- :func:`minilm_discriminator`: MiniLM continued on replaced-token detection as an ``ElectraForPreTraining``
  (no ELECTRA discriminator installs here), its generator :func:`minilm_mlm`.

Each returns ``(model, tokenizer, cache_info)``; record ``cache_info`` in the recipe's results.
Saved in Hugging Face layout with safetensors; the key covers the settings, the data split and the
model's identity, so a change in any of them builds a new entry.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..assets import load_model
from ..cache import cached, model_identity
from ..data.tasks import FORTUNE_TOPICS as TOPICS


@dataclass(frozen=True)
class TopicSplit:
    """Fortune topic classification (4 real categories), split per category into train / validation / test."""

    seed: int = 0
    validation_share: float = 0.15
    test_share: float = 0.2


def fortune_topics(split: TopicSplit = TopicSplit()) -> dict[str, list[dict]]:
    """``{"train", "validation", "test"}`` rows of ``{"text", "label"}``, stratified by category; a text
    filed under several categories is dropped (its label is ambiguous and it would straddle splits)."""
    from ..data.tasks import fortune_topic_rows

    rng = np.random.default_rng(split.seed)
    parts: dict[str, list[dict]] = {"train": [], "validation": [], "test": []}
    rows = fortune_topic_rows(TOPICS)
    for label in range(len(TOPICS)):
        mine = [r for r in rows if r["label"] == label]
        order = rng.permutation(len(mine))
        n_test, n_val = round(split.test_share * len(mine)), round(split.validation_share * len(mine))
        parts["test"] += [mine[i] for i in order[:n_test]]
        parts["validation"] += [mine[i] for i in order[n_test:n_test + n_val]]
        parts["train"] += [mine[i] for i in order[n_test + n_val:]]
    return {k: [v[i] for i in rng.permutation(len(v))] for k, v in parts.items()}


@dataclass(frozen=True)
class ClassifierSettings:
    relu: bool = False  # ReLU FFN activations from the start of fine-tuning
    steps: int = 150
    batch_size: int = 16
    lr: float = 1e-4
    max_length: int = 64
    split: TopicSplit = TopicSplit()
    mixed_precision: str = "auto"  # "auto": plmkit.device.mixed_precision(), resolved before the cache key


def _resolved(settings):
    """``settings`` with ``mixed_precision="auto"`` replaced by this machine's choice (it changes the weights)."""
    from dataclasses import replace

    from ..device import mixed_precision

    return replace(settings, mixed_precision=mixed_precision()) if settings.mixed_precision == "auto" else settings


def topic_classifier(settings: ClassifierSettings, progress: bool = False) -> tuple[Any, Any, dict[str, Any]]:
    """MiniLM fine-tuned on the train split of :func:`fortune_topics` (from the cache when built before)."""
    from ..compress.moefication import relufy
    from ..train.classify import fine_tune_classifier

    settings = _resolved(settings)

    def build(tmp: Path) -> None:
        torch.manual_seed(settings.split.seed)
        model, tok = load_model("minilm", task="sequence-classification", num_labels=len(TOPICS))
        if settings.relu:
            relufy(model)
        t = time.perf_counter()
        res = fine_tune_classifier(model, tok, fortune_topics(settings.split)["train"], tmp / "_train",
                                   steps=settings.steps, batch_size=settings.batch_size, lr=settings.lr,
                                   max_length=settings.max_length, seed=settings.split.seed,
                                   mixed_precision=settings.mixed_precision, progress=progress)
        _discard(tmp / "_train")
        _save(model, tok, tmp, {"relufied": settings.relu, **_fit_summary(res, t)})

    entry = cached("minilm-topic-classifier", asdict(settings), {"model": model_identity("minilm"),
                                                                 "data": "fortunes:" + ",".join(TOPICS)}, build)
    return (*_load(entry.path, "sequence-classification"), _info(entry))


def _fit_summary(res: Any, started: float) -> dict[str, Any]:
    """Training time and first/last logged loss of a cached fine-tune, kept in its metadata."""
    return {"train_seconds": round(time.perf_counter() - started, 1),
            "loss_first": res.losses[0] if res.losses else None,
            "loss_last": res.losses[-1] if res.losses else None}


@dataclass(frozen=True)
class ReluLMSettings:
    """ReLU-fication of SmolLM2: swap SiLU for ReLU, then a short causal-LM fine-tune on English text."""

    steps: int = 40
    batch_size: int = 4
    max_length: int = 128
    lr: float = 2e-4
    corpus_chars: int = 200_000
    seed: int = 0
    mixed_precision: str = "auto"


def relufied_lm(settings: ReluLMSettings, progress: bool = False) -> tuple[Any, Any, dict[str, Any]]:
    """SmolLM2 ReLU-fied and fine-tuned on the even passages of ``english_corpus`` (odd ones stay held out)."""
    from ..compress.moefication import relufy
    from ..data.text import english_corpus
    from ..train import TrainConfig, causal_lm_collate, train

    settings = _resolved(settings)

    def build(tmp: Path) -> None:
        model, tok = load_model("smollm2")
        relufy(model)
        texts = english_corpus(max_chars=settings.corpus_chars, seed=settings.seed)[::2]
        ids = tok(list(texts), truncation=True, max_length=settings.max_length)["input_ids"]
        data = [{"input_ids": e} for e in ids if len(e) > 16]
        model.train()
        t = time.perf_counter()
        res = train(model, data, TrainConfig(out_dir=str(tmp / "_train"), max_steps=settings.steps,
                                             batch_size=settings.batch_size, lr=settings.lr,
                                             warmup_steps=max(1, settings.steps // 10), resume=False,
                                             progress=progress, seed=settings.seed,
                                             mixed_precision=settings.mixed_precision),
                    collate_fn=causal_lm_collate(tok))
        _discard(tmp / "_train")
        _save(model.eval(), tok, tmp, {"relufied": True, **_fit_summary(res, t),
                                       "tokens": settings.steps * settings.batch_size * settings.max_length})

    entry = cached("smollm2-relufied", asdict(settings), {"model": model_identity("smollm2"),
                                                          "data": "english_corpus"}, build)
    return (*_load(entry.path, "causal-lm"), _info(entry))


@dataclass(frozen=True)
class MLMHeadSettings:
    steps: int = 100
    batch_size: int = 16
    max_length: int = 128
    lr: float = 1e-3
    seed: int = 0


def minilm_mlm(settings: MLMHeadSettings, progress: bool = False) -> tuple[Any, Any, dict[str, Any]]:
    """MiniLM with an MLM head fitted on the frozen encoder over :func:`plmkit.knowledge.kepler_run.lm_texts`."""
    from ..knowledge.kepler_run import lm_texts
    from ..train.heads import fit_lm_head

    def build(tmp: Path) -> None:
        torch.manual_seed(settings.seed)
        lm, tok = load_model("minilm", task="masked-lm")
        texts, _ = lm_texts(seed=settings.seed)
        t = time.perf_counter()
        fit_lm_head(lm, tok, texts, tmp / "_train", steps=settings.steps, batch_size=settings.batch_size,
                    lr=settings.lr, max_length=settings.max_length, seed=settings.seed, progress=progress)
        _discard(tmp / "_train")
        _save(lm, tok, tmp, {"head_seconds": round(time.perf_counter() - t, 1)})

    entry = cached("minilm-mlm-head", asdict(settings), {"model": model_identity("minilm"), "data": "lm_texts"},
                   build)
    return (*_load(entry.path, "masked-lm"), _info(entry))


@dataclass(frozen=True)
class DiscriminatorSettings:
    generator: MLMHeadSettings = MLMHeadSettings()
    rtd_steps: int = 300
    batch_size: int = 16
    lr: float = 1e-4
    max_length: int = 64
    corpus_chars: int = 400_000
    heldout_every: int = 10  # every n-th passage of the corpus is held out for the RTD accuracy
    heldout_max: int = 200
    seed: int = 0
    mixed_precision: str = "auto"


def rtd_texts(settings: DiscriminatorSettings) -> tuple[list[str], list[str]]:
    """(train, held-out) passages of ``english_corpus`` for replaced-token detection, split by passage."""
    from ..data.text import english_corpus

    texts = english_corpus(max_chars=settings.corpus_chars, seed=settings.seed)
    held = texts[::settings.heldout_every][:settings.heldout_max]
    return [t for i, t in enumerate(texts) if i % settings.heldout_every], held


def train_discriminator(settings: DiscriminatorSettings, generator: Any, tokenizer: Any, train_dir: Path,
                        progress: bool = False) -> tuple[Any, dict[str, Any]]:
    """MiniLM converted to an ``ElectraForPreTraining`` and trained on replaced-token detection over
    :func:`rtd_texts` (checkpoints in ``train_dir``, so a rerun resumes), the replacements sampled from the frozen
    ``generator``. Returns (discriminator in eval mode, {held-out RTD accuracy before and after, passages, fit})."""
    from ..prompting import dpt

    encoder, _ = load_model("minilm", task="base")
    disc = dpt.discriminator_from_encoder(encoder, seed=settings.seed)
    train, held = rtd_texts(settings)
    kw = dict(max_length=settings.max_length, seed=settings.seed)
    before = dpt.rtd_accuracy(disc, generator, tokenizer, held, **kw)
    t = time.perf_counter()
    res = dpt.rtd_pretrain(disc, generator, tokenizer, train, train_dir,
                           dpt.RTDConfig(steps=settings.rtd_steps, batch_size=settings.batch_size, lr=settings.lr,
                                         max_length=settings.max_length, seed=settings.seed,
                                         mixed_precision=settings.mixed_precision, progress=progress))
    fit = _fit_summary(res, t)
    after = dpt.rtd_accuracy(disc, generator, tokenizer, held, **kw)
    return disc.eval(), {"rtd_before": before, "rtd_after": after, "heldout_passages": len(held),
                         "train_passages": len(train), **fit}


def minilm_discriminator(settings: DiscriminatorSettings, progress: bool = False) -> tuple[Any, Any, dict[str, Any]]:
    """:func:`train_discriminator` with :func:`minilm_mlm` as the generator, from the cache when built before;
    its held-out RTD accuracy before and after is kept in the entry's metadata (``built_with``)."""
    settings = _resolved(settings)
    generator, tok, gen_info = minilm_mlm(settings.generator, progress=progress)

    def build(tmp: Path) -> None:
        disc, meta = train_discriminator(settings, generator, tok, tmp / "_train", progress)
        _discard(tmp / "_train")
        _save(disc, tok, tmp, meta)

    entry = cached("minilm-rtd-discriminator", asdict(settings),
                   {"model": model_identity("minilm"), "data": "english_corpus", "generator": gen_info["key"]}, build)
    return (*_load(entry.path, "auto"), {**_info(entry), "generator": gen_info})


def _discard(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def _save(model, tok, folder: Path, meta: dict[str, Any]) -> None:
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    (folder / "plmkit_artifact.json").write_text(json.dumps(meta, indent=2))


def _load(folder: Path, task: str):
    from ..compress.moefication import relufy

    meta = json.loads((folder / "plmkit_artifact.json").read_text())
    model, tok = load_model(str(folder), task=task)
    if meta.get("relufied"):
        relufy(model)  # the activation swap holds no weights, so it is re-applied on load
    return model.eval(), tok


def _info(entry) -> dict[str, Any]:
    meta = json.loads((entry.path / "plmkit_artifact.json").read_text())
    return {**entry.info(), "built_with": meta}
