"""The few-shot harness, label scoring, AutoSeq's search and DPT, on tiny random models (no assets)."""
import itertools
from dataclasses import replace

import numpy as np
import pytest
import torch

from plmkit.data.tasks import ClassificationTask
from plmkit.errors import ConfigError
import plmkit.prompting.autoseq as autoseq
import plmkit.prompting.dpt as dpt
from plmkit.prompting import scoring
from plmkit.prompting.fewshot import MethodResult, few_shot_split
from plmkit.prompting.prompts import Prompt, load_prompt
from plmkit.testing import tiny_config, tiny_model, tiny_tokenizer

PROMPT = Prompt("{text} it was {label}.", ("bad", "good"))


def _task(n_per_class: int = 20, classes: int = 3) -> ClassificationTask:
    rows = [{"text": f"text {c} {i}", "label": c} for c in range(classes) for i in range(n_per_class)]
    return ClassificationTask("toy", rows[::3], rows[1::3], rows[2::3], tuple(f"c{c}" for c in range(classes)))


def _t5():
    m = tiny_model("t5")
    m.config.decoder_start_token_id = 0
    return m


# --- the protocol ---------------------------------------------------------------------------------------------

def test_splits_are_disjoint_balanced_and_reproducible_per_seed():
    task = _task()
    a, b, c = few_shot_split(task, 4, seed=1), few_shot_split(task, 4, seed=1), few_shot_split(task, 4, seed=2)
    texts = lambda rows: [r["text"] for r in rows]  # noqa: E731
    assert texts(a.train) == texts(b.train) and texts(a.test) == texts(b.test)
    assert texts(a.train) != texts(c.train)
    assert not set(texts(a.train)) & set(texts(a.dev)) and not set(texts(a.dev)) & set(texts(a.test))
    assert not set(texts(a.train)) & set(texts(a.test))
    assert len(a.train) + len(a.dev) + len(a.test) == len(task.rows())
    assert np.bincount([r["label"] for r in a.train]).tolist() == [4, 4, 4]
    assert np.bincount([r["label"] for r in a.dev]).tolist() == [4, 4, 4]
    capped = few_shot_split(task, 4, seed=1, max_test=12)
    assert np.bincount([r["label"] for r in capped.test]).tolist() == [4, 4, 4]
    with pytest.raises(ConfigError, match="lower --k"):
        few_shot_split(task, 10, seed=0)


def test_summary_counts_failures_at_or_below_majority():
    split = few_shot_split(_task(classes=2), 2, seed=0)
    r = MethodResult("m", "toy", 2)
    r.add(0.5, split, 1.0)
    r.add(0.9, split, 1.0)
    s = r.summary()
    assert split.majority_accuracy() == pytest.approx(0.5)
    assert s["failure_rate"] == 0.5 and s["mean"] == pytest.approx(0.7)
    assert s["std"] == pytest.approx(np.std([0.5, 0.9], ddof=1))


def test_manual_prompts_load_for_every_asset_task():
    from plmkit.data.tasks import ALL_TASKS

    for name in ALL_TASKS:
        p = load_prompt(name)
        assert p.task == name and "{label}" in p.template
    with pytest.raises(ConfigError, match="no manual prompt"):
        load_prompt("nope")
    with pytest.raises(ConfigError, match="one {text}"):
        Prompt("{label} only", ("a", "b"))


# --- scoring ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["llama", "gpt2", "t5"])
def test_sequence_logprobs_match_full_forward(name):
    model = _t5() if name == "t5" else tiny_model(name)
    prefixes, conts = [[5, 6, 7, 8], [9, 10]], [[11], [12, 13, 14], [15, 16]]
    got = scoring.sequence_logprobs(model, prefixes, conts)
    for i, p in enumerate(prefixes):
        for j, c in enumerate(conts):
            with torch.no_grad():
                if name == "t5":
                    lp = model(input_ids=torch.tensor([p]), labels=torch.tensor([c])).logits.log_softmax(-1)[0]
                    ref = sum(lp[t, c[t]].item() for t in range(len(c)))
                else:
                    lp = model(input_ids=torch.tensor([p + c])).logits.log_softmax(-1)[0]
                    ref = sum(lp[len(p) - 1 + t, c[t]].item() for t in range(len(c)))
            assert got[i, j] == pytest.approx(ref, abs=1e-4)


def test_masked_scores_read_the_mask_position():
    model, tok = tiny_model("bert"), tiny_tokenizer(chat=False)
    prompt = Prompt("{text} it was {label}.", ("x", "y"))
    got = scoring.score_labels(model, tok, prompt, ["a film"])
    enc = scoring.encode(tok, prompt, "a film", "masked")
    with torch.no_grad():
        lp = model(input_ids=torch.tensor([enc.source])).logits[0, enc.mask_index].log_softmax(-1)
    assert got[0].tolist() == pytest.approx([lp[tok.convert_tokens_to_ids("x")].item(),
                                             lp[tok.convert_tokens_to_ids("y")].item()], abs=1e-5)


def test_prompt_finetune_raises_the_gold_words_probability(tmp_path):
    model, tok = tiny_model("llama"), tiny_tokenizer(chat=False)
    rows = [{"text": "one two", "label": 1}, {"text": "three", "label": 1}]
    before = scoring.score_labels(model, tok, PROMPT, [r["text"] for r in rows])[:, 1]
    scoring.prompt_finetune(model, tok, PROMPT, rows, tmp_path,
                            scoring.PromptTuneConfig(steps=8, batch_size=2, lr=1e-2, mixed_precision="no"))
    after = scoring.score_labels(model, tok, PROMPT, [r["text"] for r in rows])[:, 1]
    assert (after > before + 0.5).all()


def test_label_word_continuations():
    assert scoring.continuation("great") == " great"
    assert scoring.continuation(". Thanks.") == ". Thanks."
    assert scoring.continuation(" (kept") == " (kept"


# --- AutoSeq ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["llama", "t5"])
def test_averaged_beam_search_matches_brute_force(name):
    model = _t5() if name == "t5" else tiny_model(name)
    prompts = [[5, 6, 7], [8, 9, 10, 11], [12, 13]]
    vocab = [20, 21, 22, 23]
    allowed = torch.zeros(97, dtype=torch.bool)
    allowed[vocab] = True
    found = {c.ids: c.beam_score for c in autoseq.averaged_beam_search(model, prompts, 64, 3, allowed)}
    brute = {seq: scoring.sequence_logprobs(model, prompts, [list(seq)]).mean()
             for n in (1, 2, 3) for seq in itertools.product(vocab, repeat=n)}
    assert set(found) == set(brute)
    assert max(abs(found[s] - brute[s]) for s in brute) < 1e-4
    narrow = autoseq.averaged_beam_search(model, prompts, 2, 3, allowed)
    best3 = max((s for s in brute if len(s) == 3), key=brute.get)
    assert all(abs(c.beam_score - brute[c.ids]) < 1e-4 for c in narrow)
    assert len([c for c in narrow if len(c.ids) == 3]) == 2 and brute[best3] >= max(
        c.beam_score for c in narrow if len(c.ids) == 3) - 1e-6


def test_contrastive_scores_by_hand():
    mean_logp = np.array([[-1.0, -2.0, -3.0], [-4.0, -1.0, -2.0], [-2.0, -2.0, -1.0]])
    own = [0, 1, 2]
    got = autoseq.contrastive_scores(mean_logp, own)
    want = [-1.0 - (-4.0 - 2.0) / 2, -1.0 - (-2.0 - 2.0) / 2, -1.0 - (-3.0 - 2.0) / 2]
    assert got.tolist() == pytest.approx(want)


@pytest.mark.parametrize("name", ["llama", "t5"])
def test_search_runs_end_to_end_on_both_model_kinds(name):
    model = _t5() if name == "t5" else tiny_model(name)
    tok = tiny_tokenizer(chat=False)
    if name == "t5":
        tok.add_special_tokens({"additional_special_tokens": ["<extra_id_0>"]})
        assert tok.convert_tokens_to_ids("<extra_id_0>") < 97
    split = few_shot_split(_task(classes=2), 2, seed=0)
    res = autoseq.search(model, tok, PROMPT, split, autoseq.AutoSeqConfig(beam=3, max_tokens=2, rerank_pool=4,
                                                                          per_label=2))
    assert len(res.sequences) == 2 and len({s.strip() for s in res.sequences}) == 2
    assert 0.0 <= res.dev_accuracy <= 1.0 and res.forward_passes > 0 and res.combinations_scored >= 1
    for cands in res.candidates:
        scores = [c.contrastive for c in cands]
        assert scores == sorted(scores, reverse=True)
    acc = scoring.accuracy(model, tok, PROMPT.with_words(res.sequences), split.dev)
    assert acc == pytest.approx(res.dev_accuracy)


def test_autoseq_refuses_a_masked_lm():
    with pytest.raises(ConfigError, match="generative"):
        autoseq.averaged_beam_search(tiny_model("bert"), [[5, 6]], 2, 2)


# --- DPT --------------------------------------------------------------------------------------------------------

def _electra():
    from transformers import ElectraForPreTraining

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return ElectraForPreTraining(tiny_config("electra")).eval()


def test_dpt_inputs_point_at_every_label_word():
    tok = tiny_tokenizer(chat=False)
    enc = dpt.encode_dpt(tok, PROMPT, "a film", 64)
    tokens = tok.convert_ids_to_tokens(enc["input_ids"])
    assert [tokens[i] for i in enc["label_positions"]] == ["b", "g"]  # first token of "bad", "good"
    assert dpt.label_sequence(PROMPT) == ("it was bad good.", [7, 11])
    tricky = Prompt("{text} it was {label}.", ("was", "it"))  # label words that also occur in the template
    enc = dpt.encode_dpt(tok, tricky, "a film", 64)
    tokens = tok.convert_ids_to_tokens(enc["input_ids"])
    first, second = enc["label_positions"]
    assert first > tokens.index("w") + 2 and second > first and tokens[second] == "i"


def test_dpt_loss_matches_a_hand_computation():
    tok = tiny_tokenizer(chat=False)
    clf = dpt.DPTClassifier(_electra(), 2)
    with torch.no_grad():
        clf.class_bias.copy_(torch.tensor([0.3, -0.2]))
    batch = dpt.dpt_collate(tok)([{**dpt.encode_dpt(tok, PROMPT, t, 64), "labels": y}
                                  for t, y in (("a film", 1), ("so so", 0))])
    labels = batch.pop("labels")
    logits = clf(**batch)
    with torch.no_grad():
        z = clf.discriminator(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    total = 0.0
    for b in range(2):
        for c in range(2):
            p = 1 / (1 + np.exp(-(clf.class_bias[c].item() - z[b, batch["label_positions"][b, c]].item())))
            gold = 1.0 if c == labels[b] else 0.0
            total += -(gold * np.log(p) + (1 - gold) * np.log(1 - p))
    assert dpt.dpt_loss(logits, labels).item() == pytest.approx(total / 4, rel=1e-5)


def test_dpt_training_moves_predictions_toward_the_gold_words(tmp_path):
    tok = tiny_tokenizer(chat=False)
    clf = dpt.DPTClassifier(_electra(), 2)
    rows = [{"text": "good good", "label": 1}, {"text": "bad bad", "label": 0}] * 4
    before = dpt.dpt_predict(clf, tok, PROMPT, ["good good", "bad bad"])
    dpt.train_dpt(clf, tok, PROMPT, rows, tmp_path, dpt.DPTConfig(steps=30, batch_size=4, lr=1e-3,
                                                                   mixed_precision="no"))
    after = dpt.dpt_predict(clf, tok, PROMPT, ["good good", "bad bad"])
    margin = lambda p: (p[0, 1] - p[0, 0]) + (p[1, 0] - p[1, 1])  # noqa: E731
    assert margin(after) > margin(before) + 0.1
    assert dpt.dpt_accuracy(clf, tok, PROMPT, rows) == 1.0


def test_bert_encoder_converts_to_an_electra_discriminator_with_the_same_states():
    bert = tiny_model("bert", head="base")
    disc = dpt.discriminator_from_encoder(bert)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        want = bert(input_ids=ids).last_hidden_state
        got = disc.electra(input_ids=ids).last_hidden_state
    assert torch.allclose(got, want, atol=1e-5)
    with pytest.raises(ConfigError, match="BERT-family"):
        dpt.discriminator_from_encoder(tiny_model("roberta", head="base"))


def test_corruption_and_rtd_accuracy():
    tok = tiny_tokenizer(chat=False)
    gen = tiny_model("bert")
    ids = torch.tensor([tok("hello there world")["input_ids"]])
    mask = torch.ones_like(ids)
    rng = torch.Generator().manual_seed(0)
    corrupted, replaced, scored = dpt.corrupt(gen, tok, ids, mask, 0.5, rng)
    assert ((corrupted != ids).float() == replaced).all() and scored.all()
    again, _, _ = dpt.corrupt(gen, tok, ids, mask, 0.5, torch.Generator().manual_seed(0))
    assert torch.equal(corrupted, again)
    m = dpt.rtd_accuracy(_electra(), gen, tok, ["hello there world", "a b c d e f"], mask_probability=0.5)
    assert 0 <= m["accuracy"] <= 1 and m["replaced_share"] > 0
    assert m["all_original_baseline"] == pytest.approx(1 - m["replaced_share"])


# --- the harness ------------------------------------------------------------------------------------------------

def test_every_method_runs_on_the_same_splits(tmp_path):
    from plmkit.prompting.harness import METHODS, FewShotConfig, fresh_copies, run_fewshot, summary_table

    tok = tiny_tokenizer(chat=False)
    folder = tmp_path / "tiny-llama"
    tiny_model("llama").save_pretrained(folder)
    tok.save_pretrained(folder)
    cfg = FewShotConfig(model=str(folder), tune=scoring.PromptTuneConfig(steps=2, batch_size=4, mixed_precision="no"),
                        autoseq=autoseq.AutoSeqConfig(beam=3, max_tokens=2, rerank_pool=4, per_label=2),
                        dpt=dpt.DPTConfig(steps=2, batch_size=4, mixed_precision="no"), head_steps=2,
                        virtual_tokens=2, batch_size=4, max_length=32, mixed_precision="no")
    task = _task(n_per_class=8, classes=2)
    res = run_fewshot(task, METHODS, k=2, seeds=[0, 1], config=cfg, prompt=PROMPT, progress=False,
                      lm_loader=fresh_copies(lambda: (tiny_model("llama"), tok)),
                      discriminator_loader=fresh_copies(lambda: (_electra(), tok)))
    assert set(res) == set(METHODS)
    for m, r in res.items():
        s = r.summary()
        assert s["runs"] == 2 and 0 <= s["mean"] <= 1 and s["majority"] == res["manual"].majorities
    assert res["autoseq"].extra[0]["sequences"] and res["single-word"].extra[0]["label_words"]
    table = summary_table([r.summary() for r in res.values()], "t")
    assert len(table["rows"]) == len(METHODS)
    with pytest.raises(ConfigError, match="needs a discriminator"):
        run_fewshot(task, ["dpt"], k=2, seeds=[0], config=cfg, prompt=PROMPT, progress=False)


def test_a_stored_run_resumes_and_a_changed_setting_reruns(tmp_path, monkeypatch):
    from plmkit.prompting import harness

    tok = tiny_tokenizer(chat=False)
    folder = tmp_path / "tiny-llama"
    tiny_model("llama").save_pretrained(folder)
    tok.save_pretrained(folder)
    cfg = harness.FewShotConfig(model=str(folder), tune=scoring.PromptTuneConfig(steps=1, batch_size=4,
                                                                                 mixed_precision="no"),
                                head_steps=1, batch_size=4, max_length=32, mixed_precision="no")
    task, store = _task(n_per_class=8, classes=2), tmp_path / "runs"
    loader = harness.fresh_copies(lambda: (tiny_model("llama"), tok))

    def run(config=cfg):
        return harness.run_fewshot(task, ["manual", "finetune"], k=2, seeds=[0, 1], config=config, prompt=PROMPT,
                                   progress=False, lm_loader=loader, store=store, store_inputs={"model": "tiny"})

    first = run()
    assert len(list(store.glob("*.json"))) == 4 and all(r.resumed == 0 for r in first.values())
    (store / "toy-k2-finetune-split1.json").write_text("{not json")  # a damaged file is run again, not trusted
    calls = []
    real = harness.run_method
    monkeypatch.setattr(harness, "run_method", lambda m, split, *a, **kw: calls.append((m, split.seed)) or
                        real(m, split, *a, **kw))
    again = run()
    assert calls == [("finetune", 1)]
    for m in first:
        assert again[m].accuracies == first[m].accuracies and again[m].seconds[:1] == first[m].seconds[:1]
    assert again["manual"].resumed == 2 and again["finetune"].resumed == 1
    assert harness.resumed_note([r.summary() for r in again.values()])[0].startswith("3 of 4 runs")
    calls.clear()
    run(replace(cfg, head_steps=2))  # other settings: nothing is taken from the store
    assert len(calls) == 4


def test_plots_bars_for_one_k_and_lines_across_ks():
    from plmkit.prompting.harness import plot_summaries

    runs = [{"task": t, "k": k, "method": m, "mean": 0.6, "std": 0.02, "accuracies": [0.58, 0.62], "majority": [0.5]}
            for t in ("a", "b") for k in (8, None) for m in ("dpt", "finetune")]
    lines = plot_summaries(runs, "across K").axes
    assert len(lines) == 2 and [t.get_text() for t in lines[0].get_xticklabels()] == ["8", "full"]
    assert len(lines[0].get_lines()) >= 3  # a line per method and the majority class
    bars = plot_summaries([r for r in runs if r["k"] == 8], "one K").axes
    assert len(bars) == 2 and len(bars[0].patches) == 2


# --- DPT extractive QA --------------------------------------------------------------------------------------------

QA_ROWS = [{"question": "capital of ab?", "passage": "ab has cd. ef has gh.", "answer": "cd", "answer_start": 7,
            "country": "ab"},
           {"question": "capital of ef?", "passage": "ab has cd. ef has gh.", "answer": "gh", "answer_start": 18,
            "country": "ef"}]


def test_best_span_maximises_the_summed_scores_within_the_passage():
    from plmkit.prompting.dpt_qa import best_span

    scores = np.array([5.0, -1.0, 2.0, 2.0, -3.0, 4.0])
    allowed = np.array([False, True, True, True, True, True])
    assert best_span(scores, allowed, 8) == (2, 5)  # 2 + 2 - 3 + 4 = 5; position 0 is not passage
    assert best_span(scores, allowed, 2) == (2, 3)  # 4, tied with (5, 5): the first is kept
    assert best_span(np.array([-2.0, -1.0, -3.0]), np.array([True, True, True]), 3) == (1, 1)


def test_span_encoding_training_and_scores(tmp_path):
    from plmkit.prompting import dpt_qa

    tok = tiny_tokenizer(chat=False)
    rec = dpt_qa.encode_span(tok, QA_ROWS[0], 64)
    tokens = tok.convert_ids_to_tokens(rec["input_ids"])
    assert "".join(t for t, a in zip(tokens, rec["answer_mask"]) if a) == "cd"
    assert all(p for p, a in zip(rec["passage_mask"], rec["answer_mask"]) if a)
    tagger = dpt_qa.SpanTagger(_electra())
    dpt_qa.train_span_tagger(tagger, tok, QA_ROWS * 4, tmp_path, dpt_qa.SpanConfig(steps=40, batch_size=4, lr=1e-3,
                                                                                  max_length=64, mixed_precision="no"))
    preds = dpt_qa.predict_spans(tagger, tok, QA_ROWS, max_length=64, max_answer_tokens=3)
    assert all(p in r["passage"] for p, r in zip(preds, QA_ROWS))
    assert dpt_qa.span_scores(["cd", "gh x"], QA_ROWS) == {"exact_match": 0.5, "f1": pytest.approx(0.5 + 1 / 3),
                                                           "n": 2}
    with pytest.raises(ConfigError, match="raise it"):
        dpt_qa.encode_span(tok, QA_ROWS[0], 10)


def test_split_by_country_keeps_test_countries_unseen():
    from plmkit.prompting.dpt_qa import split_by_country

    rows = [{"country": f"c{i % 10}", "q": i} for i in range(100)]
    train, test = split_by_country(rows, 20, 20, seed=3)
    assert not {r["country"] for r in train} & {r["country"] for r in test}
    assert len(train) == len(test) == 20
