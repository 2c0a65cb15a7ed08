"""Knowledge in language models: KEPLER (knowledge embeddings from descriptions, trained with LM)."""
from .kepler import (
    KEPLER,
    FrozenTransE,
    KEPLERCollator,
    KEPLERConfig,
    NegativeSampler,
    TransEScorer,
    kepler_loss,
    load_embeddings,
    save_embeddings,
    train_frozen_transe,
    train_kepler,
    transe_score,
)

__all__ = ["KEPLER", "FrozenTransE", "KEPLERCollator", "KEPLERConfig", "NegativeSampler", "TransEScorer",
           "kepler_loss", "load_embeddings", "save_embeddings", "train_frozen_transe", "train_kepler", "transe_score"]
