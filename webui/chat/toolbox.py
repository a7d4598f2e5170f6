"""Tools in a saved conversation: whether it uses them (its own settings), the functions extensions offer, and
running one call safely.

The formats, the parsing of a reply into calls and the schema checks are :mod:`webui.chat.tools` (shared with the
API); :class:`webui.chat.service.Chat` drives the rounds (reply → calls → approval → results → reply).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any

from webui.chat.conversation import RAN, Conversation
from webui.chat.tools import Tool
from webui.hookspecs import ExtensionTool

TOOLS_KEY, AUTO_APPROVE_KEY = "tools", "auto_approve_tools"  # the conversation's settings (saved with it)
MAX_TOOL_ROUNDS = 5  # calls in a row before the model must answer in text
TOOL_TIMEOUT_S = 30.0
MAX_RESULT_CHARS = 20_000
DENIED_TEXT = "denied by user"
NOT_RUN_TEXT = "not run: the user sent another message instead"
ERROR = "error"


def tools_enabled(conversation: Conversation) -> bool:
    """Whether the model is offered tools in this conversation (off unless the user turned them on)."""
    return conversation.settings.get(TOOLS_KEY) is True


def auto_approve(conversation: Conversation) -> bool:
    """Whether calls run without asking (off by default: the user approves each call)."""
    return conversation.settings.get(AUTO_APPROVE_KEY) is True


def set_tool_settings(conversation: Conversation, enabled: bool, approve_all: bool) -> None:
    """Turn tools and auto-approval on or off for ``conversation`` (the caller saves it)."""
    settings = {k: v for k, v in conversation.settings.items() if k not in (TOOLS_KEY, AUTO_APPROVE_KEY)}
    if enabled:
        settings[TOOLS_KEY] = True
    if approve_all:
        settings[AUTO_APPROVE_KEY] = True
    conversation.settings = settings


def call_text(name: str, arguments: str) -> str:
    """A call as the approval line shows it: ``calculator({"expression": "2+2"})``."""
    return f"{name}({arguments})"


@dataclass(frozen=True)
class Toolbox:
    """The functions offered in one conversation, with what runs them."""

    tools: tuple[ExtensionTool, ...]

    @property
    def specs(self) -> tuple[Tool, ...]:
        """The tools as the prompt and the parser see them (name, description, schema)."""
        return tuple(Tool(t.name, t.description, t.parameters) for t in self.tools)

    def run(self, name: str, arguments: str, timeout_s: float = TOOL_TIMEOUT_S) -> tuple[str, str]:
        """(status, result text) of running the call: ``ran`` with its result, or ``error`` saying what went
        wrong (an unknown tool, arguments that are not JSON, the tool raising or not finishing in time)."""
        tool = next((t for t in self.tools if t.name == name), None)
        if tool is None:
            return ERROR, f"error: there is no tool named {name} (any more)"
        try:
            args = json.loads(arguments)
        except ValueError:
            return ERROR, f"error: the arguments of {name} are not JSON"
        outcome: dict[str, Any] = {}

        def target() -> None:
            try:
                outcome["value"] = tool.run(args)
            except Exception as exc:  # noqa: BLE001 - whatever a tool raises is its result, shown in the chat
                outcome["error"] = exc

        worker = threading.Thread(target=target, name=f"tool-{name}", daemon=True)
        worker.start()
        worker.join(timeout_s)
        if worker.is_alive():
            return ERROR, f"error: {name} did not finish within {timeout_s:g} s"
        if "error" in outcome:
            exc = outcome["error"]
            return ERROR, f"error: {name} raised {type(exc).__name__}: {exc}"
        return RAN, result_text(outcome.get("value"))


def result_text(value: object) -> str:
    """A tool's return value as the text the model reads (JSON for anything that is not text), never empty."""
    if not isinstance(value, str):
        try:
            value = json.dumps(value, ensure_ascii=False)
        except (TypeError, ValueError):
            value = str(value)
    if len(value) > MAX_RESULT_CHARS:
        value = value[:MAX_RESULT_CHARS] + f"\n… (cut: the result was {len(value):,} characters)"
    return value if value.strip() else "(no output)"
