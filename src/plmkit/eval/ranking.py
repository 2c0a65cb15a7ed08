"""Filtered link-prediction ranking: MR, MRR, Hits@k with explicit tie handling."""
from __future__ import annotations

from collections import defaultdict
from typing import Iterable, Sequence

import torch

TIES = ("realistic", "optimistic", "pessimistic")


def rank_of_target(scores: torch.Tensor, target: torch.Tensor, filter_mask: torch.Tensor | None = None,
                   ties: str = "realistic") -> torch.Tensor:
    """1-based rank of ``target`` in each row of ``scores`` (higher = better).

    ``filter_mask`` (same shape, True = another known true answer) removes those candidates; the
    target itself is never filtered. ``realistic`` ties = mean of optimistic and pessimistic ranks.
    """
    if ties not in TIES:
        raise ValueError(f"ties must be one of {TIES}")
    scores = scores.float()
    rows = torch.arange(scores.shape[0], device=scores.device)
    tgt = scores[rows, target].unsqueeze(1)
    valid = torch.ones_like(scores, dtype=torch.bool)
    if filter_mask is not None:
        valid &= ~filter_mask.bool()
    valid[rows, target] = True
    better = ((scores > tgt) & valid).sum(1).float()
    equal = ((scores == tgt) & valid).sum(1).float() - 1  # minus the target itself
    optimistic, pessimistic = better + 1, better + equal + 1
    return {"optimistic": optimistic, "pessimistic": pessimistic,
            "realistic": (optimistic + pessimistic) / 2}[ties]


def ranking_metrics(ranks: torch.Tensor | Sequence[float], ks: Iterable[int] = (1, 3, 10)) -> dict[str, float]:
    r = torch.as_tensor(ranks, dtype=torch.float64)
    out = {"MR": r.mean().item(), "MRR": (1 / r).mean().item()}
    out.update({f"Hits@{k}": (r <= k).double().mean().item() for k in ks})
    out["n"] = int(r.numel())
    return out


def known_answers(triples: Iterable[tuple[int, int, int]]) -> tuple[dict, dict]:
    """Indexes of true tails per (head, relation) and true heads per (relation, tail), for filtering."""
    tails, heads = defaultdict(set), defaultdict(set)
    for h, r, t in triples:
        tails[(h, r)].add(t)
        heads[(r, t)].add(h)
    return tails, heads
