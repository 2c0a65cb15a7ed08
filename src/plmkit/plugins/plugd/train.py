"""Training with the backbone frozen: the map network by plugin pretraining, task adapters (LoRA) on tasks."""
from __future__ import annotations

import contextlib
from typing import Any, Sequence

import torch
from torch import nn

from ... import arch
from ...device import unwrap_model
from ...errors import ConfigError
from ...train import TrainConfig, TrainResult, train
from .model import document_states, make_plugins, map_net, plugged
from .tasks import lm_collate


def plugd_loss(model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    """LM loss on the targets; with ``plugins`` (precomputed) or ``states`` (document states, mapped here so
    the map network gets gradients) in the batch, the chosen layers attend to them."""
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}
    user = unwrap_model(model)
    plugins = batch.get("plugins")
    if plugins is None and "states" in batch:
        plugins = make_plugins(user, batch["states"])
    ctx = plugged(user, plugins) if plugins is not None else contextlib.nullcontext()
    with ctx:
        return model(**inputs).loss


@contextlib.contextmanager
def _only_trainable(model: nn.Module, params: Sequence[nn.Parameter]) -> Any:
    own = {id(p) for p in params}
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(id(p) in own)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def pretrain_map_net(model: nn.Module, tokenizer: Any, examples: Sequence[dict], config: TrainConfig, *,
                     max_length: int = 96) -> TrainResult:
    """Train only the map network on :func:`~plmkit.plugins.plugd.tasks.pretraining_examples`: each example's
    text is encoded once by the frozen backbone, then the LM loss on its target (given its prompt) flows back
    through the plugged attention into the map network."""
    states = document_states(model, tokenizer, [e["text"] for e in examples])
    rows = [{"states": s, "input": e["prompt"], "target": e["target"]} for s, e in zip(states, examples)]
    base = lm_collate(tokenizer, max_length)

    def collate(batch: list[dict]) -> dict[str, Any]:
        out = base(batch)
        out["states"] = [r["states"] for r in batch]
        return out

    with _only_trainable(model, list(map_net(model).parameters())):
        return train(model, rows, config, plugd_loss, collate_fn=collate)


LORA_TARGETS = ("attention", "all")


def lora_targets(model: nn.Module, which: str = "all") -> list[str]:
    """Leaf names of the projections LoRA goes on: the query and value projections (``attention``; the fused
    q/k/v one where the family has it), or every attention and FFN projection (``all``, like the paper's
    adapters after each FFN)."""
    if which not in LORA_TARGETS:
        raise ConfigError(f"LoRA targets must be one of {LORA_TARGETS}, got '{which}'")
    block = arch.resolve(model).stacks[0].block
    roles = ("attn_q", "attn_v", "attn_qkv") if which == "attention" else (
        "attn_q", "attn_k", "attn_v", "attn_qkv", "attn_o", "ffn_in", "ffn_gate", "ffn_out")
    names = [getattr(block, r) for r in roles if getattr(block, r, None)]
    if not names:
        raise ConfigError("the architecture spec names no attention projections to put LoRA adapters on")
    return sorted({p.rsplit(".", 1)[-1] for p in names})


def add_adapters(model: nn.Module, names: Sequence[str], *, r: int = 8, alpha: int = 16, targets: str = "all",
                 seed: int = 0) -> nn.Module:
    """A peft model with one LoRA adapter per name on :func:`lora_targets` (drawn from ``seed``; the global RNG
    is left as it was). The map network and backbone stay frozen."""
    import peft

    cfg = peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=lora_targets(model, targets))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = peft.get_peft_model(model, cfg, adapter_name=names[0])
        for name in names[1:]:
            out.add_adapter(name, cfg)
    return out


def train_adapter(model: nn.Module, tokenizer: Any, name: str, rows: Sequence[dict], config: TrainConfig, *,
                  max_length: int = 256) -> TrainResult:
    """Train adapter ``name`` of a peft model (made by :func:`add_adapters`) on rows ``{"input", "target"}``,
    with ``plugin`` when the document comes as a plugin; only that adapter's weights change."""
    model.set_adapter(name)
    params = [p for n, p in model.named_parameters() if f".{name}." in n and "lora_" in n]
    if not params:
        raise ConfigError(f"the model has no adapter '{name}'")
    with _only_trainable(model, params):
        return train(model, rows, config, plugd_loss, collate_fn=lm_collate(tokenizer, max_length))
