"""Editing baselines that change weights: fine-tuning the model on the edit statements."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from ..train import TrainConfig, TrainResult, causal_lm_collate, train


def fine_tune_on_statements(model: torch.nn.Module, tokenizer, statements: Sequence[str], out_dir: str | Path, *,
                            steps: int = 30, batch_size: int = 8, lr: float = 1e-4, chat_prompt: str | None =
                            "Tell me a fact.", seed: int = 0, progress: bool = True) -> TrainResult:
    """Fine-tune a causal LM on the statements (language-modelling loss), in place.

    With a chat template each statement is the assistant's reply to ``chat_prompt``. Runs on
    plmkit's training loop, so ``accelerate launch`` scales it; no checkpoints are kept.
    """
    if getattr(tokenizer, "chat_template", None) and chat_prompt is not None:
        texts = [tokenizer.apply_chat_template([{"role": "user", "content": chat_prompt},
                                                {"role": "assistant", "content": s}], tokenize=False)
                 for s in statements]
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    else:
        ids = tokenizer(list(statements))["input_ids"]
    model.train()
    result = train(model, [{"input_ids": i} for i in ids],
                   TrainConfig(out_dir=str(out_dir), max_steps=steps, batch_size=batch_size, lr=lr,
                               warmup_steps=max(1, steps // 10), resume=False, progress=progress, seed=seed),
                   collate_fn=causal_lm_collate(tokenizer))
    model.eval()
    return result
