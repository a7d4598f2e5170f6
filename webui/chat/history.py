"""Chat histories that are never lost: one JSON file per conversation, written atomically.

Layout: ``<user_data>/chats/<owner>/<id>.json`` where ``owner`` is a character name or ``"instruct"``.
Every owner and id goes through :func:`webui.paths.safe_name`; ids are made by us, titles are free text
that lives only inside the file and never becomes a path.

Why the care: wiped or half-written histories are the second most reported failure of the peers. So a
save writes a temporary file in the same folder, fsyncs it, renames it over the old file and fsyncs the
folder: a crash (even ``kill -9``) leaves either the old or the new complete file. A file that is damaged
anyway (edited by hand, a disk error) is moved aside to ``<id>.json.corrupt-<time>`` and reported; it
never stops the others from listing or the app from starting.

The conversation itself is :mod:`webui.chat.conversation`; its JSON forms are :mod:`webui.chat.transfer`.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from webui.chat.conversation import (
    INSTRUCT_OWNER,
    MODES,
    Conversation,
    ConversationNotFound,
    HistoryError,
    NewerSchema,
)
from webui.chat.transfer import from_dict, from_json, from_tgw, to_json
from webui.files import fsync_dir, write_atomic
from webui.paths import UnsafeName, inside, safe_name

log = logging.getLogger(__name__)

MAX_TITLE = 200
TEMP_MAX_AGE_S = 600  # a temp file this old is a crash leftover, not a save in progress in another thread


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

    def label(self) -> str:
        """The picker's line: title, when it was last written (UTC, to the minute) and how many messages,
        so four chats that opened with the same words can be told apart."""
        when = self.updated[:16].replace("T", " ")
        count = f"{self.messages} message{'s' if self.messages != 1 else ''}"
        return " · ".join(part for part in (self.title or UNTITLED, when, count) if part)


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


# --------------------------------------------------------------------------- files


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")


def new_id() -> str:
    """A sortable, unguessable-enough id that is always a safe file name: ``20250101-120000-1a2b3c``."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


_NEW_ID = re.compile(r"\d{8}-\d{6}-[0-9a-f]{6}")


def is_new_id(text: str) -> bool:
    """Whether ``text`` has the shape of :func:`new_id`'s ids (and so is a safe file name)."""
    return bool(_NEW_ID.fullmatch(text or ""))


UNTITLED = "New conversation"


def default_title(conversation: Conversation) -> str:
    """The first line of the first user message, shortened: a title until the user gives one."""
    for m in conversation.messages:
        if m.role == "user":
            line = " ".join(m.content.split())
            return line if len(line) <= 60 else line[:59].rstrip() + "…"
    return UNTITLED


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
        if not conversation.title and any(m.role == "user" for m in conversation.messages):
            conversation.title = default_title(conversation)  # a character's greeting is no title: wait for the user
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

    def newest_owner(self) -> str | None:
        """The owner whose conversation was saved last, of all owners: where a page opened without a
        conversation id (a reload, a new tab) goes back to, a character's chat included."""
        best: Summary | None = None
        for owner in self.owners():
            first = next(iter(self.list(owner).conversations), None)
            if first is not None and (best is None or (first.updated, first.id) > (best.updated, best.id)):
                best = first
        return best.owner if best else None

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

    def known(self, owner: str, conversation_id: str) -> bool:
        """Whether ``conversation_id`` was ever saved for ``owner``: on disk (readable or not) or in the trash."""
        return self.path(owner, conversation_id).exists() or bool(self._deleted_copies(owner, conversation_id))

    def _deleted_copies(self, owner: str, conversation_id: str) -> list[Path]:
        """The trash's copies of ``conversation_id`` (one per delete), oldest name first."""
        folder = inside(self.trash, owner, "owner")
        return sorted(folder.glob(f"{conversation_id}.deleted-*.json*")) if folder.is_dir() else []

    def undelete(self, owner: str, conversation_id: str) -> Path:
        """Move the newest deleted copy of ``conversation_id`` back from the trash (Undo after a delete): the
        same file, byte for byte. HistoryError if none is there or the conversation exists again."""
        path = self.path(owner, conversation_id)  # validates both names
        folder = inside(self.trash, owner, "owner")
        kept = self._deleted_copies(owner, conversation_id)
        if not kept:
            raise ConversationNotFound(f"no deleted conversation {conversation_id!r} for {owner!r} to restore")
        if path.exists():
            raise HistoryError(f"conversation {conversation_id!r} exists again; the deleted copy stays in the trash")
        path.parent.mkdir(parents=True, exist_ok=True)
        newest = max(kept, key=lambda p: (p.stat().st_mtime_ns, p.name))
        os.replace(newest, path)
        fsync_dir(folder)
        fsync_dir(path.parent)
        return path

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
