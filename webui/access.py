"""Who may do what, decided on the server: the admin model, which browser origins may talk to us, and the
slow-down after repeated failed logins or keys.

Kept apart from the faces so the UI's handlers, the API's middleware and the CLI all ask the same questions.

The admin model: an admin may run code or touch paths through the UI (install/enable/disable extensions,
restart, load a model by path, switch on ``trust_remote_code``/``allow_pickle``). When no UI login is
configured, whoever can reach a loopback-bound server is the admin (the machine's own user); a server bound
beyond loopback without logins has no admin in the UI. When logins are configured (``--auth``,
``--admin-auth``), only the users given with ``--admin-auth`` are admins.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from webui.settings import Settings

log = logging.getLogger(__name__)

ADMIN_REFUSAL = "this needs an admin: log in with an --admin-auth login (or, without logins, use a loopback server)"


class NotAdmin(PermissionError):
    """A request tried something only an admin may do."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{what} is refused: {ADMIN_REFUSAL}")


def logins_configured(settings: Settings) -> bool:
    return bool(settings.ui_auth or settings.admin_auth)


def is_ui_admin(settings: Settings, username: str | None) -> bool:
    """Whether a UI request by ``username`` (None when nobody logged in) has admin rights."""
    if logins_configured(settings):
        return bool(username) and username in {user for user, _ in settings.admin_auth}
    return settings.loopback


def require_ui_admin(settings: Settings, username: str | None, what: str) -> None:
    """Raise :class:`NotAdmin` unless ``username`` is an admin; logs the refusal."""
    if not is_ui_admin(settings, username):
        log.warning("refused %s for %s: not an admin", what, username or "an anonymous user")
        raise NotAdmin(what)


def _origin_netloc(origin: str) -> str | None:
    """``host[:port]`` of an Origin header, default ports dropped; None for "null" or junk."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    default = {"http": 80, "https": 443}[parts.scheme]
    return host.lower() if port in (None, default) else f"{host.lower()}:{port}"


def _host_netloc(host_header: str) -> str:
    host = host_header.strip().lower()
    for suffix in (":80", ":443"):
        if host.endswith(suffix) and (host.count(":") == 1 or host.startswith("[")):
            return host[: -len(suffix)]
    return host


def origin_allowed(origin: str, host_header: str, settings: Settings) -> bool:
    """May a browser page on ``origin`` make credentialed or state-changing requests to us? Only our own
    origin (the page came from this server: same host and port as the request's Host) and the origins the
    user allowed with ``--cors-origin``."""
    if origin.strip().rstrip("/") in {o.rstrip("/") for o in settings.cors_origins}:
        return True
    netloc = _origin_netloc(origin)
    return netloc is not None and netloc == _host_netloc(host_header)


@dataclass
class _Record:
    failures: int = 0
    last: float = 0.0


@dataclass
class FailureThrottle:
    """Per-client slow-down after failed logins or API keys.

    The first ``free`` failures cost nothing; after that a client must wait ``base_s`` × 2^(n − free) seconds
    (at most ``max_s``) after its last failure before it may try again; tries during the wait are refused
    unchecked. A client's record is forgotten ``forget_s`` after its last failure, or at a success.
    """

    free: int = 5
    base_s: float = 0.5
    max_s: float = 60.0
    forget_s: float = 900.0
    max_clients: int = 10_000
    clock: Callable[[], float] = time.monotonic
    _records: dict[str, _Record] = field(default_factory=dict)

    def wait_s(self, client: str) -> float:
        """Seconds ``client`` must still wait before its next try (0: it may try now)."""
        record = self._records.get(client)
        if record is None:
            return 0.0
        now = self.clock()
        if now - record.last > self.forget_s:
            del self._records[client]
            return 0.0
        if record.failures < self.free:
            return 0.0
        delay = min(self.max_s, self.base_s * 2 ** (record.failures - self.free))
        return max(0.0, record.last + delay - now)

    def failed(self, client: str, what: str) -> None:
        if client not in self._records and len(self._records) >= self.max_clients:
            oldest = min(self._records, key=lambda c: self._records[c].last)
            del self._records[oldest]
        record = self._records.setdefault(client, _Record())
        record.failures += 1
        record.last = self.clock()
        log.warning("failed %s from %s (%d in a row)", what, client, record.failures)

    def succeeded(self, client: str) -> None:
        self._records.pop(client, None)
