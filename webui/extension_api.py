"""The one module an Inglenook extension imports.

Everything an extension receives is defined here (or re-exported from here), so the
rest of Inglenook can be refactored without breaking extensions. A minimal extension::

    # extensions/shout/extension.py   (with extensions/shout/extension.yaml)
    from webui.extension_api import hookimpl

    @hookimpl
    def output_modifier(text, context):
        return text.upper()

Every hook is optional and takes any subset of its arguments (by name). A modifier
returns the new value, or ``None`` to leave it unchanged. See ``webui/hookspecs.py``
for the full list and README.md (``## Extensions``) for installing and safety.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backends.base import SamplingParams
from webui.hookspecs import hookimpl

__all__ = ["Context", "ReplyInfo", "SamplingParams", "Setting", "hookimpl"]

SETTING_TYPES = (bool, int, float, str)


@dataclass(frozen=True)
class Setting:
    """A parameter the user can change in the Extensions tab; the value is saved and handed back
    in ``context.settings[name]``. The type is the default's type (bool, int, float or str);
    ``choices`` makes a drop-down, ``minimum``/``maximum`` a slider, ``lines`` > 1 a text area."""

    name: str
    default: bool | int | float | str
    label: str = ""
    help: str = ""
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    lines: int = 1

    @property
    def type(self) -> type:
        return type(self.default)

    def coerce(self, value: Any) -> bool | int | float | str:
        """``value`` as this setting's type; ValueError if it cannot be (a saved value from an older version)."""
        kind = self.type
        if kind is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            raise ValueError(f"{self.name} must be true or false")
        if kind in (int, float):
            if isinstance(value, bool):
                raise ValueError(f"{self.name} must be a number")
            number = kind(float(value)) if kind is int else float(value)
            if (self.minimum is not None and number < self.minimum) or (
                self.maximum is not None and number > self.maximum
            ):
                raise ValueError(f"{self.name} must be between {self.minimum} and {self.maximum}")
            return number
        text = str(value)
        if self.choices and text not in self.choices:
            raise ValueError(f"{self.name} must be one of {', '.join(self.choices)}")
        return text


@dataclass(frozen=True)
class Context:
    """What every hook may ask for as ``context``: who it is, its settings, where it may keep files."""

    name: str  # the extension's name
    settings: Mapping[str, Any]  # its current setting values (read-only)
    data_dir: Path  # a folder of its own under user_data/ (created on first use of this property's path)
    log: logging.Logger
    mode: str = ""  # "chat" or "completion" during a generation, "" otherwise
    model: str | None = None  # the loaded model's name, if any


@dataclass(frozen=True)
class ReplyInfo:
    """What ``output_modifier`` may ask for as ``reply``: the finished reply before any modification."""

    raw_text: str
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_s: float = 0.0
    tokens_per_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
