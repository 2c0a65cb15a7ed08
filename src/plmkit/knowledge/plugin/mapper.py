"""The mapping network of a knowledge plugin: KG-embedding space -> a model's input-embedding space.

A mapper is saved as ``mapper.safetensors`` + ``mapper.json``; the JSON names the entity embeddings it was
tuned for (their source and a hash of their ids), and loading it against other embeddings is refused.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...config import JsonConfig
from ...errors import ConfigError, PlmkitError

WEIGHTS, CONFIG = "mapper.safetensors", "mapper.json"


@dataclass
class MapperConfig(JsonConfig):
    """``kind``: ``linear`` (one Linear, the paper's default) or ``mlp`` (Linear, GELU, Linear of ``hidden``)."""

    kg_dim: int
    model_dim: int
    kind: str = "linear"
    hidden: int = 0  # mlp width (0: model_dim)

    def __post_init__(self) -> None:
        if self.kind not in ("linear", "mlp"):
            raise ConfigError("mapper kind must be 'linear' or 'mlp'")
        if min(self.kg_dim, self.model_dim) < 1 or self.hidden < 0:
            raise ConfigError("kg_dim and model_dim must be >= 1 and hidden >= 0")


class Mapper(nn.Module):
    """Maps (…, kg_dim) entity vectors to (…, model_dim) pseudo-token embeddings."""

    def __init__(self, config: MapperConfig, *, seed: int = 0):
        super().__init__()
        self.config = config
        g = torch.Generator().manual_seed(seed)
        if config.kind == "linear":
            self.net = nn.Linear(config.kg_dim, config.model_dim)
        else:
            h = config.hidden or config.model_dim
            self.net = nn.Sequential(nn.Linear(config.kg_dim, h), nn.GELU(), nn.Linear(h, config.model_dim))
        with torch.no_grad():
            for m in self.net.modules():
                if isinstance(m, nn.Linear):
                    m.weight.copy_(torch.randn(m.weight.shape, generator=g) * m.in_features ** -0.5)
                    m.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def embeddings_identity(ids: list[str], source: str = "") -> dict[str, Any]:
    """What a mapper records of the entity embeddings it was tuned for: their source, count and an id hash."""
    h = hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]
    return {"source": source, "entities": len(ids), "ids_sha256": h}


def save_mapper(mapper: Mapper, directory: str | Path, kg: dict[str, Any]) -> Path:
    """Write the mapper and its config with ``kg`` (:func:`embeddings_identity`), atomically."""
    from safetensors.torch import save_file

    from ..._io import atomic_dir, write_json

    with atomic_dir(directory) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in mapper.state_dict().items()}, str(Path(tmp) / WEIGHTS))
        write_json(Path(tmp) / CONFIG, {"config": mapper.config.to_dict(), "kg": kg})
    return Path(directory)


def load_mapper(directory: str | Path, kg: dict[str, Any] | None = None) -> Mapper:
    """The mapper in ``directory``; with ``kg`` given, refused unless it was tuned for those embeddings."""
    from safetensors.torch import load_file

    d = Path(directory)
    if not (d / CONFIG).is_file() or not (d / WEIGHTS).is_file():
        raise PlmkitError(f"{d} holds no {CONFIG} / {WEIGHTS}; pass a folder written by save_mapper "
                          "(plmkit knowledge-plugin map-tune --out)")
    meta = json.loads((d / CONFIG).read_text())
    if kg is not None and (meta["kg"].get("ids_sha256"), meta["kg"].get("entities")) != (kg.get("ids_sha256"),
                                                                                         kg.get("entities")):
        raise ConfigError(f"{d} was tuned for other entity embeddings ({meta['kg'].get('source') or 'unnamed'}, "
                          f"{meta['kg'].get('entities')} entities); plug it with those, or map-tune a mapper for "
                          f"these ({kg.get('source') or 'unnamed'}, {kg.get('entities')} entities)")
    mapper = Mapper(MapperConfig.from_dict(meta["config"]))
    mapper.load_state_dict(load_file(str(d / WEIGHTS)))
    return mapper
