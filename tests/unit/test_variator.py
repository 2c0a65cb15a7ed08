"""Variator compression plugins: exactness at k=1, causality, padding, undo, save/load, training."""
import pytest
import torch

from plmkit import arch, hooks
from plmkit.errors import ConfigError, PlmkitError
from plmkit.plugins import variator
from plmkit.plugins.variator import VariatorConfig
from plmkit.testing import tiny_inputs, tiny_model
from plmkit.train import TrainConfig

FAMILIES = ["bert", "roberta", "electra", "llama", "gemma3", "gpt2", "t5"]


def _randomize(model, seed=0, std=0.2):
    """Plugins with non-zero weights everywhere (a fresh plugin's correction is zero by design)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in variator.plugin_parameters(model):
            p.copy_(torch.randn(p.shape, generator=g) * std)


def _logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


@pytest.mark.parametrize("family", FAMILIES)
def test_k1_fresh_plugin_equals_original_ffn(family):
    model = tiny_model(family)
    inputs = tiny_inputs(model)
    ref = _logits(model, inputs)
    variator.attach(model, VariatorConfig(k=1))
    out = _logits(model, inputs)
    real = inputs["attention_mask"].bool() if model.config.model_type != "t5" else slice(None)
    assert torch.equal(out[real], ref[real])


@pytest.mark.parametrize("family", FAMILIES)
def test_detach_restores_model_bit_for_bit(family):
    model = tiny_model(family)
    inputs = tiny_inputs(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    ref = _logits(model, inputs)
    variator.attach(model, VariatorConfig(k=4))
    _randomize(model)
    assert not torch.allclose(_logits(model, inputs), ref)
    variator.detach(model)
    assert not variator.plugged(model)
    after = model.state_dict()
    assert after.keys() == state.keys() and all(torch.equal(after[k], state[k]) for k in state)
    assert torch.equal(_logits(model, inputs), ref)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("k", [2, 4])
def test_causal_plugins_never_see_later_tokens(family, k):
    model = tiny_model(family)
    variator.attach(model, VariatorConfig(k=k))
    _randomize(model)
    ids = torch.randint(3, 90, (1, 11), generator=torch.Generator().manual_seed(1))
    base = _logits(model, {"input_ids": ids})
    for j in range(1, 11):
        changed = ids.clone()
        changed[0, j] = (changed[0, j] + 7) % 90 + 3
        out = _logits(model, {"input_ids": changed})
        assert torch.allclose(out[0, :j], base[0, :j], atol=1e-6), f"position < {j} saw token {j}"
        assert not torch.allclose(out[0, j:], base[0, j:])


def test_bidirectional_groups_do_mix_tokens():
    """The control for the causal test: an encoder's group does let a later token change an earlier one."""
    model = tiny_model("bert")
    variator.attach(model, VariatorConfig(k=4))
    _randomize(model)
    ids = torch.randint(3, 90, (1, 8), generator=torch.Generator().manual_seed(1))
    changed = ids.clone()
    changed[0, 3] = (changed[0, 3] + 7) % 90 + 3
    assert not torch.allclose(_logits(model, {"input_ids": ids})[0, 0], _logits(model, {"input_ids": changed})[0, 0])


def test_causal_head_and_single_token_steps_run_exact_ffn():
    model = tiny_model("llama")
    ids = torch.randint(3, 90, (2, 3), generator=torch.Generator().manual_seed(2))
    ref = _logits(model, {"input_ids": ids})
    variator.attach(model, VariatorConfig(k=4))
    _randomize(model)
    assert torch.equal(_logits(model, {"input_ids": ids}), ref)  # 3 tokens < k: no complete group
    out = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert out.shape == (2, 7)


@pytest.mark.parametrize("family", ["bert", "llama"])
@pytest.mark.parametrize("length", [5, 6, 7, 9])
def test_padding_and_lengths_not_divisible_by_k(family, length):
    """A sequence padded in a batch gives its real positions what it gives alone, unpadded."""
    model = tiny_model(family)
    variator.attach(model, VariatorConfig(k=4))
    _randomize(model)
    g = torch.Generator().manual_seed(length)
    ids = torch.randint(3, 90, (2, 10), generator=g)
    mask = torch.ones_like(ids)
    mask[0, length:] = 0
    batch = _logits(model, {"input_ids": ids, "attention_mask": mask})
    alone = _logits(model, {"input_ids": ids[:1, :length]})
    assert torch.allclose(batch[0, :length], alone[0], atol=1e-5)


def test_left_padding_is_masked_out_of_groups():
    model = tiny_model("llama")
    variator.attach(model, VariatorConfig(k=2))
    _randomize(model)
    ids = torch.randint(3, 90, (1, 6), generator=torch.Generator().manual_seed(3))
    mask = torch.tensor([[0, 0, 1, 1, 1, 1]])
    a = _logits(model, {"input_ids": ids, "attention_mask": mask})
    junk = ids.clone()
    junk[0, :2] = torch.tensor([5, 77])
    b = _logits(model, {"input_ids": junk, "attention_mask": mask})
    assert torch.allclose(a[0, 2:], b[0, 2:], atol=1e-5)


def test_save_load_swap_and_refusals(tmp_path):
    model = tiny_model("bert")
    inputs = tiny_inputs(model)
    ref = _logits(model, inputs)
    outs = {}
    for k in (2, 4):
        variator.attach(model, VariatorConfig(k=k, hidden=8))
        _randomize(model, seed=k)
        outs[k] = _logits(model, inputs)
        variator.save(model, tmp_path / f"k{k}")
        variator.detach(model)
    assert (tmp_path / "k4" / "variator.safetensors").stat().st_size < 200_000
    variator.load(model, tmp_path / "k2")
    assert torch.equal(_logits(model, inputs), outs[2])
    variator.load(model, tmp_path / "k4")  # swapped on the same loaded model
    assert torch.equal(_logits(model, inputs), outs[4])
    bank = variator.PluginBank(model, {2: tmp_path / "k2", 4: tmp_path / "k4"}, thresholds={2: 4, 4: 16})
    assert bank.use_for(1) == 1 and torch.equal(_logits(model, inputs), ref)
    assert bank.use_for(5) == 2 and torch.equal(_logits(model, inputs), outs[2])
    assert bank.use_for(64) == 4 and torch.equal(_logits(model, inputs), outs[4])
    with pytest.raises(ConfigError, match="another model"):
        variator.load(tiny_model("llama"), tmp_path / "k4")
    with pytest.raises(PlmkitError, match="holds no Variator plugins"):
        variator.load(model, tmp_path)
    with pytest.raises(ConfigError, match="already has Variator plugins"):
        variator.attach(model, VariatorConfig(k=2))


def test_bypassed_is_the_original_model():
    model = tiny_model("bert")
    inputs = tiny_inputs(model)
    ref = _logits(model, inputs)
    variator.attach(model, VariatorConfig(k=4))
    _randomize(model)
    with variator.bypassed(model):
        assert torch.equal(_logits(model, inputs), ref)
    assert not torch.equal(_logits(model, inputs), ref)


def test_only_plugin_weights_train_and_loss_falls(tmp_path):
    from plmkit.train import causal_lm_collate

    model = tiny_model("llama")
    variator.attach(model, VariatorConfig(k=2, hidden=16))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    plugin_ids = {id(p) for p in variator.plugin_parameters(model)}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    g = torch.Generator().manual_seed(0)
    data = [{"input_ids": torch.randint(3, 90, (12,), generator=g).tolist()} for _ in range(32)]

    class Tok:  # the padding the collate needs, for a tokenizer-less tiny model
        def pad(self, batch, return_tensors="pt"):
            ids = torch.tensor([b["input_ids"] for b in batch])
            return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    res = variator.distill(model, data, TrainConfig(out_dir=str(tmp_path), max_steps=30, batch_size=8, lr=3e-3,
                                                   log_every=5, progress=False, resume=False),
                           collate_fn=causal_lm_collate(Tok()))
    assert res.losses[-1] < res.losses[0]
    for n, p in model.named_parameters():
        changed = not torch.equal(p.detach(), before[n])
        assert changed == (id(p) in plugin_ids), n
        assert p.requires_grad == flags[n]  # backbone flags restored


def test_hooks_and_arch_see_through_plugins_and_compose_with_moefication():
    from plmkit.compress.moefication import MoEficationConfig, moefy, unmoefy

    model = tiny_model("llama")
    inputs = tiny_inputs(model)
    ref = _logits(model, inputs)
    calibration = [tiny_inputs(model, batch=4, length=12, seed=s) for s in range(4)]
    moefy(model, MoEficationConfig(experts=4, top_k=4, active=None, router="similarity", calibration_tokens=100),
          calibration=calibration, progress=False)
    variator.attach(model, VariatorConfig(k=2))
    _randomize(model)
    layer = arch.layers(model)[0]
    assert type(layer.ffn_in).__name__ == "Linear" and layer.d_ff == model.config.intermediate_size
    with hooks.capture(model, ["blocks.0.ffn.neurons", "blocks.1"]) as cap:
        _logits(model, inputs)
    assert cap["blocks.0.ffn.neurons"].shape[1] == 1 + 3  # 7 tokens, k=2: one exact, three merged pairs
    assert cap["blocks.1"].shape[1] == 7
    assert not torch.allclose(_logits(model, inputs), ref)
    variator.detach(model)
    unmoefy(model)
    assert torch.equal(_logits(model, inputs), ref)


def test_config_validation_and_layer_choice():
    with pytest.raises(ConfigError):
        VariatorConfig(k=0)
    with pytest.raises(ConfigError):
        VariatorConfig(loss="cosine")
    model = tiny_model("bert")
    wrappers = variator.attach(model, VariatorConfig(k=2, layers=[-1]))
    assert [w.name for w in wrappers] == [arch.layers(model)[-1].name]
    variator.detach(model)
    with pytest.raises(ConfigError, match="out of range"):
        variator.attach(model, VariatorConfig(k=2, layers=[9]))
    n, share = variator.extra_parameters(model) if variator.plugged(model) else (0, 0.0)
    assert n == 0 and share == 0.0


def test_exact_prefix_keeps_leading_positions_uncompressed():
    from plmkit.plugins.variator import CompressionPlugin

    torch.manual_seed(0)
    ffn = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 8))
    plugin = CompressionPlugin(8, k=3, hidden=4, exact_prefix=1)
    with torch.no_grad():
        for p in plugin.parameters():
            p.normal_()
        x = torch.randn(2, 8, 8)
        out = plugin.run(x, ffn, None, causal=False)
        assert out.shape == x.shape
        assert torch.allclose(out[:, 0], ffn(x[:, 0]), atol=1e-6)
        y = x.clone()
        y[:, 1:] += 1.0  # every grouped position changes; the exact one does not
        assert torch.allclose(plugin.run(y, ffn, None, causal=False)[:, 0], out[:, 0], atol=1e-6)
        no_prefix = CompressionPlugin(8, k=3, hidden=4)
        no_prefix.load_state_dict(plugin.state_dict())
        assert not torch.allclose(no_prefix.run(x, ffn, None, causal=False)[:, 0], out[:, 0])
        # the grouped part is the same plugin applied to the positions after the prefix
        assert torch.allclose(out[:, 1:], no_prefix.run(x[:, 1:], ffn, None, causal=False), atol=1e-6)
