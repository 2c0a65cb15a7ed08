"""ERNIE's knowledgeable encoder over any BERT-family model: plain blocks (T-encoder), then aggregators (K-encoder).

An aggregator block runs the block's own token self-attention, a separate multi-head attention over the
entity sequence (entity vectors aligned to the first word piece of their mention, zero elsewhere), and a
fusion inside the block's own FFN: ``h = act(W_t·w + W_e·e)`` for a token ``w`` holding entity ``e``, with
``W_t`` the block's FFN input projection. The tokens leave through the block's own FFN output (and norm),
the entities through their own ``LayerNorm(W_o·h + e)``. This is the reference's BertLayerMix / BertLayer
with the pretrained FFN serving as the token side of the fusion.

The fusion lives in two :class:`~plmkit.arch.Wrapper` s on each aggregator block's FFN projections (the
entity side registered on the model there), so ``plmkit.arch``, hooks and the next method see the encoder
unchanged and :meth:`ERNIE.detach` gives the plain model back. With no entities in a sequence, or the
entity-to-token projection at zero (``fusion_init="zero"``), a block computes exactly what it did.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn
from torch.nn import functional as F

from ... import arch
from ...arch.wrap import Wrapper, resolve_path
from ...errors import ConfigError
from .config import ERNIEConfig


class EntityAttention(nn.Module):
    """Multi-head self-attention over the token-aligned entity sequence, then output projection, residual and
    LayerNorm (a BERT attention block in entity width); positions without an entity are masked as keys."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        if dim % heads:
            raise ConfigError(f"the entity width {dim} is not divisible by entity_heads={heads}; pick a divisor")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, e: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, d = e.shape
        q, k, v = self.qkv(e).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        bias = torch.zeros(b, 1, 1, t, dtype=q.dtype, device=q.device)
        bias = bias.masked_fill(~mask[:, None, None, :], torch.finfo(q.dtype).min)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=bias,
                                           dropout_p=self.drop.p if self.training else 0.0)
        return self.norm(e + self.drop(self.out(o.transpose(1, 2).reshape(b, t, d))))


class Aggregator(nn.Module):
    """The entity side of one K-encoder block: entity attention, ``W_e`` into the FFN, ``LN(W_o·h + e)`` out.
    The top block's aggregator (``last``) has no entity output: nothing above it would read one."""

    def __init__(self, entity_dim: int, d_ff: int, config: ERNIEConfig, last: bool = False):
        super().__init__()
        self.attention = EntityAttention(entity_dim, config.entity_heads, config.dropout)
        self.fuse = nn.Linear(entity_dim, d_ff, bias=False)  # W_e; W_t (and the bias) are the block's own
        self.out = None if last else nn.Linear(d_ff, entity_dim)
        self.norm = None if last else nn.LayerNorm(entity_dim)
        self.drop = nn.Dropout(config.dropout)

    @property
    def last(self) -> bool:
        return self.out is None

    def reset_parameters(self, generator: torch.Generator, fusion_init: str) -> None:
        with torch.no_grad():
            for lin in (self.attention.qkv, self.attention.out, self.fuse, self.out):
                if lin is None:
                    continue
                lin.weight.copy_(torch.randn(lin.weight.shape, generator=generator) * 0.02)
                if lin.bias is not None:
                    lin.bias.zero_()
            if fusion_init == "zero":
                self.fuse.weight.zero_()
            for norm in (self.attention.norm, self.norm):
                if norm is None:
                    continue
                norm.weight.fill_(1.0)
                norm.bias.zero_()


@dataclass
class _Flow:
    """The entity states travelling up the K-encoder during one forward pass."""

    entities: torch.Tensor | None = None  # (B, T, d_e)
    mask: torch.Tensor | None = None  # (B, T) bool: the token holds an entity
    attended: torch.Tensor | None = None  # the current block's entity-attention output


class FusedFFNIn(Wrapper):
    """A K-encoder block's FFN input projection plus ``W_e·e`` at the tokens holding an entity."""

    def __init__(self, base_layer: nn.Module, aggregator: Aggregator, flow: _Flow):
        super().__init__(base_layer)
        self.aggregator = aggregator
        self.__dict__["flow"] = flow  # shared, not a module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        f = self.flow
        if f.entities is None:
            return y
        f.attended = self.aggregator.attention(f.entities.to(y.dtype), f.mask)
        return y + f.mask[..., None].to(y.dtype) * self.aggregator.fuse(f.attended)


class EntityOutput(Wrapper):
    """A K-encoder block's FFN output projection; on the way, the entities leave as ``LN(W_o·h + e)``."""

    def __init__(self, base_layer: nn.Module, aggregator: Aggregator, flow: _Flow):
        super().__init__(base_layer)
        self.__dict__["aggregator"] = aggregator  # registered on FusedFFNIn
        self.__dict__["flow"] = flow

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        f = self.flow
        if f.entities is not None:
            agg = self.aggregator
            e = agg.norm(agg.drop(agg.out(h)) + f.attended)
            f.entities = e * f.mask[..., None].to(e.dtype)
        return self.base_layer(h)


class EntityHead(nn.Module):
    """dEA's prediction head: token states into entity space (dense, GELU, LayerNorm)."""

    def __init__(self, d_model: int, entity_dim: int):
        super().__init__()
        self.dense = nn.Linear(d_model, entity_dim)
        self.norm = nn.LayerNorm(entity_dim)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.norm(F.gelu(self.dense(h)))


def _encoder_layers(model: nn.Module) -> list[arch.Layer]:
    config = getattr(arch.hf_model(model)[0], "config", None)
    if getattr(config, "is_encoder_decoder", False):
        raise ConfigError("ERNIE fuses entities into an encoder-only model (BERT, RoBERTa, ELECTRA ...); this model "
                          "is an encoder-decoder: pass its encoder alone (e.g. T5EncoderModel)")
    if arch.is_causal(model):
        raise ConfigError("ERNIE needs a bidirectional encoder (BERT, RoBERTa, ELECTRA ...); this model is causal")
    found = arch.layers(model)
    if any(layer.ffn_gate is not None for layer in found):
        raise ConfigError("ERNIE fuses entities into a plain FFN (act(W·x)); this model's FFN is gated (GLU): use a "
                          "BERT-family encoder")
    return found


def _set_at(model: nn.Module, path: str, make: Any) -> None:
    """Put ``make(current)`` in place of the module running at ``path`` (through wrappers above it)."""
    parent_path, _, name = path.rpartition(".")
    parent = resolve_path(model, parent_path, originals=False)
    parent._modules[name] = make(parent._modules[name])


class ERNIE(nn.Module):
    """An encoder whose upper blocks read entity vectors too.

    ``model``: any transformers model of a BERT-family encoder (bare, with an MLM head, or with a task head);
    ``entity_vectors``: (n, d_e) frozen KG embeddings; row ``i`` is entity id ``i + 1`` of ``entity_ids``
    (0 = no entity). Its forward takes the model's inputs plus ``entity_ids`` (B, T), the entity aligned to each
    token (see :func:`plmkit.knowledge.ernie.align_entities`), and returns the model's output.
    """

    def __init__(self, model: nn.Module, entity_vectors: torch.Tensor, config: ERNIEConfig | None = None, *,
                 seed: int = 0):
        super().__init__()
        self.config = config = config or ERNIEConfig()
        blocks = _encoder_layers(model)
        self.t_layers = len(blocks) // 2 if config.t_layers is None else config.t_layers
        if self.t_layers >= len(blocks):
            raise ConfigError(f"t_layers={self.t_layers} leaves no aggregator: the model has {len(blocks)} blocks")
        table = torch.zeros(entity_vectors.shape[0] + 1, entity_vectors.shape[1])
        table[1:] = entity_vectors.detach().float()
        p = next(model.parameters())
        # persistent: a training checkpoint carries the table its aggregators were trained against
        self.register_buffer("entity_table", table.to(p.device))
        self.flow = _Flow()
        self.model = model
        self.entity_head = EntityHead(blocks[0].d_model, self.entity_dim)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.entity_head.dense.weight.copy_(torch.randn(self.entity_head.dense.weight.shape, generator=gen) * 0.02)
            self.entity_head.dense.bias.zero_()
        self.entity_head.to(device=p.device, dtype=p.dtype)
        aggregators = []
        for i, layer in enumerate(blocks[self.t_layers:], self.t_layers):
            agg = Aggregator(self.entity_dim, layer.d_ff, config, last=i == len(blocks) - 1)
            agg.reset_parameters(gen, config.fusion_init)
            aggregators.append(agg.to(device=p.device, dtype=p.dtype))
        self._attach(aggregators)

    @property
    def entity_dim(self) -> int:
        return self.entity_table.shape[1]

    @property
    def num_entities(self) -> int:
        return self.entity_table.shape[0] - 1

    def _paths(self) -> list[tuple[str, str]]:
        return [(f"{layer.prefix}.{layer.ffn_in_path}", f"{layer.prefix}.{layer.ffn_out_path}")
                for layer in arch.layers(self.model)[self.t_layers:]]

    def _attach(self, aggregators: list[Aggregator]) -> None:
        for (p_in, p_out), agg in zip(self._paths(), aggregators):
            _set_at(self.model, p_in, lambda m, a=agg: FusedFFNIn(m, a, self.flow))
            if not agg.last:
                _set_at(self.model, p_out, lambda m, a=agg: EntityOutput(m, a, self.flow))

    @property
    def aggregators(self) -> list[Aggregator]:
        return [w.aggregator for _, w in arch.wrappers(self.model, FusedFFNIn)]

    def detach(self) -> nn.Module:
        """Take the aggregators off: the encoder as it was (its own weights, possibly fine-tuned), unwrapped."""
        arch.unwrap(self.model, (FusedFFNIn, EntityOutput))
        return self.model

    @contextlib.contextmanager
    def plain(self) -> Iterator[nn.Module]:
        """The encoder without the aggregators inside the block (to save it in its own layout), then back."""
        aggregators = self.aggregators
        self.detach()
        try:
            yield self.model
        finally:
            self._attach(aggregators)

    def set_entity_vectors(self, vectors: torch.Tensor) -> None:
        """Swap the entity table (same count and width): e.g. random vectors for an ablation."""
        if tuple(vectors.shape) != (self.num_entities, self.entity_dim):
            raise ConfigError(f"entity vectors of shape {tuple(vectors.shape)} do not replace a table of "
                              f"{self.num_entities} x {self.entity_dim}")
        self.entity_table[1:] = vectors.to(self.entity_table)

    def entity_inputs(self, entity_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The aligned entity vectors (B, T, d_e) and their mask (B, T) for ``entity_ids`` (0 = none)."""
        if entity_ids.numel() and (entity_ids.min() < 0 or entity_ids.max() > self.num_entities):
            raise ConfigError(f"entity ids {int(entity_ids.min())}..{int(entity_ids.max())} outside 0..{self.num_entities} "
                              "(0 = no entity): align them with the same entity table this ERNIE was built with")
        ids = entity_ids.to(self.entity_table.device)
        return self.entity_table[ids], ids > 0

    @contextlib.contextmanager
    def entities(self, entity_ids: torch.Tensor | None) -> Iterator[None]:
        """Within the block, the model's forward passes read ``entity_ids`` (B, T) (None: no entities)."""
        if entity_ids is None:
            self.flow.entities = None
            yield
            return
        self.flow.entities, self.flow.mask = self.entity_inputs(entity_ids)
        try:
            yield
        finally:
            self.flow.entities = self.flow.mask = self.flow.attended = None

    def forward(self, *args: Any, entity_ids: torch.Tensor | None = None, encode_only: bool = False,
                **kwargs: Any) -> Any:
        """The model's output for its usual inputs, its upper blocks reading ``entity_ids`` (B, T); with
        ``encode_only``, the encoder's last hidden states (no head run)."""
        if encode_only:
            return self.encode(*args, entity_ids=entity_ids, **kwargs)
        with self.entities(entity_ids):
            return self.model(*args, **kwargs)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               entity_ids: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        """The encoder's last hidden states (B, T, d), without running a head the model may carry."""
        with self.entities(entity_ids):
            return arch.base_model(self.model)(input_ids=input_ids, attention_mask=attention_mask,
                                               **kwargs).last_hidden_state


WEIGHTS, CONFIG = "ernie.safetensors", "ernie.json"


def save_ernie(ernie: ERNIE, directory: str | Path, tokenizer: Any = None, entity_ids: list[str] | None = None, *,
               extra: Any = None) -> Path:
    """Save ``ernie`` to ``directory`` (atomically): the encoder in its own Hugging Face layout (loadable by plain
    transformers), ``ernie.safetensors`` (aggregators, entity head, entity table) and ``ernie.json`` (the config,
    the encoder class and the table's entity ids). ``extra(folder)`` writes more files into the same folder
    before it replaces ``directory`` (a task head)."""
    from safetensors.torch import save_file

    from ..._io import atomic_dir, write_json

    tensors = {f"aggregators.{i}.{k}": v for i, agg in enumerate(ernie.aggregators) for k, v in agg.state_dict().items()}
    tensors.update({f"entity_head.{k}": v for k, v in ernie.entity_head.state_dict().items()})
    tensors["entity_table"] = ernie.entity_table
    with atomic_dir(directory) as tmp:
        with ernie.plain() as plain:
            plain.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(Path(tmp) / WEIGHTS))
        write_json(Path(tmp) / CONFIG, {"config": ernie.config.to_dict(), "t_layers": ernie.t_layers,
                                        "encoder_class": type(ernie.model).__name__, "entity_ids": entity_ids})
        if extra is not None:
            extra(Path(tmp))
    return Path(directory)


def load_ernie(directory: str | Path, *, device: str | torch.device | None = None) -> tuple[ERNIE, Any, list[str] | None]:
    """``(ernie, tokenizer or None, entity ids or None)`` from a folder :func:`save_ernie` wrote."""
    import json

    import transformers
    from safetensors.torch import load_file

    from ...errors import PlmkitError

    d = Path(directory)
    if not (d / CONFIG).is_file() or not (d / WEIGHTS).is_file():
        raise PlmkitError(f"{d} is not an ERNIE folder (no {CONFIG} / {WEIGHTS}); pass a folder written by "
                          "plmkit.knowledge.ernie.save_ernie or `plmkit ernie pretrain --out`")
    meta = json.loads((d / CONFIG).read_text())
    cls = getattr(transformers, meta["encoder_class"], None)
    if cls is None or not isinstance(cls, type) or not issubclass(cls, transformers.PreTrainedModel):
        raise PlmkitError(f"{d}: the encoder class {meta['encoder_class']!r} is not a transformers model class; "
                          "install the transformers version that saved it")
    model = cls.from_pretrained(d)
    weights = load_file(str(d / WEIGHTS))
    table = weights.pop("entity_table")
    config = ERNIEConfig.from_dict({**meta["config"], "t_layers": meta["t_layers"]})
    ernie = ERNIE(model, table[1:], config)
    ernie.entity_head.load_state_dict({k[len("entity_head."):]: v for k, v in weights.items()
                                       if k.startswith("entity_head.")})
    for i, agg in enumerate(ernie.aggregators):
        prefix = f"aggregators.{i}."
        agg.load_state_dict({k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)})
    tok = None
    if (d / "tokenizer_config.json").is_file():
        tok = transformers.AutoTokenizer.from_pretrained(d)
    if device is not None:
        ernie.to(device)
    return ernie.eval(), tok, meta.get("entity_ids")
