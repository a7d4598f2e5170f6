"""Chat histories that are never lost: one JSON file per conversation, written atomically.

Layout: ``<user_data>/chats/<owner>/<id>.json`` where ``owner`` is a character name or ``"instruct"``.
Every owner and id goes through :func:`webui.paths.safe_name`; ids are made by us, titles are free text
that lives only inside the file and never becomes a path.

Why the care: wiped or half-written histories are the second most reported failure of the peers. So a
save writes a temporary file in the same folder, fsyncs it, renames it over the old file and fsyncs the
folder: a crash (even ``kill -9``) leaves either the old or the new complete file. A file that is damaged
anyway (edited by hand, a disk error) is moved aside to ``<id>.json.corrupt-<time>`` and reported; it
never stops the others from listing or the app from starting.

The message operations (append, regenerate, page versions, edit, remove last) are methods on
:class:`Conversation` that change it in memory; the caller saves after each one.
"""

from __future__ import annotations

import copy
import html
import json
import logging
import os
import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from webui.files import fsync_dir, write_atomic
from webui.paths import UnsafeName, inside, safe_name

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
ROLES = ("system", "user", "assistant")
MODES = ("chat", "instruct", "chat-instruct")
INSTRUCT_OWNER = "instruct"
MAX_TITLE = 200
TEMP_MAX_AGE_S = 600  # a temp file this old is a crash leftover, not a save in progress in another thread
TGW_GREETING_MARKER = "<|BEGIN-VISIBLE-CHAT|>"  # text-generation-webui's user side of a greeting row


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

    @classmethod
    def make(cls, role: str, content: str, stats: str = "", raw: str = "") -> Message:
        """A message with a single version, checked: a known role and non-empty text."""
        if role not in ROLES:
            raise HistoryError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
        return cls(role, [_version(content, stats, raw)])

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

    # -- what front ends read

    def chat_messages(self) -> list[dict[str, str]]:
        """``{"role", "content"}`` dicts of the shown versions: what :func:`webui.chat.reply.stream_chat` takes.

        Replies that an extension's ``output_modifier`` changed are given back as the model wrote them,
        as text-generation-webui keeps ``internal`` apart from ``visible``.
        """
        return [{"role": m.role, "content": m.model_text} for m in self.messages]

    def ui_history(self) -> list[dict[str, Any]]:
        """The chat tab's history dicts (role, content, stats) plus version paging info (versions, shown)."""
        return [
            {"role": m.role, "content": m.content, "stats": m.stats, "versions": len(m.versions), "shown": m.shown}
            for m in self.messages
        ]

    # -- message operations (in memory; save afterwards)

    def append(self, role: str, content: str, stats: str = "", raw: str = "") -> Message:
        """Add a message at the end. Empty or whitespace-only text is refused."""
        message = Message.make(role, content, stats, raw)
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
        if removed[0].role == "assistant" and self.messages and self.messages[-1].role == "user":
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


@dataclass
class Summary:
    """One line of the conversation list."""

    id: str
    owner: str
    title: str
    mode: str
    created: str
    updated: str
    messages: int


@dataclass
class Problem:
    """A history file that could not be read; ``moved_to`` is where it now lies (None: left in place)."""

    path: Path
    reason: str
    moved_to: Path | None = None

    def __str__(self) -> str:
        where = f"; moved to {self.moved_to.name}" if self.moved_to else ""
        return f"{self.path.name}: {self.reason}{where}"


@dataclass
class Listing:
    """The conversations of one owner, newest first, and the files that could not be read."""

    conversations: list[Summary]
    problems: list[Problem]


# --------------------------------------------------------------------------- JSON


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
        messages.append(item)
    return {
        "schema_version": SCHEMA_VERSION,
        "id": conversation.id,
        "owner": conversation.owner,
        "title": conversation.title,
        "mode": conversation.mode,
        "created": conversation.created,
        "updated": conversation.updated,
        "messages": messages,
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
    )


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
    raw_versions = data.get("versions")
    if raw_versions is None:
        return Message(role, [Version(content, stats, raw)])
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
    return Message(role, versions, shown)


def _text(data: dict, key: str, where: str = "conversation") -> str:
    value = data.get(key, "")
    if not isinstance(value, str):
        raise HistoryError(f"{where}: {key!r} is not a string")
    return value


def _nonempty(content: str) -> str:
    if not isinstance(content, str) or not content.strip():
        raise HistoryError("a message may not be empty")
    return content


# --------------------------------------------------------------------------- files


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")


def new_id() -> str:
    """A sortable, unguessable-enough id that is always a safe file name: ``20250101-120000-1a2b3c``."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def default_title(conversation: Conversation) -> str:
    """The first line of the first user message, shortened: a title until the user gives one."""
    for m in conversation.messages:
        if m.role == "user":
            line = " ".join(m.content.split())
            return line if len(line) <= 60 else line[:59].rstrip() + "…"
    return "New conversation"


def clean_title(title: str) -> str:
    """Titles are free text shown in a list: one line, not empty, at most MAX_TITLE characters."""
    title = " ".join(str(title).split())
    if not title:
        raise HistoryError("a title may not be empty")
    return title[:MAX_TITLE]


class HistoryStore:
    """The conversations under ``<user_data>/chats``; holds no state but its folder."""

    def __init__(self, user_data: Path) -> None:
        self.user_data = Path(user_data)
        self.root = self.user_data / "chats"
        self.trash = self.user_data / "trash" / "chats"

    # -- paths

    def folder(self, owner: str) -> Path:
        """The folder of one owner (a character name or ``instruct``), after validation."""
        return inside(self.root, owner, "owner")

    def path(self, owner: str, conversation_id: str) -> Path:
        """The file of one conversation; both names validated, the result stays under ``chats/``."""
        safe_name(conversation_id, "conversation id")
        folder = self.folder(owner)
        return inside(folder, f"{conversation_id}.json", "conversation id")

    # -- conversations

    def new(self, owner: str, mode: str | None = None, title: str = "") -> Conversation:
        """A fresh conversation with a new id; not on disk until the first :meth:`save`."""
        safe_name(owner, "owner")
        mode = mode or (INSTRUCT_OWNER if owner == INSTRUCT_OWNER else "chat")
        if mode not in MODES:
            raise HistoryError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
        now = _now()
        return Conversation(
            id=new_id(), owner=owner, title=clean_title(title) if title else "", mode=mode, created=now, updated=now
        )

    def save(self, conversation: Conversation) -> Path:
        """Write the conversation atomically (call after every message); sets ``updated`` and a default title."""
        path = self.path(conversation.owner, conversation.id)
        conversation.updated = _now()
        conversation.created = conversation.created or conversation.updated
        if not conversation.title and conversation.messages:
            conversation.title = default_title(conversation)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, to_json(conversation).encode("utf-8"))
        return path

    def load(self, owner: str, conversation_id: str) -> Conversation:
        """Read one conversation. A damaged file is moved aside and a HistoryError says where it went."""
        path = self.path(owner, conversation_id)
        try:
            return self._read(path, owner)
        except FileNotFoundError:
            raise ConversationNotFound(f"no conversation {conversation_id!r} for {owner!r}") from None
        except NewerSchema:
            raise
        except HistoryError as exc:
            problem = self._move_aside(path, str(exc))
            raise HistoryError(str(problem)) from None

    def exists(self, owner: str, conversation_id: str) -> bool:
        return self.path(owner, conversation_id).is_file()

    def list(self, owner: str) -> Listing:
        """Every readable conversation of ``owner``, newest first. Never raises for a bad file:
        a damaged one is moved aside and reported in ``problems``; temp files of saves are skipped
        (and removed once they are old enough to be crash leftovers)."""
        summaries: list[Summary] = []
        problems: list[Problem] = []
        safe_name(owner, "owner")  # a bad name is the caller's mistake: UnsafeName
        try:
            folder = self.folder(owner)
        except UnsafeName as exc:  # chats/<owner> is a link out of chats/: skipped, never fatal
            log.warning("chats of %r skipped: %s", owner, exc)
            return Listing(summaries, [Problem(self.root / owner, str(exc))])
        if not folder.is_dir():
            return Listing(summaries, problems)
        for path in sorted(folder.iterdir()):
            if path.name.startswith("."):
                if path.name.endswith(".tmp"):
                    self._remove_stale_temp(path)
                continue
            if path.is_symlink():  # a link could show (and later overwrite) a file from elsewhere
                problems.append(Problem(path, "a symbolic link, not a conversation file: skipped"))
                continue
            if path.suffix != ".json" or not path.is_file():
                continue
            try:
                safe_name(path.stem, "conversation id")
                c = self._read(path, owner)
            except FileNotFoundError:  # deleted while we listed
                continue
            except (NewerSchema, UnsafeName, OSError) as exc:  # not damaged, or not ours to judge: left in place
                problems.append(Problem(path, str(exc)))
            except HistoryError as exc:
                problems.append(self._move_aside(path, str(exc)))
            else:
                summaries.append(Summary(c.id, owner, c.title, c.mode, c.created, c.updated, len(c.messages)))
        summaries.sort(key=lambda s: (s.updated, s.id), reverse=True)
        for problem in problems:
            log.warning("history file could not be read: %s", problem)
        return Listing(summaries, problems)

    def owners(self) -> list[str]:
        """The owners that have a folder of conversations (characters, ``instruct``)."""
        if not self.root.is_dir():
            return []
        found = []
        for p in sorted(self.root.iterdir()):
            if p.is_symlink():
                log.warning("chats folder %s is a symbolic link: skipped", p)
                continue
            try:
                if p.is_dir() and safe_name(p.name):
                    found.append(p.name)
            except ValueError:
                continue
        return found

    def latest(self, owner: str) -> Conversation | None:
        """The most recently saved conversation of ``owner``: what a refreshed page or restarted server shows."""
        for summary in self.list(owner).conversations:
            try:
                return self.load(owner, summary.id)
            except HistoryError:
                continue
        return None

    def rename(self, owner: str, conversation_id: str, title: str) -> Conversation:
        """Give a conversation a new title (free text; the file name, its id, stays)."""
        conversation = self.load(owner, conversation_id)
        conversation.title = clean_title(title)
        self.save(conversation)
        return conversation

    def delete(self, owner: str, conversation_id: str) -> Path:
        """Move a conversation into ``<user_data>/trash/chats/<owner>/``; returns where it went."""
        path = self.path(owner, conversation_id)
        if not path.is_file():
            raise ConversationNotFound(f"no conversation {conversation_id!r} for {owner!r}")
        folder = inside(self.trash, owner, "owner")
        folder.mkdir(parents=True, exist_ok=True)
        target = _free(folder / f"{conversation_id}.deleted-{_stamp()}.json")
        os.replace(path, target)
        fsync_dir(path.parent)
        fsync_dir(folder)
        return target

    def branch(self, conversation: Conversation, upto: int, title: str = "") -> Conversation:
        """A new, saved conversation holding copies of messages ``0..upto``; the original is untouched."""
        n = len(conversation.messages)
        if not -n <= upto < n:
            raise HistoryError(f"there is no message {upto} to branch from (the conversation has {n})")
        twin = self.new(conversation.owner, conversation.mode)
        twin.messages = copy.deepcopy(conversation.messages[: upto % n + 1])
        twin.title = clean_title(title or f"{conversation.title or default_title(conversation)} (branch)")
        self.save(twin)
        return twin

    # -- export / import

    def export(self, owner: str, conversation_id: str) -> str:
        """The conversation as JSON text (what a download gives)."""
        return to_json(self.load(owner, conversation_id))

    def import_text(self, text: str | bytes, owner: str, mode: str | None = None) -> Conversation:
        """Import our JSON or a text-generation-webui history into ``owner`` and save it.

        Our own export keeps its id, title and timestamps when that id is free (so export → import is exact);
        otherwise, and for text-generation-webui files, it gets a new id. Nothing is written on bad input.
        """
        safe_name(owner, "owner")
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise HistoryError(f"not valid JSON: {exc}") from None
        if isinstance(data, dict) and "schema_version" in data:
            conversation = from_dict(data)
            conversation.owner = owner
            if not _usable_id(conversation.id) or self.exists(owner, conversation.id):
                conversation.id = new_id()
            path = self.path(owner, conversation.id)
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, to_json(conversation).encode("utf-8"))  # as it was: `updated` untouched
            return conversation
        if isinstance(data, dict) and ("internal" in data or "visible" in data):
            mode = mode or (INSTRUCT_OWNER if owner == INSTRUCT_OWNER else "chat")
            conversation = from_tgw(data, owner, mode)
            fresh = self.new(owner, mode)
            conversation.id, conversation.created = fresh.id, fresh.created
            self.save(conversation)
            return conversation
        raise HistoryError("not a conversation: expected an Inglenook export or a text-generation-webui history")

    def import_file(self, path: Path, owner: str, mode: str | None = None) -> Conversation:
        """:meth:`import_text` on a file's bytes."""
        return self.import_text(Path(path).read_bytes(), owner, mode)

    # -- internals

    def _read(self, path: Path, owner: str) -> Conversation:
        conversation = from_json(path.read_bytes())
        conversation.id, conversation.owner = path.stem, owner  # the file's place is the truth
        return conversation

    def _move_aside(self, path: Path, reason: str) -> Problem:
        target = _free(path.with_name(f"{path.name}.corrupt-{_stamp()}"))
        try:
            os.replace(path, target)
            fsync_dir(path.parent)
        except FileNotFoundError:  # another thread moved it first
            return Problem(path, reason)
        log.warning("damaged history file %s moved to %s: %s", path, target.name, reason)
        return Problem(path, reason, target)

    @staticmethod
    def _remove_stale_temp(path: Path) -> None:
        try:
            if time.time() - path.stat().st_mtime > TEMP_MAX_AGE_S:
                path.unlink()
        except FileNotFoundError:
            pass


def _free(path: Path) -> Path:
    """``path``, or ``path`` with a counter if that name is taken (never overwrite a kept file)."""
    candidate, n = path, 1
    while candidate.exists():
        candidate = path.with_name(f"{path.name}.{n}")
        n += 1
    return candidate


def _usable_id(conversation_id: str) -> bool:
    try:
        safe_name(conversation_id, "conversation id")
    except ValueError:
        return False
    return True
