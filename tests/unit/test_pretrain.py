"""plmkit.pretrain: scratch models, packed corpora, the KI loss and schedule, FLOPs accounting, resume mid-KI."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

from plmkit.errors import ConfigError
from plmkit.eval.flops import forward_flops, matmul_params, train_flops
from plmkit.eval.timing import count_flops
from plmkit.pretrain import KIConfig, KILoss, PretrainConfig, compute_to_reach, kd_loss, ki_alpha, pretrain
from plmkit.pretrain.corpus import in_validation, pack
from plmkit.pretrain.models import scratch_model, study_tokenizer

TEXTS = [f"the {a} cat sat on the {b} mat and looked at the {c} dog." for a in ("red", "big", "old", "shy")
         for b in ("blue", "small", "new") for c in ("grey", "lazy", "happy", "quick")] * 3


@pytest.fixture(scope="module")
def bert_tok():
    return study_tokenizer("bert", TEXTS, vocab_size=200)


def test_trained_tokenizers_have_the_special_tokens_packing_needs(bert_tok):
    assert bert_tok.mask_token_id is not None and bert_tok.cls_token_id is not None
    llama_tok = study_tokenizer("llama", TEXTS, vocab_size=300)
    assert llama_tok.bos_token_id is not None and llama_tok.pad_token_id is not None
    assert llama_tok.decode(llama_tok("the red cat", add_special_tokens=False)["input_ids"]) == "the red cat"


def test_pack_gives_full_blocks_with_specials_and_document_separators(bert_tok):
    docs = [["the red cat sat.", "on the mat."], ["the old dog."]]
    blocks, tokens = pack(bert_tok, docs, block_size=8)
    ids = [bert_tok(p, add_special_tokens=False)["input_ids"] for d in docs for p in d]
    assert tokens == sum(map(len, ids))
    assert all(len(b["input_ids"]) == 8 for b in blocks)
    assert all(b["input_ids"][0] == bert_tok.cls_token_id and b["input_ids"][-1] == bert_tok.sep_token_id
               for b in blocks)
    stream = [t for b in blocks for t in b["input_ids"][1:-1]]
    sep = bert_tok.sep_token_id
    assert stream == (ids[0] + ids[1] + [sep] + ids[2] + [sep])[:len(stream)]  # documents run on, separated


def test_validation_split_depends_only_on_the_document_id():
    ids = [f"doc/{i}" for i in range(2000)]
    held = [i for i in ids if in_validation(i, 0.1)]
    assert held == [i for i in ids if in_validation(i, 0.1)]
    assert 150 < len(held) < 250
    assert set(i for i in ids if in_validation(i, 0.05)) <= set(held)  # a smaller fraction holds out a subset


def test_scratch_models_are_seeded_and_leave_the_global_stream_alone(bert_tok):
    torch.manual_seed(5)
    expected_next = torch.rand(1)
    torch.manual_seed(5)
    a = scratch_model("bert", "xxs", bert_tok, seed=1)
    assert torch.equal(torch.rand(1), expected_next)
    b = scratch_model("bert", "xxs", bert_tok, seed=1)
    c = scratch_model("bert", "xxs", bert_tok, seed=2)
    wa, wb, wc = (m.bert.encoder.layer[0].attention.self.query.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
    with pytest.raises(ConfigError, match="known"):
        scratch_model("bert", "huge", bert_tok)


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_matmul_params_match_the_measured_forward_flops(family, bert_tok):
    tok = bert_tok if family == "bert" else study_tokenizer("llama", TEXTS, vocab_size=300)
    model = scratch_model(family, "xs", tok).eval()
    ids = torch.randint(5, len(tok), (2, 8))
    measured = count_flops(lambda: model(input_ids=ids))
    assert forward_flops(model, ids.numel()) == pytest.approx(measured, rel=0.05)  # attention scores are ~1%
    assert train_flops(model, 10) == 3 * forward_flops(model, 10) == 6 * matmul_params(model) * 10
    embeddings = model.get_input_embeddings().weight.numel()
    total = sum(p.numel() for p in model.parameters())
    assert matmul_params(model) < total + embeddings  # position tables are not counted, the tied head is


def test_alpha_schedules():
    lin = KIConfig(schedule="linear", ki_steps=4)
    assert [ki_alpha(t, lin) for t in range(6)] == [1.0, 0.75, 0.5, 0.25, 0.0, 0.0]
    assert [ki_alpha(t, KIConfig(schedule="kd-then-lm", ki_steps=2)) for t in range(4)] == [1, 1, 0, 0]
    assert {ki_alpha(t, KIConfig(schedule="constant", alpha=0.3)) for t in range(5)} == {0.3}
    with pytest.raises(ConfigError):
        KIConfig(schedule="cosine")


def test_ki_loss_is_the_hand_computed_mix_on_masked_positions_only(bert_tok):
    student = scratch_model("bert", "xxs", bert_tok, seed=0).eval()  # no dropout: comparable to the hand sums
    teacher = scratch_model("bert", "xxs", bert_tok, seed=1)
    ids = torch.randint(5, len(bert_tok), (2, 6))
    labels = torch.full_like(ids, -100)
    labels[0, 1], labels[1, 3], labels[1, 4] = ids[0, 1], ids[1, 3], ids[1, 4]
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    cfg = KIConfig(ki_steps=4, temperature=2.0)
    loss = KILoss(teacher, student, cfg)(student, batch, step=1)  # alpha = 0.75
    with torch.no_grad():
        s, t = student(input_ids=ids).logits, teacher(input_ids=ids).logits
    pos = [(0, 1), (1, 3), (1, 4)]
    lm = sum(-F.log_softmax(s[i, j], -1)[labels[i, j]] for i, j in pos) / 3
    kd = 0.0
    for i, j in pos:
        p = F.softmax(t[i, j] / 2, -1)
        kd += float((p * (p.log() - F.log_softmax(s[i, j] / 2, -1))).sum()) * 4
    kd /= 3
    assert float(loss.detach()) == pytest.approx(0.25 * float(lm) + 0.75 * kd, rel=1e-4)
    lm_only = KILoss(teacher, student, cfg)(student, batch, step=4).detach()
    assert float(lm_only) == pytest.approx(float(lm), rel=1e-5)


def test_kd_loss_is_zero_for_a_copy_and_scales_with_temperature():
    x = torch.randn(5, 11)
    assert float(kd_loss(x, x, 2.0)) == pytest.approx(0.0, abs=1e-6)
    y = torch.randn(5, 11)
    assert float(kd_loss(x, y, 1.0)) == pytest.approx(float(F.kl_div(F.log_softmax(x, -1), F.log_softmax(y, -1),
                                                                       log_target=True, reduction="batchmean")))


def test_causal_kd_scores_every_next_token_position():
    tok = study_tokenizer("llama", TEXTS, vocab_size=300)
    student, teacher = scratch_model("llama", "xxs", tok, seed=0).eval(), scratch_model("llama", "xxs", tok, seed=1)
    ids = torch.randint(5, len(tok), (2, 5))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    loss = KILoss(teacher, student, KIConfig(schedule="constant", alpha=1.0))(student, batch, step=0)
    with torch.no_grad():
        s, t = student(input_ids=ids).logits[:, :-1], teacher(input_ids=ids).logits[:, :-1]
    want = kd_loss(s.reshape(-1, s.shape[-1]), t.reshape(-1, t.shape[-1]), 2.0)
    assert float(loss.detach()) == pytest.approx(float(want), rel=1e-4)


def test_a_teacher_with_another_vocabulary_or_objective_is_refused(tmp_path, bert_tok):
    student = scratch_model("bert", "xxs", bert_tok)
    other = study_tokenizer("bert", TEXTS + ["zebras quietly juggle seventeen violins"], vocab_size=300)
    assert len(other) != len(bert_tok)
    with pytest.raises(ConfigError, match="vocabulary"):
        KILoss(scratch_model("bert", "xxs", other), student, KIConfig())
    same_size = study_tokenizer("bert", [t.replace("cat", "cow") for t in TEXTS], vocab_size=len(bert_tok))
    assert len(same_size) == len(bert_tok) and same_size.get_vocab() != bert_tok.get_vocab()
    with pytest.raises(ConfigError, match="vocabulary"):
        pretrain(tmp_path, _blocks(bert_tok), _blocks(bert_tok)[:4], bert_tok, PretrainConfig(size="xxs", steps=1),
                 teacher=scratch_model("bert", "xxs", same_size), teacher_tokenizer=same_size, progress=False)
    llama = scratch_model("llama", "xxs", study_tokenizer("llama", TEXTS, vocab_size=len(bert_tok)))
    if llama.get_output_embeddings().weight.shape[0] == len(bert_tok):
        with pytest.raises(ConfigError, match="both"):
            KILoss(llama, student, KIConfig())


def _blocks(tok, n=48, size=12):
    blocks, _ = pack(tok, [[t] for t in TEXTS], size)
    return blocks[:n]


def test_pretrain_counts_flops_with_the_teacher_only_while_it_runs(tmp_path, bert_tok):
    blocks = _blocks(bert_tok)
    teacher = scratch_model("bert", "xxs", bert_tok, seed=3)
    cfg = PretrainConfig(size="xs", steps=6, batch_size=4, eval_every=2, mixed_precision="no", warmup_steps=1)
    model, res = pretrain(tmp_path, blocks, blocks[:8], bert_tok, cfg, teacher=teacher, ki=KIConfig(ki_steps=3),
                          progress=False)
    n, nt, tokens_per_step = matmul_params(model), matmul_params(teacher), 4 * 12
    steps_with_teacher = 3  # alpha = 1, 2/3, 1/3 at steps 0, 1, 2; 0 from step 3 on
    last = res.curve[-1]
    assert last["tokens"] == 6 * tokens_per_step
    assert last["teacher_flops"] == 2 * nt * tokens_per_step * steps_with_teacher
    assert last["flops"] == 6 * n * tokens_per_step * 6 + last["teacher_flops"]
    assert [c["step"] for c in res.curve] == [2, 4, 6]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-2", "step-4", "step-6"]  # all kept
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all("flops" in x and "tokens" in x for x in lines)
    from transformers import AutoModelForMaskedLM

    again = AutoModelForMaskedLM.from_pretrained(tmp_path / "model")
    emb = again.bert.embeddings.word_embeddings.weight
    torch.testing.assert_close(emb, model.bert.embeddings.word_embeddings.weight)


def test_pretrain_resumes_mid_ki_to_the_uninterrupted_weights(tmp_path, bert_tok, monkeypatch):
    blocks = _blocks(bert_tok)
    teacher = scratch_model("bert", "xxs", bert_tok, seed=3)
    cfg = PretrainConfig(size="xxs", steps=6, batch_size=4, eval_every=2, mixed_precision="no", warmup_steps=1)
    ki = KIConfig(ki_steps=5)
    full, full_res = pretrain(tmp_path / "a", blocks, blocks[:8], bert_tok, cfg, teacher=teacher, ki=ki, progress=False)

    calls = {"n": 0}
    original = KILoss.__call__

    def crash(self, model, batch, step):
        calls["n"] += 1
        if calls["n"] == 4:  # during step 3, after the step-2 checkpoint, while the teacher still runs
            raise KeyboardInterrupt
        return original(self, model, batch, step)

    monkeypatch.setattr(KILoss, "__call__", crash)
    with pytest.raises(KeyboardInterrupt):
        pretrain(tmp_path / "b", blocks, blocks[:8], bert_tok, cfg, teacher=teacher, ki=ki, progress=False)
    monkeypatch.setattr(KILoss, "__call__", original)
    resumed, res = pretrain(tmp_path / "b", blocks, blocks[:8], bert_tok, cfg, teacher=teacher, ki=ki, progress=False)
    assert res.resumed_from == 2
    assert res.curve == [{**c, "seconds": r["seconds"]} for c, r in zip(full_res.curve, res.curve)]
    for (k, p), (_, q) in zip(full.named_parameters(), resumed.named_parameters()):
        torch.testing.assert_close(p, q, msg=k)


def test_a_folder_with_another_runs_checkpoints_is_refused(tmp_path, bert_tok):
    blocks = _blocks(bert_tok)
    cfg = PretrainConfig(size="xxs", steps=2, batch_size=4, eval_every=2, mixed_precision="no", warmup_steps=1)
    pretrain(tmp_path, blocks, blocks[:8], bert_tok, cfg, progress=False)
    _, again = pretrain(tmp_path, blocks, blocks[:8], bert_tok, cfg, progress=False)  # same settings: resumed
    assert again.resumed_from == 2
    with pytest.raises(ConfigError, match="other settings"):
        pretrain(tmp_path, blocks, blocks[:8], bert_tok, PretrainConfig(size="xs", steps=2, batch_size=4,
                                                                        eval_every=2), progress=False)


def test_compute_to_reach_interpolates_between_evaluations():
    curve = [(1.0, 5.0), (2.0, 4.0), (3.0, 3.0)]
    assert compute_to_reach(curve, 3.5) == pytest.approx(2.5)
    assert compute_to_reach(curve, 6.0) == 1.0
    assert compute_to_reach(curve, 2.0) is None
    assert math.isclose(compute_to_reach(curve, 3.0), 3.0)


# --- selective masking ---------------------------------------------------------------------------------------------

class _KeywordClassifier(torch.nn.Module):
    """P(positive) = sigmoid(6·count(keyword) − 3): a classifier whose important tokens are known."""

    def __init__(self, keyword: int):
        super().__init__()
        self.keyword, self.w = keyword, torch.nn.Parameter(torch.ones(1))

    def forward(self, input_ids, attention_mask=None):
        from types import SimpleNamespace

        count = ((input_ids == self.keyword) & (attention_mask.bool() if attention_mask is not None else True)).sum(-1)
        pos = self.w * (6.0 * count.float() - 3.0)
        return SimpleNamespace(logits=torch.stack([torch.zeros_like(pos), pos], -1))


@pytest.fixture(scope="module")
def char_tok():
    from plmkit.testing import tiny_tokenizer

    return tiny_tokenizer(chat=False)


def test_buffer_rule_finds_the_keyword(char_tok):
    from plmkit.pretrain.selective_masking import SelectiveMaskConfig, token_importance

    g = char_tok.convert_tokens_to_ids("g")
    clf = _KeywordClassifier(g)
    texts, labels = ["xgzb", "gxg", "xzb"], [1, 1, 0]
    ref = token_importance(clf, char_tok, texts, labels, SelectiveMaskConfig(rule="reference"))
    # "xgzb": the buffer [x, g] recovers the sentence's P(positive); "gxg": only the second g reaches P(2 g's);
    # "xzb" (negative): every one-token buffer already scores as the whole sentence, so the reference rule marks all
    assert ref.important == [[False, True, False, False], [False, False, True], [True, True, True]]
    delta = token_importance(clf, char_tok, texts, labels, SelectiveMaskConfig(rule="delta"))
    # delta: each g raises P(positive) by more than 0.01 over the buffer before it; nothing moves P(negative)
    assert delta.important == [[False, True, False, False], [True, False, True], [False, False, False]]
    wrong = token_importance(clf, char_tok, ["xzb"], [1])  # misclassified sentences are not labelled
    assert wrong.ids == [] and wrong.sentences_seen == 1
    assert ref.flops > 0


def test_stop_words_are_never_important(char_tok):
    from plmkit.pretrain.selective_masking import token_importance

    a = char_tok.convert_tokens_to_ids("a")  # "a" is an English stop word
    res = token_importance(_KeywordClassifier(a), char_tok, ["xaz"], [1])
    assert res.important == [[False, False, False]]


def test_apply_mask_is_80_10_10_on_the_chosen_positions_only(char_tok):
    from plmkit.pretrain.masking import apply_mask

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 40, (64, 128), generator=g)
    chosen = torch.rand(ids.shape, generator=g) < 0.15
    inputs, labels = apply_mask(ids, chosen, char_tok, g)
    assert torch.equal(labels != -100, chosen) and torch.equal(labels[chosen], ids[chosen])
    assert torch.equal(inputs[~chosen], ids[~chosen])
    n = int(chosen.sum())
    as_mask = int((inputs[chosen] == char_tok.mask_token_id).sum()) / n
    kept = int((inputs[chosen] == ids[chosen]).sum()) / n
    assert as_mask == pytest.approx(0.8, abs=0.02) and kept == pytest.approx(0.1 + 0.1 / len(char_tok), abs=0.02)


def test_masks_depend_on_seed_step_and_content_not_on_the_global_stream():
    from plmkit.pretrain.masking import batch_generator

    ids = torch.arange(12).reshape(2, 6)
    torch.manual_seed(1)
    a = torch.rand(3, generator=batch_generator(ids, 5, 0))
    torch.manual_seed(2)
    assert torch.equal(a, torch.rand(3, generator=batch_generator(ids, 5, 0)))
    assert not torch.equal(a, torch.rand(3, generator=batch_generator(ids, 6, 0)))
    assert not torch.equal(a, torch.rand(3, generator=batch_generator(ids + 1, 5, 0)))


def test_selective_masks_take_at_most_the_rate_top_scored_first_and_save(tmp_path, bert_tok):
    from plmkit.pretrain.selective_masking import (SelectiveMaskConfig, TokenTagger, load_masked, save_masked,
                                                   selective_masks)

    tagger = TokenTagger(scratch_model("bert", "xxs", bert_tok))
    cat = bert_tok.convert_tokens_to_ids("cat")
    with torch.no_grad():  # score = the token state's first coordinate; make "cat" score highest by its embedding
        tagger.head.weight.zero_()
        tagger.head.weight[0, 0] = 1.0
        tagger.head.bias.fill_(0.0)
    texts = TEXTS[:20]
    masked = selective_masks(tagger, bert_tok, texts, SelectiveMaskConfig(mask_rate=0.15))
    st = masked.stats
    assert st["mask_rate"] <= 0.15 and st["sequences"] == 20
    for ids, lab in zip(masked.input_ids, masked.labels):
        n_text = len(ids) - 2
        assert sum(x != -100 for x in lab) <= int(0.15 * n_text)
        assert lab[0] == lab[-1] == -100  # [CLS] / [SEP] never
    assert st["share_mask"] + st["share_random"] + st["share_kept"] == pytest.approx(1.0)
    save_masked(masked, tmp_path / "m")
    back = load_masked(tmp_path / "m")
    assert [r["input_ids"] for r in back] == masked.input_ids
    assert json.loads((tmp_path / "m" / "stats.json").read_text())["sequences"] == 20
    assert cat is not None


def test_tagger_learns_the_labels_and_only_its_head_trains(tmp_path, bert_tok):
    from plmkit.pretrain.selective_masking import Importance, TokenTagger, train_tagger

    enc = scratch_model("bert", "xxs", bert_tok)
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    tagger = TokenTagger(enc)
    ids = [bert_tok(t, add_special_tokens=False)["input_ids"] for t in TEXTS[:24]]
    cat = bert_tok.convert_tokens_to_ids("cat")
    imp = Importance(ids=ids, important=[[x == cat for x in s] for s in ids])
    from plmkit.pretrain.selective_masking import SelectiveMaskConfig

    res = train_tagger(tagger, bert_tok, imp, tmp_path, SelectiveMaskConfig(tagger_steps=150, tagger_lr=1e-2))
    assert res.train_accuracy > 0.95 and 0 < res.positive_rate < 0.2
    for k, v in enc.state_dict().items():
        assert torch.equal(v, before[k]), k
    tagger.save(tmp_path / "tagger")
    again = TokenTagger(enc).load(tmp_path / "tagger")
    torch.testing.assert_close(again.head.weight, tagger.head.weight)
