"""FFN neuron pruning (plmkit.analysis.prune): a real smaller model equal to mean ablation of the removed neurons."""
import copy
import json

import numpy as np
import pytest
import torch
from torch import nn

from plmkit import arch, hooks
from plmkit.analysis.neurons import RunningStats, activation_stats
from plmkit.analysis.prune import ffn_params, ffn_sizes, prune_ffn_neurons, save_pruned
from plmkit.assets import load_model
from plmkit.errors import ConfigError
from plmkit.testing import TINY_CONFIGS, tiny_inputs, tiny_model, tiny_tokenizer

FAMILIES = sorted(TINY_CONFIGS)  # every family the arch layer knows: all address their FFN neurons
MAIN = ["bert", "llama", "gpt2", "t5"]  # biased Linear, gated without bias, Conv1D, encoder-decoder without bias
D_MODEL, D_FF, N_KEEP = 32, 48, 20


def _logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def _plan(model, seed=0):
    """Keep N_KEEP random neurons (unsorted) of the last layer of every stack; other layers stay whole."""
    rng = np.random.default_rng(seed)
    sites = [f"{layer.name}.ffn.neurons" for layer in arch.layers(model) if layer.index == 1]
    return {s: rng.permutation(D_FF)[:N_KEEP] for s in sites}


def _removed(idx):
    return sorted(set(range(D_FF)) - set(int(i) for i in idx))


def _stats(model, sites):
    batches = [tiny_inputs(model, batch=4, length=9, seed=s) for s in (11, 12, 13)]
    return activation_stats(model, batches, sites=sites, pool="tokens")


def _mean_vec(stats, site):
    m = stats[site]
    return torch.as_tensor(m.mean if isinstance(m, RunningStats) else m, dtype=torch.float32)


def _mean_ablated(model, plan, stats, inputs):
    edits = {s: hooks.mean_ablate(_removed(k), _mean_vec(stats, s)[_removed(k)]) for s, k in plan.items()}
    with hooks.intervene(model, edits):
        return _logits(model, inputs)


@pytest.mark.parametrize("name", FAMILIES)
def test_pruned_model_equals_mean_ablation(name):
    model = tiny_model(name, seed=3)
    inputs = tiny_inputs(model, batch=3, length=8, pad_last=3)  # the first sequence is padded
    plan = _plan(model)
    stats = _stats(model, list(plan))
    oracle, original = _mean_ablated(model, plan, stats, inputs), _logits(model, inputs)
    report = prune_ffn_neurons(model, plan, stats)
    pruned = _logits(model, inputs)
    assert [layer.d_ff_after for layer in report.layers] == [N_KEEP] * len(plan)
    torch.testing.assert_close(pruned, oracle, atol=1e-5, rtol=1e-5)
    assert (pruned - original).abs().max() > 1e-3  # the removed neurons mattered: the check has teeth


@pytest.mark.parametrize("name", ["bert", "llama"])
def test_only_the_removed_neurons_are_folded(name):
    """The reference implementation folds W_out @ mean over all neurons; the kept ones must not be folded.
    Any per-neuron values work as "means" (the equivalence is exact), so use ones large enough to tell apart."""
    model = tiny_model(name, seed=3)
    inputs = tiny_inputs(model)
    plan = _plan(model)
    site, keep = next(iter(plan.items()))
    mean = torch.linspace(-2.0, 3.0, D_FF)
    oracle = _mean_ablated(model, plan, {site: mean}, inputs)
    layer = arch.layers(model)[1]
    w = layer.ffn_out_weight().detach().clone()
    b0 = layer.ffn_out.bias.detach().clone() if layer.ffn_out.bias is not None else torch.zeros(D_MODEL)
    rm, kept = _removed(keep), sorted(int(i) for i in keep)
    prune_ffn_neurons(model, plan, {site: mean.numpy()})
    bias = arch.layers(model)[1].ffn_out.bias.detach()
    torch.testing.assert_close(bias, b0 + w[:, rm] @ mean[rm], atol=1e-6, rtol=1e-6)
    assert (bias - (b0 + w @ mean)).abs().max() > 1e-2
    buggy = copy.deepcopy(model)
    with torch.no_grad():
        arch.layers(buggy)[1].ffn_out.bias += w[:, kept] @ mean[kept]  # what folding every neuron gives
    assert (_logits(buggy, inputs) - oracle).abs().max() > 1e-3
    torch.testing.assert_close(_logits(model, inputs), oracle, atol=1e-5, rtol=1e-5)


# parameters one removed neuron takes away (rows of ffn_in/gate with their bias, a column of ffn_out), and
# whether pruning with means adds a d_model bias to a bias-less ffn_out; worked out by hand per family
PER_NEURON = {"bert": 2 * D_MODEL + 1, "gpt2": 2 * D_MODEL + 1, "llama": 3 * D_MODEL, "t5": 2 * D_MODEL}
ADDS_BIAS = {"bert": False, "gpt2": False, "llama": True, "t5": True}


@pytest.mark.parametrize("with_means", [True, False])
@pytest.mark.parametrize("name", MAIN)
def test_parameter_count_drops_exactly(name, with_means):
    model = tiny_model(name)
    plan = _plan(model)
    stats = _stats(model, list(plan)) if with_means else None
    before, ffn_before = sum(p.numel() for p in model.parameters()), ffn_params(model)
    report = prune_ffn_neurons(model, plan, stats)
    by_hand = len(plan) * ((D_FF - N_KEEP) * PER_NEURON[name] - (D_MODEL if with_means and ADDS_BIAS[name] else 0))
    after = sum(p.numel() for p in model.parameters())
    assert report.params_before == before and report.params_after == after
    assert before - after == by_hand == report.expected_removed == report.removed
    assert ffn_before - ffn_params(model) == by_hand
    assert (report.ffn_params_before, report.ffn_params_after) == (ffn_before, ffn_params(model))
    last = [D_FF, N_KEEP]
    assert report.ffn_sizes == ({"encoder": last, "decoder": last} if name == "t5" else {"blocks": last})


@pytest.mark.parametrize("name", MAIN)
def test_pruning_without_means_equals_zeroing(name):
    model = tiny_model(name, seed=5)
    inputs = tiny_inputs(model)
    plan = _plan(model, seed=1)
    with hooks.intervene(model, {s: hooks.zero(_removed(k)) for s, k in plan.items()}):
        oracle = _logits(model, inputs)
    prune_ffn_neurons(model, plan)
    torch.testing.assert_close(_logits(model, inputs), oracle, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", MAIN)
def test_keeping_every_neuron_is_the_identity(name):
    model = tiny_model(name)
    inputs = tiny_inputs(model)
    plan = {s: np.arange(D_FF)[::-1].copy() for s in _plan(model)}
    before = _logits(model, inputs)
    report = prune_ffn_neurons(model, plan, _stats(model, list(plan)))
    assert report.removed == report.expected_removed == 0
    torch.testing.assert_close(_logits(model, inputs), before, atol=0, rtol=0)


@pytest.mark.parametrize("name", MAIN)
def test_save_and_load_round_trip(name, tmp_path):
    model = tiny_model(name, seed=2)
    inputs = tiny_inputs(model)
    plan = _plan(model)
    report = prune_ffn_neurons(model, plan, _stats(model, list(plan)))
    tok = tiny_tokenizer()
    out = save_pruned(model, tok, tmp_path / "pruned")
    assert out == tmp_path / "pruned" and sorted(p.name for p in tmp_path.iterdir()) == ["pruned"]  # no temp left
    saved = json.loads((out / "config.json").read_text())
    assert saved["plmkit_ffn_sizes"] == report.ffn_sizes
    assert (out / "model.safetensors").exists()
    loaded, tok2 = load_model(out)
    assert type(loaded) is type(model) and not loaded.training
    assert ffn_sizes(loaded) == report.ffn_sizes
    assert sum(p.numel() for p in loaded.parameters()) == report.params_after
    for a, b in zip(arch.layers(model), arch.layers(loaded)):
        assert a.ffn_in_weight().shape == b.ffn_in_weight().shape
        assert (a.ffn_out.bias is None) == (b.ffn_out.bias is None)  # a bias added by pruning comes back
        if a.ffn_out.bias is not None:
            assert torch.equal(a.ffn_out.bias, b.ffn_out.bias)
    torch.testing.assert_close(_logits(loaded, inputs), _logits(model, inputs), atol=0, rtol=0)
    assert tok2("ab c")["input_ids"] == tok("ab c")["input_ids"]


@pytest.mark.parametrize("name", MAIN)
def test_layers_not_in_keep_are_untouched(name):
    model = tiny_model(name)
    plan = _plan(model)
    pruned_modules = {id(m) for layer in arch.layers(model) if f"{layer.name}.ffn.neurons" in plan
                      for m in (layer.ffn_in, layer.ffn_gate, layer.ffn_out) if m is not None}
    untouched = {n: (p, p.detach().clone()) for mod_name, mod in model.named_modules() if id(mod) not in pruned_modules
                 for n, p in mod.named_parameters(prefix=mod_name, recurse=False)}
    report = prune_ffn_neurons(model, plan, _stats(model, list(plan)))
    now = dict(model.named_parameters(remove_duplicate=False))
    for n, (p, value) in untouched.items():
        assert now[n] is p and torch.equal(p, value), n
    assert all(layer.d_ff == D_FF for layer in arch.layers(model) if layer.index == 0)
    assert all(r.d_ff_before == D_FF for r in report.layers)


@pytest.mark.parametrize("keep, means, message", [
    ({"blocks.1.ffn.neurons": [0, D_FF]}, None, "index 48, outside"),
    ({"blocks.1.ffn.neurons": [-1, 2]}, None, "index -1, outside"),
    ({"blocks.0.ffn.neurons": [0], "blocks.1.ffn.neurons": []}, None, "keeps no neurons"),
    ({"blocks.1.ffn.neurons": [3, 3]}, None, "more than once"),
    ({"blocks.1.ffn.neurons": [0.5]}, None, "integer neuron indices"),
    ({"blocks.7.ffn.neurons": [0]}, None, "unknown site 'blocks.7.ffn.neurons'"),
    ({"blocks.1.attn.o": [0]}, None, "unknown site"),
    ({"decoder.blocks.1.ffn.neurons": [0]}, None, "unknown site"),
    ({"blocks.1.ffn.neurons": [0]}, {}, "no means for 'blocks.1.ffn.neurons'"),
    ({"blocks.1.ffn.neurons": [0]}, {"blocks.1.ffn.neurons": np.zeros(D_FF - 1)}, "has 47 values"),
    ({"blocks.1.ffn.neurons": [0]}, {"blocks.1.ffn.neurons": np.full(D_FF, np.nan)}, "NaN"),
])
def test_bad_input_raises_one_clear_line_and_changes_nothing(keep, means, message):
    model = tiny_model("bert")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match=message) as e:
        prune_ffn_neurons(model, keep, means)
    assert "\n" not in str(e.value)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_a_wrapped_ffn_is_refused():
    model = tiny_model("llama")
    arch.replace_ffn(arch.layers(model)[1], nn.Identity())
    with pytest.raises(ConfigError, match="wraps the FFN"):
        prune_ffn_neurons(model, {"blocks.1.ffn.neurons": [0, 1]})
