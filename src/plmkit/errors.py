"""Errors that tell the user what to do next."""


class PlmkitError(Exception):
    """Base class of every error plmkit raises on purpose."""


class UnsupportedArchitectureError(PlmkitError, ValueError):
    """The model's family has no registered spec and no override was given."""


class MissingAssetError(PlmkitError, FileNotFoundError):
    """A named real asset is not installed; the message carries the install command."""

    def __init__(self, name: str, install: str, detail: str = ""):
        self.name, self.install = name, install
        msg = f"asset '{name}' is not installed. Install it with:\n    {install}"
        if detail:
            msg += f"\n({detail})"
        super().__init__(msg)


class ConfigError(PlmkitError, ValueError):
    """A method or run configuration is invalid."""
