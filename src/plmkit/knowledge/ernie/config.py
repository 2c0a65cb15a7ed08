"""ERNIE's settings: where the knowledge encoder starts, the entity attention, dEA corruption rates."""
from __future__ import annotations

from dataclasses import dataclass

from ...config import JsonConfig
from ...errors import ConfigError


@dataclass
class ERNIEConfig(JsonConfig):
    """``t_layers``: how many of the encoder's blocks stay plain (the T-encoder); every block above it becomes a
    knowledge aggregator (the K-encoder). None: half of the blocks (the paper: 6 of BERT-base's 12).

    ``fusion_init``: ``"zero"`` starts the entity-to-token projection at zero, so a fresh ERNIE computes exactly
    what its encoder did (the aggregators learn to use the entities from there); ``"normal"`` draws it like
    BERT's weights (std 0.02), as the reference code does.
    """

    t_layers: int | None = None
    entity_heads: int = 4
    dropout: float = 0.1
    fusion_init: str = "zero"
    # dEA: of the aligned entities, this share is replaced by a random entity and this share dropped
    dea_replace: float = 0.05
    dea_drop: float = 0.15
    dea_weight: float = 1.0  # weight of the dEA loss beside the MLM loss

    def __post_init__(self) -> None:
        if self.t_layers is not None and self.t_layers < 0:
            raise ConfigError("t_layers must be >= 0 (None: half of the blocks)")
        if self.entity_heads < 1:
            raise ConfigError("entity_heads must be >= 1")
        if self.fusion_init not in ("zero", "normal"):
            raise ConfigError("fusion_init must be 'zero' or 'normal'")
        if not 0 <= self.dropout < 1 or self.dea_weight < 0:
            raise ConfigError("dropout must lie in [0, 1) and dea_weight be >= 0")
        if not (0 <= self.dea_replace and 0 <= self.dea_drop and self.dea_replace + self.dea_drop <= 1):
            raise ConfigError("dea_replace and dea_drop must be shares in [0, 1] summing to at most 1")
