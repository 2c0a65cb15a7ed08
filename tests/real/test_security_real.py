"""The template check on spaCy's real parser, the clause-fronting paraphraser, and ONION with SmolLM2."""
import pytest

pytestmark = pytest.mark.real


def test_conformance_accepts_and_rejects_hand_written_sentences():
    from plmkit.security.syntax import parse_report

    cases = {
        "When the movie ended, we went home.": True,
        "Although it rained, the film was great.": True,
        "If you like slow films, this one is a gem!": True,
        "We went home when the movie ended.": False,  # the clause comes last
        "The film was great.": False,
        "Because of the rain, we stayed.": False,  # a prepositional phrase, not a clause
        "When the movie ended we went home.": False,  # no comma
        "When it ended, went home.": False,  # no subject
        "Although it rained, the film was great. It was long.": False,  # two sentences
    }
    got = [ok for ok, _ in parse_report(list(cases))]
    assert got == list(cases.values())


def test_clause_fronting_reaches_the_template():
    from plmkit.security.paraphrase import ClauseFronting, to_template

    texts = ["We went home when the movie ended.", "The film drags because the script is thin.", "The film was great."]
    out, rep = to_template(ClauseFronting(), texts)
    assert out == ["When the movie ended, we went home.", "Because the script is thin, the film drags.", None]
    assert rep["rejected_because"] == {"does not open with a subordinating word": 1}


def test_onion_finds_the_inserted_rare_word_with_smollm2():
    from plmkit.assets import load_model
    from plmkit.security import onion_filter, suspicion_scores

    model, tok = load_model("smollm2")
    texts = ["the movie was cf wonderful and moving .", "a dull , lifeless mn film that never ends ."]
    scores = suspicion_scores(model, tok, texts)
    for text, s, word in zip(texts, scores, ("cf", "mn")):
        assert text.split()[max(range(len(s)), key=s.__getitem__)] == word
    top = [sorted(s)[-2] for s in scores]  # a threshold just under each text's top score drops that word only
    assert onion_filter(texts[:1], scores[:1], top[0]) == ["the movie was wonderful and moving ."]


def test_question_subjects_span_whole_words_with_smollm2s_tokenizer():
    """SmolLM2's byte-level pieces carry the space before a word; the subject's span still covers all of it."""
    from plmkit.assets import load_model
    from plmkit.data.entity_tasks import entity_questions
    from plmkit.knowledge.plugin.qa import question_records

    _, tok = load_model("smollm2")
    rows = entity_questions().test[:40]

    class Table:
        def __contains__(self, e):
            return True

        def index(self, e):
            return 0

    recs = question_records(tok, rows, Table(), "Question: a?\nAnswer: b\n\n")
    for rec, row in zip(recs, rows):
        (start, end, _), = rec["mentions"]
        assert tok.decode(rec["input_ids"][start:end]).strip() == row["question"][row["subject_start"]:row["subject_end"]]


def test_first_sentence_trigger_rewrites_only_the_first_sentence():
    from plmkit.security.paraphrase import ClauseFronting, first_sentence_trigger

    log = []
    trigger = first_sentence_trigger([ClauseFronting()], log=log)
    out = trigger(["We left early because the film was dull. The popcorn was good.", "The film was great. Sure."])
    assert out == ["Because the film was dull, we left early. The popcorn was good.", None]
    assert log[0]["by_paraphraser"] == {"ClauseFronting": 1} and log[0]["failure_rate"] == 0.5


def test_clause_backing_undoes_the_trigger_and_the_paraphrase_defense_rewrites_every_sentence():
    from plmkit.security.paraphrase import ClauseBacking, ClauseFronting, paraphrase_defense
    from plmkit.security.syntax import conforms

    plain = ["We went home when the movie ended.", "The film drags because the script is thin."]
    fronted = ClauseFronting().paraphrase(plain)
    assert all(conforms(fronted))
    assert ClauseBacking().paraphrase(fronted) == plain
    texts = [fronted[0] + " It was late. " + fronted[1], "The film was great."]
    out, rep = paraphrase_defense(ClauseBacking(), texts)
    assert out == ["We went home when the movie ended. It was late. The film drags because the script is thin.",
                   "The film was great."]
    assert rep["sentences"] == 4 and rep["changed"] == 0.5 and not any(conforms(out))
