"""The entity-knowledge substrate: link mentions in text to knowledge-base entities (WordNet synsets, geonames
places) and hold entity embeddings (trained TransE/RotatE, KEPLER, PyKEEN, OpenKE) for entity-aware models.

    >>> from plmkit.knowledge.entities import wordnet_linker, train_kge              # doctest: +SKIP
    >>> wordnet_linker().link(["The geese flew over the fire trucks."])               # doctest: +SKIP
    >>> train_kge("geonames", "transe", dim=64).save("kge/geonames")                  # doctest: +SKIP
"""
from .aliases import AliasTable, build_geonames_aliases, build_wordnet_aliases, geonames_aliases, wordnet_aliases
from .embeddings import EntityEmbeddings
from .evaluate import LinkSample, evaluate_linker, wordnet_link_samples
from .kge import KGEConfig, fit_kge, kg_triples, train_kge
from .linker import (
    AliasLinker,
    Linker,
    LinkerConfig,
    Mention,
    NERGatedLinker,
    combined_linker,
    geonames_linker,
    kb_linker,
    wordnet_linker,
)

__all__ = ["AliasLinker", "AliasTable", "EntityEmbeddings", "KGEConfig", "LinkSample", "Linker", "LinkerConfig",
           "Mention", "NERGatedLinker", "build_geonames_aliases", "build_wordnet_aliases", "combined_linker",
           "evaluate_linker", "fit_kge", "geonames_aliases", "geonames_linker", "kb_linker", "kg_triples",
           "train_kge", "wordnet_aliases", "wordnet_link_samples", "wordnet_linker"]
