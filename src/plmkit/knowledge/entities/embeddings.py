"""Entity embeddings as a knowledge source: ids <-> float32 vectors, saved with safetensors.

A folder written by :meth:`EntityEmbeddings.save`::

    embeddings.safetensors   entity_embeddings [n, d] (and relation_embeddings [m, d]), float32
    entity_to_id.json        {entity id: row}, as PyKEEN's TriplesFactory.entity_to_id
    relation_to_id.json      {relation: row} (only with relations)
    meta.json                model, kg, dim, seed, ... (``complex``: see below)

Complex embeddings (RotatE) are stored as their real view: a ``d``-dimensional complex vector becomes ``2d``
floats, real and imaginary parts interleaved per dimension (``torch.view_as_real``), and ``meta["complex"]``
is true. Import and export convert: PyKEEN, OpenKE text files, KEPLER runs. Nothing is ever unpickled.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from ..._io import atomic_dir, atomic_path, write_json
from ...errors import ConfigError, PlmkitError

TENSORS = "embeddings.safetensors"
_WHAT_TO_PASS = ("pass a folder written by EntityEmbeddings.save or `plmkit kge train --out DIR` (for a KEPLER "
                 "run use EntityEmbeddings.from_kepler, for OpenKE files from_openke)")


@dataclass
class EntityEmbeddings:
    """``ids[i]`` has vector ``vectors[i]``; optional relations likewise; ``meta`` describes the source."""

    ids: list[str]
    vectors: torch.Tensor
    relation_ids: list[str] | None = None
    relation_vectors: torch.Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.ids = list(self.ids)
        self.vectors = torch.as_tensor(self.vectors).detach().to("cpu", torch.float32).contiguous()
        if self.vectors.ndim != 2 or len(self.vectors) != len(self.ids):
            raise ConfigError(f"vectors must be [len(ids), dim]: {len(self.ids)} ids, "
                              f"shape {tuple(self.vectors.shape)}")
        self._index = {e: i for i, e in enumerate(self.ids)}
        if len(self._index) != len(self.ids):
            raise ConfigError("entity ids must be unique")
        if (self.relation_ids is None) != (self.relation_vectors is None):
            raise ConfigError("give both relation_ids and relation_vectors, or neither")
        if self.relation_vectors is not None:
            self.relation_ids = list(self.relation_ids or [])
            self.relation_vectors = torch.as_tensor(self.relation_vectors).detach().float().cpu().contiguous()
            if self.relation_vectors.ndim != 2 or len(self.relation_vectors) != len(self.relation_ids):
                raise ConfigError("relation_vectors must be [len(relation_ids), relation dim]")
            if len(set(self.relation_ids)) != len(self.relation_ids):
                raise ConfigError("relation ids must be unique")
        self.meta = {**self.meta, "dim": self.dim}

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, entity: str) -> bool:
        return entity in self._index

    @property
    def dim(self) -> int:
        """Floats per entity vector (``2 x`` the complex dimension for complex embeddings)."""
        return int(self.vectors.shape[1])

    def index(self, entity: str) -> int:
        """The row of ``entity``; KeyError if it has none."""
        try:
            return self._index[entity]
        except KeyError:
            raise KeyError(f"no embedding for entity {entity!r}") from None

    def lookup(self, entities: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(vectors [len, dim], found [len] bool)``; an unknown entity gets a zero vector and ``found=False``."""
        rows = [self._index.get(e, -1) for e in entities]
        found = torch.tensor([r >= 0 for r in rows], dtype=torch.bool)
        out = torch.zeros(len(rows), self.dim)
        if found.any():
            idx = torch.tensor(rows)[found]
            out[found] = self.vectors[idx]
        return out, found

    def subset(self, entities: Iterable[str]) -> "EntityEmbeddings":
        """The embeddings of those of ``entities`` that have one, in the order given (relations kept)."""
        keep = [e for e in dict.fromkeys(entities) if e in self._index]
        rows = torch.tensor([self._index[e] for e in keep], dtype=torch.long)
        return EntityEmbeddings(keep, self.vectors[rows], self.relation_ids, self.relation_vectors,
                                {**self.meta, "subset_of": len(self)})

    # --- plmkit's own format ---------------------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        """Write the folder described in the module docstring, replacing ``directory`` atomically."""
        from safetensors.torch import save_file

        tensors = {"entity_embeddings": self.vectors}
        if self.relation_vectors is not None:
            tensors["relation_embeddings"] = self.relation_vectors
        with atomic_dir(directory) as tmp:
            save_file(tensors, str(tmp / TENSORS), metadata={"format": "plmkit-entity-embeddings"})
            write_json(tmp / "entity_to_id.json", {e: i for i, e in enumerate(self.ids)})
            if self.relation_ids is not None:
                write_json(tmp / "relation_to_id.json", {r: i for i, r in enumerate(self.relation_ids)})
            write_json(tmp / "meta.json", self.meta)
        return Path(directory)

    @classmethod
    def load(cls, directory: str | Path) -> "EntityEmbeddings":
        """A folder written by :meth:`save`."""
        from safetensors.torch import load_file

        d = Path(directory)
        if not (d / TENSORS).is_file() or not (d / "entity_to_id.json").is_file():
            raise PlmkitError(f"{d} holds no entity embeddings ({TENSORS} + entity_to_id.json): {_WHAT_TO_PASS}")
        try:
            tensors = load_file(str(d / TENSORS))
            ids = _ids_in_order(json.loads((d / "entity_to_id.json").read_text(encoding="utf-8")))
            rel_ids = None
            if (d / "relation_to_id.json").is_file():
                rel_ids = _ids_in_order(json.loads((d / "relation_to_id.json").read_text(encoding="utf-8")))
            meta = json.loads((d / "meta.json").read_text(encoding="utf-8")) if (d / "meta.json").is_file() else {}
            return cls(ids, tensors["entity_embeddings"], rel_ids, tensors.get("relation_embeddings"), meta)
        except (ValueError, KeyError, TypeError, OSError, ConfigError) as e:
            raise PlmkitError(f"{d} holds broken entity embeddings ({e}): {_WHAT_TO_PASS}") from None

    # --- PyKEEN ----------------------------------------------------------------------------------------

    @classmethod
    def from_pykeen(cls, model: Any, triples_factory: Any, meta: dict[str, Any] | None = None) -> "EntityEmbeddings":
        """The entity (and relation) table of a trained PyKEEN model with one embedding per entity (TransE,
        RotatE, DistMult, ...), labelled by ``triples_factory``'s id maps; complex tables (RotatE) as their
        real view; ``meta`` adds to the recorded description."""
        def table(reps: Any, n: int) -> tuple[torch.Tensor, bool]:
            x = reps[0](indices=None).detach().cpu()
            if x.ndim != 2 or len(x) != n:
                raise ConfigError(f"{type(model).__name__}: expected one vector per id, got shape {tuple(x.shape)}")
            return (torch.view_as_real(x).reshape(n, -1), True) if x.is_complex() else (x, False)

        ents, complex_ = table(model.entity_representations, triples_factory.num_entities)
        rels, _ = table(model.relation_representations, triples_factory.num_relations)
        info = {"model": type(model).__name__, "source": "pykeen", "complex": complex_, **(meta or {})}
        return cls(_ids_in_order(triples_factory.entity_to_id), ents, _ids_in_order(triples_factory.relation_to_id),
                   rels, info)

    def pykeen_initializers(self) -> tuple[Any, Any | None]:
        """``(entity_initializer, relation_initializer or None)``: PyKEEN ``PretrainedInitializer``\\ s holding
        these tables (complex ones in the ``[n, d, 2]`` layout PyKEEN's complex embeddings take). Build the
        model on :meth:`triples_factory` so its ids are these rows."""
        from pykeen.nn.init import PretrainedInitializer

        def shaped(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(len(x), -1, 2) if self.meta.get("complex") else x

        rel = None if self.relation_vectors is None else PretrainedInitializer(shaped(self.relation_vectors))
        return PretrainedInitializer(shaped(self.vectors)), rel

    def triples_factory(self, triples: Sequence[tuple[str, str, str]]) -> Any:
        """A PyKEEN ``TriplesFactory`` of labelled ``triples`` with these id maps (unknown labels: ConfigError)."""
        import numpy as np
        from pykeen.triples import TriplesFactory

        if self.relation_ids is None:
            raise ConfigError("these embeddings have no relations; a PyKEEN triples factory needs relation ids")
        rel_index = {r: i for i, r in enumerate(self.relation_ids)}
        unknown = {x for h, r, t in triples for x in (h, t) if x not in self._index} | \
                  {r for _, r, _ in triples if r not in rel_index}
        if unknown:
            raise ConfigError(f"{len(unknown)} labels have no embedding, e.g. {sorted(unknown)[:3]}")
        mapped = np.array([(self._index[h], rel_index[r], self._index[t]) for h, r, t in triples], dtype=np.int64)
        return TriplesFactory(torch.as_tensor(mapped).reshape(-1, 3), entity_to_id=dict(self._index),
                              relation_to_id=rel_index)

    # --- OpenKE ----------------------------------------------------------------------------------------

    def to_openke(self, directory: str | Path) -> Path:
        """Write OpenKE's text files: ``entity2id.txt`` (the count, then ``name<TAB>id`` lines), ``entity2vec.vec``
        (row ``id``: tab-separated floats) and, with relations, ``relation2id.txt`` / ``relation2vec.vec``."""
        d = Path(directory)
        bad = [e for e in self.ids + (self.relation_ids or []) if any(c in e for c in "\t\n\r")]
        if bad:
            raise ConfigError(f"OpenKE's id files cannot hold a tab or newline in a name, e.g. {bad[0]!r}")
        tables = [("entity", self.ids, self.vectors)]
        if self.relation_ids is not None:
            tables.append(("relation", self.relation_ids, self.relation_vectors))
        for kind, ids, vectors in tables:
            with atomic_path(d / f"{kind}2id.txt") as tmp:
                tmp.write_text(f"{len(ids)}\n" + "".join(f"{e}\t{i}\n" for i, e in enumerate(ids)), encoding="utf-8")
            with atomic_path(d / f"{kind}2vec.vec") as tmp:
                tmp.write_text("".join("\t".join(f"{v:.9g}" for v in row) + "\n" for row in vectors.tolist()),
                               encoding="utf-8")
        return d

    @classmethod
    def from_openke(cls, entity2id: str | Path, entity2vec: str | Path, relation2id: str | Path | None = None,
                    relation2vec: str | Path | None = None, meta: dict[str, Any] | None = None) -> "EntityEmbeddings":
        """Embeddings from OpenKE's text files (the format :meth:`to_openke` writes)."""
        ids = _read_openke_ids(entity2id)
        vectors = _read_openke_vectors(entity2vec, len(ids))
        rel_ids = rel_vectors = None
        if (relation2id is None) != (relation2vec is None):
            raise ConfigError("give both relation2id and relation2vec, or neither")
        if relation2id is not None:
            rel_ids = _read_openke_ids(relation2id)
            rel_vectors = _read_openke_vectors(relation2vec, len(rel_ids))
        return cls(ids, vectors, rel_ids, rel_vectors, {"source": "openke", **(meta or {})})

    # --- KEPLER ----------------------------------------------------------------------------------------

    @classmethod
    def from_kepler(cls, run_dir: str | Path) -> "EntityEmbeddings":
        """The entity and relation embeddings a KEPLER run exported (the run folder, or its ``embeddings/``)."""
        from ..kepler import load_embeddings

        d = Path(run_dir)
        folder = d / "embeddings" if (d / "embeddings").is_dir() else d
        ents, rels, vocab, config = load_embeddings(folder)
        meta = {"model": "KEPLER", "source": "kepler", "run": str(d), "scoring": "transe", "gamma": config.gamma,
                "p_norm": config.p_norm}
        return cls(vocab.entities, ents, vocab.relations, rels, meta)


def _ids_in_order(mapping: dict[str, int]) -> list[str]:
    """Labels by row from a ``{label: row}`` map whose rows are ``0..n-1``."""
    ids = sorted(mapping, key=lambda k: mapping[k])
    if [mapping[k] for k in ids] != list(range(len(ids))):
        raise ConfigError("an id map must number its labels 0..n-1 without gaps")
    return ids


def _read_openke_ids(path: str | Path) -> list[str]:
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    try:
        count = int(lines[0].strip())
        pairs = [line.rsplit("\t", 1) if "\t" in line else line.rsplit(None, 1) for line in lines[1:] if line.strip()]
        mapping = {name: int(i) for name, i in pairs}
    except (IndexError, ValueError):
        raise PlmkitError(f"{path} is not an OpenKE id file: the first line is the count, then 'name<TAB>id' "
                          "lines") from None
    if len(mapping) != count:
        raise PlmkitError(f"{path} announces {count} ids but lists {len(mapping)}")
    return _ids_in_order(mapping)


def _read_openke_vectors(path: str | Path, n: int) -> torch.Tensor:
    try:
        rows = [[float(v) for v in line.split()] for line in Path(path).read_text(encoding="utf-8").splitlines()
                if line.strip()]
        vectors = torch.tensor(rows, dtype=torch.float32)
    except ValueError:
        raise PlmkitError(f"{path} is not an OpenKE vector file: one line of tab-separated floats per id") from None
    if vectors.ndim != 2 or len(vectors) != n:
        raise PlmkitError(f"{path} has {len(rows)} rows of unequal or wrong count for {n} ids")
    return vectors
