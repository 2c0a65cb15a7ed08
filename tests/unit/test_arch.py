import json

import pytest
import torch

from plmkit import arch
from plmkit.errors import UnsupportedArchitectureError
from plmkit.testing import TINY_CONFIGS, tiny_inputs, tiny_model

FAMILIES = list(TINY_CONFIGS)
EXPECTED_KIND = {"bert": "gelu", "roberta": "gelu", "electra": "gelu", "llama": "gated-silu",
                 "gemma3": "gated-gelu", "gpt2": "gelu", "t5": "relu", "t5-gated": "gated-gelu"}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("head", ["lm", "base"])
def test_every_role_resolves(family, head):
    model = tiny_model(family, head=head)
    layers = arch.layers(model)
    n_stacks = 2 if family.startswith("t5") else 1
    assert len(layers) == 2 * n_stacks
    for layer in layers:
        assert layer.d_ff == 48 and layer.d_model == 32  # neuron-site width == FFN width
        assert layer.ffn_in_weight().shape == (48, 32)
        assert layer.ffn_out_weight().shape == (32, 48)
        assert (layer.ffn_gate_weight() is not None) == EXPECTED_KIND[family].startswith("gated")
        assert layer.attn_o is not None and layer.norms
        assert layer.attn_qkv is not None or all(m is not None for m in (layer.attn_q, layer.attn_k, layer.attn_v))
        assert model.get_submodule(layer.prefix) is layer.block
    assert arch.ffn_kind(model) == EXPECTED_KIND[family]
    emb = arch.embeddings(model)  # the module whose output enters the first block
    tok_emb = model.get_input_embeddings()  # T5: "shared", tied to the encoder's embed_tokens that runs
    assert any(m is tok_emb or getattr(m, "weight", None) is tok_emb.weight for m in emb.modules())
    assert (arch.head(model) is not None) == (head == "lm")
    if family == "t5":
        assert set(arch.layers(model)[-1].cross_attn) == {"q", "k", "v", "o"}


def _manual_neurons(layer, x, act):
    """The neuron activations computed by hand from the canonical-orientation weights."""
    def lin(w, mod):
        b = getattr(mod, "bias", None)
        return x @ w.T + (b if b is not None else 0)

    h = lin(layer.ffn_in_weight(), layer.ffn_in)
    if layer.ffn_gate is not None:
        return act(lin(layer.ffn_gate_weight(), layer.ffn_gate)) * h
    return act(h)


@pytest.mark.parametrize("family", FAMILIES)
def test_neuron_site_equals_manual_computation(family):
    from plmkit import hooks

    model = tiny_model(family)
    inputs = tiny_inputs(model)
    layers = arch.layers(model)
    act = arch.ffn_activation(model)
    ffn_inputs = {}
    handles = [
        l.ffn_in.register_forward_pre_hook(lambda m, a, name=l.name: ffn_inputs.__setitem__(name, a[0]))
        for l in layers
    ]
    sites = [f"{l.name}.ffn.neurons" for l in layers]
    with torch.no_grad(), hooks.capture(model, sites) as acts:
        model(**inputs)
    for h in handles:
        h.remove()
    for layer, site in zip(layers, sites):
        manual = _manual_neurons(layer, ffn_inputs[layer.name], act)
        torch.testing.assert_close(acts[site], manual, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(arch.ffn_forward(layer, ffn_inputs[layer.name], act), manual)


def test_gpt2_conv1d_weights_are_views_in_linear_orientation():
    model = tiny_model("gpt2")
    layer = arch.layers(model)[0]
    w = layer.ffn_in_weight()
    assert w.shape == (48, 32) and layer.ffn_in.weight.shape == (32, 48)
    with torch.no_grad():
        w[3, 5] = 7.0
    assert layer.ffn_in.weight[5, 3].item() == 7.0


def test_unknown_family_error_names_the_override():
    from transformers import AutoConfig

    config = AutoConfig.for_model("opt", hidden_size=16, num_hidden_layers=1, num_attention_heads=2, ffn_dim=24,
                                  vocab_size=50, word_embed_proj_dim=16)
    with pytest.raises(UnsupportedArchitectureError, match="override=") as e:
        arch.resolve(config)
    assert "--arch-override" in str(e.value)


def test_override_dict_round_trip_resolves_an_unregistered_model(tmp_path):
    from transformers import AutoConfig, AutoModel

    spec = arch.ModelSpec.from_dict(json.loads(json.dumps(arch.resolve(tiny_model("llama")).to_dict())))
    assert spec == arch.resolve(tiny_model("llama"))
    # OPT is not registered: describe it with an override dict, and from a JSON file
    override = {
        "family": "opt", "embeddings": "decoder.embed_tokens", "heads": ["lm_head"], "act_keys": ["activation_function"],
        "stacks": [{"name": "blocks", "blocks": "decoder.layers", "final_norm": "decoder.final_layer_norm",
                    "block": {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                              "attn_o": "self_attn.out_proj", "ffn_in": "fc1", "ffn_out": "fc2",
                              "norms": {"attn": "self_attn_layer_norm", "ffn": "final_layer_norm"}}}],
    }
    config = AutoConfig.for_model("opt", hidden_size=16, num_hidden_layers=1, num_attention_heads=2, ffn_dim=24,
                                  vocab_size=50, word_embed_proj_dim=16)
    model = AutoModel.from_config(config)
    path = tmp_path / "opt.json"
    path.write_text(json.dumps(override))
    for ov in (override, str(path)):
        (layer,) = arch.layers(model, override=ov)
        assert layer.d_ff == 24 and arch.ffn_kind(model, override=ov) == "relu"


def test_bad_override_path_is_a_clear_error():
    model = tiny_model("bert")
    bad = arch.resolve(model).to_dict()
    bad["stacks"][0]["block"]["ffn_in"] = "intermediate.nope"
    with pytest.raises(UnsupportedArchitectureError, match="intermediate.nope"):
        arch.layers(model, override=bad)


@pytest.mark.parametrize("family", FAMILIES)
def test_describe_is_json_serialisable(family):
    info = arch.describe(tiny_model(family))
    json.dumps(info)
    assert "ffn.neurons" in info["stacks"][0]["roles"]
    assert arch.format_spec(info).count("stack '") == len(info["stacks"])


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_ffn_apply_is_the_whole_ffn(name):
    """ffn_apply(layer, x) = ffn_out(act(...)) in every family, BERT's split FFN included."""
    model = tiny_model(name).eval()
    layer = arch.layers(model)[0]
    x = torch.randn(3, layer.d_model)
    with torch.no_grad():
        h = arch.ffn_forward(layer, x, arch.ffn_act(layer))
        ref = layer.ffn_out(h)
        torch.testing.assert_close(arch.ffn_apply(layer, x), ref)


def test_is_causal_per_family_and_stack():
    from plmkit.testing import tiny_config

    for name, causal in (("bert", False), ("roberta", False), ("electra", False), ("llama", True), ("gpt2", True),
                         ("gemma3", True)):
        assert arch.is_causal(tiny_config(name)) is causal, name
    t5 = tiny_config("t5")
    assert arch.is_causal(t5, "encoder") is False and arch.is_causal(t5, "decoder") is True
