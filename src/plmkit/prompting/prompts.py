"""Templates and verbalizers as data: one JSON per task under ``plmkit/prompting/prompts/``.

A template holds ``{text}`` (the input) and ``{label}`` (the blank the label words fill), e.g.
``"{text} It was {label}."`` with label words ``["terrible", "great"]``. Label "words" may be several words
(AutoSeq's label sequences use the same type).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Sequence

from ..errors import ConfigError


@dataclass(frozen=True)
class Prompt:
    template: str
    label_words: tuple[str, ...]
    task: str = ""

    def __post_init__(self) -> None:
        if self.template.count("{text}") != 1 or self.template.count("{label}") != 1:
            raise ConfigError(f"a template needs one {{text}} and one {{label}}, got '{self.template}'")
        if self.template.index("{text}") > self.template.index("{label}"):
            raise ConfigError("the template's {text} must come before its {label} blank")

    @property
    def before(self) -> str:
        """The template between the text and the blank, trailing spaces dropped (e.g. ``" It was"``): label words
        bring their own leading space (:func:`plmkit.prompting.scoring.continuation`)."""
        return self.template.split("{text}")[1].split("{label}")[0].rstrip()

    @property
    def after(self) -> str:
        """The template after the blank (e.g. ``"."``)."""
        return self.template.split("{label}")[1]

    @property
    def lead(self) -> str:
        """The template before the text (usually empty)."""
        return self.template.split("{text}")[0]

    def prefix(self, text: str) -> str:
        """Everything up to the blank (no trailing space): what a left-to-right model reads before the label."""
        return self.lead + text + self.before

    def render(self, text: str, label: str) -> str:
        return self.template.replace("{text}", text).replace("{label}", label)

    def with_words(self, words: Sequence[str]) -> "Prompt":
        return replace(self, label_words=tuple(words))

    def to_dict(self) -> dict:
        return {"task": self.task, "template": self.template, "label_words": list(self.label_words)}


def load_prompt(task_or_path: str | Path) -> Prompt:
    """The manual prompt of a task (``polarity``, ``sentiment3``, ``topics4``, ``drugs``, ``topics``) or a JSON file
    ``{"template": ..., "label_words": [...]}``."""
    path = Path(task_or_path)
    if path.suffix == ".json":
        if not path.exists():
            raise ConfigError(f"no prompt file '{path}'")
        raw = json.loads(path.read_text())
    else:
        res = resources.files("plmkit.prompting") / "prompts" / f"{task_or_path}.json"
        if not res.is_file():
            raise ConfigError(f"no manual prompt for task '{task_or_path}'; choose from {', '.join(prompt_tasks())} "
                              "or pass a JSON file with template and label_words")
        raw = json.loads(res.read_text())
    try:
        return Prompt(raw["template"], tuple(raw["label_words"]), raw.get("task", path.stem))
    except KeyError as e:
        raise ConfigError(f"prompt '{task_or_path}' lacks the key {e}: it needs template and label_words") from None


def prompt_tasks() -> list[str]:
    return sorted(p.name[:-5] for p in (resources.files("plmkit.prompting") / "prompts").iterdir()
                  if p.name.endswith(".json"))
