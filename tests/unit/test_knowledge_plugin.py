"""Knowledge Plugin pieces on tiny random models: pseudo-tokens before mentions, masks, labels, the mapper's files."""
import copy

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
