"""MoEficationConfig: how to split FFNs into experts, route to them and select them."""
from __future__ import annotations

from dataclasses import dataclass

from ...config import JsonConfig
from ...errors import ConfigError

SPLITS = ("kmeans", "coactivation")
ROUTERS = ("mlp", "similarity")


def experts_for_fraction(active: float, experts: int) -> int:
    """Experts per token for a fraction ``active`` of ``experts``: the nearest count, at least 1."""
    if not 0 < active <= 1:
        raise ConfigError(f"active must lie in (0, 1], got {active}")
    return max(1, min(experts, round(active * experts)))


@dataclass
class MoEficationConfig(JsonConfig):
    """Method hyperparameters (paths, device and seed of a run live elsewhere).

    Selection: exactly one of ``top_k`` (experts per token), ``active`` (fraction of experts per
    token, rounded to the nearest count, at least 1) or ``mass`` (smallest set of experts whose
    predicted share of activation mass reaches ``mass``).
    """

    experts: int = 16
    split: str = "kmeans"
    router: str = "mlp"
    top_k: int | None = None
    active: float | None = 0.25
    mass: float | None = None
    kmeans_iters: int = 20
    coactivation_threshold: float | None = None  # |a| above this counts as active; None: each token's top 10%
    router_hidden: int | None = None  # MLP router width; None: = experts (as the reference)
    router_steps: int = 300
    router_lr: float = 1e-2
    router_batch: int = 512
    calibration_tokens: int = 4096
    order_experts: bool = True  # place often co-selected experts side by side (fewer calls at batch 1)

    def __post_init__(self) -> None:
        if self.experts < 2:
            raise ConfigError(f"experts must be >= 2, got {self.experts}")
        if self.split not in SPLITS:
            raise ConfigError(f"split must be one of {SPLITS}, got '{self.split}'")
        if self.router not in ROUTERS:
            raise ConfigError(f"router must be one of {ROUTERS}, got '{self.router}'")
        given = [n for n in ("top_k", "active", "mass") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ConfigError(f"set exactly one of top_k, active, mass (got {given or 'none'})")
        if self.top_k is not None and not 1 <= self.top_k <= self.experts:
            raise ConfigError(f"top_k must lie in [1, experts={self.experts}], got {self.top_k}")
        if self.active is not None:
            experts_for_fraction(self.active, self.experts)  # validates
        if self.mass is not None and not 0 < self.mass <= 1:
            raise ConfigError(f"mass must lie in (0, 1], got {self.mass}")

    @property
    def k(self) -> int | None:
        """Experts per token for top-k selection (None with a mass threshold)."""
        if self.top_k is not None:
            return self.top_k
        if self.active is not None:
            return experts_for_fraction(self.active, self.experts)
        return None
