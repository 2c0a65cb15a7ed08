"""SubChar: code tables, reversible spelling, homophone collisions, the HF tokenizer and its CLI."""
import json

import pytest

from plmkit.chinese import codes
from plmkit.chinese.subchar import (ALL_ENCODINGS, SubCharEncoder, SubCharTokenizer, SubCharVersionWarning,
                                    load_tokenizer, normalize, train_tokenizer)
from plmkit.cli import main
from plmkit.data.chinese import peoples_daily
from plmkit.errors import ConfigError

VARIED = [
    "我们去银行办理业务，然后行走回家。",
    "Hello, World! 2024年3月15日 下午3:30",
    "价格：￥1,299.00（含税）",
    "表情😀🎉 和 emoji ❤️ 混排",
    "ＦＵＬＬ　ｗｉｄｔｈ　１２３ and tabs\tand\nnewlines",
    "  leading and trailing spaces  ",
    "代码 a#b₂c \ue001 \ue0ff 在私用区",
    "生僻字𠀀𪚥与繁體字龍",
    "▁sentencepiece▁marks▁ and ﬁ ½ ① ㍿",
]


@pytest.fixture(scope="module")
def corpus():
    return [r["text"] for r in peoples_daily()[:400]] + VARIED[:4]


@pytest.mark.parametrize("encoding", codes.ENCODINGS)
def test_code_tables_cover_the_corpus_and_cjk(encoding):
    report = codes.coverage(encoding, [r["text"] for r in peoples_daily()])
    assert report["corpus_chars"] > 4000
    assert report["corpus_covered"] >= 0.99, report
    assert report["cjk_basic_covered"] >= 0.98, report
    assert 0 < report["cjk_all_covered"] <= 1


def test_codes_use_their_alphabet_and_read_heteronyms_in_context():
    for encoding in codes.ENCODINGS:
        table = codes.code_table(encoding)
        alphabet = set(codes.ALPHABETS[encoding])
        assert all(set(c) <= alphabet for cs in list(table.codes.values())[:5000] for c in cs), encoding
    assert codes.code_table("pinyin").code("们") == "men5"  # the reference tables lacked 们
    assert codes.code_table("wubi").code("我") == "trnt"
    assert codes.code_table("stroke").code("中") == "2512"
    assert len(codes.strokes("家")) == 10 and len(codes.strokes("长")) == 4  # a mirrored part counts once
    enc = SubCharEncoder.build("pinyin")
    assert enc.encode("银行").startswith("yin2") and "hang2" in enc.encode("银行")
    assert "xing2" in enc.encode("行走")


def _reference_spelling(enc: SubCharEncoder, text: str) -> str:
    """Spelling as plmkit did it before the fast path: pypinyin's lazy_pinyin on every covered run."""
    from pypinyin import lazy_pinyin

    from plmkit.chinese.subchar import _SHIFT, ESCAPE, SEPARATOR, _index_suffix
    text = normalize(text)
    out = [enc.codes[ch][0] if ch in enc.codes else None for ch in text]
    start = None
    for i in range(len(text) + 1):
        inside = i < len(text) and out[i] is not None
        if inside and start is None:
            start = i
        elif not inside and start is not None:
            read = lazy_pinyin(text[start:i], style=codes._style(enc.encoding), neutral_tone_with_five=True)
            if len(read) == i - start:
                for j, r in enumerate(read, start):
                    if r in enc.codes[text[j]]:
                        out[j] = r
            start = None
    parts = []
    for ch, code in zip(text, out):
        if code is not None:
            parts.append(code + (_index_suffix(enc._position[(ch, code)]) if enc.index else "") + SEPARATOR)
        else:
            parts.append(_SHIFT.get(ch) or (ESCAPE + ch if 0xE000 <= ord(ch) <= 0xE0FF else ch))
    return "".join(parts)


def _phrase_soup(n: int, seed: int = 0) -> list[str]:
    """Texts of phrases that read a heteronym otherwise than alone, run together so they overlap and compete."""
    import random

    from plmkit.chinese.subchar import _marked_phrases

    phrases = sorted(_marked_phrases()[2])
    rng = random.Random(seed)
    return ["".join(rng.choice(phrases) for _ in range(rng.randint(2, 8))) for _ in range(n)]


@pytest.mark.parametrize("encoding", codes.CONTEXTUAL)
def test_fast_spelling_equals_reading_every_run_with_pypinyin(encoding):
    from plmkit.data.chinese import tokenizer_corpus

    data = tokenizer_corpus(0, 10, 800)  # held-out news and reviews
    texts = data["news"] + data["reviews"][:200] + VARIED + _phrase_soup(300)
    for index in (True, False):
        enc = SubCharEncoder.build(encoding, index=index)
        assert enc._reader._windows  # the fast path is the one tested
        assert enc.encode_batch(texts) == [_reference_spelling(enc, t) for t in texts]
    enc._reader._windows = False  # whole runs read: the path taken where the phrase data breaks the windows
    assert enc.encode_batch(texts[:300]) == [_reference_spelling(enc, t) for t in texts[:300]]


def test_phrase_data_without_one_reading_per_character_reads_whole_runs(monkeypatch):
    from pypinyin.constants import PHRASES_DICT

    from plmkit.chinese.subchar import _marked_phrases

    monkeypatch.setitem(PHRASES_DICT, "银行家们", [["yín"], ["háng"]])
    _marked_phrases.cache_clear()
    try:
        enc = SubCharEncoder.build("pinyin")
        assert not enc._reader._windows
        texts = ["他是银行家们的朋友", VARIED[0]] + _phrase_soup(50, seed=1)
        assert enc.encode_batch(texts) == [_reference_spelling(enc, t) for t in texts]
    finally:
        monkeypatch.undo()
        _marked_phrases.cache_clear()


def test_stroke_sequences_mostly_have_unihan_stroke_counts():
    chars = {ch for r in peoples_daily()[:2000] for ch in r["text"] if codes.is_han(ch)}
    check = codes.stroke_count_agreement(chars)
    assert check["characters"] > 1000 and check["agreement"] > 0.75


@pytest.mark.parametrize("encoding", ALL_ENCODINGS)
def test_index_mode_round_trips_varied_text(encoding):
    enc = SubCharEncoder.build(encoding, index=True)
    for text in VARIED:
        spelled = enc.encode(text)
        assert enc.decode(spelled) == normalize(text), (encoding, text, spelled)
    back = SubCharEncoder.from_dict(json.loads(json.dumps(enc.to_dict(), ensure_ascii=False)))
    assert back.encode(VARIED[0]) == enc.encode(VARIED[0])


def test_non_chinese_text_never_reads_as_a_code():
    enc = SubCharEncoder.build("pinyin", index=False)
    spelled = enc.encode("ma3# 马")
    assert spelled.count("ma3#") == 1  # the Latin 'ma3#' was shifted, only 马 is spelled
    assert enc.decode(spelled) == "ma3# 马"


def test_no_index_mode_lets_homophones_collide():
    notone = SubCharEncoder.build("pinyin-notone", index=False)
    assert notone.encode("他") == notone.encode("她") == notone.encode("它")
    assert notone.encode("今天天气很好") == notone.encode("今天天汽很好")  # a homophone typo
    indexed = SubCharEncoder.build("pinyin-notone", index=True)
    assert len({indexed.encode(c) for c in "他她它"}) == 3
    assert notone.decode(notone.encode("她")) == "他"  # the commonest of the homophones


def test_tokenizer_trains_saves_loads_and_decodes(tmp_path, corpus):
    tok = train_tokenizer(corpus, "pinyin", tmp_path / "tok", vocab_size=1200, progress=False)
    assert isinstance(tok, SubCharTokenizer) and tok.encoding == "pinyin"
    assert {"spiece.model", "subchar_codes.json", "tokenizer_config.json"} <= {p.name for p in (tmp_path / "tok").iterdir()}
    ids = tok(VARIED[0])["input_ids"]
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    for text in VARIED:
        assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == normalize(text)
    batch = tok(VARIED[:3], padding=True, truncation=True, max_length=12, return_tensors="pt")
    assert batch["input_ids"].shape == (3, 12) and batch["attention_mask"].sum() > 12
    tok.save_pretrained(str(tmp_path / "again"))
    again = load_tokenizer(tmp_path / "again")
    assert again(VARIED[1])["input_ids"] == tok(VARIED[1])["input_ids"]
    assert again.convert_ids_to_tokens(again(VARIED[0])["input_ids"]) == tok.convert_ids_to_tokens(ids)
    from transformers import AutoTokenizer

    auto = AutoTokenizer.from_pretrained(str(tmp_path / "again"))
    assert isinstance(auto, SubCharTokenizer) and auto.tokenize(VARIED[0]) == tok.tokenize(VARIED[0])
    assert tok.decode(tok("我[MASK]们")["input_ids"]) == "[CLS]我[MASK]们[SEP]"  # special tokens kept
    n_tokens = len(tok(corpus[0], add_special_tokens=False)["input_ids"])
    assert n_tokens < len(corpus[0])  # subword pieces span several characters


def test_saved_tokenizer_records_versions_and_flags_a_change(tmp_path, corpus):
    import warnings
    from importlib.metadata import version

    train_tokenizer(corpus, "pinyin", tmp_path / "tok", vocab_size=1200, progress=False)
    code_file = tmp_path / "tok" / "subchar_codes.json"
    saved = json.loads(code_file.read_text(encoding="utf-8"))
    assert saved["versions"]["pypinyin"] == version("pypinyin") and "unicode" in saved["versions"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", SubCharVersionWarning)  # the same versions: silent
        load_tokenizer(tmp_path / "tok")
    saved["versions"]["pypinyin"] = "0.0.1"
    code_file.write_text(json.dumps(saved, ensure_ascii=False), encoding="utf-8")
    with pytest.warns(SubCharVersionWarning, match=r"pypinyin 0\.0\.1 .*Install pypinyin==0\.0\.1"):
        tok = load_tokenizer(tmp_path / "tok")
    assert tok.encoder.version_changes() == {"pypinyin": ("0.0.1", version("pypinyin"))}
    with pytest.raises(ConfigError, match="plmkit subchar train"):
        SubCharTokenizer.from_pretrained(str(tmp_path / "tok"), strict_versions=True)
    char = SubCharEncoder.build("char")
    assert set(char.versions) == {"unicode"}  # raw characters depend on no pinyin data


def test_no_index_tokenizer_tokenizes_a_homophone_typo_identically(tmp_path, corpus):
    tok = train_tokenizer(corpus, "pinyin-notone", tmp_path / "t", vocab_size=800, index=False, progress=False)
    assert tok.tokenize("我们今天去公园") == tok.tokenize("我门今天去公圆")
    char = train_tokenizer(corpus, "char", tmp_path / "c", vocab_size=3000, progress=False)
    assert char.tokenize("我们今天去公园") != char.tokenize("我门今天去公圆")


def test_errors_say_what_to_do(tmp_path, corpus):
    with pytest.raises(ConfigError, match="choose one of"):
        train_tokenizer(corpus, "klingon", tmp_path / "x")
    with pytest.raises(ConfigError, match="at least"):
        train_tokenizer(corpus, "char", tmp_path / "x", vocab_size=50, progress=False)
    with pytest.raises(ConfigError, match="plmkit subchar train"):
        load_tokenizer(tmp_path)
    assert not (tmp_path / "x").exists()  # a failed training leaves nothing half-written
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "important.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not a SubChar tokenizer folder"):
        train_tokenizer(corpus, "wubi", tmp_path / "mine", vocab_size=900, progress=False)
    assert (tmp_path / "mine" / "important.txt").read_text() == "keep me"
    old = SubCharEncoder.build("wubi").to_dict()
    old.pop("format")
    with pytest.raises(ConfigError, match="train it again"):
        SubCharEncoder.from_dict(old)


def test_cli_trains_and_encodes(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(r["text"] for r in peoples_daily()[:300]), encoding="utf-8")
    main(["subchar", "train", "--encoding", "wubi", "--corpus", str(corpus), "--vocab-size", "900",
          "--out", str(tmp_path / "wubi")])
    assert "tokens/char" in capsys.readouterr().out
    main(["subchar", "encode", "--tokenizer", str(tmp_path / "wubi"), "中国人民"])
    line = capsys.readouterr().out.strip()
    assert "\n" not in line and "#" in line
    main(["subchar", "encode", "--tokenizer", str(tmp_path / "wubi"), "Hi"])
    assert "".join(capsys.readouterr().out.split()) == "hi"  # shifted letters shown as themselves
    assert "".join(line.split()).replace("#", "") == "khklgyiwwwwnav"  # Wubi-86: 中 khk 国 lgyi 人 wwww 民 nav
