"""Tokenizer measurements: sequence length per character, robustness to perturbations, throughput."""
from __future__ import annotations

import time
from collections import Counter
from typing import Sequence


def count_tokens(tokenizer, texts: Sequence[str], batch_size: int = 256) -> int:
    """Tokens over ``texts``, special tokens excluded."""
    n = 0
    for i in range(0, len(texts), batch_size):
        n += sum(len(ids) for ids in tokenizer(list(texts[i:i + batch_size]), add_special_tokens=False)["input_ids"])
    return n


def tokens_per_char(tokenizer, texts: Sequence[str]) -> float:
    """Tokens per character (a character-level tokenizer scores 1.0)."""
    return count_tokens(tokenizer, texts) / max(1, sum(len(t) for t in texts))


def perturbation_effect(tokenizer, pairs: Sequence[tuple[str, str]]) -> dict[str, float]:
    """How a tokenizer sees ``(clean, perturbed)`` pairs: the share tokenized identically, and the mean
    number of tokens that differ (multiset difference, both sides, halved)."""
    identical, changed = 0, 0.0
    for clean, noisy in pairs:
        a, b = tokenizer.tokenize(clean), tokenizer.tokenize(noisy)
        identical += a == b
        ca, cb = Counter(a), Counter(b)
        changed += (sum((ca - cb).values()) + sum((cb - ca).values())) / 2
    n = max(1, len(pairs))
    return {"identical": identical / n, "tokens_changed": changed / n, "pairs": len(pairs)}


def throughput(tokenizer, texts: Sequence[str], repeats: int = 1, batch_size: int = 256) -> float:
    """Characters per second tokenized (batched calls, the best of ``repeats`` passes)."""
    chars = sum(len(t) for t in texts)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        count_tokens(tokenizer, texts, batch_size)
        best = min(best, time.perf_counter() - t)
    return chars / best
