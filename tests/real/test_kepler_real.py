"""KEPLER on the real assets: WordNet described graphs, MiniLM, the CLI end to end."""
import torch

from plmkit.cli import main
from plmkit.data.kg import DescribedKG
from plmkit.data.wordnet import wordnet_kg
from plmkit.knowledge.kepler import KEPLER, KEPLERConfig, load_embeddings, train_frozen_transe
from plmkit.knowledge.kepler_run import evaluate_embeddings, load_model
from plmkit.train import TrainConfig


def test_wordnet_inductive_graph_keeps_test_entities_unseen():
    g = wordnet_kg(2000, inductive=True)
    assert g.split.inductive and len(g.split.test) > 50
    assert not g.split.entities("test") & g.split.entities("train")
    cat = [d for e, d in g.descriptions.items() if e in g.split.entities("test")]
    assert cat and all(": " in d for d in cat)  # "lemma, lemma: gloss"


def test_frozen_description_embeddings_rank_unseen_entities_far_above_chance(tmp_path):
    """The inductive claim in miniature: text gives usable embeddings to entities never trained on."""
    g = wordnet_kg(2000, inductive=True)
    vocab = g.vocab
    model, tok = KEPLER.from_pretrained("minilm", len(vocab.relations), KEPLERConfig(pooling="mean"))
    ents = model.embed_texts(tok, g.entity_texts(vocab))
    fitted = train_frozen_transe(ents, vocab.encode(g.split.train), len(vocab.relations),
                                 TrainConfig(out_dir=str(tmp_path), max_steps=100, batch_size=128, lr=1e-2,
                                             progress=False, resume=False), model.config)
    result = evaluate_embeddings(g, vocab, ents, fitted.relation_embeddings.weight.detach(), model.config)
    m, n = result["both"], result["candidates"]
    assert n == len(g.split.entities("test"))  # inductive: only the test graph's entities compete
    chance_mrr = sum(1 / r for r in range(1, n + 1)) / n
    assert m["MRR"] > 5 * chance_mrr and m["Hits@10"] > 0.2


def test_cli_trains_and_evaluates_a_run(tmp_path, capsys):
    run = tmp_path / "run"
    main(["kepler", "train", "--kg", "wordnet", "--encoder", "minilm", "--out", str(run), "--entities", "300",
          "--steps", "3", "--head-steps", "2", "--warm-start-steps", "5"])
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"run: {run.resolve()}"
    ents, rels, vocab, config = load_embeddings(run / "embeddings")
    assert ents.shape == (len(vocab), 384) and rels.shape == (len(vocab.relations), 384)
    assert torch.isfinite(ents).all()
    model, tok = load_model(run / "model")  # the trained encoder with its MLM head, reloadable
    texts = DescribedKG.load(run / "graph").entity_texts(vocab)[:5]
    assert torch.allclose(model.embed_texts(tok, texts), ents[:5], atol=1e-4)
    main(["kepler", "eval", "--run", str(run), "--split", "test"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("transductive test (both,") and "MRR" in last and "Hits@10" in last
