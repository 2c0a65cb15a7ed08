"""WordNet 3.0 (Debian wordnet-base) as a knowledge graph: synsets with glosses and the 11 WN18RR relations."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..assets import asset_path
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
