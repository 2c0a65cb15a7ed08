"""VariatorConfig: the shape of one set of compression plugins."""
from __future__ import annotations

from dataclasses import dataclass, field

from ...config import JsonConfig
from ...errors import ConfigError

LOSSES = ("hidden", "logits", "both")


@dataclass
class VariatorConfig(JsonConfig):
    """Method hyperparameters (paths, device and seed of a run live elsewhere).

    ``k``: hidden states merged into one before each plugged FFN (the FFN sees 1/k of the tokens).
    ``hidden``: width r of the decompressor's bottleneck, Linear(2d -> r) -> tanh -> Linear(r -> d).
    ``layers``: block indices to plug (None: every block of every stack).
    ``causal``: None decides per stack (decoder stacks and decoder-only models are causal).
    ``loss``: what distillation matches: the last hidden states (MSE), the logits (KL), or both.
    """

    k: int = 4
    hidden: int = 64
    layers: list[int] | None = None
    causal: bool | None = None
    exact_prefix: int = 0  # encoders: leading positions whose FFN runs uncompressed (1 keeps a [CLS] token intact)
    loss: str = "hidden"
    temperature: float = 1.0  # of the KL term
    extra: dict = field(default_factory=dict)  # free-form notes saved with the plugins (task, data)

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ConfigError(f"k must be >= 1, got {self.k}")
        if self.exact_prefix < 0:
            raise ConfigError(f"exact_prefix must be >= 0, got {self.exact_prefix}")
        if self.hidden < 1:
            raise ConfigError(f"hidden must be >= 1, got {self.hidden}")
        if self.loss not in LOSSES:
            raise ConfigError(f"loss must be one of {LOSSES}, got '{self.loss}'")
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
        if self.layers is not None:
            self.layers = [int(i) for i in self.layers]
