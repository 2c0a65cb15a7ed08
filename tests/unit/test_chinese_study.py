"""The tokenizer-robustness study end to end on a tiny budget, and the measurements it rests on."""
import pytest

from plmkit.chinese.noise import homophone_typos
from plmkit.chinese.readin import load_readin
from plmkit.chinese.study import StudyConfig, parse_variant, run_study, summarize
from plmkit.chinese.subchar import train_tokenizer
from plmkit.chinese.codes import code_table
from plmkit.data.chinese import tokenizer_corpus
from plmkit.errors import ConfigError
from plmkit.eval.tokenization import perturbation_effect, throughput, tokens_per_char


@pytest.fixture(scope="module")
def corpus():
    return tokenizer_corpus(seed=0, train_sentences=300, test_sentences=50)


def test_corpus_splits_are_disjoint_and_seeded(corpus):
    assert len(corpus["train"]) == 300 and len(corpus["news"]) == 50 and len(corpus["reviews"]) == 50
    full = tokenizer_corpus(seed=0, test_sentences=50)
    assert not set(corpus["news"]) & set(full["train"])
    assert tokenizer_corpus(seed=0, train_sentences=300, test_sentences=50)["train"] == corpus["train"]


def test_homophone_typos_swap_one_character_for_a_same_pinyin_one(corpus):
    pairs = homophone_typos(corpus["news"], seed=3)
    assert len(pairs) > 40 and pairs == homophone_typos(corpus["news"], seed=3)
    assert pairs != homophone_typos(corpus["news"], seed=4)
    readings = code_table("pinyin").codes
    for clean, typo in pairs:
        diff = [(a, b) for a, b in zip(clean, typo) if a != b]
        assert len(clean) == len(typo) and len(diff) == 1
        a, b = diff[0]
        assert set(readings[a]) & set(readings[b])


def test_unihan_homophone_typos_use_an_independent_lexicon(corpus):
    from plmkit.data.chinese import unihan

    mandarin = unihan("kMandarin")
    pairs = homophone_typos(corpus["news"], seed=3, lexicon="unihan")
    assert len(pairs) > 40 and pairs == homophone_typos(corpus["news"], seed=3, lexicon="unihan")
    for clean, typo in pairs:
        diff = [(a, b) for a, b in zip(clean, typo) if a != b]
        assert len(clean) == len(typo) and len(diff) == 1
        a, b = diff[0]
        assert mandarin[a].split()[0] == mandarin[b].split()[0]  # the same Unihan reading, tone included
    with pytest.raises(ConfigError, match="lexicon"):
        homophone_typos(corpus["news"], lexicon="cedict")


def test_tokenizer_measurements(tmp_path, corpus):
    noidx = train_tokenizer(corpus["train"], "pinyin", tmp_path / "p", vocab_size=1500, index=False, progress=False)
    char = train_tokenizer(corpus["train"], "char", tmp_path / "c", vocab_size=2500, progress=False)
    pairs = homophone_typos(corpus["news"], seed=0)
    robust, plain = perturbation_effect(noidx, pairs), perturbation_effect(char, pairs)
    assert robust["identical"] > 0.8 > 0.2 > plain["identical"]
    assert robust["tokens_changed"] < plain["tokens_changed"]
    tpc = tokens_per_char(char, corpus["news"])
    assert 0.3 < tpc <= 1.05
    assert throughput(char, corpus["news"]) > 1000


def test_study_config_validates_variants():
    assert parse_variant("pinyin-notone:no-index") == ("pinyin-notone", False)
    assert parse_variant("wubi") == ("wubi", True)
    with pytest.raises(ConfigError, match="no-index"):
        StudyConfig(tokenizers=["wubi:sometimes"])


def test_study_runs_end_to_end_on_a_tiny_budget(tmp_path):
    config = StudyConfig(tokenizers=["char", "pinyin-notone:no-index"], vocab_size=2500, layers=1, hidden=32,
                         heads=2, max_length=32, pretrain_steps=3, pretrain_batch=4, finetune_steps=3,
                         finetune_batch=4, seeds=[0, 1], train_sentences=300, test_examples=24,
                         mixed_precision="no")
    res = run_study(tmp_path, config, progress=False)
    assert set(res["tokenizers"]) == {"char", "pinyin-notone:no-index"} and res["n_test"] == 24
    for r in res["tokenizers"].values():
        assert len(r["runs"]) == 2 and r["tokens_per_char"] > 0
        for run in r["runs"]:
            for kind in ("keyboard", "asr"):
                m = run[kind]
                assert 0 <= m["worst"] <= m["average"] <= 1 and len(m["versions"]) == 3
        assert r["summary"]["clean"]["mean"] == pytest.approx(sum(x["clean"] for x in r["runs"]) / 2)
    assert all(0 < x < 0.5 for xs in res["noise_rates"].values() for x in xs)
    back = load_readin(tmp_path / "noisy_sentiment", "afqmc")  # the noisy test set is a READIN-layout release
    assert len(back.clean) == 24 and len(back.noisy["keyboard"]) == 3
    assert (tmp_path / "pinyin-notone-no-index" / "mlm" / "model.safetensors").exists()


def test_summarize_takes_mean_and_std_over_seeds():
    runs = [{"clean": 0.8, "keyboard": {"average": 0.6, "worst": 0.4}, "asr": {"average": 0.5, "worst": 0.3}},
            {"clean": 0.6, "keyboard": {"average": 0.4, "worst": 0.2}, "asr": {"average": 0.5, "worst": 0.1}}]
    s = summarize(runs)
    assert s["clean"] == pytest.approx({"mean": 0.7, "std": 0.1})
    assert s["asr worst"] == pytest.approx({"mean": 0.2, "std": 0.1})
    assert s["keyboard average"]["mean"] == pytest.approx(0.5)
