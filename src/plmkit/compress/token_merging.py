"""Token merging (ToMe) for BERT-family sequence classifiers: a training-free peer for sequence compression.

ToMe (Bolya et al. 2023, "Token Merging: Your ViT but faster") makes a trained encoder cheaper by shrinking
the sequence as it goes: between two blocks it finds the ``r`` most redundant tokens and folds each into its
most similar neighbour, so every later block runs on fewer tokens. Nothing is trained or fine-tuned; the
pretrained blocks run unchanged on the shorter sequence. That makes it the natural baseline for a learned
sequence-compression method: both cut the tokens the encoder carries, and ToMe does it for free.

Here the matching is ToMe's bipartite soft matching on each block's output hidden states: the current
tokens are split alternately into sets A and B, each A token picks its most cosine-similar B token, and the
``r`` A tokens with the best matches are averaged into them (weighted by size, the count of original tokens a
merged token stands for; sizes add up). With proportional attention, log(size) is added to every key's
attention logit, so a merged token weighs as much as the tokens it replaced. Padding has size 0: it is masked
as a key (log 0), carries no weight in any average, and is merged away before any real token. The first
token ([CLS], which the classifier reads) is never a merge source unless ``protect_first`` is off; all
sequences of a batch lose the same ``r`` tokens per block, in one set of tensor operations.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..arch.layers import base_model, embeddings, hf_model, layers
from ..config import JsonConfig
from ..device import model_device
from ..errors import ConfigError

SUPPORTED_MODEL_TYPES = ("bert", "roberta", "xlm-roberta", "electra")
SUPPORTED_ATTENTION = ("sdpa", "eager")


@dataclass
class TokenMergingConfig(JsonConfig):
    """``r`` tokens merged away after each block from ``start_layer`` on (none after the last block)."""

    r: int
    start_layer: int = 0
    protect_first: bool = True  # never merge the first token ([CLS]/<s>, which the head reads)
    proportional_attention: bool = True  # add log(size) to the keys' attention logits

    def __post_init__(self) -> None:
        for name in ("r", "start_layer"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ConfigError(f"TokenMergingConfig.{name} must be an int >= 0, got {v!r}")
        for name in ("protect_first", "proportional_attention"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"TokenMergingConfig.{name} must be a bool, got {getattr(self, name)!r}")


@dataclass
class MergeTrace:
    """What :func:`merged_forward` did: ``tokens`` entering each block, the final token ``sizes`` (batch,
    tokens; 0 for padding) and ``first_size``, the size of the token that holds the original first token."""

    tokens: list[int]
    sizes: torch.Tensor
    first_size: torch.Tensor


def _step(n: int, r: int, protect: bool) -> int:
    """Tokens merged away from ``n``: at most ``r``, and at most half of the unprotected tokens."""
    return min(r, (n - int(protect)) // 2)


def tokens_after(n_tokens: int, n_layers: int, config: TokenMergingConfig) -> list[int]:
    """Tokens entering each of the ``n_layers`` blocks for a (padded) input of ``n_tokens``."""
    out, n = [], n_tokens
    for i in range(n_layers):
        out.append(n)
        if config.start_layer <= i < n_layers - 1:
            n -= _step(n, config.r, config.protect_first)
    return out


def choose_r(n_tokens: int, n_layers: int, keep_fraction: float, start_layer: int = 0,
             protect_first: bool = True) -> int:
    """The smallest ``r`` whose mean tokens per block is at most ``keep_fraction * n_tokens``.

    Mean tokens per block is the cost of the linear parts (projections, FFN), which dominate for short
    texts; attention's quadratic term shrinks faster. ConfigError when no ``r`` reaches the fraction."""
    if not 0 < keep_fraction <= 1:
        raise ConfigError(f"keep_fraction must lie in (0, 1], got {keep_fraction}")

    def mean(r: int) -> float:
        cfg = TokenMergingConfig(r=r, start_layer=start_layer, protect_first=protect_first)
        return sum(tokens_after(n_tokens, n_layers, cfg)) / n_layers

    target = keep_fraction * n_tokens
    if mean(n_tokens) > target:
        raise ConfigError(f"keep_fraction {keep_fraction} is out of reach: with {n_layers} blocks, start_layer "
                          f"{start_layer} and {n_tokens} tokens, merging keeps at least "
                          f"{mean(n_tokens) / n_tokens:.3f} of them per block")
    lo, hi = 0, n_tokens  # the mean never grows with r, so bisect
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if mean(mid) <= target else (mid + 1, hi)
    return lo


def bipartite_merge(x: torch.Tensor, size: torch.Tensor, first: torch.Tensor, r: int, protect_first: bool = True,
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merge ``r`` tokens away from every sequence of ``x`` (batch, tokens, dim) by bipartite soft matching.

    ``size`` (batch, tokens) counts the original tokens each stands for (0: padding); ``first`` (batch, tokens)
    is 1 on the token holding the original first token. Returns the three for the shorter sequence, ordered
    as the unmerged A tokens (in their order, so a protected first token stays first), then the B tokens."""
    r = _step(x.shape[1], r, protect_first)
    if r <= 0:
        return x, size, first
    metric = x.float()
    metric = metric / metric.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    scores = metric[:, 0::2] @ metric[:, 1::2].transpose(1, 2)  # (batch, |A|, |B|) cosine similarities
    scores = scores.masked_fill(size[:, None, 1::2] == 0, -2.0)  # real tokens never pick a padding match
    best, dst_of = scores.max(dim=-1)
    best = best.masked_fill(size[:, 0::2] == 0, 3.0)  # padding merges away first
    if protect_first:
        best[:, 0] = -torch.inf
    order = torch.argsort(best, dim=-1, descending=True, stable=True)
    src_idx, keep_idx = order[:, :r], order[:, r:].sort(dim=-1).values
    dst_idx = dst_of.gather(1, src_idx)

    def merge(t: torch.Tensor, reduce: str) -> torch.Tensor:
        a, b = t[:, 0::2], t[:, 1::2]
        c = t.shape[-1]
        kept = a.gather(1, keep_idx[..., None].expand(-1, -1, c))
        src = a.gather(1, src_idx[..., None].expand(-1, -1, c))
        b = b.scatter_reduce(1, dst_idx[..., None].expand(-1, -1, c), src, reduce=reduce)
        return torch.cat([kept, b], dim=1)

    s = size[..., None].to(x.dtype)
    total = merge(x * s, "sum")
    new_size = merge(s, "sum")
    unchanged = torch.cat([x[:, 0::2].gather(1, keep_idx[..., None].expand(-1, -1, x.shape[-1])), x[:, 1::2]], 1)
    x = torch.where(new_size > 0, total / new_size.clamp_min(1), unchanged)  # all-padding tokens stay as they were
    new_first = merge(first[..., None], "amax")[..., 0]
    return x, new_size[..., 0].to(size.dtype), new_first


def _attention_bias(size: torch.Tensor, dtype: torch.dtype, proportional: bool) -> torch.Tensor:
    """Additive attention mask (batch, 1, 1, tokens): log(size) (or 0) for real keys, the dtype's min for padding."""
    real = size > 0
    bias = size.to(dtype).clamp_min(1).log() if proportional else torch.zeros(size.shape, dtype=dtype,
                                                                               device=size.device)
    return bias.masked_fill(~real, torch.finfo(dtype).min)[:, None, None, :]


def _check(model: nn.Module) -> nn.Module:
    inner, _ = hf_model(model)
    cfg = inner.config
    if cfg.model_type not in SUPPORTED_MODEL_TYPES or not type(inner).__name__.endswith("ForSequenceClassification"):
        raise ConfigError(f"token merging supports *ForSequenceClassification models of types "
                          f"{', '.join(SUPPORTED_MODEL_TYPES)} (BERT, MiniLM, RoBERTa, ELECTRA); got "
                          f"{type(inner).__name__} (model_type '{cfg.model_type}')")
    if getattr(cfg, "is_decoder", False):
        raise ConfigError("token merging needs a bidirectional encoder; this model is configured as a decoder")
    impl = getattr(cfg, "_attn_implementation", None) or "eager"
    if impl not in SUPPORTED_ATTENTION:
        raise ConfigError(f"token merging passes an additive float attention mask, which attention "
                          f"implementation '{impl}' does not take; load the model with attn_implementation='sdpa' "
                          "or 'eager'")
    return inner


def merged_forward(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                   config: TokenMergingConfig, token_type_ids: torch.Tensor | None = None,
                   return_trace: bool = False) -> torch.Tensor | tuple[torch.Tensor, MergeTrace]:
    """The classifier's logits (batch, labels) with ``config.r`` tokens merged away after each block.

    Runs the model's own embeddings, encoder blocks (each with an additive mask for its current tokens and,
    with proportional attention, their log sizes) and classification head on the first token. With ``r=0``
    this is the ordinary forward. ``return_trace`` also returns a :class:`MergeTrace`."""
    inner = _check(model)
    device = model_device(model)
    input_ids = input_ids.to(device)
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(device)
    base = base_model(model)
    h = embeddings(model)(input_ids=input_ids,
                          token_type_ids=None if token_type_ids is None else token_type_ids.to(device))
    if hasattr(base, "embeddings_project"):  # ELECTRA with embedding_size != hidden_size
        h = base.embeddings_project(h)
    size = (mask != 0).long()
    first = torch.zeros_like(size)
    first[:, 0] = 1
    blocks = layers(model)
    tokens = []
    for i, layer in enumerate(blocks):
        tokens.append(h.shape[1])
        out = layer.block(h, _attention_bias(size, h.dtype, config.proportional_attention))
        h = out[0] if isinstance(out, tuple) else out
        if config.start_layer <= i < len(blocks) - 1:
            h, size, first = bipartite_merge(h, size, first, config.r, config.protect_first)
    at = first.argmax(dim=1)  # the token holding the original first one (position 0 when it is protected)
    cls = h.gather(1, at[:, None, None].expand(-1, 1, h.shape[-1]))
    if isinstance(inner.classifier, nn.Linear):  # BERT: pooler, dropout, linear
        pooled = base.pooler(cls) if base.pooler is not None else cls[:, 0]
        logits = inner.classifier(getattr(inner, "dropout", nn.Identity())(pooled))
    else:  # RoBERTa/ELECTRA: a head that reads features[:, 0]
        logits = inner.classifier(cls)
    if not return_trace:
        return logits
    return logits, MergeTrace(tokens, size, size.gather(1, at[:, None])[:, 0])
