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
from .kepler_run import kepler_embed, kepler_evaluate, kepler_predict, kepler_train, to_pykeen

__all__ = ["KEPLER", "FrozenTransE", "KEPLERCollator", "KEPLERConfig", "NegativeSampler", "TransEScorer",
           "kepler_embed", "kepler_evaluate", "kepler_loss", "kepler_predict", "kepler_train", "to_pykeen", "load_embeddings", "save_embeddings", "train_frozen_transe", "train_kepler", "transe_score"]
