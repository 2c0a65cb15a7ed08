"""plmkit.knowledge.entities: alias linking rules on a hand-made table, the WordNet and geonames linkers on real
sentences, embedding round trips (plmkit, OpenKE, PyKEEN, KEPLER) and the CLI."""
import json

import pytest
import torch

from plmkit import cli
from plmkit.errors import ConfigError, PlmkitError
from plmkit.knowledge.entities import (
    AliasLinker,
    AliasTable,
    EntityEmbeddings,
    KGEConfig,
    LinkerConfig,
    LinkSample,
    Mention,
    NERGatedLinker,
    combined_linker,
    evaluate_linker,
    fit_kge,
)
from plmkit.knowledge.entities.kge import neighbourhood

TABLE = AliasTable.from_pairs([
    ("new york", "NY", 3.0), ("new york", "NY-state", 1.0), ("york", "York", 1.0), ("new york city", "NYC", 1.0),
    ("city hall", "Hall", 1.0), ("cat", "Cat", 1.0), ("Paris", "Paris-FR", 3.0), ("Paris", "Paris-TX", 1.0),
    ("AIDS", "Disease", 1.0), ("aids", "Aid", 1.0), ("physical_object", "Object", 1.0), ("the", "The", 1.0),
    ("in", "Inch", 1.0), ("US", "USA", 1.0), ("ox", "Ox", 1.0), ("bank", "Bank-money", 1.0),
    ("bank", "Bank-river", 1.0), ("bank account", "Account", 1.0), ("bank account", "Account2", 4.0),
], names={"NYC": "New York City"}, kb="hand")


def spans(text, linker=None):
    return [(m.text, m.entity) for m in (linker or AliasLinker(TABLE)).link([text])[0]]


def test_leftmost_longest_non_overlapping():
    assert spans("I love New York City Hall and york.") == [("New York City", "NYC"), ("york", "York")]
    assert spans("new york is big") == [("new york", "NY")]


def test_word_boundaries():
    assert spans("concatenate cats; a cat, cat-like (cat)") == [("cat", "Cat"), ("cat", "Cat"), ("cat", "Cat")]
    assert spans("Yorkshire newyork") == []


def test_case_rules():
    # lowercase aliases match in any case; an alias with a capital only as written
    assert spans("Cat CAT paris PARIS Paris") == [("Cat", "Cat"), ("CAT", "Cat"), ("Paris", "Paris-FR")]
    # on the same span the exact-case alias wins over the case-folded one
    assert spans("AIDS and aids") == [("AIDS", "Disease"), ("aids", "Aid")]


def test_offsets_scores_and_multiword():
    text = "The physical object\nnear New\tYork."
    found = AliasLinker(TABLE).link([text])[0]
    assert [(m.start, m.end, m.entity) for m in found] == [(4, 19, "Object"), (25, 33, "NY")]
    assert all(text[m.start:m.end] == m.text for m in found)
    assert found[1].score == pytest.approx(0.75)  # NY's prior share: 3 / (3 + 1)
    assert Mention(0, 1, "x", "e", 1.0) == Mention(0, 1, "x", "e", 1.0)


def test_threshold_drops_after_the_span_is_chosen():
    linker = AliasLinker(TABLE, LinkerConfig(threshold=0.8))
    # "new york" (0.75) is dropped; its span is not handed to "york" inside it
    assert spans("new york and york", linker) == [("york", "York")]
    assert spans("bank account", linker) == [("bank account", "Account2")]  # 4 / 5 = 0.8 is kept
    assert spans("the bank", linker) == []  # bank: 0.5
    with pytest.raises(ConfigError):
        LinkerConfig(threshold=1.5)


def test_stop_words_and_min_length():
    assert spans("the ox in the US") == [("ox", "Ox")]
    assert spans("the ox in the US", AliasLinker(TABLE, LinkerConfig(stop_words=False))) == [
        ("the", "The"), ("ox", "Ox"), ("in", "Inch"), ("the", "The"), ("US", "USA")]
    assert spans("the ox", AliasLinker(TABLE, LinkerConfig(min_length=3))) == []


def test_link_takes_a_list():
    linker = AliasLinker(TABLE)
    assert linker.link([]) == [] and linker.link(["", "cat"]) == [[], [Mention(0, 3, "cat", "Cat", 1.0)]]
    with pytest.raises(ConfigError, match="list of texts"):
        linker.link("cat")
    assert linker.name("NYC") == "New York City" and linker.name("Cat") == "Cat"
    assert linker.candidates("new york") == [("NY", 0.75), ("NY-state", 0.25)]


def test_union_mixes_tables_by_share_and_round_trips(tmp_path):
    a = AliasTable.from_pairs([("Paris", "wn:paris", 1.0), ("Paris", "wn:prince", 1.0)], kb="a")
    b = AliasTable.from_pairs([("Paris", "geo:paris", 1e6), ("Lyon", "geo:lyon", 5e5)], kb="b")
    u = a.union(b)
    # a's shares (1/2, 1/2) and b's (1) are added, each table weighing 1
    assert u.aliases["Paris"] == [("geo:paris", 1.0), ("wn:paris", 0.5), ("wn:prince", 0.5)]
    assert u.kb == "a+b" and u.aliases["Lyon"] == [("geo:lyon", 1.0)]
    linker = combined_linker([a, b], weights=[3.0, 1.0])
    assert linker.link(["Paris"])[0][0] == Mention(0, 5, "Paris", "wn:paris", 0.375)  # 1.5 / (1.5 + 1.5 + 1)
    AliasTable.load(TABLE.save(tmp_path / "t.json"))  # no error
    back = AliasTable.load(tmp_path / "t.json")
    assert back.aliases == TABLE.aliases and back.names == TABLE.names and back.kb == "hand"
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(PlmkitError, match="AliasTable.save"):
        AliasTable.load(tmp_path / "bad.json")


def test_evaluate_linker_counts():
    samples = [
        LinkSample("a cat here", 2, 5, "Cat"),  # found, exact, right
        ("in new york city", 7, 15, "NY"),  # found (overlaps "new york city"), not exact, wrong entity
        ("the bank", 4, 8, "Bank-river"),  # found, exact, wrong (Bank-money is first on a tie)
        ("nothing here", 0, 7, "X"),  # not found
    ]
    r = evaluate_linker(AliasLinker(TABLE), samples)
    assert r["n"] == 4 and r["coverage"] == 0.75 and r["exact_span"] == 0.5
    assert r["precision"] == pytest.approx(1 / 3) and r["recall"] == 0.25
    assert r["mentions_per_text"] == 0.75


def test_ner_gating_names_how_to_install_a_missing_pipeline():
    pytest.importorskip("spacy")
    with pytest.raises(PlmkitError, match="spacy download no_such_pipeline"):
        NERGatedLinker(AliasLinker(TABLE), model="no_such_pipeline")


@pytest.mark.real
def test_ner_gating_keeps_named_places_and_drops_common_words():
    from plmkit.knowledge.entities import kb_linker

    linker = kb_linker("both")
    text = "We flew from Paris to Japan, and the bank near the river was closed."
    plain = {text[m.start:m.end] for m in linker.link([text])[0]}
    gated = {text[m.start:m.end] for m in NERGatedLinker(linker).link([text])[0]}
    assert {"Paris", "Japan", "bank", "river"} <= plain
    assert gated == {"Paris", "Japan"}


@pytest.mark.real
def test_wordnet_linker_on_real_sentences():
    from plmkit.knowledge.entities import wordnet_linker

    linker = wordnet_linker()
    text = "The geese flew over the fire trucks near a physical object and two Dogs."
    found = [(m.text, m.entity) for m in linker.link([text])[0]]
    assert found == [("geese", "01855672-n"), ("fire trucks", "03345487-n"), ("physical object", "00002684-n"),
                     ("Dogs", "02084071-n")]
    dog = linker.link(["dog"])[0][0]
    assert dog.score == pytest.approx(1 / sum(1 / k for k in range(1, 8)))  # first of dog's 7 senses: 1 / H_7
    assert linker.name("02084071-n") == "dog"


@pytest.mark.real
def test_geonames_linker_on_real_sentences():
    from plmkit.knowledge.entities import geonames_linker

    linker = geonames_linker()
    text = "Paris is the capital of France, in Europe; Luxembourg pays in Euro."
    found = [(m.text, m.entity) for m in linker.link([text])[0]]
    assert found == [("Paris", "geo:city:2988507"), ("France", "geo:country:FR"), ("Europe", "geo:continent:EU"),
                     ("Luxembourg", "geo:country:LU"), ("Euro", "geo:currency:EUR")]
    # the country outranks the city of the same name
    assert [e for e, _ in linker.candidates("Luxembourg")][0] == "geo:country:LU"
    assert linker.link(["Sao Paulo"])[0][0].entity == linker.link(["São Paulo"])[0][0].entity


# --- embeddings ------------------------------------------------------------------------------------------

def _emb(complex_=False):
    g = torch.Generator().manual_seed(0)
    return EntityEmbeddings(["a", "b", "c"], torch.randn(3, 4, generator=g), ["r", "s"],
                            torch.randn(2, 4, generator=g), {"model": "test", "complex": complex_})


def test_embeddings_api():
    e = _emb()
    assert len(e) == 3 and e.dim == 4 and e.index("b") == 1 and "c" in e and "z" not in e
    vecs, found = e.lookup(["c", "z", "a"])
    assert found.tolist() == [True, False, True]
    assert torch.equal(vecs[0], e.vectors[2]) and torch.equal(vecs[1], torch.zeros(4))
    sub = e.subset(["c", "z", "a"])
    assert sub.ids == ["c", "a"] and torch.equal(sub.vectors, e.vectors[[2, 0]]) and sub.relation_ids == ["r", "s"]
    with pytest.raises(KeyError):
        e.index("z")
    with pytest.raises(ConfigError):
        EntityEmbeddings(["a", "a"], torch.zeros(2, 3))
    with pytest.raises(ConfigError):
        EntityEmbeddings(["a"], torch.zeros(2, 3))


def test_embeddings_save_load_round_trip(tmp_path):
    e = _emb()
    e.save(tmp_path / "emb")
    assert json.loads((tmp_path / "emb" / "entity_to_id.json").read_text()) == {"a": 0, "b": 1, "c": 2}
    back = EntityEmbeddings.load(tmp_path / "emb")
    assert back.ids == e.ids and back.relation_ids == e.relation_ids
    assert torch.equal(back.vectors, e.vectors) and torch.equal(back.relation_vectors, e.relation_vectors)
    assert back.meta == {"model": "test", "complex": False, "dim": 4}
    assert not list((tmp_path / "emb").glob("*.pt")) and not list(tmp_path.glob(".emb*"))


def test_loading_a_folder_that_is_not_one_says_what_to_pass(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(PlmkitError) as err:
        EntityEmbeddings.load(tmp_path / "x")
    msg = str(err.value)
    assert "\n" not in msg and "holds no entity embeddings" in msg and "from_kepler" in msg


def test_openke_round_trip(tmp_path):
    e = _emb()
    e.to_openke(tmp_path)
    lines = (tmp_path / "entity2id.txt").read_text().splitlines()
    assert lines == ["3", "a\t0", "b\t1", "c\t2"]
    assert len((tmp_path / "entity2vec.vec").read_text().splitlines()[0].split("\t")) == 4
    back = EntityEmbeddings.from_openke(tmp_path / "entity2id.txt", tmp_path / "entity2vec.vec",
                                        tmp_path / "relation2id.txt", tmp_path / "relation2vec.vec")
    assert back.ids == e.ids and torch.equal(back.vectors, e.vectors)  # %.9g round-trips float32 exactly
    assert back.relation_ids == ["r", "s"] and torch.equal(back.relation_vectors, e.relation_vectors)
    (tmp_path / "bad2id.txt").write_text("5\na\t0\n")
    with pytest.raises(PlmkitError, match="announces 5 ids"):
        EntityEmbeddings.from_openke(tmp_path / "bad2id.txt", tmp_path / "entity2vec.vec")


TRIPLES = [("a", "r", "b"), ("b", "r", "c"), ("c", "s", "a"), ("a", "s", "d"), ("d", "r", "a"), ("e", "s", "b")]


@pytest.mark.parametrize("name", ["TransE", "RotatE"])
def test_pykeen_export_and_import_keep_scores(name, tmp_path):
    import numpy as np
    from pykeen import models
    from pykeen.training import SLCWATrainingLoop
    from pykeen.triples import TriplesFactory

    tf = TriplesFactory.from_labeled_triples(np.array(TRIPLES))
    cls = getattr(models, name)
    model = cls(triples_factory=tf, embedding_dim=4, random_seed=0)
    SLCWATrainingLoop(model=model, triples_factory=tf).train(tf, num_epochs=1, batch_size=3, use_tqdm=False)
    emb = EntityEmbeddings.from_pykeen(model, tf, {"kg": "toy"})
    assert emb.meta["complex"] == (name == "RotatE") and emb.dim == (8 if name == "RotatE" else 4)
    emb.save(tmp_path / "e")
    back = EntityEmbeddings.load(tmp_path / "e")
    ent_init, rel_init = back.pykeen_initializers()
    tf2 = back.triples_factory(TRIPLES)
    kwargs = {"entity_constrainer": None} if name == "TransE" else {}
    model2 = cls(triples_factory=tf2, embedding_dim=4, entity_initializer=ent_init, relation_initializer=rel_init,
                 random_seed=1, **kwargs)
    assert tf2.entity_to_id == tf.entity_to_id and tf2.relation_to_id == tf.relation_to_id
    hrt = torch.tensor([[h, r, t] for h in range(5) for r in range(2) for t in range(5)])  # every triple
    assert torch.allclose(model.score_hrt(hrt), model2.score_hrt(hrt), atol=1e-5)
    with pytest.raises(ConfigError, match="no embedding"):
        back.triples_factory([("a", "r", "zz")])


def test_kepler_import(tmp_path):
    from plmkit.data.kg import KGVocab
    from plmkit.knowledge.kepler import KEPLERConfig, save_embeddings

    ents, rels = torch.randn(3, 5), torch.randn(2, 5)
    save_embeddings(tmp_path / "run" / "embeddings", ents, rels, KGVocab(["x", "y", "z"], ["p", "q"]),
                    KEPLERConfig(gamma=6.0))
    e = EntityEmbeddings.from_kepler(tmp_path / "run")
    assert e.ids == ["x", "y", "z"] and torch.equal(e.vectors, ents) and e.relation_ids == ["p", "q"]
    assert e.meta["model"] == "KEPLER" and e.meta["gamma"] == 6.0
    with pytest.raises(PlmkitError, match="kepler train"):
        EntityEmbeddings.from_kepler(tmp_path / "nothing")


def test_neighbourhood_and_kge_config():
    assert neighbourhood(TRIPLES, {"e"}) == [("e", "s", "b")]
    assert neighbourhood(TRIPLES, {"c"}) == [("b", "r", "c"), ("c", "s", "a")]
    with pytest.raises(ConfigError, match="transe, rotate"):
        KGEConfig(model="distmult")


def test_fit_kge_is_seeded():
    config = KGEConfig("transe", dim=4, epochs=2, batch_size=4, negatives=2)
    a = fit_kge(TRIPLES, config, seed=3, kg="toy")
    b = fit_kge(TRIPLES, config, seed=3, kg="toy")
    assert a.ids == ["a", "b", "c", "d", "e"] and a.relation_ids == ["r", "s"]
    assert torch.equal(a.vectors, b.vectors) and torch.equal(a.relation_vectors, b.relation_vectors)
    assert a.meta["model"] == "TransE" and a.meta["triples"] == 6 and a.meta["fit_metrics"]["n"] == 6


# --- CLI -------------------------------------------------------------------------------------------------

def test_cli_help_and_errors(capsys, tmp_path):
    for argv in (["link", "--help"], ["kge", "train", "--help"]):
        with pytest.raises(SystemExit):
            cli.main(argv)
        assert "--threshold" in capsys.readouterr().out or argv[0] == "kge"
    with pytest.raises(SystemExit) as e:
        cli.main(["kge", "train", "--kg", "geonames", "--out", str(tmp_path / "o"), "--entities",
                  str(tmp_path / "none.txt")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "one entity id a line" in err
    with pytest.raises(SystemExit):
        cli.main(["link", "--threshold", "2", "a cat"])
    err = capsys.readouterr().err
    assert err.startswith("plmkit: error: ") and "[0, 1]" in err and err.count("\n") == 1
