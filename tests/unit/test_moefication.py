import copy

import pytest
import torch

from plmkit import arch
from plmkit.compress.moefication import (
    MoEficationConfig,
    MoEFFN,
    balanced_kmeans,
    coactivation_split,
    load_moefication,
    moe_layers,
    moefy,
    relufy,
    save_moefication,
    set_mode,
    set_selection,
)
from plmkit.compress.moefication.relu import magnitude_mask, remove_magnitude_mask
from plmkit.errors import ConfigError
from plmkit.testing import TINY_CONFIGS, tiny_inputs, tiny_model

FAMILIES = sorted(TINY_CONFIGS)
E = 8  # tiny d_ff = 48 -> experts of 6 neurons


def _out(model, inputs):
    with torch.no_grad():
        out = model(**inputs)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def _calibration(model, n=6):
    return [tiny_inputs(model, batch=4, length=12, seed=s) for s in range(n)]


def _moefied(name, n_batches=6, seed=0, **cfg):
    model = tiny_model(name, seed=1).eval()
    ref = copy.deepcopy(model)
    config = MoEficationConfig(**{"experts": E, "router_steps": 30, "calibration_tokens": 200, **cfg})
    report = moefy(model, config, calibration=_calibration(model, n_batches), progress=False, seed=seed)
    return model, ref, report


@pytest.mark.parametrize("name", FAMILIES)
def test_all_experts_equal_the_dense_model(name):
    model, ref, _ = _moefied(name)
    inputs = tiny_inputs(model)
    assert len(list(moe_layers(model))) == len(arch.layers(ref))
    set_selection(model, top_k=E)
    torch.testing.assert_close(_out(model, inputs), _out(ref, inputs), rtol=1e-4, atol=1e-5)
    set_mode(model, "dense")
    torch.testing.assert_close(_out(model, inputs), _out(ref, inputs), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", FAMILIES)
def test_sparse_path_equals_the_masked_oracle(name):
    model, ref, _ = _moefied(name, active=0.25)
    inputs = tiny_inputs(model)
    sparse = _out(model, inputs)
    set_mode(model, "masked")
    masked = _out(model, inputs)
    torch.testing.assert_close(sparse, masked, rtol=1e-4, atol=1e-5)
    assert (sparse - _out(ref, inputs)).abs().max() > 1e-3  # 2 of 8 experts is not the dense model


@pytest.mark.parametrize("selection", [{"top_k": 3}, {"mass": 0.5}])
def test_single_token_path_equals_the_masked_oracle(selection):
    torch.manual_seed(0)
    model, _, _ = _moefied("llama")
    set_selection(model, **selection)
    layer = next(moe_layers(model))
    for _ in range(5):
        x = torch.randn(1, 1, layer.w_in.shape[1])
        layer.set_mode("sparse")
        y = layer(x)
        layer.set_mode("masked")
        torch.testing.assert_close(y, layer(x), rtol=1e-5, atol=1e-6)
    layer.set_mode("sparse")


def test_runs_merge_adjacent_experts():
    from plmkit.compress.moefication.layer import _runs

    assert _runs([0, 1, 2, 5, 7, 8]) == [(0, 3), (5, 6), (7, 9)]
    assert _runs([4]) == [(4, 5)]


def test_balanced_kmeans_gives_equal_sizes_and_finds_clusters():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 16, generator=g) * 5
    x = centres.repeat_interleave(12, 0) + 0.1 * torch.randn(48, 16, generator=g)
    labels = balanced_kmeans(x, 4, seed=0)
    assert torch.bincount(labels).tolist() == [12, 12, 12, 12]
    for c in range(4):  # each true cluster lands in one expert
        assert labels[c * 12:(c + 1) * 12].unique().numel() == 1
    with pytest.raises(ConfigError, match="divid"):
        balanced_kmeans(x, 5)


def test_coactivation_split_groups_neurons_that_fire_together():
    g = torch.Generator().manual_seed(0)
    groups = torch.arange(48) % 4  # neurons 0,4,8,... fire together
    token_group = torch.randint(0, 4, (400,), generator=g)
    acts = (groups[None, :] == token_group[:, None]).float() + 0.05 * torch.rand(400, 48, generator=g)
    perm = coactivation_split(acts, 4, threshold=0.5)
    assert sorted(perm.tolist()) == list(range(48))
    for e in range(4):
        assert groups[perm[e * 12:(e + 1) * 12]].unique().numel() == 1


@pytest.mark.parametrize("split,router", [("kmeans", "mlp"), ("coactivation", "similarity")])
def test_save_load_round_trip(tmp_path, split, router):
    model, ref, _ = _moefied("llama", split=split, router=router, active=0.5)
    inputs = tiny_inputs(model)
    expected = _out(model, inputs)
    save_moefication(model, tmp_path / "moe")
    assert sorted(p.name for p in (tmp_path / "moe").iterdir()) == ["moefication.json", "moefication.safetensors"]
    load_moefication(ref, tmp_path / "moe")
    torch.testing.assert_close(_out(ref, inputs), expected)


def test_load_rejects_a_missing_or_foreign_layout(tmp_path):
    model = tiny_model("llama")
    with pytest.raises(Exception, match="moefy --out"):
        load_moefication(model, tmp_path)
    bert, _, _ = _moefied("bert")
    save_moefication(bert, tmp_path / "bert-moe")
    with pytest.raises(ConfigError, match="model_type 'bert'"):
        load_moefication(model, tmp_path / "bert-moe")


def test_trained_router_beats_a_random_router():
    # 1,080 training tokens: across seeds 0-4 the router's recall is 0.33-0.35 against 0.25 for random
    model, _, report = _moefied("llama", n_batches=25, active=0.25, router_steps=200, calibration_tokens=1200)
    assert report.mean("router_recall") > report.mean("random_recall") + 0.05
    assert report.mean("router_recall") <= report.mean("oracle_recall") + 1e-6
    assert abs(report.mean("random_recall") - 0.25) < 0.1


@pytest.mark.parametrize("name", ["bert", "llama"])
def test_moefy_is_deterministic_under_a_seed(name):
    torch.manual_seed(123)  # the global RNG differs between the two runs: only moefy's seed may matter
    a, _, ra = _moefied(name, router="mlp", split="coactivation")
    torch.rand(1000)
    b, _, rb = _moefied(name, router="mlp", split="coactivation")
    c, _, rc = _moefied(name, router="mlp", split="coactivation", seed=1)
    inputs = tiny_inputs(a)
    torch.testing.assert_close(_out(a, inputs), _out(b, inputs), rtol=0, atol=0)
    assert ra.mean("router_recall") == rb.mean("router_recall")
    assert not torch.equal(_out(a, inputs), _out(c, inputs))  # and the seed is used
    wa = [m.router.w2 for m in moe_layers(a)]
    wc = [m.router.w2 for m in moe_layers(c)]
    assert not all(torch.equal(x, y) for x, y in zip(wa, wc))


def test_tiny_model_leaves_the_global_rng_alone():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    tiny_model("bert", seed=0)
    torch.testing.assert_close(torch.rand(3), expected, rtol=0, atol=0)
    torch.testing.assert_close(tiny_model("gpt2", seed=3).lm_head.weight, tiny_model("gpt2", seed=3).lm_head.weight)


def test_config_validates_and_round_trips(tmp_path):
    cfg = MoEficationConfig(experts=16, mass=0.8, active=None, split="coactivation")
    assert MoEficationConfig.from_json(cfg.to_json()) == cfg
    cfg.to_json(tmp_path / "c.json")
    assert MoEficationConfig.from_json(tmp_path / "c.json") == cfg
    assert MoEficationConfig(experts=16, active=0.25).k == 4
    with pytest.raises(ConfigError, match="exactly one"):
        MoEficationConfig(top_k=2)
    with pytest.raises(ConfigError, match="split"):
        MoEficationConfig(split="metis")
    model = tiny_model("llama")
    with pytest.raises(ConfigError, match="divisor"):
        moefy(model, MoEficationConfig(experts=5), calibration=_calibration(model))
    with pytest.raises(ConfigError, match="calibration"):
        moefy(model, MoEficationConfig(experts=8))


def test_relufy_makes_exact_zeros_and_magnitude_mask_keeps_the_asked_fraction():
    from plmkit import hooks

    model = tiny_model("llama").eval()
    inputs = tiny_inputs(model)
    relufy(model)
    site = "blocks.0.ffn.neurons"
    with torch.no_grad(), hooks.capture(model, site) as acts:
        model(**inputs)
    assert (acts[site] == 0).float().mean() > 0.3
    model = tiny_model("bert").eval()
    before = _out(model, inputs)
    ts = magnitude_mask(model, 0.3, _calibration(model))
    assert len(ts) == 2 and all(t > 0 for t in ts)
    with torch.no_grad(), hooks.capture(model, site) as acts:
        model(**inputs)
    frac = (acts[site] != 0).float().mean()
    assert 0.15 < frac < 0.45
    remove_magnitude_mask(model)
    torch.testing.assert_close(_out(model, inputs), before)


def test_moe_layer_is_a_plain_module():
    model, _, _ = _moefied("gpt2")
    layer = next(moe_layers(model))
    assert isinstance(layer, MoEFFN) and "experts=8x6" in repr(layer)
    with pytest.raises(ConfigError):
        layer.set_mode("fast")
    with pytest.raises(ConfigError, match="already"):
        moefy(model, MoEficationConfig(experts=E), calibration=_calibration(model))


def test_coselection_order_puts_experts_chosen_together_side_by_side():
    from plmkit.compress.moefication.router import coselection_order

    sel = torch.zeros(60, 8, dtype=torch.bool)
    sel[:20, [0, 5]] = True
    sel[20:40, [2, 7]] = True
    sel[40:, [1, 6]] = True
    order = coselection_order(sel).tolist()
    assert sorted(order) == list(range(8))
    pos = {e: i for i, e in enumerate(order)}
    for a, b in ((0, 5), (2, 7), (1, 6)):
        assert abs(pos[a] - pos[b]) == 1


def test_reordering_experts_keeps_the_model_exact():
    ordered, ref, _ = _moefied("llama", order_experts=True)
    plain, _, _ = _moefied("llama", order_experts=False)
    inputs = tiny_inputs(ordered)
    set_selection(ordered, top_k=E)
    torch.testing.assert_close(_out(ordered, inputs), _out(ref, inputs), rtol=1e-4, atol=1e-5)
    assert not torch.equal(next(moe_layers(ordered)).perm, next(moe_layers(plain)).perm)


@pytest.mark.parametrize("name", ["llama", "gpt2", "bert"])
def test_write_back_puts_changed_experts_into_the_original_ffn(name):
    from plmkit.compress.moefication import unmoefy

    model, _, _ = _moefied(name, active=0.5)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in moe_layers(model):  # experts change as training would change them
            for p in (m.w_in, m.b_in, m.w_out, m.b_out):
                if p is not None:
                    p.add_(0.05 * torch.randn(p.shape, generator=g))
            m.write_back()
    inputs = tiny_inputs(model)
    set_mode(model, "dense")
    expected = _out(model, inputs)
    unmoefy(model)
    torch.testing.assert_close(_out(model, inputs), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_train_moe_trains_only_experts_and_routers_through_the_sparse_path(name, tmp_path):
    from plmkit.compress.moefication import train_moe
    from plmkit.testing import tiny_tokenizer
    from plmkit.train import TrainConfig

    model, ref, _ = _moefied(name, active=0.5)
    tok = tiny_tokenizer(chat=False)
    inputs = tiny_inputs(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    moe_keys = {k for k in before if any(s in k for s in (".w_in", ".w_out", ".b_in", ".b_out", ".router."))}
    texts = ["abcabcabc abcabc", "the cat sat", "abc cat abc sat"] * 8
    result = train_moe(model, tok, texts, TrainConfig(out_dir=str(tmp_path / "run"), max_steps=12, batch_size=4,
                                                      lr=3e-3, resume=False, progress=False, log_every=4))
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(".router." in k for k in changed) and any(".w_in" in k for k in changed)
    base_changed = changed - moe_keys  # the original FFN got the trained experts written back, nothing else
    assert base_changed and all(".mlp." in k for k in base_changed)
    assert not any("attn" in k or "attention" in k or "embed" in k or "wte" in k for k in changed)
    assert result.losses[-1] < result.losses[0]
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads  # restored
    out = _out(model, inputs)
    set_mode(model, "masked")  # the trained sparse path still equals its oracle
    torch.testing.assert_close(_out(model, inputs), out, rtol=1e-4, atol=1e-5)
    set_mode(model, "sparse")
    save_moefication(model, tmp_path / "moe")
    load_moefication(ref, tmp_path / "moe")
    torch.testing.assert_close(_out(ref, inputs), out, rtol=1e-5, atol=1e-6)


def test_straight_through_router_weight_keeps_outputs_and_carries_gradient():
    model, _, _ = _moefied("llama", active=0.5)
    layer = next(moe_layers(model))
    x = torch.randn(10, layer.w_in.shape[1], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = layer(x)
    for p in layer.router.parameters():
        p.requires_grad = True
    out = layer(x)
    torch.testing.assert_close(out, plain)
    out.pow(2).sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.router.parameters())


def test_recipe_trains_a_saved_moefication_and_scores_it_before_and_after(tmp_path):
    from plmkit.data import token_batches
    from plmkit.eval import perplexity
    from plmkit.reproduce.moefication import MoETrainSettings, train_selected
    from plmkit.testing import tiny_tokenizer

    model, ref, _ = _moefied("llama", active=0.5)
    save_moefication(model, tmp_path / "moe")
    tok = tiny_tokenizer(chat=False)
    texts = ["abcabc abc", "the cat sat on the mat", "abc the cat"] * 6
    evaluate = {k: (lambda m: {"ppl": perplexity(m, token_batches(tok, texts[:3], 3, 16)), "capital_acc": 0.0})
                for k in ("validation", "test")}
    got = train_selected(ref, tok, tmp_path / "moe", 0.5, texts, MoETrainSettings(steps=6, batch_size=4, lr=3e-3),
                         evaluate, tmp_path / "run")
    assert got["steps"] == 6 and got["tokens"] > 0 and got["seconds"] > 0
    assert got["after"]["test"]["ppl"] < got["before"]["test"]["ppl"]  # trained on the texts it is scored on
    assert not list(moe_layers(ref))  # the base model is left alone


def test_recipe_training_stopped_after_its_last_checkpoint_continues_from_it(tmp_path, monkeypatch):
    from plmkit.data import token_batches
    from plmkit.eval import perplexity
    from plmkit.reproduce import moefication as recipe
    from plmkit.testing import tiny_tokenizer

    monkeypatch.setattr(recipe, "CHECKPOINT_EVERY", 3)
    model, ref, _ = _moefied("llama", active=0.5)
    save_moefication(model, tmp_path / "moe")
    tok = tiny_tokenizer(chat=False)
    texts = ["abcabc abc", "the cat sat on the mat", "abc the cat"] * 6
    calls = []

    def scores(m):
        calls.append(1)
        if len(calls) == 4 and stop:  # the scoring after training: the process "stops" here
            raise KeyboardInterrupt
        return {"ppl": perplexity(m, token_batches(tok, texts[:3], 3, 16)), "capital_acc": 0.0}

    evaluate = {"validation": scores, "test": scores}
    settings = recipe.MoETrainSettings(steps=6, batch_size=4, lr=3e-3)
    stop = True
    with pytest.raises(KeyboardInterrupt):
        recipe.train_selected(ref, tok, tmp_path / "moe", 0.5, texts, settings, evaluate, tmp_path / "run")
    stop = False
    resumed = recipe.train_selected(ref, tok, tmp_path / "moe", 0.5, texts, settings, evaluate, tmp_path / "run")
    whole = recipe.train_selected(ref, tok, tmp_path / "moe", 0.5, texts, settings, evaluate, tmp_path / "other")
    assert resumed["resumed_from"] == 6 and whole["resumed_from"] == 0  # the trained experts came from step 6
    assert resumed["after"] == whole["after"] and resumed["after"]["test"]["ppl"] < resumed["before"]["test"]["ppl"]
    assert resumed["tokens"] == whole["tokens"] and resumed["seconds"] > 0  # the cost counted before the stop


def test_cli_moefy_trains_the_experts_when_asked(tmp_path, capsys):
    import json

    from plmkit.cli import main
    from plmkit.testing import tiny_tokenizer

    folder = tmp_path / "tiny"
    tiny_model("llama", seed=1).save_pretrained(folder)
    tiny_tokenizer(chat=False).save_pretrained(folder)
    main(["moefy", "--model", str(folder), "--experts", str(E), "--active", "0.5", "--router-steps", "5",
          "--calibration-tokens", "64", "--calibration-chars", "3000", "--train-steps", "2",
          "--train-batch-size", "2", "--no-progress", "--out", str(tmp_path / "moe")])
    assert "trained experts and routers 2 steps" in capsys.readouterr().out
    meta = json.loads((tmp_path / "moe" / "moefication.json").read_text())
    assert meta["trained_experts"] is True
    with pytest.raises(ConfigError, match="the base model it was made from"):  # another size is refused
        load_moefication(tiny_model("llama", seed=1, intermediate_size=96), tmp_path / "moe")
