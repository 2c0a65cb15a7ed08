"""BERT-style masking, drawn so that a resumed run masks exactly as the uninterrupted one would have.

A collator that draws masks from the global random stream cannot be resumed exactly: the data loader
collates one batch ahead, so the stream a checkpoint saves has already moved past the next batch's masks.
Here the masks of a batch come from a generator seeded by the run's seed, the optimizer step and the
batch's own token ids, inside the loss: the same batch at the same step gets the same masks on any
process count, before or after a resume, and two processes' different batches get different masks.
"""
from __future__ import annotations

import hashlib
from typing import Any, Callable

import torch

IGNORE = -100


def batch_generator(input_ids: torch.Tensor, step: int, seed: int) -> torch.Generator:
    """A CPU generator determined by ``seed``, ``step`` and the ids' contents."""
    h = hashlib.sha256(input_ids.detach().cpu().numpy().tobytes())
    h.update(f"{seed}:{step}".encode())
    return torch.Generator().manual_seed(int.from_bytes(h.digest()[:8], "big") >> 1)


def special_wrap(tokenizer) -> tuple[list[int], list[int]]:
    """The special ids the tokenizer puts before and after a text (``[CLS]`` / ``[SEP]``, ``<s>``, none)."""
    inner = tokenizer("x", add_special_tokens=False)["input_ids"]
    full = tokenizer("x")["input_ids"]
    start = next(i for i in range(len(full)) if full[i:i + len(inner)] == inner)
    return full[:start], full[start + len(inner):]


def with_specials(tokenizer, ids: list[int]) -> list[int]:
    """``ids`` wrapped in the tokenizer's special tokens, as ``tokenizer(text)`` would return them."""
    prefix, suffix = special_wrap(tokenizer)
    return prefix + list(ids) + suffix


def special_mask(input_ids: torch.Tensor, tokenizer) -> torch.Tensor:
    """True at special tokens (never masked)."""
    ids = set(tokenizer.all_special_ids)
    return torch.isin(input_ids, torch.tensor(sorted(ids), dtype=input_ids.dtype, device=input_ids.device))


def random_positions(input_ids: torch.Tensor, tokenizer, probability: float,
                     generator: torch.Generator) -> torch.Tensor:
    """Each non-special token chosen with ``probability`` (BERT's random masking)."""
    draw = torch.rand(input_ids.shape, generator=generator).to(input_ids.device)
    return (draw < probability) & ~special_mask(input_ids, tokenizer)


def apply_mask(input_ids: torch.Tensor, chosen: torch.Tensor, tokenizer, generator: torch.Generator,
               replace: tuple[float, float] = (0.8, 0.1)) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, labels): at ``chosen`` positions 80% become ``[MASK]``, 10% a random token, 10% stay; labels
    hold the original ids there and -100 elsewhere."""
    labels = input_ids.masked_fill(~chosen, IGNORE)
    u = torch.rand(input_ids.shape, generator=generator).to(input_ids.device)
    random_ids = torch.randint(len(tokenizer), input_ids.shape, generator=generator).to(input_ids.device)
    inputs = input_ids.clone()
    to_mask = chosen & (u < replace[0])
    to_random = chosen & (u >= replace[0]) & (u < replace[0] + replace[1])
    inputs[to_mask] = tokenizer.mask_token_id
    inputs[to_random] = random_ids[to_random]
    return inputs, labels


def mask_batch(input_ids: torch.Tensor, tokenizer, probability: float, generator: torch.Generator
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's random masking of a batch: (inputs, labels) with each non-special token chosen with ``probability``."""
    return apply_mask(input_ids, random_positions(input_ids, tokenizer, probability, generator), tokenizer, generator)


def pad_collate(tokenizer) -> Callable[[list[dict]], dict]:
    """``{"input_ids": [...]}`` records padded into ``input_ids`` and ``attention_mask`` (no labels: a masked
    LM's masks are drawn in the loss)."""
    def collate(rows: list[dict]) -> dict:
        out = tokenizer.pad([{"input_ids": r["input_ids"]} for r in rows], return_tensors="pt")
        return {"input_ids": out["input_ids"], "attention_mask": out["attention_mask"]}

    return collate


def masked_objective(loss_fn: Callable[..., torch.Tensor], tokenizer, probability: float, seed: int
                     ) -> Callable[[Any, dict, int], torch.Tensor]:
    """``loss_fn(model, batch, step)`` on a batch masked here (random positions, 80/10/10)."""
    def loss(model: Any, batch: dict, step: int) -> torch.Tensor:
        inputs, labels = mask_batch(batch["input_ids"], tokenizer, probability,
                                    batch_generator(batch["input_ids"], step, seed))
        return loss_fn(model, {**batch, "input_ids": inputs, "labels": labels}, step)

    return loss
