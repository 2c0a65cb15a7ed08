"""ModelSpec: where each canonical role lives in one architecture family.

Paths of embeddings, stacks and final norms are relative to the *base* model
(``model.base_model``: ``BertModel`` inside ``BertForMaskedLM``); the head path is
relative to the model the user holds.  Paths inside a block are relative to the block.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

#: FFN kinds: plain ``act(W_in x)``, or gated ``act(W_gate x) * (W_in x)``.
FFN_KINDS = ("relu", "gelu", "silu", "gated-relu", "gated-gelu", "gated-silu")
#: How positions enter attention.
POSITIONS = ("absolute", "rotary", "relative")


@dataclass(frozen=True)
class AttentionGeometry:
    """Self-attention shape of one model: query heads, key/value heads (fewer under GQA), head width."""

    n_heads: int
    n_kv_heads: int
    head_dim: int
    position: str  # one of POSITIONS

    @property
    def kv_dim(self) -> int:
        """Width of one token's keys (and values): ``n_kv_heads * head_dim``."""
        return self.n_kv_heads * self.head_dim

    @property
    def group(self) -> int:
        """Query heads per key/value head (1 without GQA)."""
        return self.n_heads // self.n_kv_heads


@dataclass(frozen=True)
class BlockSpec:
    """Module paths inside one transformer block (relative to the block)."""

    attn_o: str
    ffn_in: str
    ffn_out: str
    attn_q: str | None = None
    attn_k: str | None = None
    attn_v: str | None = None
    attn_qkv: str | None = None  # fused q/k/v projection (GPT-2's c_attn)
    ffn_gate: str | None = None
    norms: Mapping[str, str] = field(default_factory=dict)  # canonical name -> path
    cross_attn: Mapping[str, str] = field(default_factory=dict)  # q/k/v/o of encoder-decoder attention
    attn: str | None = None  # the self-attention module (its output holds the attention probabilities)
    attn_probs_index: int = 1  # where the probabilities stand in that module's output tuple

    def __post_init__(self) -> None:
        if self.attn_qkv is None and not (self.attn_q and self.attn_k and self.attn_v):
            raise ValueError("BlockSpec needs attn_q, attn_k and attn_v, or a fused attn_qkv")


@dataclass(frozen=True)
class StackSpec:
    """One stack of blocks: ``blocks`` for single-stack models, ``encoder``/``decoder`` for T5."""

    name: str
    blocks: str  # path of the ModuleList of blocks, relative to the base model
    block: BlockSpec
    final_norm: str | None = None


@dataclass(frozen=True)
class ModelSpec:
    """Everything plmkit needs to know about one architecture family."""

    family: str
    model_types: tuple[str, ...]
    embeddings: str
    stacks: tuple[StackSpec, ...]
    heads: tuple[str, ...] = ()  # candidate LM/MLM head paths, relative to the user's model
    conv1d: bool = False  # weights stored (in, out) as in GPT-2's Conv1D
    act_keys: tuple[str, ...] = ("hidden_act",)  # config attributes naming the FFN activation
    gated: bool | Callable[[Any], bool] = False
    position: str = "absolute"  # one of POSITIONS
    n_heads_keys: tuple[str, ...] = ("num_attention_heads", "n_head", "num_heads")
    n_kv_heads_keys: tuple[str, ...] = ("num_key_value_heads",)
    head_dim_keys: tuple[str, ...] = ("head_dim", "d_kv")
    width_keys: tuple[str, ...] = ("hidden_size", "n_embd", "d_model")

    def __post_init__(self) -> None:
        if self.position not in POSITIONS:
            raise ValueError(f"position must be one of {POSITIONS}, got '{self.position}'")

    def attention(self, config: Any) -> AttentionGeometry:
        """Heads, key/value heads and head width from the model's config."""
        def first(keys: tuple[str, ...]) -> int | None:
            for k in keys:
                v = getattr(config, k, None)
                if isinstance(v, int) and v > 0:
                    return v
            return None

        heads = first(self.n_heads_keys)
        if heads is None:
            raise ValueError(f"config of family {self.family} has none of {self.n_heads_keys}")
        width = first(self.width_keys)
        head_dim = first(self.head_dim_keys) or (width // heads if width else None)
        if head_dim is None:
            raise ValueError(f"config of family {self.family} has none of {self.head_dim_keys + self.width_keys}")
        return AttentionGeometry(heads, first(self.n_kv_heads_keys) or heads, head_dim, self.position)

    def stack(self, name: str) -> StackSpec:
        for s in self.stacks:
            if s.name == name:
                return s
        raise KeyError(f"{self.family} has no stack '{name}'; stacks: {[s.name for s in self.stacks]}")

    def is_gated(self, config: Any) -> bool:
        return self.gated(config) if callable(self.gated) else bool(self.gated)

    def activation_name(self, config: Any) -> str:
        for key in self.act_keys:
            value = getattr(config, key, None)
            if value:
                return str(value)
        raise ValueError(f"config of family {self.family} has none of {self.act_keys}")

    def ffn_kind(self, config: Any) -> str:
        """One of FFN_KINDS, from the config's activation name and gating."""
        act = self.activation_name(config).lower()
        act = act.removeprefix("gated-")
        base = "relu" if "relu" in act else "silu" if ("silu" in act or "swish" in act) else "gelu"
        return f"gated-{base}" if self.is_gated(config) else base

    # --- JSON round trip (the user override format) ---------------------------------
    def to_dict(self) -> dict[str, Any]:
        if callable(self.gated):
            raise TypeError("a spec with a computed 'gated' cannot be serialised; pass a bool")
        d = dataclasses.asdict(self)
        d["model_types"] = list(self.model_types)
        d["act_keys"] = list(self.act_keys)
        d["heads"] = list(self.heads)
        for k in ("n_heads_keys", "n_kv_heads_keys", "head_dim_keys", "width_keys"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ModelSpec":
        d = dict(d)
        try:
            stacks = tuple(
                StackSpec(
                    name=s["name"],
                    blocks=s["blocks"],
                    final_norm=s.get("final_norm"),
                    block=BlockSpec(**s["block"]),
                )
                for s in d.pop("stacks")
            )
            return cls(
                stacks=stacks,
                model_types=tuple(d.pop("model_types", ())),
                act_keys=tuple(d.pop("act_keys", ("hidden_act",))),
                heads=tuple(d.pop("heads", ())),
                **{k: tuple(v) for k, v in d.items() if k.endswith("_keys")},
                **{k: v for k, v in d.items() if not k.endswith("_keys")},
            )
        except (KeyError, TypeError) as e:
            raise ValueError(
                f"invalid architecture override ({e}). Expected keys: family, embeddings, stacks=[{{name, "
                "blocks, block: {attn_q, attn_k, attn_v, attn_o, ffn_in, ffn_out, ...}}], heads, conv1d, gated. "
                "`plmkit arch minilm --spec` prints a registered spec to start from."
            ) from e
