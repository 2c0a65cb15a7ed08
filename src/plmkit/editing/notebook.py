"""The notebook: natural-language edits stored with their embeddings in SQLite.

Every change is one SQLite transaction in write-ahead-log mode, so a crash or kill mid-write
leaves every committed note intact and readers in other processes keep working while one
process writes. The in-memory search index follows the database: rows are appended on add,
dropped on remove, and rebuilt when another process has committed a change.
"""
from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from ..errors import ConfigError, PlmkitError
from .retrieval import ExactIndex, SentenceEncoder, VectorIndex

DEFAULT_ENCODER = "minilm"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS notes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    text TEXT NOT NULL,
    created REAL NOT NULL,
    embedding BLOB NOT NULL
);
"""


def encoder_identity(encoder: SentenceEncoder) -> str:
    """What identifies an encoder's weights: for a model loaded from a folder, the hash of
    :func:`plmkit.cache.model_identity` (file sizes, config) and of its safetensors files; for a model built in
    memory, the hash of its parameters. Two encoders with the same name but other weights differ here."""
    from ..cache import weights_identity

    return weights_identity(encoder.model)


def _locked(method: Callable) -> Callable:
    """Serialise a method on the notebook's lock: one connection shared by several threads."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)
    return run


@dataclass(frozen=True)
class Note:
    id: int
    text: str
    created: float


@dataclass(frozen=True)
class Hit:
    note: Note
    score: float


def _statements(texts: list[str]) -> list[str]:
    texts = [t.strip() if isinstance(t, str) else t for t in texts]
    if not texts or any(not isinstance(t, str) or not t for t in texts):
        raise PlmkitError("a note must be a non-empty statement, e.g. 'The capital of France is Lyon.'")
    return texts


class Notebook:
    """Edits as notes: ``add``, ``update``, ``remove``, ``notes``, and top-k ``search``.

    ``encoder`` is a :class:`SentenceEncoder` or an asset/model name; by default the one the
    notebook was created with (``minilm`` for a new notebook). It is loaded only when a note is
    embedded or a search is made, so listing and removing stay fast.
    """

    def __init__(self, path: str | Path, encoder: SentenceEncoder | str | None = None,
                 index_factory: Callable[[int], VectorIndex] = ExactIndex, timeout: float = 30.0,
                 read_only: bool | None = None):
        self.path = Path(path)
        self._lock = threading.RLock()
        if read_only is None:  # a file (or folder, for the WAL files) this process may not write
            read_only = self.path.exists() and not (os.access(self.path, os.W_OK)
                                                     and os.access(self.path.parent, os.W_OK))
        self.read_only = read_only
        if read_only and not self.path.is_file():
            raise ConfigError(f"notebook {self.path} does not exist, so it cannot be opened read-only")
        if not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            if read_only:
                self._db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=timeout,
                                           isolation_level=None, check_same_thread=False)
                self._db.execute("SELECT COUNT(*) FROM notes").fetchone()
            else:
                self._db = sqlite3.connect(str(self.path), timeout=timeout, isolation_level=None,
                                           check_same_thread=False)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
                with self._transaction():
                    for statement in filter(str.strip, _SCHEMA.split(";")):
                        self._db.execute(statement)
        except sqlite3.DatabaseError as e:
            raise PlmkitError(f"{self.path} is not a plmkit notebook (SQLite said: {e}); pass another --db path") from e
        stored = self._meta("encoder")
        given = encoder.name if isinstance(encoder, SentenceEncoder) else encoder
        if stored and given and given != stored:
            raise ConfigError(f"notebook {self.path} was embedded with encoder '{stored}', not '{given}'; "
                              f"open it with encoder='{stored}' or create a new notebook")
        self._encoder_spec = encoder if encoder is not None else (stored or DEFAULT_ENCODER)
        self._encoder: SentenceEncoder | None = encoder if isinstance(encoder, SentenceEncoder) else None
        self._identity: str | None = None  # encoder_identity(self.encoder), once it is loaded and checked
        self._index_factory = index_factory
        self._index: VectorIndex | None = None
        self._by_id: dict[int, Note] = {}
        self._seen_version: int | None = None

    # ---- plumbing -------------------------------------------------------------------------
    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """One atomic write: committed whole, or rolled back whole on any error."""
        if self.read_only:
            raise PlmkitError(f"notebook {self.path} is open read-only (this process may not write the file or its "
                              "folder): listing and search work; to edit, copy it somewhere writable")
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    @property
    def encoder(self) -> SentenceEncoder:
        """The encoder, loaded on first use; its weights must be the ones the notebook was embedded with."""
        with self._lock:
            if self._encoder is None:
                self._encoder = SentenceEncoder(self._encoder_spec)
            if self._identity is None:
                stored, now = self._meta("encoder_identity"), encoder_identity(self._encoder)
                if stored and stored != now:
                    raise ConfigError(f"notebook {self.path} was embedded by other weights of encoder "
                                      f"'{self._encoder.name}' (identity {stored}, now {now}): install the encoder it "
                                      "was built with, or add the notes (`plmkit notes list`) to a new notebook")
                self._identity = now
            return self._encoder

    def _data_version(self) -> int:
        return int(self._db.execute("PRAGMA data_version").fetchone()[0])

    def _fresh_index(self) -> VectorIndex:
        """The search index, rebuilt from the database if another connection changed it."""
        version = self._data_version()
        if self._index is None or version != self._seen_version:
            dim = int(self._meta("dim") or self.encoder.dim)
            index = self._index_factory(dim)
            rows = self._db.execute("SELECT id, text, created, embedding FROM notes ORDER BY id").fetchall()
            if rows:
                vecs = np.stack([np.frombuffer(r[3], dtype=np.float32) for r in rows])
                index.add([r[0] for r in rows], torch.from_numpy(vecs.copy()))
            self._by_id = {r[0]: Note(*r[:3]) for r in rows}
            self._index, self._seen_version = index, version
        return self._index

    def _apply_own_write(self, update: Callable[[VectorIndex], None]) -> None:
        """After our own commit: update the index in place, unless another process also wrote
        meanwhile (then the next search rebuilds it from the database)."""
        if self._index is not None and self._data_version() == self._seen_version:
            update(self._index)
        else:
            self._index = None

    # ---- edits ----------------------------------------------------------------------------
    @_locked
    def add(self, texts: str | Sequence[str]) -> list[int]:
        """Embed and store notes (one transaction); returns their ids."""
        texts = _statements([texts] if isinstance(texts, str) else list(texts))
        self._fresh_index()
        vecs = self.encoder.encode(texts)
        ids = []
        with self._transaction():
            if self._meta("encoder") is None:
                self._db.execute("INSERT INTO meta VALUES ('encoder', ?), ('dim', ?)",
                                 (self.encoder.name, str(vecs.shape[1])))
            if self._meta("encoder_identity") is None:
                self._db.execute("INSERT INTO meta VALUES ('encoder_identity', ?)", (self._identity,))
            now = time.time()
            for text, vec in zip(texts, vecs):
                cur = self._db.execute("INSERT INTO notes (text, created, embedding) VALUES (?, ?, ?)",
                                       (text, now, vec.numpy().astype(np.float32).tobytes()))
                ids.append(int(cur.lastrowid))

        def apply(index: VectorIndex) -> None:
            index.add(ids, vecs)
            self._by_id.update({i: Note(i, t, now) for i, t in zip(ids, texts)})

        self._apply_own_write(apply)
        return ids

    @_locked
    def update(self, note_id: int, text: str) -> None:
        """Replace a note's text (and embedding), keeping its id; a missing id changes nothing."""
        (text,) = _statements([text])
        self.get(note_id)
        self._fresh_index()
        now = time.time()
        vec = self.encoder.encode([text])
        with self._transaction():
            cur = self._db.execute("UPDATE notes SET text = ?, created = ?, embedding = ? WHERE id = ?",
                                   (text, now, vec[0].numpy().tobytes(), note_id))
            if cur.rowcount != 1:  # removed by another process since the check above
                raise PlmkitError(f"no note with id {note_id} in {self.path}")

        def apply(index: VectorIndex) -> None:
            index.remove([note_id])
            index.add([note_id], vec)
            self._by_id[note_id] = Note(note_id, text, now)

        self._apply_own_write(apply)

    @_locked
    def remove(self, note_ids: int | Sequence[int]) -> int:
        """Delete notes by id, checked and deleted in one transaction: unknown ids delete nothing."""
        note_ids = list(dict.fromkeys([note_ids] if isinstance(note_ids, int) else note_ids))
        with self._transaction():
            present = {r[0] for r in self._db.execute(
                f"SELECT id FROM notes WHERE id IN ({','.join('?' * len(note_ids))})", note_ids)} if note_ids else set()
            missing = set(note_ids) - present
            if missing:
                raise PlmkitError(f"no note with id {sorted(missing)} in {self.path}; `plmkit notes --db {self.path} "
                                  "list` shows the ids")
            self._db.executemany("DELETE FROM notes WHERE id = ?", [(i,) for i in note_ids])

        def apply(index: VectorIndex) -> None:
            index.remove(note_ids)
            for i in note_ids:
                self._by_id.pop(i, None)

        self._apply_own_write(apply)
        return len(note_ids)

    @_locked
    def clear(self) -> int:
        """Delete every note (the encoder stays recorded)."""
        return self.remove([n.id for n in self.notes()]) if len(self) else 0

    @_locked
    def save_settings(self, settings: dict) -> None:
        """Store settings that belong with these notes (e.g. tuned scope thresholds) in one transaction;
        keys given replace stored ones, other stored keys stay."""
        import json

        with self._transaction():
            for key, value in settings.items():
                self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (f"setting.{key}", json.dumps(value)))

    # ---- reading --------------------------------------------------------------------------
    @_locked
    def settings(self) -> dict:
        """Settings stored by :meth:`save_settings` (``plmkit notes tune`` stores the thresholds there)."""
        import json

        rows = self._db.execute("SELECT key, value FROM meta WHERE key LIKE 'setting.%' ORDER BY key").fetchall()
        return {k[len("setting."):]: json.loads(v) for k, v in rows}

    @_locked
    def notes(self) -> list[Note]:
        return [Note(*r) for r in self._db.execute("SELECT id, text, created FROM notes ORDER BY id")]

    @_locked
    def get(self, note_id: int) -> Note:
        row = self._db.execute("SELECT id, text, created FROM notes WHERE id = ?", (note_id,)).fetchone()
        if row is None:
            raise PlmkitError(f"no note with id {note_id} in {self.path}")
        return Note(*row)

    @_locked
    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM notes").fetchone()[0])

    def __iter__(self) -> Iterator[Note]:
        return iter(self.notes())

    @_locked
    def search(self, queries: str | Sequence[str], k: int = 5) -> list[list[Hit]]:
        """The ``k`` notes with the largest inner product with each query, best first."""
        queries = [queries] if isinstance(queries, str) else list(queries)
        index = self._fresh_index()
        if not len(index) or not queries:
            return [[] for _ in queries]
        ids, scores = index.search(self.encoder.encode(queries), k)
        return [[Hit(self._by_id[int(i)], float(s)) for i, s in zip(row_ids, row_scores)]
                for row_ids, row_scores in zip(ids, scores)]

    @_locked
    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "Notebook":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
