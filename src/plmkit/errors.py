"""Errors that tell the user what to do next."""
from __future__ import annotations

import os
from pathlib import Path


class PlmkitError(Exception):
    """Base class of every error plmkit raises on purpose."""


class UnsupportedArchitectureError(PlmkitError, ValueError):
    """The model's family has no registered spec and no override was given."""


class MissingAssetError(PlmkitError, FileNotFoundError):
    """A named real asset is not installed; the message carries the install command."""

    def __init__(self, name: str, install: str, detail: str = ""):
        self.name, self.install, self.detail = name, install, detail
        msg = f"asset '{name}' is not installed. Install it with:\n    {install}"
        if detail:
            msg += f"\n({detail})"
        super().__init__(msg)


class ConfigError(PlmkitError, ValueError):
    """A method or run configuration is invalid."""


class UnknownAssetError(PlmkitError, KeyError):
    """An asset name that is not in the catalogue; the message lists the known names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class InputEncodingError(ConfigError):
    """A user's text file is not UTF-8."""


def read_text_utf8(path: str | os.PathLike, what: str = "file") -> str:
    """The text of a user's file decoded as UTF-8; InputEncodingError naming the file, line and byte if not."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise InputEncodingError(
            f"{what} {path} is not UTF-8 text (byte 0x{data[e.start]:02x} on line {line}: {e.reason}); "
            f"convert it first, e.g. `iconv -f GB18030 -t UTF-8 {path} > {path}.utf8` (or -f LATIN1)"
        ) from None


def one_line(error: BaseException) -> str:
    """The error's message on a single line, as the command line prints it."""
    if isinstance(error, MissingAssetError):
        text = f"asset '{error.name}' is not installed; install it with: {error.install}"
        text += f" ({error.detail})" if error.detail else ""
    else:
        text = str(error)
    return "; ".join(part.strip() for part in text.splitlines() if part.strip()) or type(error).__name__
