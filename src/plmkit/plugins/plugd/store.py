"""An on-disk store of document plugins, keyed by content hash, shared safely between processes.

A plugin lives at ``DIR/plugins/<key>.safetensors`` with ``key = sha256(identity, text)``: the same text
under another backbone, map network or config (``identity``, see :func:`plmkit.plugins.plugd.identity`) is
another plugin. Each file is written to a temporary name and moved into place, so a crash leaves the previous
state and two processes writing one plugin leave one valid file. ``index.json`` maps document ids to keys
(read-modify-written under a file lock). With ``max_bytes`` the least recently used plugins (by file access
time, refreshed on every read) are evicted until the store fits.

>>> store = PluginStore("plugins", identity=plugd.identity(model), max_bytes=500_000_000)   # doctest: +SKIP
>>> plugin = store.get_or_encode(model, tok, "doc-7", text)                                # doctest: +SKIP
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..._io import atomic_path, file_lock, write_json
from ...errors import PlmkitError

META = "store.json"


@dataclass(frozen=True)
class StoredPlugin:
    key: str
    doc_id: str
    vectors: int  # plugin vectors (document tokens, or the pooled count)
    bytes: int  # size of its file


class PluginStore:
    def __init__(self, root: str | os.PathLike, identity: str, *, max_bytes: int | None = None,
                 meta: dict[str, Any] | None = None):
        """``identity``: what the plugins depend on (model, map network, config); ``meta``: free-form notes
        (which model and map network wrote the store) kept in ``store.json`` for readers such as the CLI."""
        self.root, self.identity, self.max_bytes = Path(root), identity, max_bytes
        (self.root / "plugins").mkdir(parents=True, exist_ok=True)
        if meta is not None:
            with self._locked():
                write_json(self.root / META, {**self.meta(), **meta, "identity": identity})

    @classmethod
    def open(cls, root: str | os.PathLike, *, max_bytes: int | None = None) -> "PluginStore":
        """A store written before, with the identity recorded in its ``store.json``."""
        path = Path(root) / META
        if not path.is_file():
            raise PlmkitError(f"{root} is not a plugin store (no {META}); create one with `plmkit plugd encode`")
        return cls(root, json.loads(path.read_text())["identity"], max_bytes=max_bytes)

    def meta(self) -> dict[str, Any]:
        path = self.root / META
        return json.loads(path.read_text()) if path.is_file() else {}

    def key(self, text: str) -> str:
        return hashlib.sha256(f"{self.identity}\0{text}".encode()).hexdigest()[:32]

    def _path(self, key: str) -> Path:
        return self.root / "plugins" / f"{key}.safetensors"

    def _locked(self) -> contextlib.AbstractContextManager:
        return file_lock(self.root / "index.json")

    def _index(self) -> dict[str, str]:
        path = self.root / "index.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def put(self, doc_id: str, text: str, plugin: torch.Tensor) -> StoredPlugin:
        """Store ``plugin`` (n, d) for the document (replacing an equal key), then evict down to the cap."""
        from safetensors.torch import save_file

        key = self.key(text)
        with atomic_path(self._path(key)) as tmp:
            save_file({"plugin": plugin.detach().cpu().contiguous()}, str(tmp),
                      metadata={"doc_id": doc_id, "identity": self.identity})
        with self._locked():
            index = self._index()
            index[doc_id] = key
            write_json(self.root / "index.json", index)
            self._evict(keep=key)
        return StoredPlugin(key, doc_id, int(plugin.shape[0]), self._path(key).stat().st_size)

    def get(self, doc_id: str | None = None, *, text: str | None = None) -> torch.Tensor | None:
        """The plugin of a document, by id or by text; None when it is not stored (never stored, or evicted)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        key = self.key(text) if text is not None else self._index().get(str(doc_id))
        if key is None:
            return None
        path = self._path(key)
        try:
            plugin = load_file(str(path))["plugin"]
        except (FileNotFoundError, SafetensorError, KeyError):
            return None
        with contextlib.suppress(FileNotFoundError):
            os.utime(path)  # most recently used
        return plugin

    def get_or_encode(self, model: Any, tokenizer: Any, doc_id: str, text: str) -> torch.Tensor:
        """The stored plugin of ``text``, encoding and storing it first when missing."""
        from .model import encode

        plugin = self.get(text=text)
        if plugin is None:
            plugin = encode(model, tokenizer, [text])[0]
            self.put(doc_id, text, plugin)
        else:
            with self._locked():
                index = self._index()
                if index.get(doc_id) != self.key(text):
                    index[doc_id] = self.key(text)
                    write_json(self.root / "index.json", index)
        return plugin.to(next(model.parameters()).device)

    def entries(self) -> list[StoredPlugin]:
        """Every stored plugin, least recently used first."""
        by_key = {v: k for k, v in self._index().items()}
        files = sorted(self.root.glob("plugins/*.safetensors"), key=lambda p: p.stat().st_mtime)
        out = []
        for p in files:
            from safetensors import safe_open

            with safe_open(str(p), "pt") as f:
                n = f.get_slice("plugin").get_shape()[0]
            out.append(StoredPlugin(p.stem, by_key.get(p.stem, ""), int(n), p.stat().st_size))
        return out

    def total_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.root.glob("plugins/*.safetensors"))

    def __len__(self) -> int:
        return len(list(self.root.glob("plugins/*.safetensors")))

    def _evict(self, keep: str) -> None:
        if self.max_bytes is None:
            return
        files = sorted(self.root.glob("plugins/*.safetensors"), key=lambda p: p.stat().st_mtime)
        total = sum(p.stat().st_size for p in files)
        for p in files:
            if total <= self.max_bytes:
                break
            if p.stem == keep:
                continue
            total -= p.stat().st_size
            p.unlink(missing_ok=True)
