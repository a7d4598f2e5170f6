"""The hooks an extension may implement (pluggy), and the calls the chat path makes into them.

Extensions import :mod:`webui.extension_api`, not this module. Each hook may take any subset
of the arguments named here. Modifiers chain: extensions run in hook order (manifest
``priority``, then name) and each receives the previous one's result; returning ``None``
leaves the value unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from fastapi import APIRouter

    from backends.base import SamplingParams, Usage

PROJECT = "inglenook.extensions"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

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


@dataclass(frozen=True)
class ExtensionTool:
    """A function an extension offers the model in the chat (the ``tools`` hook): ``name`` (1-64 letters,
    digits, ``_ - .``), what it does, its arguments' JSON Schema (an object), and ``run``, called with the
    arguments (a dict that passed the schema) once the user approves the call. ``run`` returns the result
    (text, or anything JSON can write); what it raises is shown in the chat as the call's result."""

    name: str
    description: str
    parameters: dict
    run: Callable[[dict], Any]


@hookspec
def input_modifier(text: str, context: Context) -> str | None:
    """The user's message (chat) or the prompt (notebook, ``inglenook run``) before it reaches the model."""


@hookspec
def chat_input_modifier(text: str, visible_text: str, context: Context) -> tuple[str, str] | None:
    """The user's chat message as (text the model sees, text shown); runs before ``input_modifier``."""


@hookspec
def history_modifier(messages: list[dict], context: Context) -> list[dict] | None:
    """The ``{"role", "content"}`` messages a chat prompt is built from (the saved chat is untouched)."""


@hookspec
def state_modifier(params: SamplingParams, context: Context) -> SamplingParams | None:
    """The sampling parameters of a generation, just before it starts."""


@hookspec(firstresult=True)
def custom_prompt(messages: list[dict], prompt: str, context: Context) -> str | None:
    """Build the whole chat prompt yourself: the first extension returning a string wins."""


@hookspec
def bot_prefix_modifier(prefix: str, context: Context) -> str | None:
    """Text the assistant's reply starts with (put in its mouth; the model continues after it)."""


@hookspec
def output_modifier(text: str, reply: ReplyInfo, context: Context) -> str | None:
    """The finished reply as front ends show and save it; ``reply.raw_text`` keeps the model's own text."""


@hookspec
def tools(context: Context) -> list[ExtensionTool] | None:
    """Functions the model may call in a chat that has tools turned on (see :class:`ExtensionTool`); every
    active extension's tools are offered together (a name two extensions use goes to the first)."""


@hookspec
def ui(where: str, context: Context) -> None:
    """Build Gradio components. Called with ``where="chat"`` inside a block under the chat, and with
    ``where="tab"`` inside a tab of the extension's own; build nothing for a place you do not want."""


@hookspec
def api_routes(router: APIRouter, context: Context) -> None:
    """Add FastAPI routes to ``router``; they are served under ``/extensions/NAME/``."""


@hookspec
def settings() -> list[Setting]:
    """The parameters the user can set (rendered in the Extensions tab, saved in user_data)."""


@hookspec
def startup(context: Context) -> None:
    """Called when the extension is enabled (at start-up or later)."""


@hookspec
def shutdown(context: Context) -> None:
    """Called when the extension is disabled or the app stops."""


class ChatHooks:
    """The calls :class:`webui.chat.service.Chat` makes around every generation. This base changes nothing
    (an engine without extensions); :class:`webui.extensions.host.ExtensionHost` runs the hooks."""

    def chat_messages(self, messages: list[dict], model: str | None) -> list[dict]:
        return messages

    def chat_prompt(self, prompt: str, messages: list[dict], model: str | None) -> tuple[str, str]:
        """(the prompt to generate from, the reply's prefix)."""
        return prompt, ""

    def completion_prompt(self, prompt: str, model: str | None) -> str:
        return prompt

    def sampling(self, params: SamplingParams, mode: str, model: str | None) -> SamplingParams:
        return params

    def output(self, text: str, usage: Usage | None, finish_reason: str | None, mode: str, model: str | None) -> str:
        return text

    def tools(self) -> list[ExtensionTool]:
        """The functions the active extensions offer a chat with tools turned on (none without extensions)."""
        return []
