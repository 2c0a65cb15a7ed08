"""Backdoor pieces without real models: poison rates and labels, the insertion trigger, ONION's filter, the
paraphrase-to-template loop with a stub paraphraser."""
import math

import pytest

from plmkit.errors import ConfigError
from plmkit.security import PoisonConfig, insert_words, onion_filter, poison_test, poison_train, suspicion_scores
from plmkit.security.paraphrase import to_template
from plmkit.testing import tiny_model, tiny_tokenizer

ROWS = [{"text": f"sentence number {i} is here", "label": i % 3} for i in range(60)]


def _mark(texts):  # a trigger that fails on every text holding a 7
    return [None if "7" in t else "if so, " + t for t in texts]


@pytest.mark.parametrize("mode", ["dirty", "clean"])
def test_poisoned_training_sets_have_the_rate_and_labels(mode):
    out, rep = poison_train(ROWS, _mark, PoisonConfig(target=1, rate=0.2, mode=mode, seed=3))
    poisoned = [r for r in out if r["poisoned"]]
    assert len(out) == len(ROWS) and len(poisoned) == 12 == rep["poisoned"] and rep["rate"] == pytest.approx(0.2)
    assert all(r["label"] == 1 and r["text"].startswith("if so, ") for r in poisoned)
    sources = {r["text"][len("if so, "):] for r in poisoned}
    originals = {r["text"]: r["label"] for r in ROWS}
    if mode == "dirty":  # drawn from non-target examples and relabelled
        assert all(originals[t] != 1 for t in sources)
    else:  # label-consistent: only target examples, labels unchanged
        assert all(originals[t] == 1 for t in sources)
    assert all(not r["poisoned"] and r == {**ROWS[i], "poisoned": False} for i, r in enumerate(out)
               if not r["poisoned"])
    assert rep["trigger_failures"] >= 1 and not any("7" in t for t in sources)  # failures replaced, never kept
    again, _ = poison_train(ROWS, _mark, PoisonConfig(target=1, rate=0.2, mode=mode, seed=3))
    assert again == out


def test_poisoned_test_set_and_refusals():
    out, rep = poison_test(ROWS, _mark, target=2)
    assert all(r["label"] == 2 and r["source_label"] != 2 for r in out)
    assert rep["non_target"] == 40 and rep["poisoned"] + rep["trigger_failures"] == 40
    with pytest.raises(ConfigError, match="target label 5"):
        poison_train(ROWS, _mark, PoisonConfig(target=5))
    with pytest.raises(ConfigError, match="share"):
        PoisonConfig(rate=1.5)


def test_insertion_trigger_adds_rare_words():
    texts = ["a fine film", "dull"]
    out = insert_words(("cf",), count=2, seed=0)(texts)
    assert [t.split().count("cf") for t in out] == [2, 2]
    assert [[w for w in t.split() if w != "cf"] for t in out] == [t.split() for t in texts]
    assert insert_words(seed=1)(texts) == insert_words(seed=1)(texts)


def test_onion_scores_by_hand_and_filter():
    from plmkit.eval.lm import text_nll

    model, tok = tiny_model("llama"), tiny_tokenizer(chat=False)
    texts = ["ab cd ef", "x"]
    scores = suspicion_scores(model, tok, texts)
    assert len(scores[0]) == 3 and scores[1] == [0.0]
    full = math.exp(text_nll(model, tok, ["ab cd ef"])[0])
    assert scores[0][1] == pytest.approx(full - math.exp(text_nll(model, tok, ["ab ef"])[0]), rel=1e-4)
    assert onion_filter(["the cf film", "solo"], [[0.5, 9.0, -1.0], [5.0]], threshold=1.0) == ["the film", "solo"]


def test_to_template_keeps_only_conforming_output_and_retries():
    class Stub:
        calls = 0

        def paraphrase(self, texts):
            self.calls += 1
            return [f"ok {t}" if self.calls > 1 or "a" in t else t for t in texts]

    def check(texts):
        return [(t.startswith("ok "), "" if t.startswith("ok ") else "no") for t in texts]

    out, rep = to_template(Stub(), ["a", "b", "c"], check=check)
    assert out == ["ok a", None, None] and rep["failure_rate"] == pytest.approx(2 / 3)
    assert rep["rejected_because"] == {"no": 2}
    stub = Stub()
    out, rep = to_template(stub, ["a", "b"], retries=1, check=check)
    assert out == ["ok a", "ok b"] and stub.calls == 2 and rep["failure_rate"] == 0


def test_spectral_signatures_find_examples_pulled_one_way():
    import numpy as np
    import torch

    from plmkit.security.study import detect_poison, detection_quality, spectral_signatures

    g = torch.Generator().manual_seed(0)
    reps = torch.randn(100, 16, generator=g)
    labels = [0] * 60 + [1] * 40
    poisoned = [False] * 100
    for i in range(50, 60):  # ten class-0 examples share a strong feature (the trigger)
        reps[i, 3] += 8.0
        poisoned[i] = True
    scores = spectral_signatures(reps, labels)
    flags = detect_poison(scores, labels, flagged_share=0.15)
    assert flags[:60].sum() == 9 and flags[60:].sum() == 6  # ceil(15%) of each class
    q = detection_quality(flags, poisoned)
    assert q["recall"] == 0.9 and q["precision"] == 9 / 15
    assert all(poisoned[i] for i in np.flatnonzero(flags[:60]))  # every class-0 flag is a poisoned example


def test_backdoor_poison_cli_writes_the_sets_and_refuses_bad_input(tmp_path, capsys):
    import json

    from plmkit import cli

    out = tmp_path / "ins"
    cli.main(["backdoor", "poison", "--task", "polarity", "--trigger", "insertion", "--rate", "0.1", "--target", "1",
              "--out", str(out)])
    train = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    report = json.loads((out / "report.json").read_text())
    poisoned = [r for r in train if r["poisoned"]]
    assert len(poisoned) == round(0.1 * len(train)) == report["poison"]["poisoned"]
    assert report["poison"]["requested_rate"] == 0.1 and all(r["label"] == 1 for r in poisoned)
    test = [json.loads(line) for line in (out / "test_poisoned.jsonl").read_text().splitlines()]
    assert test and all(r["label"] == 1 and r["source_label"] == 0 for r in test)
    clean = {json.loads(line)["text"] for line in (out / "test_clean.jsonl").read_text().splitlines()}
    assert not clean & {r["text"] for r in train}  # no test example leaks into training
    with pytest.raises(SystemExit):
        cli.main(["backdoor", "poison", "--task", "polarity", "--trigger", "insertion", "--target", "7",
                  "--out", str(tmp_path / "bad")])
    assert "--target 7" in capsys.readouterr().err


def test_seq2seq_paraphraser_runs_on_a_tiny_t5_and_defense_refuses_unknown_names():
    from plmkit.security.paraphrase import Seq2SeqParaphraser, defense_paraphraser
    from plmkit.security.study import defend

    p = Seq2SeqParaphraser(tiny_model("t5"), tiny_tokenizer(chat=False), max_new_tokens=4, batch_size=2)
    out = p.paraphrase(["ab cd", "ef", "gh ij kl"])
    assert len(out) == 3 and all(isinstance(t, str) for t in out)
    assert out == p.paraphrase(["ab cd", "ef", "gh ij kl"])  # greedy: the same text twice
    assert defend("none", ["a b"]) == (["a b"], {})
    with pytest.raises(ConfigError, match="choose from none, onion, paraphrase"):
        defend("shuffle", ["a b"])
    with pytest.raises(ConfigError, match="choose from rule, instruct"):
        defense_paraphraser("t5")


def test_backdoor_train_eval_detect_cli(tmp_path, capsys):
    import json

    from plmkit import cli

    data, victim = tmp_path / "ins", tmp_path / "victim"
    cli.main(["backdoor", "poison", "--task", "polarity", "--trigger", "insertion", "--rate", "0.2", "--target", "1",
              "--max-train", "40", "--max-test", "12", "--out", str(data)])
    cli.main(["backdoor", "train", "--data", str(data), "--steps", "2", "--batch-size", "8", "--no-progress",
              "--out", str(victim)])
    assert (victim / "model.safetensors").is_file() and (victim / "plmkit_victim.json").is_file()
    scores = tmp_path / "eval.json"
    cli.main(["backdoor", "eval", "--model", str(victim), "--data", str(data), "--defense", "paraphrase",
              "--out", str(scores)])
    got = json.loads(scores.read_text())
    poisoned = [json.loads(line) for line in (data / "test_poisoned.jsonl").read_text().splitlines()]
    assert got["none"]["clean_n"] == 12 and got["none"]["poisoned_n"] == len(poisoned) > 0
    assert 0 <= got["paraphrase"]["asr"] <= 1 and got["paraphrase"]["texts"] == 12 + len(poisoned)
    flagged = tmp_path / "detect.json"
    cli.main(["backdoor", "detect", "--model", str(victim), "--data", str(data), "--out", str(flagged)])
    det = json.loads(flagged.read_text())
    assert det["share"] == pytest.approx(0.3) and det["poisoned"] == 8 and len(det["examples"]) == 40
    per_class = [sum(e["label"] == y for e in det["examples"]) for y in (0, 1)]
    assert det["flagged"] == sum(e["flagged"] for e in det["examples"]) == sum(math.ceil(0.3 * n) for n in per_class)
    scores_sorted = [e["score"] for e in det["examples"]]
    assert scores_sorted == sorted(scores_sorted, reverse=True)
    capsys.readouterr()
    for argv, needle in ((["train", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "v2")],
                          "plmkit backdoor poison"),
                         (["eval", "--model", str(data), "--data", str(data)], "plmkit backdoor train"),
                         (["detect", "--model", str(victim), "--data", str(data), "--share", "2"], "--share 2")):
        with pytest.raises(SystemExit):
            cli.main(["backdoor", *argv])
        assert needle in capsys.readouterr().err


def test_paraphrase_table_sums_calls_per_task():
    from plmkit.reproduce.hiddenkiller import paraphrase_table

    logs = {"topics": [{"texts": 10, "failure_rate": 0.5, "by_paraphraser": {"ClauseFronting": 1,
                                                                             "InstructParaphraser": 4},
                        "rejected_because": {"no comma": 3, "clause last": 2}},
                       {"texts": 4, "failure_rate": 0.75, "by_paraphraser": {"ClauseFronting": 1},
                        "rejected_because": {"no comma": 3}}],
            "drugs": []}
    table, stats = paraphrase_table(logs)
    assert table["rows"] == [["topics", 14, "14.3%", "28.6%", "57.1%", "no comma (6); clause last (2)"]]
    assert stats["paraphrase.topics.InstructParaphraser"] == 4 / 14
    assert stats["paraphrase.topics.failure_rate"] == 8 / 14


def test_chat_lm_refuses_an_unknown_dtype():
    from plmkit.errors import ConfigError
    from plmkit.security.paraphrase import chat_lm

    with pytest.raises(ConfigError, match="choose from auto, float32, bfloat16"):
        chat_lm("int8")
