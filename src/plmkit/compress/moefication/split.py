"""Split an FFN's neurons into equal-sized experts.

- ``kmeans``: balanced k-means on the L2-normalised rows of the FFN's input weight (the gate rows for
  a gated FFN: they decide which neurons fire). Neurons whose input directions agree fire together.
- ``coactivation``: spectral clustering of the neuron co-activation graph measured on real inputs
  (edge weight = cosine similarity of two neurons' on/off patterns over tokens), then the same
  balanced k-means on the spectral embedding. We use our own balanced method rather than METIS
  because the sparse path needs *exactly* equal expert sizes (contiguous, equal slices of the
  weights), which METIS' imbalance tolerance does not guarantee, and it needs no binary dependency.

Both return a permutation of the neurons: expert ``e`` owns ``perm[e*s:(e+1)*s]``, ``s = d_ff / E``.
"""
from __future__ import annotations

import numpy as np
import torch

from ...errors import ConfigError


def _balanced_assign(sim: np.ndarray, size: int) -> np.ndarray:
    """Assign each row to a column, ``size`` rows per column, greedily by descending similarity."""
    n, k = sim.shape
    order = np.argsort(-sim, axis=None, kind="stable")
    labels = np.full(n, -1, dtype=np.int64)
    room = np.full(k, size, dtype=np.int64)
    left = n
    for flat in order:
        i, c = divmod(int(flat), k)
        if labels[i] < 0 and room[c] > 0:
            labels[i] = c
            room[c] -= 1
            left -= 1
            if left == 0:
                break
    return labels


def balanced_kmeans(x: torch.Tensor, k: int, iters: int = 20, seed: int = 0) -> torch.Tensor:
    """Cluster the rows of ``x`` into ``k`` clusters of exactly ``len(x) / k`` rows (cosine similarity)."""
    n = x.shape[0]
    if n % k:
        raise ConfigError(f"cannot split {n} neurons into {k} equal experts; choose a number of experts dividing {n}")
    size = n // k
    pts = torch.nn.functional.normalize(x.detach().float(), dim=1).cpu().numpy()  # numpy: an explicit CPU step
    rng = np.random.default_rng(seed)
    centres = pts[rng.choice(n, k, replace=False)]
    labels = np.zeros(n, dtype=np.int64)
    for it in range(iters):
        new = _balanced_assign(pts @ centres.T, size)
        if it and np.array_equal(new, labels):
            break
        labels = new
        for c in range(k):
            m = pts[labels == c].mean(0)
            centres[c] = m / max(np.linalg.norm(m), 1e-12)
    return torch.from_numpy(labels)


def labels_to_perm(labels: torch.Tensor, k: int) -> torch.Tensor:
    """Neuron permutation that puts expert 0's neurons first, then expert 1's, ... (stable inside each)."""
    return torch.argsort(labels * len(labels) + torch.arange(len(labels)))


def kmeans_split(w_select: torch.Tensor, experts: int, iters: int = 20, seed: int = 0) -> torch.Tensor:
    """Permutation from balanced k-means on the rows of ``w_select`` (d_ff, d_model)."""
    return labels_to_perm(balanced_kmeans(w_select, experts, iters, seed), experts)


def active_pattern(acts: torch.Tensor, threshold: float | None = None, top: float = 0.1) -> torch.Tensor:
    """(tokens, d_ff) 0/1 float: |a| > threshold, or each token's top ``top`` fraction by magnitude."""
    mag = acts.abs().float()
    if threshold is not None:
        return (mag > threshold).float()
    kth = max(1, int(round(top * mag.shape[1])))
    cut = mag.topk(kth, dim=1).values[:, -1:]
    return (mag >= cut).float()


def coactivation_split(acts: torch.Tensor, experts: int, threshold: float | None = None, iters: int = 20,
                       seed: int = 0) -> torch.Tensor:
    """Permutation from spectral clustering of the co-activation graph of ``acts`` (tokens, d_ff)."""
    a = active_pattern(acts, threshold)
    co = a.T @ a  # (d_ff, d_ff) co-activation counts
    deg = co.diagonal().clamp_min(1.0)
    w = co / torch.sqrt(deg[:, None] * deg[None, :])  # cosine of on/off patterns
    w.fill_diagonal_(0.0)
    d = w.sum(1).clamp_min(1e-9)
    lap = w / torch.sqrt(d[:, None] * d[None, :])
    _, vecs = torch.linalg.eigh(lap.double())
    emb = vecs[:, -experts:].float()  # leading eigenvectors of the normalised affinity
    return labels_to_perm(balanced_kmeans(emb, experts, iters, seed), experts)
