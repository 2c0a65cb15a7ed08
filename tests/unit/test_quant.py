"""plmkit.compress.quant: int8 weight-only layers, stored and loaded quantized."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from plmkit import arch, hooks, load_model
from plmkit.compress.quant import (Int8Linear, QuantConfig, dequantize_int8, quantize_int8, quantize_weight,
                                   save_quantized)
from plmkit.errors import ConfigError
from plmkit.testing import tiny_inputs, tiny_model, tiny_tokenizer


def test_quantize_weight_error_is_within_half_a_step():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 40, generator=g)
    w[3] = 0  # an all-zero row keeps a finite scale
    q, scale = quantize_weight(w)
    assert q.dtype == torch.int8 and scale.shape == (16,) and torch.isfinite(scale).all()
    err = (w - q.float() * scale[:, None]).abs()
    assert (err <= scale[:, None] / 2 + 1e-6).all()
    assert int(q.abs().max()) == 127


def test_int8_linear_matches_float_and_kernels_agree():
    g = torch.Generator().manual_seed(1)
    lin = nn.Linear(64, 32)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(32, 64, generator=g) * 0.1)
    x = torch.randn(5, 3, 64, generator=g)
    q = Int8Linear.from_linear(lin)
    ref = lin(x)
    out = q(x)
    assert out.shape == ref.shape
    assert (out - ref).abs().max() < 0.02 * ref.abs().max()
    for kernel in ("int8pack", "dequant-bf16", "int8pack-bf16"):
        q.set_kernels(kernel)
        tol = 1e-4 if kernel == "int8pack" else 0.02 * float(ref.abs().max().detach())
        torch.testing.assert_close(q(x), out, rtol=0, atol=tol)
        torch.testing.assert_close(q(x[:1, :1]), out[:1, :1], rtol=0, atol=tol)  # the decode-sized path


@pytest.mark.parametrize("family", ["llama", "bert", "t5"])
def test_quantize_model_close_to_float_and_hooks_resolve(family):
    model = tiny_model(family).eval()
    x = tiny_inputs(model)
    with torch.no_grad():
        ref = model(**x).logits
    report = quantize_int8(model)
    assert report["modules"] > 0 and report["bytes_after"] < report["bytes_before"] / 3
    for layer in arch.layers(model):
        assert isinstance(layer.ffn_out, Int8Linear) or isinstance(arch.innermost(layer.ffn_out), Int8Linear)
    with torch.no_grad():
        out = model(**x).logits
    assert (out - ref).abs().max() < 0.05 * ref.abs().max() + 1e-3
    layer = arch.layers(model)[0]
    with pytest.raises(ConfigError, match="dequantize=True"):
        layer.ffn_out_weight()
    assert layer.ffn_out_weight(dequantize=True).is_floating_point()
    site = f"{layer.name}.ffn.neurons"
    with hooks.capture(model, [site]) as cap:
        with torch.no_grad():
            model(**x)
    assert cap[site].shape[-1] == layer.ffn_out_weight(dequantize=True).shape[1]


def test_save_load_round_trip_is_exact_and_stays_int8(tmp_path):
    from safetensors import safe_open

    model = tiny_model("llama").eval()
    x = tiny_inputs(model)
    quantize_int8(model)
    with torch.no_grad():
        ref = model(**x).logits
    save_quantized(model, tmp_path, tokenizer=tiny_tokenizer())
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as st:
        dtypes = {k: st.get_slice(k).get_dtype() for k in st.keys()}
    assert dtypes["model.layers.0.mlp.down_proj.weight"] == "I8"
    assert dtypes["model.layers.0.mlp.down_proj.weight_scale"] == "F32"
    calls = []
    orig = nn.Linear.reset_parameters
    nn.Linear.reset_parameters = lambda self: calls.append(self.weight.device.type) or orig(self)
    try:
        loaded, _ = load_model(str(tmp_path))
    finally:
        nn.Linear.reset_parameters = orig
    assert all(d == "meta" for d in calls)  # the skeleton never allocated float weights
    assert isinstance(loaded.model.layers[0].mlp.down_proj, Int8Linear)
    with torch.no_grad():
        assert torch.equal(loaded(**x).logits, ref)


def test_dequantize_and_config():
    model = tiny_model("llama").eval()
    quantize_int8(model)
    assert dequantize_int8(model) > 0
    assert not any(isinstance(m, Int8Linear) for m in model.modules())
    assert isinstance(model.model.layers[0].mlp.down_proj, nn.Linear)
    assert QuantConfig.from_json(QuantConfig(skip=("q_proj",)).to_json()).skip == ("q_proj",)
    with pytest.raises(ConfigError, match="choose 8 or 4"):
        QuantConfig(bits=3)
    with pytest.raises(ConfigError, match="int4pack"):
        QuantConfig(bits=8, kernel="int4pack")


# ------------------------------------------------------------------------------------------------ int4

def test_int4_codes_pack_and_error_bounds():
    from plmkit.compress.quant import pack_nibbles, quantize_weight_int4, unpack_nibbles

    g = torch.Generator().manual_seed(2)
    w = torch.randn(8, 64, generator=g)
    w[:, 40] = 6.0  # an outlier column: clipping should pay in its groups
    q, scale, zero = quantize_weight_int4(w, 16, clip_grid=(1.0,))
    assert q.dtype == torch.uint8 and int(q.max()) <= 15 and scale.shape == zero.shape == (8, 4)
    deq = ((q.float().reshape(8, 4, 16) - 8) * scale[..., None] + zero[..., None]).reshape(8, 64)
    assert ((deq - w).abs() <= scale.repeat_interleave(16, 1) / 2 + 1e-5).all()
    assert torch.equal(unpack_nibbles(pack_nibbles(q)), q)
    q2, s2, z2 = quantize_weight_int4(w, 16)
    deq2 = ((q2.float().reshape(8, 4, 16) - 8) * s2[..., None] + z2[..., None]).reshape(8, 64)
    per_group = lambda d: ((d - w) ** 2).reshape(8, 4, 16).sum(-1)  # noqa: E731
    assert (per_group(deq2) <= per_group(deq) + 1e-6).all()  # the clip search never loses to min/max
    assert per_group(deq2).sum() < per_group(deq).sum()
    with pytest.raises(ConfigError, match="multiple of group_size"):
        quantize_weight_int4(w, 48)


def test_int4_linear_kernels_agree_with_the_dequantized_weight():
    from plmkit.compress.quant import Int4Linear

    g = torch.Generator().manual_seed(3)
    lin = nn.Linear(64, 48)
    x = torch.randn(3, 5, 64, generator=g)
    q = Int4Linear.from_linear(lin, group_size=32)
    ref = F_linear(x, q.dequantize(), lin.bias)
    assert (ref - lin(x)).abs().max() < 0.1 * lin(x).abs().max()
    for kernel in q.KERNELS:
        q.set_kernels(kernel)
        tol = 1e-4 if kernel in ("dequant", "int4pack") else 0.02 * float(ref.abs().max())
        torch.testing.assert_close(q(x), ref, rtol=0, atol=tol)
        torch.testing.assert_close(q(x[0, :1]), ref[0, :1], rtol=0, atol=tol)


def F_linear(x, w, b):
    return torch.nn.functional.linear(x, w, b)


def test_decode_and_prefill_kernels_dispatch_by_rows(monkeypatch):
    from plmkit.compress import quant

    seen = []
    for name in ("dequant", "int8pack"):
        fn = quant.INT8_KERNELS[name]
        monkeypatch.setitem(quant.INT8_KERNELS, name, lambda m, x, fn=fn, name=name: seen.append(name) or fn(m, x))
    q = Int8Linear.from_linear(nn.Linear(16, 8))
    q.set_kernels("int8pack", "dequant")
    q(torch.randn(1, quant.DECODE_ROWS, 16))
    q(torch.randn(2, quant.DECODE_ROWS, 16))
    assert seen == ["int8pack", "dequant"]
    with pytest.raises(ConfigError, match="choose one of"):
        q.set_kernels("int4pack")


@pytest.mark.parametrize("bits", [8, 4])
def test_choose_kernels_times_candidates_and_records_the_choice(bits):
    from plmkit.compress.quant import CONFIG_KEY, choose_kernels, quantize

    model = tiny_model("llama").eval()
    quantize(model, QuantConfig(bits=bits, group_size=32))
    choice = choose_kernels(model, prefill_rows=16, budget_s=0.001, rounds=1)
    assert choice.bits == bits and "threads" in choice.cpu
    for shape, pick in choice.chosen.items():
        times = choice.timings_us[shape]
        assert pick["decode"] == min(times, key=lambda k: times[k]["decode"])
        assert pick["prefill"] == min(times, key=lambda k: times[k]["prefill"])
    info = getattr(model.config, CONFIG_KEY)
    for name in info["modules"]:
        layer = model.get_submodule(name)
        assert info["kernels_by_shape"][f"{layer.in_features}x{layer.out_features}"] == [
            layer.kernel, layer.prefill_kernel] == [choice.chosen[f"{layer.in_features}x{layer.out_features}"][r]
                                                    for r in ("decode", "prefill")]
    report = quantize(tiny_model("llama").eval(), QuantConfig(bits=bits, group_size=16, kernel="auto"))
    assert report["kernels"]["chosen"]
    if bits == 4:  # torch's packed int4 matmul takes groups of 32 or more: never timed, never chosen at 16
        assert all("int4pack" not in k for t in report["kernels"]["timings_us"].values() for k in t)
        with pytest.raises(ConfigError, match="group_size in"):
            next(m for m in model.modules() if hasattr(m, "group_size")).__class__(
                32, 16, False, group_size=16, kernel="int4pack")


def test_int4_model_save_load_round_trip_is_exact_and_stays_packed(tmp_path):
    from safetensors import safe_open

    from plmkit.compress.quant import Int4Linear, quantize

    model = tiny_model("llama").eval()
    x = tiny_inputs(model)
    with torch.no_grad():
        dense = model(**x).logits
    report = quantize(model, QuantConfig(bits=4, group_size=32, kernel="int4pack"))
    assert report["bytes_after"] < report["bytes_before"] / 5
    with torch.no_grad():
        ref = model(**x).logits
    assert (ref - dense).abs().max() < 0.1 * dense.abs().max() + 1e-3
    assert "model.layers.0.mlp.down_proj" in report["skipped_group_size"]  # d_ff 48: not a multiple of 32
    for layer in arch.layers(model):
        layer.ffn_in.set_kernels("dequant", "int4pack")  # this shape only (32x48)
    save_quantized(model, tmp_path, tokenizer=tiny_tokenizer())
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as st:
        w = st.get_slice("model.layers.0.mlp.up_proj.weight")
        assert w.get_dtype() == "U8" and w.get_shape()[1] * 2 == model.model.layers[0].mlp.up_proj.in_features
    loaded, _ = load_model(str(tmp_path))
    layer = loaded.model.layers[0].mlp.up_proj
    assert isinstance(layer, Int4Linear) and layer.group_size == 32
    assert (layer.kernel, layer.prefill_kernel) == ("dequant", "int4pack")
    assert loaded.model.layers[0].self_attn.q_proj.kernel == "int4pack"
    assert type(loaded.model.layers[0].mlp.down_proj) is nn.Linear
    with torch.no_grad():
        assert torch.equal(loaded(**x).logits, ref)
    site = f"{arch.layers(loaded)[0].name}.ffn.neurons"
    with hooks.capture(loaded, [site]) as cap:
        with torch.no_grad():
            loaded(**x)
    assert cap[site].shape[-1] == layer.out_features
    from plmkit.infer import offload

    with pytest.raises(ConfigError, match="int4"):
        offload(str(tmp_path), budget="50%")


def test_peers_report_what_is_installed_and_torchao_matches_fp32_closely():
    from plmkit.compress.bench import peer_status, torchao_int8, weight_bytes

    status = peer_status()
    assert set(status) == {"torchao", "llama_cpp", "optimum-onnx"}
    assert all(v[0].isdigit() or v.startswith("not installed: ") for v in status.values())
    model = tiny_model("llama").eval()
    ao = torchao_int8(model)
    if ao is None:
        assert status["torchao"].startswith("not installed")
        pytest.skip("torchao is not installed (pip install torchao)")
    x = tiny_inputs(model)
    with torch.no_grad():
        torch.testing.assert_close(ao(**x).logits, model(**x).logits, rtol=0.05, atol=0.05)
    assert weight_bytes(ao) < 0.6 * weight_bytes(model)  # int8 inner tensors counted, not the fp32 originals


def test_dynamic_int8_quantizes_inputs_except_float_roles_and_round_trips(tmp_path):
    from plmkit.compress.quant import activation_sensitivity, layers_by_role, quantize, save_quantized

    model = tiny_model("llama").eval()
    x = tiny_inputs(model)
    with torch.no_grad():
        ref = model(**x).logits
    q = copy.deepcopy(model)
    weight_only = copy.deepcopy(model)
    quantize(weight_only, QuantConfig(bits=8))
    report = quantize(q, QuantConfig(bits=8, activations="dynamic"))
    roles = layers_by_role(q)
    assert all(m.kernel == "dynamic" for m in roles["attn_q"] + roles["ffn_in"])
    assert all(m.kernel == "dequant" for m in roles["ffn_out"])
    assert report["dynamic_layers"] == sum(len(v) for k, v in roles.items() if k != "ffn_out")
    with torch.no_grad():
        dyn, wo = q(**x).logits, weight_only(**x).logits
    assert not torch.equal(dyn, wo)  # the inputs really were quantized
    err, wo_err = (dyn - ref).abs().max(), (wo - ref).abs().max()
    assert err < 0.1 * ref.abs().max() and wo_err <= err
    save_quantized(q, tmp_path / "dyn", tokenizer=tiny_tokenizer())
    loaded, _ = load_model(tmp_path / "dyn")
    assert [m.kernel for m in layers_by_role(loaded)["ffn_out"]] == ["dequant"] * 2
    with torch.no_grad():
        torch.testing.assert_close(loaded(**x).logits, dyn)
    batches = [{"input_ids": x["input_ids"], "attention_mask": x["attention_mask"]}]
    sens = activation_sensitivity(model, batches)
    assert set(sens) >= {"none", "all", "attn_q", "ffn_out"} and sens["all"] != sens["none"]
    with pytest.raises(ConfigError, match="bits=8"):
        QuantConfig(bits=4, activations="dynamic")
    with pytest.raises(ConfigError, match="name roles"):
        QuantConfig(activations="dynamic", float_inputs=("down_proj",))
