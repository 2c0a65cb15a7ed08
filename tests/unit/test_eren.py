"""EREN (plmkit.editing): the notebook store, retrieval, the reader's relevance/fallback logic, the scorer."""
import math
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from plmkit.editing import EREN, ERENConfig, ExactIndex, Notebook, Reader, SentenceEncoder
from plmkit.editing.benchmark import best_threshold
from plmkit.errors import ConfigError, PlmkitError
from plmkit.eval.editing import edit_scores, harmonic_mean
from plmkit.testing import tiny_model, tiny_tokenizer

NOTES = ["The capital of France is Lyon.", "The currency of Peru is the Euro.", "Osaka is a city in Chile."]
ENCODER_CODE = ("from plmkit.editing import SentenceEncoder; from plmkit.testing import tiny_model, tiny_tokenizer\n"
                "enc = SentenceEncoder(tiny_model('bert', head='base'), tiny_tokenizer(), name='tiny-bert')\n")


@pytest.fixture(scope="module")
def encoder():
    return SentenceEncoder(tiny_model("bert", head="base"), tiny_tokenizer(), name="tiny-bert")


@pytest.fixture(scope="module")
def reader():
    return Reader(tiny_model("llama"), tiny_tokenizer(), max_new_tokens=4)


def _run(code: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-c", ENCODER_CODE + textwrap.dedent(code), *args], env=env,
                            stdout=subprocess.PIPE, text=True)


# ---- the store ------------------------------------------------------------------------------
def test_notebook_add_list_update_remove(tmp_path, encoder):
    nb = Notebook(tmp_path / "n.db", encoder)
    ids = nb.add(NOTES)
    assert [n.text for n in nb.notes()] == NOTES and len(nb) == 3 and ids == [1, 2, 3]
    nb.update(ids[1], "The currency of Peru is the Yen.")
    assert nb.get(ids[1]).text == "The currency of Peru is the Yen."
    assert nb.remove(ids[0]) == 1
    assert [n.id for n in nb.notes()] == ids[1:]
    with pytest.raises(PlmkitError, match="no note with id"):
        nb.remove([ids[2], 99])
    assert len(nb) == 2  # nothing was removed by the failed call
    with pytest.raises(PlmkitError, match="non-empty"):
        nb.add(["fine", "  "])
    assert len(nb) == 2


def test_search_is_exact_inner_product_and_follows_incremental_edits(tmp_path, encoder):
    nb = Notebook(tmp_path / "n.db", encoder)
    for text in NOTES:  # one add at a time: the index grows by rows
        nb.add(text)
    vecs = encoder.encode(NOTES)
    queries = ["What is the capital of France?", "Peru money?"]
    expected = encoder.encode(queries) @ vecs.T
    for q, hits, row in zip(queries, nb.search(queries, k=3), expected):
        assert [h.note.text for h in hits] == [NOTES[i] for i in row.argsort(descending=True)]
        assert [h.score for h in hits] == pytest.approx(sorted(row.tolist(), reverse=True), abs=1e-5)
    for text, hits in zip(NOTES, nb.search(NOTES, k=1)):
        assert hits[0].note.text == text and hits[0].score == pytest.approx(1.0, abs=1e-5)
    gone = nb.notes()[0]
    nb.remove(gone.id)
    assert all(h.note.id != gone.id for row in nb.search(NOTES, k=3) for h in row)
    nb.update(nb.notes()[0].id, "Kyoto is a city in Japan.")
    assert nb.search(["Kyoto is a city in Japan."], k=1)[0][0].note.text == "Kyoto is a city in Japan."
    assert len(nb.search(["x"], k=10)[0]) == 2


def test_exact_index_adds_rows_not_features():
    index = ExactIndex(4)
    index.add([1, 2], torch.eye(4)[:2])
    index.add([7], torch.eye(4)[3:])
    assert index.vectors.shape == (3, 4)
    ids, scores = index.search(torch.eye(4)[[3, 0]], 2)
    assert ids[:, 0].tolist() == [7, 1] and scores[:, 0].tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="size 4"):
        index.add([9], torch.ones(1, 5))


def test_another_connection_sees_new_notes(tmp_path, encoder):
    a = Notebook(tmp_path / "n.db", encoder)
    a.add(NOTES[:2])
    assert len(a.search(["q"], k=5)[0]) == 2  # index built
    b = Notebook(tmp_path / "n.db", encoder)
    b.add(NOTES[2])
    b.remove(1)
    texts = {h.note.text for h in a.search(["q"], k=5)[0]}
    assert texts == set(NOTES[1:])
    a.add("Lima is a city in Peru.")  # a's own write after b's: the index is rebuilt, not patched
    assert len(a.search(["q"], k=5)[0]) == 3


def test_notes_persist_across_processes(tmp_path, encoder):
    db = tmp_path / "n.db"
    proc = _run("from plmkit.editing import Notebook; import sys\n"
                "print(Notebook(sys.argv[1], enc).add(['Kyoto is a city in Japan.', 'Lima is a city in Peru.']))",
                str(db))
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0 and out.strip() == "[1, 2]"
    nb = Notebook(db, encoder)
    assert [n.text for n in nb.notes()] == ["Kyoto is a city in Japan.", "Lima is a city in Peru."]
    assert nb.search(["Lima is a city in Peru."], k=1)[0][0].note.id == 2


def test_killed_writer_loses_nothing_committed_and_leaves_no_partial_batch(tmp_path, encoder):
    db = tmp_path / "n.db"
    proc = _run("""
        from plmkit.editing import Notebook; import sys
        nb = Notebook(sys.argv[1], enc)
        for i in range(10_000):
            nb.add([f'note {i} {j}' for j in range(50)])
            print(len(nb), flush=True)
        """, str(db))
    committed = 0
    deadline = time.time() + 90
    while committed < 150 and time.time() < deadline:
        committed = int(proc.stdout.readline())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    nb = Notebook(db, encoder)
    n = len(nb)
    assert n >= committed and n % 50 == 0  # every printed batch is there; no half batch
    assert len(nb.search(["note 1 1"], k=3)[0]) == 3


def test_encoder_mismatch_and_foreign_file_are_clear_errors(tmp_path, encoder):
    nb = Notebook(tmp_path / "n.db", encoder)
    nb.add("a note")
    with pytest.raises(ConfigError, match="embedded with encoder 'tiny-bert'"):
        Notebook(tmp_path / "n.db", "minilm")
    bad = tmp_path / "bad.db"
    bad.write_text("not a database" * 100)
    with pytest.raises(PlmkitError, match="not a plmkit notebook"):
        Notebook(bad, encoder)


def test_update_validates_and_remove_checks_in_its_transaction(tmp_path, encoder):
    nb = Notebook(tmp_path / "n.db", encoder)
    ids = nb.add(NOTES)
    with pytest.raises(PlmkitError, match="non-empty"):
        nb.update(ids[0], "   ")
    with pytest.raises(PlmkitError, match="no note with id 99"):
        nb.update(99, "The capital of France is Lyon.")
    assert [n.text for n in nb.notes()] == NOTES
    other = Notebook(tmp_path / "n.db", encoder)  # another connection removes a note in between
    other.remove(ids[2])
    with pytest.raises(PlmkitError, match=rf"no note with id \[{ids[2]}\]"):
        nb.remove([ids[0], ids[2]])
    assert [n.id for n in nb.notes()] == ids[:2]  # the check and the delete are one transaction


def test_read_only_notebook_reads_and_searches_and_says_why_it_cannot_write(tmp_path, encoder, monkeypatch):
    Notebook(tmp_path / "n.db", encoder).add(NOTES)
    ro = Notebook(tmp_path / "n.db", encoder, read_only=True)
    assert ro.read_only and len(ro) == 3 and ro.search("capital of France", k=1)[0]
    with pytest.raises(PlmkitError, match="read-only .*copy it somewhere writable"):
        ro.add("another note")
    with pytest.raises(PlmkitError, match="read-only"):
        ro.remove(1)
    assert len(Notebook(tmp_path / "n.db", encoder)) == 3
    monkeypatch.setattr("os.access", lambda path, mode: False)  # e.g. a file owned by another user
    assert Notebook(tmp_path / "n.db", encoder).read_only


def test_encoder_identity_is_the_weights_not_the_name(tmp_path, encoder):
    from plmkit.testing import tiny_model, tiny_tokenizer

    Notebook(tmp_path / "n.db", encoder).add("a note")
    same = SentenceEncoder(tiny_model("bert", head="base"), tiny_tokenizer(), name="tiny-bert")
    assert Notebook(tmp_path / "n.db", same).search("a note", k=1)[0]  # same weights: fine
    other = SentenceEncoder(tiny_model("bert", head="base", seed=1), tiny_tokenizer(), name="tiny-bert")
    with pytest.raises(ConfigError, match="other weights of encoder 'tiny-bert'"):
        Notebook(tmp_path / "n.db", other).search("a note")


def test_one_notebook_serves_several_threads(tmp_path, encoder):
    from concurrent.futures import ThreadPoolExecutor

    nb = Notebook(tmp_path / "n.db", encoder)
    with ThreadPoolExecutor(4) as pool:
        ids = [i for batch in pool.map(lambda k: nb.add([f"note {k} a", f"note {k} b"]), range(8)) for i in batch]
        hits = list(pool.map(lambda k: nb.search(f"note {k} a", k=2), range(8)))
    assert sorted(ids) == list(range(1, 17)) and len(nb) == 16 and all(len(h[0]) == 2 for h in hits)


# ---- the reader and EREN's logic ---------------------------------------------------------------
def test_reader_logprob_matches_a_manual_forward(reader):
    tok = reader.tokenizer
    prompt, cont = "where is lyon?", "in france."
    p = tok(reader.format(prompt), add_special_tokens=False)["input_ids"]
    c = tok(cont, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = reader.model(torch.tensor([p + c])).logits[0, :-1].log_softmax(-1)
    manual = sum(logp[len(p) - 1 + i, t].item() for i, t in enumerate(c))
    got = reader.logprob([prompt, "other"], [cont, "x"])  # batched with a different length
    assert got[0].item() == pytest.approx(manual, abs=1e-4)


def test_reader_seq2seq_generates_and_scores():
    r = Reader(tiny_model("t5"), tiny_tokenizer(chat=False), max_new_tokens=3)
    assert r.seq2seq and len(r.generate(["abc", "de"])) == 2
    single = r.logprob(["a"], ["cc"])
    assert r.logprob(["a", "bbbb"], ["cc", "d"])[0].item() == pytest.approx(single.item(), abs=1e-4)


def test_relevance_is_per_token_pmi_and_thresholds_choose_notes_or_fallback(tmp_path, encoder, reader):
    nb = Notebook(tmp_path / "n.db", encoder)
    nb.add(NOTES)
    q = ["What is the capital of France?", "What is the capital of Spain?"]
    eren = EREN(reader, nb, ERENConfig(k=2))
    hits = nb.search(q, 2)
    scores = eren.relevance_scores(q, hits)
    note = hits[0][0].note.text
    n_tok = len(reader.tokenizer(note, add_special_tokens=False)["input_ids"])
    manual = (reader.logprob([q[0]], [note]) - reader.logprob(["Tell me a fact."], [note])).item() / n_tok
    assert scores[0][0] == pytest.approx(manual, abs=1e-5)

    eren.config.threshold = -math.inf  # every retrieved note is relevant
    answers = eren.answer_batch(q)
    assert all(a.source == "notes" and len(a.notes) == 2 for a in answers)
    prompt = eren.config.read_template.format(notes="\n".join(h.note.text for h in hits[0]), question=q[0])
    assert answers[0].text == reader.generate([prompt])[0]

    eren.config.threshold = math.inf  # none is: closed-book fallback, in the batch too
    answers = eren.answer_batch(q)
    assert [a.source for a in answers] == ["closed-book"] * 2
    assert [a.text for a in answers] == eren.closed_book(q)
    eren.config.fallback = False
    assert [a.text for a in eren.answer_batch(q)] == ["unanswerable"] * 2
    assert eren.answer(q[1]).text == "unanswerable"


class ScriptedReader(Reader):
    """A real tiny reader whose generations are scripted, to test the control flow."""

    def _generate(self, prompts, n):
        return ["unanswerable" if "Spain" in p and "unanswerable" in p else f"said:{p[-12:]}" for p in prompts]


def test_generate_mode_falls_back_in_batches(tmp_path, encoder):
    nb = Notebook(tmp_path / "n.db", encoder)
    nb.add(NOTES)
    r = ScriptedReader(tiny_model("llama"), tiny_tokenizer())
    eren = EREN(r, nb, ERENConfig(relevance="generate", k=3))
    q = ["What is the capital of France?", "What is the capital of Spain?"]
    batched = eren.answer_batch(q)
    assert [a.source for a in batched] == ["notes", "closed-book"]
    assert batched[1].text == r.generate([eren.config.closed_template.format(question=q[1])])[0]
    assert [eren.answer(x).text for x in q] == [a.text for a in batched]


def test_similarity_and_always_modes_and_no_notebook(tmp_path, encoder, reader):
    nb = Notebook(tmp_path / "n.db", encoder)
    nb.add(NOTES)
    q = [NOTES[0], "zzz"]
    sim = EREN(reader, nb, ERENConfig(relevance="similarity", similarity_threshold=0.999, k=3)).answer_batch(q)
    assert [h.note.text for h in sim[0].notes] == [NOTES[0]] and sim[0].source == "notes"
    always = EREN(reader, nb, ERENConfig(relevance="always", k=3)).answer_batch(q)
    assert all(len(a.notes) == 3 for a in always)
    closed = EREN(reader, None).answer_batch(q)
    assert all(a.source == "closed-book" and not a.retrieved for a in closed)
    assert EREN(reader, None).answer_batch(q, hits=[sim[0].notes] * 2)[0].source == "closed-book"  # no notebook
    top = EREN(reader, nb, ERENConfig(relevance="always", k=3, max_notes=1)).answer_batch(q)
    assert [h.note.text for h in top[0].notes] == [NOTES[0]]  # the most relevant of the three
    two = EREN(reader, nb, ERENConfig(relevance="always", k=2, max_notes=1, hops=2)).answer_batch(q[:1])
    assert two[0].notes[0].note.text == NOTES[0] and len({h.note.id for h in two[0].notes}) == 2  # a second hop
    one = EREN(reader, nb, ERENConfig(relevance="always")).answer_batch(q[:1], hits=[sim[0].notes])
    assert one[0].notes == sim[0].notes


def test_fact_checking_picks_the_most_likely_option(tmp_path, encoder, reader):
    nb = Notebook(tmp_path / "n.db", encoder)
    nb.add(NOTES)
    eren = EREN(reader, nb, ERENConfig(threshold=-math.inf, k=1))
    v = eren.check("the capital of France is Lyon.")
    assert v.source == "notes" and set(v.scores) == {"supports", "refutes", "not enough info"}
    assert v.label == max(v.scores, key=v.scores.get)
    eren.config.threshold = math.inf
    v = eren.check("the capital of France is Lyon.")
    assert v.source == "closed-book" and set(v.scores) == {"supports", "refutes"}


def test_fact_check_scorings_by_hand(tmp_path, encoder, reader):
    nb = Notebook(tmp_path / "n.db", encoder)
    nb.add(NOTES[:1])
    claim = "the capital of France is Lyon."
    c = ERENConfig(threshold=-math.inf, k=1)
    prompt = c.check_template.format(notes=NOTES[0], claim=claim)
    free = c.check_template.format(notes="N/A", claim="N/A")
    opts = list(c.check_options)
    raw = reader.logprob([prompt] * 3, opts)
    prior = reader.logprob([free] * 3, opts)
    lengths = torch.tensor([len(reader.tokenizer(o, add_special_tokens=False)["input_ids"]) for o in opts])
    want = {"sum": raw, "mean": raw / lengths, "calibrated": raw - prior}
    for scoring, values in want.items():
        v = EREN(reader, nb, ERENConfig(threshold=-math.inf, k=1, check_scoring=scoring)).check(claim)
        got = torch.tensor([v.scores[c.check_options[o]] for o in opts])
        assert torch.allclose(got, values, atol=1e-5), scoring
        assert v.label == c.check_options[opts[int(values.argmax())]]
    with pytest.raises(ConfigError, match="check_scoring"):
        ERENConfig(check_scoring="max")


def test_config_validates_and_round_trips():
    c = ERENConfig(k=3, relevance="similarity", similarity_threshold=0.7)
    assert ERENConfig.from_json(c.to_json()) == c
    with pytest.raises(ConfigError, match="relevance must be one of"):
        ERENConfig(relevance="magic")
    with pytest.raises(ConfigError, match="needs both"):
        ERENConfig(read_template="{question}")
    with pytest.raises(ConfigError, match="tokenizer="):
        EREN(tiny_model("llama"), None)


# ---- scoring -------------------------------------------------------------------------------------
def test_edit_scores_on_hand_made_cases():
    rows = [
        {"kind": "direct", "prediction": "The capital of France is Lyon.", "answers": ["Lyon"]},
        {"kind": "paraphrase", "prediction": "Paris", "answers": ["Lyon"]},
        {"kind": "same-subject", "prediction": "the Euro", "answers": ["Euro"], "known": True, "unedited": "Euro"},
        {"kind": "same-relation", "prediction": "Lyon", "answers": ["Madrid"], "known": True, "unedited": "Madrid"},
        {"kind": "same-relation", "prediction": "Rome", "answers": ["Rome"], "known": False, "unedited": "Paris"},
        {"kind": "two-hop", "prediction": "Cusco", "answers": ["Cusco"]},
    ]
    c = edit_scores(rows, "contained")
    assert c["ES"] == 0.5 and c["BP"] == pytest.approx(2 / 3) and c["BP_known"] == 0.5
    assert c["EQ"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3)) and c["EQ_known"] == 0.5
    assert c["two_hop"] == 1.0 and c["n"]["known"] == 2 and c["protocol"]["match"] == "contained"
    assert c["BP_unchanged"] == pytest.approx(1 / 3) and c["EQ_unchanged"] == pytest.approx(0.4)  # "the Euro" == "Euro"
    e = edit_scores(rows, "exact")
    assert e["ES"] == 0.0 and e["EQ"] == 0.0 and e["BP"] == pytest.approx(2 / 3)
    assert harmonic_mean(0.0, 0.0) == 0.0
    with pytest.raises(ValueError, match="match must be"):
        edit_scores(rows, "fuzzy")


def test_best_threshold_separates_scope():
    assert best_threshold([0.9, 0.8], [0.1, 0.2]) == 0.8  # separable: every in-scope score passes, none other
    # 0.7 and 0.8 both give rates (1, 2/3) / (2/3, 1): the tie goes to the lower threshold
    assert best_threshold([0.9, 0.8, 0.7], [0.1, 0.75, 0.2]) == 0.7


def test_one_note_hits_give_each_probe_only_its_own_edits(tmp_path, encoder):
    from plmkit.data.edits import Edit, EditSet, Probe
    from plmkit.editing.benchmark import one_note_hits

    edits = [Edit(0, "France", "capital", "Paris", "Lyon", NOTES[0]), Edit(1, "Osaka", "country", "Japan", "Chile",
                                                                           NOTES[2])]
    probes = [Probe("What is the capital of France?", "direct", ["Lyon"], [0], "France", "capital"),
              Probe("two hops", "two-hop", ["x"], [0, 1], "Osaka", "capital")]
    nb = Notebook(tmp_path / "n.db", encoder)
    hits = one_note_hits(nb, EditSet(edits, probes), probes)
    assert [h.note.text for h in hits[0]] == [NOTES[0]] and len(nb) == 2
    assert {h.note.text for h in hits[1]} == {NOTES[0], NOTES[2]}
    q = encoder.encode([probes[0].question])[0]
    assert hits[0][0].score == pytest.approx(float(q @ encoder.encode([NOTES[0]])[0]), abs=1e-5)


# ---- the notebook from scripts: add --file, search, tune, ask --file --json ---------------------------

@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """The tiny encoder and reader saved as model folders, as the CLI loads them."""
    root = tmp_path_factory.mktemp("models")
    enc, rd = root / "encoder", root / "reader"
    tiny_model("bert", head="base").save_pretrained(enc)
    tiny_tokenizer().save_pretrained(enc)
    tiny_model("llama").save_pretrained(rd)
    tiny_tokenizer().save_pretrained(rd)
    return str(enc), str(rd)


def test_cli_notebook_from_files_tune_and_batched_json_answers(tmp_path, folders, capsys):
    import json

    from plmkit.cli import main

    enc, rd = folders
    db = str(tmp_path / "nb.db")
    (tmp_path / "notes.txt").write_text(NOTES[0] + "\n\n" + json.dumps({"text": NOTES[1]}) + "\n")
    main(["notes", "--db", db, "--encoder", enc, "add", NOTES[2], "--file", str(tmp_path / "notes.txt")])
    assert capsys.readouterr().out.count("added note") == 3
    main(["notes", "--db", db, "search", "Which city is the capital of France?", "-k", "2"])
    lines = capsys.readouterr().out.strip().splitlines()
    nb = Notebook(db)
    hits = nb.search("Which city is the capital of France?", 2)[0]
    assert [int(x.split("\t")[0]) for x in lines] == [h.note.id for h in hits]

    val = [{"question": "What is the capital of France?", "in_scope": True},
           {"question": "What currency does Peru use?", "in_scope": True},
           {"question": "Who wrote Hamlet?", "in_scope": False},
           {"question": "How tall is Mount Everest?", "in_scope": False}]
    (tmp_path / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in val))
    main(["notes", "--db", db, "tune", "--validation", str(tmp_path / "val.jsonl"), "--model", rd,
          "--dtype", "float32"])
    assert "stored in" in capsys.readouterr().out
    stored = nb.settings()
    from plmkit.editing.benchmark import scope_scores, tune_scope

    eren = EREN(Reader.load(rd, dtype="float32"), nb)
    expected = tune_scope(eren, [r["question"] for r in val], [r["in_scope"] for r in val])
    assert stored["threshold"] == pytest.approx(expected["threshold"]) and stored["reader"] == rd
    assert stored["similarity_threshold"] == pytest.approx(expected["similarity_threshold"])
    for key in ("reader_weight", "similarity_weight", "combined_threshold"):  # the combined scope too
        assert stored[key] == pytest.approx(expected[key])
    scores = scope_scores(eren, [r["question"] for r in val])
    assert scores[0] >= stored["threshold"] or scores[1] >= stored["threshold"]  # some in-scope question reads

    (tmp_path / "q.txt").write_text("What is the capital of France?\nWho wrote Hamlet?\n")
    main(["ask", "--db", db, "--model", rd, "--dtype", "float32", "--file", str(tmp_path / "q.txt"), "--json",
          "--max-notes", "1"])
    captured = capsys.readouterr()
    rows = [json.loads(x) for x in captured.out.strip().splitlines()]
    assert [r["question"] for r in rows] == ["What is the capital of France?", "Who wrote Hamlet?"]
    assert "no tuned threshold" not in captured.err  # the stored one is used
    cfg = ERENConfig(threshold=stored["threshold"], max_notes=1)
    want = EREN(Reader.load(rd, dtype="float32"), nb, cfg).answer_batch([r["question"] for r in rows])
    for r, a in zip(rows, want):
        assert r["answer"] == a.text and r["source"] == a.source
        assert sum(n["read"] for n in r["notes"]) == len(a.notes) <= 1
        assert [n["relevance"] for n in r["notes"]] == pytest.approx(a.relevance)
    with pytest.raises(SystemExit):
        main(["ask", "--db", db, "--model", rd])  # neither a question nor --file
    with pytest.raises(SystemExit):
        main(["notes", "--db", db, "tune"])  # no --validation
    (tmp_path / "one-sided.jsonl").write_text(json.dumps(val[0]) + "\n")
    with pytest.raises(SystemExit):
        main(["notes", "--db", db, "tune", "--validation", str(tmp_path / "one-sided.jsonl"), "--model", rd])


# ---- standard benchmarks: CounterFact and zsRE files ---------------------------------------------------

def _counterfact(n: int = 10) -> list[dict]:
    return [{"case_id": i, "pararel_idx": i,
             "requested_rewrite": {"prompt": "The mother tongue of {} is", "relation_id": "P103",
                                   "target_new": {"str": "English", "id": "Q1860"},
                                   "target_true": {"str": "French", "id": "Q150"}, "subject": f"Person {i}"},
             "paraphrase_prompts": [f"Person {i} grew up speaking"],
             "neighborhood_prompts": ["The mother tongue of Léon Blum is", f"The mother tongue of Other {i} is"],
             "attribute_prompts": [], "generation_prompts": []} for i in range(n)]


def test_counterfact_zsre_and_easyedit_files_become_edit_sets(tmp_path):
    import json

    from plmkit.data.edit_benchmarks import load_edit_benchmark

    (tmp_path / "cf.json").write_text(json.dumps(_counterfact()))
    es = load_edit_benchmark(tmp_path / "cf.json", validation_share=0.3, seed=1)
    e0 = es.edits[0]
    assert (e0.subject, e0.old, e0.new, e0.statement) == ("Person 0", "French", "English",
                                                          "The mother tongue of Person 0 is English.")
    kinds = {p.kind for p in es.probes if p.edit_ids == [0]}
    assert kinds == {"direct", "paraphrase", "same-relation"}
    assert [p.answers for p in es.probes if p.edit_ids == [0] and p.kind == "same-relation"][0] == ["French"]
    assert len(es.split("validation")) == 3 and len(es.split("test")) == 7
    # "Léon Blum" is every edit's neighbour: kept for test edits, dropped from validation ones
    shared = [p for p in es.probes if "Léon Blum" in p.question]
    assert shared and all(p.split == "test" for p in shared)
    assert es.meta["dropped_shared_validation_probes"] == 3
    val_q = {p.question for p in es.probes if p.split == "validation"}
    assert not val_q & {p.question for p in es.probes if p.split == "test"}

    zsre = [{"subject": "Watts Humphrey", "src": "What university did Watts Humphrey attend?",
             "pred": "Trinity College", "rephrase": "What university did Watts Humphrey take part in?",
             "alt": "University of Michigan", "answers": ["Illinois Institute of Technology"],
             "loc": "nq question: who played desmond doss father in hacksaw ridge", "loc_ans": "Hugo Weaving",
             "cond": "..."}]
    (tmp_path / "zsre.json").write_text(json.dumps(zsre))
    z = load_edit_benchmark(tmp_path / "zsre.json", validation_share=0.0)
    assert z.edits[0].statement == "What university did Watts Humphrey attend? University of Michigan"
    loc = [p for p in z.probes if p.kind == "unrelated"][0]
    assert loc.question == "Who played desmond doss father in hacksaw ridge?" and loc.answers == ["Hugo Weaving"]
    rows = [{"kind": p.kind, "prediction": p.answers[0], "answers": p.answers} for p in z.probes]
    assert edit_scores(rows)["BP"] == 1.0 and edit_scores(rows)["n"]["unrelated"] == 1  # unrelated is out of scope

    flat = [{"subject": "Watts Humphrey", "prompt": "What university did Watts Humphrey attend?",
             "target_new": "University of Michigan", "ground_truth": "Illinois Institute of Technology",
             "rephrase_prompt": "Where did Watts Humphrey study?", "locality_prompt": "nq question: who is the pope",
             "locality_ground_truth": "Leo XIV"}]
    (tmp_path / "flat.json").write_text(json.dumps(flat))
    f = load_edit_benchmark(tmp_path / "flat.json")
    assert f.meta["layout"] == "easyedit" and {p.kind for p in f.probes} == {"direct", "paraphrase", "unrelated"}
    (tmp_path / "bad.json").write_text(json.dumps([{"question": "x"}]))
    with pytest.raises(ConfigError, match="unknown editing record"):
        load_edit_benchmark(tmp_path / "bad.json")
    with pytest.raises(PlmkitError, match="does not exist"):
        load_edit_benchmark(tmp_path / "none.json")


def test_geonames_validation_and_test_share_no_probe_question():
    from plmkit.data.edits import build_edit_set

    es = build_edit_set(300, n_two_hop=10, seed=3)
    val = {p.question for p in es.probes if p.split == "validation"}
    assert val and not val & {p.question for p in es.probes if p.split == "test"}


def test_eren_bench_cli_scores_a_counterfact_file(tmp_path, folders, capsys):
    import json

    from plmkit.cli import main

    enc, rd = folders
    (tmp_path / "cf.json").write_text(json.dumps(_counterfact(12)))
    main(["eren", "bench", "--data", str(tmp_path / "cf.json"), "--model", rd, "--encoder", enc, "--dtype",
          "float32", "--n-eval", "4", "--json", str(tmp_path / "out.json"), "--no-progress"])
    out = capsys.readouterr().out
    assert out.startswith("counterfact: 4 test edits") and "SERAC-like scope" in out
    res = json.loads((tmp_path / "out.json").read_text())
    assert res["n_probes"] == {"direct": 4, "paraphrase": 4, "same-subject": 0, "same-relation": 8, "unrelated": 0}
    unedited = res["scores"]["unedited"]["contained"]
    assert set(res["scores"]) == {"unedited", "one-step reading", "SERAC-like scope", "EREN (reader relevance)"}
    assert 0 <= unedited["ES"] <= 1 and res["notebook_size"] == 10  # every test edit (12 less 2 validation)


def test_combined_relevance_weighs_pmi_and_similarity_and_fits_on_validation(tmp_path, encoder, reader):
    import numpy as np

    from plmkit.data.edits import Probe
    from plmkit.editing.benchmark import fit_combined, scope_scores, tune

    nb = Notebook(tmp_path / "n.db", encoder)
    nb.add(NOTES)
    q = ["What is the capital of France?", "What is the currency of Peru?", "Is Osaka big?", "Who won in 1990?"]
    eren = EREN(reader, nb, ERENConfig(k=2, relevance="combined", reader_weight=0.5, similarity_weight=2.0,
                                       combined_threshold=-math.inf))
    hits = nb.search(q, 2)
    pmi = eren.relevance_scores(q, hits)
    by_hand = [[0.5 * s + 2.0 * h.score for s, h in zip(sr, r)] for sr, r in zip(pmi, hits)]
    got = eren.combined_scores(q, hits)
    assert all(g == pytest.approx(b) for g, b in zip(got, by_hand))
    answers = eren.answer_batch(q)
    assert all(a.source == "notes" and a.relevance == pytest.approx(b) for a, b in zip(answers, by_hand))
    eren.config.combined_threshold = max(max(r) for r in by_hand) + 1  # above every note: closed-book
    assert {a.source for a in eren.answer_batch(q)} == {"closed-book"}

    kinds = ["direct", "paraphrase", "unrelated", "same-relation"]
    probes = [Probe(x, k, ["a"], [0], "s", "r") for x, k in zip(q, kinds)]
    w = fit_combined(eren, probes)
    assert w == (eren.config.reader_weight, eren.config.similarity_weight) and all(np.isfinite(w))
    t = tune(eren, probes, kind="combined")
    assert eren.config.combined_threshold == t
    scores = scope_scores(eren, probes, kind="combined")
    expected = [max(w[0] * s + w[1] * h.score for s, h in zip(sr, r)) for sr, r in zip(pmi, hits)]
    assert scores == pytest.approx(expected)
    with pytest.raises(ConfigError, match="in- and out-of-scope"):
        fit_combined(eren, probes[:2])
