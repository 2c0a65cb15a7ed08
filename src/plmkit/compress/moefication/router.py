"""Routers: score each expert for each token; trained to predict each expert's share of activation mass."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class SimilarityRouter(nn.Module):
    """Score = the expert's mean pre-activation: ``x · mean(w_e) + mean(b_e)`` over its neurons. No training."""

    def __init__(self, centres: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("centres", centres.detach().clone())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.centres, self.bias)


class MLPRouter(nn.Module):
    """``Linear(d, h) -> tanh -> Linear(h, E)``; the first layer starts from the expert centres when h = E."""

    def __init__(self, d_model: int, experts: int, hidden: int | None = None, centres: torch.Tensor | None = None,
                 generator: torch.Generator | None = None, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__()
        hidden = hidden or experts
        g = generator or torch.Generator().manual_seed(0)

        def uniform(shape: tuple[int, ...], fan_in: int) -> torch.Tensor:  # nn.Linear's default init, seeded
            bound = 1 / fan_in ** 0.5
            return (torch.rand(shape, generator=g) * 2 - 1) * bound

        w1, b1 = uniform((hidden, d_model), d_model), uniform((hidden,), d_model)
        if centres is not None and hidden == experts:
            w1, b1 = F.normalize(centres.detach().float().cpu(), dim=1), torch.zeros(hidden)
        w2, b2 = uniform((experts, hidden), hidden), uniform((experts,), hidden)
        kw = {"device": device if device is not None else (centres.device if centres is not None else None),
              "dtype": dtype or torch.float32}
        self.w1, self.b1 = nn.Parameter(w1.to(**kw)), nn.Parameter(b1.to(**kw))
        self.w2, self.b2 = nn.Parameter(w2.to(**kw)), nn.Parameter(b2.to(**kw))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # two addmm and a tanh: runs once per token per layer
        return torch.addmm(self.b2, torch.tanh(torch.addmm(self.b1, x, self.w1.t())), self.w2.t())


def expert_mass(acts: torch.Tensor, experts: int) -> torch.Tensor:
    """(tokens, E): each expert's |activation| mass, from activations already in expert order."""
    n, d = acts.shape
    return acts.abs().float().view(n, experts, d // experts).sum(-1)


def train_router(router: nn.Module, x: torch.Tensor, mass: torch.Tensor, steps: int = 300, lr: float = 1e-2,
                 batch: int = 512, seed: int = 0) -> list[float]:
    """Fit ``router`` so that sigmoid(scores) predicts each expert's mass relative to the token's largest.

    The targets (mass / max mass, in [0, 1]) keep the experts' order, which is all top-k needs, and
    give a BCE objective as in MoEfication's MLP router. Returns the loss every 50 steps.
    """
    target = mass / mass.amax(1, keepdim=True).clamp_min(1e-12)
    params = [p for p in router.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    g = torch.Generator().manual_seed(seed)
    x = x.to(device=params[0].device, dtype=params[0].dtype)
    target = target.to(params[0].device)
    losses = []
    router.train()
    with torch.enable_grad():
        for step in range(steps):
            idx = torch.randint(0, len(x), (min(batch, len(x)),), generator=g).to(x.device)
            loss = F.binary_cross_entropy_with_logits(router(x[idx]).float(), target[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if step % 50 == 0 or step == steps - 1:
                losses.append(float(loss.detach()))
    router.eval()
    return losses


def recall(selected: torch.Tensor, mass: torch.Tensor) -> float:
    """Mean over tokens of the share of activation mass held by the ``selected`` (tokens, E) bool experts."""
    total = mass.sum(1).clamp_min(1e-12)
    return float(((mass * selected).sum(1) / total).mean())


def top_k_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    sel = torch.zeros_like(scores, dtype=torch.bool)
    return sel.scatter_(1, scores.topk(k, dim=1).indices, True)


def mass_mask(scores: torch.Tensor, mass: float) -> torch.Tensor:
    """The fewest experts whose predicted share (normalised sigmoid scores) reaches ``mass``."""
    p = torch.sigmoid(scores.float())
    p = p / p.sum(1, keepdim=True)
    sorted_p, order = p.sort(1, descending=True)
    keep = (sorted_p.cumsum(1) - sorted_p) < mass  # keep until the running share crosses ``mass``
    return torch.zeros_like(keep).scatter_(1, order, keep)


def select_experts(scores: torch.Tensor, k: int | None, mass: float | None) -> torch.Tensor:
    """(tokens, E) bool: the top ``k`` experts, or (with ``k`` None) the fewest reaching ``mass``."""
    return top_k_mask(scores, k) if k is not None else mass_mask(scores, mass)


def permute_experts(router: nn.Module, order: torch.Tensor) -> None:
    """Reorder a router's outputs in place: new expert ``i`` is old expert ``order[i]``."""
    with torch.no_grad():
        if isinstance(router, MLPRouter):
            router.w2.data, router.b2.data = router.w2.data[order].clone(), router.b2.data[order].clone()
        elif isinstance(router, SimilarityRouter):
            router.centres = router.centres[order].clone()
            if router.bias is not None:
                router.bias = router.bias[order].clone()
        else:
            raise TypeError(f"cannot reorder the outputs of {type(router).__name__}")


def coselection_order(selected: torch.Tensor) -> torch.Tensor:
    """An order of the experts that puts often co-selected ones next to each other.

    Greedy path over the co-selection counts of ``selected`` (tokens, E): start from the most
    co-selected pair, then extend either end with the unplaced expert most co-selected with it.
    Adjacent selected experts are computed as one slice, so this saves matmul calls at batch 1.
    """
    s = selected.float()
    co = s.T @ s
    co.fill_diagonal_(-1.0)
    e = co.shape[0]
    i, j = divmod(int(co.argmax()), e)
    path, placed = [i, j], {i, j}
    while len(path) < e:
        best = None
        for end, pos in ((path[0], 0), (path[-1], len(path))):
            row = co[end].clone()
            row[list(placed)] = -2.0
            k = int(row.argmax())
            if best is None or row[k] > best[0]:
                best = (float(row[k]), k, pos)
        _, k, pos = best
        path.insert(pos, k)
        placed.add(k)
    return torch.tensor(path, device=selected.device)
