"""Training core on accelerate: seeded, resumable, with progress, periodic eval and checkpoints;
the same code on one process or several (torchrun / accelerate launch)."""
from .loop import TrainConfig, TrainResult, TuneConfig, causal_lm_collate, train, unwrap_model

__all__ = ["TrainConfig", "TrainResult", "TuneConfig", "causal_lm_collate", "train", "unwrap_model"]
