"""Tokenised batches of real text for forward passes (calibration, analysis, evaluation)."""
from __future__ import annotations

from typing import Iterator, Sequence

import torch


def token_batches(tokenizer, texts: Sequence[str], batch_size: int = 8, max_length: int = 128,
                  device: torch.device | str | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """Yield ``{"input_ids", "attention_mask"}`` batches (padded, truncated to ``max_length``)."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(list(texts[i:i + batch_size]), return_tensors="pt", padding=True, truncation=True,
                        max_length=max_length)
        yield {k: v.to(device) if device is not None else v for k, v in enc.items()
               if k in ("input_ids", "attention_mask")}
