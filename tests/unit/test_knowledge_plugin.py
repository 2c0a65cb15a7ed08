"""Knowledge Plugin pieces on tiny random models: pseudo-tokens before mentions, masks, labels, the mapper's files."""
import copy
from dataclasses import dataclass

import pytest
import torch

from plmkit.errors import ConfigError, PlmkitError
from plmkit.knowledge.plugin import (Mapper, MapperConfig, attach, detach, embeddings_identity, insert_vectors,
                                     load_mapper, save_mapper)
from plmkit.testing import tiny_inputs, tiny_model


def test_insert_vectors_right_padding_masks_labels_and_types():
    embeds = torch.arange(2 * 4 * 2, dtype=torch.float).view(2, 4, 2)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    labels = torch.tensor([[5, 6, 7, 8], [9, 10, -100, -100]])
    types = torch.tensor([[0, 0, 1, 1], [0, 1, 0, 0]])
    v = torch.full((2,), -1.0)
    inputs, where = insert_vectors(embeds, mask, [[2, 0], [1]], [torch.stack([v, 2 * v]), v[None]], labels=labels,
                                   token_type_ids=types)
    assert inputs["inputs_embeds"].shape == (2, 6, 2)
    # row 0: [v2, t0, t1, v, t2, t3]; row 1: [t0, v, t1, pad, pad, pad]
    assert where.inserted.tolist() == [[True, False, False, True, False, False], [False, True, False, False, False, False]]
    assert where.index.tolist() == [[1, 2, 4, 5], [0, 2, 3, 4]]
    assert torch.equal(inputs["inputs_embeds"][0, 0], 2 * v) and torch.equal(inputs["inputs_embeds"][0, 3], v)
    assert torch.equal(inputs["inputs_embeds"][0, 4], embeds[0, 2])
    assert inputs["attention_mask"].tolist() == [[1] * 6, [1, 1, 1, 0, 0, 0]]
    assert inputs["labels"].tolist() == [[-100, 5, 6, -100, 7, 8], [9, -100, 10, -100, -100, -100]]
    assert inputs["token_type_ids"][0].tolist() == [0, 0, 0, 1, 1, 1]  # a pseudo-token takes its mention's type
    assert inputs["position_ids"][1].tolist()[:3] == [0, 1, 2]


def test_insert_vectors_keeps_left_padding_on_the_left():
    embeds = torch.randn(2, 3, 4)
    mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    inputs, where = insert_vectors(embeds, mask, [[2], []], [torch.ones(1, 4), None])
    assert inputs["attention_mask"].tolist() == [[0, 1, 1, 1], [0, 1, 1, 1]]
    assert where.index.tolist() == [[0, 1, 3], [1, 2, 3]]
    assert inputs["position_ids"].tolist() == [[0, 0, 1, 2], [0, 0, 1, 2]]
    with pytest.raises(ConfigError, match="positions"):
        insert_vectors(embeds, mask, [[3], []], [torch.ones(1, 4), None])


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_a_plug_without_entities_is_the_model_and_detach_restores_it(family):
    model = tiny_model(family).eval()
    x = tiny_inputs(model, pad_last=0)
    ref = model(**x).logits
    mapper = Mapper(MapperConfig(kg_dim=6, model_dim=32))
    attach(model, mapper, torch.randn(5, 6, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(model(**x).logits, ref)  # no plmkit_entities: the plain call
    assert torch.equal(model(**x, plmkit_entities=[[], []]).logits, ref)  # nothing to insert
    out = model(**x, plmkit_entities=[[(3, 2)], []]).logits
    assert out.shape[1] == ref.shape[1] + 1
    if family == "llama":  # causal: the tokens before the pseudo-token see nothing of it
        assert torch.allclose(out[0, :3], ref[0, :3], atol=1e-6)
        assert torch.allclose(out[1, :ref.shape[1]], ref[1], atol=1e-6)  # the other sequence only gains a pad
    assert not torch.allclose(out[0, 4:], ref[0, 3:])  # the mention and what follows read the entity
    assert detach(model) is mapper
    assert torch.equal(model(**x).logits, ref)


def test_zero_entity_vector_goes_in_as_the_mappers_bias():
    model = tiny_model("bert").eval()
    x = tiny_inputs(model, pad_last=0)
    mapper = Mapper(MapperConfig(kg_dim=6, model_dim=32))
    table = torch.zeros(3, 6)  # unknown entities: zero rows
    attach(model, mapper, table)
    emb = model.get_input_embeddings()(x["input_ids"])
    inputs, _ = insert_vectors(emb, x["attention_mask"], [[1], [1]], [mapper.net.bias[None]] * 2)
    want = model(**inputs).logits
    assert torch.allclose(model(**x, plmkit_entities=[[(1, 0)], [(1, 2)]]).logits, want, atol=1e-6)


def test_mapper_save_load_and_refusal_of_other_embeddings(tmp_path):
    mapper = Mapper(MapperConfig(kg_dim=4, model_dim=8, kind="mlp", hidden=16), seed=3)
    kg = embeddings_identity(["a", "b", "c"], "transe-wordnet")
    save_mapper(mapper, tmp_path / "m", kg)
    back = load_mapper(tmp_path / "m", kg)
    x = torch.randn(5, 4)
    assert torch.equal(back(x), mapper(x))
    with pytest.raises(ConfigError, match="other entity embeddings"):
        load_mapper(tmp_path / "m", embeddings_identity(["a", "b", "d"], "transe-geonames"))
    with pytest.raises(PlmkitError, match="mapper.json"):
        load_mapper(tmp_path)


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_map_tuning_trains_only_the_mapper(family, tmp_path):
    from plmkit.knowledge.plugin.maptune import MapTuneConfig, map_tune, mention_batch
    from plmkit.testing import tiny_tokenizer
    from plmkit.train import TrainConfig

    tok = tiny_tokenizer(chat=False)
    model = tiny_model(family)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    words = ["cat", "dog", "owl"]
    records = []
    for i, w in enumerate(words * 4):
        ids = tok(f"a {w} ran")["input_ids"]
        records.append({"input_ids": ids, "mentions": [(2, 5, words.index(w))]})
    batch = mention_batch(tok, records[:2], mlm=family == "bert")
    assert batch["labels"][0, 2:5].tolist() == records[0]["input_ids"][2:5]
    assert (batch["labels"][0, :2] == -100).all() and (batch["labels"][0, 5:] == -100).all()
    if family == "bert":
        assert (batch["input_ids"][0, 2:5] == tok.mask_token_id).all()
    table = torch.randn(3, 6, generator=torch.Generator().manual_seed(0))
    mapper = Mapper(MapperConfig(kg_dim=6, model_dim=32))
    m0 = {k: v.clone() for k, v in mapper.state_dict().items()}
    fresh = copy.deepcopy(mapper)
    map_tune(model, mapper, table, tok, records, TrainConfig(out_dir=str(tmp_path), max_steps=20, batch_size=4,
                                                             lr=1e-2, progress=False), MapTuneConfig(dropout=0.25))
    plug_state = {k for k in model.state_dict() if "plmkit_plug" in k}
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the model is untouched
    assert all(not torch.equal(v, mapper.state_dict()[k]) for k, v in m0.items())
    assert plug_state and all("mapper" in k for k in plug_state)
    assert all(m.p != 0.25 for m in model.modules() if isinstance(m, torch.nn.Dropout))  # dropout put back
    model.eval()
    full = mention_batch(tok, records, mlm=family == "bert")
    with torch.no_grad():
        tuned = model(**full).loss
        model.plmkit_plug.mapper = fresh
        untuned = model(**full).loss
    assert tuned < untuned  # the mention is easier to restore from the tuned mapper's pseudo-token


def _classifier(num_labels=2, seed=0, **overrides):
    from transformers import AutoModelForSequenceClassification

    from plmkit.testing import tiny_config

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        config = tiny_config("bert", num_labels=num_labels, **overrides)
        return AutoModelForSequenceClassification.from_config(config).eval()


@dataclass
class _M:  # a linked mention
    start: int
    end: int
    entity: str


def test_token_mentions_spans_rows_and_descriptions():
    from plmkit.knowledge.plugin.records import plug_entities, plug_table, token_mentions, with_descriptions
    from plmkit.testing import tiny_tokenizer

    class Table:
        ids = ["cat", "dog"]

        def __contains__(self, e):
            return e in self.ids

        def index(self, e):
            return self.ids.index(e)

    tok = tiny_tokenizer(chat=False)  # one piece per character
    texts = ["a cat and a yak", "dog"]
    mentions = [[_M(12, 15, "yak"), _M(2, 5, "cat")], [_M(0, 3, "dog")]]
    recs = token_mentions(tok, texts, mentions, Table())
    assert recs[0]["mentions"] == [(2, 5, 1), (12, 15, 0)]  # sorted; the unknown yak gets the zero row
    assert recs[1]["mentions"] == [(0, 3, 2)]
    assert token_mentions(tok, texts, mentions, Table(), keep_unknown=False)[0]["mentions"] == [(2, 5, 1)]
    assert token_mentions(tok, texts, mentions, Table(), max_length=4)[0]["mentions"] == []  # cut off: dropped
    assert plug_entities(recs[0]) == [(2, 1), (12, 0)]
    table = plug_table(torch.ones(2, 3))
    assert table.shape == (3, 3) and not table[0].any()
    described = with_descriptions(texts, mentions, {"cat": "a feline", "dog": "a canine"}.get)
    assert described == ["a (a feline) cat and a yak", "(a canine) dog"]
    with pytest.raises(ConfigError, match="mention lists"):
        token_mentions(tok, texts, mentions[:1], Table())


def test_controls_plug_what_they_say_and_leave_the_model_unplugged():
    from plmkit.knowledge.plugin.plug import ZeroMapper, control_setup, evaluate_controls, plug_collate, plugged

    model = _classifier()
    tok_ids = [[5, 6, 7, 8, 9], [5, 6, 7]]
    records = [{"input_ids": ids, "mentions": [(1, 3, r)], "label": r % 2} for ids, r in zip(tok_ids, (1, 2))]

    class Tok:
        pad_token_id, padding_side = 0, "right"

        def pad(self, rows, return_tensors="pt"):
            n = max(len(r["input_ids"]) for r in rows)
            return {"input_ids": torch.tensor([r["input_ids"] + [0] * (n - len(r["input_ids"])) for r in rows]),
                    "attention_mask": torch.tensor([[1] * len(r["input_ids"]) + [0] * (n - len(r["input_ids"]))
                                                    for r in rows])}

    batch = plug_collate(Tok())(records)
    assert batch["plmkit_entities"] == [[(1, 1)], [(1, 2)]] and batch["labels"].tolist() == [1, 0]
    mapper = Mapper(MapperConfig(kg_dim=4, model_dim=32))
    table = torch.cat([torch.zeros(1, 4), torch.randn(2, 4, generator=torch.Generator().manual_seed(1))])
    zero, same_table = control_setup("zero vector", mapper, table, 32)
    assert isinstance(zero, ZeroMapper) and not zero(table).any() and same_table is table
    _, random = control_setup("random vector", mapper, table, 32, seed=0)
    assert torch.allclose(random.norm(dim=1), table.norm(dim=1)) and not torch.allclose(random, table)
    assert control_setup("no plug", mapper, table, 32) is None
    with pytest.raises(ConfigError, match="unknown control"):
        control_setup("sparkle", mapper, table, 32)

    b = {k: v for k, v in plug_collate(Tok())(records).items() if k != "labels"}
    plain = model(**{k: v for k, v in b.items() if k != "plmkit_entities"}).logits
    with plugged(model, zero, table):
        zeroed = model(**b).logits
        emb = model.get_input_embeddings()(b["input_ids"])
        inputs, _ = insert_vectors(emb, b["attention_mask"], [[1], [1]], [torch.zeros(1, 32)] * 2)
        assert torch.allclose(zeroed, model(**inputs).logits, atol=1e-6)  # a zero vector at the mention
    assert not torch.allclose(zeroed, plain)  # the extra position alone moves the logits
    assert "plmkit_plug" not in model._modules  # detached after the block
    out = evaluate_controls(model, Tok(), records, mapper, table, controls=("no plug", "plug", "zero vector"),
                            score=lambda preds, recs: {"preds": preds})
    assert out["no plug"]["preds"] == plain.argmax(-1).tolist()
    assert out["zero vector"]["preds"] == zeroed.argmax(-1).tolist()
    assert "plmkit_plug" not in model._modules
    with pytest.raises(ConfigError, match="description_records"):
        evaluate_controls(model, Tok(), records, mapper, table, controls=("description",))


def test_task_map_tuning_trains_only_the_mapper(tmp_path):
    from plmkit.knowledge.plugin.plug import predict_classes, task_map_tune
    from plmkit.testing import tiny_tokenizer
    from plmkit.train import TrainConfig

    tok = tiny_tokenizer(chat=False)
    model = _classifier(initializer_range=0.2)  # weights large enough for the signal to reach the first token
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # the same text; only the entity tells the label
    records = [{"input_ids": tok("i saw it")["input_ids"], "mentions": [(6, 8, r)], "label": r - 1} for r in (1, 2)] * 8
    table = torch.cat([torch.zeros(1, 4), torch.eye(4)[:2] * 3])
    mapper = Mapper(MapperConfig(kg_dim=4, model_dim=32), seed=0)
    m0 = {k: v.clone() for k, v in mapper.state_dict().items()}
    task_map_tune(model, mapper, table, tok, records, TrainConfig(out_dir=str(tmp_path), max_steps=60, batch_size=8,
                                                                   lr=3e-2, progress=False), dropout=0.0)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert all(not torch.equal(v, mapper.state_dict()[k]) for k, v in m0.items())
    assert predict_classes(model, tok, records[:2]) == [0, 1]  # the mapper alone learnt to carry the label
    assert len(set(predict_classes(model, tok, records[:2], entities=False))) == 1
    detach(model)


def test_a_plug_on_a_prompt_tuned_model_counts_only_the_texts_tokens():
    from peft import PromptTuningConfig, TaskType, get_peft_model

    model = _classifier()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        peft_model = get_peft_model(model, PromptTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=3)).eval()
    x = tiny_inputs(model, pad_last=0)
    mapper = Mapper(MapperConfig(kg_dim=4, model_dim=32))
    table = torch.randn(3, 4, generator=torch.Generator().manual_seed(2))
    attach(peft_model, mapper, table)
    got = peft_model(**x, plmkit_entities=[[(2, 1)], [(0, 2)]]).logits
    emb = peft_model.get_input_embeddings()(x["input_ids"])
    inputs, _ = insert_vectors(emb, x["attention_mask"], [[2], [0]], [mapper(table[1:2]), mapper(table[2:3])])
    prompts = peft_model.get_prompt(batch_size=2)
    want = model(inputs_embeds=torch.cat([prompts, inputs["inputs_embeds"]], 1),
                 attention_mask=torch.cat([torch.ones(2, 3, dtype=torch.long), inputs["attention_mask"]], 1)).logits
    assert torch.allclose(got, want, atol=1e-5)
    assert detach(peft_model) is mapper


class _Entities:  # the part of EntityEmbeddings that records read
    ids = ["geo:a", "geo:b"]

    def __contains__(self, e):
        return e in self.ids

    def index(self, e):
        return self.ids.index(e)


_QROWS = [{"question": "who is ab?", "answer": "x", "subject": "geo:a", "subject_start": 7, "subject_end": 9,
           "relation": "r"},
          {"question": "who is b?", "answer": "yz", "subject": "geo:b", "subject_start": 7, "subject_end": 8,
           "relation": "r"}]


def test_question_records_put_the_subject_and_answer_where_they_are():
    from plmkit.knowledge.plugin.qa import few_shot_prefix, question_records
    from plmkit.testing import tiny_tokenizer

    tok = tiny_tokenizer(chat=False)
    prefix = few_shot_prefix(_QROWS, shots=1)
    assert prefix.startswith("Question: who is") and prefix.endswith("\n\n")
    recs = question_records(tok, _QROWS, _Entities(), prefix, with_answer=True)
    start = len(prefix) + len("Question: ") + 7  # one piece per character
    assert recs[0]["mentions"] == [(start, start + 2, 1)] and recs[1]["mentions"] == [(start, start + 1, 2)]
    a, e = recs[1]["answer_tokens"]
    assert tok.decode(recs[1]["input_ids"][a:e]) == " yz\n"
    described = question_records(tok, _QROWS, _Entities(), describe={"geo:a": "a place"}.get)
    assert tok.decode(described[0]["input_ids"]).startswith("question: who is (a place) ab?")
    assert all(r["mentions"] == [] for r in described)


def test_greedy_answers_match_generate_and_the_plug_goes_into_the_prompt():
    from plmkit.knowledge.plugin.qa import greedy_answers, question_records
    from plmkit.testing import tiny_tokenizer

    tok = tiny_tokenizer(chat=False)
    tok.padding_side = "left"
    model = tiny_model("llama").eval()
    recs = question_records(tok, _QROWS, _Entities())
    got = greedy_answers(model, tok, recs, entities=False, max_new_tokens=5)
    for rec, answer in zip(recs, got):  # one prompt at a time: no padding involved
        ids = torch.tensor([rec["input_ids"]])
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False,
                             pad_token_id=0, eos_token_id=None)
        assert answer == tok.decode(out[0, ids.shape[1]:]).strip().split("\n")[0].strip()
    mapper = Mapper(MapperConfig(kg_dim=4, model_dim=32))
    table = torch.randn(3, 4, generator=torch.Generator().manual_seed(0)) * 30
    attach(model, mapper, table)
    first = greedy_answers(model, tok, recs[:1], max_new_tokens=1)[0]
    emb = model.get_input_embeddings()(torch.tensor([recs[0]["input_ids"]]))
    pos = recs[0]["mentions"][0][0]
    inputs, _ = insert_vectors(emb, torch.ones(1, emb.shape[1], dtype=torch.long), [[pos]], [mapper(table[1:2])])
    detach(model)
    manual = model(**inputs).logits[0, -1].argmax().item()
    assert first == tok.decode([manual]).strip().split("\n")[0].strip()


def test_question_map_tuning_trains_only_the_mapper_on_the_answers(tmp_path):
    from plmkit.knowledge.plugin.qa import answer_collate, question_map_tune, question_records
    from plmkit.testing import tiny_tokenizer
    from plmkit.train import TrainConfig

    tok = tiny_tokenizer(chat=False)
    tok.padding_side = "left"
    model = tiny_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    recs = question_records(tok, _QROWS, _Entities(), with_answer=True) * 4
    batch = answer_collate(tok)(recs[:2])
    labelled = (batch["labels"] != -100).sum(1).tolist()
    assert labelled == [len(" x\n"), len(" yz\n")]
    mapper = Mapper(MapperConfig(kg_dim=4, model_dim=32))
    m0 = copy.deepcopy(mapper)
    table = torch.cat([torch.zeros(1, 4), torch.eye(4)[:2]])
    question_map_tune(model, mapper, table, tok, recs, TrainConfig(out_dir=str(tmp_path), max_steps=15, batch_size=4,
                                                                    lr=3e-2, progress=False), dropout=0.0)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    model.eval()
    full = answer_collate(tok)(recs)
    with torch.no_grad():
        tuned = model(**full).loss
        model.plmkit_plug.mapper = m0
        untuned = model(**full).loss
    assert tuned < untuned
    detach(model)
    with pytest.raises(ConfigError, match="with_answer"):
        question_map_tune(model, mapper, table, tok, question_records(tok, _QROWS, _Entities()),
                          TrainConfig(out_dir=str(tmp_path / "x"), max_steps=1))


def test_kg_parts_cut_the_joined_table_back_per_graph():
    from plmkit.knowledge.entities import EntityEmbeddings
    from plmkit.knowledge.plugin.study import kg_parts

    joined = EntityEmbeddings(["01-n", "geo:country:FR", "02-n"], torch.arange(6.0).view(3, 2))
    parts = kg_parts(joined)
    assert parts["wordnet"].ids == ["01-n", "02-n"] and parts["wordnet"].vectors.tolist() == [[0, 1], [4, 5]]
    assert parts["geonames"].ids == ["geo:country:FR"] and parts["geonames"].vectors.tolist() == [[2, 3]]
    assert set(kg_parts(EntityEmbeddings(["geo:x"], torch.ones(1, 2)))) == {"geonames"}


def test_token_spans_skip_the_space_a_byte_level_piece_carries():
    from plmkit.knowledge.plugin.records import token_spans

    text = "capital of Peru?"
    offsets = [(0, 7), (7, 10), (10, 15), (15, 16)]  # "capital", " of", " Peru", "?" (byte-level BPE style)
    assert token_spans(offsets, 11, 15, text) == (2, 3)
    assert token_spans(offsets, 11, 15) is None  # without the text, " Peru" starts before the mention
    assert token_spans([(0, 1), (1, 2), (2, 3)], 1, 3, "a b") == (2, 3)  # a space piece of its own is no part


def test_descriptions_go_before_a_task_marker_and_cuts_keep_every_relation():
    from plmkit.knowledge.plugin.records import with_descriptions
    from plmkit.knowledge.plugin.study import balanced

    out = with_descriptions(["we saw @cats@ here"], [[_M(8, 12, "cat")]], {"cat": "a feline"}.get, marks="@#$")
    assert out == ["we saw (a feline) @cats@ here"]
    rows = [{"relation": r, "i": i} for i, r in enumerate("aaaaabbc")]
    assert [r["relation"] for r in balanced(rows, 5)] == ["a", "b", "c", "a", "b"]
    assert balanced(rows, None) == rows
