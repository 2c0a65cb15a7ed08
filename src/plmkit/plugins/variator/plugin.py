"""One compression plugin and the FFN wrapper that runs it.

A plugin around an FFN merges each group of ``k`` consecutive hidden states into one (a softmax over
the group from ``Linear(k*d -> k)``, then the weighted sum), runs the FFN on the k-times shorter
sequence, and decompresses: the group's FFN output is repeated for each of its positions, concatenated
with that position's own input, and corrected by ``Linear(2d -> r) -> tanh -> Linear(r -> d)`` added as
a residual. The scorer and the last decompressor layer start at zero, so a fresh plugin mean-pools each
group and, at ``k = 1``, equals the FFN exactly.

Groups and padding: the sequence is padded to a multiple of ``k``; positions the attention mask marks
as padding (and the added ones) get no weight in their group, so padding never leaks into real tokens.

Causal stacks (decoders): a position may only use groups made of itself and earlier tokens. Position
``t`` uses the latest group that is complete at ``t`` (groups ``[g*k, g*k + k)``, so the group ending at
``t`` when ``t`` closes one, else the group before); the first ``k - 1`` positions of every forward call,
which have no complete group yet, run the FFN uncompressed. Groups are counted within each forward
call, so a decode step of one token runs its FFN exactly, and a prefill is compressed.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from ...arch.wrap import Wrapper


class CompressionPlugin(nn.Module):
    """The trainable part: ``scorer`` (k*d -> k) and the decompressor (2d -> r -> d)."""

    def __init__(self, d_model: int, k: int, hidden: int, exact_prefix: int = 0):
        super().__init__()
        self.k, self.d_model, self.hidden, self.exact_prefix = k, d_model, hidden, exact_prefix
        self.scorer = nn.Linear(k * d_model, k)
        self.down = nn.Linear(2 * d_model, hidden)
        self.up = nn.Linear(hidden, d_model)
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Zero scorer (mean pooling) and zero ``up`` (no correction); ``down`` drawn from ``generator``."""
        with torch.no_grad():
            nn.init.zeros_(self.scorer.weight)
            nn.init.zeros_(self.scorer.bias)
            bound = 1 / (2 * self.d_model) ** 0.5
            w = torch.rand(self.down.weight.shape, generator=generator) * 2 * bound - bound
            self.down.weight.copy_(w)
            nn.init.zeros_(self.down.bias)
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)

    def compress(self, groups: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """(B, G, k, d) groups and their (B, G, k) real-token mask -> (B, G, d) merged states."""
        b, g, k, d = groups.shape
        groups = groups * real.unsqueeze(-1).to(groups.dtype)  # padding enters neither the scores nor the sum
        scores = self.scorer(groups.reshape(b, g, k * d)).float()
        scores = scores.masked_fill(~real, float("-inf"))
        weights = torch.softmax(scores, -1).nan_to_num(0.0)  # a group of padding only: all-zero weights
        return (weights.to(groups.dtype).unsqueeze(-1) * groups).sum(2)

    def decompress(self, base: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Each position's group output ``base`` (B, T, d) corrected from its own input ``x``."""
        return base + self.up(torch.tanh(self.down(torch.cat([base, x], -1))))

    def run(self, x: torch.Tensor, ffn: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor | None,
            causal: bool) -> torch.Tensor:
        """The plugged FFN on ``x`` (B, T, d); ``real`` (B, T) bool marks real tokens (None: all)."""
        return (_causal if causal else _bidirectional)(self, x, ffn, real)


def _bidirectional(p: CompressionPlugin, x: torch.Tensor, ffn: Callable, real: torch.Tensor | None) -> torch.Tensor:
    n = min(p.exact_prefix, x.shape[1])
    if n:  # leading positions (a [CLS] token the head reads) run the FFN exactly, the rest is grouped
        if n == x.shape[1]:
            return ffn(x)
        return _grouped(p, x[:, n:], ffn, None if real is None else real[:, n:], head=x[:, :n])
    return _grouped(p, x, ffn, real)


def _grouped(p: CompressionPlugin, x: torch.Tensor, ffn: Callable, real: torch.Tensor | None,
             head: torch.Tensor | None = None) -> torch.Tensor:
    """Groups of k over ``x``; ``head`` positions (run exactly) share the FFN call and come first in the output."""
    b, t, d = x.shape
    k = p.k
    pad = (-t) % k
    real = torch.ones(b, t, dtype=torch.bool, device=x.device) if real is None else real
    xp = nn.functional.pad(x, (0, 0, 0, pad)) if pad else x
    rp = nn.functional.pad(real, (0, pad), value=False) if pad else real
    g = (t + pad) // k
    merged = p.compress(xp.view(b, g, k, d), rp.view(b, g, k))
    n = 0 if head is None else head.shape[1]
    out = ffn(merged if head is None else torch.cat([head, merged], 1))
    base = out[:, n:].repeat_interleave(k, dim=1)[:, :t]
    grouped = p.decompress(base, x)
    return grouped if head is None else torch.cat([out[:, :n], grouped], 1)


def _causal(p: CompressionPlugin, x: torch.Tensor, ffn: Callable, real: torch.Tensor | None) -> torch.Tensor:
    b, t, d = x.shape
    k = p.k
    head = min(k - 1, t)  # positions with no complete group yet: exact FFN
    g = t // k  # complete groups
    parts = [x[:, :head]]
    if g:
        r = torch.ones(b, g * k, dtype=torch.bool, device=x.device) if real is None else real[:, :g * k]
        parts.append(p.compress(x[:, :g * k].reshape(b, g, k, d), r.reshape(b, g, k)))
    out = ffn(torch.cat(parts, 1) if len(parts) > 1 else parts[0])
    if t == head:
        return out
    pos = torch.arange(head, t, device=x.device)
    base = out.index_select(1, head + (pos + 1) // k - 1)
    return torch.cat([out[:, :head], p.decompress(base, x[:, head:])], 1)


class VariatorFFN(Wrapper):
    """An FFN with a compression plugin; the original FFN module stays as ``base_layer``.

    ``out_proj``: the FFN's output projection when the block applies it outside the FFN module (BERT's
    ``output.dense``, bypassed in the block once plugged); None when ``base_layer`` already returns d_model.
    ``plugin = None`` or ``active = False`` runs the FFN unchanged (the distillation teacher).
    """

    runs_base = True

    def __init__(self, base_layer: nn.Module, out_proj: nn.Module | None, plugin: CompressionPlugin | None,
                 causal: bool, name: str, context: "MaskContext"):
        super().__init__(base_layer)
        object.__setattr__(self, "_out_proj", out_proj)  # registered in the block (under its Bypass)
        object.__setattr__(self, "_context", context)
        self.plugin = plugin
        self.causal, self.name, self.active = causal, name, True

    def ffn(self, x: torch.Tensor) -> torch.Tensor:
        """The original FFN, input -> d_model."""
        h = self.base_layer(x)
        return self._out_proj(h) if self._out_proj is not None else h

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.plugin is None or not self.active or x.dim() != 3:
            return self.ffn(x)
        return self.plugin.run(x, self.ffn, self._context.real(x), self.causal)

    def extra_repr(self) -> str:
        k = None if self.plugin is None else self.plugin.k
        return f"name={self.name}, k={k}, causal={self.causal}, active={self.active}"


class MaskContext:
    """The attention mask of the forward call in flight, shared by the plugins of one stack.

    Filled by a forward pre-hook on the module that receives the stack's ``attention_mask`` (the bare
    model, or a T5 stack) and cleared when that call returns.
    """

    def __init__(self) -> None:
        self.mask: torch.Tensor | None = None

    def real(self, x: torch.Tensor) -> torch.Tensor | None:
        """(B, T) bool for the T positions of ``x``: the mask's last T columns (a KV cache holds the rest);
        prompt vectors put before the input by a wrapper that did not extend the mask count as real."""
        m = self.mask
        if m is None or m.dim() != 2 or m.shape[0] != x.shape[0]:
            return None
        t = x.shape[1]
        m = m.to(device=x.device, dtype=torch.bool)
        if m.shape[1] >= t:
            return m[:, m.shape[1] - t:]
        return torch.cat([m.new_ones(m.shape[0], t - m.shape[1]), m], 1)
