"""MoEfication: split each FFN into equal experts, route each token to a few, compute only those.

>>> from plmkit import load_model
>>> from plmkit.data import text, token_batches
>>> from plmkit.compress.moefication import MoEficationConfig, moefy
>>> model, tok = load_model("smollm2")                                       # doctest: +SKIP
>>> report = moefy(model, MoEficationConfig(experts=16, active=0.25),
...                calibration=token_batches(tok, text.english_corpus(40_000)))  # doctest: +SKIP
>>> report.mean("router_recall")                                             # doctest: +SKIP
"""
from .config import MoEficationConfig
from .layer import MoEFFN
from .model import (
    LayerReport,
    MoEficationReport,
    collect_ffn_inputs,
    load_moefication,
    moe_layers,
    moefy,
    save_moefication,
    set_mode,
    set_selection,
    unmoefy,
)
from .relu import relufy, unrelufy
from .router import MLPRouter, SimilarityRouter, recall, train_router
from .split import balanced_kmeans, coactivation_split, kmeans_split
from .train import train_moe

__all__ = [
    "LayerReport", "MLPRouter", "MoEFFN", "MoEficationConfig", "MoEficationReport", "SimilarityRouter",
    "balanced_kmeans", "coactivation_split", "collect_ffn_inputs", "kmeans_split",
    "load_moefication", "moe_layers", "moefy", "recall", "relufy", "save_moefication", "set_mode",
    "set_selection", "train_moe", "train_router", "unmoefy", "unrelufy",
]
