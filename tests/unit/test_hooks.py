import pytest
import torch

from plmkit import arch, hooks
from plmkit.errors import ConfigError
from plmkit.testing import tiny_inputs, tiny_model


def _logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def test_pooling_respects_the_padding_mask():
    model = tiny_model("bert")
    inputs = tiny_inputs(model)
    mask = inputs["attention_mask"]
    site = "blocks.1.ffn.neurons"
    with torch.no_grad(), hooks.capture(model, site) as raw:
        model(**inputs)
    x = raw[site]
    pooled = {}
    for pool in ("mean", "max", "first", "last", "tokens"):
        with torch.no_grad(), hooks.capture(model, site, pool=pool, attention_mask=mask) as acts:
            model(**inputs)
        pooled[pool] = acts[site]
    n0 = int(mask[0].sum())
    torch.testing.assert_close(pooled["mean"][0], x[0, :n0].mean(0))
    torch.testing.assert_close(pooled["max"][0], x[0, :n0].amax(0))
    torch.testing.assert_close(pooled["last"][0], x[0, n0 - 1])
    torch.testing.assert_close(pooled["last"][1], x[1, -1])
    torch.testing.assert_close(pooled["first"], x[:, 0])
    assert pooled["tokens"].shape == (int(mask.sum()), 48)


def test_pooling_demands_an_explicit_mask():
    model = tiny_model("bert")
    with pytest.raises(ConfigError, match="attention_mask"):
        with hooks.capture(model, "blocks.0.ffn.neurons", pool="mean"):
            pass


def test_capture_accumulates_calls_and_block_outputs():
    model = tiny_model("llama")
    inputs = tiny_inputs(model)
    with torch.no_grad(), hooks.capture(model, ["embeddings", "blocks.1", "blocks.0.attn.q"]) as acts:
        model(**inputs)
        model(**inputs)
    assert acts["blocks.1"].shape == (4, 7, 32)
    assert len(acts.parts("embeddings")) == 2
    torch.testing.assert_close(acts["embeddings"][:2], model.get_input_embeddings()(inputs["input_ids"]))


def test_gpt2_fused_qkv_sites_are_slices():
    model = tiny_model("gpt2")
    inputs = tiny_inputs(model)
    layer = arch.layers(model)[0]
    with torch.no_grad(), hooks.capture(model, ["blocks.0.attn.qkv", "blocks.0.attn.k"]) as acts:
        model(**inputs)
    torch.testing.assert_close(acts["blocks.0.attn.k"], acts["blocks.0.attn.qkv"][..., 32:64])
    assert layer.attn_q is None


def test_zeroing_all_neurons_removes_the_ffn_contribution():
    model = tiny_model("llama")
    inputs = tiny_inputs(model)
    layer = arch.layers(model)[1]
    with torch.no_grad(), hooks.capture(model, "blocks.1.ffn.out") as acts, \
            hooks.intervene(model, "blocks.1.ffn.neurons", hooks.zero()):
        model(**inputs)
    # down_proj has no bias in LLaMA: zero neurons -> zero FFN output
    assert layer.ffn_out.bias is None
    assert acts["blocks.1.ffn.out"].abs().max() == 0


def test_interventions_change_only_what_they_say():
    model = tiny_model("bert")
    inputs = tiny_inputs(model)
    site = "blocks.0.ffn.neurons"
    with torch.no_grad(), hooks.capture(model, site) as base:
        model(**inputs)
    x = base[site]
    means = x.mean((0, 1))
    g = torch.Generator().manual_seed(0)
    cases = {
        "zero": (hooks.zero([1, 4]), lambda v: v.index_fill(-1, torch.tensor([1, 4]), 0.0)),
        "scale": (hooks.scale([2], 3.0), lambda v: torch.cat([v[..., :2], 3 * v[..., 2:3], v[..., 3:]], -1)),
        "mean": (hooks.mean_ablate([0, 5], means[[0, 5]]), None),
    }
    for name, (edit, expect) in cases.items():
        with torch.no_grad(), hooks.intervene(model, site, edit), hooks.capture(model, site) as seen:
            model(**inputs)  # pre-hooks run in order: the capture, entered second, sees the edited value
        if expect is not None:
            torch.testing.assert_close(seen[site], expect(x))
        else:
            assert torch.all(seen[site][..., 0] == means[0]) and torch.all(seen[site][..., 5] == means[5])
            torch.testing.assert_close(seen[site][..., 1:5], x[..., 1:5])
    noisy = hooks.add_noise([3], std=1.0, generator=g)
    with torch.no_grad(), hooks.intervene(model, {site: noisy}):
        changed = _logits(model, inputs)
    assert not torch.allclose(changed, _logits(model, inputs))


def test_hooks_are_removed_even_on_exceptions():
    model = tiny_model("t5")
    inputs = tiny_inputs(model)
    before = _logits(model, inputs)
    with pytest.raises(RuntimeError, match="boom"):
        with hooks.intervene(model, "decoder.blocks.1.ffn.neurons", hooks.scale(None, 0.0)), \
                hooks.capture(model, "encoder.blocks.0.attn.v"):
            raise RuntimeError("boom")
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    torch.testing.assert_close(_logits(model, inputs), before)


def test_t5_stack_sites_and_bad_names():
    model = tiny_model("t5")
    inputs = tiny_inputs(model)
    with torch.no_grad(), hooks.capture(model, ["encoder.blocks.1.ffn.neurons", "decoder.blocks.0.cross_attn.q"]) as a:
        model(**inputs)
    assert a["encoder.blocks.1.ffn.neurons"].shape == (2, 7, 48)
    assert a["decoder.blocks.0.cross_attn.q"].shape == (2, 5, 32)
    assert hooks.site_names(model, "ffn.neurons", stack="decoder") == ["decoder.blocks.0.ffn.neurons",
                                                                        "decoder.blocks.1.ffn.neurons"]
    for bad in ("blocks.9.ffn.neurons", "encoder.blocks.0.cross_attn.q", "blocks.0.ffn.nope", "layer3"):
        with pytest.raises(ConfigError):
            hooks.resolve_site(model, bad)
