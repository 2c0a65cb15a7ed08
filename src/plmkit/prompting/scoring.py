"""Prompt-based classification with a language model: score each class's label words (or sequences) in the
template's blank, and fine-tune with the LM loss on the gold verbalization.

Three kinds of model fill the blank differently:

- ``causal`` (LLaMA, GPT-2 ...): the blank ends the prompt; a label's score is the summed log-probability of its
  tokens after the prompt. The prompt is run once and its KV cache reused by every label.
- ``seq2seq`` (T5): the encoder reads the template with a sentinel in the blank; the decoder's target is the
  sentinel followed by the label's tokens.
- ``masked`` (BERT-style with an MLM head): the blank is one mask token; a label's score is the log-probability
  of its word's first token there (LM-BFF's single-token verbalizers).

A label word that starts with a letter or digit follows the template after one space ("It was" + " great");
one that starts with punctuation attaches to it ("It was" + ". Thanks."); one that starts with a space is
taken as it is.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..data.tasks import Row
from ..device import model_device
from ..errors import ConfigError
from ..train.loop import TuneConfig
from .prompts import Prompt

KINDS = ("causal", "seq2seq", "masked")


def model_kind(model: nn.Module) -> str:
    """``causal``, ``seq2seq`` or ``masked``, from the model's config."""
    from .. import arch

    config = model.config
    if getattr(config, "is_encoder_decoder", False):
        return "seq2seq"
    return "causal" if arch.is_causal(model) else "masked"


def continuation(word: str) -> str:
    """The text that follows the template's ``before`` part for a label word; a word that already starts with
    whitespace is taken verbatim (AutoSeq stores the sequences it found that way)."""
    if word[:1].isspace():
        return word
    return " " + word if word[:1].isalnum() else word


def sentinel(tokenizer) -> str:
    """The blank of a seq2seq model: T5's ``<extra_id_0>``, else the tokenizer's mask token."""
    tid = tokenizer.convert_tokens_to_ids("<extra_id_0>")
    token = "<extra_id_0>" if tid is not None and tid != tokenizer.unk_token_id else tokenizer.mask_token
    if token is None:
        raise ConfigError("the seq2seq tokenizer has no sentinel (<extra_id_0>) or mask token for the blank")
    return token


def _truncate(tokenizer, text: str, max_tokens: int) -> str:
    """``text`` cut after its first ``max_tokens`` tokens (at a token boundary of the original string)."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    if len(enc["input_ids"]) <= max_tokens:
        return text
    return text[:enc["offset_mapping"][max_tokens - 1][1]]


@dataclass(frozen=True)
class Encoded:
    """Token ids of one prompt: ``source`` (what the model reads) and, per label, its ``targets``."""

    source: list[int]
    targets: list[list[int]]
    mask_index: int | None = None  # masked kind: where the blank is


def encode(tokenizer, prompt: Prompt, text: str, kind: str, max_length: int = 128,
           words: Sequence[str] | None = None) -> Encoded:
    """The ids a ``kind`` model reads for ``text`` in ``prompt`` and the target ids of each label word."""
    words = list(words if words is not None else prompt.label_words)
    conts = [continuation(w) for w in words]
    if kind == "causal":
        targets = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in conts]
        budget = max_length - max(map(len, targets)) - len(tokenizer(prompt.lead + prompt.before)["input_ids"])
        source = tokenizer(prompt.prefix(_truncate(tokenizer, text, max(1, budget))))["input_ids"]
        return Encoded(source, targets)
    if kind == "seq2seq":
        blank = sentinel(tokenizer)
        targets = [tokenizer(blank + c)["input_ids"] for c in conts]
        shell = tokenizer(prompt.lead + prompt.before + " " + blank + prompt.after)["input_ids"]
        text = _truncate(tokenizer, text, max(1, max_length - len(shell)))
        return Encoded(tokenizer(prompt.prefix(text) + " " + blank + prompt.after)["input_ids"], targets)
    if kind == "masked":
        if tokenizer.mask_token is None:
            raise ConfigError("a masked LM needs a tokenizer with a mask token")
        first = [_first_word_token(tokenizer, c) for c in conts]
        if any(not f for f in first):
            raise ConfigError(f"a label word tokenizes to nothing: {words}")
        shell = tokenizer(prompt.lead + prompt.before + " " + tokenizer.mask_token + prompt.after)["input_ids"]
        text = _truncate(tokenizer, text, max(1, max_length - len(shell)))
        source = tokenizer(prompt.prefix(text) + " " + tokenizer.mask_token + prompt.after)["input_ids"]
        return Encoded(source, first, source.index(tokenizer.mask_token_id))
    raise ConfigError(f"unknown model kind '{kind}'; choose from {', '.join(KINDS)}")


def _first_word_token(tokenizer, text: str) -> list[int]:
    """The first token of ``text`` that is not whitespace alone (a tokenizer may spell the space as a token)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    while ids and not tokenizer.decode(ids[:1]).strip():
        ids = ids[1:]
    return ids[:1]


# --- scoring ------------------------------------------------------------------------------------------------

@torch.no_grad()
def sequence_logprobs(model: nn.Module, prefixes: Sequence[Sequence[int]],
                      continuations: Sequence[Sequence[int]], kind: str | None = None) -> np.ndarray:
    """``(len(prefixes), len(continuations))``: log P(continuation | prefix), summed over its tokens.

    causal: each prefix runs once and its KV cache serves every continuation; seq2seq: the prefix is the
    encoder's input and each continuation the decoder's target (from the decoder start token)."""
    kind = kind or model_kind(model)
    if kind == "masked":
        raise ConfigError("sequence_logprobs needs a causal or seq2seq model; a masked LM scores one blank token")
    if any(len(c) == 0 for c in continuations):
        raise ConfigError("an empty continuation has no probability to score")
    model.eval()
    device = model_device(model)
    width = max(map(len, continuations))
    conts = torch.zeros(len(continuations), width, dtype=torch.long, device=device)
    valid = torch.zeros_like(conts, dtype=torch.bool)
    for i, c in enumerate(continuations):
        conts[i, :len(c)] = torch.tensor(list(c))
        valid[i, :len(c)] = True
    out = np.zeros((len(prefixes), len(continuations)))
    for p, prefix in enumerate(prefixes):
        logp = _continuation_logprobs(model, list(prefix), conts, valid, kind)
        out[p] = (logp.gather(-1, conts[..., None])[..., 0] * valid).sum(-1).double().cpu().numpy()
    return out


def _continuation_logprobs(model: nn.Module, prefix: list[int], conts: torch.Tensor, valid: torch.Tensor,
                           kind: str) -> torch.Tensor:
    """``(S, width, V)`` next-token log-probabilities at each continuation position."""
    device, n = conts.device, conts.shape[0]
    ids = torch.tensor([prefix], device=device)
    if kind == "seq2seq":
        enc = model.get_encoder()(input_ids=ids)
        start = torch.full((n, 1), model.config.decoder_start_token_id, device=device)
        dec = torch.cat([start, conts[:, :-1]], 1)
        hidden = enc.last_hidden_state.expand(n, -1, -1)
        logits = model(encoder_outputs=(hidden,), decoder_input_ids=dec,
                       decoder_attention_mask=torch.cat([torch.ones_like(start), valid[:, :-1].long()], 1)).logits
        return logits.float().log_softmax(-1)
    first = model(input_ids=ids, use_cache=conts.shape[1] > 1)
    head = first.logits[:, -1:].float().log_softmax(-1).expand(n, -1, -1)
    if conts.shape[1] == 1:
        return head
    cache = first.cache
    cache.batch_repeat_interleave(n)
    mask = torch.cat([torch.ones(n, len(prefix), dtype=torch.long, device=device), valid[:, :-1].long()], 1)
    rest = model(input_ids=conts[:, :-1], attention_mask=mask, cache=cache).logits
    return torch.cat([head, rest.float().log_softmax(-1)], 1)


@torch.no_grad()
def score_labels(model: nn.Module, tokenizer, prompt: Prompt, texts: Sequence[str], *,
                 words: Sequence[str] | None = None, max_length: int = 128, batch_size: int = 32) -> np.ndarray:
    """``(len(texts), n_labels)`` log-probabilities of each label word (or sequence) in each text's blank."""
    kind = model_kind(model)
    if kind == "masked":
        return _masked_scores(model, tokenizer, prompt, texts, words, max_length, batch_size)
    encs = [encode(tokenizer, prompt, text, kind, max_length, words) for text in texts]
    if not encs:
        return np.zeros((0, len(words if words is not None else prompt.label_words)))
    # the label targets depend on the words only, so one call scores every text against them
    return sequence_logprobs(model, [e.source for e in encs], encs[0].targets, kind)


def _masked_scores(model, tokenizer, prompt, texts, words, max_length, batch_size) -> np.ndarray:
    device = model_device(model)
    model.eval()
    out = []
    for i in range(0, len(texts), batch_size):
        encs = [encode(tokenizer, prompt, t, "masked", max_length, words) for t in texts[i:i + batch_size]]
        batch = tokenizer.pad([{"input_ids": e.source} for e in encs], return_tensors="pt").to(device)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        at = logits[torch.arange(len(encs)), torch.tensor([e.mask_index for e in encs])].float().log_softmax(-1)
        ids = torch.tensor([t[0] for t in encs[0].targets], device=device)
        out.append(at[:, ids].cpu().numpy())
    return np.concatenate(out).astype(np.float64)


def predict(model: nn.Module, tokenizer, prompt: Prompt, texts: Sequence[str], **kw) -> np.ndarray:
    """The class whose label words score highest, per text."""
    return score_labels(model, tokenizer, prompt, texts, **kw).argmax(1)


def accuracy(model: nn.Module, tokenizer, prompt: Prompt, rows: Sequence[Row], **kw) -> float:
    if not rows:
        raise ConfigError("no rows to score")
    preds = predict(model, tokenizer, prompt, [r["text"] for r in rows], **kw)
    return float(np.mean(preds == np.array([r["label"] for r in rows])))


# --- prompt-based fine-tuning -------------------------------------------------------------------------------

@dataclass(frozen=True)
class PromptTuneConfig(TuneConfig):
    """Prompt-based fine-tuning: the whole model, the LM loss on the gold label's words."""


def lm_records(tokenizer, prompt: Prompt, rows: Sequence[Row], kind: str, max_length: int = 128,
               words: Sequence[str] | None = None) -> list[dict]:
    """``{"input_ids", "labels"}`` per row: the LM loss falls on the gold label's tokens only."""
    recs = []
    for r in rows:
        e = encode(tokenizer, prompt, r["text"], kind, max_length, words)
        gold = e.targets[int(r["label"])]
        if kind == "causal":
            recs.append({"input_ids": e.source + gold, "labels": [-100] * len(e.source) + gold})
        elif kind == "seq2seq":
            recs.append({"input_ids": e.source, "labels": gold})
        else:
            labels = [-100] * len(e.source)
            labels[e.mask_index] = gold[0]
            recs.append({"input_ids": e.source, "labels": labels})
    return recs


def lm_collate(tokenizer):
    """Pad ``lm_records``: inputs with the tokenizer's pad id, labels with -100 (they may differ in length)."""
    def collate(batch: list[dict]) -> dict:
        out = tokenizer.pad([{"input_ids": b["input_ids"]} for b in batch], return_tensors="pt")
        width = max(len(b["labels"]) for b in batch)
        out["labels"] = torch.tensor([b["labels"] + [-100] * (width - len(b["labels"])) for b in batch])
        return out

    return collate


def prompt_finetune(model: nn.Module, tokenizer, prompt: Prompt, rows: Sequence[Row], out_dir: str | Path,
                    config: PromptTuneConfig = PromptTuneConfig(), *, words: Sequence[str] | None = None,
                    seed: int = 0):
    """Fine-tune ``model`` on ``rows`` with the LM loss on each gold verbalization (through :func:`plmkit.train`).

    The tokenizer pads on the right here; the model is left in eval mode."""
    from ..train import train

    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    data = lm_records(tokenizer, prompt, rows, model_kind(model), config.max_length, words)
    model.train()
    result = train(model, data, config.train_config(out_dir, seed), collate_fn=lm_collate(tokenizer))
    model.eval()
    return result
