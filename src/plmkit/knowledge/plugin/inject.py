"""Pseudo-tokens before mentions: mapped entity vectors put into a model's input embeddings.

:func:`insert_vectors` builds the longer inputs (embeddings, attention mask, position ids, token types, LM labels)
for a batch; :func:`attach` makes any transformers model accept ``plmkit_entities`` in its forward call (a
forward pre-hook, like :func:`plmkit.arch.prepend_prompt`), so a downstream model fine-tuned without knowledge
takes a plug unchanged, and :func:`detach` removes it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from ...arch.insert import input_embeddings
from ...errors import ConfigError

IGNORE = -100


@dataclass(frozen=True)
class Inserted:
    """Where the vectors went: ``inserted`` (B, T') marks the pseudo-tokens; ``index`` (B, T) is each original
    position's new index."""

    inserted: torch.Tensor
    index: torch.Tensor


def _left_padded(mask: torch.Tensor) -> bool:
    return bool((mask[:, 0] == 0).any()) and bool((mask[:, -1] == 1).all())


def insert_vectors(embeds: torch.Tensor, attention_mask: torch.Tensor, positions: Sequence[Sequence[int]],
                   vectors: Sequence[torch.Tensor], *, labels: torch.Tensor | None = None,
                   token_type_ids: torch.Tensor | None = None, left: bool | None = None
                   ) -> tuple[dict[str, torch.Tensor], Inserted]:
    """Insert ``vectors[b][j]`` (d) before token ``positions[b][j]`` of sequence ``b`` (indices into the unpadded
    and padded row alike). Returns the model inputs (``inputs_embeds``, ``attention_mask``, ``position_ids`` and,
    when given, ``labels`` with -100 at the pseudo-tokens and ``token_type_ids`` continuing their mention's type)
    and where the vectors went. Rows keep their padding side (left padding is kept on the left); ``left`` says
    which it is, guessed from the mask when None (a batch without padding looks right-padded)."""
    b, t, d = embeds.shape
    if len(positions) != b or len(vectors) != b:
        raise ConfigError(f"{b} sequences but {len(positions)} position lists and {len(vectors)} vector sets")
    counts = [len(p) for p in positions]
    for row, (pos, vec) in enumerate(zip(positions, vectors)):
        if len(pos) != (0 if vec is None else len(vec)):
            raise ConfigError(f"sequence {row}: {len(pos)} positions but {0 if vec is None else len(vec)} vectors")
        if any(not 0 <= p < t for p in pos):
            raise ConfigError(f"sequence {row}: insertion positions must lie in 0..{t - 1}, got {list(pos)}")
    new_t = t + max(counts, default=0)
    left = _left_padded(attention_mask) if left is None else left
    out_embeds = embeds.new_zeros(b, new_t, d)
    out_mask = attention_mask.new_zeros(b, new_t)
    out_labels = None if labels is None else labels.new_full((b, new_t), IGNORE)
    out_types = None if token_type_ids is None else token_type_ids.new_zeros(b, new_t)
    inserted = torch.zeros(b, new_t, dtype=torch.bool, device=embeds.device)
    index = torch.zeros(b, t, dtype=torch.long, device=embeds.device)
    for row in range(b):
        before = sorted(range(len(positions[row])), key=lambda j: positions[row][j])
        shift = new_t - t - counts[row] if left else 0  # extra padding goes on the padded side
        order, k = [], 0
        for i in range(t):
            while k < len(before) and positions[row][before[k]] == i:
                order.append(("v", before[k], i))
                k += 1
            order.append(("t", i, i))
        for slot, (kind, j, at) in enumerate(order, shift):
            if kind == "t":
                out_embeds[row, slot] = embeds[row, j]
                out_mask[row, slot] = attention_mask[row, j]
                index[row, j] = slot
                if out_labels is not None:
                    out_labels[row, slot] = labels[row, j]
                if out_types is not None:
                    out_types[row, slot] = token_type_ids[row, j]
            else:
                out_embeds[row, slot] = vectors[row][j].to(embeds.dtype)
                out_mask[row, slot] = 1
                inserted[row, slot] = True
                if out_types is not None:
                    out_types[row, slot] = token_type_ids[row, at]
    inputs = {"inputs_embeds": out_embeds, "attention_mask": out_mask,
              "position_ids": (out_mask.long().cumsum(-1) - 1).clamp(min=0)}
    if out_labels is not None:
        inputs["labels"] = out_labels
    if out_types is not None:
        inputs["token_type_ids"] = out_types
    return inputs, Inserted(inserted, index)


class _Plug(nn.Module):
    """What :func:`attach` registers on the model: the mapper and the (frozen) entity table."""

    def __init__(self, mapper: nn.Module, table: torch.Tensor):
        super().__init__()
        self.mapper = mapper
        self.register_buffer("table", table, persistent=False)


def _pre_hook(model: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    entities = kwargs.pop("plmkit_entities", None)
    side = kwargs.pop("plmkit_padding_side", None)
    if entities is None:
        return args, kwargs
    kwargs, embeds = input_embeddings(model, args, kwargs, "a knowledge plug")
    args = ()
    mask = kwargs.pop("attention_mask", None)
    if mask is None:
        mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
    plug: _Plug = model.plmkit_plug
    positions = [[p for p, _ in row] for row in entities]
    vectors = []
    for row in entities:
        rows = torch.tensor([e for _, e in row], dtype=torch.long, device=plug.table.device)
        vectors.append(plug.mapper(plug.table[rows].to(embeds.dtype)) if len(row) else embeds.new_zeros(0, embeds.shape[-1]))
    labels = kwargs.pop("labels", None)
    if labels is not None and tuple(labels.shape) != tuple(embeds.shape[:2]):  # per sequence (a classifier)
        kwargs["labels"], labels = labels, None
    if labels is not None and getattr(model.config, "is_encoder_decoder", False):
        raise ConfigError("knowledge plugs go into encoder-only and decoder-only models")
    left = _left_padded(mask) if side is None else side == "left"
    inputs, _ = insert_vectors(embeds, mask, positions, vectors, labels=labels,
                               token_type_ids=kwargs.pop("token_type_ids", None), left=left)
    kwargs.pop("position_ids", None)
    if not left:
        del inputs["position_ids"]  # the default positions are these; a peft prompt model refuses explicit ones
    return args, {**kwargs, **inputs}


def attach(model: nn.Module, mapper: nn.Module, table: torch.Tensor) -> None:
    """Let ``model``'s forward take ``plmkit_entities``: per sequence, ``(token index, table row)`` pairs; each row's
    vector, through ``mapper``, goes in before that token. Unknown entities: pass a zero row of the table
    (:func:`~plmkit.knowledge.plugin.plug_table` puts one at row 0).

    The plug goes on the object given, the one the caller calls: on a peft model it runs before peft's own
    prompt vectors go in front, so token indices count the text's tokens only."""
    if "plmkit_plug" in model._modules:
        raise ConfigError("this model already has a knowledge plug; call plmkit.knowledge.plugin.detach(model) first")
    p = next(model.parameters())
    model.plmkit_plug = _Plug(mapper.to(device=p.device), table.detach().to(p.device))
    model._plmkit_plug_hook = model.register_forward_pre_hook(_pre_hook, with_kwargs=True)


def detach(model: nn.Module) -> nn.Module:
    """Undo :func:`attach`; returns the mapper."""
    if "plmkit_plug" not in model._modules:
        raise ConfigError("this model has no knowledge plug (plmkit.knowledge.plugin.attach)")
    model._plmkit_plug_hook.remove()
    mapper = model.plmkit_plug.mapper
    del model.plmkit_plug, model._plmkit_plug_hook
    return mapper
