"""Filtered link-prediction ranking: MR, MRR, Hits@k with explicit tie handling."""
from __future__ import annotations

from collections import defaultdict
from typing import Callable, Iterable, Sequence

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


ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def link_prediction(
    score_tails: ScoreFn,
    score_heads: ScoreFn,
    triples: torch.Tensor | Sequence[tuple[int, int, int]],
    filter_triples: Iterable[tuple[int, int, int]],
    num_entities: int,
    *,
    candidates: torch.Tensor | Sequence[int] | None = None,
    batch_size: int = 256,
    ties: str = "realistic",
    ks: Iterable[int] = (1, 3, 10),
    progress: bool = False,
) -> dict[str, dict[str, float]]:
    """Filtered link prediction by full ranking, both directions: ``{"head", "tail", "both"}`` -> metrics.

    ``score_tails(h, r)`` returns ``[B, num_entities]`` scores for every candidate tail (higher =
    more plausible) and ``score_heads(r, t)`` the same for heads. Every other true answer found in
    ``filter_triples`` is removed from the ranking (the filtered setting; pass train+valid+test for
    the transductive protocol, the test graph for the inductive one). ``candidates`` restricts the
    ranking to a subset of entity ids (e.g. the entities of an inductive test graph). ``both`` pools
    the head and tail ranks, as PyKEEN's ``both`` side does. Each side also gives ``query_entity_first``:
    the share of queries whose own entity outscores every ranked candidate (a symmetric relation's
    trivial answer; the protocol keeps it as a candidate).
    """
    from tqdm.auto import tqdm

    triples = torch.as_tensor(triples, dtype=torch.long).reshape(-1, 3)
    tails_of, heads_of = known_answers((int(h), int(r), int(t)) for h, r, t in filter_triples)
    excluded = torch.zeros(num_entities, dtype=torch.bool)
    if candidates is not None:
        excluded[:] = True
        excluded[torch.as_tensor(candidates, dtype=torch.long)] = False
        if excluded[triples[:, [0, 2]].reshape(-1)].any():
            raise ValueError("every head and tail of the evaluated triples must be among the candidates")
    ranks: dict[str, list[torch.Tensor]] = {"head": [], "tail": []}
    query_top: dict[str, list[torch.Tensor]] = {"head": [], "tail": []}
    for start in tqdm(range(0, len(triples), batch_size), desc="link prediction", disable=not progress):
        h, r, t = triples[start:start + batch_size].unbind(1)
        for side, scores, target, query, others in (
            ("tail", score_tails(h, r), t, h, [tails_of.get((int(a), int(b)), ()) for a, b in zip(h, r)]),
            ("head", score_heads(r, t), h, t, [heads_of.get((int(b), int(c)), ()) for b, c in zip(r, t)]),
        ):
            mask = excluded.expand(len(target), -1).clone()
            rows = [i for i, o in enumerate(others) for _ in o]
            cols = [e for o in others for e in o]
            mask[rows, cols] = True
            scores = scores.detach().cpu()
            ranks[side].append(rank_of_target(scores, target, mask, ties))
            query_top[side].append(_query_ranks_first(scores, target, query, mask))
    out = {side: ranking_metrics(torch.cat(v), ks) for side, v in ranks.items()}
    out["both"] = ranking_metrics(torch.cat(ranks["head"] + ranks["tail"]), ks)
    for side, flags in (*query_top.items(), ("both", query_top["head"] + query_top["tail"])):
        out[side]["query_entity_first"] = torch.cat(flags).double().mean().item()  # type: ignore[index]
    return out


def _query_ranks_first(scores: torch.Tensor, target: torch.Tensor, query: torch.Tensor,
                       mask: torch.Tensor) -> torch.Tensor:
    """Per row: whether the query's own entity (the head when tails are ranked) scores strictly above every
    other ranked candidate (a tie is not counted), the target included."""
    rows = torch.arange(scores.shape[0])
    valid = ~mask.bool()
    valid[rows, target] = True
    ranked = scores.float().masked_fill(~valid, float("-inf"))
    own = ranked[rows, query].clone()
    ranked[rows, query] = float("-inf")
    return valid[rows, query] & (own > ranked.max(1).values)
