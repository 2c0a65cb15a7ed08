"""plmkit.compress.quant: int8 weight-only layers, stored and loaded quantized."""
from __future__ import annotations

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
    if hasattr(torch, "_weight_int8pack_mm"):
        q.kernel = "int8pack"
        torch.testing.assert_close(q(x), out, rtol=1e-4, atol=1e-4)


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
    with pytest.raises(ConfigError, match="only 8-bit"):
        QuantConfig(bits=4)
