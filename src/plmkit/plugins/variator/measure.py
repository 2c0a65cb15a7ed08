"""What a set of plugins saves: FLOPs and prefill wall-clock beside the bound, measured in one process.

The bound of compressing every FFN by k is ``1 / (1 - p * (1 - 1/k))``, where ``p`` is the FFNs' share
of the model's cost. ``p`` is measured here, never assumed: by FLOPs (torch's FLOP counter, with and
without the FFNs) and by wall-clock (the model timed against itself with every FFN replaced by zeros,
interleaved).
"""
from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from typing import Iterator

import torch
from torch import nn

from ... import arch
from ...device import to_device
from ...eval.timing import compare, count_flops
from .model import bypassed, plugged


class _Zeros(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


@contextlib.contextmanager
def without_ffns(model: nn.Module) -> Iterator[nn.Module]:
    """Every FFN replaced by zeros (the model minus its FFN cost); put back on exit."""
    blocks = arch.layers(model)
    for layer in blocks:
        arch.replace_ffn(layer, _Zeros())
    try:
        yield model
    finally:
        for layer in blocks:
            arch.restore_ffn(layer, arch.ReplacedFFN)


def bound(p_ffn: float, k: int) -> float:
    """Speed-up if the FFNs (share ``p_ffn`` of the cost) ran on 1/k of the tokens at no other cost."""
    return 1.0 / (1.0 - p_ffn * (1.0 - 1.0 / k))


@dataclass
class PrefillCost:
    k: int
    batch_size: int
    tokens: int  # per sequence (padded)
    flops_plain: int
    flops_plugged: int
    flops_saved: float  # 1 - plugged / plain
    p_ffn_flops: float
    p_ffn_time: float
    speedup: float  # wall-clock, plain / plugged (median of interleaved repeats)
    bound_time: float  # the bound with p_ffn_time
    bound_flops: float  # the bound with p_ffn_flops
    plain_ms: float
    plugged_ms: float

    def to_dict(self) -> dict:
        return asdict(self)


def prefill_cost(model: nn.Module, batch: dict[str, torch.Tensor], repeats: int = 10, warmup: int = 2
                 ) -> PrefillCost:
    """FLOPs and wall-clock of one forward over ``batch``, plugged vs bypassed, on a plugged model."""
    wrappers = plugged(model)
    if not wrappers:
        from ...errors import ConfigError

        raise ConfigError("prefill_cost needs a model with plugins attached")
    k = wrappers[0].plugin.k
    batch = to_device(batch, model)

    def plain() -> None:
        with torch.no_grad(), bypassed(model):
            model(**batch)

    def plugged_run() -> None:
        with torch.no_grad():
            model(**batch)

    def no_ffn() -> None:
        with torch.no_grad(), bypassed(model), without_ffns(model):
            model(**batch)

    f_plain, f_plug, f_noffn = count_flops(plain), count_flops(plugged_run), count_flops(no_ffn)
    speed = compare(plain, plugged_run, repeats=repeats, warmup=warmup)
    share = compare(plain, no_ffn, repeats=repeats, warmup=warmup)
    p_time = max(0.0, 1.0 - share.candidate_s / share.baseline_s)
    p_flops = 1.0 - f_noffn / f_plain
    b, t = batch["input_ids"].shape
    return PrefillCost(k=k, batch_size=b, tokens=t, flops_plain=f_plain, flops_plugged=f_plug,
                       flops_saved=1.0 - f_plug / f_plain, p_ffn_flops=p_flops, p_ffn_time=p_time,
                       speedup=speed.ratio, bound_time=bound(p_time, k), bound_flops=bound(p_flops, k),
                       plain_ms=speed.baseline_s * 1e3, plugged_ms=speed.candidate_s * 1e3)


def token_merging_peer(model: nn.Module, tokenizer, texts: list[str], labels: list[int], max_length: int,
                       batch: dict[str, torch.Tensor], target_flops: int, repeats: int = 10) -> dict:
    """ToMe-style token merging (:mod:`plmkit.compress.token_merging`) on a plain classifier, at the merge
    rate r whose FLOPs on ``batch`` come closest to ``target_flops``: its accuracy on ``texts`` and its
    prefill speed-up on ``batch`` over the plain model (interleaved)."""
    from ...compress.token_merging import TokenMergingConfig, merged_forward
    from ...data.batching import token_batches
    from ...eval import accuracy

    batch = to_device(batch, model)
    blocks = len(arch.layers(model))
    t = batch["input_ids"].shape[1]

    def run(cfg: TokenMergingConfig, b: dict) -> torch.Tensor:
        return merged_forward(model, b["input_ids"], b["attention_mask"], cfg)

    candidates = []
    for r in range(1, max(2, t // 2)):
        f = count_flops(lambda: run(TokenMergingConfig(r=r), batch))
        candidates.append((abs(f - target_flops), r, f))
        if f < target_flops:
            break
    _, r, flops = min(candidates)
    cfg = TokenMergingConfig(r=r)
    preds: list[int] = []
    with torch.no_grad():
        for b in token_batches(tokenizer, texts, 32, max_length):
            preds += run(cfg, to_device(b, model)).argmax(-1).tolist()
        speed = compare(lambda: model(**batch), lambda: run(cfg, batch), repeats=repeats)
    return {"r": r, "blocks": blocks, "flops": flops, "target_flops": target_flops,
            "accuracy": accuracy(preds, labels), "speedup": speed.ratio}
