"""Functional modularity: functional experts, partitions, extent, stability, probing; real sub-functions."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from scipy import stats

from plmkit import hooks
import plmkit.analysis.modularity as mod
from plmkit.analysis import neurons
from plmkit.data import functions as F
from plmkit.errors import ConfigError
from plmkit.testing import tiny_inputs, tiny_model, tiny_tokenizer

SITE = "blocks.0.ffn.neurons"


def _blocks(n: int = 100, size: int = 10) -> np.ndarray:
    return np.arange(n) // size  # expert e = neurons [e*size, (e+1)*size)


def _scores_on(top: list[int], n: int = 100) -> np.ndarray:
    s = np.zeros(n)
    s[top] = 1.0 + np.arange(len(top))[::-1] * 1e-3
    return s


# --- functional experts ------------------------------------------------------------------

def test_functional_expert_is_the_one_holding_all_top_neurons():
    part = {SITE: _blocks()}
    scores = {SITE: _scores_on(list(range(10)))}  # top 10% = expert 0's ten neurons
    p = mod.expert_pvalues(scores, part, top=0.1)[SITE]
    assert p[0] == pytest.approx(stats.hypergeom.sf(9, 100, 10, 10))
    np.testing.assert_allclose(p[1:], 1.0)
    np.testing.assert_array_equal(mod.functional_experts(scores, part, top=0.1)[SITE], [0])


def test_functional_expert_pvalues_match_scipy_on_a_split_selection():
    part = {SITE: _blocks()}
    top = [0, 1, 2, 3, 4, 5, 10, 11, 12, 95]  # 6 in expert 0, 3 in expert 1, 1 in expert 9
    p = mod.expert_pvalues({SITE: _scores_on(top)}, part, top=0.1)[SITE]
    expected = [stats.hypergeom.sf(k - 1, 100, 10, 10) for k in np.bincount(_blocks()[top], minlength=10)]
    np.testing.assert_allclose(p, expected)
    assert p[0] <= 0.001 < p[1]
    np.testing.assert_array_equal(mod.functional_experts({SITE: _scores_on(top)}, part, top=0.1)[SITE], [0])
    alpha = float(p[1]) * 1.01  # expert 1 passes a looser threshold, not after a Bonferroni correction
    np.testing.assert_array_equal(mod.functional_experts({SITE: _scores_on(top)}, part, 0.1, alpha)[SITE], [0, 1])
    bonf = mod.functional_experts({SITE: _scores_on(top)}, part, 0.1, alpha, correction="bonferroni")[SITE]
    np.testing.assert_array_equal(bonf, [0])


def test_functional_experts_global_top_can_leave_a_layer_without_top_neurons():
    other = "blocks.1.ffn.neurons"
    part = {SITE: _blocks(), other: _blocks()}
    scores = {SITE: _scores_on(list(range(20))), other: np.zeros(100)}
    fe = mod.functional_experts(scores, part, top=0.1, per_layer=False)
    np.testing.assert_array_equal(fe[SITE], [0, 1])
    assert fe[other].size == 0


# --- partitions --------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["bert", "llama", "t5"])
def test_partitions_have_equal_sizes_and_cover_every_block(family):
    model = tiny_model(family)
    sites = hooks.site_names(model, "ffn.neurons")
    for method in ("kmeans", "random"):
        part = mod.expert_partition(model, 4, method=method, seed=0)
        assert list(part) == sites
        for labels in part.values():
            np.testing.assert_array_equal(np.bincount(labels), [12, 12, 12, 12])  # tiny d_ff = 48


def test_random_partition_is_seeded():
    model = tiny_model("gpt2")
    a, b = mod.expert_partition(model, 6, "random", seed=1), mod.expert_partition(model, 6, "random", seed=1)
    c = mod.expert_partition(model, 6, "random", seed=2)
    assert all(np.array_equal(a[s], b[s]) for s in a)
    assert not all(np.array_equal(a[s], c[s]) for s in a)
    like = mod.random_partition_like(a, seed=0)
    assert all(np.array_equal(np.bincount(like[s]), np.bincount(a[s])) for s in a)


def test_coactivation_partition_and_errors():
    model = tiny_model("bert")
    acts = neurons.neuron_activations(model, [tiny_inputs(model, batch=4, length=9)], pool="tokens")
    part = mod.expert_partition(model, 3, "coactivation", acts=acts)
    assert all(np.array_equal(np.bincount(v), [16, 16, 16]) for v in part.values())
    with pytest.raises(ConfigError, match="needs acts"):
        mod.expert_partition(model, 3, "coactivation")
    with pytest.raises(ConfigError, match="does not divide"):
        mod.expert_partition(model, 5)
    with pytest.raises(ConfigError, match="unknown partition"):
        mod.expert_partition(model, 4, "metis")
    with pytest.raises(ConfigError, match="no site"):
        mod.functional_experts({"blocks.7.ffn.neurons": np.zeros(48)}, part)


# --- modularization extent ---------------------------------------------------------------

def _planted(n_fn: int = 10, n: int = 400, size: int = 20, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = {}
    for f in range(n_fn):
        e = f % (n // size)
        s = rng.random(n) * 0.5
        s[e * size:(e + 1) * size] += 1.0  # the top 5% (20 neurons) all sit in expert e
        out[f"f{f}"] = {SITE: s}
    return out


@pytest.mark.parametrize("statistic", ["best", "functional"])
def test_extent_of_a_planted_modular_case_is_above_one(statistic):
    ext = mod.modularization_extent(_planted(), {SITE: _blocks(400, 20)}, top=0.05, statistic=statistic)
    assert ext.overall > 3 and ext.by_layer[SITE] == pytest.approx(ext.overall)
    assert set(ext.ratios) == {f"f{i}" for i in range(10)}


def test_extent_of_a_random_partition_is_about_one():
    rng = np.random.default_rng(1)
    part = {SITE: rng.permutation(_blocks(400, 20))}
    scores = {f"f{i}": {SITE: rng.random(400)} for i in range(200)}
    ext = mod.modularization_extent(scores, part, top=0.05, statistic="best")
    assert ext.overall == pytest.approx(1.0, abs=0.05)
    # the planted functions are not modular under a random partition either
    assert mod.modularization_extent(_planted(), part, top=0.05).overall == pytest.approx(1.0, abs=0.15)


def test_functional_extent_expectation_is_exact():
    rng = np.random.default_rng(2)
    part = {SITE: _blocks(200, 20)}
    scores = {f"f{i}": {SITE: rng.random(200)} for i in range(400)}
    ext = mod.modularization_extent(scores, part, top=0.05, statistic="functional", alpha=0.05)
    assert ext.overall == pytest.approx(1.0, abs=0.12)  # mean observed / exact expectation


def test_extent_rejects_bad_input():
    with pytest.raises(ConfigError, match="statistic"):
        mod.modularization_extent(_planted(), {SITE: _blocks(400, 20)}, statistic="max")
    with pytest.raises(ConfigError, match="at least one"):
        mod.modularization_extent({}, {SITE: _blocks(400, 20)})


# --- expert scores, stability, emergence -------------------------------------------------

def test_expert_scores_are_mean_neuron_scores():
    part = {SITE: np.array([0, 1, 0, 1, 2, 2])}
    s = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    np.testing.assert_allclose(mod.expert_scores({SITE: s}, part)[SITE], [2.0, 3.0, 5.5])
    stacked = mod.expert_scores({SITE: np.stack([s, -s])}, part)[SITE]
    np.testing.assert_allclose(stacked, [[2.0, 3.0, 5.5], [-2.0, -3.0, -5.5]])


def test_stability_and_emergence_curve():
    rng = np.random.default_rng(0)
    part = {SITE: _blocks(40, 4), "blocks.1.ffn.neurons": _blocks(40, 4)}
    a = {s: rng.random(40) for s in part}
    b = {s: v + rng.normal(0, 0.3, 40) for s, v in a.items()}
    assert mod.stability(a, a) == pytest.approx(1.0)
    assert -1 <= mod.stability(a, b) < 1
    curve = mod.emergence_curve([a, a, b], part)
    assert curve["neuron"][0] == pytest.approx(1.0) and curve["expert"][0] == pytest.approx(1.0)
    assert len(curve["neuron"]) == len(curve["expert"]) == 2
    with pytest.raises(ConfigError, match="different sites"):
        mod.stability(a, {SITE: a[SITE]})
    with pytest.raises(ConfigError, match="two checkpoints"):
        mod.emergence_curve([a], part)


# --- selections --------------------------------------------------------------------------

def test_selections_of_equal_size():
    part = {SITE: _blocks()}
    sel = mod.expert_selection(part, {SITE: [0, 3]})
    np.testing.assert_array_equal(sel[SITE], list(range(10)) + list(range(30, 40)))
    rand = mod.random_experts_like({SITE: [0, 3]}, part, seed=0, exclude=True)
    assert rand[SITE].size == 2 and not set(rand[SITE]) & {0, 3}
    assert np.array_equal(rand[SITE], mod.random_experts_like({SITE: [0, 3]}, part, seed=0, exclude=True)[SITE])
    scores = {SITE: np.arange(100.0)}
    np.testing.assert_array_equal(mod.top_neurons_like(scores, sel)[SITE], np.arange(80, 100))


# --- probing under perturbation ----------------------------------------------------------

def _toy_function(n: int = 12) -> F.BinaryFunction:
    texts = [f"the cat sat {i}" for i in range(n)] + [f"zzz qqq xx {i}!" for i in range(n)]
    return F.BinaryFunction("toy", "task", texts, np.r_[np.ones(n), np.zeros(n)].astype(int))


def _hook_count(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_probe_accuracy_runs_and_removes_its_hooks():
    model, tok = tiny_model("bert", head="base"), tiny_tokenizer()
    train, dev = _toy_function().split(seed=0, share=0.5)
    inputs = tiny_inputs(model)
    mod.pooled_hidden(model, tok, dev.texts[:2])  # transformers installs its own output-capturing hooks once
    hooks_before = _hook_count(model)
    with torch.no_grad():
        before = model(**inputs).last_hidden_state
    part = mod.expert_partition(model, 4)
    selection = mod.expert_selection(part, {s: [0, 1] for s in part})
    clean = mod.probe_accuracy(model, tok, train, dev, batch_size=8)
    probe = mod.fit_probe(model, tok, train, batch_size=8)
    hit = mod.probe_accuracy(model, tok, train, dev, selection, seed=3, batch_size=8, probe=probe)
    again = mod.probe_accuracy(model, tok, train, dev, selection, seed=3, batch_size=8, probe=probe)
    assert 0 <= hit <= 1 and 0 <= clean <= 1 and hit == again
    with neurons.perturb(model, selection, kind="shuffle", scale=4, seed=3):
        perturbed = mod.pooled_hidden(model, tok, dev.texts, 8)
    assert not np.allclose(perturbed, mod.pooled_hidden(model, tok, dev.texts, 8))  # the perturbation acts
    with torch.no_grad():
        after = model(**inputs).last_hidden_state
    torch.testing.assert_close(before, after, rtol=0, atol=0)
    assert _hook_count(model) == hooks_before


# --- real sub-functions ------------------------------------------------------------------

def _check(fns: list[F.BinaryFunction], kind: str) -> None:
    assert fns and len({f.name for f in fns}) == len(fns)
    for f in fns:
        assert f.kind == kind and len(f.texts) == len(f.labels) >= 2
        assert set(np.unique(f.labels)) == {0, 1} and f.labels.sum() * 2 == len(f)  # binary, balanced


def _same(a: list[F.BinaryFunction], b: list[F.BinaryFunction]) -> bool:
    return [f.name for f in a] == [f.name for f in b] and all(
        x.texts == y.texts and np.array_equal(x.labels, y.labels) for x, y in zip(a, b))


def test_word_sense_functions_from_wordnet():
    fns = F.word_sense_functions(max_words=20, min_examples=3, seed=0)
    _check(fns, "semantic")
    assert len({f.name.split("/")[0] for f in fns}) == 20
    for f in fns:
        forms = F._forms(f.name.split("/")[0])
        assert f.labels.sum() >= 3 and all(forms & set(re.findall("[a-z]+", t.lower())) for t in f.texts)
    assert _same(fns, F.word_sense_functions(max_words=20, min_examples=3, seed=0))
    assert not _same(fns, F.word_sense_functions(max_words=20, min_examples=3, seed=1))
    coarse = F.word_sense_functions(max_words=5, sense="lexname")
    assert all("." in f.name.split("/")[1] for f in coarse)


def test_knowledge_functions_from_geonames_and_wordnet():
    fns = F.knowledge_functions(seed=0, max_per_relation=50)
    _check(fns, "knowledge")
    names = {f.name for f in fns}
    assert {"capital", "city_country", "hypernym", "part_of"} <= names
    cap = next(f for f in fns if f.name == "capital")
    assert len(cap) == 100 and all(t.startswith("The capital of") for t, y in zip(cap.texts, cap.labels) if y)
    assert not any(t.startswith("The capital of") for t, y in zip(cap.texts, cap.labels) if not y)
    assert "The capital of France is Paris." in F._geo_sentences()["capital"]
    assert _same(fns, F.knowledge_functions(seed=0, max_per_relation=50))
    with pytest.raises(ConfigError, match="unknown relation"):
        F.knowledge_functions(relations=["capital", "mayor"])


def test_task_functions_and_split():
    fns = F.task_functions(seed=0, max_per_task=100)
    _check(fns, "task")
    assert [f.name for f in fns] == ["polarity", "drugs", "topics"] and all(len(f) <= 100 for f in fns)
    train, dev = fns[0].split(seed=0, share=0.3)
    assert len(train) + len(dev) == len(fns[0]) and not set(train.texts) & set(dev.texts)
    assert dev.labels.sum() * 2 == len(dev)
    with pytest.raises(ConfigError, match="kind"):
        F.BinaryFunction("x", "syntax", ["a", "b"], np.array([0, 1]))
    with pytest.raises(ConfigError, match="both classes"):
        F.BinaryFunction("x", "task", ["a", "b"], np.array([1, 1]))
