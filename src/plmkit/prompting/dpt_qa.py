"""Extractive QA with DPT: the discriminator's replaced-token-detection head tags the answer span's tokens as
"original" and every other passage token as "replaced"; the predicted answer is the span of at most
``max_answer_tokens`` that maximises the summed "original" logits. The baseline is a start/end span head
(``AutoModelForQuestionAnswering``) fine-tuned on the same encoder. Scored by exact match and token F1.

>>> from plmkit.data.geonames import fact_passages
>>> rows = fact_passages()                                                 # question, passage, answer, ...
>>> tagger = SpanTagger(discriminator)
>>> train_span_tagger(tagger, tok, rows[:64], "runs/qa")                   # doctest: +SKIP
>>> span_scores(predict_spans(tagger, tok, rows[64:128]), rows[64:128])     # {"exact_match", "f1"}
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..device import model_device
from ..errors import ConfigError
from ..train.loop import TuneConfig
from .dpt import rtd_logits


class SpanTagger(nn.Module):
    """A discriminator with one learnable bias: ``forward`` gives (B, T) logits of "original" (answer) tokens."""

    def __init__(self, discriminator: nn.Module):
        super().__init__()
        self.discriminator = discriminator
        self.bias = nn.Parameter(torch.zeros(()))

    @property
    def config(self):
        return self.discriminator.config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        extra = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        return self.bias - rtd_logits(self.discriminator, input_ids=input_ids, attention_mask=attention_mask,
                                      **extra).float()


def encode_span(tokenizer, row: dict, max_length: int = 192) -> dict:
    """Question first, passage second, neither cut (a pair longer than ``max_length`` is an error);
    ``passage_mask`` marks passage tokens, ``answer_mask`` the tokens overlapping the gold answer."""
    enc = tokenizer(row["question"], row["passage"], return_offsets_mapping=True)
    seq = enc.sequence_ids()
    if 1 not in seq or len(enc["input_ids"]) > max_length:
        raise ConfigError(f"max_length {max_length} cannot hold the question and passage; raise it")
    start, end = row["answer_start"], row["answer_start"] + len(row["answer"])
    passage = [int(s == 1) for s in seq]
    answer = [int(s == 1 and o[0] < end and o[1] > start) for s, o in zip(seq, enc["offset_mapping"])]
    if not any(answer):
        raise ConfigError(f"the answer '{row['answer']}' has no token in the encoded passage")
    out = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
    return {**out, "passage_mask": passage, "answer_mask": answer, "offsets": [list(o) for o in enc["offset_mapping"]]}


def _pad(tokenizer, recs: list[dict]) -> dict:
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in recs[0]]
    out = tokenizer.pad([{k: r[k] for k in keys} for r in recs], return_tensors="pt")
    width = out["input_ids"].shape[1]
    for k in ("passage_mask", "answer_mask"):
        if k in recs[0]:
            out[k] = torch.tensor([r[k] + [0] * (width - len(r[k])) for r in recs])
    return out


def span_tag_loss(original_logits: torch.Tensor, passage_mask: torch.Tensor, answer_mask: torch.Tensor) -> torch.Tensor:
    """BCE over passage tokens: answer tokens original (1), the rest replaced (0)."""
    where = passage_mask.bool()
    return F.binary_cross_entropy_with_logits(original_logits[where], answer_mask[where].float())


def _spans(allowed: np.ndarray, max_tokens: int):
    """(start, end) inclusive of every run of at most ``max_tokens`` ``allowed`` positions, in order."""
    for a in np.flatnonzero(allowed):
        for b in range(a, min(a + max_tokens, len(allowed))):
            if not allowed[b]:
                break
            yield int(a), b


def best_span(scores: np.ndarray, allowed: np.ndarray, max_tokens: int) -> tuple[int, int]:
    """(start, end) inclusive over ``allowed`` positions maximising the summed ``scores`` (at most ``max_tokens``);
    the first of equal spans."""
    total = np.concatenate([[0.0], np.cumsum(scores)])
    return max(_spans(allowed, max_tokens), key=lambda ab: total[ab[1] + 1] - total[ab[0]], default=(0, 0))


@dataclass(frozen=True)
class SpanConfig(TuneConfig):
    lr: float = 5e-5
    max_length: int = 192
    max_answer_tokens: int = 8


def train_span_tagger(tagger: SpanTagger, tokenizer, rows: Sequence[dict], out_dir: str | Path,
                      config: SpanConfig = SpanConfig(), *, seed: int = 0):
    """Tune the whole discriminator (and the bias) with :func:`span_tag_loss` through plmkit.train."""
    from ..train import train

    data = [{k: v for k, v in encode_span(tokenizer, r, config.max_length).items() if k != "offsets"} for r in rows]

    def loss_fn(model: nn.Module, batch: dict) -> torch.Tensor:
        passage, answer = batch.pop("passage_mask"), batch.pop("answer_mask")
        return span_tag_loss(model(**batch), passage, answer)

    tagger.train()
    result = train(tagger, data, config.train_config(out_dir, seed), loss_fn, collate_fn=lambda b: _pad(tokenizer, b))
    tagger.eval()
    return result


@torch.no_grad()
def predict_spans(model: nn.Module, tokenizer, rows: Sequence[dict], *, max_length: int = 192,
                  max_answer_tokens: int = 8, batch_size: int = 16) -> list[str]:
    """Predicted answer texts: a :class:`SpanTagger` by summed original logits, or a QA model
    (``start_logits`` / ``end_logits``) by its best start + end pair."""
    model.eval()
    device = model_device(model)
    preds: list[str] = []
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        recs = [encode_span(tokenizer, r, max_length) for r in chunk]
        batch = {k: v.to(device) for k, v in _pad(tokenizer, recs).items() if k not in ("passage_mask", "answer_mask")}
        if isinstance(model, SpanTagger):
            scores = model(**batch).cpu().numpy()
        else:
            out = model(**batch)
            scores = (out.start_logits.float().cpu().numpy(), out.end_logits.float().cpu().numpy())
        for j, (r, rec) in enumerate(zip(chunk, recs)):
            allowed = np.array(rec["passage_mask"], bool)
            if isinstance(model, SpanTagger):
                a, b = best_span(scores[j][:len(allowed)], allowed, max_answer_tokens)
            else:
                a, b = _best_start_end(scores[0][j][:len(allowed)], scores[1][j][:len(allowed)], allowed,
                                       max_answer_tokens)
            preds.append(r["passage"][rec["offsets"][a][0]:rec["offsets"][b][1]])
    return preds


def _best_start_end(start: np.ndarray, end: np.ndarray, allowed: np.ndarray, max_tokens: int) -> tuple[int, int]:
    return max(_spans(allowed, max_tokens), key=lambda ab: start[ab[0]] + end[ab[1]], default=(0, 0))


def _tokens(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def span_scores(predictions: Sequence[str], rows: Sequence[dict]) -> dict[str, float]:
    """Exact match and token F1 (SQuAD-style: lower-cased word tokens) against the gold answers."""
    em, f1 = [], []
    for p, r in zip(predictions, rows):
        pt, gt = _tokens(p), _tokens(r["answer"])
        em.append(float(pt == gt))
        common = sum((Counter(pt) & Counter(gt)).values())
        f1.append(0.0 if common == 0 else 2 * common / (len(pt) + len(gt)))
    return {"exact_match": float(np.mean(em)), "f1": float(np.mean(f1)), "n": len(em)}


def train_span_head(model: nn.Module, tokenizer, rows: Sequence[dict], out_dir: str | Path,
                    config: SpanConfig = SpanConfig(), *, seed: int = 0):
    """The baseline: fine-tune a ``*ForQuestionAnswering`` model's start/end head and encoder on ``rows``."""
    from ..train import train

    data = []
    for r in rows:
        rec = encode_span(tokenizer, r, config.max_length)
        pos = [i for i, a in enumerate(rec["answer_mask"]) if a]
        data.append({**{k: rec[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in rec},
                     "start_positions": pos[0], "end_positions": pos[-1]})

    def collate(b: list[dict]) -> dict:
        out = _pad(tokenizer, b)
        for k in ("start_positions", "end_positions"):
            out[k] = torch.tensor([x[k] for x in b])
        return out

    model.train()
    result = train(model, data, config.train_config(out_dir, seed), collate_fn=collate)
    model.eval()
    return result


def split_by_country(rows: Sequence[dict], n_train: int, n_test: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """``n_train`` / ``n_test`` questions whose countries do not overlap (seeded)."""
    countries = sorted({r["country"] for r in rows})
    order = np.random.default_rng(seed).permutation(len(countries))
    cut = len(countries) // 2
    train_c = {countries[i] for i in order[:cut]}
    train = [r for r in rows if r["country"] in train_c]
    test = [r for r in rows if r["country"] not in train_c]
    rng = np.random.default_rng(seed + 1)
    pick = lambda xs, n: [xs[i] for i in sorted(rng.permutation(len(xs))[:n])]  # noqa: E731
    return pick(train, n_train), pick(test, n_test)


def compare_on_fact_passages(discriminator: nn.Module, tokenizer, *, encoder: str = "minilm", n_train: int = 64,
                             n_test: int = 200, seeds: Sequence[int] = (0, 1, 2), config: SpanConfig = SpanConfig(),
                             progress: bool = False) -> list[dict]:
    """Per seed (the country split and the training): DPT span tagging on a copy of ``discriminator`` and a
    start/end head on ``encoder``, trained on the same questions, scored on the same unseen countries.
    Returns ``[{"seed", "dpt": {...}, "span_head": {...}, "n_train", "n_test"}]``."""
    import copy
    import tempfile

    from tqdm.auto import tqdm

    from ..assets import load_model
    from ..data.geonames import fact_passages

    rows, runs = fact_passages(), []
    for seed in tqdm(list(seeds), desc="span QA", disable=not progress):
        train, test = split_by_country(rows, n_train, n_test, seed=seed)
        with tempfile.TemporaryDirectory() as tmp:
            tagger = SpanTagger(copy.deepcopy(discriminator))
            train_span_tagger(tagger, tokenizer, train, tmp, config, seed=seed)
            d = span_scores(predict_spans(tagger, tokenizer, test, max_length=config.max_length,
                                          max_answer_tokens=config.max_answer_tokens), test)
            del tagger
            head, _ = load_model(encoder, task="question-answering", seed=seed)
            train_span_head(head, tokenizer, train, Path(tmp) / "head", config, seed=seed)
            h = span_scores(predict_spans(head, tokenizer, test, max_length=config.max_length,
                                          max_answer_tokens=config.max_answer_tokens), test)
        runs.append({"seed": seed, "dpt": d, "span_head": h, "n_train": len(train), "n_test": len(test)})
    return runs


def qa_table(runs: Sequence[dict], title: str) -> dict:
    """A report table of :func:`compare_on_fact_passages` runs: EM and F1, mean (std) over seeds."""
    def ms(xs: list[float]) -> str:
        return f"{100 * np.mean(xs):.1f} ({100 * np.std(xs, ddof=1) if len(xs) > 1 else 0:.1f})"

    return {"title": title, "columns": ["method", "exact match %", "token F1 %"],
            "rows": [[name, ms([r[key]["exact_match"] for r in runs]), ms([r[key]["f1"] for r in runs])]
                     for key, name in (("dpt", "DPT span tagging (RTD head)"), ("span_head", "start/end head"))]}
