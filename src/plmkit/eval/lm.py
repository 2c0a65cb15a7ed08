"""Language-model evaluation: perplexity over real text and next-token (cloze) accuracy."""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch
from torch.nn import functional as F


def perplexity(model: torch.nn.Module, batches: Iterable[dict[str, torch.Tensor]]) -> float:
    """exp(mean next-token negative log-likelihood) over every non-padding target token."""
    total, count = 0.0, 0
    with torch.no_grad():
        for b in batches:
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1].float()
            target = b["input_ids"][:, 1:]
            keep = b["attention_mask"][:, 1:].bool()
            nll = F.cross_entropy(logits[keep], target[keep], reduction="sum")
            total += float(nll)
            count += int(keep.sum())
    return math.exp(total / max(count, 1))


def next_token_accuracy(model: torch.nn.Module, tokenizer, prompts: Sequence[str], answers: Sequence[str],
                        batch_size: int = 16) -> float:
    """Share of prompts whose greedy next token is the first token of `` answer``."""
    if len(prompts) != len(answers):
        raise ValueError("prompts and answers differ in length")
    hits = 0
    with torch.no_grad():
        for i in range(0, len(prompts), batch_size):
            enc = tokenizer(list(prompts[i:i + batch_size]), return_tensors="pt", padding=True)
            logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
            mask = enc["attention_mask"]
            last = (mask.sum(1) - 1) if tokenizer.padding_side == "right" else torch.full((len(mask),), mask.shape[1] - 1)
            pred = logits[torch.arange(len(last)), last].argmax(-1)
            for p, a in zip(pred.tolist(), answers[i:i + batch_size]):
                hits += p == tokenizer(" " + a.strip(), add_special_tokens=False)["input_ids"][0]
    return hits / max(len(prompts), 1)
