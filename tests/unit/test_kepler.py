"""KEPLER: scoring and loss against hand computations, negative filtering, batching, training,
the link-prediction evaluator (by hand and against PyKEEN), splits, and save/load."""
import json
import math

import pytest
import torch

from plmkit.cli import main
from plmkit.data.kg import DescribedKG, KGSplit, KGVocab, sample_subgraph, split_inductive, split_transductive
from plmkit.errors import ConfigError, PlmkitError
from plmkit.eval.lm import lm_loss, masked_lm_loss
from plmkit.eval.ranking import link_prediction
from plmkit.knowledge.kepler import (
    KEPLER,
    KEPLERCollator,
    KEPLERConfig,
    NegativeSampler,
    TransEScorer,
    kepler_loss,
    load_embeddings,
    save_embeddings,
    train_frozen_transe,
    train_kepler,
    transe_score,
)
from plmkit.knowledge.kepler_run import (
    evaluation_triples,
    kepler_evaluate,
    kepler_predict,
    load_model,
    read_descriptions,
    save_model,
    to_pykeen,
    warm_start_relations,
)
from plmkit.testing import tiny_model, tiny_tokenizer
from plmkit.train import TrainConfig
from plmkit.train.heads import fit_lm_head, lm_collate


def _graph(n: int = 24, seed: int = 0) -> list[tuple[str, str, str]]:
    g = torch.Generator().manual_seed(seed)
    out = {(f"e{i}", f"r{i % 3}", f"e{(i * 5 + 1) % n}") for i in range(n)}
    for _ in range(2 * n):
        h, t = torch.randint(n, (2,), generator=g).tolist()
        if h != t:
            out.add((f"e{h}", f"r{int(torch.randint(3, (1,), generator=g))}", f"e{t}"))
    return sorted(out)


def _described(inductive: bool = False) -> DescribedKG:
    triples = _graph()
    split = split_inductive(triples, 0.2, 0.2) if inductive else split_transductive(triples, 0.1, 0.1)
    ents = {e for h, _, t in triples for e in (h, t)}
    return DescribedKG(split, {e: f"entity {e[1:]} is thing {e}" for e in ents},
                       {f"r{i}": f"relation {i}" for i in range(3)}, "toy")


def _tiny_kepler(config: KEPLERConfig | None = None, relations: int = 3) -> KEPLER:
    return KEPLER(tiny_model("bert"), relations, config or KEPLERConfig())


# --- scoring and loss -----------------------------------------------------------------------------

def test_transe_score_by_hand():
    h, r, t = torch.tensor([0.0, 0.0]), torch.tensor([0.0, 0.0]), torch.tensor([3.0, 4.0])
    assert transe_score(h, r, t, gamma=4.0, p=2) == pytest.approx(4 - 5)
    assert transe_score(h, r, t, gamma=4.0, p=1) == pytest.approx(4 - 7)
    assert transe_score(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), torch.tensor([1.0, 1.0]), 4.0) == 4.0


def test_kepler_loss_by_hand():
    def ls(x):
        return math.log(1 / (1 + math.exp(-x)))

    pos, neg = torch.tensor([2.0, -1.0]), torch.tensor([[1.0, 3.0], [0.0, -2.0]])
    want = (-(ls(2) + ls(-1)) / 2 - ((ls(-1) + ls(-3)) / 2 + (ls(0) + ls(2)) / 2) / 2) / 2
    assert kepler_loss(pos, neg).item() == pytest.approx(want, rel=1e-6)
    assert kepler_loss(torch.zeros(1), torch.zeros(1, 1)).item() == pytest.approx(math.log(2))


def test_config_validates_and_round_trips(tmp_path):
    c = KEPLERConfig(gamma=6.0, pooling="mean", relation_descriptions=True)
    assert KEPLERConfig.from_json(c.to_json()) == c
    c.to_json(tmp_path / "c.json")
    assert KEPLERConfig.from_json(tmp_path / "c.json") == c
    with pytest.raises(ConfigError, match="pooling"):
        KEPLERConfig(pooling="max")
    with pytest.raises(ConfigError, match="unknown KEPLERConfig keys"):
        KEPLERConfig.from_dict({"gama": 4.0})


# --- negatives and batches ------------------------------------------------------------------------

def test_filtered_negatives_never_form_known_triples():
    # (0, 0, t) is true for every t except 4; a filtered tail corruption of (0, 0, 1) must pick 4.
    known = torch.tensor([[0, 0, t] for t in range(4)] + [[h, 0, 1] for h in range(1, 4)])
    s = NegativeSampler(range(5), known, filtered=True, seed=3)
    heads, tails = s.corrupt(torch.tensor([[0, 0, 1]] * 6), n=3)
    assert (tails == 4).all() and (heads == 4).all()
    again = s.corrupt(torch.tensor([[0, 0, 1]] * 6), n=3)
    assert torch.equal(again[0], heads) and torch.equal(again[1], tails)  # a function of the batch and seed
    unfiltered = NegativeSampler(range(5), known, filtered=False, seed=3).corrupt(torch.tensor([[0, 0, 1]] * 50), 3)
    assert (unfiltered[1] != 4).any()  # without filtering, true triples do appear as negatives


def test_collator_shares_rows_and_points_at_the_right_descriptions():
    tok = tiny_tokenizer(chat=False)
    desc = [f"entity {i}" for i in range(6)]
    ids = tok(desc)["input_ids"]
    triples = torch.tensor([[0, 0, 1], [1, 1, 2], [2, 0, 0]])
    cfg = KEPLERConfig(negatives=2)
    collate = KEPLERCollator(tok, ids, NegativeSampler(range(6), triples), cfg)
    batch = collate([{"triple": tuple(t), "text": tok("some text here")["input_ids"]} for t in triples.tolist()])
    ke = batch["ke"]
    assert ke["input_ids"].shape[0] <= 6  # each entity's description once
    for row, ent in ((ke["heads"][0], 0), (ke["tails"][0], 1), (ke["tails"][1], 2)):
        got = ke["input_ids"][row][ke["attention_mask"][row].bool()].tolist()
        assert got == ids[ent]
    assert ke["neg_heads"].shape == (3, 2) and ke["neg_tails"].shape == (3, 2)
    assert (batch["lm"]["labels"] != -100).any()


def test_ke_loss_matches_entity_by_entity_computation():
    torch.manual_seed(0)
    tok = tiny_tokenizer(chat=False)
    model = _tiny_kepler(KEPLERConfig(negatives=2, pooling="mean"))
    desc = [f"thing number {i} of the toy graph" for i in range(8)]
    ids = tok(desc)["input_ids"]
    triples = torch.tensor([[0, 1, 2], [3, 2, 4], [5, 0, 6]])
    batch = KEPLERCollator(tok, ids, NegativeSampler(range(8), triples), model.config)(
        [{"triple": tuple(t), "text": None} for t in triples.tolist()])
    ke = batch["ke"]
    model.eval()
    loss = model.ke_loss(ke)
    vec = model.embed_texts(tok, desc)  # each description encoded in its own padding context
    row_entity = _row_entities(ke, ids)  # which entity each description row of the batch holds
    rel = model.relation_embeddings.weight
    h, t, r = vec[triples[:, 0]], vec[triples[:, 2]], rel[triples[:, 1]]
    pos = transe_score(h, r, t, 4.0)
    nh, nt = vec[row_entity[ke["neg_heads"]]], vec[row_entity[ke["neg_tails"]]]
    neg = torch.cat([transe_score(nh, r[:, None], t[:, None], 4.0), transe_score(h[:, None], r[:, None], nt, 4.0)], 1)
    assert loss.item() == pytest.approx(kepler_loss(pos, neg).item(), rel=1e-4)


def _row_entities(ke, ids) -> torch.Tensor:
    rows = []
    for row in range(ke["input_ids"].shape[0]):
        got = ke["input_ids"][row][ke["attention_mask"][row].bool()].tolist()
        rows.append(ids.index(got))
    return torch.tensor(rows)


# --- training -------------------------------------------------------------------------------------

def _train_tiny(tmp_path, config: KEPLERConfig, steps: int = 12, texts=("a short passage of text to mask",) * 4,
                relation_lr: float | None = None):
    tok = tiny_tokenizer(chat=False)
    model = _tiny_kepler(config)
    desc = [f"entity {i} of the toy graph" for i in range(24)]
    vocab = KGVocab.from_triples(_graph())
    triples = vocab.encode(_graph())
    res = train_kepler(model, tok, [desc[int(e[1:])] for e in vocab.entities], triples,
                       TrainConfig(out_dir=str(tmp_path), max_steps=steps, batch_size=8, lr=3e-3, progress=False,
                                   resume=False, log_every=1),
                       texts=list(texts), relation_texts=["relation a", "relation b", "relation c"],
                       relation_lr=relation_lr)
    return model, res


def test_training_is_deterministic_and_lowers_the_loss(tmp_path):
    _, a = _train_tiny(tmp_path / "a", KEPLERConfig(), steps=30)
    _, b = _train_tiny(tmp_path / "b", KEPLERConfig(), steps=30)
    assert a.losses == b.losses
    assert sum(a.losses[-5:]) < sum(a.losses[:5])


def test_relation_table_has_its_own_learning_rate(tmp_path):
    torch.manual_seed(0)
    before = _tiny_kepler().relation_embeddings.weight.clone()  # the same init as inside _train_tiny
    frozen_table, _ = _train_tiny(tmp_path / "a", KEPLERConfig(), steps=3, relation_lr=0.0)
    assert torch.equal(frozen_table.relation_embeddings.weight, before)
    moved, _ = _train_tiny(tmp_path / "b", KEPLERConfig(), steps=3, relation_lr=1e-2)
    assert not torch.equal(moved.relation_embeddings.weight, before)


def test_relation_description_variant_trains_the_encoder_only(tmp_path):
    model, res = _train_tiny(tmp_path, KEPLERConfig(relation_descriptions=True, lm_weight=0.0), steps=4)
    assert len(res.losses) == 4
    with pytest.raises(ConfigError, match="relation"):
        model.relation_vectors()  # needs the tokenizer and the descriptions
    vecs = model.relation_vectors(tiny_tokenizer(chat=False), ["relation a", "relation b", "relation c"])
    assert vecs.shape == (3, 32)


def test_frozen_baseline_learns_only_relations(tmp_path):
    from plmkit.knowledge.kepler import FrozenTransE

    ents = torch.randn(24, 8, generator=torch.Generator().manual_seed(0))
    triples = KGVocab.from_triples(_graph()).encode(_graph())
    start = FrozenTransE(ents, 3, seed=0).relation_embeddings.weight.detach().clone()  # what training starts from
    m = train_frozen_transe(ents, triples, 3, TrainConfig(out_dir=str(tmp_path), max_steps=5, batch_size=8,
                                                          lr=1e-2, progress=False, resume=False, seed=0))
    assert torch.equal(m.entity_vectors, ents)
    moved = (m.relation_embeddings.weight.detach() - start).norm(dim=1)
    assert (moved > 1e-4).all()  # every relation vector was trained, not just drawn


def test_warm_start_fits_relations_on_the_current_embeddings(tmp_path):
    tok = tiny_tokenizer(chat=False)
    model = _tiny_kepler()
    model.eval()
    vocab = KGVocab.from_triples(_graph())
    desc = [f"entity {e} of the toy graph" for e in vocab.entities]
    triples = vocab.encode(_graph())
    encoder_before = {n: p.clone() for n, p in model.lm.named_parameters()}
    warm_start_relations(model, tok, desc, triples, steps=40, out_dir=tmp_path)
    assert all(torch.equal(p, encoder_before[n]) for n, p in model.lm.named_parameters())
    ents = model.embed_texts(tok, desc)
    neg_h, neg_t = NegativeSampler(range(len(desc)), triples, seed=5).corrupt(triples, 4)

    def ke_loss(rel):
        h, r, t = ents[triples[:, 0]], rel[triples[:, 1]], ents[triples[:, 2]]
        neg = torch.cat([transe_score(ents[neg_h], r[:, None], t[:, None], 4.0),
                         transe_score(h[:, None], r[:, None], ents[neg_t], 4.0)], 1)
        return kepler_loss(transe_score(h, r, t, 4.0), neg).item()

    rel = model.relation_embeddings.weight.detach()
    assert ke_loss(rel) < ke_loss(torch.zeros_like(rel))  # fitted relations separate true from corrupted triples


def test_fit_lm_head_trains_only_the_head(tmp_path):
    tok = tiny_tokenizer(chat=False)
    lm = tiny_model("bert")
    base_before = {n: p.clone() for n, p in lm.bert.named_parameters()}
    head_before = lm.cls.predictions.transform.dense.weight.clone()
    fit_lm_head(lm, tok, ["some text to learn a head on"] * 16, tmp_path, steps=3, batch_size=4, progress=False)
    assert all(torch.equal(p, base_before[n]) for n, p in lm.bert.named_parameters())
    assert not torch.equal(lm.cls.predictions.transform.dense.weight, head_before)
    assert all(p.requires_grad for p in lm.parameters())  # restored


def test_sparse_mlm_loss_equals_the_models_own_loss():
    tok = tiny_tokenizer(chat=False)
    lm = tiny_model("bert")
    torch.manual_seed(0)
    batch = lm_collate(tok, causal=False, mlm_probability=0.3)([{"input_ids": tok("masking some of this text")["input_ids"]},
                                                                 {"input_ids": tok("and this")["input_ids"]}])
    with torch.no_grad():
        assert lm_loss(lm, batch).item() == pytest.approx(lm(**batch).loss.item(), rel=1e-5)
    a = masked_lm_loss(lm, tok, ["one passage of text", "another passage"], seed=1)
    assert a == masked_lm_loss(lm, tok, ["one passage of text", "another passage"], seed=1)


# --- evaluation -----------------------------------------------------------------------------------

def test_link_prediction_by_hand_with_ties_filtering_and_candidates():
    # 4 entities, 1 relation. Scores fixed by lookup: tails of (0, 0) score [0, 5, 3, 3]; heads of (0, 2) [2, 2, 9, 1].
    tail_scores = torch.tensor([0.0, 5.0, 3.0, 3.0])
    head_scores = torch.tensor([2.0, 2.0, 9.0, 1.0])
    triples = [(0, 0, 2)]
    st = lambda h, r: tail_scores.expand(len(h), -1)  # noqa: E731
    sh = lambda r, t: head_scores.expand(len(t), -1)  # noqa: E731
    # unfiltered: tail 2 ties with 3, below 1 -> optimistic 2, pessimistic 3, realistic 2.5;
    # head 0 ties with 1, below 2 -> realistic 2.5
    m = link_prediction(st, sh, triples, triples, 4)
    assert m["tail"]["MR"] == 2.5 and m["head"]["MR"] == 2.5
    # the query's own entity first: tails of (0, 0) rank entity 0 last (0); heads of (0, 2) rank entity 2 first (1)
    assert (m["tail"]["query_entity_first"], m["head"]["query_entity_first"], m["both"]["query_entity_first"]) == \
        (0.0, 1.0, 0.5)
    tied = link_prediction(lambda h, r: torch.tensor([[5.0, 5.0, 3.0, 3.0]]), sh, triples, triples, 4)
    assert tied["tail"]["query_entity_first"] == 0.0  # a tie at the top is not "first"
    # filtering (0, 0, 1) as another true tail removes entity 1 from the tail ranking -> 1.5
    m = link_prediction(st, sh, triples, triples + [(0, 0, 1)], 4)
    assert m["tail"]["MR"] == 1.5 and m["both"]["MR"] == 2.0 and m["both"]["n"] == 2
    # candidates {0, 2}: only those compete -> tail rank 1, head rank 1 (2 beats 0? no: head 0 vs entity 2 at 9)
    m = link_prediction(st, sh, triples, triples, 4, candidates=[0, 2])
    assert m["tail"]["MR"] == 1.0 and m["head"]["MR"] == 2.0
    assert m["both"]["MRR"] == pytest.approx((1 + 0.5) / 2) and m["both"]["Hits@1"] == 0.5
    with pytest.raises(ValueError, match="candidates"):
        link_prediction(st, sh, triples, triples, 4, candidates=[0, 1])


def test_evaluator_matches_pykeen_on_a_fixture_with_ties():
    from pykeen.evaluation import RankBasedEvaluator
    from pykeen.models import TransE
    from pykeen.triples import TriplesFactory

    from plmkit.knowledge.baselines import pykeen_metrics

    graph = _described()
    vocab = graph.vocab
    tf = TriplesFactory(vocab.encode(graph.split.train), entity_to_id=vocab.entity_id, relation_to_id=vocab.relation_id)
    torch.manual_seed(0)
    model = TransE(triples_factory=tf, embedding_dim=4, random_seed=0)
    with torch.no_grad():  # a few entities share a vector, so ties occur and realistic ranks matter
        w = model.entity_representations[0]._embeddings.weight
        w[1:6] = w[0]
    test = vocab.encode(graph.split.test)
    ev = evaluation_triples(graph, vocab, "test")
    pk = RankBasedEvaluator().evaluate(model, test, additional_filter_triples=[vocab.encode(graph.split.train),
                                                                             vocab.encode(graph.split.valid)],
                                       batch_size=8, use_tqdm=False)
    ours = link_prediction(lambda h, r: model.score_t(torch.stack([h, r], 1)),
                           lambda r, t: model.score_h(torch.stack([r, t], 1)),
                           test, ev["filter"], len(vocab))
    for side in ("head", "tail", "both"):
        theirs = pykeen_metrics(pk, side)
        for key in ("MR", "MRR", "Hits@1", "Hits@3", "Hits@10", "n"):
            assert ours[side][key] == pytest.approx(theirs[key], rel=1e-5), (side, key)


def test_scorer_heads_and_tails_agree_with_transe_score():
    ents, rels = torch.randn(5, 3), torch.randn(2, 3)
    s = TransEScorer(ents, rels, gamma=4.0, p=2.0)
    tails = s.tails(torch.tensor([1]), torch.tensor([0]))[0]
    heads = s.heads(torch.tensor([0]), torch.tensor([3]))[0]
    for e in range(5):
        assert tails[e] == pytest.approx(transe_score(ents[1], rels[0], ents[e], 4.0).item(), abs=1e-5)
        assert heads[e] == pytest.approx(transe_score(ents[e], rels[0], ents[3], 4.0).item(), abs=1e-5)


# --- splits and graphs ----------------------------------------------------------------------------

def test_inductive_split_keeps_test_entities_out_of_training():
    triples = _graph(60)
    for sampling in ("snowball", "uniform"):
        s = split_inductive(triples, 0.2, 0.2, seed=1, sampling=sampling)
        assert s.inductive and s.test
        assert not s.entities("test") & s.entities("train")
        assert not s.entities("valid") & s.entities("train")
        assert not s.entities("valid") & s.entities("test")
    sub = sample_subgraph(triples, 20, seed=0)
    assert len({e for h, _, t in sub for e in (h, t)}) <= 20 and sub == sample_subgraph(triples, 20, seed=0)


def test_described_graph_and_vocab_round_trip(tmp_path):
    g = _described(inductive=True)
    g.save(tmp_path / "g")
    back = DescribedKG.load(tmp_path / "g")
    assert back.split.train == g.split.train and back.split.test == g.split.test and back.split.inductive
    assert back.descriptions == g.descriptions and back.relation_texts == g.relation_texts
    v = g.vocab
    v.save(tmp_path / "v")
    assert KGVocab.load(tmp_path / "v").entities == v.entities
    with pytest.raises(ValueError, match="no description"):
        DescribedKG(KGSplit([("a", "r", "b")], [], []), {"a": "x"}, {})


# --- save / load and the CLI ---------------------------------------------------------------------

def _run(tmp_path) -> tuple:
    tok = tiny_tokenizer(chat=False)
    graph = _described()
    vocab = graph.vocab
    model = _tiny_kepler(KEPLERConfig(gamma=5.0))
    ents, rels = model.embed_texts(tok, graph.entity_texts(vocab)), model.relation_vectors()
    run = tmp_path / "run"
    graph.save(run / "graph")
    save_embeddings(run / "embeddings", ents, rels, vocab, model.config)
    save_model(model, tok, run / "model")
    return run, graph, ents, rels


def test_embeddings_model_and_cli_eval_round_trip(tmp_path, capsys):
    run, graph, ents, rels = _run(tmp_path)
    vocab = graph.vocab
    e2, r2, v2, c2 = load_embeddings(run / "embeddings")
    assert torch.equal(e2, ents) and torch.equal(r2, rels) and v2.entities == vocab.entities and c2.gamma == 5.0
    back, tok2 = load_model(run / "model")
    assert torch.allclose(back.embed_texts(tok2, graph.entity_texts(vocab)), ents, atol=1e-5)
    assert torch.equal(back.relation_embeddings.weight, rels)

    m = kepler_evaluate(run)
    assert m["setting"] == "transductive" and m["both"]["n"] == 2 * len(graph.split.test)
    main(["kepler", "eval", "--run", str(run)])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("transductive test") and f"MRR {m['both']['MRR']:.4f}" in last
    with pytest.raises(ConfigError, match="inductive"):
        kepler_evaluate(run, inductive=True)
    with pytest.raises(SystemExit):
        main(["kepler", "eval", "--run", str(tmp_path / "nothing")])
    with pytest.raises(PlmkitError, match="kepler train"):
        load_embeddings(tmp_path / "nothing")


def test_inductive_evaluation_ranks_only_the_test_graph(tmp_path):
    graph = _described(inductive=True)
    vocab = graph.vocab
    ev = evaluation_triples(graph, vocab, "test")
    test_ids = {vocab.entity_id[e] for e in graph.split.entities("test")}
    assert set(ev["candidates"]) == test_ids
    assert {x for tr in ev["filter"] for x in (tr[0], tr[2])} <= test_ids


# --- pooling ---------------------------------------------------------------------------------------------


def test_pooling_defaults_fit_the_encoder_and_last_token_reads_real_tokens(tmp_path):
    from plmkit.knowledge.kepler import default_pooling

    assert _tiny_kepler().config.pooling == "cls"  # a masked-LM encoder: the paper's first token
    causal = tiny_model("llama")
    assert KEPLER(causal, 3).config.pooling == "mean"
    with pytest.raises(ConfigError, match="same vector"):
        KEPLER(causal, 3, KEPLERConfig(pooling="cls"))
    st = tmp_path / "st"  # a sentence-transformers folder declares its pooling
    (st / "1_Pooling").mkdir(parents=True)
    (st / "1_Pooling" / "config.json").write_text('{"pooling_mode_cls_token": false, "pooling_mode_mean_tokens": true}')
    enc = tiny_model("bert")
    enc.config._name_or_path = str(st)
    assert default_pooling(enc) == "mean"

    model = KEPLER(tiny_model("llama"), 3, KEPLERConfig(pooling="last")).eval()
    ids = torch.tensor([[5, 6, 7, 0, 0], [0, 0, 5, 6, 7]])  # the same text padded right and left
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1]])
    with torch.no_grad():
        hidden = model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        out = model.encode(ids, mask)
    torch.testing.assert_close(out, torch.stack([hidden[0, 2], hidden[1, 4]]))


def test_training_refuses_a_pooling_that_collapses_descriptions(tmp_path):
    tok = tiny_tokenizer()
    model = _tiny_kepler(KEPLERConfig(pooling="cls"))
    model.lm.base_model.embeddings.word_embeddings.weight.data.zero_()  # every token the same: one vector for all
    model.lm.base_model.embeddings.position_embeddings.weight.data.zero_()
    model.lm.base_model.embeddings.token_type_embeddings.weight.data.zero_()
    with pytest.raises(ConfigError, match="same embedding"):
        train_kepler(model, tok, ["a cat", "a dog", "the sea"], torch.tensor([[0, 0, 1], [1, 1, 2]]),
                     TrainConfig(out_dir=str(tmp_path), max_steps=1, batch_size=2))


# --- the MLM-only control ---------------------------------------------------------------------------------

def test_ke_weight_zero_trains_the_lm_objective_only(tmp_path):
    with pytest.raises(ConfigError, match="both 0"):
        KEPLERConfig(ke_weight=0.0, lm_weight=0.0)
    torch.manual_seed(0)
    before = _tiny_kepler().relation_embeddings.weight.clone()  # the same init as inside _train_tiny
    model, res = _train_tiny(tmp_path, KEPLERConfig(ke_weight=0.0), steps=3)
    assert torch.equal(model.relation_embeddings.weight, before)  # no KE gradient reaches the table
    assert all(math.isfinite(x) for x in res.losses)
    lm, ke = _lm_batch(), _ke_batch()
    assert torch.allclose(model(ke, lm), lm_loss(model.lm, lm))
    with pytest.raises(ConfigError, match="LM objective"):
        model(ke, None)


def _lm_batch() -> dict:
    tok = tiny_tokenizer(chat=False)
    torch.manual_seed(0)  # which tokens the collator masks
    return dict(lm_collate(tok, False, 0.5)([{"input_ids": tok("a passage of text to mask")["input_ids"]}] * 2))


def _ke_batch() -> dict:
    tok = tiny_tokenizer(chat=False)
    desc = tok.pad({"input_ids": [tok(f"entity {i}")["input_ids"] for i in range(3)]}, return_tensors="pt")
    return {"input_ids": desc["input_ids"], "attention_mask": desc["attention_mask"], "rels": torch.tensor([0]),
            "heads": torch.tensor([0]), "tails": torch.tensor([1]), "neg_heads": torch.tensor([[2]]),
            "neg_tails": torch.tensor([[2]])}


# --- using a run: embed, predict, PyKEEN export ---------------------------------------------------------

def test_predict_ranks_by_the_runs_transe_score_and_embeds_descriptions(tmp_path, capsys):
    run, graph, ents, rels = _run(tmp_path)
    vocab = graph.vocab
    h, r, _ = graph.split.train[0]
    rows = kepler_predict(run, r, head=h, k=5)
    scores = TransEScorer(ents, rels, 5.0).tails(torch.tensor([vocab.entity_id[h]]), torch.tensor([vocab.relation_id[r]]))[0]
    assert [x["label"] for x in rows] == [vocab.entities[i] for i in torch.topk(scores, 5).indices.tolist()]
    assert rows[0]["score"] == pytest.approx(scores.max().item(), abs=1e-4)
    known = {t for hh, rr, t in graph.split.all_triples() if (hh, rr) == (h, r)}
    assert all(x["known"] == (x["label"] in known) for x in rows)
    by_text = kepler_predict(run, r, head_text=graph.descriptions[h], k=5)  # the same description, re-embedded
    assert [x["label"] for x in by_text] == [x["label"] for x in rows]
    heads = kepler_predict(run, r, tail=h, k=3)
    hs = TransEScorer(ents, rels, 5.0).heads(torch.tensor([vocab.relation_id[r]]), torch.tensor([vocab.entity_id[h]]))[0]
    assert [x["label"] for x in heads] == [vocab.entities[i] for i in torch.topk(hs, 3).indices.tolist()]
    with pytest.raises(ConfigError, match="unknown entity"):
        kepler_predict(run, r, head="nobody")
    with pytest.raises(ConfigError, match="unknown relation"):
        kepler_predict(run, "no-such-relation", head=h)
    main(["kepler", "predict", "--run", str(run), "--relation", r, "--head", h, "-k", "2", "--json"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert [json.loads(x)["label"] for x in lines] == [x["label"] for x in rows[:2]]


def test_embed_new_entities_from_a_file(tmp_path, capsys):
    run, graph, ents, _ = _run(tmp_path)
    e0 = graph.vocab.entities[0]
    (tmp_path / "new.tsv").write_text(f"fresh\ta brand new entity\n{e0}\t{graph.descriptions[e0]}\n")
    (tmp_path / "plain.txt").write_text("only a description\n\nanother one\n")
    assert list(read_descriptions(tmp_path / "plain.txt")) == ["line1", "line3"]
    main(["kepler", "embed", "--run", str(run), "--descriptions", str(tmp_path / "new.tsv"), "--out",
          str(tmp_path / "emb")])
    assert "embedded 2 entities" in capsys.readouterr().out
    new, _, vocab, _ = load_embeddings(tmp_path / "emb")
    assert vocab.entities == ["fresh", e0]
    assert torch.allclose(new[1], ents[0], atol=1e-5)
    (tmp_path / "dup.tsv").write_text("a\tx\na\ty\n")
    with pytest.raises(ConfigError, match="twice"):
        read_descriptions(tmp_path / "dup.tsv")


def test_pykeen_export_scores_like_the_run(tmp_path):
    run, graph, ents, rels = _run(tmp_path)
    factory, model = to_pykeen(run)
    assert factory.num_triples == len(graph.split.train) and factory.entity_to_id == graph.vocab.entity_id
    hr = factory.mapped_triples[:4, :2]
    ours = TransEScorer(ents, rels, 5.0).tails(hr[:, 0], hr[:, 1])
    with torch.no_grad():
        theirs = model.score_t(hr)
    assert torch.allclose(theirs + 5.0, ours, atol=1e-4)


# --- Wikidata5M ------------------------------------------------------------------------------------------

def _wikidata5m_fixture(d):
    d.mkdir()
    tr = ["Q1\tP31\tQ5", "Q2\tP31\tQ5", "Q3\tP17\tQ4", "Q1\tP17\tQ4", "Q2\tP17\tQ9"]  # Q9 has no description
    (d / "wikidata5m_transductive_train.txt").write_text("\n".join(tr) + "\n")
    (d / "wikidata5m_transductive_valid.txt").write_text("Q3\tP31\tQ5\n")
    (d / "wikidata5m_transductive_test.txt").write_text("Q2\tP17\tQ4\n")
    (d / "wikidata5m_inductive_train.txt").write_text("Q1\tP31\tQ5\nQ2\tP31\tQ5\n")
    (d / "wikidata5m_inductive_valid.txt").write_text("Q3\tP17\tQ4\n")
    (d / "wikidata5m_inductive_test.txt").write_text("Q6\tP31\tQ7\n")
    text = {"Q1": "Douglas Adams was an English author .", "Q2": "Ada Lovelace was a mathematician .",
            "Q3": "Paris is a city .", "Q4": "France is a country .", "Q5": "A human being .",
            "Q6": "Ghent is a city in Belgium .", "Q7": "A city is a large settlement ."}
    (d / "wikidata5m_text.txt").write_text("".join(f"{k}\t{v}\n" for k, v in text.items()))
    (d / "wikidata5m_relation.txt").write_text("P31\tinstance of\tis a\nP17\tcountry\n")
    return text


def test_wikidata5m_loader_reads_the_release_layout(tmp_path):
    from plmkit.data.wikidata5m import wikidata5m_kg
    from plmkit.knowledge.kepler_run import load_kg

    text = _wikidata5m_fixture(tmp_path / "w5m")
    kg = wikidata5m_kg(tmp_path / "w5m")
    assert len(kg.split.train) == 4 and kg.split.valid == [("Q3", "P31", "Q5")]  # Q9's triple dropped
    assert kg.descriptions["Q1"] == text["Q1"] and "Q9" not in kg.descriptions
    assert kg.relation_texts == {"P31": "instance of", "P17": "country"} and not kg.split.inductive
    ind = load_kg(str(tmp_path / "w5m"), inductive=True)
    assert ind.split.inductive and ind.split.test == [("Q6", "P31", "Q7")]
    assert not ind.split.entities("test") & ind.split.entities("train")
    small = wikidata5m_kg(tmp_path / "w5m", max_train=2, seed=1, max_description_words=2)
    assert len(small.split.train) == 2 and small.split.train == wikidata5m_kg(tmp_path / "w5m", max_train=2,
                                                                               seed=1).split.train
    assert all(len(v.split()) <= 2 for v in small.descriptions.values())
    (tmp_path / "w5m" / "wikidata5m_transductive_test.txt").unlink()
    with pytest.raises(PlmkitError, match="wikidata5m_transductive_test.txt"):
        wikidata5m_kg(tmp_path / "w5m")
    (tmp_path / "w5m" / "wikidata5m_transductive_test.txt").write_text("Q1 P31 Q5\n")
    with pytest.raises(ConfigError, match="head<TAB>relation<TAB>tail"):
        wikidata5m_kg(tmp_path / "w5m")
