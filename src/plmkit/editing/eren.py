"""EREN: edit a model by giving it notes, read by the model only when they are relevant.

For each question the notebook returns the top-k notes; the reader decides which of them bear on
the question, answers from those, and falls back to answering closed-book when none does. The
same class runs the baselines by changing only how relevance is decided:

- ``reader`` (default): the reader's own judgement, as likelihood: a note is relevant when the
  question makes the reader expect it: ``log p(note | question) - log p(note | neutral prompt)``,
  per note token, at least ``threshold``. Small readers cannot say "unanswerable" reliably but do rank this way.
- ``generate``: the paper's prompt; the reader reads all k notes and answers, or says
  "unanswerable", which triggers the closed-book fallback.
- ``similarity``: a retrieval-only scope classifier (SERAC-like): notes whose retrieval score
  is at least ``similarity_threshold``.
- ``combined``: both signals, ``reader_weight * PMI + similarity_weight * retrieval score`` at least
  ``combined_threshold`` (weights fitted on validation by logistic regression:
  :func:`plmkit.editing.benchmark.tune`).
- ``always``: one-step reading, always answering from the k retrieved notes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from ..config import JsonConfig
from ..errors import ConfigError
from .notebook import Hit, Notebook
from .reader import Reader

RELEVANCE = ("reader", "generate", "similarity", "combined", "always")
VERDICTS = ("supports", "refutes", "not enough info")
CHECK_SCORING = ("sum", "mean", "calibrated")


@dataclass
class ERENConfig(JsonConfig):
    k: int = 5
    relevance: str = "reader"
    threshold: float = 0.5  # nats per note token of pointwise mutual information, for relevance="reader"
    similarity_threshold: float = 0.6  # for relevance="similarity"
    reader_weight: float = 1.0  # relevance="combined": reader_weight * PMI + similarity_weight * retrieval score
    similarity_weight: float = 1.0
    combined_threshold: float = 1.0  # ... at least this
    fallback: bool = True  # closed-book answer when no note is relevant
    max_notes: int | None = None  # read at most this many relevant notes per hop, most relevant first
    hops: int = 1  # 2: retrieve again with the question plus the notes chosen so far (multi-hop questions)
    read_template: str = "Notes:\n{notes}\n\nUsing the notes, answer with a short phrase.\nQuestion: {question}"
    closed_template: str = "Answer with a short phrase.\nQuestion: {question}"
    unanswerable_template: str = ('Read this and answer the question. If the question is unanswerable, '
                                  'say "unanswerable".\n\n{notes}\n\n{question}')
    relevance_template: str = "{question}"
    neutral_prompt: str = "Tell me a fact."
    check_template: str = ("{notes}\n\nBased on the text above, is it true that {claim}\n"
                           "Options: Yes / It's impossible to say / No")
    closed_check_template: str = "Is it true that {claim}\nOptions: Yes / No"
    check_options: dict = field(default_factory=lambda: {"Yes": "supports", "No": "refutes",
                                                         "It's impossible to say": "not enough info"})
    # how options of different lengths are compared: "sum" of token log-probabilities, their "mean" per
    # token, or "calibrated": the sum minus the option's log-probability under the same template with
    # content-free notes and claim ("N/A"), so an option's prior is not mistaken for evidence
    check_scoring: str = "calibrated"
    content_free: str = "N/A"

    def __post_init__(self) -> None:
        if self.relevance not in RELEVANCE:
            raise ConfigError(f"relevance must be one of {RELEVANCE}, got '{self.relevance}'")
        if self.k < 1 or self.hops < 1 or (self.max_notes is not None and self.max_notes < 1):
            raise ConfigError("k (notes retrieved per question), hops and max_notes must be >= 1")
        for name in ("read_template", "unanswerable_template"):
            if "{notes}" not in getattr(self, name) or "{question}" not in getattr(self, name):
                raise ConfigError(f"{name} needs both {{notes}} and {{question}}")
        if "{question}" not in self.closed_template or "{question}" not in self.relevance_template:
            raise ConfigError("closed_template and relevance_template need {question}")
        if set(self.check_options.values()) - set(VERDICTS):
            raise ConfigError(f"check_options must map option text to one of {VERDICTS}")
        if self.check_scoring not in CHECK_SCORING:
            raise ConfigError(f"check_scoring must be one of {CHECK_SCORING}, got '{self.check_scoring}'")



@dataclass
class Answer:
    text: str
    source: str  # "notes" | "closed-book" | "none"
    notes: list[Hit] = field(default_factory=list)  # the notes read
    retrieved: list[Hit] = field(default_factory=list)
    relevance: list[float] = field(default_factory=list)  # one score per retrieved note


@dataclass
class Verdict:
    label: str  # one of VERDICTS
    source: str
    notes: list[Hit] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)


def _join(hits: Sequence[Hit]) -> str:
    return "\n".join(h.note.text for h in hits)


def _is_unanswerable(text: str) -> bool:
    return "unanswerable" in text.lower()


class EREN:
    """``EREN(reader, notebook).answer("What is the capital of France?")``.

    ``reader`` is a :class:`Reader` or a model with ``tokenizer=``; ``notebook`` may be ``None``
    (no edits: every answer is closed-book).
    """

    def __init__(self, reader: Reader | torch.nn.Module, notebook: Notebook | None,
                 config: ERENConfig | None = None, tokenizer=None):
        if not isinstance(reader, Reader):
            if tokenizer is None:
                raise ConfigError("pass tokenizer= with a model, or a plmkit.editing.Reader")
            reader = Reader(reader, tokenizer)
        self.reader, self.notebook = reader, notebook
        self.config = config or ERENConfig()

    # ---- relevance --------------------------------------------------------------------
    def relevance_scores(self, queries: Sequence[str], hits: Sequence[Sequence[Hit]]) -> list[list[float]]:
        """Pointwise mutual information between each query and each of its notes under the reader,
        per note token: ``(log p(note | query) - log p(note | neutral prompt)) / len(note)``."""
        pairs = [(q, h.note.text) for q, row in zip(queries, hits) for h in row]
        if not pairs:
            return [[] for _ in queries]
        notes = [t for _, t in pairs]
        neutral = self.reader.logprob([self.config.neutral_prompt] * len(notes), notes)
        cond = self.reader.logprob([self.config.relevance_template.format(question=q) for q, _ in pairs], notes)
        lengths = torch.tensor([len(self.reader.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in notes])
        flat = ((cond - neutral) / lengths.clamp_min(1)).tolist()
        out, i = [], 0
        for row in hits:
            out.append(flat[i:i + len(row)])
            i += len(row)
        return out

    def combined_scores(self, queries: Sequence[str], hits: Sequence[Sequence[Hit]]) -> list[list[float]]:
        """``reader_weight * PMI + similarity_weight * retrieval score`` of each query's notes."""
        c = self.config
        return [[c.reader_weight * s + c.similarity_weight * h.score for s, h in zip(row_s, row)]
                for row_s, row in zip(self.relevance_scores(queries, hits), hits)]

    def _retrieve(self, queries: Sequence[str]) -> list[list[Hit]]:
        if self.notebook is None:
            return [[] for _ in queries]
        return self.notebook.search(list(queries), self.config.k)

    def _select(self, queries, hits) -> tuple[list[list[Hit]], list[list[float]]]:
        """The notes to read per query (most relevant first, at most ``max_notes``) and every score."""
        c = self.config
        if c.relevance == "reader":
            scores, cut = self.relevance_scores(queries, hits), c.threshold
        elif c.relevance == "combined":
            scores, cut = self.combined_scores(queries, hits), c.combined_threshold
        else:
            scores = [[h.score for h in r] for r in hits]
            cut = c.similarity_threshold if c.relevance == "similarity" else -float("inf")
        chosen = [[h for s, h in sorted(zip(sr, r), key=lambda x: -x[0]) if s >= cut][:c.max_notes]
                  for r, sr in zip(hits, scores)]
        return chosen, scores

    def _next_hop(self, questions: list[str], chosen: list[list[Hit]]) -> None:
        """Multi-hop: retrieve with the question and the notes chosen so far; add new relevant notes."""
        idx = [i for i, r in enumerate(chosen) if r and self.notebook is not None]
        if not idx:
            return
        queries = [questions[i] + "\n" + _join(chosen[i]) for i in idx]
        new_hits = [[h for h in row if h.note.id not in {x.note.id for x in chosen[i]}]
                    for i, row in zip(idx, self._retrieve(queries))]
        more, _ = self._select(queries, new_hits)
        for i, extra in zip(idx, more):
            chosen[i] = chosen[i] + extra

    # ---- answering --------------------------------------------------------------------
    def closed_book(self, questions: Sequence[str]) -> list[str]:
        return self.reader.generate([self.config.closed_template.format(question=q) for q in questions])

    def answer(self, question: str) -> Answer:
        return self.answer_batch([question])[0]

    def answer_batch(self, questions: Sequence[str], hits: Sequence[Sequence[Hit]] | None = None) -> list[Answer]:
        """Answers for many questions; the closed-book fallback applies in the batch too.

        ``hits`` replaces retrieval (one list of notes per question), e.g. to give each
        question its own one-note notebook; without a notebook it is ignored (closed-book)."""
        c = self.config
        questions = list(questions)
        if hits is None or self.notebook is None:
            hits = self._retrieve(questions)
        else:
            hits = [list(r)[:c.k] for r in hits]
        if c.relevance == "generate":
            read_idx = [i for i, r in enumerate(hits) if r]
            outs = self.reader.generate([c.unanswerable_template.format(notes=_join(hits[i]), question=questions[i])
                                         for i in read_idx])
            answers = [Answer("", "none", [], hits[i], []) for i in range(len(questions))]
            for i, text in zip(read_idx, outs):
                if not _is_unanswerable(text):
                    answers[i] = Answer(text, "notes", list(hits[i]), hits[i], [])
        else:
            chosen, scores = self._select(questions, hits)
            for _ in range(c.hops - 1):
                self._next_hop(questions, chosen)
            read_idx = [i for i, r in enumerate(chosen) if r]
            outs = self.reader.generate([c.read_template.format(notes=_join(chosen[i]), question=questions[i])
                                         for i in read_idx])
            answers = [Answer("", "none", [], hits[i], scores[i]) for i in range(len(questions))]
            for i, text in zip(read_idx, outs):
                answers[i].text, answers[i].source, answers[i].notes = text, "notes", chosen[i]
        rest = [i for i, a in enumerate(answers) if a.source == "none"]
        if c.fallback and rest:
            for i, text in zip(rest, self.closed_book([questions[i] for i in rest])):
                answers[i].text, answers[i].source = text, "closed-book"
        for i in rest if not c.fallback else ():
            answers[i].text = "unanswerable"
        return answers

    # ---- fact checking ----------------------------------------------------------------
    def check(self, claim: str) -> Verdict:
        return self.check_batch([claim])[0]

    def check_batch(self, claims: Sequence[str]) -> list[Verdict]:
        """supports / refutes / not enough info, by the reader's likelihood of each option.

        With relevant notes the three-way template is scored; without, the closed-book fallback
        asks the reader's own knowledge (Yes / No). ``check_scoring`` sets how options of different
        token lengths are compared (see :class:`ERENConfig`)."""
        c = self.config
        claims = list(claims)
        hits = self._retrieve(claims)
        chosen, _ = self._select(claims, hits) if c.relevance != "generate" else (hits, None)
        free = c.content_free
        asks = []  # (prompt, content-free prompt, {option text: verdict}) per claim
        for claim, notes in zip(claims, chosen):
            if notes:
                asks.append((c.check_template.format(notes=_join(notes), claim=claim),
                             c.check_template.format(notes=free, claim=free), dict(c.check_options)))
            else:
                asks.append((c.closed_check_template.format(claim=claim), c.closed_check_template.format(claim=free),
                             {o: v for o, v in c.check_options.items() if v != "not enough info"}))
        options = [o for _, _, opts in asks for o in opts]
        flat = self.reader.logprob([p for p, _, opts in asks for _ in opts], options)
        if c.check_scoring == "mean":
            lengths = [len(self.reader.tokenizer(o, add_special_tokens=False)["input_ids"]) for o in options]
            flat = flat / torch.tensor(lengths, dtype=flat.dtype).clamp_min(1)
        elif c.check_scoring == "calibrated":
            flat = flat - self.reader.logprob([q for _, q, opts in asks for _ in opts], options)
        flat = flat.tolist()
        verdicts, i = [], 0
        for (_, _, opts), notes in zip(asks, chosen):
            scores = dict(zip(opts.values(), flat[i:i + len(opts)]))
            i += len(opts)
            verdicts.append(Verdict(max(scores, key=scores.get), "notes" if notes else "closed-book", notes, scores))
        return verdicts
