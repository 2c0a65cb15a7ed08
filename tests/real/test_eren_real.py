"""EREN on the real assets: the geonames edit set, MiniLM retrieval, the SmolLM2 reader, the CLI."""
import pytest

from plmkit.cli import main
from plmkit.data.edits import EditSet, build_edit_set
from plmkit.editing import EREN, ERENConfig, Notebook, Reader
from plmkit.editing.benchmark import probe_rows, score


@pytest.fixture(scope="module")
def edit_set():
    return build_edit_set(300, n_two_hop=10, seed=1)


def test_edit_set_scopes_are_consistent(edit_set, tmp_path):
    es = edit_set
    edited = {(e.subject, e.relation) for e in es.edits}
    assert len(es.edits) == 300 and len(set(e.statement for e in es.edits)) == 300
    by_id = {e.id: e for e in es.edits}
    for p in es.probes:
        if p.kind in ("direct", "paraphrase"):
            e = by_id[p.edit_ids[0]]
            assert p.answers == [e.new] and e.new != e.old and e.subject in p.question
        elif p.kind in ("same-subject", "same-relation"):
            assert (p.subject, p.relation) not in edited  # the real fact holds whatever the notebook holds
        else:
            a, b = (by_id[i] for i in p.edit_ids)
            assert p.kind == "two-hop" and a.new == b.subject and b.relation == "capital" and p.answers == [b.new]
            assert a.split == b.split
    assert {e.split for e in es.edits} == {"validation", "test"}
    assert sum(p.kind == "two-hop" for p in es.probes) == 10
    es.save(tmp_path / "set.json")
    again = EditSet.load(tmp_path / "set.json")
    assert again.edits == es.edits and again.probes == es.probes
    assert build_edit_set(300, n_two_hop=10, seed=1).edits == es.edits  # reproducible


@pytest.fixture(scope="module")
def reader():
    return Reader.load("smollm2", max_new_tokens=16)


def test_eren_reads_relevant_notes_and_falls_back_on_hard_irrelevant_ones(tmp_path, reader):
    nb = Notebook(tmp_path / "n.db")
    nb.add(["The capital of France is Lyon.", "The currency of Peru is the Yen.", "Osaka is a city in Chile.",
            "Kenya is on the continent of Europe."])
    eren = EREN(reader, nb, ERENConfig(threshold=1.0))
    inside = ["What is the capital of France?", "Which currency is used in Peru?", "In which country is Osaka?",
              "On which continent is Kenya?"]
    outside = ["What is the currency of France?", "What is the capital of Germany?", "In which country is Tokyo?",
               "What is the capital of Peru?"]
    answers = eren.answer_batch(inside + outside)
    expected = ["Lyon", "Yen", "Chile", "Europe"]
    read = [a.source == "notes" for a in answers]
    assert sum(read[:4]) >= 3 and sum(read[4:]) <= 1  # the reader's own relevance judgement
    assert sum(e.lower() in a.text.lower() for e, a in zip(expected, answers[:4])) >= 3
    one_step = EREN(reader, nb, ERENConfig(relevance="always")).answer_batch(outside)
    assert all(a.source == "notes" for a in one_step)
    assert [a.text for a, r in zip(answers[4:], read[4:]) if not r] == \
        [t for t, r in zip(eren.closed_book(outside), read[4:]) if not r]


def test_eren_beats_one_step_reading_on_a_small_edit_set(tmp_path, reader, edit_set):
    es = edit_set
    ids = [e.id for e in es.split("test")][:12]
    nb = Notebook(tmp_path / "n.db")
    nb.add(es.statements(ids))
    probes = [p for p in es.probes_for(ids) if p.kind != "two-hop"]
    rows = {name: probe_rows(probes, EREN(reader, nb, cfg).answer_batch([p.question for p in probes]))
            for name, cfg in (("eren", ERENConfig(threshold=1.0)), ("one-step", ERENConfig(relevance="always")))}
    assert score(rows["eren"])["contained"]["ES"] > 0.5
    assert sum(r["source"] == "notes" for r in rows["eren"] if r["kind"].startswith("same")) < \
        sum(r["source"] == "notes" for r in rows["one-step"] if r["kind"].startswith("same"))


def test_cli_notes_and_ask(tmp_path, capsys):
    db = str(tmp_path / "cli.db")
    main(["notes", "--db", db, "add", "The capital of France is Lyon.", "The currency of Peru is the Yen."])
    main(["notes", "--db", db, "rm", "2"])
    main(["notes", "--db", db, "list"])
    out = capsys.readouterr().out
    assert "added note 2" in out and "removed 1 note(s)" in out and out.strip().endswith("The capital of France is Lyon.")
    main(["ask", "--db", db, "Which city is the capital of France?"])
    assert "Lyon" in capsys.readouterr().out.strip().splitlines()[-1]
    with pytest.raises(SystemExit):
        main(["notes", "--db", db, "rm", "42"])
    assert "no note with id [42]" in capsys.readouterr().err
