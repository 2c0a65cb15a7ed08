"""Neuron-level primitives shared by skill neurons (Wang et al. 2022) and functional modularity (Zhang et al. 2023).

- activations: :func:`neuron_activations` (pooled per example, in memory), :func:`activation_stats` (streamed
  into :class:`RunningStats`, nothing else kept);
- predictivity: :func:`threshold_accuracy` (skill neurons; streamed: :func:`streamed_threshold_accuracy`), :func:`average_precision_score_per_neuron` (modularity);
- selection and controls: :func:`top_k_global`, :func:`top_k_per_layer`, :func:`random_like`;
- statistics: :func:`hypergeometric_enrichment`, :func:`binomial_test`, :func:`correct`;
- perturbation: :func:`perturb`, a context manager on :func:`plmkit.hooks.intervene`.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from scipy import stats
from torch import nn

from .. import hooks
from ..device import to_device
from ..errors import ConfigError

_NOT_INPUTS = ("label", "labels")  # batch keys the analysis uses and the model must not see


def _model_inputs(model: nn.Module, batch: Mapping[str, Any]) -> dict[str, Any]:
    return to_device({k: v for k, v in batch.items() if k not in _NOT_INPUTS and isinstance(v, torch.Tensor)}, model)


def _iter_activations(model: nn.Module, batches: Iterable[Mapping[str, Any]], sites: Sequence[str] | None,
                      pool: str, positions: Sequence[int] | None) -> Iterator[dict[str, np.ndarray]]:
    """Per batch: {site: float32 array}, pooled over real tokens or indexed at ``positions``."""
    sites = list(sites) if sites is not None else hooks.site_names(model, "ffn.neurons")
    if positions is None and pool == "none":
        raise ConfigError("pool='none' keeps ragged token axes; pass a pool ('max', 'mean', ...) or positions=[...]")
    pos = None if positions is None else torch.as_tensor(list(positions), dtype=torch.long)
    cap_pool = "none" if pos is not None else pool
    dec = [s for s in sites if s.startswith("decoder.")]  # T5's decoder runs over decoder_input_ids
    enc = [s for s in sites if not s.startswith("decoder.")]
    for batch in batches:
        inputs = _model_inputs(model, batch)
        with torch.no_grad(), contextlib.ExitStack() as stack:
            groups = []
            for names, key in ((enc, "attention_mask"), (dec, "decoder_attention_mask")):
                if names:
                    groups.append(stack.enter_context(
                        hooks.capture(model, names, pool=cap_pool, attention_mask=inputs.get(key))))
            if not dec and getattr(model.config, "is_encoder_decoder", False) and "decoder_input_ids" not in inputs:
                model.get_encoder()(**inputs)  # encoder sites only: the decoder needs no inputs
            else:
                model(**inputs)
        out = {}
        for acts in groups:
            for name, x in acts.items():
                if pos is not None:
                    x = x[:, pos.to(x.device)]  # (batch, n_positions, d_ff)
                out[name] = x.float().cpu().numpy()
        yield {s: out[s] for s in sites}


def neuron_activations(model: nn.Module, batches: Iterable[Mapping[str, Any]], sites: Sequence[str] | None = None,
                       pool: str = "max", positions: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """Activations per site (default: every block's ``ffn.neurons``): (n_examples, d_ff) pooled over real tokens
    (``pool``: max, mean, first, last; ``tokens`` gives one row per real token), or (n_examples, n_positions, d_ff)
    at ``positions`` (indices into the sequence as the site sees it, i.e. prompt tuning's virtual tokens first;
    ``pool`` is then ignored). Batches are dicts of model inputs; ``label``/``labels`` keys are not passed on."""
    parts: dict[str, list[np.ndarray]] = {}
    for acts in _iter_activations(model, batches, sites, pool, positions):
        for name, x in acts.items():
            parts.setdefault(name, []).append(x)
    return {name: np.concatenate(xs, 0) for name, xs in parts.items()}


class RunningStats:
    """Per-feature count, mean, M2 (Welford/Chan merging, float64), min and max over rows of the updates."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: np.ndarray | None = None
        self.m2: np.ndarray | None = None
        self.min: np.ndarray | None = None
        self.max: np.ndarray | None = None

    def update(self, x: np.ndarray | torch.Tensor) -> "RunningStats":
        """Add the rows of ``x`` (n, *features)."""
        if isinstance(x, torch.Tensor):
            x = x.detach().float().cpu().numpy()
        x = np.asarray(x, dtype=np.float64)
        n = x.shape[0]
        if n == 0:
            return self
        mean, m2 = x.mean(0), ((x - x.mean(0)) ** 2).sum(0)
        if self.mean is None:
            self.count, self.mean, self.m2, self.min, self.max = n, mean, m2, x.min(0), x.max(0)
            return self
        if mean.shape != self.mean.shape:
            raise ConfigError(f"RunningStats: features {mean.shape} do not match earlier ones {self.mean.shape}")
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta ** 2 * (self.count * n / total)
        self.min, self.max = np.minimum(self.min, x.min(0)), np.maximum(self.max, x.max(0))
        self.count = total
        return self

    @property
    def var(self) -> np.ndarray:
        """Population variance (ddof=0, as ``np.var``)."""
        if self.m2 is None:
            raise ConfigError("RunningStats: no data yet")
        return self.m2 / self.count

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.var)


def activation_stats(model: nn.Module, batches: Iterable[Mapping[str, Any]], sites: Sequence[str] | None = None,
                     pool: str = "max", positions: Sequence[int] | None = None) -> dict[str, RunningStats]:
    """Running statistics per site, streamed batch by batch (arguments as :func:`neuron_activations`);
    ``pool='tokens'`` gives per-token statistics (e.g. the means for ``perturb(kind='mean')``)."""
    out: dict[str, RunningStats] = {}
    for acts in _iter_activations(model, batches, sites, pool, positions):
        for name, x in acts.items():
            out.setdefault(name, RunningStats()).update(x)
    return out


# --- predictivity ------------------------------------------------------------------------

def _binary(y: Any, n: int, what: str) -> np.ndarray:
    y = np.asarray(y).reshape(-1)
    if y.shape[0] != n:
        raise ConfigError(f"{what}: {y.shape[0]} labels for {n} examples")
    if not np.isin(y, (0, 1)).all():
        raise ConfigError(f"{what}: labels must be binary 0/1 (binarise multi-class tasks first)")
    return y.astype(np.int64)


def threshold_accuracy(train_acts: np.ndarray, train_y: Any, dev_acts: np.ndarray,
                       dev_y: Any) -> tuple[np.ndarray, np.ndarray]:
    """Skill-neuron predictivity: threshold = mean train activation per neuron, prediction = act > threshold,
    accuracy on dev. Acts are (n, *features); returns (|acc - 0.5|, acc), each of shape features."""
    train_acts, dev_acts = np.asarray(train_acts, np.float64), np.asarray(dev_acts, np.float64)
    _binary(train_y, train_acts.shape[0], "threshold_accuracy(train)")
    y = _binary(dev_y, dev_acts.shape[0], "threshold_accuracy(dev)")
    if train_acts.shape[1:] != dev_acts.shape[1:]:
        raise ConfigError(f"threshold_accuracy: train {train_acts.shape[1:]} and dev {dev_acts.shape[1:]} differ")
    pred = dev_acts > train_acts.mean(0)
    acc = (pred == y.reshape((-1,) + (1,) * (dev_acts.ndim - 1)).astype(bool)).mean(0)
    return np.abs(acc - 0.5), acc


def streamed_threshold_accuracy(model: nn.Module, train_batches: Iterable[Mapping[str, Any]],
                                dev_batches: Iterable[Mapping[str, Any]], sites: Sequence[str] | None = None,
                                pool: str = "max", positions: Sequence[int] | None = None,
                                ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """:func:`threshold_accuracy` per site without holding a corpus of activations: one pass over the train
    batches for the mean (the threshold), one over the dev batches counting correct predictions. Batches carry
    their binary labels under ``labels`` (or ``label``); arguments as :func:`neuron_activations`. Returns
    ({site: |acc - 0.5|}, {site: acc})."""
    means = {s: st.mean for s, st in activation_stats(model, train_batches, sites, pool, positions).items()}
    if not means:
        raise ConfigError("streamed_threshold_accuracy: no train examples")
    right: dict[str, np.ndarray] = {}
    count = 0
    dev = iter(dev_batches)

    def labelled() -> Iterator[Mapping[str, Any]]:
        nonlocal labels
        for batch in dev:
            y = batch.get("labels", batch.get("label"))
            if y is None:
                raise ConfigError("streamed_threshold_accuracy: dev batches need 'labels'")
            labels = _binary(torch.as_tensor(y).cpu().numpy(), len(y), "streamed_threshold_accuracy(dev)")
            yield batch

    labels = np.zeros(0, np.int64)
    for acts in _iter_activations(model, labelled(), sites, pool, positions):
        count += labels.shape[0]
        for name, x in acts.items():
            y = labels.reshape((-1,) + (1,) * (x.ndim - 1)).astype(bool)
            hit = ((x > means[name]) == y).sum(0)
            right[name] = right.get(name, 0) + hit
    if not count:
        raise ConfigError("streamed_threshold_accuracy: no dev examples")
    acc = {name: r / count for name, r in right.items()}
    return {name: np.abs(a - 0.5) for name, a in acc.items()}, acc


def average_precision_score_per_neuron(acts: np.ndarray, y: Any) -> np.ndarray:
    """max(AP(y, a), AP(1 - y, a)) per neuron (column of ``acts``, (n, *features)), equal to sklearn's
    ``average_precision_score``: AP = sum over distinct thresholds of (R_t - R_{t-1}) * P_t. Ties: examples with
    equal activation enter together at one threshold, so every positive in a tie group is credited the precision
    of the whole group (not an order-dependent precision). One sort per column, vectorised."""
    a = np.asarray(acts, np.float64)
    y = _binary(y, a.shape[0], "average_precision_score_per_neuron")
    if y.min() == y.max():
        raise ConfigError("average_precision_score_per_neuron: labels need both classes")
    if not np.isfinite(a).all():
        raise ConfigError("average_precision_score_per_neuron: activations must be finite")
    shape, n = a.shape[1:], a.shape[0]
    a = a.reshape(n, -1)
    order = np.argsort(-a, axis=0, kind="stable")
    s = np.take_along_axis(a, order, 0)
    ys = y[order]  # (n, features), labels in descending activation order
    ranks = np.arange(1, n + 1)[:, None]
    # end of each tie group: the last row before the activation changes; each row looks up its group's end
    is_end = np.ones_like(s, dtype=bool)
    is_end[:-1] = s[:-1] != s[1:]
    end = np.where(is_end, np.arange(n)[:, None], n)
    end = np.minimum.accumulate(end[::-1], axis=0)[::-1]
    result = []
    for lab, positives in ((ys, y.sum()), (1 - ys, n - y.sum())):
        precision = np.take_along_axis(np.cumsum(lab, 0) / ranks, end, 0)  # precision at the row's threshold
        result.append((lab * precision).sum(0) / positives)  # each positive adds (1/P) * P_t
    return np.maximum(*result).reshape(shape)


# --- selection and controls --------------------------------------------------------------

def _count(fraction: float, n: int) -> int:
    if not 0 < fraction <= 1:
        raise ConfigError(f"fraction must lie in (0, 1], got {fraction}")
    return max(1, int(round(fraction * n)))


def _scores(scores_by_layer: Mapping[str, Any]) -> dict[str, np.ndarray]:
    out = {k: np.asarray(v, np.float64) for k, v in scores_by_layer.items()}
    for k, v in out.items():
        if v.ndim != 1:
            raise ConfigError(f"scores of '{k}' must be 1-D (one per neuron), got {v.shape}; reduce positions first")
    return out


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores; ties go to the lower index, NaN ranks last."""
    return np.argsort(-np.nan_to_num(scores, nan=-np.inf), kind="stable")[:k]


def top_k_global(scores_by_layer: Mapping[str, Any], fraction: float) -> dict[str, np.ndarray]:
    """The top ``fraction`` of all neurons pooled over layers (at least one); {layer: sorted indices}, every layer
    present (possibly empty). Ties go to the earlier layer, then the lower index."""
    scores = _scores(scores_by_layer)
    names = list(scores)
    flat = np.concatenate([scores[n] for n in names]) if names else np.zeros(0)
    if flat.size == 0:
        return {n: np.zeros(0, np.int64) for n in names}
    chosen = _top(flat, _count(fraction, flat.size))
    starts = np.cumsum([0] + [scores[n].size for n in names])
    return {n: np.sort(chosen[(chosen >= lo) & (chosen < hi)] - lo).astype(np.int64)
            for n, lo, hi in zip(names, starts[:-1], starts[1:])}


def top_k_per_layer(scores_by_layer: Mapping[str, Any], fraction: float) -> dict[str, np.ndarray]:
    """The top ``fraction`` (at least one) of each layer's neurons; {layer: sorted indices}."""
    return {n: np.sort(_top(s, _count(fraction, s.size))).astype(np.int64) if s.size else np.zeros(0, np.int64)
            for n, s in _scores(scores_by_layer).items()}


def random_like(selection: Mapping[str, Any], sizes_by_layer: Mapping[str, int], seed: int,
                exclude: bool = False) -> dict[str, np.ndarray]:
    """The same number of neurons per layer, drawn uniformly without replacement from ``range(size)`` by
    ``np.random.default_rng(seed)`` (layers in ``selection``'s order); ``exclude`` draws from the unselected ones."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, idx in selection.items():
        idx = np.asarray(idx, np.int64).reshape(-1)
        size = int(sizes_by_layer[name])
        pool = np.setdiff1d(np.arange(size), idx) if exclude else np.arange(size)
        if idx.size > pool.size:
            raise ConfigError(f"random_like: cannot draw {idx.size} of {pool.size} neurons in '{name}'")
        out[name] = np.sort(rng.choice(pool, size=idx.size, replace=False)).astype(np.int64)
    return out


# --- statistics --------------------------------------------------------------------------

def hypergeometric_enrichment(selected: Iterable[int], group: Iterable[int], total: int) -> float:
    """One-sided P(X >= k) that a group of n of ``total`` items holds k or more of the N selected ones by chance:
    ``hypergeom.sf(k - 1, total, n, N)`` (e.g. an expert's share of a function's top neurons)."""
    sel, grp = set(int(i) for i in selected), set(int(i) for i in group)
    if any(not 0 <= i < total for i in sel | grp):
        raise ConfigError(f"hypergeometric_enrichment: indices must lie in [0, {total})")
    k = len(sel & grp)
    return float(stats.hypergeom.sf(k - 1, total, len(grp), len(sel)))


def binomial_test(k: int, n: int, p: float) -> float:
    """One-sided P(X >= k) for X ~ Binomial(n, p) (``scipy.stats.binomtest``, alternative='greater')."""
    return float(stats.binomtest(int(k), int(n), float(p), alternative="greater").pvalue)


def correct(pvalues: Any, method: str = "holm") -> np.ndarray:
    """Adjusted p-values (same shape, capped at 1), with m tests and p_(1) <= ... <= p_(m):
    ``bonferroni``: m p; ``holm``: max_{j<=i} (m - j + 1) p_(j); ``fdr_bh`` (Benjamini-Hochberg):
    min_{j>=i} m p_(j) / j. Reject where the adjusted value <= alpha."""
    p = np.asarray(pvalues, np.float64)
    flat = p.reshape(-1)
    m = flat.size
    if m == 0:
        return p.copy()
    if not ((flat >= 0) & (flat <= 1)).all():
        raise ConfigError("correct: p-values must lie in [0, 1] (and not be NaN)")
    if method == "bonferroni":
        return np.minimum(p * m, 1.0)
    order = np.argsort(flat, kind="stable")
    ps, rank = flat[order], np.arange(1, m + 1)
    if method == "holm":
        adj = np.maximum.accumulate((m - rank + 1) * ps)
    elif method == "fdr_bh":
        adj = np.minimum.accumulate((m * ps / rank)[::-1])[::-1]
    else:
        raise ConfigError(f"unknown correction '{method}'; choose holm, bonferroni or fdr_bh")
    out = np.empty(m)
    out[order] = np.minimum(adj, 1.0)
    return out.reshape(p.shape)


# --- perturbation ------------------------------------------------------------------------

def _shuffle(neurons: torch.Tensor, factor: float, generator: torch.Generator) -> hooks.Edit:
    """Each selected neuron's values permuted independently over all token positions of the batch, times factor."""

    def edit(x: torch.Tensor) -> torch.Tensor:
        idx = neurons.to(x.device)
        v = x[..., idx].reshape(-1, idx.numel())
        perm = torch.rand(v.shape, generator=generator).argsort(0).to(x.device)
        x = x.clone()
        x[..., idx] = (torch.gather(v, 0, perm) * factor).reshape(x.shape[:-1] + (idx.numel(),))
        return x

    return edit


@contextlib.contextmanager
def perturb(model: nn.Module, selection: Mapping[str, Any], kind: str = "noise", scale: float = 1.0, seed: int = 0,
            means: Mapping[str, Any] | None = None) -> Iterator[None]:
    """Perturb the selected neurons ({site: indices}, e.g. ``{"blocks.3.ffn.neurons": [4, 9]}``) in the forward
    passes inside the block; hooks are removed on exit. ``noise``: add Gaussian noise of std ``scale``; ``zero``;
    ``mean``: set to ``means[site][indices]`` (a full per-neuron vector or a RunningStats); ``shuffle``: permute each
    selected neuron's values over the batch's token positions (padding included), times ``scale``. Randomness comes
    from a CPU torch.Generator seeded with ``seed`` at entry, shared by the sites; empty sites are untouched."""
    if kind not in ("noise", "zero", "mean", "shuffle"):
        raise ConfigError(f"unknown perturbation '{kind}'; choose noise, zero, mean or shuffle")
    if kind == "mean" and means is None:
        raise ConfigError("perturb(kind='mean') needs means={site: per-neuron means}, e.g. from activation_stats")
    generator = torch.Generator().manual_seed(int(seed))
    edits: dict[str, hooks.Edit] = {}
    for site, idx in selection.items():
        idx = torch.as_tensor(np.asarray(idx, np.int64).reshape(-1))
        if idx.numel() == 0:
            continue
        if kind == "noise":
            edits[site] = hooks.add_noise(idx, std=scale, generator=generator)
        elif kind == "zero":
            edits[site] = hooks.zero(idx)
        elif kind == "shuffle":
            edits[site] = _shuffle(idx, scale, generator)
        else:
            if site not in means:
                raise ConfigError(f"perturb(kind='mean'): no means for '{site}'")
            m = means[site].mean if isinstance(means[site], RunningStats) else means[site]
            m = m.detach().float().cpu() if isinstance(m, torch.Tensor) else torch.as_tensor(np.asarray(m, np.float32))
            edits[site] = hooks.mean_ablate(idx, m.reshape(-1)[idx])
    with hooks.intervene(model, edits):
        yield
