import pytest
import torch

from plmkit.compress.token_merging import (
    TokenMergingConfig,
    bipartite_merge,
    choose_r,
    merged_forward,
    tokens_after,
)
from plmkit.errors import ConfigError
from plmkit.testing import TINY_VOCAB, tiny_config, tiny_model

LAYERS = 4


def _classifier(name="bert", attn="sdpa", seed=0):
    from transformers import AutoModelForSequenceClassification

    # wider initial weights than the default 0.02, so that merging visibly moves the logits
    config = tiny_config(name, num_labels=3, num_hidden_layers=LAYERS, initializer_range=0.2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoModelForSequenceClassification.from_config(config, attn_implementation=attn).eval()


@pytest.fixture(scope="module")
def bert():
    return _classifier()


def _batch(lengths, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, TINY_VOCAB, (len(lengths), n), generator=g)
    mask = (torch.arange(n)[None] < torch.tensor(lengths)[:, None]).long()
    return ids, mask


def _plain(model, ids, mask):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


def _merged(model, ids, mask, **cfg):
    with torch.no_grad():
        return merged_forward(model, ids, mask, TokenMergingConfig(**cfg), return_trace=True)


@pytest.mark.parametrize("name,attn", [("bert", "sdpa"), ("bert", "eager"), ("roberta", "sdpa"), ("electra", "sdpa")])
def test_r0_equals_the_ordinary_forward_with_padding(name, attn):
    model = _classifier(name, attn)
    ids, mask = _batch([12, 7, 3], 12)
    logits, trace = _merged(model, ids, mask, r=0)
    torch.testing.assert_close(logits, _plain(model, ids, mask), rtol=1e-5, atol=1e-6)
    assert trace.tokens == [12] * LAYERS
    # the padding really is masked: reading it as real tokens changes the result
    assert not torch.allclose(_plain(model, ids, torch.ones_like(mask))[1:], logits[1:], atol=1e-3)


def test_r0_without_a_mask_equals_the_ordinary_forward(bert):
    ids, _ = _batch([9, 9], 9)
    with torch.no_grad():
        out = merged_forward(bert, ids, None, TokenMergingConfig(r=0))
    torch.testing.assert_close(out, _plain(bert, ids, None), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("r,start", [(3, 0), (5, 1), (100, 0)])
def test_merging_follows_the_schedule_and_keeps_every_token_counted(bert, r, start):
    lengths = [20, 13, 6]
    ids, mask = _batch(lengths, 20)
    logits, trace = _merged(bert, ids, mask, r=r, start_layer=start)
    cfg = TokenMergingConfig(r=r, start_layer=start)
    assert logits.shape == (3, 3) and torch.isfinite(logits).all()
    assert trace.tokens == tokens_after(20, LAYERS, cfg)
    assert trace.tokens[-1] < 20 and trace.tokens[: start + 1] == [20] * (start + 1)
    assert trace.sizes.shape == (3, trace.tokens[-1])  # no merge after the last block
    assert trace.sizes.sum(dim=1).tolist() == lengths  # sizes add up to the real tokens; padding counts 0
    assert not torch.allclose(logits, _plain(bert, ids, mask), atol=1e-3)


def test_the_first_token_is_never_merged_unless_unprotected(bert):
    ids, mask = _batch([16, 16, 16, 16], 16, seed=3)
    _, kept = _merged(bert, ids, mask, r=8)
    assert kept.first_size.tolist() == [1, 1, 1, 1] and kept.sizes[:, 0].tolist() == [1, 1, 1, 1]
    logits, free = _merged(bert, ids, mask, r=8, protect_first=False)
    assert (free.first_size > 1).any()  # the protection is what kept it single
    assert free.tokens[-1] < kept.tokens[-1]


def test_batched_merging_equals_each_sequence_run_alone(bert):
    ids, mask = _batch([15, 9, 4], 15, seed=1)
    logits, _ = _merged(bert, ids, mask, r=3)
    for i in range(3):
        alone, _ = _merged(bert, ids[i : i + 1], mask[i : i + 1], r=3)
        torch.testing.assert_close(alone[0], logits[i], rtol=1e-5, atol=1e-6)


def test_padding_content_never_changes_a_result(bert):
    ids, mask = _batch([14, 8, 5], 14, seed=2)
    junk = torch.randint(3, TINY_VOCAB, ids.shape, generator=torch.Generator().manual_seed(9))
    other = torch.where(mask.bool(), ids, junk)
    assert not torch.equal(other, ids)
    a, _ = _merged(bert, ids, mask, r=3)
    b, _ = _merged(bert, other, mask, r=3)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_padding_merges_away_before_any_real_token(bert):
    """With plenty of padding, r only removes pads: the result is the unpadded sequence without merging."""
    ids, mask = _batch([6], 24, seed=4)
    logits, trace = _merged(bert, ids, mask, r=2)
    assert trace.tokens == [24, 22, 20, 18]
    assert (trace.sizes > 0).sum().item() == 6 and trace.sizes.max().item() == 1
    torch.testing.assert_close(logits, _plain(bert, ids[:, :6], mask[:, :6]), rtol=1e-5, atol=1e-6)
    merged_real, _ = _merged(bert, ids[:, :6], mask[:, :6], r=2)  # without padding the same r merges real tokens
    assert not torch.allclose(merged_real, logits, atol=1e-3)


def test_bipartite_merge_averages_the_most_similar_pair_by_size():
    e = torch.eye(6)
    x = torch.stack([e[0], e[1], e[2] * 2, e[2] + 0.01 * e[3], e[4], e[5]])[None]  # tokens 2 (A) and 3 (B) alike
    size = torch.tensor([[1, 1, 3, 1, 1, 1]])
    first = torch.tensor([[1, 0, 0, 0, 0, 0]])
    out, new_size, new_first = bipartite_merge(x, size, first, r=1)
    assert new_size.tolist() == [[1, 1, 1, 4, 1]]  # order: unmerged A (0, 4), then B (1, 3, 5)
    torch.testing.assert_close(out[0, 3], (3 * x[0, 2] + x[0, 3]) / 4)
    torch.testing.assert_close(out[0, [0, 1, 2, 4]], x[0, [0, 4, 1, 5]])
    assert new_first.tolist() == [[1, 0, 0, 0, 0]]


def test_bipartite_merge_conserves_mass_and_removes_pads_first():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 11, 8, generator=g)
    size = torch.tensor([[1] * 11, [2] * 7 + [0] * 4])
    first = torch.zeros_like(size)
    first[:, 0] = 1
    out, new_size, _ = bipartite_merge(x, size, first, r=2)
    assert out.shape == (2, 9, 8) and new_size.sum(1).tolist() == [11, 14]
    torch.testing.assert_close((out * new_size[..., None]).sum(1), (x * size[..., None]).sum(1))
    assert (new_size[1] == 0).sum().item() == 2 and (new_size[1] == 2).sum().item() == 7  # two of the pads went



def test_a_real_token_never_merges_into_padding():
    x = torch.eye(6)[None].clone()
    x[0, 5] = x[0, 4]  # the padding (B) looks exactly like real token 4 (A)
    size = torch.tensor([[1, 1, 1, 1, 1, 0]])
    first = torch.tensor([[1, 0, 0, 0, 0, 0]])
    _, new_size, _ = bipartite_merge(x, size, first, r=1)
    assert new_size.sum().item() == 5 and (new_size == 0).sum().item() == 1  # the pad is still there, still empty

def test_tokens_after_and_choose_r():
    assert tokens_after(10, 4, TokenMergingConfig(r=3)) == [10, 7, 4, 3]
    assert tokens_after(10, 4, TokenMergingConfig(r=3, start_layer=2)) == [10, 10, 10, 7]
    assert tokens_after(10, 3, TokenMergingConfig(r=100, protect_first=False)) == [10, 5, 3]
    for keep in (0.9, 0.6, 0.5):
        r = choose_r(128, 12, keep)
        mean = lambda r: sum(tokens_after(128, 12, TokenMergingConfig(r=r))) / 12  # noqa: E731
        assert mean(r) <= keep * 128 < mean(r - 1)
    assert choose_r(128, 12, 1.0) == 0
    with pytest.raises(ConfigError, match="out of reach"):
        choose_r(128, 2, 0.3)
    with pytest.raises(ConfigError):
        choose_r(128, 12, 0.0)


@pytest.mark.parametrize("kwargs", [dict(r=-1), dict(r=1.5), dict(r=True), dict(r=2, start_layer=-1),
                                    dict(r=2, protect_first="yes"), dict(r=2, proportional_attention=1)])
def test_config_validation(kwargs):
    with pytest.raises(ConfigError):
        TokenMergingConfig(**kwargs)


def test_config_round_trips_and_rejects_unknown_keys():
    cfg = TokenMergingConfig(r=4, start_layer=2, protect_first=False)
    assert TokenMergingConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ConfigError, match="unknown"):
        TokenMergingConfig.from_dict({"r": 1, "ratio": 0.5})


def test_unsupported_models_are_refused():
    ids, mask = _batch([5], 5)
    with pytest.raises(ConfigError, match="ForSequenceClassification"):
        merged_forward(tiny_model("bert", head="base"), ids, mask, TokenMergingConfig(r=1))
    with pytest.raises(ConfigError, match="attn_implementation"):
        model = _classifier()
        model.config._attn_implementation = "flash_attention_2"
        merged_forward(model, ids, mask, TokenMergingConfig(r=1))


def test_proportional_attention_makes_a_merged_token_weigh_as_its_copies(bert):
    """A block sees a token of size 3 (with log 3 on its key logits) as it would see three identical copies."""
    from plmkit.arch import layers
    from plmkit.compress.token_merging import _attention_bias

    block = layers(bert)[0].block
    h = torch.randn(1, 5, 32, generator=torch.Generator().manual_seed(5))
    copies = torch.cat([h, h[:, 2:3], h[:, 2:3]], dim=1)
    with torch.no_grad():
        want = block(copies, _attention_bias(torch.ones(1, 7, dtype=torch.long), h.dtype, True))[:, :5]
        got = block(h, _attention_bias(torch.tensor([[1, 1, 3, 1, 1]]), h.dtype, True))
        plain = block(h, _attention_bias(torch.tensor([[1, 1, 3, 1, 1]]), h.dtype, False))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(plain, want, atol=1e-3)
    ids, mask = _batch([16, 11], 16)
    with_log, _ = _merged(bert, ids, mask, r=4)
    without, _ = _merged(bert, ids, mask, r=4, proportional_attention=False)
    assert not torch.allclose(with_log, without, atol=1e-3)
