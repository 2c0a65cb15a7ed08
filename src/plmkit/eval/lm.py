"""Language-model evaluation: perplexity over real text and next-token (cloze) accuracy."""
from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from ..device import model_device, to_device, unwrap_model


def perplexity(model: torch.nn.Module, batches: Iterable[dict[str, torch.Tensor]]) -> float:
    """exp(mean next-token negative log-likelihood) over every non-padding target token.
    Batches are moved to the model's device."""
    total, count = 0.0, 0
    device = model_device(model)
    with torch.no_grad():
        for b in batches:
            b = to_device({"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]}, device)
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1].float()
            target = b["input_ids"][:, 1:]
            keep = b["attention_mask"][:, 1:].bool()
            nll = F.cross_entropy(logits[keep], target[keep], reduction="sum")
            total += float(nll)
            count += int(keep.sum())
    return math.exp(total / max(count, 1))


def next_token_accuracy(model: torch.nn.Module, tokenizer, prompts: Sequence[str], answers: Sequence[str],
                        batch_size: int = 16) -> float:
    """Share of prompts whose greedy next token is the first token of `` answer`` (inputs on the model's device)."""
    if len(prompts) != len(answers):
        raise ValueError("prompts and answers differ in length")
    hits = 0
    device = model_device(model)
    with torch.no_grad():
        for i in range(0, len(prompts), batch_size):
            enc = tokenizer(list(prompts[i:i + batch_size]), return_tensors="pt", padding=True)
            enc = to_device({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}, device)
            logits = model(**enc).logits
            mask = enc["attention_mask"]
            last = (mask.sum(1) - 1) if tokenizer.padding_side == "right" else \
                torch.full((len(mask),), mask.shape[1] - 1, device=device)
            pred = logits[torch.arange(len(last), device=device), last].argmax(-1)
            for p, a in zip(pred.tolist(), answers[i:i + batch_size]):
                hits += p == tokenizer(" " + a.strip(), add_special_tokens=False)["input_ids"][0]
    return hits / max(len(prompts), 1)


def is_causal_lm(model: torch.nn.Module) -> bool:
    """True for generating (causal) LMs, False for masked LMs (wrappers such as DDP are looked through)."""
    return bool(getattr(unwrap_model(model), "can_generate", lambda: False)())


# Families whose LM head is one module mapping hidden states to vocabulary logits.
_ONE_MODULE_MLM_HEADS = ("bert", "roberta", "xlm-roberta")


def lm_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The model's mean LM loss on a collated batch. For a masked LM the vocabulary logits are
    computed only at the masked positions (~15% of tokens): the same value as
    ``model(**batch).loss`` with a ~7x cheaper output projection. Other models, and any wrapped model
    (DDP, FSDP, DeepSpeed: the wrapper's forward is what syncs gradients): ``model(**batch).loss``.
    The direct submodule calls are not autocast by accelerate's forward patch: under mixed precision
    call this inside an autocast (plmkit.train.train does)."""
    from ..arch import base_model, head

    inner = unwrap_model(model)
    if (inner is not model or is_causal_lm(inner)
            or getattr(getattr(inner, "config", None), "model_type", None) not in _ONE_MODULE_MLM_HEADS):
        return model(**batch).loss
    lm_head = head(model)
    if lm_head is None:
        return model(**batch).loss
    hidden = base_model(model)(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask")).last_hidden_state
    keep = batch["labels"] != -100
    return F.cross_entropy(lm_head(hidden[keep]).float(), batch["labels"][keep])


def masked_lm_loss(model: torch.nn.Module, tokenizer, texts: Sequence[str], *, mlm_probability: float = 0.15,
                   seed: int = 0, batch_size: int = 16, max_length: int = 128) -> float:
    """Mean cross-entropy (nats) over masked tokens of ``texts``, BERT-style 80/10/10 masking.

    The masked positions depend only on ``seed`` and the texts, so two models evaluated with the
    same seed are scored on exactly the same masked tokens.
    """
    from transformers import DataCollatorForLanguageModeling

    collate = DataCollatorForLanguageModeling(tokenizer, mlm_probability=mlm_probability, seed=seed)
    ids = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    total, count = 0.0, 0
    device = model_device(model)
    with torch.no_grad():
        for i in range(0, len(ids), batch_size):
            b = to_device(dict(collate([{"input_ids": x} for x in ids[i:i + batch_size]])), device)
            loss = lm_loss(model, b)
            n = int((b["labels"] != -100).sum())
            total += float(loss) * n
            count += n
    return total / max(count, 1)


@torch.no_grad()
def text_nll(model: torch.nn.Module, tokenizer: Any, texts: Sequence[str], *, batch_size: int = 32,
             max_length: int = 128, progress: bool = False, desc: str = "perplexity") -> list[float]:
    """Per text, a causal LM's mean next-token negative log-likelihood over its tokens after the first (exp of it is
    the text's perplexity); NaN for a text of fewer than two tokens. Padding goes on the right, so every text
    keeps the positions it has alone."""
    model.eval()
    device = model_device(model)
    out: list[float] = []
    for i in tqdm(range(0, len(texts), batch_size), desc=desc, disable=not progress):
        enc = tokenizer(list(texts[i:i + batch_size]), truncation=True, max_length=max_length, padding=True,
                        padding_side="right", return_tensors="pt")
        ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        nll = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
        m = (mask[:, 1:] * mask[:, :-1]).float()
        n = m.sum(1)
        out += [float(v) if c > 0 else math.nan for v, c in zip(((nll * m).sum(1) / n.clamp(min=1)).tolist(), n.tolist())]
    return out
