"""Insertion points: extra key/value vectors, a module after a block, a prompt before the inputs."""
import pytest
import torch
from torch import nn

from plmkit import arch, hooks
from plmkit.errors import ConfigError
from plmkit.testing import TINY_CONFIGS, tiny_inputs, tiny_model


def _out(model, inputs):
    with torch.no_grad():
        out = model(**inputs)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


@pytest.mark.parametrize("name", list(TINY_CONFIGS))
def test_extra_kv_vectors_change_one_layer_train_and_come_out_again(name):
    model = tiny_model(name)
    inputs = tiny_inputs(model)
    ref = _out(model, inputs)
    extra = arch.add_kv_vectors(model, 1, 3, seed=0)
    g = arch.attention(model)
    assert extra.key.shape == (g.n_kv_heads, 3, g.head_dim)
    assert any(p is extra.key for p in model.parameters())  # registered on the model
    with hooks.capture(model, "blocks.0.resid_post" if not name.startswith("t5") else "encoder.blocks.0") as acts:
        out = model(**inputs)
    logits = out.logits if hasattr(out, "logits") else out.last_hidden_state
    assert not torch.allclose(logits, ref)
    logits.float().pow(2).mean().backward()
    assert extra.key.grad is not None and extra.key.grad.abs().sum() > 0
    assert acts  # hooks still resolve
    assert arch.remove_kv_vectors(model) == 1
    torch.testing.assert_close(_out(model, inputs), ref, rtol=0, atol=0)


def test_extra_kv_vectors_equal_a_hand_computed_attention():
    model = tiny_model("bert")
    inputs = tiny_inputs(model)
    extra = arch.add_kv_vectors(model, 0, 2, init_std=0.5, seed=3)
    sites = ["blocks.0.attn.q", "blocks.0.attn.k", "blocks.0.attn.v"]
    with torch.no_grad(), hooks.capture(model, sites) as acts, \
            hooks.capture(model, "blocks.0.attn.o", pool="none") as ctx:
        model(**inputs)
    # the input of attn.o is the attention's context: capture it through a pre-hook
    got = []
    h = arch.layers(model)[0].attn_o.register_forward_pre_hook(lambda m, a: got.append(a[0]))
    with torch.no_grad():
        model(**inputs)
    h.remove()

    def heads(x):
        return x.view(2, 7, 4, 8).transpose(1, 2)

    q, k, v = (heads(acts[s]) for s in sites)
    k = torch.cat([extra.key.detach().unsqueeze(0).expand(2, -1, -1, -1), k], 2)
    v = torch.cat([extra.value.detach().unsqueeze(0).expand(2, -1, -1, -1), v], 2)
    mask = torch.cat([torch.ones(2, 2), inputs["attention_mask"].float()], 1)
    scores = q @ k.transpose(-1, -2) / 8 ** 0.5 + (1 - mask)[:, None, None, :] * -1e9
    expected = (scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 7, 32)
    torch.testing.assert_close(got[0], expected, rtol=1e-4, atol=1e-5)


def test_extra_kv_on_every_layer_equals_a_prefix_cache():
    from transformers import DynamicCache

    model = tiny_model("llama")
    inputs = tiny_inputs(model, pad_last=0)
    n = 2
    kvs = [arch.add_kv_vectors(model, i, n, init_std=0.3, seed=i) for i in range(2)]
    ours = _out(model, inputs)
    arch.remove_kv_vectors(model)
    cache = DynamicCache(config=model.config)
    for i, e in enumerate(kvs):
        cache.update(e.key.detach().unsqueeze(0).expand(2, -1, -1, -1).contiguous(),
                     e.value.detach().unsqueeze(0).expand(2, -1, -1, -1).contiguous(), i)
    mask = torch.cat([torch.ones(2, n, dtype=torch.long), inputs["attention_mask"]], 1)
    with torch.no_grad():
        theirs = model(input_ids=inputs["input_ids"], attention_mask=mask, past_key_values=cache,
                       position_ids=torch.arange(7).expand(2, -1)).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["bert", "llama", "gemma3", "gpt2", "t5"])
def test_module_after_a_block_registers_its_parameters_and_unwraps(name):
    model = tiny_model(name)
    inputs = tiny_inputs(model)
    ref = _out(model, inputs)
    adapter = nn.Linear(32, 32)
    nn.init.zeros_(adapter.weight)
    nn.init.zeros_(adapter.bias)

    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = adapter

        def forward(self, x):
            return x + self.lin(x)

    wrapper = arch.insert_after_block(model, 0, Residual())
    assert any(p is adapter.weight for p in model.parameters())
    torch.testing.assert_close(_out(model, inputs), ref)  # a zero adapter changes nothing
    assert arch.layers(model)[0].block is wrapper
    with torch.no_grad():
        adapter.weight.fill_(0.1)
    assert not torch.allclose(_out(model, inputs), ref)
    sites = hooks.all_sites(model)
    with torch.no_grad(), hooks.capture(model, sites) as acts:
        model(**inputs)
    assert set(acts) == set(sites)
    arch.unwrap(model, arch.InsertedAfter)
    torch.testing.assert_close(_out(model, inputs), ref, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["bert", "llama", "gpt2", "t5"])
def test_prompt_vectors_extend_masks_and_labels(name):
    model = tiny_model(name)
    inputs = tiny_inputs(model)
    ref = _out(model, inputs)
    prompt = arch.prepend_prompt(model, 4, seed=0)
    assert arch.virtual_tokens(model) == 4
    out = model(**inputs, labels=inputs["decoder_input_ids" if name == "t5" else "input_ids"].contiguous())
    expected_len = 7 + (4 if name != "t5" else 0)
    assert out.logits.shape[1] == (expected_len if name != "t5" else 5)
    out.loss.backward()
    assert prompt.vectors.grad is not None and prompt.vectors.grad.abs().sum() > 0
    site = "blocks.1" if name != "t5" else "encoder.blocks.1"
    with torch.no_grad(), hooks.capture(model, site, pool="mean", attention_mask=inputs["attention_mask"]) as acts:
        model(**inputs)
    assert acts[site].shape == (2, 32)
    with pytest.raises(ConfigError, match="already has a prompt"):
        arch.prepend_prompt(model, 2)
    arch.remove_prompt(model)
    assert arch.virtual_tokens(model) == 0
    torch.testing.assert_close(_out(model, inputs), ref, rtol=0, atol=0)


def test_prompt_from_token_embeddings_matches_typing_those_tokens_for_gpt2():
    model = tiny_model("gpt2")
    inputs = tiny_inputs(model, pad_last=0)
    ids = torch.tensor([5, 9, 11])
    arch.prepend_prompt(model, 3, init=model.get_input_embeddings().weight[ids].detach())
    ours = _out(model, inputs)
    arch.remove_prompt(model)
    typed = _out(model, {"input_ids": torch.cat([ids.expand(2, -1), inputs["input_ids"]], 1),
                         "attention_mask": torch.ones(2, 10, dtype=torch.long)})
    torch.testing.assert_close(ours, typed, rtol=1e-5, atol=1e-5)


def _projected(model, layer_index, hidden, stack=None):
    """Keys and values of ``hidden`` by a layer's own projections, computed here by hand, (n_kv, n, head_dim)."""
    layer = arch.layers(model, stack=stack)[layer_index]
    g = arch.attention(model)
    with torch.no_grad():
        if layer.attn_qkv is not None:
            _, k, v = layer.attn_qkv(hidden).split(hidden.shape[-1], -1)
        else:
            k, v = layer.attn_k(hidden), layer.attn_v(hidden)
        k = k.view(-1, g.n_kv_heads, g.head_dim)
        if hasattr(layer.attn, "k_norm"):
            k = layer.attn.k_norm(k)
    return k.transpose(0, 1), v.view(-1, g.n_kv_heads, g.head_dim).transpose(0, 1)


@pytest.mark.parametrize("name", list(TINY_CONFIGS))
def test_attended_states_use_the_layers_own_key_value_weights(name):
    model = tiny_model(name)
    inputs = tiny_inputs(model, batch=1, pad_last=0)
    stack = "encoder" if name.startswith("t5") else None
    d = arch.layers(model, stack=stack)[0].d_model
    hidden = torch.randn(1, 3, d, generator=torch.Generator().manual_seed(0))
    ref = _out(model, inputs)
    with arch.attend_also(model, hidden.new_zeros(1, 0, d), indices=[1], stack=stack):
        torch.testing.assert_close(_out(model, inputs), ref)  # an empty plugin changes nothing
    with arch.attend_also(model, hidden, indices=[1], stack=stack):
        plugged = _out(model, inputs)
    assert not torch.allclose(plugged, ref)
    key, value = _projected(model, 1, hidden[0], stack)
    arch.add_kv_vectors(model, 1, 3, stack=stack, key=key, value=value)
    torch.testing.assert_close(plugged, _out(model, inputs))  # same as those keys and values given by hand
    arch.remove_kv_vectors(model)
    torch.testing.assert_close(_out(model, inputs), ref, rtol=0, atol=0)


def test_attended_states_are_per_sequence_and_masked():
    model = tiny_model("llama")
    inputs = tiny_inputs(model, batch=2, pad_last=0)
    d = arch.layers(model)[0].d_model
    hidden = torch.randn(2, 4, d, generator=torch.Generator().manual_seed(1))
    mask = torch.tensor([[True] * 4, [True, True, False, False]])
    with arch.attend_also(model, hidden, mask, indices=[0, 1]):
        both = _out(model, inputs)
    one = {k: v[1:] for k, v in inputs.items()}
    with arch.attend_also(model, hidden[1:, :2], indices=[0, 1]):
        second = _out(model, one)
    torch.testing.assert_close(both[1:], second)  # masked vectors are invisible; rows do not mix
    hidden.requires_grad_(True)
    with arch.attend_also(model, hidden, mask, indices=[1]):
        _out_grad = model(**inputs).logits
    _out_grad.sum().backward()
    assert hidden.grad[1, 2:].abs().sum() == 0 and hidden.grad[0].abs().sum() > 0
    assert model.config._attn_implementation != arch.insert.ATTENTION  # restored on exit
    with pytest.raises(ConfigError, match="batch has 1"):
        with arch.attend_also(model, hidden.detach(), indices=[0]):
            model(**one)
