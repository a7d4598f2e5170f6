"""A conversation and its messages, in memory: what one history file holds and the edits on it.

The message operations (append, regenerate, page versions, edit, remove last) are methods on
:class:`Conversation` that change it in memory; the caller saves after each one through
:class:`webui.chat.history.HistoryStore`. The file form lives in :mod:`webui.chat.transfer`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 2  # 2: tool calls and results (a file without them is still written as 1, for older versions)
TOOL_CALL, TOOL = "tool_call", "tool"  # a call the model made (name, arguments, status) and its result
TOOL_ROLES = (TOOL_CALL, TOOL)
ROLES = ("system", "user", "assistant", *TOOL_ROLES)
# a call's status: waiting for the user, ran, refused by the user, or not run (its arguments failed the schema)
PENDING, RAN, DENIED, INVALID = "pending", "ran", "denied", "invalid"
MODES = ("chat", "instruct", "chat-instruct")
INSTRUCT_OWNER = "instruct"


class HistoryError(ValueError):
    """A conversation or message we refuse (empty message, bad index) or a file we cannot read."""


class ConversationNotFound(HistoryError):
    """No conversation with that owner and id."""


class NewerSchema(HistoryError):
    """A file written by a newer Inglenook: reported, but left where it is (it is not damaged)."""


# --------------------------------------------------------------------------- data


@dataclass
class Version:
    """One version of a message; regenerating a reply adds a version instead of overwriting it."""

    content: str
    stats: str = ""
    raw: str = ""  # the model's own text when an extension's output_modifier changed ``content``

    @property
    def model_text(self) -> str:
        """What the model sees of this version in later prompts: its own words, not the decorated ones."""
        return self.raw or self.content


def _version(content: str, stats: str = "", raw: str = "") -> Version:
    """A checked version; ``raw`` is kept only when it differs from ``content``."""
    content = _nonempty(content)
    return Version(content, stats or "", raw if raw and raw != content else "")


@dataclass
class Message:
    """A message with all its versions; ``shown`` picks the one the chat shows and the model sees."""

    role: str
    versions: list[Version]
    shown: int = 0
    # tool_call: {"id", "name", "arguments" (JSON text), "status"}; tool (a result): {"id", "name", "status"}
    tool: dict[str, str] | None = None

    @classmethod
    def make(cls, role: str, content: str, stats: str = "", raw: str = "", tool: dict | None = None) -> Message:
        """A message with a single version, checked: a known role and non-empty text (tool messages: their
        ``tool`` facts)."""
        if role not in ROLES:
            raise HistoryError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
        if (role in TOOL_ROLES) != (tool is not None):
            raise HistoryError(f"a {role} message {'needs' if tool is None else 'has no'} tool facts")
        return cls(role, [_version(content, stats, raw)], tool=dict(tool) if tool is not None else None)

    @property
    def content(self) -> str:
        return self.versions[self.shown].content

    @property
    def stats(self) -> str:
        return self.versions[self.shown].stats

    @property
    def model_text(self) -> str:
        return self.versions[self.shown].model_text


@dataclass
class Conversation:
    """A conversation and its metadata; what one history file holds."""

    id: str
    owner: str
    title: str = ""
    mode: str = "chat"
    created: str = ""
    updated: str = ""
    messages: list[Message] = field(default_factory=list)
    # how it is asked for, saved with it so it comes back with it: "system" (the system prompt) and "sampling"
    # (the parameters changed from the defaults, by name, as the Parameters form shows them)
    settings: dict[str, Any] = field(default_factory=dict)

    # -- what front ends read

    def chat_messages(self, upto: int | None = None) -> list[dict[str, Any]]:
        """``{"role", "content"}`` dicts of the shown versions: what :func:`webui.chat.reply.stream_chat` takes.

        Replies that an extension's ``output_modifier`` changed are given back as the model wrote them,
        as text-generation-webui keeps ``internal`` apart from ``visible``. Tool calls and results come in
        OpenAI's shape (an assistant message's ``tool_calls``, ``tool`` messages), as :mod:`webui.chat.tools`
        renders them; a call joins the reply text written just before it. ``upto``: only the first ``upto``
        messages (counted in :attr:`messages`).
        """
        out: list[dict[str, Any]] = []
        for m in self.messages[:upto]:
            if m.role == TOOL_CALL and m.tool is not None:
                call = {"id": m.tool["id"], "type": "function",
                        "function": {"name": m.tool["name"], "arguments": m.tool.get("arguments", "{}")}}  # fmt: skip
                if out and out[-1]["role"] == "assistant":
                    out[-1]["tool_calls"] = [*out[-1].get("tool_calls", []), call]
                else:
                    out.append({"role": "assistant", "content": "", "tool_calls": [call]})
            elif m.role == TOOL and m.tool is not None:
                out.append({"role": "tool", "tool_call_id": m.tool["id"], "name": m.tool["name"], "content": m.content})
            else:
                out.append({"role": m.role, "content": m.model_text})
        return out

    def ui_history(self) -> list[dict[str, Any]]:
        """The chat tab's history dicts (role, content, stats) plus version paging info (versions, shown), and
        ``tool`` for tool calls and results."""
        return [
            {
                "role": m.role,
                "content": m.content,
                "stats": m.stats,
                "versions": len(m.versions),
                "shown": m.shown,
                **({"tool": dict(m.tool)} if m.tool is not None else {}),
            }  # fmt: skip
            for m in self.messages
        ]

    def pending_calls(self) -> list[Message]:
        """The tool calls at the end of the conversation that wait for the user's approval."""
        found = []
        for m in reversed(self.messages):
            if m.role == TOOL_CALL and m.tool is not None and m.tool.get("status") == PENDING:
                found.insert(0, m)
            elif m.role != TOOL_CALL:
                break
        return found

    # -- message operations (in memory; save afterwards)

    def append(self, role: str, content: str, stats: str = "", raw: str = "", tool: dict | None = None) -> Message:
        """Add a message at the end. Empty or whitespace-only text is refused."""
        message = Message.make(role, content, stats, raw, tool)
        self.messages.append(message)
        return message

    def regenerate(self, content: str, stats: str = "", raw: str = "") -> Message:
        """Add a new version of the last reply and show it; the older versions stay to page back to."""
        message = self._last_reply()
        message.versions.append(_version(content, stats, raw))
        message.shown = len(message.versions) - 1
        return message

    def update_reply(self, content: str, stats: str = "", raw: str = "") -> Message:
        """Replace the text of the shown version of the last reply (continue, a reply saved mid-stream)."""
        message = self._last_reply()
        message.versions[message.shown] = _version(content, stats, raw)
        return message

    def select_version(self, index: int, version: int) -> Message:
        """Show version ``version`` of message ``index`` (negative indexes count from the end)."""
        message = self.messages[self._index(index)]
        if not 0 <= version < len(message.versions):
            raise HistoryError(f"message {index} has {len(message.versions)} version(s); there is no {version}")
        message.shown = version
        return message

    def page_version(self, index: int, step: int) -> Message:
        """Move the shown version of message ``index`` by ``step`` (the ◀ ▶ buttons), stopping at the ends."""
        message = self.messages[self._index(index)]
        message.shown = min(max(message.shown + step, 0), len(message.versions) - 1)
        return message

    def remove_last(self) -> list[Message]:
        """Remove the last exchange: the last reply and the user message it answered (or a lone last message)."""
        if not self.messages:
            raise HistoryError("the conversation is empty")
        removed = [self.messages.pop()]
        if removed[0].role == "user":
            return removed
        # a reply that used tools: its calls, their results and the text written before a call go with it
        while self.messages and (
            self.messages[-1].role in TOOL_ROLES
            or (self.messages[-1].role == "assistant" and removed[0].role == TOOL_CALL)
        ):
            removed.insert(0, self.messages.pop())
        if self.messages and self.messages[-1].role == "user":
            removed.insert(0, self.messages.pop())
        return removed

    def edit(self, index: int, content: str) -> Message:
        """Change message ``index`` and drop everything after it, ready to regenerate from there.

        An edited reply becomes a new version (the model's own text stays one click away); a user or system
        message is changed in place, since its old text no longer matches the replies that followed it.
        """
        i = self._index(index)
        content = _nonempty(content)
        message = self.messages[i]
        if message.role in TOOL_ROLES:
            raise HistoryError("a tool call or its result cannot be edited")
        if message.role == "assistant":
            message.versions.append(Version(content))
            message.shown = len(message.versions) - 1
        else:
            message.versions[message.shown] = Version(content)
        del self.messages[i + 1 :]
        return message

    # -- helpers

    def _index(self, index: int) -> int:
        if not -len(self.messages) <= index < len(self.messages):
            raise HistoryError(f"there is no message {index} (the conversation has {len(self.messages)})")
        return index % len(self.messages)

    def _last_reply(self) -> Message:
        if not self.messages or self.messages[-1].role != "assistant":
            raise HistoryError("the last message is not a reply")
        return self.messages[-1]


def _nonempty(content: str) -> str:
    if not isinstance(content, str) or not content.strip():
        raise HistoryError("a message may not be empty")
    return content
