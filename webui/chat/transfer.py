"""The JSON forms of a conversation: our own file/export form and text-generation-webui's history.

Reading is strict (anything malformed is a :class:`HistoryError` saying what is wrong) because a file that
half-parses would be saved back half-lost; writing keeps the shown version in plain ``content`` so a file
reads (and hand-edits) plainly.
"""

from __future__ import annotations

import html
import json
from typing import Any

from webui.chat.conversation import (
    MODES,
    ROLES,
    SCHEMA_VERSION,
    TOOL_CALL,
    TOOL_ROLES,
    Conversation,
    HistoryError,
    Message,
    NewerSchema,
    Version,
)

TGW_GREETING_MARKER = "<|BEGIN-VISIBLE-CHAT|>"  # text-generation-webui's user side of a greeting row


def to_dict(conversation: Conversation) -> dict[str, Any]:
    """The file form. ``content``/``stats`` always show the shown version so the file reads plainly."""
    messages = []
    for m in conversation.messages:
        item: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.stats:
            item["stats"] = m.stats
        if m.versions[m.shown].raw:
            item["raw"] = m.versions[m.shown].raw
        if len(m.versions) > 1:
            item["versions"] = [_version_dict(v) for v in m.versions]
            item["shown"] = m.shown
        if m.tool is not None:
            item["tool"] = dict(m.tool)
        messages.append(item)
    # a file without tool messages stays version 1, so an older Inglenook still reads it
    tools = any(m.tool is not None for m in conversation.messages)
    return {
        "schema_version": SCHEMA_VERSION if tools else 1,
        "id": conversation.id,
        "owner": conversation.owner,
        "title": conversation.title,
        "mode": conversation.mode,
        "created": conversation.created,
        "updated": conversation.updated,
        "messages": messages,
        **({"settings": conversation.settings} if conversation.settings else {}),
    }


def _version_dict(v: Version) -> dict[str, str]:
    item = {"content": v.content, "stats": v.stats}
    if v.raw:
        item["raw"] = v.raw
    return item


def to_json(conversation: Conversation) -> str:
    """Export form: readable UTF-8 JSON; falls back to ASCII escapes if the text holds lone surrogates."""
    data = to_dict(conversation)
    text = json.dumps(data, ensure_ascii=False, indent=1)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # e.g. "\ud800" from a browser: escaped, so it still round-trips exactly
        text = json.dumps(data, ensure_ascii=True, indent=1)
    return text


def from_dict(data: Any) -> Conversation:
    """Parse and check our file form; anything malformed is a HistoryError saying what is wrong."""
    if not isinstance(data, dict):
        raise HistoryError("not a JSON object")
    version = data.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise HistoryError("no schema_version")
    if version > SCHEMA_VERSION:
        raise NewerSchema(f"schema_version {version} is newer than this version of Inglenook ({SCHEMA_VERSION})")
    if version < 1:
        raise HistoryError(f"unknown schema_version {version}")
    raw_messages = data.get("messages")
    if not isinstance(raw_messages, list):
        raise HistoryError("'messages' is not a list")
    mode = data.get("mode", "chat")
    if mode not in MODES:
        raise HistoryError(f"unknown mode {mode!r}")
    return Conversation(
        id=_text(data, "id"),
        owner=_text(data, "owner"),
        title=_text(data, "title"),
        mode=mode,
        created=_text(data, "created"),
        updated=_text(data, "updated"),
        messages=[_message_from_dict(i, m) for i, m in enumerate(raw_messages)],
        settings=_settings(data.get("settings", {})),
    )


def _settings(settings: Any) -> dict[str, Any]:
    """The conversation's own settings (optional; files from before they existed have none). Keys this
    version does not know are kept, so a file written by a newer one loses nothing when saved back."""
    if not isinstance(settings, dict):
        raise HistoryError("'settings' is not an object")
    if not isinstance(settings.get("system", ""), str):
        raise HistoryError("'settings.system' is not text")
    if not isinstance(settings.get("sampling", {}), dict):
        raise HistoryError("'settings.sampling' is not an object")
    if not isinstance(settings.get("preset", ""), str):
        raise HistoryError("'settings.preset' is not text")
    return settings


def from_json(text: str | bytes) -> Conversation:
    """Parse our JSON (an exported conversation or a history file)."""
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HistoryError(f"not valid JSON: {exc}") from None
    return from_dict(data)


def from_tgw(data: Any, owner: str, mode: str = "chat") -> Conversation:
    """Convert a text-generation-webui history (``internal``/``visible`` pairs) into a conversation.

    ``internal`` holds the text the model saw; ``visible`` is HTML-escaped display text, used only when
    ``internal`` is missing. A greeting row (``<|BEGIN-VISIBLE-CHAT|>`` or an empty user side) becomes a
    lone reply; an empty reply (one still in flight when it was saved) is dropped. Regenerated versions
    that newer versions of text-generation-webui keep in ``metadata`` are imported as versions.
    """
    if not isinstance(data, dict):
        raise HistoryError("not a JSON object")
    rows, escaped = data.get("internal"), False
    if not isinstance(rows, list) or (not rows and data.get("visible")):
        rows, escaped = data.get("visible"), True
    if not isinstance(rows, list):
        raise HistoryError("a text-generation-webui history needs an 'internal' or 'visible' list")
    metadata = data.get("metadata") if isinstance(data.get("metadata"), dict) else {}
    conversation = Conversation(id="", owner=owner, mode=mode)
    for row_index, row in enumerate(rows):
        if not (isinstance(row, list) and len(row) >= 2 and all(isinstance(x, str) for x in row[:2])):
            raise HistoryError(f"row {row_index} is not a [user, reply] pair of strings")
        user, reply = (html.unescape(x) if escaped else x for x in row[:2])
        if user.strip() and user != TGW_GREETING_MARKER:
            conversation.append("user", user)
        if reply.strip():
            message = conversation.append("assistant", reply)
            _tgw_versions(message, metadata.get(f"assistant_{row_index}"), escaped)
    return conversation


def _tgw_versions(message: Message, meta: Any, escaped: bool) -> None:
    """Take the regenerated versions of a reply from text-generation-webui metadata, if well formed."""
    if not isinstance(meta, dict) or not isinstance(meta.get("versions"), list):
        return
    versions = [
        Version(html.unescape(v["content"]) if escaped else v["content"])
        for v in meta["versions"]
        if isinstance(v, dict) and isinstance(v.get("content"), str) and v["content"].strip()
    ]
    shown = meta.get("current_version_index")
    if len(versions) < 2 or not isinstance(shown, int) or not 0 <= shown < len(versions):
        return
    versions[shown] = Version(message.content)  # `internal` is the truth for the shown one
    message.versions, message.shown = versions, shown


def _message_from_dict(index: int, data: Any) -> Message:
    where = f"message {index}"
    if not isinstance(data, dict):
        raise HistoryError(f"{where} is not an object")
    role = data.get("role")
    if role not in ROLES:
        raise HistoryError(f"{where} has unknown role {role!r}")
    content, stats = _text(data, "content", where), _text(data, "stats", where)
    raw = _text(data, "raw", where)
    tool = _tool_facts(role, data.get("tool"), where)
    raw_versions = data.get("versions")
    if raw_versions is None:
        return Message(role, [Version(content, stats, raw)], tool=tool)
    if not isinstance(raw_versions, list) or not raw_versions:
        raise HistoryError(f"{where}: 'versions' is not a non-empty list")
    versions = []
    for v in raw_versions:
        if not isinstance(v, dict):
            raise HistoryError(f"{where}: a version is not an object")
        versions.append(Version(_text(v, "content", where), _text(v, "stats", where), _text(v, "raw", where)))
    shown = data.get("shown", 0)
    if not isinstance(shown, int) or isinstance(shown, bool) or not 0 <= shown < len(versions):
        raise HistoryError(f"{where}: 'shown' is not an index into its versions")
    versions[shown] = Version(content, stats, raw)  # `content` is what people read and hand-edit: it wins
    return Message(role, versions, shown, tool)


def _tool_facts(role: str, tool: Any, where: str) -> dict[str, str] | None:
    """A tool message's ``tool`` object: required for tool calls and results, refused on other messages."""
    if role not in TOOL_ROLES:
        if tool is not None:
            raise HistoryError(f"{where}: a {role} message has no 'tool'")
        return None
    needed = ("id", "name", "arguments") if role == TOOL_CALL else ("id", "name")
    if not isinstance(tool, dict) or not all(isinstance(tool.get(k), str) for k in needed):
        raise HistoryError(f"{where}: a {role} message needs a 'tool' object with {', '.join(needed)}")
    if not all(isinstance(v, str) for v in tool.values()):
        raise HistoryError(f"{where}: 'tool' values must be strings")
    return dict(tool)


def _text(data: dict, key: str, where: str = "conversation") -> str:
    value = data.get(key, "")
    if not isinstance(value, str):
        raise HistoryError(f"{where}: {key!r} is not a string")
    return value
