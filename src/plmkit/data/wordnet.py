"""WordNet 3.0 (Debian wordnet-base) as a knowledge graph: synsets with glosses and the 11 WN18RR relations."""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

from ..assets import asset_path
from ..errors import ConfigError
from .kg import DescribedKG, KGSplit, Triple, sample_subgraph, split_inductive, split_transductive

# WordNet pointer symbol -> WN18RR relation name (head = the synset holding the pointer).
WN18RR_RELATIONS = {
    "@": "_hypernym",
    "@i": "_instance_hypernym",
    "+": "_derivationally_related_form",
    "%m": "_member_meronym",
    "%p": "_has_part",
    ";c": "_synset_domain_topic_of",
    "^": "_also_see",
    "$": "_verb_group",
    ";r": "_member_of_domain_region",
    ";u": "_member_of_domain_usage",
    "&": "_similar_to",
}

# Short texts for KEPLER's relation-description variant (head = the synset holding the pointer).
RELATION_DESCRIPTIONS = {
    "_hypernym": "hypernym: is a kind of",
    "_instance_hypernym": "instance hypernym: is an instance of",
    "_derivationally_related_form": "derivationally related form: is a word form related to",
    "_member_meronym": "member meronym: has as a member",
    "_has_part": "has part: has as a part",
    "_synset_domain_topic_of": "topic domain: is a term of the topic",
    "_also_see": "also see: is related in meaning to",
    "_verb_group": "verb group: is a verb with a similar sense to",
    "_member_of_domain_region": "region domain: is a term used in the region",
    "_member_of_domain_usage": "usage domain: is a term of the usage",
    "_similar_to": "similar to: is an adjective similar in meaning to",
}

# The 45 lexicographer files, by number (WordNet's lexnames).
LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body "
    "noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location noun.motive "
    "noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process noun.quantity noun.relation "
    "noun.shape noun.state noun.substance noun.time verb.body verb.change verb.cognition verb.communication "
    "verb.competition verb.consumption verb.contact verb.creation verb.emotion verb.motion verb.perception "
    "verb.possession verb.social verb.stative verb.weather adj.ppl"
).split()

_POS_FILES = {"n": "data.noun", "v": "data.verb", "a": "data.adj", "r": "data.adv"}


@dataclass(frozen=True)
class Synset:
    id: str  # "<offset>-<pos>", e.g. "02121620-n"
    pos: str  # n v a r (satellites folded into a)
    lemmas: tuple[str, ...]
    lexname: str
    gloss: str

    @property
    def name(self) -> str:
        return self.lemmas[0].replace("_", " ")

    @property
    def description(self) -> str:
        """Text for description-based entity encoders: ``"cat: feline mammal usually having thick soft fur ..."``."""
        return f"{', '.join(l.replace('_', ' ') for l in self.lemmas[:3])}: {self.gloss}"


@dataclass
class WordNetGraph:
    synsets: dict[str, Synset]
    triples: list[Triple]

    def by_lemma(self, lemma: str, pos: str | None = None) -> list[Synset]:
        key = lemma.lower().replace(" ", "_")
        return [s for s in self.synsets.values() if key in (l.lower() for l in s.lemmas) and (pos is None or s.pos == pos)]

    def transductive_split(self, seed: int = 0, valid: float = 0.03, test: float = 0.03) -> KGSplit:
        return split_transductive(self.triples, valid, test, seed)

    def inductive_split(self, seed: int = 0, valid: float = 0.1, test: float = 0.1) -> KGSplit:
        return split_inductive(self.triples, valid, test, seed)


def _parse_file(path: Path, synsets: dict[str, Synset], triples: set[Triple]) -> None:
    for line in path.open(encoding="utf-8", errors="replace"):
        if line.startswith("  "):  # licence header
            continue
        data, _, gloss = line.partition(" | ")
        f = data.split()
        offset, lexnum, ss_type = f[0], int(f[1]), f[2]
        pos = "a" if ss_type == "s" else ss_type
        sid = f"{offset}-{pos}"
        n_words = int(f[3], 16)
        lemmas = tuple(f[4 + 2 * i] for i in range(n_words))
        i = 4 + 2 * n_words
        n_ptr = int(f[i])
        for j in range(n_ptr):
            sym, target, tpos = f[i + 1 + 4 * j: i + 4 + 4 * j]
            rel = WN18RR_RELATIONS.get(sym)
            if rel:
                triples.add((sid, rel, f"{target}-{'a' if tpos == 's' else tpos}"))
        synsets[sid] = Synset(sid, pos, tuple(l.rsplit("(", 1)[0] for l in lemmas), LEXNAMES[lexnum], gloss.strip())


@lru_cache(maxsize=1)
def wordnet_graph() -> WordNetGraph:
    """All synsets (with glosses and lexnames) and the WN18RR-relation triples between them (~1.5 s)."""
    root = asset_path("wordnet").parent
    synsets: dict[str, Synset] = {}
    triples: set[Triple] = set()
    for name in _POS_FILES.values():
        _parse_file(root / name, synsets, triples)
    return WordNetGraph(synsets, sorted(t for t in triples if t[0] in synsets and t[2] in synsets))


def wordnet_kg(n_entities: int | None = 10_000, inductive: bool = False, seed: int = 0,
               valid: float | None = None, test: float | None = None) -> DescribedKG:
    """A WN18RR-style graph with glosses as entity descriptions, for KEPLER and other text-aware KE.

    ``n_entities`` snowball-samples a connected subgraph (None: all of WordNet). Transductive
    splits hold out 5% of triples each for valid and test (every held-out entity stays in train);
    inductive splits hold out 10% of entities each, disjoint from training.
    """
    g = wordnet_graph()
    triples = g.triples if n_entities is None else sample_subgraph(g.triples, n_entities, seed)
    if inductive:
        split = split_inductive(triples, valid or 0.1, test or 0.1, seed)
    else:
        split = split_transductive(triples, valid or 0.05, test or 0.05, seed)
    ents = split.entities("train") | split.entities("valid") | split.entities("test")
    return DescribedKG(split, {e: g.synsets[e].description for e in ents}, dict(RELATION_DESCRIPTIONS),
                       f"wordnet-{n_entities or 'all'}-{'inductive' if inductive else 'transductive'}-seed{seed}")


# --- Example sentences: the quoted examples of a gloss, with the span of the lemma they illustrate ---------------

_EXC_FILES = {"n": "noun", "v": "verb", "a": "adj", "r": "adv"}
_QUOTED = re.compile(r'"([^"]+)"')


def gloss_examples(gloss: str) -> list[str]:
    """The example sentences of a WordNet gloss: double-quoted texts after the first ';'."""
    _, sep, rest = gloss.partition(";")
    return [e.strip() for e in _QUOTED.findall(rest) if e.strip()] if sep else []


@lru_cache(maxsize=4)
def _exceptions(pos: str) -> dict[str, tuple[str, ...]]:
    """Irregular forms by lower-cased base form, ``-`` read as ``_`` (``goose -> (geese,)``), from WordNet's
    ``<pos>.exc`` list."""
    path = asset_path("wordnet").parent / f"{_EXC_FILES[pos]}.exc"
    out: dict[str, list[str]] = {}
    for line in path.open(encoding="utf-8", errors="replace"):
        inflected, *bases = line.split()
        for base in bases:
            out.setdefault(base.lower().replace("-", "_"), []).append(inflected)
    return {k: tuple(v) for k, v in out.items()}


def _regular_forms(word: str, pos: str) -> set[str]:
    """Regular inflections of one word: plural (nouns), -s/-ed/-ing (verbs), -er/-est (adjectives)."""
    consonant_y = len(word) > 1 and word[-1] == "y" and word[-2] not in "aeiou"
    if word.endswith(("s", "x", "z", "ch", "sh")):
        plural = word + "es"
    else:
        plural = word[:-1] + "ies" if consonant_y else word + "s"
    if pos == "n":
        return {plural, word[:-3] + "men"} if word.endswith("man") else {plural}
    if pos == "v":
        past = word + "d" if word.endswith("e") else word[:-1] + "ied" if consonant_y else word + "ed"
        ing = word[:-1] + "ing" if word.endswith("e") and not word.endswith(("ee", "ye", "oe")) else word + "ing"
        return {plural if not word.endswith("o") else word + "es", past, ing}
    if pos == "a":
        stem = word[:-1] + "i" if consonant_y else word[:-1] if word.endswith("e") else word
        return {stem + "er", stem + "est"}
    return set()


def lemma_forms(lemma: str, pos: str) -> set[str]:
    """The lemma and its inflected forms, irregular ones from WordNet's exception list (``<pos>.exc``) and
    regular ones by suffix rules; words joined by ``_``. A multiword noun inflects its last word, a multiword
    verb its first (``looked_up``)."""
    words = lemma.split("_")
    head = 0 if pos == "v" else len(words) - 1
    regular = {"_".join([*words[:head], w, *words[head + 1:]]) for w in _regular_forms(words[head], pos)}
    return {lemma, *_exceptions(pos).get(lemma.lower().replace("-", "_"), ()), *regular}


def _spellings(form: str) -> set[str]:
    """A form as it may be written: words joined as in the lemma (``_`` read as a space), by spaces, or by hyphens."""
    words = re.split(r"[\s_-]+", form)
    return {form.replace("_", " "), " ".join(words), "-".join(words)}


def _whole_word(text: str, start: int, end: int) -> bool:
    """Whether ``text[start:end]`` is neither preceded nor followed by a letter, digit, ``_`` or a single ``-``
    (a dash written ``--`` separates words)."""
    def glued(i: int, beyond: int) -> bool:
        if not 0 <= i < len(text):
            return False
        if text[i] == "-":
            return not (0 <= beyond < len(text) and text[beyond] == "-")
        return text[i].isalnum() or text[i] == "_"

    return not glued(start - 1, start - 2) and not glued(end, end + 1)


def _matcher(synset: Synset) -> Callable[[str], tuple[int, int, str] | None]:
    """A function giving ``(start, end, lemma)`` of the leftmost (then longest) whole-word form of one of
    ``synset``'s lemmas in a text, or None; lemmas holding a capital (names, ``A`` for vitamin A) match
    case-sensitively, the others in any case."""
    needles = {}
    for lemma in reversed(synset.lemmas):  # the first lemma wins a spelling two lemmas share
        cased = lemma != lemma.lower()
        for form in lemma_forms(lemma, synset.pos):
            for spelling in _spellings(form):
                needles[(spelling if cased else spelling.lower(), cased)] = lemma

    def find(text: str) -> tuple[int, int, str] | None:
        lower = text.lower() if len(text.lower()) == len(text) else text
        best = None
        for (needle, cased), lemma in needles.items():
            haystack = text if cased else lower
            at = haystack.find(needle)
            while at >= 0 and not _whole_word(haystack, at, at + len(needle)):
                at = haystack.find(needle, at + 1)
            if at >= 0 and (best is None or (at, -(at + len(needle))) < (best[0], -best[1])):
                best = (at, at + len(needle), lemma)
        return best

    return find


@lru_cache(maxsize=8)
def _examples(pos: tuple[str, ...]) -> tuple[tuple[dict, ...], int]:
    """The rows of :func:`wordnet_examples` and the number of examples skipped (cached)."""
    unknown = [p for p in pos if p not in _POS_FILES]
    if unknown or not pos:
        raise ConfigError(f"pos must be a non-empty tuple of {', '.join(_POS_FILES)}, got {pos!r}")
    root = asset_path("wordnet").parent
    rows: list[dict] = []
    skipped = 0
    for p in pos:
        synsets: dict[str, Synset] = {}
        _parse_file(root / _POS_FILES[p], synsets, set())
        for s in synsets.values():
            examples = gloss_examples(s.gloss)
            find = _matcher(s) if examples else None
            for text in examples:
                hit = find(text)
                if hit is None:
                    skipped += 1
                    continue
                start, end, lemma = hit
                rows.append({"text": text, "synset": s.id, "lemma": lemma, "start": start, "end": end,
                             "lexname": s.lexname})
    return tuple(rows), skipped


def wordnet_examples(pos: tuple[str, ...] = ("n",)) -> list[dict]:
    """The quoted example sentences of the glosses of ``pos`` synsets, each with the char span of the lemma form it
    illustrates: ``{"text", "synset", "lemma", "start", "end", "lexname"}`` (``text[start:end]`` is the form).

    The form is found by :func:`lemma_forms` (irregular forms from WordNet's exception lists, regular ones by its
    suffix rules) as a whole word, the leftmost then longest; examples where no form occurs are skipped and
    counted by :func:`wordnet_example_counts`. About 1 s for nouns, cached."""
    return [dict(r) for r in _examples(tuple(pos))[0]]


def wordnet_example_counts(pos: tuple[str, ...] = ("n",)) -> dict[str, int]:
    """``{"examples", "kept", "skipped"}``: the examples :func:`wordnet_examples` read, kept and skipped (no lemma
    form found)."""
    rows, skipped = _examples(tuple(pos))
    return {"examples": len(rows) + skipped, "kept": len(rows), "skipped": skipped}
