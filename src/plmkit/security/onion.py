"""ONION: remove the words whose removal makes a sentence much more fluent to a causal LM.

Each word's suspicion is ``ppl(sentence) - ppl(sentence without the word)``, perplexities from a causal LM
(SmolLM2 here, GPT-2 in the paper); words above a threshold are dropped before the victim reads the text. An
inserted rare word ("cf") raises perplexity sharply and is found; a syntactic trigger has no such word.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

from ..eval.lm import text_nll


def suspicion_scores(model: Any, tokenizer: Any, texts: Sequence[str], *, batch_size: int = 32,
                     progress: bool = False) -> list[list[float]]:
    """Per text, per whitespace word: perplexity of the text minus perplexity without that word (one batch of
    every variant). A one-word text scores 0. ``progress``: a bar over the batches of variants."""
    variants, owner = [], []
    for i, t in enumerate(texts):
        words = t.split()
        variants.append(" ".join(words))  # the same spacing as the variants
        owner.append((i, -1))
        if len(words) > 1:
            for j in range(len(words)):
                variants.append(" ".join(words[:j] + words[j + 1:]))
                owner.append((i, j))
    ppl = [math.exp(v) if not math.isnan(v) else math.nan for v in text_nll(model, tokenizer, variants,
                                                                               batch_size=batch_size,
                                                                               progress=progress, desc="ONION")]
    full = {i: p for (i, j), p in zip(owner, ppl) if j < 0}
    out = [[0.0] * len(t.split()) if len(t.split()) <= 1 else [] for t in texts]
    for (i, j), p in zip(owner, ppl):
        if j >= 0:
            out[i].append(full[i] - p)
    return out


def onion_filter(texts: Sequence[str], scores: Sequence[Sequence[float]], threshold: float) -> list[str]:
    """The texts without the words whose suspicion exceeds ``threshold`` (at least one word is kept)."""
    out = []
    for t, s in zip(texts, scores):
        words = t.split()
        kept = [w for w, x in zip(words, s) if not x > threshold]
        out.append(" ".join(kept) if kept else t)
    return out
