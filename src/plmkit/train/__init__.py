"""Training core on accelerate: seeded, resumable, with progress, periodic eval and checkpoints."""
from .loop import TrainConfig, TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "train"]
