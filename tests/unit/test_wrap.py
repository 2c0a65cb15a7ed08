"""Methods compose: wrapped, MoEfied, ReLU-fied and PEFT models keep every arch role and hook site,
and unwrapping gives back the original model bit for bit."""
import copy

import pytest
import torch
from torch import nn

from plmkit import arch, hooks
from plmkit.compress.moefication import (MoEFFN, MoEficationConfig, moe_layers, moefy, relufy, set_mode, unmoefy,
                                         unrelufy)
from plmkit.errors import ConfigError, UnsupportedArchitectureError
from plmkit.testing import TINY_CONFIGS, tiny_inputs, tiny_model

FAMILIES = list(TINY_CONFIGS)


def _out(model, inputs):
    with torch.no_grad():
        out = model(**inputs)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def _moefy(model, **cfg):
    config = MoEficationConfig(**{"experts": 8, "split": "kmeans", "router": "similarity", "active": 0.5, **cfg})
    moefy(model, config, progress=False)
    return model


def _hooked_modules(model):
    return [n for n, m in model.named_modules() if m._forward_hooks or m._forward_pre_hooks]


def _every_site_fires(model, inputs):
    sites = hooks.all_sites(model)
    with torch.no_grad(), hooks.capture(model, sites) as acts:
        model(**inputs)
    assert set(acts) == set(sites), f"sites that never fired: {sorted(set(sites) - set(acts))}"
    assert not _hooked_modules(model)
    return acts


@pytest.mark.parametrize("name", FAMILIES)
def test_moefied_model_keeps_every_role_and_site_and_unwraps_bit_for_bit(name):
    model = tiny_model(name)
    inputs = tiny_inputs(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    dense = _out(model, inputs)
    _moefy(model)
    assert any(True for _ in moe_layers(model))
    layer = arch.layers(model)[0]
    assert layer.ffn_in_weight().shape == (48, 32)  # the original weights, through base_layer
    wrapped = arch.describe(model)["wrapped"]
    assert sum(v.startswith("MoEFFN(") for v in wrapped.values()) == len(arch.layers(model))
    sparse = _out(model, inputs)
    acts = _every_site_fires(model, inputs)
    torch.testing.assert_close(_out(model, inputs), sparse)  # hooks removed: back on the sparse path
    assert acts["blocks.0.ffn.neurons" if name not in ("t5", "t5-gated") else "encoder.blocks.0.ffn.neurons"].shape[-1] == 48
    unmoefy(model)
    assert not list(moe_layers(model)) and not arch.wrappers(model)
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    torch.testing.assert_close(_out(model, inputs), dense, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["bert", "llama", "gpt2"])
def test_observed_moe_layer_computes_what_the_sparse_path_computes(name):
    model = _moefy(tiny_model(name))
    inputs = tiny_inputs(model)
    sparse = _out(model, inputs)
    site = "blocks.1.ffn.neurons"
    with torch.no_grad(), hooks.capture(model, site) as acts:
        observed = model(**inputs).logits
    torch.testing.assert_close(observed, sparse, rtol=1e-4, atol=1e-5)
    moe = list(moe_layers(model))[1]
    x = acts[site].reshape(-1, 48)
    # half the experts are off for every token: their neurons (in the original order) are exactly zero
    for e in range(moe.experts):
        neurons = moe.perm[e * moe.size:(e + 1) * moe.size]
        block = x[:, neurons]
        assert ((block == 0).all(1) | (block != 0).any(1)).all()
    zero_rows = sum(bool((x[:, moe.perm[e * moe.size:(e + 1) * moe.size]] == 0).all(1).float().mean() > 0.3)
                    for e in range(moe.experts))
    assert zero_rows >= 1
    with torch.no_grad(), hooks.intervene(model, site, hooks.zero()):
        ablated = model(**inputs).logits
    assert not torch.allclose(ablated, sparse)
    with torch.no_grad(), hooks.capture(model, site, pool="mean", attention_mask=inputs["attention_mask"]) as pooled:
        model(**inputs)
    n0 = int(inputs["attention_mask"][0].sum())
    torch.testing.assert_close(pooled[site][0], acts[site][0, :n0].mean(0))


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["bert", "llama"])
def test_moefy_and_hooks_run_where_the_model_is(device, name):
    model = tiny_model(name).to(device)
    inputs = {k: v.to(device) for k, v in tiny_inputs(model).items()}
    config = MoEficationConfig(experts=8, split="coactivation", router="mlp", router_steps=5, calibration_tokens=64)
    moefy(model, config, calibration=[tiny_inputs(model)], progress=False)  # CPU batches: moved to the model
    moe = next(moe_layers(model))
    assert {p.device.type for p in moe.parameters()} == {device} and moe.perm.device.type == device
    with torch.no_grad(), hooks.capture(model, "blocks.0.ffn.neurons", pool="mean",
                                        attention_mask=inputs["attention_mask"]) as acts:
        model(**inputs)
    assert acts["blocks.0.ffn.neurons"].device.type == device


def test_relufy_wraps_the_activation_and_unrelufy_restores_it():
    model = tiny_model("llama")
    inputs = tiny_inputs(model)
    dense = _out(model, inputs)
    relufy(model)
    assert isinstance(arch.ffn_act(arch.layers(model)[0]), arch.ActivationWrapper)
    acts = _every_site_fires(model, inputs)
    assert (acts["blocks.0.ffn.neurons"] == 0).float().mean() > 0.3
    assert unrelufy(model) == 2
    torch.testing.assert_close(_out(model, inputs), dense, rtol=0, atol=0)


def test_composed_wrappers_relufy_then_moefy_then_unwrap_everything():
    model = tiny_model("bert")
    inputs = tiny_inputs(model)
    dense = _out(model, inputs)
    relufy(model)
    _moefy(model)
    _every_site_fires(model, inputs)
    assert arch.unwrap(model) >= 4
    torch.testing.assert_close(_out(model, inputs), dense, rtol=0, atol=0)


def test_a_foreign_replacement_names_the_fix():
    model = tiny_model("bert")
    model.bert.encoder.layer[0].intermediate = nn.Linear(32, 48)
    with pytest.raises(UnsupportedArchitectureError, match="Wrapper"):
        arch.layers(model)


def test_replace_ffn_wraps_any_module_and_unwrap_restores_it():
    model = tiny_model("bert")
    inputs = tiny_inputs(model)
    dense = _out(model, inputs)
    layer = arch.layers(model)[0]
    wrapper = arch.replace_ffn(layer, nn.Linear(32, 32))
    assert isinstance(wrapper, arch.ReplacedFFN)
    assert arch.layers(model)[0].ffn_out_weight().shape == (32, 48)
    assert not torch.allclose(_out(model, inputs), dense)
    arch.unwrap(model)
    torch.testing.assert_close(_out(model, inputs), dense, rtol=0, atol=0)


def test_stale_expert_views_are_dropped_after_assign_load():
    model = _moefy(tiny_model("llama"))
    inputs = tiny_inputs(model)
    moe = list(moe_layers(model))[0]
    set_mode(model, "dense")
    before = _out(model, inputs)
    state = {k: v.clone() * (2.0 if k in ("w_out",) else 1.0) for k, v in moe.state_dict().items()
             if not k.startswith("base_layer")}
    moe.load_state_dict(state, strict=False, assign=True)
    assert not torch.allclose(_out(model, inputs), before)


# --- PEFT ------------------------------------------------------------------------------------------

def _lora(name):
    from peft import LoraConfig, get_peft_model

    model = tiny_model(name)
    targets = {"bert": ["query", "value", "intermediate.dense"], "llama": ["q_proj", "v_proj", "up_proj"],
               "gpt2": ["c_attn"], "t5": ["q", "v"]}[name]
    return get_peft_model(model, LoraConfig(r=2, target_modules=targets, init_lora_weights=False))


@pytest.mark.parametrize("name", ["bert", "llama", "gpt2", "t5"])
def test_lora_model_resolves_and_hooks_every_site(name):
    peft_model = _lora(name)
    inputs = tiny_inputs(peft_model.get_base_model())
    layers = arch.layers(peft_model)
    assert layers[0].prefix.startswith("base_model.model.")
    assert peft_model.get_submodule(layers[0].prefix) is layers[0].block
    q = layers[0].attn_q if name != "gpt2" else layers[0].attn_qkv
    assert type(q).__module__.startswith("peft")  # the site is the LoRA layer that runs
    assert arch.dense_weight(q) is arch.innermost(q).weight  # weights come from the base layer
    assert arch.head(peft_model) is not None
    arch.describe(peft_model)
    acts = _every_site_fires(peft_model, inputs)
    with torch.no_grad():
        lora_q = q(acts[f"{layers[0].name}.resid_pre" if name != "t5" else "encoder.blocks.0.norm.attn"])
    if name == "bert":
        torch.testing.assert_close(acts["blocks.0.attn.q"], lora_q)


@pytest.mark.parametrize("name", ["llama", "bert"])
def test_prompt_tuning_extends_the_pooling_mask_over_virtual_tokens(name):
    from peft import PromptTuningConfig, TaskType, get_peft_model

    base = tiny_model(name)
    task = TaskType.CAUSAL_LM if name == "llama" else TaskType.FEATURE_EXTRACTION
    model = get_peft_model(base, PromptTuningConfig(task_type=task, num_virtual_tokens=3))
    inputs = tiny_inputs(base)
    assert arch.virtual_tokens(model) == 3
    site = "blocks.1.resid_post"
    with torch.no_grad(), hooks.capture(model, site) as raw:
        model(**inputs)
    with torch.no_grad(), hooks.capture(model, site, pool="mean", attention_mask=inputs["attention_mask"]) as acts:
        model(**inputs)
    x = raw[site]
    assert x.shape[1] == inputs["input_ids"].shape[1] + 3
    n0 = int(inputs["attention_mask"][0].sum())
    torch.testing.assert_close(acts[site][0], x[0, :3 + n0].mean(0))
    _every_site_fires(model, inputs)


def test_prefix_tuning_model_resolves_every_site():
    from peft import PrefixTuningConfig, TaskType, get_peft_model

    base = tiny_model("llama")
    model = get_peft_model(base, PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=2))
    assert arch.virtual_tokens(model) == 0
    _every_site_fires(model, tiny_inputs(base))


# --- hooks leave nothing behind ----------------------------------------------------------------------

def test_a_failing_site_lookup_leaves_no_hook_behind():
    model = tiny_model("bert")
    inputs = tiny_inputs(model)
    before = _out(model, inputs)
    with pytest.raises(ConfigError):
        with hooks.capture(model, ["blocks.0.ffn.neurons", "blocks.1.attn.q", "blocks.9.ffn.neurons"]):
            pass
    with pytest.raises(ConfigError):
        with hooks.intervene(model, {"blocks.0.ffn.neurons": hooks.zero(), "blocks.0.nope": hooks.zero()}):
            pass
    assert not _hooked_modules(model)
    torch.testing.assert_close(_out(model, inputs), before, rtol=0, atol=0)


def test_an_error_inside_the_block_removes_the_hooks():
    model = tiny_model("llama")
    with pytest.raises(RuntimeError, match="boom"):
        with hooks.intervene(model, "blocks.0.ffn.neurons", hooks.zero()):
            raise RuntimeError("boom")
    assert not _hooked_modules(model)


def test_captured_is_a_full_mapping():
    model = tiny_model("gpt2")
    inputs = tiny_inputs(model)
    sites = ["blocks.0.resid_pre", "blocks.0.ffn.neurons"]
    with torch.no_grad(), hooks.capture(model, sites) as acts:
        model(**inputs)
    assert list(acts) == sites and len(acts) == 2 and set(dict(acts)) == set(sites)
    assert [k for k, _ in acts.items()] == sites
    torch.testing.assert_close(acts["blocks.0.resid_pre"][:, :, :], acts.get("blocks.0.resid_pre"))
    with pytest.raises(KeyError, match="nothing captured"):
        acts["blocks.1.ffn.neurons"]


@pytest.mark.parametrize("name", ["bert", "llama", "gpt2", "gemma3", "t5"])
def test_residual_stream_and_attention_probabilities(name):
    model = tiny_model(name)
    model.set_attn_implementation("eager")
    inputs = tiny_inputs(model)
    prefix = "encoder." if name == "t5" else ""
    sites = [f"{prefix}blocks.1.resid_pre", f"{prefix}blocks.0.resid_post", f"{prefix}blocks.0.attn.probs"]
    with torch.no_grad(), hooks.capture(model, sites) as acts:
        model(**inputs)
    torch.testing.assert_close(acts[sites[0]], acts[sites[1]])  # block 1's input is block 0's output
    probs = acts[sites[2]]
    assert probs.shape == (2, 4, 7, 7)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 4, 7))
    with torch.no_grad(), hooks.intervene(model, sites[0], hooks.zero()):
        changed = _out(model, inputs)
    assert not torch.allclose(changed, _out(model, inputs))


def test_attention_probabilities_need_eager_attention():
    model = tiny_model("llama")
    model.set_attn_implementation("sdpa")
    with pytest.raises(ConfigError, match="eager"):
        with hooks.capture(model, "blocks.0.attn.probs"):
            pass


# --- geometry and non-dense weights ----------------------------------------------------------------

@pytest.mark.parametrize("name", FAMILIES)
def test_attention_geometry_matches_the_projections(name):
    model = tiny_model(name)
    g = arch.attention(model)
    layer = arch.layers(model)[0]
    q_out = layer.attn_qkv.weight.shape[1] // 3 if layer.attn_qkv is not None else layer.attn_q.weight.shape[0]
    k_out = q_out if layer.attn_qkv is not None else layer.attn_k.weight.shape[0]
    assert g.n_heads * g.head_dim == q_out
    assert g.kv_dim == k_out
    assert g.position == {"llama": "rotary", "gemma3": "rotary", "t5": "relative", "t5-gated": "relative"}.get(
        name, "absolute")
    if name in ("llama", "gemma3"):
        assert g.n_kv_heads == 2 and g.group == 2


def test_quantized_layers_are_refused_or_dequantized():
    model = tiny_model("bert")
    layer = arch.layers(model)[0]
    w = layer.ffn_in_weight().detach().clone()
    layer.ffn_in.weight = nn.Parameter(torch.zeros(48, 32, dtype=torch.int8), requires_grad=False)
    with pytest.raises(ConfigError, match="dense float weight"):
        arch.layers(model)[0].ffn_in_weight()
    qmodel = torch.ao.quantization.quantize_dynamic(copy.deepcopy(tiny_model("bert")), {nn.Linear}, torch.qint8)
    qlayer = arch.layers(qmodel)[0]
    with pytest.raises(ConfigError, match="dequantize=True"):
        qlayer.ffn_in_weight()
    deq = qlayer.ffn_in_weight(dequantize=True)
    assert deq.dtype == torch.float32 and deq.shape == (48, 32)
    torch.testing.assert_close(deq, w, atol=0.02, rtol=0)


def test_moefy_places_everything_on_the_model_device_and_dtype():
    model = tiny_model("llama").to(torch.bfloat16)
    config = MoEficationConfig(experts=8, split="coactivation", router="mlp", router_steps=5, calibration_tokens=64)
    moefy(model, config, calibration=[tiny_inputs(model, batch=4, length=12, seed=s) for s in range(2)], progress=False)
    moe = list(moe_layers(model))[0]
    assert all(p.dtype == torch.bfloat16 for p in moe.parameters())
    assert moe.perm.device == moe.w_in.device
    inputs = tiny_inputs(model)
    assert _out(model, inputs).dtype == torch.bfloat16


def test_moefy_rejects_a_moefied_model_and_moe_layer_is_a_wrapper():
    model = _moefy(tiny_model("bert"))
    assert all(isinstance(m, arch.Wrapper) for m in moe_layers(model))
    assert isinstance(list(moe_layers(model))[0], MoEFFN)
    with pytest.raises(ConfigError, match="already MoEfied"):
        _moefy(model)
