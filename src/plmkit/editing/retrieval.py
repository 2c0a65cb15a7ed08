"""Sentence embeddings and a vector index for note retrieval.

The index is an interface: ``ExactIndex`` (exact inner product in memory) is the default, and an
approximate or on-disk index (FAISS, LanceDB) can replace it without changing callers.
"""
from __future__ import annotations

from typing import Protocol, Sequence

import torch

from ..data.batching import token_batches


class SentenceEncoder:
    """Mean-pooled, L2-normalised sentence embeddings from any Hugging Face encoder.

    ``SentenceEncoder("minilm")`` is the default retriever (all-MiniLM-L6-v2: mean pooling and
    normalisation are how it was trained). ``name`` identifies the encoder inside a notebook.
    """

    def __init__(self, model: str | torch.nn.Module = "minilm", tokenizer=None, *, name: str | None = None,
                 max_length: int = 128, batch_size: int = 64, normalize: bool = True):
        if isinstance(model, str):
            from ..assets import load_model

            name = name or model
            model, tokenizer = load_model(model, task="base")
        if tokenizer is None:
            raise ValueError("pass the tokenizer with a model object: SentenceEncoder(model, tokenizer)")
        self.model, self.tokenizer = model.eval(), tokenizer
        self.name = name or getattr(model.config, "_name_or_path", "") or type(model).__name__
        self.max_length, self.batch_size, self.normalize = max_length, batch_size, normalize

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """``(len(texts), dim)`` float32 embeddings."""
        if isinstance(texts, str):
            raise TypeError("encode takes a list of strings")
        device = next(self.model.parameters()).device
        out = [torch.zeros(0, self.dim)]
        for batch in token_batches(self.tokenizer, list(texts), self.batch_size, self.max_length, device):
            hidden = self.model(**batch).last_hidden_state.float()
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            emb = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
            if self.normalize:
                emb = torch.nn.functional.normalize(emb, dim=-1)
            out.append(emb.cpu())
        return torch.cat(out)


class VectorIndex(Protocol):
    """What the notebook needs from an index: ids in, ids and scores out."""

    def add(self, ids: Sequence[int], vectors: torch.Tensor) -> None: ...

    def remove(self, ids: Sequence[int]) -> None: ...

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]: ...

    def __len__(self) -> int: ...


class ExactIndex:
    """Exact inner-product search over rows kept in memory (adds append rows, removes drop them)."""

    def __init__(self, dim: int):
        self.dim = dim
        self.ids = torch.zeros(0, dtype=torch.long)
        self.vectors = torch.zeros(0, dim)

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, ids: Sequence[int], vectors: torch.Tensor) -> None:
        vectors = torch.as_tensor(vectors, dtype=torch.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim or len(vectors) != len(ids):
            raise ValueError(f"expected {len(ids)} vectors of size {self.dim}, got shape {tuple(vectors.shape)}")
        self.ids = torch.cat([self.ids, torch.as_tensor(list(ids), dtype=torch.long)])
        self.vectors = torch.cat([self.vectors, vectors], dim=0)  # rows, never features

    def remove(self, ids: Sequence[int]) -> None:
        keep = ~torch.isin(self.ids, torch.as_tensor(list(ids), dtype=torch.long))
        self.ids, self.vectors = self.ids[keep], self.vectors[keep]

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ids, scores)``, each ``(len(queries), min(k, len(self)))``, best first."""
        k = min(k, len(self))
        scores = queries.float() @ self.vectors.T
        top, pos = scores.topk(k, dim=-1) if k else (scores[:, :0], scores[:, :0].long())
        return self.ids[pos], top
