"""Functional modularity (Zhang et al. 2023, "Emergent Modularity in Pre-trained Transformers").

FFN neurons are grouped into experts (:func:`expert_partition`: MoEfication's balanced k-means of the FFN input
weight rows, co-activation clustering, or a random partition of the same sizes). For a binary sub-function
(:mod:`plmkit.data.functions`) each neuron's predictivity is max(AP(y, a), AP(1 - y, a)) of its max-pooled
activation (:func:`neuron_predictivity`); an expert is *functional* when it holds significantly many of the
function's top-1% neurons (one-sided hypergeometric test, raw p <= 0.001: :func:`functional_experts`).

>>> from plmkit.analysis import modularity as mod
>>> part = mod.expert_partition(model, experts=16)                          # doctest: +SKIP
>>> scores = {f.name: mod.function_predictivity(model, tok, f) for f in fns}  # doctest: +SKIP
>>> mod.modularization_extent(scores, part).overall                         # doctest: +SKIP

Modularization extent (:func:`modularization_extent`). For a function f and a layer l, let T be f's top neurons
(the top ``top`` fraction, per layer by default) and N = |T|. A statistic c(T, partition) measures how
concentrated T is in the experts; ``ratio(f, l) = c(T, real partition) / E[c(T, random partition)]``, the
expectation over uniform random partitions with the real experts' sizes. The extent of layer l is the mean
of ratio(f, l) over functions, and the overall extent the mean over all (function, layer) pairs (NaN ratios,
e.g. N = 0, are skipped). Both sides apply the same statistic, so the selection of the "best" or "functional"
experts does not inflate the ratio: a random partition has extent ~1, a modular one > 1. Statistics:

- ``best`` (default): the number of T's neurons in the single expert holding most of them;
  E[.] is the mean over ``draws`` seeded random partitions. Bounded by min(N, expert size) / E[.].
- ``functional``: the number of T's neurons in f's functional experts (raw p <= ``alpha``); E[.] is exact:
  sum over experts e of sum_{k : P(X >= k) <= alpha} k * P(X = k), X ~ Hypergeom(d_ff, |e|, N). Heavy-tailed
  (a random partition rarely has a functional expert), and 0/0 = NaN where no count could be significant.

Perturbation: :func:`expert_selection` (functional experts' neurons), :func:`random_experts_like` and
:func:`top_neurons_like` (controls of equal size) feed :func:`plmkit.analysis.neurons.perturb` (shuffle x 4);
:func:`probe_accuracy` measures how well the model still computes a function. Emergence:
:func:`emergence_curve` (Spearman between consecutive checkpoints' neuron- vs expert-level scores).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from scipy import stats
from torch import nn

from .. import arch, hooks
from ..compress.moefication.split import coactivation_split, kmeans_split
from ..data.batching import token_batches
from ..device import to_device
from ..errors import ConfigError
from . import neurons

Scores = Mapping[str, Any]  # {site: (d_ff,) scores}
Partition = Mapping[str, np.ndarray]  # {site: (d_ff,) expert id per neuron}
METHODS = ("kmeans", "coactivation", "random")
STATISTICS = ("best", "functional")


# --- partitions --------------------------------------------------------------------------

def _perm_to_labels(perm: torch.Tensor, experts: int) -> np.ndarray:
    """Expert id per neuron from a split permutation (expert e owns perm[e*s:(e+1)*s])."""
    p = perm.cpu().numpy()
    labels = np.empty(p.size, np.int64)
    labels[p] = np.repeat(np.arange(experts), p.size // experts)
    return labels


def expert_partition(model: nn.Module, experts: int, method: str = "kmeans", seed: int = 0,
                     acts: Mapping[str, Any] | None = None, iters: int = 20,
                     override: arch.layers.Override = None) -> dict[str, np.ndarray]:
    """{``...ffn.neurons`` site: (d_ff,) expert id} for every block, ``experts`` equal-sized experts per layer.

    ``kmeans``: MoEfication's balanced k-means of the FFN input weight rows (gate rows for a gated FFN);
    ``coactivation``: co-activation clustering of ``acts`` ({site: (tokens, d_ff)}, e.g.
    ``neurons.neuron_activations(model, batches, pool="tokens")``); ``random``: a seeded random assignment."""
    if method not in METHODS:
        raise ConfigError(f"unknown partition method '{method}'; choose {', '.join(METHODS)}")
    if not isinstance(experts, (int, np.integer)) or experts < 1:
        raise ConfigError(f"experts must be a positive integer, got {experts!r}")
    if method == "coactivation" and acts is None:
        raise ConfigError("method='coactivation' needs acts={site: (tokens, d_ff)}, e.g. "
                          "neurons.neuron_activations(model, batches, pool='tokens')")
    layer_list = arch.layers(model, override)
    sites = hooks.site_names(model, "ffn.neurons", override=override)
    rng = np.random.default_rng(seed)
    out = {}
    for site, layer in zip(sites, layer_list):
        d_ff = layer.d_ff
        if d_ff % experts:
            raise ConfigError(f"experts={experts} does not divide d_ff={d_ff} of '{site}'; choose a divisor of {d_ff}")
        if method == "random":
            out[site] = rng.permutation(np.repeat(np.arange(experts), d_ff // experts)).astype(np.int64)
        elif method == "kmeans":
            w = layer.ffn_gate_weight() if layer.ffn_gate is not None else layer.ffn_in_weight()
            out[site] = _perm_to_labels(kmeans_split(w, experts, iters, seed), experts)
        else:
            if site not in acts:
                raise ConfigError(f"method='coactivation': no activations for '{site}' in acts")
            a = torch.as_tensor(np.asarray(acts[site], np.float32))
            if a.ndim != 2 or a.shape[1] != d_ff:
                raise ConfigError(f"acts['{site}'] must be (tokens, {d_ff}), got {tuple(a.shape)}")
            out[site] = _perm_to_labels(coactivation_split(a, experts, None, iters, seed), experts)
    return out


def random_partition_like(partition: Partition, seed: int = 0) -> dict[str, np.ndarray]:
    """The same expert sizes per layer, neurons assigned uniformly at random (seeded; layers in order)."""
    rng = np.random.default_rng(seed)
    return {site: rng.permutation(np.asarray(labels, np.int64)) for site, labels in partition.items()}


def _labels(partition: Partition, site: str, size: int) -> np.ndarray:
    if site not in partition:
        raise ConfigError(f"the partition has no site '{site}'; build it with expert_partition(model, ...)")
    labels = np.asarray(partition[site])
    if labels.shape != (size,) or not np.issubdtype(labels.dtype, np.integer) or labels.min(initial=0) < 0:
        raise ConfigError(f"partition['{site}'] must be ({size},) non-negative expert ids, got {labels.shape}")
    return labels.astype(np.int64)


def n_experts(labels: np.ndarray) -> int:
    return int(np.max(labels)) + 1 if len(labels) else 0


# --- predictivity ------------------------------------------------------------------------

def neuron_predictivity(acts_by_site: Mapping[str, Any], labels: Any) -> dict[str, np.ndarray]:
    """{site: (d_ff,) max(AP(y, a), AP(1 - y, a))} from per-example pooled activations ({site: (n, d_ff)},
    e.g. ``neurons.neuron_activations(..., pool="max")``)."""
    out = {}
    for site, a in acts_by_site.items():
        a = np.asarray(a)
        if a.ndim != 2:
            raise ConfigError(f"acts['{site}'] must be (examples, d_ff), got {a.shape}; pool over tokens "
                              "first: neuron_activations(..., pool='max')")
        out[site] = neurons.average_precision_score_per_neuron(a, labels)
    return out


def function_predictivity(model: nn.Module, tokenizer, fn: Any, batch_size: int = 32,
                          max_length: int = 64) -> dict[str, np.ndarray]:
    """Neuron predictivity for a :class:`~plmkit.data.functions.BinaryFunction` (max-pooled FFN activations)."""
    acts = neurons.neuron_activations(model, token_batches(tokenizer, fn.texts, batch_size, max_length),
                                      sites=text_sites(model), pool="max")
    return neuron_predictivity(acts, fn.labels)


def text_sites(model: nn.Module) -> list[str]:
    """The FFN neuron sites that read the input text: every block's, or an encoder-decoder's encoder blocks."""
    return [s for s in hooks.site_names(model, "ffn.neurons") if not s.startswith("decoder.")]


def functions_predictivity(model: nn.Module, tokenizer, fns: Sequence[Any], batch_size: int = 32,
                           max_length: int = 64) -> dict[str, dict[str, np.ndarray]]:
    """{function name: neuron predictivity} for many functions, each distinct text run through the model once."""
    texts = list(dict.fromkeys(t for f in fns for t in f.texts))
    where = {t: i for i, t in enumerate(texts)}
    acts = neurons.neuron_activations(model, token_batches(tokenizer, texts, batch_size, max_length),
                                      sites=text_sites(model), pool="max")
    return {f.name: neuron_predictivity({s: a[[where[t] for t in f.texts]] for s, a in acts.items()}, f.labels)
            for f in fns}


def _top_selection(scores_by_site: Scores, top: float, per_layer: bool) -> dict[str, np.ndarray]:
    return (neurons.top_k_per_layer if per_layer else neurons.top_k_global)(scores_by_site, top)


# --- functional experts ------------------------------------------------------------------

def expert_pvalues(scores_by_site: Scores, partition: Partition, top: float = 0.01,
                   per_layer: bool = True) -> dict[str, np.ndarray]:
    """{site: (n_experts,) one-sided hypergeometric p} that each expert holds as many of the function's top
    neurons by chance (top ``top`` fraction per layer, or over all layers with ``per_layer=False``)."""
    selected = _top_selection(scores_by_site, top, per_layer)
    out = {}
    for site, sel in selected.items():
        labels = _labels(partition, site, np.asarray(scores_by_site[site]).size)
        k = n_experts(labels)
        held = np.bincount(labels[np.asarray(sel, np.int64)], minlength=k)  # top neurons in each expert
        # the same one-sided P(X >= held) as neurons.hypergeometric_enrichment, for all experts at once
        out[site] = stats.hypergeom.sf(held - 1, labels.size, np.bincount(labels, minlength=k), len(sel))
    return out


def functional_experts(scores_by_site: Scores, partition: Partition, top: float = 0.01, alpha: float = 0.001,
                       per_layer: bool = True, correction: str | None = None) -> dict[str, np.ndarray]:
    """{site: expert ids} holding significantly many of the function's top ``top`` neurons (per layer by
    default; ``per_layer=False``: the top fraction over all layers): p <= ``alpha`` by a one-sided
    hypergeometric test. Raw p as the paper; ``correction`` (holm, bonferroni, fdr_bh) adjusts over all
    experts of all layers first (:func:`plmkit.analysis.neurons.correct`)."""
    if not 0 < alpha < 1:
        raise ConfigError(f"alpha must lie in (0, 1), got {alpha}")
    p = expert_pvalues(scores_by_site, partition, top, per_layer)
    if correction is not None:
        sites = list(p)
        adjusted = neurons.correct(np.concatenate([p[s] for s in sites]) if sites else np.zeros(0), correction)
        bounds = np.cumsum([0] + [p[s].size for s in sites])
        p = {s: adjusted[lo:hi] for s, lo, hi in zip(sites, bounds[:-1], bounds[1:])}
    return {site: np.flatnonzero(v <= alpha).astype(np.int64) for site, v in p.items()}


# --- modularization extent ---------------------------------------------------------------

@dataclass(frozen=True)
class Extent:
    """Modularization extent: ``overall``, ``by_layer`` {site: mean over functions}, ``ratios`` {fn: {site: r}}."""

    overall: float
    by_layer: dict[str, float]
    ratios: dict[str, dict[str, float]]
    statistic: str


def _expected_best(labels: np.ndarray, n_top: int, draws: int, seed: Sequence[int]) -> float:
    rng = np.random.default_rng(list(seed))
    k = n_experts(labels)
    return float(np.mean([np.bincount(rng.choice(labels, n_top, replace=False), minlength=k).max()
                          for _ in range(draws)]))


def _expected_functional(labels: np.ndarray, n_top: int, alpha: float) -> float:
    total, exp = labels.size, 0.0
    for size in np.bincount(labels):
        ks = np.arange(0, min(n_top, size) + 1)
        significant = stats.hypergeom.sf(ks - 1, total, size, n_top) <= alpha
        exp += float((ks * stats.hypergeom.pmf(ks, total, size, n_top) * significant).sum())
    return exp


def modularization_extent(scores_by_function: Mapping[str, Scores], partition: Partition, top: float = 0.01,
                          per_layer: bool = True, statistic: str = "best", alpha: float = 0.001, draws: int = 200,
                          seed: int = 0) -> Extent:
    """Observed / random-partition-expected concentration of each function's top neurons in experts, averaged
    per layer and overall (definition in the module docstring). ``scores_by_function``: {fn name: {site: (d_ff,)
    scores}}; ``draws`` random partitions (seeded) estimate the ``best`` baseline."""
    if statistic not in STATISTICS:
        raise ConfigError(f"unknown extent statistic '{statistic}'; choose {', '.join(STATISTICS)}")
    if not scores_by_function:
        raise ConfigError("modularization_extent needs the scores of at least one function")
    if draws < 1:
        raise ConfigError(f"draws must be >= 1, got {draws}")
    cache: dict[tuple[str, int], float] = {}
    ratios: dict[str, dict[str, float]] = {}
    for fn, scores in scores_by_function.items():
        fexp = functional_experts(scores, partition, top, alpha, per_layer) if statistic == "functional" else {}
        ratios[fn] = {}
        for li, (site, sel) in enumerate(_top_selection(scores, top, per_layer).items()):
            labels = _labels(partition, site, np.asarray(scores[site]).size)
            hits = np.bincount(labels[sel], minlength=n_experts(labels))
            if statistic == "best":
                observed = float(hits.max()) if sel.size else 0.0
            else:
                observed = float(hits[fexp[site]].sum())
            key = (site, int(sel.size))
            if key not in cache:
                cache[key] = (_expected_best(labels, sel.size, draws, (seed, li, sel.size)) if statistic == "best"
                              else _expected_functional(labels, sel.size, alpha)) if sel.size else 0.0
            expected = cache[key]
            ratios[fn][site] = observed / expected if expected > 0 else float("nan")
    sites = list(dict.fromkeys(s for r in ratios.values() for s in r))
    by_layer = {s: _nanmean([r[s] for r in ratios.values() if s in r]) for s in sites}
    overall = _nanmean([v for r in ratios.values() for v in r.values()])
    return Extent(overall, by_layer, ratios, statistic)


def _nanmean(values: Sequence[float]) -> float:
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")


# --- expert-level scores, stability, emergence -------------------------------------------

def expert_scores(scores_by_site: Scores, partition: Partition) -> dict[str, np.ndarray]:
    """{site: (..., n_experts) mean score of each expert's neurons} (scores (..., d_ff), e.g. stacked functions)."""
    out = {}
    for site, s in scores_by_site.items():
        s = np.asarray(s, np.float64)
        labels = _labels(partition, site, s.shape[-1])
        onehot = np.eye(n_experts(labels))[labels]  # (d_ff, E)
        out[site] = s @ (onehot / np.maximum(onehot.sum(0), 1))
    return out


def stability(scores_a: Scores, scores_b: Scores) -> float:
    """Spearman correlation of two checkpoints' scores, flattened over the sites (same sites and shapes)."""
    if list(scores_a) != list(scores_b):
        raise ConfigError(f"stability: the two score sets cover different sites ({list(scores_a)[:2]}... vs "
                          f"{list(scores_b)[:2]}...)")
    a = np.concatenate([np.asarray(v, np.float64).reshape(-1) for v in scores_a.values()])
    b = np.concatenate([np.asarray(v, np.float64).reshape(-1) for v in scores_b.values()])
    if a.shape != b.shape:
        raise ConfigError(f"stability: {a.size} scores against {b.size}; the checkpoints' shapes differ")
    return float(stats.spearmanr(a, b)[0])


def emergence_curve(checkpoint_scores: Sequence[Scores], partition: Partition) -> dict[str, list[float]]:
    """{"neuron": [...], "expert": [...]}: Spearman between consecutive checkpoints' neuron scores and between
    their expert scores (one fixed ``partition``, e.g. from the last checkpoint); len = checkpoints - 1."""
    if len(checkpoint_scores) < 2:
        raise ConfigError("emergence_curve needs the scores of at least two checkpoints")
    experts = [expert_scores(s, partition) for s in checkpoint_scores]
    pairs = range(len(checkpoint_scores) - 1)
    return {"neuron": [stability(checkpoint_scores[i], checkpoint_scores[i + 1]) for i in pairs],
            "expert": [stability(experts[i], experts[i + 1]) for i in pairs]}


# --- selections for perturbation ---------------------------------------------------------

def expert_selection(partition: Partition, experts_by_site: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """{site: sorted neuron indices of the given experts}, for ``neurons.perturb(model, selection, ...)``."""
    out = {}
    for site, ids in experts_by_site.items():
        if site not in partition:
            raise ConfigError(f"the partition has no site '{site}'")
        out[site] = np.flatnonzero(np.isin(np.asarray(partition[site]), np.asarray(ids, np.int64))).astype(np.int64)
    return out


def random_experts_like(experts_by_site: Mapping[str, Any], partition: Partition, seed: int = 0,
                        exclude: bool = False) -> dict[str, np.ndarray]:
    """The same number of experts per layer drawn uniformly (seeded); ``exclude`` avoids the given ones."""
    sizes = {site: n_experts(np.asarray(partition[site])) for site in experts_by_site if site in partition}
    missing = [s for s in experts_by_site if s not in sizes]
    if missing:
        raise ConfigError(f"the partition has no site '{missing[0]}'")
    return neurons.random_like(experts_by_site, sizes, seed, exclude)


def top_neurons_like(scores_by_site: Scores, selection: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Per layer, as many of the top-scored neurons as ``selection`` holds there (ties to the lower index)."""
    out = {}
    for site, idx in selection.items():
        if site not in scores_by_site:
            raise ConfigError(f"top_neurons_like: no scores for '{site}'")
        k = np.asarray(idx).size
        out[site] = np.sort(neurons._top(np.asarray(scores_by_site[site], np.float64), k)).astype(np.int64)
    return out


# --- probing under perturbation ----------------------------------------------------------

def pooled_hidden(model: nn.Module, tokenizer, texts: Sequence[str], batch_size: int = 32,
                  max_length: int = 64) -> np.ndarray:
    """(n, d_model) mean over real tokens of the last hidden state (the encoder's for encoder-decoders;
    virtual prompt tokens excluded)."""
    feats = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in token_batches(tokenizer, list(texts), batch_size, max_length):
                batch = to_device(batch, model)
                if getattr(model.config, "is_encoder_decoder", False):
                    h = model.get_encoder()(**batch).last_hidden_state
                else:
                    h = model(**batch, output_hidden_states=True).hidden_states[-1]
                h = h[:, h.shape[1] - batch["attention_mask"].shape[1]:]  # drop prompt tuning's virtual tokens
                m = batch["attention_mask"].unsqueeze(-1).to(h.dtype)
                feats.append(((h * m).sum(1) / m.sum(1).clamp_min(1)).float().cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(feats, 0) if feats else np.zeros((0, 0), np.float32)


def fit_probe(model: nn.Module, tokenizer, fn_train: Any, batch_size: int = 32, max_length: int = 64,
              C: float = 1.0):
    """A logistic-regression probe (standardised features) on the clean pooled last hidden state."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = pooled_hidden(model, tokenizer, fn_train.texts, batch_size, max_length)
    return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000)).fit(x, fn_train.labels)


def probe_accuracy(model: nn.Module, tokenizer, fn_train: Any, fn_dev: Any, selection: Mapping[str, Any] | None = None,
                   *, seed: int = 0, scale: float = 4.0, batch_size: int = 32, max_length: int = 64,
                   probe: Any = None) -> float:
    """Dev accuracy of a probe fit on clean features of ``fn_train`` (or the given ``probe``), with the dev
    texts run under ``neurons.perturb(model, selection, kind="shuffle", scale=scale, seed=seed)`` (clean when
    ``selection`` is None). Selected activations are shuffled over the batch's token positions, so the result
    depends on ``batch_size``; perturbations of T5 decoder sites do not reach the encoder features read here."""
    probe = probe if probe is not None else fit_probe(model, tokenizer, fn_train, batch_size, max_length)
    ctx = (neurons.perturb(model, selection, kind="shuffle", scale=scale, seed=seed) if selection is not None
           else contextlib.nullcontext())
    with ctx:
        x = pooled_hidden(model, tokenizer, fn_dev.texts, batch_size, max_length)
    return float((probe.predict(x) == fn_dev.labels).mean())
