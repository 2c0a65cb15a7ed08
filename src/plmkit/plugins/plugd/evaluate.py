"""Scoring the tasks with the document concatenated, plugged in, or absent."""
from __future__ import annotations

import contextlib
from typing import Any, Sequence

import torch
from torch import nn

from ...device import model_device
from .model import plugged
from .tasks import normalize, with_document


def _left_padded(tokenizer: Any, texts: Sequence[str], device: torch.device) -> dict[str, torch.Tensor]:
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        batch = tokenizer(list(texts), padding=True, add_special_tokens=False, return_tensors="pt")
    finally:
        tokenizer.padding_side = side
    return {"input_ids": batch["input_ids"].to(device), "attention_mask": batch["attention_mask"].to(device)}


def _context(model: nn.Module, plugins: Sequence[torch.Tensor] | None) -> Any:
    return plugged(model, plugins) if plugins is not None else contextlib.nullcontext()


@torch.no_grad()
def generate_answers(model: nn.Module, tokenizer: Any, prompts: Sequence[str],
                     plugins: Sequence[torch.Tensor] | None = None, *, max_new_tokens: int = 8,
                     batch_size: int = 16) -> list[str]:
    """Greedy answers (up to the first newline) to ``prompts``, with ``plugins[i]`` plugged for prompt i."""
    device = model_device(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out: list[str] = []
    model.eval()
    for i in range(0, len(prompts), batch_size):
        batch = _left_padded(tokenizer, prompts[i:i + batch_size], device)
        with _context(model, None if plugins is None else plugins[i:i + batch_size]):
            ids = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
        new = ids[:, batch["input_ids"].shape[1]:]
        out += [t.split("\n")[0].strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
    return out


@torch.no_grad()
def true_false(model: nn.Module, tokenizer: Any, prompts: Sequence[str],
               plugins: Sequence[torch.Tensor] | None = None, *, batch_size: int = 16) -> list[bool]:
    """For each prompt, whether " True" scores above " False" as the next token."""
    device = model_device(model)
    yes, no = (tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in (" True", " False"))
    out: list[bool] = []
    model.eval()
    for i in range(0, len(prompts), batch_size):
        batch = _left_padded(tokenizer, prompts[i:i + batch_size], device)
        with _context(model, None if plugins is None else plugins[i:i + batch_size]):
            logits = model(**batch).logits[:, -1]
        out += (logits[:, yes] > logits[:, no]).tolist()
    return out


def accuracy(model: nn.Module, tokenizer: Any, task: str, rows: Sequence[dict], texts: dict[str, str],
             mode: str, plugins: dict[str, torch.Tensor] | None = None, *, batch_size: int = 16) -> dict[str, Any]:
    """Accuracy (%) on ``rows`` of ``task`` with the document concatenated (``concat``), as its plugin
    (``plugd``, from ``plugins`` by document id) or absent (``closed``)."""
    if mode == "concat":
        prompts = [with_document(r, texts[r["doc"]]) for r in rows]
    else:
        prompts = [r["prompt"] for r in rows]
    plugs = [plugins[r["doc"]] for r in rows] if mode == "plugd" else None
    if task == "qa":
        said = generate_answers(model, tokenizer, prompts, plugs, batch_size=batch_size)
        right = [normalize(s) == normalize(r["answer"]) for s, r in zip(said, rows)]
    else:
        said = true_false(model, tokenizer, prompts, plugs, batch_size=batch_size)
        right = [s == r["label"] for s, r in zip(said, rows)]
    return {"accuracy": 100.0 * sum(right) / max(1, len(rows)), "n": len(rows),
            "examples": [{"prompt": p[-120:], "said": s, "right": ok}
                         for p, s, ok in list(zip(prompts, said, right))[:3]]}
