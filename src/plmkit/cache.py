"""A content-addressed cache of expensive artifacts (fine-tuned models, fitted heads) shared between runs.

An entry lives at ``$PLMKIT_CACHE_DIR`` (default ``$PLMKIT_HOME/cache``) ``/<producer>/<key>/``, where
``key`` hashes what produced it: the producer's name, its config, the identity of its inputs
(assets, models, data) and :data:`FORMAT_VERSION`. Entries are written atomically (a crash mid-build
leaves no entry), hold only non-pickle files (safetensors, Hugging Face ``save_pretrained`` layouts,
JSON, text), and carry ``manifest.json`` with each file's size and sha256, checked on every read: a
corrupt or partial entry is rebuilt, never used. ``PLMKIT_CACHE=off`` rebuilds every entry.

    entry = cached("minilm-classifier", config, {"model": model_identity("minilm")}, build)
    model = AutoModel.from_pretrained(entry.path); results["cache"] = entry.info()
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from ._io import _json_default, atomic_dir, file_lock, write_json
from .errors import ConfigError

if TYPE_CHECKING:
    import torch

FORMAT_VERSION = 1  # bump when the layout of entries, or what a key covers, changes
MANIFEST = "manifest.json"
# Formats that unpickle on load: never written into the cache.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib")


def cache_root() -> Path:
    """``$PLMKIT_CACHE_DIR``, else ``$PLMKIT_HOME/cache`` (``~/.cache/plmkit/cache``)."""
    from .assets.registry import plmkit_home

    return Path(os.environ.get("PLMKIT_CACHE_DIR") or plmkit_home() / "cache")


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _jsonable(dataclasses.asdict(obj))
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = [_jsonable(v) for v in obj]
        return sorted(items, key=repr) if isinstance(obj, (set, frozenset)) else items
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if isinstance(obj, Path):
        return str(obj)
    return repr(obj)  # e.g. a torch dtype


def cache_key(producer: str, config: Any = None, inputs: Mapping[str, Any] | None = None) -> str:
    """The hex key of an artifact: sha256 over producer, config, input identities and the format version."""
    payload = {"producer": producer, "config": _jsonable(config), "inputs": _jsonable(inputs or {}),
               "format": FORMAT_VERSION}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


def model_identity(name: str) -> dict[str, Any]:
    """What identifies a model asset (or local folder): its name, package version, config hash, file sizes."""
    from importlib import metadata

    from .assets.models import MODEL_ASSETS, model_path
    from .assets.registry import get

    ident: dict[str, Any] = {"name": name}
    folder = Path(name)
    if name in MODEL_ASSETS:
        asset = get(name)
        versions = {}
        for pkg in asset.packages:
            with contextlib.suppress(metadata.PackageNotFoundError):
                versions[pkg] = metadata.version(pkg)
        ident["packages"] = versions
        folder = model_path(name)
    if folder.is_dir():
        ident["files"] = {f.name: f.stat().st_size for f in sorted(folder.iterdir()) if f.is_file()}
        if (folder / "config.json").is_file():
            ident["config_sha256"] = file_sha256(folder / "config.json")
    return ident


def weights_identity(model: torch.nn.Module, exclude: tuple[str, ...] = ()) -> str:
    """What identifies a model's weights: for a model loaded from a folder, the hash of :func:`model_identity`
    (file sizes, config) and of its safetensors files; for one built in memory, the hash of its parameters
    (names containing any of ``exclude`` left out, e.g. adapters; a weight under a peft wrapper counts as
    itself). Two models with one name but other weights
    differ here."""
    import torch

    folder = Path(getattr(getattr(model, "config", None), "_name_or_path", "") or "")
    if str(folder) not in ("", ".") and folder.is_dir():
        folder = folder.resolve()
        ident = model_identity(str(folder))
        ident["weights_sha256"] = {f.name: file_sha256(f) for f in sorted(folder.glob("*.safetensors"))}
        return "id:" + hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        if any(e in name for e in exclude):
            continue
        h.update(name.replace(".base_layer", "").encode())  # the same weight under a peft wrapper
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return "weights:" + h.hexdigest()[:16]


def file_sha256(path: Path) -> str:
    """The hex sha256 of a file's bytes."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.relative_to(root).as_posix() != MANIFEST)


def verify(path: str | os.PathLike) -> bool:
    """True when ``path`` holds exactly the files its manifest lists, each with the recorded size and sha256."""
    root = Path(path)
    try:
        manifest = json.loads((root / MANIFEST).read_text())
        listed = manifest["files"]
        if manifest.get("format") != FORMAT_VERSION:
            return False
        present = {p.relative_to(root).as_posix() for p in _files(root)}
        if present != set(listed):
            return False
        for rel, meta in listed.items():
            f = root / rel
            if f.stat().st_size != meta["size"] or file_sha256(f) != meta["sha256"]:
                return False
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return True


@dataclass(frozen=True)
class CacheEntry:
    """A verified cache entry: ``path`` to read from; ``hit`` False when it was (re)built just now."""

    producer: str
    key: str
    path: Path
    hit: bool
    seconds: float  # build time on a miss, verification time on a hit
    rebuilt_corrupt: bool = False

    def info(self) -> dict[str, Any]:
        """What a recipe records in its results: ``{"hit", "key", "producer", "path", "seconds", ...}``."""
        out = {"hit": self.hit, "key": self.key, "producer": self.producer, "path": str(self.path),
               "seconds": round(self.seconds, 2)}
        if self.rebuilt_corrupt:
            out["rebuilt_corrupt_entry"] = True
        return out


def cached(producer: str, config: Any, inputs: Mapping[str, Any] | None, build: Callable[[Path], Any], *,
           root: str | os.PathLike | None = None) -> CacheEntry:
    """The entry for (producer, config, inputs), calling ``build(tmp_dir)`` to write its files on a miss.

    ``build`` saves into the empty folder it is given (safetensors / ``save_pretrained``, JSON, text);
    the folder becomes the entry only if ``build`` returns normally. A pickle-format file is an error.
    """
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", producer):
        raise ConfigError(f"cache producer {producer!r}: use letters, digits, '-', '_' or '.'")
    key = cache_key(producer, config, inputs)
    path = Path(root or cache_root()) / producer / key
    use = os.environ.get("PLMKIT_CACHE", "on").lower() not in ("off", "0", "no", "false")
    with file_lock(path):
        existed = path.exists()
        if use and existed:
            t0 = time.perf_counter()
            if verify(path):
                return CacheEntry(producer, key, path, True, time.perf_counter() - t0)
        t0 = time.perf_counter()
        with atomic_dir(path) as tmp:
            build(tmp)
            bad = [p.name for p in _files(tmp) if p.suffix.lower() in PICKLE_SUFFIXES]
            if bad:
                raise ConfigError(f"cache entry {producer}: {', '.join(bad)} would need pickle to load; save "
                                  "with safetensors (save_pretrained(..., safe_serialization=True))")
            files = {p.relative_to(tmp).as_posix(): {"size": p.stat().st_size, "sha256": file_sha256(p)}
                     for p in _files(tmp)}
            write_json(tmp / MANIFEST, {"format": FORMAT_VERSION, "producer": producer, "key": key,
                                        "config": _jsonable(config), "inputs": _jsonable(inputs or {}),
                                        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                        "files": files})
        return CacheEntry(producer, key, path, False, time.perf_counter() - t0, rebuilt_corrupt=use and existed)


class StepStore:
    """The finished steps of a long run, one JSON file each, so a run that stopped resumes where it was.

    A step's record is written atomically the moment the step ends, under a key hashing ``producer``,
    ``identity`` (the run's settings), the plmkit version and the step's own ``inputs`` (what it reads beyond
    the settings); a later store with the same key takes it from there. A damaged file, or one written under
    another key, is ignored: the step runs again and replaces it. Records hold JSON only, never pickle.

        steps = StepStore(out_dir / "steps", "my-run", {"settings": settings})
        row = steps.run("variant-a", lambda: train_and_score("a"), inputs={"model": model_identity("minilm")})
        steps.resumed  # ["variant-a"] when it came from an earlier run
    """

    def __init__(self, folder: str | os.PathLike, producer: str, identity: Mapping[str, Any], resume: bool = True):
        from . import __version__

        self.folder, self.producer, self.resume = Path(folder), producer, resume  # resume False: run every step
        self.identity = {**identity, "plmkit": __version__}
        self.resumed: list[str] = []  # names of the steps taken from the store, in order
        self.resumed_seconds = 0.0  # what those steps took when they ran

    def _key(self, inputs: Mapping[str, Any] | None) -> str:
        return cache_key(self.producer, self.identity, inputs)

    def path(self, name: str) -> Path:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", name):
            raise ConfigError(f"step name {name!r}: use letters, digits, '-', '_', '.' or '+'")
        return self.folder / f"{name}.json"

    def partial_dir(self, name: str, inputs: Mapping[str, Any] | None = None) -> Path:
        """A folder for step ``name``'s partial state (e.g. training checkpoints), named by the step's key: a
        step stopped midway finds what it left there, one under other settings or inputs gets another folder.
        A store that does not resume empties it first. Its parent is made; the folder itself is not."""
        folder = self.folder / "partial" / f"{self.path(name).stem}.{self._key(inputs)[:16]}"
        if not self.resume:
            shutil.rmtree(folder, ignore_errors=True)
        folder.parent.mkdir(parents=True, exist_ok=True)
        return folder

    def get(self, name: str, inputs: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
        """The stored record of step ``name`` (``key`` left out), or None when absent, damaged, stale, or the
        store does not resume."""
        if not self.resume:
            return None
        try:
            record = json.loads(self.path(name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or record.get("key") != self._key(inputs):
            return None
        return {k: v for k, v in record.items() if k != "key"}

    def put(self, name: str, record: Mapping[str, Any], inputs: Mapping[str, Any] | None = None) -> None:
        """Write step ``name``'s record (JSON values) atomically, under this store's key for ``inputs``."""
        write_json(self.path(name), {"key": self._key(inputs), **record})

    def run(self, name: str, fn: Callable[[], Any], inputs: Mapping[str, Any] | None = None) -> Any:
        """``fn()``'s result as JSON values (tuples become lists), taken from the store when an earlier run
        finished this step with the same ``inputs``; else computed and stored with its seconds and CPU."""
        from .device import cpu_info

        done = self.get(name, inputs)
        if done is not None and "result" in done:
            self.resumed.append(name)
            self.resumed_seconds += float(done.get("seconds") or 0.0)
            return done["result"]
        t0 = time.perf_counter()
        result = json.loads(json.dumps(fn(), default=_json_default))  # as a resumed run would return it
        self.put(name, {"result": result, "seconds": round(time.perf_counter() - t0, 2),
                        "cpu": cpu_info().get("cpu")}, inputs)
        return result
