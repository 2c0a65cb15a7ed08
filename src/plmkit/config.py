"""Shared behaviour of method config dataclasses: dict and JSON round trips with clear errors."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, TypeVar

from .errors import ConfigError

C = TypeVar("C", bound="JsonConfig")


class JsonConfig:
    """Mixin for ``@dataclass`` configs: ``to_dict``/``from_dict`` and ``to_json``/``from_json``.

    Unknown keys are an error that names them (a typo must not silently fall back to a default).
    """

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[C], d: dict[str, Any]) -> C:
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown {cls.__name__} keys: {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)

    def to_json(self, path: str | Path | None = None) -> str:
        """The config as JSON; also written (atomically) to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            from ._io import write_text

            write_text(path, text + "\n")
        return text

    @classmethod
    def from_json(cls: type[C], text_or_path: str | Path) -> C:
        """Parse JSON text, or read it from a ``.json`` file path."""
        p = Path(text_or_path)
        text = p.read_text() if p.suffix == ".json" and p.exists() else str(text_or_path)
        return cls.from_dict(json.loads(text))


_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def _parse_like(text: str, current: Any, where: str) -> Any:
    """``text`` read as a value of ``current``'s type (bool, int, float, str, None or a tuple of those)."""
    t = text.strip()
    if t.lower() in ("none", "null"):
        return None
    if isinstance(current, bool):
        if t.lower() in _TRUE | _FALSE:
            return t.lower() in _TRUE
        raise ConfigError(f"setting {where!r}: expected true or false, got {text!r}")
    if isinstance(current, tuple):
        if current and isinstance(current[0], (tuple, list)):
            raise ConfigError(f"setting {where!r}: a tuple of tuples cannot be set from text; change it in Python")
        items = [s for s in t.split(",") if s.strip()]
        return tuple(_parse_like(s, current[0], where) if current else s.strip() for s in items)
    for kind in (int, float):
        if isinstance(current, kind):
            try:
                return kind(t)
            except ValueError:
                raise ConfigError(f"setting {where!r}: expected {kind.__name__}, got {text!r}") from None
    if current is None:  # no type to go by: a number when it reads as one
        for kind in (int, float):
            try:
                return kind(t)
            except ValueError:
                pass
    return t


def override_settings(settings: Any, assignments: list[str] | tuple[str, ...]) -> Any:
    """A copy of the dataclass ``settings`` with ``KEY=VALUE`` assignments applied (``a.b=VALUE`` for a nested
    dataclass; tuples comma-separated; ``none`` for None). Values take the type of the field's current value.
    An unknown key or a value of the wrong type is a one-line ConfigError naming the known keys."""
    for assignment in assignments:
        key, sep, value = assignment.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"setting {assignment!r}: write KEY=VALUE, e.g. steps=100")
        if not dataclasses.is_dataclass(settings):
            raise ConfigError(f"setting {key.strip()!r}: there are no settings to change here")
        settings = _override(settings, key.strip().split("."), value, key.strip())
    return settings


def _override(obj: Any, path: list[str], value: str, key: str) -> Any:
    names = [f.name for f in dataclasses.fields(obj)]
    if path[0] not in names:
        raise ConfigError(f"unknown setting {key!r}; known: {', '.join(names)}")
    current = getattr(obj, path[0])
    if len(path) == 1:
        return dataclasses.replace(obj, **{path[0]: _parse_like(value, current, key)})
    if not dataclasses.is_dataclass(current):
        raise ConfigError(f"setting {key!r}: {path[0]} is {current!r}, not a group of settings")
    return dataclasses.replace(obj, **{path[0]: _override(current, path[1:], value, key)})
