import math

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.metrics import average_precision_score

from plmkit import hooks
from plmkit.analysis import neurons as N
from plmkit.errors import ConfigError
from plmkit.testing import tiny_inputs, tiny_model


def _batches(model, n=3):
    return [tiny_inputs(model, batch=2 + i, length=6 + i, seed=i, pad_last=i + 1) for i in range(n)]


def _logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


# --- activations -------------------------------------------------------------------------

def test_max_pooled_activations_ignore_padding_and_positions_index_the_sequence():
    model = tiny_model("bert")
    batches = _batches(model)
    site = "blocks.1.ffn.neurons"
    acts = N.neuron_activations(model, batches)
    assert list(acts) == ["blocks.0.ffn.neurons", "blocks.1.ffn.neurons"]
    assert acts[site].shape == (2 + 3 + 4, 48) and acts[site].dtype == np.float32
    raw = []
    for b in batches:  # independent: capture every token, mask padding by hand
        with torch.no_grad(), hooks.capture(model, site) as seen:
            model(**b)
        x = seen[site].masked_fill(b["attention_mask"][..., None] == 0, -np.inf)
        raw.append(x.amax(1).numpy())
    np.testing.assert_allclose(acts[site], np.concatenate(raw), rtol=1e-6)
    at = N.neuron_activations(model, batches[:1], sites=[site], positions=[0, 2])
    with torch.no_grad(), hooks.capture(model, site) as seen:
        model(**batches[0])
    assert at[site].shape == (2, 2, 48)
    np.testing.assert_allclose(at[site], seen[site][:, [0, 2]].numpy(), rtol=1e-6)


def test_t5_decoder_sites_pool_with_their_own_mask():
    model = tiny_model("t5")
    acts = N.neuron_activations(model, [tiny_inputs(model)], pool="mean")  # decoder is 5 tokens, encoder 7
    assert [k for k in acts] == [f"{s}.blocks.{i}.ffn.neurons" for s in ("encoder", "decoder") for i in (0, 1)]
    assert all(v.shape == (2, 48) for v in acts.values())


def test_streaming_stats_equal_in_memory_numpy():
    model = tiny_model("bert")
    batches = _batches(model, 4)
    acts = N.neuron_activations(model, batches)
    streamed = N.activation_stats(model, iter(batches))  # a one-shot iterator: nothing is replayed
    for site, x in acts.items():
        s = streamed[site]
        x = x.astype(np.float64)
        assert s.count == x.shape[0] == sum(b["input_ids"].shape[0] for b in batches)
        np.testing.assert_allclose(s.mean, x.mean(0), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(s.var, x.var(0), rtol=1e-5, atol=1e-8)
        np.testing.assert_allclose(s.std, x.std(0), rtol=1e-5, atol=1e-8)
        np.testing.assert_array_equal(s.min, x.min(0))
        np.testing.assert_array_equal(s.max, x.max(0))
    tokens = N.activation_stats(model, batches, sites=["blocks.0.ffn.neurons"], pool="tokens")
    assert tokens["blocks.0.ffn.neurons"].count == sum(int(b["attention_mask"].sum()) for b in batches)


def test_running_stats_merge_unequal_chunks_stably():
    rng = np.random.default_rng(0)
    x = 1e6 + rng.normal(size=(1001, 3, 4))  # a large offset breaks the naive sum-of-squares formula
    s = N.RunningStats()
    for lo, hi in [(0, 1), (1, 7), (7, 500), (500, 500), (500, 1001)]:
        s.update(x[lo:hi])
    assert s.count == 1001
    np.testing.assert_allclose(s.mean, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(s.var, x.var(0), rtol=1e-8)
    with pytest.raises(ConfigError):
        s.update(np.zeros((2, 5)))


# --- predictivity ------------------------------------------------------------------------

def test_threshold_accuracy_by_hand():
    train = np.array([[1, 0], [2, 0], [3, 0], [4, 4]], float)  # thresholds 2.5 and 1
    dev = np.array([[2.5, 2], [3, 0], [1, 2], [12, 0]], float)  # 2.5 is not above 2.5; the dev mean would be 4.6
    y = [0, 1, 1, 1]
    score, acc = N.threshold_accuracy(train, [0, 0, 1, 1], dev, y)
    np.testing.assert_allclose(acc, [0.75, 0.25])
    np.testing.assert_allclose(score, [0.25, 0.25])
    score3, acc3 = N.threshold_accuracy(train[:, None, :], [0, 0, 1, 1], dev[:, None, :], y)  # a positions axis
    assert acc3.shape == (1, 2)
    np.testing.assert_allclose(acc3[0], acc)
    with pytest.raises(ConfigError):
        N.threshold_accuracy(train, [0, 0, 1, 2], dev, y)


def test_average_precision_handles_ties_like_sklearn():
    y = np.array([1, 0, 1, 0, 1])
    a = np.array([0.9, 0.9, 0.5, 0.5, 0.1])
    # thresholds 0.9, 0.5, 0.1: (R, P) = (1/3, 1/2), (2/3, 1/2), (1, 3/5) -> AP(y) = 8/15; AP(1 - y) = 1/2
    assert average_precision_score(y, a) == pytest.approx(8 / 15)
    cols = np.stack([a, -a, np.zeros(5)], 1)
    got = N.average_precision_score_per_neuron(cols, y)
    assert got[0] == pytest.approx(8 / 15)
    assert got[2] == pytest.approx(0.6)  # one tie group: precision = base rate 3/5 for y, 2/5 for 1 - y
    want_cols = [max(average_precision_score(y, c), average_precision_score(1 - y, c)) for c in cols.T]
    np.testing.assert_allclose(got, want_cols, rtol=1e-12)
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 40)
    acts = rng.integers(0, 4, (40, 30)).astype(float)  # four values only: heavy ties
    acts[:, 0] = y + 0.1 * rng.normal(size=40)  # one strongly predictive neuron, no ties
    got = N.average_precision_score_per_neuron(acts.reshape(40, 5, 6), y)
    assert got.shape == (5, 6)
    want = [max(average_precision_score(y, c), average_precision_score(1 - y, c)) for c in acts.T]
    np.testing.assert_allclose(got.reshape(-1), want, rtol=1e-12)
    with pytest.raises(ConfigError):
        N.average_precision_score_per_neuron(acts, np.ones(40))


# --- selection and controls --------------------------------------------------------------

def test_top_k_global_and_per_layer():
    scores = {"a": [0.1, 0.9, 0.5], "b": [0.8, 0.2, 0.7, 0.95]}
    top = N.top_k_global(scores, 3 / 7)
    assert {k: v.tolist() for k, v in top.items()} == {"a": [1], "b": [0, 3]}
    assert N.top_k_global(scores, 1 / 7)["a"].tolist() == []  # every layer present, possibly empty
    per = N.top_k_per_layer(scores, 0.25)  # round(0.75) = 1, round(1.0) = 1
    assert {k: v.tolist() for k, v in per.items()} == {"a": [1], "b": [3]}
    with pytest.raises(ConfigError):
        N.top_k_global(scores, 0.0)


def test_random_like_matches_counts_and_is_seeded():
    selection = {"blocks.0.ffn.neurons": [3, 7, 9], "blocks.1.ffn.neurons": [], "blocks.2.ffn.neurons": list(range(20))}
    sizes = {"blocks.0.ffn.neurons": 100, "blocks.1.ffn.neurons": 100, "blocks.2.ffn.neurons": 40}
    state = np.random.get_state()[1].copy()
    r1 = N.random_like(selection, sizes, seed=5)
    assert np.array_equal(np.random.get_state()[1], state)  # the global RNG is untouched
    for name, idx in selection.items():
        got = r1[name]
        assert len(got) == len(idx) == len(set(got.tolist()))
        assert all(0 <= i < sizes[name] for i in got)
    r2, r3 = N.random_like(selection, sizes, seed=5), N.random_like(selection, sizes, seed=6)
    assert all(np.array_equal(r1[k], r2[k]) for k in selection)
    assert not np.array_equal(r1["blocks.2.ffn.neurons"], r3["blocks.2.ffn.neurons"])
    ex = N.random_like(selection, sizes, seed=5, exclude=True)
    assert set(ex["blocks.2.ffn.neurons"].tolist()) == set(range(20, 40))
    with pytest.raises(ConfigError):
        N.random_like({"x": [0, 1, 2]}, {"x": 2}, seed=0)


# --- statistics --------------------------------------------------------------------------

def test_hypergeometric_enrichment():
    # 20 items, a group of 5, and the selection is exactly that group: P = 1 / C(20, 5)
    assert N.hypergeometric_enrichment(range(5), range(5), 20) == pytest.approx(1 / math.comb(20, 5))
    assert N.hypergeometric_enrichment(range(5), range(5), 20) == pytest.approx(stats.hypergeom.pmf(5, 20, 5, 5))
    # 10 items, group {0..3}, selection {2, 3, 7}: k = 2, P(X >= 2) = (C(4,2)C(6,1) + C(4,3)C(6,0)) / C(10,3) = 1/3
    p = N.hypergeometric_enrichment([2, 3, 7], [0, 1, 2, 3], 10)
    assert p == pytest.approx((math.comb(4, 2) * 6 + math.comb(4, 3)) / math.comb(10, 3)) and p == pytest.approx(1 / 3)
    assert N.hypergeometric_enrichment([8, 9], [0, 1], 10) == pytest.approx(1.0)  # k = 0
    with pytest.raises(ConfigError):
        N.hypergeometric_enrichment([10], [0], 10)


def test_binomial_test_one_sided():
    assert N.binomial_test(3, 3, 0.5) == pytest.approx(1 / 8)
    assert N.binomial_test(2, 4, 0.5) == pytest.approx(11 / 16)
    assert N.binomial_test(0, 4, 0.3) == pytest.approx(1.0)


def test_multiple_testing_corrections_by_hand():
    p = np.array([0.021, 0.01, 0.5, 0.02])  # sorted: 0.01, 0.02, 0.021, 0.5 (m = 4)
    np.testing.assert_allclose(N.correct(p, "bonferroni"), [0.084, 0.04, 1.0, 0.08])
    # Holm: 4*0.01, 3*0.02, 2*0.021, 1*0.5 = .04, .06, .042, .5 -> running max .04, .06, .06, .5
    np.testing.assert_allclose(N.correct(p, "holm"), [0.06, 0.04, 0.5, 0.06])
    # BH: 4*p/rank = .04, .04, .028, .5 -> running min from the top .028, .028, .028, .5
    bh = N.correct(p, "fdr_bh")
    np.testing.assert_allclose(bh, [0.028, 0.028, 0.5, 0.028])
    np.testing.assert_allclose(bh, stats.false_discovery_control(p, method="bh"))
    assert N.correct(p.reshape(2, 2)).shape == (2, 2)
    with pytest.raises(ConfigError):
        N.correct(p, "sidak")


# --- perturbation ------------------------------------------------------------------------

def _seen(model, inputs, site, **kw):
    with torch.no_grad(), N.perturb(model, **kw), hooks.capture(model, site) as seen:
        logits = model(**inputs).logits
    return seen[site], logits


def test_perturbations_touch_only_the_selection_and_are_undone():
    model = tiny_model("bert")
    inputs = tiny_inputs(model)
    site, idx, rest = "blocks.0.ffn.neurons", [1, 4], [i for i in range(48) if i not in (1, 4)]
    base = _logits(model, inputs)
    with torch.no_grad(), hooks.capture(model, site) as raw:
        model(**inputs)
    x = raw[site]
    means = x.mean((0, 1)).numpy() + 1.0
    for kind, kw in [("noise", {}), ("zero", {}), ("mean", {"means": {site: means}}), ("shuffle", {"scale": 4.0})]:
        seen, logits = _seen(model, inputs, site, selection={site: idx}, kind=kind, **kw)
        assert not torch.allclose(logits, base), kind
        torch.testing.assert_close(seen[..., rest], x[..., rest], rtol=0, atol=0)
        v = seen[..., idx]
        assert not torch.allclose(v, x[..., idx]), kind
        if kind == "zero":
            assert torch.all(v == 0)
        elif kind == "mean":
            assert torch.all(v == torch.as_tensor(means[idx]))
        elif kind == "shuffle":  # a permutation over the batch's tokens, times 4
            for j in range(2):
                want = 4 * x[..., idx[j]].flatten().sort().values
                torch.testing.assert_close(v[..., j].flatten().sort().values, want)
        torch.testing.assert_close(_logits(model, inputs), base, rtol=0, atol=0)  # hooks gone
        if kind == "shuffle":  # scale 1: the same values per neuron, at other tokens
            v1 = _seen(model, inputs, site, selection={site: idx}, kind=kind)[0][..., idx]
            assert not torch.equal(v1, x[..., idx])
            torch.testing.assert_close(v1.flatten(0, 1).sort(0).values, x[..., idx].flatten(0, 1).sort(0).values)
        for empty in ({site: []}, {}):
            _, same = _seen(model, inputs, site, selection=empty, kind=kind, **kw)
            torch.testing.assert_close(same, base, rtol=0, atol=0)


def test_perturbation_noise_is_seeded():
    model = tiny_model("llama")
    inputs = tiny_inputs(model)
    sel = {"blocks.0.ffn.neurons": [0, 5, 9], "blocks.1.ffn.neurons": [2]}
    runs = [_seen(model, inputs, "blocks.1.ffn.neurons", selection=sel, kind=k, seed=s)[1]
            for k in ("noise", "shuffle") for s in (3, 3, 4)]
    for a, b, c in (runs[:3], runs[3:]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        assert not torch.allclose(a, c)
    with pytest.raises(ConfigError):
        with N.perturb(model, sel, kind="mean"):
            pass
    with pytest.raises(ConfigError):
        with N.perturb(model, sel, kind="dropout"):
            pass
