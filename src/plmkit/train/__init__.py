"""Training core on accelerate: seeded, resumable, with progress, periodic eval and checkpoints."""
from .loop import TrainConfig, TrainResult, causal_lm_collate, train

__all__ = ["TrainConfig", "TrainResult", "causal_lm_collate", "train"]
