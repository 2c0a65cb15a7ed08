"""Side-by-side cost of compressed models: decode and prefill speed, bytes, parameters (one process,
contenders interleaved), shared by the ``bmcook`` recipe and ``benchmarks/cook_speed.py``."""
from __future__ import annotations

import copy
import statistics
from typing import Any, Callable

import torch
from torch import nn

from ..eval.timing import interleaved
from ..infer.bench import decode_time

FP32 = "fp32"
INT8 = "plmkit int8"
INT4 = "plmkit int4"
TORCH_DYNAMIC = "torch dynamic int8"


def weight_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer (tied tensors once), the packed int8 params of torch.ao included."""
    seen: dict[int, int] = {}
    for t in list(model.parameters()) + list(model.buffers()):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    extra = 0
    for m in model.modules():  # torch.ao dynamic quantized linears keep their weights in a packed-params object
        packed = getattr(m, "_packed_params", None)
        if packed is not None and hasattr(packed, "_weight_bias"):
            w, b = packed._weight_bias()
            extra += w.int_repr().numel() * w.int_repr().element_size() + (b.numel() * 4 if b is not None else 0)
    return sum(seen.values()) + extra


def torch_dynamic_int8(model: nn.Module) -> nn.Module:
    """The peer: ``torch.ao.quantization.quantize_dynamic`` on a copy (int8 weights and activations)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8)


def compare_lm_speed(contenders: dict[str, nn.Module], prompt_ids: torch.Tensor, prefill_ids: torch.Tensor, *,
                     new_tokens: int = 16, repeats: int = 3) -> dict[str, dict[str, float]]:
    """Decode tokens/s (batch 1, greedy) and prefill tokens/s of each causal LM, interleaved; medians."""
    def prefill(m: nn.Module) -> Callable[[], Any]:
        def run() -> None:
            with torch.no_grad():
                m(input_ids=prefill_ids, use_cache=False, logits_to_keep=1)
        return run

    dec: dict[str, list[float]] = {k: [] for k in contenders}
    for _ in range(repeats):
        for k, m in contenders.items():
            dec[k].append(decode_time(m, prompt_ids, new_tokens)[0])
    pre = interleaved({k: prefill(m) for k, m in contenders.items()}, repeats=repeats)
    n = prefill_ids.numel()
    return {k: {"decode_tok_s": 1 / statistics.median(dec[k]), "prefill_tok_s": n / statistics.median(pre[k]),
                "decode_runs_s": dec[k]} for k in contenders}


def compare_prefill(contenders: dict[str, nn.Module], batch: dict[str, torch.Tensor], *,
                    repeats: int = 5) -> dict[str, float]:
    """Texts per second of a batched forward (e.g. a classifier's), interleaved; medians."""
    def run(m: nn.Module) -> Callable[[], Any]:
        def go() -> None:
            with torch.no_grad():
                m(**batch)
        return go

    times = interleaved({k: run(m) for k, m in contenders.items()}, repeats=repeats)
    rows = batch["input_ids"].shape[0]
    return {k: rows / statistics.median(v) for k, v in times.items()}
