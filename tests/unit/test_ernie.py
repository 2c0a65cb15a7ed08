"""ERNIE on tiny random encoders: identity when no knowledge flows, the fusion by hand, alignment, dEA, save/load."""
from dataclasses import dataclass

import pytest
import torch
from torch.nn import functional as F

from plmkit import arch, hooks
from plmkit.errors import ConfigError, PlmkitError
from plmkit.knowledge.ernie import (ERNIE, ERNIEClassifier, ERNIEConfig, FusedFFNIn, corrupt_entities, dea_loss,
                                    encode_with_entities, entity_collate, fine_tune, first_piece_entities,
                                    load_ernie, mark_mentions, predict, pretrain, save_ernie, scores, task_records,
                                    without_entities)
from plmkit.testing import tiny_inputs, tiny_model, tiny_tokenizer
from plmkit.train import TrainConfig, TuneConfig

FAMILIES = ["bert", "roberta", "electra"]


def _entity_ids(x):
    ids = torch.zeros_like(x["input_ids"])
    ids[0, 1], ids[0, 3], ids[1, 2] = 3, 7, 5
    return ids


def _ernie(family, init="normal", seed=0, t_layers=1):
    torch.manual_seed(123)  # only the entity table below; the model and ERNIE are seeded themselves
    vectors = torch.randn(9, 8)
    return ERNIE(tiny_model(family, head="lm").eval(), vectors, ERNIEConfig(t_layers=t_layers, entity_heads=2,
                                                                              fusion_init=init), seed=seed).eval()


@pytest.mark.parametrize("family", FAMILIES)
def test_no_entities_or_zero_fusion_is_the_plain_encoder(family):
    plain = tiny_model(family, head="lm").eval()
    x = tiny_inputs(plain)
    ref = plain(**x).logits
    zero = ERNIE(tiny_model(family, head="lm").eval(), torch.randn(9, 8), ERNIEConfig(t_layers=1, entity_heads=2)).eval()
    assert torch.equal(zero(**x, entity_ids=_entity_ids(x)).logits, ref)
    normal = _ernie(family)
    assert torch.equal(normal(**x).logits, ref)
    assert torch.equal(normal(**x, entity_ids=torch.zeros_like(x["input_ids"])).logits, ref)
    assert not torch.allclose(normal(**x, entity_ids=_entity_ids(x)).logits, ref)  # knowledge flows


def test_entities_change_only_the_tokens_above_the_t_encoder():
    e = _ernie("bert")
    x = tiny_inputs(e.model)
    with hooks.capture(e.model, ["blocks.0", "blocks.1"]) as plain_acts:
        e(**x)
    with hooks.capture(e.model, ["blocks.0", "blocks.1"]) as acts:
        e(**x, entity_ids=_entity_ids(x))
    assert torch.equal(acts["blocks.0"], plain_acts["blocks.0"])  # the T-encoder block never sees entities
    assert not torch.allclose(acts["blocks.1"], plain_acts["blocks.1"])


def test_fusion_and_entity_output_by_hand():
    e = _ernie("bert", t_layers=0)  # block 0's aggregator passes entities up (the top block's has no output)
    assert e.aggregators[0].out is not None and e.aggregators[1].out is None
    layer = arch.layers(e.model)[0]
    wrapper = layer.ffn_in
    assert isinstance(wrapper, FusedFFNIn)
    agg = wrapper.aggregator
    x = torch.randn(2, 5, layer.d_model)
    ids = torch.tensor([[0, 2, 0, 4, 0], [1, 0, 0, 0, 0]])
    ents, mask = e.entity_inputs(ids)
    with e.entities(ids):
        y = wrapper(x)
        attended = e.flow.attended
        h = torch.randn(2, 5, layer.d_ff)
        layer.ffn_out(h)
        e_out = e.flow.entities
    # entity self-attention by hand: heads of width 4 over the aligned entities, padding keys masked
    a = agg.attention
    q, k, v = a.qkv(ents).view(2, 5, 3, 2, 4).permute(2, 0, 3, 1, 4)
    s = q @ k.transpose(-1, -2) / 2.0
    s = s.masked_fill(~mask[:, None, None, :], float("-inf"))
    o = (s.softmax(-1) @ v).transpose(1, 2).reshape(2, 5, 8)
    want_att = F.layer_norm(ents + a.out(o), (8,), a.norm.weight, a.norm.bias, a.norm.eps)
    assert torch.allclose(attended, want_att, atol=1e-5)
    base = wrapper.base_layer
    want_y = x @ base.weight.T + base.bias + mask[..., None] * (attended @ agg.fuse.weight.T)
    assert torch.allclose(y, want_y, atol=1e-5)
    want_e = F.layer_norm(h @ agg.out.weight.T + agg.out.bias + attended, (8,), agg.norm.weight, agg.norm.bias,
                          agg.norm.eps) * mask[..., None]
    assert torch.allclose(e_out, want_e, atol=1e-5)
    assert torch.equal(want_y[0, 0], (x @ base.weight.T + base.bias)[0, 0])  # no entity there: plain FFN input


def test_arch_and_hooks_see_the_encoder_and_detach_restores_it():
    plain = tiny_model("roberta", head="lm").eval()
    x = tiny_inputs(plain)
    ref = plain(**x).logits
    e = ERNIE(plain, torch.randn(9, 8), ERNIEConfig(t_layers=0, entity_heads=2, fusion_init="normal")).eval()
    assert all(isinstance(layer.ffn_in, FusedFFNIn) for layer in arch.layers(e.model))
    assert arch.layers(e.model)[0].ffn_in_weight().shape == (48, 32)  # weight views resolve through the wrap
    with hooks.capture(e.model, ["blocks.1.ffn.neurons"]) as acts:
        e(**x, entity_ids=_entity_ids(x))
    assert acts["blocks.1.ffn.neurons"].shape[-1] == 48
    model = e.detach()
    assert not arch.wrappers(model, FusedFFNIn)
    assert torch.equal(model(**x).logits, ref)


def test_refuses_causal_models_and_a_t_encoder_without_aggregators():
    with pytest.raises(ConfigError, match="bidirectional"):
        ERNIE(tiny_model("llama"), torch.randn(4, 8))
    with pytest.raises(ConfigError, match="no aggregator"):
        ERNIE(tiny_model("bert"), torch.randn(4, 8), ERNIEConfig(t_layers=2))
    with pytest.raises(ConfigError, match="divisible"):
        ERNIE(tiny_model("bert"), torch.randn(4, 6), ERNIEConfig(entity_heads=4))
    with pytest.raises(ConfigError, match="encoder-decoder"):
        ERNIE(tiny_model("t5"), torch.randn(4, 8))


@dataclass(frozen=True)
class M:
    start: int
    end: int
    entity: str


class Table:  # the part of EntityEmbeddings that alignment reads
    ids = ["cat", "mat", "dog"]

    def __contains__(self, entity):
        return entity in self.ids

    def index(self, entity):
        return self.ids.index(entity)


def test_entities_sit_on_the_first_word_piece():
    # pieces: [CLS] the | cat|s | sat | on | the | mat [SEP] (character offsets as a WordPiece tokenizer gives)
    offsets = [(0, 0), (0, 3), (4, 7), (7, 8), (9, 12), (13, 15), (16, 19), (20, 23), (0, 0)]
    mentions = [M(4, 8, "cat"), M(20, 23, "mat"), M(9, 12, "unknown")]
    rows = first_piece_entities(offsets, mentions, lambda e: Table().index(e) + 1 if e in Table() else 0)
    assert rows == [0, 0, 1, 0, 0, 0, 0, 2, 0]
    tok = tiny_tokenizer(chat=False)  # one piece per character
    recs = encode_with_entities(tok, ["a cat", "dog"], [[M(2, 5, "cat")], [M(0, 3, "dog")]], Table())
    assert recs[0]["entity_ids"] == [0, 0, 1, 0, 0] and recs[1]["entity_ids"] == [3, 0, 0]
    batch = entity_collate(tok)(recs)
    assert batch["entity_ids"].tolist() == [[0, 0, 1, 0, 0], [3, 0, 0, 0, 0]]


def test_mark_mentions_keeps_the_spans():
    text = "We flew from Paris to France."
    marked, spans = mark_mentions(text, [(22, 28), (13, 18)], "#$")
    assert marked == "We flew from $Paris$ to #France#."
    assert [marked[a:b] for a, b in spans] == ["France", "Paris"]
    with pytest.raises(ConfigError, match="overlap"):
        mark_mentions(text, [(13, 18), (15, 20)], "#$")


def test_dea_corruption_rates_measured():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 50, (400, 250), generator=g)
    out = corrupt_entities(ids, 49, 0.05, 0.15, torch.Generator().manual_seed(1))
    aligned = ids > 0
    dropped = (aligned & (out == 0)).sum() / aligned.sum()
    changed = (aligned & (out > 0) & (out != ids)).sum() / aligned.sum()
    assert abs(dropped - 0.15) < 0.005
    assert abs(changed - 0.05 * 48 / 49) < 0.004  # a random draw may hit the original entity
    assert torch.equal(out[~aligned], ids[~aligned])  # tokens without an entity never get one
    assert out.max() <= 49


def test_dea_loss_by_hand():
    e = _ernie("bert")
    hidden = torch.randn(1, 4, 32)
    ids = torch.tensor([[0, 5, 2, 5]])
    loss = dea_loss(e, hidden, ids)
    pred = e.entity_head(hidden[0, [1, 2, 3]])
    cands = e.entity_table[[2, 5]]
    want = F.cross_entropy(pred @ cands.T, torch.tensor([1, 0, 1]))
    assert torch.allclose(loss, want, atol=1e-6)
    assert dea_loss(e, hidden, torch.tensor([[0, 5, 0, 5]])).item() == 0.0


def test_save_and_load_give_the_same_outputs(tmp_path):
    e = _ernie("electra")
    x = tiny_inputs(e.model)
    ids = _entity_ids(x)
    want = e(**x, entity_ids=ids).logits
    save_ernie(e, tmp_path / "ernie", entity_ids=[f"e{i}" for i in range(9)])
    loaded, tok, names = load_ernie(tmp_path / "ernie")
    assert torch.equal(loaded(**x, entity_ids=ids).logits, want)
    assert names[3] == "e3" and tok is None
    from transformers import AutoModelForMaskedLM
    plain = AutoModelForMaskedLM.from_pretrained(tmp_path / "ernie").eval()  # the encoder, as plain transformers
    assert torch.equal(plain(**x).logits, e(**x).logits)
    with pytest.raises(PlmkitError, match="not an ERNIE folder"):
        load_ernie(tmp_path)


def test_pretraining_trains_aggregators_and_entity_head_not_the_table(tmp_path):
    tok = tiny_tokenizer(chat=False)
    model = tiny_model("bert", head="lm")
    e = ERNIE(model, torch.randn(3, 8, generator=torch.Generator().manual_seed(0)),
              ERNIEConfig(t_layers=1, entity_heads=2))
    texts = ["the cat sat on the mat", "a dog and a cat", "the mat and the dog"] * 4
    words = {"cat": "cat", "mat": "mat", "dog": "dog"}
    mentions = [[M(t.index(w), t.index(w) + 3, w) for w in words if w in t] for t in texts]
    recs = encode_with_entities(tok, texts, mentions, Table())
    table = e.entity_table.clone()
    fuse = e.aggregators[0].fuse.weight.clone()
    head = e.entity_head.dense.weight.clone()
    res = pretrain(e, tok, recs, TrainConfig(out_dir=str(tmp_path / "run"), max_steps=6, batch_size=4, lr=1e-2,
                                             progress=False, log_every=1))
    assert torch.equal(e.entity_table, table)
    assert not torch.equal(e.aggregators[0].fuse.weight, fuse)
    assert not torch.equal(e.entity_head.dense.weight, head)
    assert res.totals["entities"] > 0
    assert res.losses[-1] < res.losses[0]


def test_classifier_learns_from_entities_alone(tmp_path):
    """The label is the entity's, and the text never says it: only the entity vectors can tell the classes apart."""
    tok = tiny_tokenizer(chat=False)

    class Linker:  # links "thing" to whatever entity the row's gold says: the linker is told nothing
        def link(self, texts):
            return [[] for _ in texts]

    rows = [{"text": "I saw a thing there", "start": 8, "end": 13, "label": int(w == "dog"), "synset": w}
            for w in ("cat", "dog")] * 8
    recs = task_records(tok, rows, "typing", Table(), Linker(), entity_source="gold")
    assert recs[0]["input_ids"][8] == tok.convert_tokens_to_ids("@")  # the mention is marked
    assert recs[0]["entity_ids"][9] == 1 and recs[1]["entity_ids"][9] == 3  # gold entities on the first piece
    assert all(not any(r["entity_ids"]) for r in task_records(tok, rows, "typing", Table(), Linker()))
    vectors = torch.randn(3, 8, generator=torch.Generator().manual_seed(0))
    # block 0 fuses the entity into its token; block 1's attention carries it to the first token, which the head
    # reads (the top block's own fusion reaches no other token). Weights drawn at std 0.2 rather than 0.02, so the
    # signal crosses the two random blocks within 40 steps.
    encoder = tiny_model("bert", head="base", initializer_range=0.2)
    clf = ERNIEClassifier(ERNIE(encoder, vectors, ERNIEConfig(t_layers=0, entity_heads=2, dropout=0.0,
                                                              fusion_init="normal")), 2, multi_label=True)
    fine_tune(clf, tok, recs, tmp_path / "ft", TuneConfig(steps=40, batch_size=8, lr=1e-2, mixed_precision="no"))
    assert predict(clf, tok, recs[:2]) == [0, 1]
    bare = predict(clf, tok, without_entities(recs[:2]))
    assert bare[0] == bare[1]  # without entities the two texts are identical: one answer for both
    assert scores([0, 1, 1], [{"label": 0}, {"label": 1}, {"label": 0}]) == {"accuracy": 2 / 3, "macro_f1": 2 / 3,
                                                                             "n": 3}


def test_tuning_is_chosen_on_validation_and_never_reads_test(tmp_path):
    """The plain encoder under each candidate is scored on validation; a learning rate too small to learn loses."""
    from plmkit.data.entity_tasks import EntityTask
    from plmkit.knowledge.ernie.study import TuningChoice, select_tuning

    class Unread(list):
        def __getitem__(self, item):
            raise AssertionError("the test split was read")

    tok = tiny_tokenizer(chat=False)
    rows = [{"text": f"this one is {w}", "start": 0, "end": 4, "label": int(w == "good"), "synset": None}
            for w in ("good", "bad")]
    task = EntityTask("toy", ("bad", "good"), train=rows * 8, validation=rows * 2, test=Unread(rows))
    candidates = (TuningChoice("ce", 1e-9), TuningChoice("ce", 1e-2))
    best, tried = select_tuning(candidates, task, "typing", tokenizer=tok, entities=Table(), linker=None,
                                load_plain=lambda: tiny_model("bert", head="base", initializer_range=0.2),
                                tune=TuneConfig(steps=30, batch_size=8, mixed_precision="no"), work=tmp_path)
    assert best == candidates[1]
    assert [r["lr"] for r in tried] == [1e-9, 1e-2] and all(r["n"] == 4 and r["split"] == "validation" for r in tried)
    assert tried[1]["accuracy"] == 1.0 and tried[0]["accuracy"] <= 0.75
    with pytest.raises(ConfigError, match="bce"):
        TuningChoice("hinge", 1e-3)


def test_pretraining_texts_leave_out_held_out_sentences(monkeypatch):
    import plmkit.data.text as text
    from plmkit.knowledge.ernie.study import pretraining_texts

    docs = [("wordnet/x", ["cat: feline mammal; \"the cat sat on the mat\". dog: a canine; \"dogs bark at night\"."]),
            ("wiki/y", ["Paris is the capital and largest city of France, on the Seine river in the north."])]
    monkeypatch.setattr(text, "english_documents", lambda sources: docs)
    kept = pretraining_texts(10, exclude={"The cat sat on the mat"}, min_chars=10, max_chars=60)
    assert kept and not any("cat sat on the mat" in p for p in kept)
    assert any("Paris" in p for p in kept)
    assert len(pretraining_texts(10, min_chars=10, max_chars=60)) > len(kept)


def test_mlm_loss_on_masked_positions_equals_the_models_own():
    e = _ernie("bert")
    x = tiny_inputs(e.model)
    ids = _entity_ids(x)
    labels = x["input_ids"].masked_fill(torch.rand(x["input_ids"].shape, generator=torch.Generator().manual_seed(0))
                                        > 0.4, -100)
    full = e(**x, labels=labels, entity_ids=ids).loss
    hidden = e(**x, entity_ids=ids, encode_only=True)
    m = labels != -100
    assert torch.allclose(F.cross_entropy(arch.head(e.model)(hidden[m]), labels[m]), full, atol=1e-5)


def test_classifier_save_load_and_cli_errors(tmp_path, capsys):
    from plmkit import cli
    from plmkit.knowledge.ernie import load_classifier, save_classifier

    e = _ernie("bert")
    clf = ERNIEClassifier(e, 3, seed=1).eval()
    x = tiny_inputs(e.model)
    ids = _entity_ids(x)
    want = clf(x["input_ids"], x["attention_mask"], ids).logits
    save_classifier(clf, tmp_path / "clf", entity_ids=[f"e{i}" for i in range(9)], info={"task": "typing"})
    back, _, names, info = load_classifier(tmp_path / "clf")
    assert torch.equal(back(x["input_ids"], x["attention_mask"], ids).logits, want)
    assert info["task"] == "typing" and names[0] == "e0"
    for argv, says in ((["ernie", "eval", "--model", str(tmp_path)], "classifier.json"),
                       (["ernie", "finetune", "--ernie", str(tmp_path), "--task", "typing", "--out", str(tmp_path / "o")],
                        "not an ERNIE folder")):
        capsys.readouterr()
        with pytest.raises(SystemExit) as ex:
            cli.main(argv)
        err = capsys.readouterr().err
        assert ex.value.code == 2 and err.count("\n") == 1 and says in err, err
