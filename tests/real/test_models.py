import pytest
import torch

from plmkit import arch, load_model
from plmkit.analysis.sparsity import SparsityConfig, ffn_sparsity


@pytest.fixture(scope="module")
def smollm2():
    return load_model("smollm2")


@pytest.fixture(scope="module")
def minilm():
    return load_model("minilm", task="base")


def test_smollm2_knows_the_capital_of_france(smollm2):
    model, tok = smollm2
    enc = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=4, do_sample=False)
    assert "Paris" in tok.decode(out[0, enc["input_ids"].shape[1]:])


def test_smollm2_spec(smollm2):
    model, _ = smollm2
    layers = arch.layers(model)
    assert len(layers) == 30 and layers[0].d_ff == 1536 and arch.ffn_kind(model) == "gated-silu"


def _embed(model, tok, words):
    enc = tok(words, return_tensors="pt", padding=True)
    with torch.no_grad():
        h = model(**enc).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).float()
    return torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)


def test_minilm_ranks_feline_closer_to_cat_than_stock(minilm):
    model, tok = minilm
    cat, feline, stock = _embed(model, tok, ["cat", "feline", "stock"])
    assert cat @ feline > cat @ stock + 0.2


def test_sparsity_statistics_are_consistent_on_minilm(minilm):
    model, tok = minilm
    texts = ["The cat sat on the mat.", "Stocks fell sharply on Monday after the report.", "A short one."]
    layers = ffn_sparsity(model, tok, texts, SparsityConfig(batch_size=2), progress=False)
    n_tokens = int(tok(texts, padding=True, return_tensors="pt")["attention_mask"].sum())
    assert len(layers) == 6 and all(l.n_tokens == n_tokens for l in layers)  # padding excluded
    for l in layers:
        a = [l.active[f"active@{t:g}"]["mean"] for t in (0.0, 0.01, 0.05, 0.1)]
        assert a == sorted(a, reverse=True) and 0 < a[-1] < 1
        assert 0.1 < l.top_mass["top10%"] < l.top_mass["top20%"] < l.top_mass["top30%"] < 1
        assert sum(l.hist) == n_tokens
