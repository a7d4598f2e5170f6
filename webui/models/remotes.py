"""The user's remotes: OpenAI-compatible servers whose models Inglenook lists as ``NAME/model-id``.

They live in ``user_data/remotes.yaml`` (name, URL, kind, whether the server does chat), each key in
``user_data/remotes/NAME.key`` (0600), written only by ``inglenook remotes add`` (or this module's
:meth:`Remotes.add`). Nothing a request sends can add a remote or change a URL: the API and the UI only
*name* models that this file lists. A key is read when the remotes are, handed to the ``openai-remote``
loader (:mod:`backends.remote`) and never logged, shown or written anywhere else.

Each remote's model list (``GET URL/v1/models``) is cached for :data:`LIST_TTL_S`, so the model dropdown and
``/v1/models`` do not wait on a server every time; a remote that cannot be reached lists no models and says why
in :meth:`Remotes.status`.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from backends.base import ModelLoadError
from backends.registry import LoaderRegistry
from backends.remote import KINDS, NAME, Remote, RemoteClient, RemoteLoader, RemoteSettings, check_url, remote_path
from webui.files import write_atomic

log = logging.getLogger(__name__)

FILE = "remotes.yaml"
KEYS_DIR = "remotes"
LIST_TTL_S = 30.0
LIST_SETTINGS = RemoteSettings(connect_timeout_s=3.0, read_timeout_s=5.0)  # listing must not hang the UI
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
MAX_KEY_BYTES = 4096


class RemoteConfigError(ValueError):
    """The remotes file or a command's arguments are wrong; the message says which, on one line."""


@dataclass
class Listing:
    at: float
    ids: list[str]
    error: str = ""


class Remotes:
    """The configured remotes of one ``user_data`` folder, and their cached model lists."""

    def __init__(self, user_data: Path, registry: LoaderRegistry | None = None) -> None:
        self.user_data = user_data
        self.registry = registry
        self._lock = threading.Lock()
        self._seen: tuple[float, int] | None = None  # (mtime, size) of the file last read
        self._remotes: list[Remote] = []
        self._listings: dict[str, Listing] = {}

    @property
    def file(self) -> Path:
        return self.user_data / FILE

    def key_file(self, name: str) -> Path:
        return self.user_data / KEYS_DIR / f"{check_name(name)}.key"

    # -- reading ------------------------------------------------------------------------------------------------
    def all(self) -> list[Remote]:
        """The remotes as the file says now (read again when it changed; the loader is told)."""
        with self._lock:
            stamp = _stamp(self.file)
            if stamp != self._seen:
                self._remotes = self._read()
                self._seen = stamp
                self._listings = {k: v for k, v in self._listings.items() if k in {r.name for r in self._remotes}}
                self._tell_loader()
            return list(self._remotes)

    def _read(self) -> list[Remote]:
        entries = _entries(self.file)
        found = []
        for entry in entries:
            name = entry["name"]
            key_path = self.user_data / KEYS_DIR / f"{name}.key"
            key = key_path.read_text(encoding="utf-8").strip() if key_path.is_file() else ""
            found.append(Remote(name, entry["url"], key, entry.get("kind", "auto"), bool(entry.get("chat", True))))
        return found

    def _tell_loader(self) -> None:
        if self.registry is not None and NAME in self.registry.names():
            loader = self.registry.get(NAME)
            if isinstance(loader, RemoteLoader):
                loader.configure(self._remotes)

    def get(self, name: str) -> Remote:
        for remote in self.all():
            if remote.name == name:
                return remote
        raise RemoteConfigError(f"no remote named {name!r} (inglenook remotes list shows them)")

    # -- models ---------------------------------------------------------------------------------------------------
    def model_ids(self, remote: Remote, fresh: bool = False) -> Listing:
        """The ids ``remote`` serves (cached for LIST_TTL_S; an error is cached too, so a dead server costs one
        connect timeout per TTL, not one per page refresh)."""
        with self._lock:
            cached = self._listings.get(remote.name)
        if cached is not None and not fresh and time.monotonic() - cached.at < LIST_TTL_S:
            return cached
        client = RemoteClient(remote, LIST_SETTINGS)
        try:
            listing = Listing(time.monotonic(), sorted(c["id"] for c in client.models()))
        except ModelLoadError as exc:
            listing = Listing(time.monotonic(), [], str(exc))
        finally:
            client.close()
        with self._lock:
            self._listings[remote.name] = listing
        return listing

    def usable(self) -> list[Remote]:
        """:meth:`all`, or none (logged) when the file is broken: a bad remotes file must not break the model list."""
        try:
            return self.all()
        except RemoteConfigError as exc:
            log.warning("remotes are off: %s", exc)
            return []

    def models(self) -> dict[str, Path]:
        """``NAME/model-id`` → its engine path, for every model every remote serves now."""
        return {f"{r.name}/{i}": remote_path(r.name, i) for r in self.usable() for i in self.model_ids(r).ids}

    def path_for(self, spec: str | None) -> Path | None:
        """The engine path of ``NAME/model-id`` if NAME is a configured remote (the id is checked when it loads);
        None for anything else, so a local name or path resolves as before."""
        name, sep, model_id = (spec or "").strip().partition("/")
        if not sep or not model_id or not _NAME.fullmatch(name):
            return None
        if not any(r.name == name for r in self.usable()):
            return None
        return remote_path(name, model_id)

    def status(self) -> list[dict]:
        """Every remote as ``inglenook remotes list`` shows it (never its key, only whether it has one)."""
        rows = []
        for r in self.all():
            listing = self.model_ids(r, fresh=True)
            rows.append({"name": r.name, "url": r.url, "kind": r.kind, "chat": r.chat, "api_key": bool(r.api_key),
                         "models": listing.ids, "error": listing.error or None})  # fmt: skip
        return rows

    # -- changing (the CLI only) ----------------------------------------------------------------------------------
    def add(self, name: str, url: str, key: str | None = None, kind: str = "auto", chat: bool = True) -> Remote:
        """Add (or replace) a remote; its key, if any, goes to a 0600 file of its own."""
        check_name(name)
        try:
            url = check_url(url)
        except ValueError as exc:
            raise RemoteConfigError(str(exc)) from None
        if kind not in KINDS:
            raise RemoteConfigError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
        entries = [e for e in _entries(self.file) if e["name"] != name]
        entries.append({"name": name, "url": url, "kind": kind, "chat": chat})
        key_path = self.key_file(name)
        if key:
            save_key(key_path, key)
        else:
            key_path.unlink(missing_ok=True)
        self._write(entries)
        return self.get(name)

    def remove(self, name: str) -> bool:
        entries = _entries(self.file)
        kept = [e for e in entries if e["name"] != name]
        if len(kept) == len(entries):
            return False
        self._write(kept)
        self.key_file(name).unlink(missing_ok=True)
        return True

    def _write(self, entries: list[dict]) -> None:
        self.user_data.mkdir(parents=True, exist_ok=True)
        text = "# Remotes: OpenAI-compatible servers (inglenook remotes add|list|remove). Keys are in remotes/.\n"
        write_atomic(self.file, (text + yaml.safe_dump({"remotes": entries}, sort_keys=False)).encode())


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise RemoteConfigError(
            f"a remote name is 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit, not {name!r}"
        )
    return name


def read_key_file(path: Path) -> str:
    """The key in ``path`` (its first line); RemoteConfigError if it cannot be read or is empty."""
    try:
        data = path.read_bytes()[: MAX_KEY_BYTES + 1]
    except OSError as exc:
        raise RemoteConfigError(f"cannot read the key file {path}: {exc.strerror or exc}") from None
    text = data.decode("utf-8", errors="replace").strip().splitlines()
    if len(data) > MAX_KEY_BYTES or not text or not text[0].strip():
        raise RemoteConfigError(f"the key file {path} holds no key (one line, at most {MAX_KEY_BYTES} bytes)")
    key = text[0].strip()
    if any(ord(c) < 32 or ord(c) == 127 for c in key):
        raise RemoteConfigError(f"the key in {path} holds control characters")
    return key


def save_key(path: Path, key: str) -> None:
    """Write ``key`` readable by this user only (0600 from the start, never world-readable for a moment)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(key + "\n")
    os.chmod(path, 0o600)


def _stamp(path: Path) -> tuple[float, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime, st.st_size)


def _entries(path: Path) -> list[dict]:
    """The remotes file's entries, checked; RemoteConfigError (one line) for a file that is not what we wrote."""
    if not path.is_file():
        return []
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise RemoteConfigError(f"{path} cannot be read: {' '.join(str(exc).split())}") from None
    items = data.get("remotes", []) if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise RemoteConfigError(f"{path}: expected 'remotes:' with a list of remotes")
    entries = []
    for number, item in enumerate(items, 1):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not isinstance(item.get("url"), str):
            raise RemoteConfigError(f"{path}: remote {number} needs a name and a url")
        check_name(item["name"])
        try:
            url = check_url(item["url"])
        except ValueError as exc:
            raise RemoteConfigError(f"{path}: remote {item['name']}: {exc}") from None
        kind = item.get("kind", "auto")
        if kind not in KINDS:
            raise RemoteConfigError(f"{path}: remote {item['name']}: kind must be one of {', '.join(KINDS)}")
        entries.append({"name": item["name"], "url": url, "kind": kind, "chat": item.get("chat", True) is not False})
    return entries
