"""PlugDConfig: where document plugins go in and what they look like."""
from __future__ import annotations

from dataclasses import dataclass

from ...config import JsonConfig
from ...errors import ConfigError


@dataclass
class PlugDConfig(JsonConfig):
    """Method hyperparameters (paths, device and seed of a run live elsewhere).

    ``layers``: block indices whose self-attention also attends to the plugin (None: the top half).
    ``stack``: the stack those blocks belong to (None: the model's only stack; T5 takes ``"encoder"``).
    ``map_mult``: the map network is x + W2·GELU(W1·x) with W1: d -> map_mult·d.
    ``compress``: pool each document's vectors into this many (None: one vector per document token).
    ``max_doc_tokens``: documents are cut to this many tokens before encoding.
    ``doc_layer``: the document's states are taken as they enter this block (None: the first plugged block, the
    depth the plugged layers know); -1 takes the stack's output (the paper's choice with T5's encoder, far out
    of distribution for a decoder-only model's upper layers).
    """

    layers: list[int] | None = None
    stack: str | None = None
    map_mult: int = 2
    compress: int | None = None
    max_doc_tokens: int = 256
    doc_layer: int | None = None

    def __post_init__(self) -> None:
        if self.map_mult < 1:
            raise ConfigError(f"map_mult must be >= 1, got {self.map_mult}")
        if self.compress is not None and self.compress < 1:
            raise ConfigError(f"compress must be >= 1 or None, got {self.compress}")
        if self.max_doc_tokens < 1:
            raise ConfigError(f"max_doc_tokens must be >= 1, got {self.max_doc_tokens}")
        if self.layers is not None:
            self.layers = [int(i) for i in self.layers]
