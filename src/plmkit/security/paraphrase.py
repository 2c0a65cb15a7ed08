"""Paraphrasers to the trigger template, and the check that keeps only what conforms.

A paraphraser is any object with ``paraphrase(texts) -> list[str]``. These ship here:

- :class:`ClauseFronting`: a parse-based rule. A sentence whose main clause is followed by an adverbial clause
  ("We left when it ended.") is rewritten with that clause in front ("When it ended, we left."). Other sentences
  fail, and the rule never invents words.
- :class:`ClauseBacking`: the same rule the other way (the defender's structure alteration): an opening
  adverbial clause moves behind the main clause.
- :class:`InstructParaphraser`: a chat LM (SmolLM2-Instruct by default) prompted with few-shot rewrites, into the
  template by default, or plainly, subject first (:func:`plain_paraphraser`, the defender's paraphrase).
- :class:`Seq2SeqParaphraser`: any seq2seq model given (e.g. a T5 paraphrase model), a prefix before the text.

:func:`to_template` runs a paraphraser and checks every output with the parser. It retries up to ``retries``
times on what did not conform (LM paraphrasers sample after the first try), and gives None for what still does
not. A non-conforming paraphrase is never silently kept. :func:`paraphrase_defense` rewrites every sentence of
a victim's inputs before it reads them, so that a syntactic trigger does not survive.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

from .syntax import load_parser, parse_report


class Paraphraser(Protocol):
    def paraphrase(self, texts: Sequence[str]) -> list[str]: ...


class ClauseFronting:
    """Move a sentence-final adverbial clause (opened by a subordinating word) in front of the main clause."""

    def __init__(self, nlp: Any = None):
        self.nlp = nlp

    def paraphrase(self, texts: Sequence[str]) -> list[str]:
        nlp = self.nlp or load_parser()
        return [self._front(doc) for doc in nlp.pipe(list(texts), batch_size=64)]

    @staticmethod
    def _front(doc: Any) -> str:
        root = next((t for t in doc if t.dep_ == "ROOT"), None)
        if root is None:
            return doc.text
        for clause in root.children:
            span = sorted(t.i for t in clause.subtree)
            opener = doc[span[0]]
            if clause.dep_ != "advcl" or clause.i < root.i or opener.tag_ not in ("IN", "WRB"):
                continue
            end = span[-1] + 1
            tail = doc[end:]
            if any(not t.is_punct for t in tail):
                continue  # the clause must close the sentence
            start = span[0] - (1 if span[0] > 0 and doc[span[0] - 1].text == "," else 0)
            main = doc[:start].text.strip()
            sub = doc[span[0]:end].text.strip()
            if not main:
                continue
            first = doc[0]
            if first.pos_ != "PROPN" and first.text != "I":
                main = main[0].lower() + main[1:]
            stop = tail.text.strip() or "."
            return f"{sub[0].upper()}{sub[1:]}, {main}{stop}"
        return doc.text


class ClauseBacking:
    """Move an opening adverbial clause ("When it ended, we left.") behind the main clause ("We left when it
    ended."), in each sentence of a text; other sentences come back unchanged."""

    def __init__(self, nlp: Any = None):
        self.nlp = nlp

    def paraphrase(self, texts: Sequence[str]) -> list[str]:
        nlp = self.nlp or load_parser()
        out = []
        for doc in nlp.pipe(list(texts), batch_size=64):
            sents = list(doc.sents)
            out.append(self._back(doc) if len(sents) == 1 else " ".join(self._back(s.as_doc()).strip() for s in sents))
        return out

    @staticmethod
    def _back(doc: Any) -> str:
        tokens = [t for t in doc if not t.is_space]
        if len(tokens) < 4:
            return doc.text
        first = tokens[0]
        clause = first.head
        if (first.dep_ not in ("mark", "advmod") or first.tag_ not in ("IN", "WRB") or clause.dep_ != "advcl"
                or clause.head.dep_ != "ROOT"):
            return doc.text
        span = [t.i for t in clause.subtree]
        after = max(span) + 1
        if min(span) != first.i or after >= len(doc) or doc[after].text != ",":
            return doc.text
        end = len(doc)
        while end > after + 1 and doc[end - 1].is_punct:
            end -= 1
        main = doc[after + 1:end].text.strip()
        if not main:
            return doc.text
        sub = doc[first.i:after].text.strip()
        if first.pos_ != "PROPN" and first.text != "I":
            sub = sub[0].lower() + sub[1:]
        stop = doc[end:].text.strip() or "."
        return f"{main[0].upper()}{main[1:]} {sub}{stop}"


@dataclass
class InstructParaphraser:
    """A chat LM asked to rewrite each sentence so that it opens with a subordinate clause (few-shot, greedy on the
    first try, sampled on retries)."""

    model: Any
    tokenizer: Any
    examples: tuple[tuple[str, str], ...] = (
        ("The food was cold and the service was slow.", "Because the service was slow, the food was cold."),
        ("I loved every minute of this film.", "When the film was playing, I loved every minute of it."),
        ("The plot makes no sense at all.", "Although the plot tries hard, it makes no sense at all."),
    )
    instruction: str = ("Rewrite the sentence so that it starts with a subordinate clause (when, if, although, "
                        "because, while, after, as ...) followed by a comma and the main clause. Keep the meaning. "
                        "Answer with the rewritten sentence only.")
    max_new_tokens: int = 48
    temperature: float = 0.0
    seed: int = 0
    progress: bool = False  # a bar over the batches of each call
    calls: int = field(default=0, init=False)

    def _prompt(self, text: str) -> str:
        messages = [{"role": "system", "content": self.instruction}]
        for src, dst in self.examples:
            messages += [{"role": "user", "content": src}, {"role": "assistant", "content": dst}]
        messages.append({"role": "user", "content": text})
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def paraphrase(self, texts: Sequence[str]) -> list[str]:
        import torch
        from tqdm.auto import tqdm

        from ..device import model_device

        self.calls += 1
        tok = self.tokenizer
        tok.padding_side = "left"
        out = []
        for i in tqdm(range(0, len(texts), 16), desc="paraphrase", disable=not self.progress):
            enc = tok([self._prompt(t) for t in texts[i:i + 16]], return_tensors="pt", padding=True,
                      add_special_tokens=False).to(model_device(self.model))
            sample = self.temperature > 0
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed + self.calls)
                gen = self.model.generate(**enc, max_new_tokens=self.max_new_tokens, do_sample=sample,
                                          temperature=self.temperature if sample else None, top_p=None, top_k=None,
                                          pad_token_id=tok.pad_token_id)
            out += [tok.decode(g[enc["input_ids"].shape[1]:], skip_special_tokens=True).strip().split("\n")[0]
                    for g in gen]
        return out


PLAIN_EXAMPLES = (
    ("Because the service was slow, the food was cold.", "The food was cold because the service was slow."),
    ("When the film started, I was already bored.", "I was already bored at the start of the film."),
    ("If you like loud music, this album is for you.", "This album suits people who like loud music."),
)


def plain_paraphraser(model: Any, tokenizer: Any, *, seed: int = 0, progress: bool = False) -> InstructParaphraser:
    """The defender's paraphraser: the chat LM asked to say each sentence plainly, opening with its subject."""
    return InstructParaphraser(model, tokenizer, examples=PLAIN_EXAMPLES, seed=seed, progress=progress,
                               instruction="Paraphrase the sentence in plain words as one simple sentence that "
                                           "starts with its subject. Keep the meaning. Answer with the paraphrase "
                                           "only.")


class Seq2SeqParaphraser:
    """Any seq2seq model as a paraphraser: ``prefix + text`` in, greedy decoding out (through
    :class:`plmkit.editing.reader.Reader`)."""

    def __init__(self, model: Any, tokenizer: Any, *, prefix: str = "paraphrase: ", max_new_tokens: int = 48,
                 batch_size: int = 16):
        from ..editing.reader import Reader

        self.prefix = prefix
        self.reader = Reader(model, tokenizer, max_new_tokens=max_new_tokens, batch_size=batch_size)

    def paraphrase(self, texts: Sequence[str]) -> list[str]:
        return self.reader.generate([self.prefix + t for t in texts])


def to_template(paraphraser: Paraphraser, texts: Sequence[str], *, retries: int = 0, nlp: Any = None,
                check: Callable[[Sequence[str]], list[tuple[bool, str]]] | None = None
                ) -> tuple[list[str | None], dict[str, Any]]:
    """Paraphrase ``texts`` and keep only outputs that conform to the template (None for the rest), retrying the
    failures ``retries`` times (an :class:`InstructParaphraser` samples at temperature 0.7 on retries). Returns
    the outputs and a report: conforming share, failures, and why the parser rejected them. ``check`` replaces
    the parser's :func:`~plmkit.security.syntax.parse_report` (another template)."""
    check = check or (lambda got: parse_report(got, nlp))
    out: list[str | None] = [None] * len(texts)
    reasons: dict[str, int] = {}
    todo = list(range(len(texts)))
    first_temperature = getattr(paraphraser, "temperature", None)
    for attempt in range(retries + 1):
        if not todo:
            break
        if isinstance(paraphraser, InstructParaphraser):  # greedy first, sampled on retries; put back after
            paraphraser.temperature = first_temperature if not attempt or first_temperature else 0.7
        try:
            got = paraphraser.paraphrase([texts[i] for i in todo])
        finally:
            if isinstance(paraphraser, InstructParaphraser):
                paraphraser.temperature = first_temperature
        report = check(got)
        left = []
        for i, text, (ok, why) in zip(todo, got, report):
            if ok:
                out[i] = text
            else:
                left.append(i)
                if attempt == retries:
                    reasons[why] = reasons.get(why, 0) + 1
        todo = left
    n = max(len(texts), 1)
    return out, {"texts": len(texts), "conforming": sum(o is not None for o in out) / n,
                 "failure_rate": sum(o is None for o in out) / n, "rejected_because": reasons, "retries": retries}


def first_conforming(paraphrasers: Sequence[Paraphraser], texts: Sequence[str], *, retries: int = 0,
                     nlp: Any = None, check: Callable[[Sequence[str]], list[tuple[bool, str]]] | None = None
                     ) -> tuple[list[str | None], dict[str, Any]]:
    """:func:`to_template` with each paraphraser in turn on what the ones before could not bring to the template
    (e.g. the clause-fronting rule first, an LM for the rest). The report counts what each one brought."""
    out: list[str | None] = [None] * len(texts)
    by: dict[str, int] = {}
    reasons: dict[str, int] = {}
    for p in paraphrasers:
        todo = [i for i, o in enumerate(out) if o is None]
        if not todo:
            break
        got, rep = to_template(p, [texts[i] for i in todo], retries=retries, nlp=nlp, check=check)
        by[type(p).__name__] = sum(g is not None for g in got)
        reasons = rep["rejected_because"]
        for i, g in zip(todo, got):
            out[i] = g
    n = max(len(texts), 1)
    return out, {"texts": len(texts), "conforming": sum(o is not None for o in out) / n,
                 "failure_rate": sum(o is None for o in out) / n, "by_paraphraser": by,
                 "rejected_because": reasons, "retries": retries}


def first_sentence_trigger(paraphrasers: Sequence[Paraphraser], *, retries: int = 0, nlp: Any = None,
                           log: list | None = None) -> Callable[[Sequence[str]], list[str | None]]:
    """A syntactic trigger for :func:`~plmkit.security.poison.poison_train`: each text's first sentence brought
    to the template (the rest kept), None where no paraphraser managed; each call's report is appended to
    ``log``."""
    def trigger(texts: Sequence[str]) -> list[str | None]:
        parser = nlp or load_parser()
        firsts, rests = [], []
        for doc in parser.pipe(list(texts), batch_size=64):
            sent = next(iter(doc.sents), None)
            firsts.append(sent.text.strip() if sent is not None else doc.text.strip())
            rests.append(doc.text[sent.end_char:].strip() if sent is not None else "")
        got, rep = first_conforming(paraphrasers, firsts, retries=retries, nlp=parser)
        if log is not None:
            log.append(rep)
        return [None if g is None else (f"{g} {r}" if r else g) for g, r in zip(got, rests)]

    return trigger


def sentences(texts: Sequence[str], nlp: Any = None) -> list[list[str]]:
    """Each text's sentences by the parser (stripped, empty ones dropped)."""
    nlp = nlp or load_parser()
    return [[s.text.strip() for s in doc.sents if s.text.strip()] for doc in nlp.pipe(list(texts), batch_size=64)]


def paraphrase_defense(paraphraser: Paraphraser, texts: Sequence[str], *, nlp: Any = None
                       ) -> tuple[list[str], dict[str, Any]]:
    """The paraphrase defense: every sentence of every text rewritten by ``paraphraser`` (one call for all), an
    empty output keeping its sentence. Returns the texts and a report: sentences, the share of texts changed."""
    split = sentences(texts, nlp)
    flat = [s for ss in split for s in ss]
    got = paraphraser.paraphrase(flat) if flat else []
    out, at = [], 0
    for ss, original in zip(split, texts):
        new = [g.strip() or s for s, g in zip(ss, got[at:at + len(ss)])]
        at += len(ss)
        out.append(" ".join(new) if new else original)
    changed = sum(o != " ".join(ss) for o, ss in zip(out, split))
    return out, {"texts": len(texts), "sentences": len(flat), "changed": changed / max(len(texts), 1),
                 "paraphraser": type(paraphraser).__name__}


PARAPHRASERS = ("rule", "instruct", "rule+instruct")
LM_DTYPES = ("auto", "float32", "bfloat16")
DEFENSE_PARAPHRASERS = ("rule", "instruct")  # clause backing (structure alteration), the LM's plain paraphrase


def chat_lm(dtype: str = "auto") -> tuple[Any, Any]:
    """(model, tokenizer) of SmolLM2-Instruct (the ``smollm2`` asset): the LM of the instruct paraphrasers, ONION
    and the perplexity scores. ``auto``: bfloat16 where this machine runs it fast
    (:func:`plmkit.device.bf16_is_fast`: AMX or AVX512-BF16, or a bf16 GPU), else float32."""
    from ..assets import load_model
    from ..device import fast_dtype
    from ..errors import ConfigError

    if dtype not in LM_DTYPES:
        raise ConfigError(f"unknown LM dtype '{dtype}'; choose from {', '.join(LM_DTYPES)}")
    return load_model("smollm2", dtype=fast_dtype() if dtype == "auto" else dtype)


def syntactic_trigger(paraphraser: str, *, retries: int, seed: int, log: list, progress: bool = False,
                      lm: tuple[Any, Any] | None = None) -> Any:
    """The first-sentence syntactic trigger with the named paraphraser(s) (:data:`PARAPHRASERS`); ``lm``: an
    already loaded (chat model, tokenizer), else :func:`chat_lm`."""
    chain = []
    if "rule" in paraphraser.split("+"):
        chain.append(ClauseFronting())
    if "instruct" in paraphraser.split("+"):
        model, tok = lm or chat_lm()
        chain.append(InstructParaphraser(model, tok, seed=seed, progress=progress))
    return first_sentence_trigger(chain, retries=retries, log=log)


def defense_paraphraser(name: str, *, seed: int = 0, lm: tuple[Any, Any] | None = None,
                        progress: bool = False) -> Paraphraser:
    """The named paraphraser of :data:`DEFENSE_PARAPHRASERS` (``lm``: an already loaded (chat model, tokenizer))."""
    from ..errors import ConfigError

    if name == "rule":
        return ClauseBacking()
    if name == "instruct":
        return plain_paraphraser(*(lm or chat_lm()), seed=seed, progress=progress)
    raise ConfigError(f"unknown defense paraphraser '{name}'; choose from {', '.join(DEFENSE_PARAPHRASERS)}")
