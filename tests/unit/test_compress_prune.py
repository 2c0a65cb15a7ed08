"""plmkit.compress.prune and .distill: magnitude masks held through training, L0 gates removed for real."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from plmkit import arch, hooks
from plmkit.compress.distill import DistillConfig, block_pairs, distill, kd_loss
from plmkit.compress.prune import (L0Config, L0Gates, MaskConfig, attach_gates, detach_gates, finalize_gates,
                                   magnitude_mask, magnitude_masks, mask_report)
from plmkit.errors import ConfigError
from plmkit.testing import tiny_inputs, tiny_model
from plmkit.train import TrainConfig


def _records(model, n=24, length=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, model.config.vocab_size, (length,), generator=g),
             "attention_mask": torch.ones(length, dtype=torch.long)} for _ in range(n)]


def _collate(batch):
    return {k: torch.stack([r[k] for r in batch]) for k in batch[0]}


def test_magnitude_masks_keep_the_largest():
    w = torch.tensor([[0.1, -3.0, 2.0, 0.5, 4.0, 0.0, -0.2, 1.0]])
    assert magnitude_mask(w, "2:4").tolist() == [[False, True, True, False, True, False, False, True]]
    keep = magnitude_mask(torch.randn(10, 20, generator=torch.Generator().manual_seed(0)), "unstructured", 0.3)
    assert int((~keep).sum()) == 60
    with pytest.raises(ConfigError, match="multiple of 4"):
        magnitude_mask(torch.randn(2, 6), "2:4")
    with pytest.raises(ConfigError, match="choose one of"):
        MaskConfig(pattern="1:4")


def test_kd_loss_matches_a_hand_computation():
    s = torch.tensor([[[1.0, 0.0, -1.0], [0.5, 0.5, 0.0]]])
    t = torch.tensor([[[0.0, 2.0, 0.0], [1.0, 0.0, 0.0]]])
    mask = torch.tensor([[1, 0]])
    tau = 2.0
    p = torch.softmax(t[0, 0] / tau, -1)
    q = torch.softmax(s[0, 0] / tau, -1)
    hand = float((p * (p.log() - q.log())).sum()) * tau * tau
    assert math.isclose(float(kd_loss(s, t, tau, mask)), hand, rel_tol=1e-5)
    with pytest.raises(ConfigError, match="share the vocabulary"):
        kd_loss(s, t[..., :2], tau)


def test_two_four_masks_hold_after_distillation_steps(tmp_path):
    teacher = tiny_model("llama").eval()
    student = copy.deepcopy(teacher)
    masks = magnitude_masks(student, MaskConfig(pattern="2:4"))
    before = {n: arch.dense_weight(student.get_submodule(n)).detach().clone() for n in masks}
    distill(student, teacher, _records(student), TrainConfig(out_dir=str(tmp_path), max_steps=4, batch_size=8,
                                                             lr=1e-2, progress=False), masks=masks,
            collate_fn=_collate)
    report = mask_report(student, masks)
    assert report["masks_hold"] and report["two_four_holds"] and abs(report["zero_fraction"] - 0.5) < 0.01
    name = next(iter(masks))
    w = arch.dense_weight(student.get_submodule(name))
    kept = masks[name]
    assert not torch.equal(w[kept], before[name][kept])  # the kept weights trained


def test_l0_lagrangian_drives_expected_sparsity_to_the_target():
    gates = L0Gates({"a": 64, "b": 32}, L0Config(target=0.6, warmup=0.2))
    gates.steps_total = 300
    opt = torch.optim.AdamW([{"params": list(gates.log_alpha)}, {"params": [gates.lambdas]}], lr=0.1,
                            weight_decay=0.0)
    start = float(gates.expected_sparsity().detach())
    for _ in range(300):
        gates.draws += 1
        loss = gates.lagrangian()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert start < 0.1
    assert abs(float(gates.expected_sparsity().detach()) - 0.6) < 0.02
    assert gates.keep_counts() == [26, 13]


def test_gates_sample_reproducibly_and_stretch_to_exact_zeros_and_ones():
    gates = L0Gates({"a": 2000}, L0Config(seed=3))
    a, b = gates.sample(0), gates.sample(0)
    assert torch.equal(a, b)  # the same draw count gives the same noise, whatever the global RNG did
    gates.draws += 1
    assert not torch.equal(a, gates.sample(0))
    assert (a == 0).any() and (a == 1).any() and ((a > 0) & (a < 1)).any()


def test_finalized_model_equals_the_gated_model_and_loads_with_plain_transformers(tmp_path):
    from transformers import AutoModelForCausalLM

    teacher = tiny_model("llama").eval()
    student = copy.deepcopy(teacher)
    gates = attach_gates(student, L0Config(target=0.5, lr=0.2))
    result = distill(student, teacher, _records(student), TrainConfig(out_dir=str(tmp_path / "run"), max_steps=6,
                                                                      batch_size=8, lr=1e-3, progress=False),
                     DistillConfig(hidden_weight=1.0, hidden_pairs=block_pairs(student, teacher)), gates=gates,
                     collate_fn=_collate)
    assert result.step == 6 and int(gates.draws) == 6
    with pytest.raises(ConfigError, match="already has ffn gates"):
        attach_gates(student)
    x = tiny_inputs(student)
    student.eval()
    with torch.no_grad():
        gated = student(**x).logits
    report = finalize_gates(student)
    d_ff = teacher.config.intermediate_size
    assert report["plain_config"] and report["ffn_sizes"] == {"blocks": [d_ff // 2] * 2}
    assert report["params_after"] < report["params_before"]
    with torch.no_grad():
        torch.testing.assert_close(student(**x).logits, gated, rtol=1e-5, atol=1e-5)
    student.save_pretrained(tmp_path / "pruned")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned").eval()
    assert plain.config.intermediate_size == d_ff // 2 and not hasattr(plain.config, "plmkit_ffn_sizes")
    with torch.no_grad():
        torch.testing.assert_close(plain(**x).logits, gated, rtol=1e-5, atol=1e-5)
    site = f"{arch.layers(plain)[0].name}.ffn.neurons"
    with hooks.capture(plain, [site]) as cap, torch.no_grad():
        plain(**x)
    assert cap[site].shape[-1] == d_ff // 2


def test_gates_at_zero_and_one_equal_removing_those_neurons():
    model = tiny_model("bert").eval()
    ref_model = copy.deepcopy(model)
    gates = attach_gates(model, L0Config(target=0.5))
    g = torch.Generator().manual_seed(0)
    closed = []
    with torch.no_grad():
        for la in gates.log_alpha:  # half the gates wide open, half shut, at random positions
            perm = torch.randperm(la.numel(), generator=g)
            la[perm[: la.numel() // 2]] = 20.0
            la[perm[la.numel() // 2:]] = -20.0
            closed.append(la < 0)
    x = tiny_inputs(model)
    with torch.no_grad():
        out = model(**x)
        gated = out.last_hidden_state if hasattr(out, "last_hidden_state") else out.logits
    masks = {f"{layer.name}.ffn.neurons": c for layer, c in zip(arch.layers(ref_model), closed)}
    with hooks.intervene(ref_model, {s: (lambda a, c=c: a.masked_fill(c.to(a.device), 0)) for s, c in masks.items()}):
        with torch.no_grad():
            out = ref_model(**x)
            zeroed = out.last_hidden_state if hasattr(out, "last_hidden_state") else out.logits
    torch.testing.assert_close(gated, zeroed, rtol=1e-5, atol=1e-5)
    finalize_gates(model)
    with torch.no_grad():
        out = model(**x)
        pruned = out.last_hidden_state if hasattr(out, "last_hidden_state") else out.logits
    torch.testing.assert_close(pruned, zeroed, rtol=1e-5, atol=1e-5)


def test_detach_restores_the_model_and_wrapped_or_quantized_ffns_are_refused():
    from plmkit.compress.quant import quantize_int8

    model = tiny_model("llama").eval()
    x = tiny_inputs(model)
    with torch.no_grad():
        ref = model(**x).logits
    attach_gates(model, L0Config(target=0.9, init_keep=0.01))
    with torch.no_grad():
        assert not torch.equal(model(**x).logits, ref)
    detach_gates(model)
    with torch.no_grad():
        assert torch.equal(model(**x).logits, ref)
    with pytest.raises(ConfigError, match="no ffn gates"):
        detach_gates(model)
    quantize_int8(model)
    with pytest.raises(ConfigError, match="dense float weight"):
        attach_gates(model)


def test_distill_refuses_a_shared_teacher_and_other_vocabularies(tmp_path):
    model = tiny_model("llama")
    with pytest.raises(ConfigError, match="separate"):
        distill(model, model, _records(model), TrainConfig(out_dir=str(tmp_path), max_steps=1, progress=False))
    with pytest.raises(ConfigError, match="hidden_pairs"):
        DistillConfig(hidden_weight=1.0)


def _open_and_shut(gates, shut):
    """Gates wide open except the units ``shut[site]`` (indices), which are shut."""
    with torch.no_grad():
        for la, idx in zip(gates.log_alpha, shut):
            la.fill_(20.0)
            la[idx] = -20.0


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_kv_group_gates_at_zero_and_one_equal_the_smaller_plain_model(tmp_path, family):
    from transformers import AutoModelForCausalLM

    model = tiny_model(family).eval()
    geo = arch.attention(model)
    gates = attach_gates(model, L0Config(unit="heads", target=0.5))
    assert gates.sites == [f"{layer.name}.attn.kv_heads" for layer in arch.layers(model)]
    _open_and_shut(gates, [[0], [1]])  # layer 0 loses KV group 0 (query heads 0-1), layer 1 group 1
    x = tiny_inputs(model)
    with torch.no_grad():
        gated = model(**x).logits
    report = finalize_gates(model, "heads")
    assert report["n_kv_heads"] == geo.n_kv_heads - 1 and report["n_heads"] == geo.n_heads - geo.group
    assert report["params_after"] < report["params_before"]
    with torch.no_grad():
        torch.testing.assert_close(model(**x).logits, gated, rtol=1e-5, atol=1e-5)
    model.save_pretrained(tmp_path / "pruned")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned").eval()
    assert plain.config.num_key_value_heads == geo.n_kv_heads - 1 and plain.config.head_dim == geo.head_dim
    with torch.no_grad():
        torch.testing.assert_close(plain(**x).logits, gated, rtol=1e-5, atol=1e-5)
    site = f"{arch.layers(plain)[1].name}.attn.o"
    with hooks.capture(plain, [site]) as cap, torch.no_grad():
        plain(**x)
    assert cap[site].shape[-1] == plain.config.hidden_size


def test_head_gates_are_refused_where_the_config_cannot_describe_fewer_heads():
    model = tiny_model("bert").eval()
    attach_gates(model, L0Config(unit="heads", target=0.5))
    with pytest.raises(ConfigError, match="prune FFN neurons or whole layers"):
        finalize_gates(model, "heads")
    with pytest.raises(ConfigError, match="uniform=true"):
        L0Config(unit="heads", uniform=False)
    with pytest.raises(ConfigError, match="choose one of"):
        L0Config(unit="rows")


@pytest.mark.parametrize("family", ["llama", "gemma3", "bert"])
def test_layer_gates_remove_whole_blocks_into_a_shallower_plain_model(tmp_path, family):
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    model = tiny_model(family, num_hidden_layers=4).eval()
    types = list(getattr(model.config, "layer_types", None) or [])
    ref = copy.deepcopy(model)
    gates = attach_gates(model, L0Config(unit="layers", target=0.5))
    _open_and_shut(gates, [[0, 2]])
    x = tiny_inputs(model)

    def out(m):
        with torch.no_grad():
            o = m(**x)
        return o.logits if hasattr(o, "logits") else o.last_hidden_state

    gated = out(model)
    assert not torch.allclose(out(ref), gated)  # the shut blocks did change the output
    report = finalize_gates(model, "layers")
    assert report["kept_layers"] == [1, 3] and report["layers_after"] == 2
    torch.testing.assert_close(out(model), gated, rtol=1e-5, atol=1e-5)
    model.save_pretrained(tmp_path / "pruned")
    loader = AutoModelForMaskedLM if family == "bert" else AutoModelForCausalLM
    plain = loader.from_pretrained(tmp_path / "pruned").eval()
    assert plain.config.num_hidden_layers == 2 and len(arch.layers(plain)) == 2
    if family == "gemma3":
        assert plain.config.layer_types == [types[1], types[3]]
    torch.testing.assert_close(out(plain), gated, rtol=1e-5, atol=1e-5)
    if family != "bert":  # the KV cache indexes the renumbered layers
        ids = x["input_ids"][:1, :4]
        with torch.no_grad():
            cached = plain.generate(ids, max_new_tokens=4, do_sample=False, use_cache=True)
            uncached = plain.generate(ids, max_new_tokens=4, do_sample=False, use_cache=False)
        assert torch.equal(cached, uncached)


def test_head_and_layer_gates_train_through_distillation(tmp_path):
    teacher = tiny_model("llama", num_hidden_layers=4).eval()
    student = copy.deepcopy(teacher)
    gates = attach_gates(student, L0Config(unit="heads", target=0.5, lr=0.2))
    layer_gates = attach_gates(student, L0Config(unit="layers", target=0.5, lr=0.2))
    start = [la.detach().clone() for la in gates.log_alpha]
    distill(student, teacher, _records(student), TrainConfig(out_dir=str(tmp_path), max_steps=4, batch_size=8,
                                                             lr=1e-3, progress=False), gates=gates,
            collate_fn=_collate)
    assert int(gates.draws) == 4 and int(layer_gates.draws) == 4
    assert any(not torch.equal(a, b.detach()) for a, b in zip(start, gates.log_alpha))
    student.eval()
    finalize_gates(student, "layers")
    finalize_gates(student, "heads")
    assert student.config.num_hidden_layers == 2 and student.config.num_key_value_heads == 1
