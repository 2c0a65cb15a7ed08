"""Per-query cost of answering from a document: concatenated, plugged in (PlugD), from a reused KV prefix, or
without it; FLOPs (torch's counter) and wall-clock (interleaved, one process), the encode cost kept apart so it
can be amortised over queries per document; bytes per stored document."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ...device import model_device
from ...eval.timing import count_flops, interleaved
from .model import encode, plugged

METHODS = ("concat", "plugd", "kv_prefix", "closed")


@dataclass
class QueryCosts:
    queries: int  # one forward per query (the verification task's whole cost; QA's prefill)
    flops_query: dict[str, float]  # mean per query, encode excluded
    flops_encode: dict[str, float]  # mean per document: PlugD's backbone + map network, KV's prefix forward
    ms_query: dict[str, float]  # median wall-clock per query (batch 1)
    ms_encode: dict[str, float]
    bytes_per_doc: dict[str, float]  # one plugin; one task's KV prefix (float32 both)
    doc_tokens: float
    query_tokens: float
    amortised_flops: dict[str, dict[str, float]] = field(default_factory=dict)  # queries per doc -> method -> FLOPs

    @property
    def compute_saved(self) -> float:
        """1 - PlugD's per-query FLOPs / concatenation's (documents encoded ahead of time)."""
        return 1.0 - self.flops_query["plugd"] / self.flops_query["concat"]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "compute_saved": self.compute_saved}


def _ids(tokenizer: Any, text: str, device: torch.device) -> torch.Tensor:
    return tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"].to(device)


@torch.no_grad()
def query_costs(model: nn.Module, tokenizer: Any, docs: Sequence[str], prompts: Sequence[str], *,
                repeats: int = 5, per_doc: Sequence[int] = (1, 10, 100)) -> QueryCosts:
    """Costs of one query ``prompts[i]`` about ``docs[i]`` by each method (at batch 1, the current adapter on)."""
    from transformers import DynamicCache

    device = model_device(model)
    model.eval()
    doc_ids = [_ids(tokenizer, f"{d}\n", device) for d in docs]
    q_ids = [_ids(tokenizer, p, device) for p in prompts]
    concat_ids = [torch.cat([d, q], 1) for d, q in zip(doc_ids, q_ids)]
    plugins = encode(model, tokenizer, list(docs))
    caches = []
    for d in doc_ids:
        cache = DynamicCache(config=model.config)
        model(input_ids=d, past_key_values=cache, use_cache=True)
        caches.append(cache)

    def kv_query(i: int) -> None:
        n = doc_ids[i].shape[1]
        model(input_ids=q_ids[i], past_key_values=caches[i], use_cache=True,
              attention_mask=torch.ones(1, n + q_ids[i].shape[1], dtype=torch.long, device=device))
        caches[i].crop(-q_ids[i].shape[1])  # back to the document's prefix for the next query

    def plugd_query(i: int) -> None:
        with plugged(model, [plugins[i]]):
            model(input_ids=q_ids[i])

    one = {
        "concat": lambda i: model(input_ids=concat_ids[i]),
        "plugd": plugd_query,
        "kv_prefix": kv_query,
        "closed": lambda i: model(input_ids=q_ids[i]),
    }
    enc = {
        "plugd": lambda i: encode(model, tokenizer, [docs[i]]),
        "kv_prefix": lambda i: model(input_ids=doc_ids[i], past_key_values=DynamicCache(config=model.config),
                                     use_cache=True),
    }
    n = len(docs)
    flops_q = {k: float(np.mean([count_flops(lambda: f(i)) for i in range(n)])) for k, f in one.items()}
    flops_e = {k: float(np.mean([count_flops(lambda: f(i)) for i in range(n)])) for k, f in enc.items()}
    flops_e.update(concat=0.0, closed=0.0)
    every = {**one, **{f"encode_{k}": f for k, f in enc.items()}}
    runs = {k: (lambda f=f: [f(i) for i in range(n)]) for k, f in every.items()}
    secs = interleaved(runs, repeats=repeats, warmup=1)
    ms = {k: 1000 * float(np.median(v)) / n for k, v in secs.items()}
    kv_bytes = float(np.mean([sum(layer.keys.nbytes + layer.values.nbytes for layer in c.layers) for c in caches]))
    plug_bytes = float(np.mean([p.numel() * p.element_size() for p in plugins]))
    out = QueryCosts(
        queries=n, flops_query=flops_q, flops_encode=flops_e,
        ms_query={k: ms[k] for k in one}, ms_encode={k: ms[f"encode_{k}"] for k in enc},
        bytes_per_doc={"plugd": plug_bytes, "kv_prefix": kv_bytes},
        doc_tokens=float(np.mean([d.shape[1] for d in doc_ids])),
        query_tokens=float(np.mean([q.shape[1] for q in q_ids])))
    out.amortised_flops = {str(q): {k: flops_q[k] + flops_e[k] / q for k in METHODS} for q in per_doc}
    return out
