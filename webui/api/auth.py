"""Who may talk to the server: API keys, the UI login, CORS and foreign origins, the Host check, body size,
the slow-down after failed keys and logins, and the refusal to listen beyond this machine unprotected.

The serve command's flags for all of this live here too (``add_serve_options`` / ``serve_settings``),
so cli.py only wires them in.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
from collections.abc import Callable
from http.cookies import CookieError, SimpleCookie

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from webui.access import FailureThrottle, logins_configured, origin_allowed
from webui.settings import Settings

log = logging.getLogger(__name__)

API_PREFIX = "/v1"
EXTENSIONS_PREFIX = "/extensions"  # extensions' own routes: the API key or a UI login, like the rest
PAGE_PREFIX = "/inglenook"  # the page's own routes beside Gradio's (its live channel): the same rule
PUBLIC_PATHS = {"/healthz"}  # the only route of ours that answers without credentials
LOGIN_PATHS = {"/login", "/login/"}  # Gradio's login form posts here
SAFE_METHODS = {"GET", "HEAD"}
CORS_HEADERS = {b"access-control-allow-origin", b"access-control-allow-credentials", b"access-control-allow-methods",
                b"access-control-allow-headers", b"access-control-expose-headers"}  # fmt: skip
UiUser = Callable[[dict[str, str]], "str | None"]  # the logged-in UI user of a request's cookies, if any
WILDCARD_HOSTS = {"0.0.0.0", "::", "[::]"}
LOOPBACK_HOST_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}


# -- command line ---------------------------------------------------------------------------------


def _missing_protection(settings: Settings) -> list[str]:
    return [what for what, ok in (("an API key (--api-key)", settings.api_key), ("a UI login (--auth)",
            logins_configured(settings))) if not ok]  # fmt: skip


def exposure_warning(settings: Settings) -> str | None:
    """What to print when --insecure-no-auth let an unprotected server listen beyond this machine."""
    missing = _missing_protection(settings)
    if settings.loopback or not missing:
        return None
    return (f"WARNING: listening on {settings.host} without {' and '.join(missing)} (--insecure-no-auth): anyone who "
            "can reach this machine can use Inglenook.")  # fmt: skip


def check_exposure(settings: Settings) -> None:
    """Refuse to serve beyond this machine without an API key and a UI login (unless told to)."""
    if settings.loopback or settings.insecure_no_auth:
        return
    missing = _missing_protection(settings)
    if missing:
        raise ValueError(
            f"refusing to listen on {settings.host} without {' and '.join(missing)}: anyone on the network could "
            "use this machine's models. Add them, or pass --insecure-no-auth if you really mean it."
        )


# -- HTTP ---------------------------------------------------------------------------------------------


def error_body(status: int, message: str, code: str | None = None, param: str | None = None) -> dict:
    """OpenAI's error JSON."""
    kind = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error",
            503: "service_unavailable"}.get(status)  # fmt: skip
    kind = kind or ("server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


ANTHROPIC_PREFIX = "/v1/messages"  # Anthropic's Messages API: its clients read Anthropic's error shape
ANTHROPIC_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                         404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
                         529: "overloaded_error"}  # fmt: skip


def anthropic_error_body(status: int, message: str) -> dict:
    """Anthropic's error JSON: ``{"type": "error", "error": {"type": …, "message": …}}``."""
    kind = ANTHROPIC_ERROR_TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


def error_body_for(path: str, status: int, message: str, code: str | None = None, param: str | None = None) -> dict:
    """The error JSON a client of ``path`` reads: Anthropic's under /v1/messages, OpenAI's everywhere else."""
    if path == ANTHROPIC_PREFIX or path.startswith(ANTHROPIC_PREFIX + "/"):
        return anthropic_error_body(status, message)
    return error_body(status, message, code, param)


def bearer(headers: dict[str, str]) -> str:
    auth = headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return headers.get("x-api-key", "").strip()


def key_matches(given: str, expected: str | None) -> bool:
    return bool(expected) and hmac.compare_digest(given.encode(), expected.encode())


def allowed_host_names(settings: Settings) -> set[str] | None:
    """Host header names we answer to; None when bound to every interface (the keys protect us then)."""
    if settings.host in WILDCARD_HOSTS:
        return None
    return {h.lower() for h in (*LOOPBACK_HOST_NAMES, settings.host, *settings.allowed_hosts)}


def _host_name(host_header: str) -> str:
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _cookies(headers: dict[str, str]) -> dict[str, str]:
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(headers.get("cookie", ""))
    except CookieError:
        return {}
    return {k: m.value for k, m in jar.items()}


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return client[0] if client else "unknown"


class Guard:
    """ASGI middleware, for every path: the Host check; foreign browser origins (not ours, not --cors-origin)
    may only read (GET/HEAD, with any CORS grant stripped), never preflight, post or open a websocket; the API
    key (or, for extension routes and the page's own, a UI login) with a per-client slow-down after failures;
    the body limit."""

    def __init__(self, app: ASGIApp, settings: Settings, ui_user: UiUser | None = None) -> None:
        self.app = app
        self.settings = settings
        self.hosts = allowed_host_names(settings)
        self.ui_user = ui_user
        self.throttle = FailureThrottle()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self.hosts is not None and _host_name(headers.get("host", "")) not in self.hosts:
            host = headers.get("host", "")
            await _reply(scope, send, 403, f"Host {host!r} is not one this server answers to (DNS rebinding "
                         "protection); add it with --allowed-host", "host_not_allowed")  # fmt: skip
            return
        method = scope.get("method", "GET")
        origin = headers.get("origin")
        if origin is not None and not origin_allowed(origin, headers.get("host", ""), self.settings):
            if scope["type"] == "websocket" or method not in SAFE_METHODS:
                log.warning("refused a %s %s from the foreign origin %r", method, scope.get("path"), origin)
                await _reply(scope, send, 403, f"requests from the origin {origin!r} are refused (allow it with "
                             "--cors-origin)", "origin_not_allowed")  # fmt: skip
                return
            send = _without_cors(send)
        path = scope.get("path", "")
        if path in LOGIN_PATHS and method == "POST" and scope["type"] == "http":
            await self._login(scope, receive, send)
            return
        api = path == API_PREFIX or path.startswith(API_PREFIX + "/")
        ours = any(path == p or path.startswith(p + "/") for p in (EXTENSIONS_PREFIX, PAGE_PREFIX))
        if scope["type"] != "http" or not (api or ours):
            await self.app(scope, receive, send)
            return
        if method != "OPTIONS" and not await self._allowed(scope, send, headers, api):
            return
        receive, refusal = await _within_limit(headers, receive, self.settings.api_max_body_bytes)
        if refusal:
            await _reply(scope, send, 413, refusal, "request_too_large")
            return
        await self.app(scope, receive, send)

    async def _allowed(self, scope: Scope, send: Send, headers: dict[str, str], api: bool) -> bool:
        """The API key for /v1 (when set); the key or a UI login for extension and page routes (when either is set).
        Replies and returns False when refused."""
        key, logins = self.settings.api_key, logins_configured(self.settings)
        if not key and (api or not logins):
            return True
        client = _client(scope)
        if wait := self.throttle.wait_s(client):
            await _too_many(scope, send, wait)
            return False
        given = bearer(headers)
        if given and (key_matches(given, key) or key_matches(given, self.settings.admin_key)):
            self.throttle.succeeded(client)
            return True
        if not api and self.ui_user is not None and self.ui_user(_cookies(headers)):
            return True
        self.throttle.failed(client, "API key" if given else "unauthenticated request")
        if api or key:
            missing = "missing API key: send 'Authorization: Bearer KEY' (or 'x-api-key: KEY')"
            message = missing if not given else "invalid API key"
        else:
            message = "log in to the UI first (this route needs the UI login)"
        await _reply(scope, send, 401, message, "invalid_api_key")
        return False

    async def _login(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Gradio's login form, throttled per client: a 400 answer is a wrong login."""
        client = _client(scope)
        if wait := self.throttle.wait_s(client):
            await _too_many(scope, send, wait)
            return

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                if message["status"] == 400:
                    self.throttle.failed(client, "UI login")
                elif message["status"] < 300:
                    self.throttle.succeeded(client)
            await send(message)

        await self.app(scope, receive, watch)


def _without_cors(send: Send) -> Send:
    """Drop any Access-Control-* grant from a response to a foreign origin (Gradio reflects origins)."""

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [(k, v) for k, v in message.get("headers", [])
                                              if k.lower() not in CORS_HEADERS]}  # fmt: skip
        await send(message)

    return wrapped


async def _too_many(scope: Scope, send: Send, wait: float) -> None:
    seconds = math.ceil(wait)
    await _reply(scope, send, 429, f"too many failed attempts from your address: try again in {seconds} s",
                 "too_many_failures", ((b"retry-after", str(seconds).encode()),))  # fmt: skip


DRAIN_MAX = 64 * 2**20  # an oversize chunked body is read (and dropped) up to this much before the 413


async def _within_limit(headers: dict[str, str], receive: Receive, limit: int) -> tuple[Receive, str | None]:
    """The one check of a request body's size: (the ``receive`` to hand on, why it is refused or None).

    With a Content-Length the header decides, before anything is read (the HTTP server reads exactly that many
    bytes as the body, so no more can arrive). Without one (chunked) the body is read here up to the limit and
    replayed, so an oversize chunked body is a 413 too, not a 400 from the body parser.
    """
    length = headers.get("content-length", "")
    if length.isdigit():
        over = int(length) > limit
        return receive, f"request body is {int(length):,} bytes; the limit is {limit:,}" if over else None
    body, over = await _read_body(receive, limit)
    if over:
        return receive, f"request body is over the limit of {limit:,} bytes"
    return _replay(body, receive), None


async def _read_body(receive: Receive, limit: int) -> tuple[bytes | Message, bool]:
    """(the body, or the ``http.disconnect`` that ended it; whether it went over ``limit``).

    A body over the limit is still read to its end (up to :data:`DRAIN_MAX`), not kept: a client still sending
    when the server answers and closes gets a broken pipe instead of the 413. Starlette turns an exception while
    it reads a body into a 400 "There was an error parsing the body", so the limit is checked before it reads.
    """
    parts: list[bytes] = []
    seen = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return message, False
        seen += len(message.get("body", b""))
        if seen <= limit:
            parts.append(message.get("body", b""))
        if not message.get("more_body", False) or seen > limit + DRAIN_MAX:
            return b"".join(parts), seen > limit


def _replay(body: bytes | Message, receive: Receive) -> Receive:
    """``receive`` that first hands over the body read already (or the disconnect that cut it short)."""
    first: list[Message] = [body if isinstance(body, dict) else {"type": "http.request", "body": body,
                                                                  "more_body": False}]  # fmt: skip

    async def wrapped() -> Message:
        return first.pop() if first else await receive()

    return wrapped


async def _reply(
    scope: Scope, send: Send, status: int, message: str, code: str, extra: tuple[tuple[bytes, bytes], ...] = ()
) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    body = json.dumps(error_body_for(scope.get("path", ""), status, message, code)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def protect(server, settings: Settings, ui_user: UiUser | None = None) -> None:
    """Add the guard and (only when origins are given) CORS to ``server``; CORS outermost so errors carry it.
    With CORS configured here, Gradio's own CORS layer stands aside (it checks its parent's middleware)."""
    server.add_middleware(Guard, settings=settings, ui_user=ui_user)
    if settings.cors_origins:
        server.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "X-API-Key"],
        )


def is_admin(headers: dict[str, str], settings: Settings) -> bool:
    """May this request load or unload models? Everyone, unless an admin key is configured."""
    return not settings.admin_key or key_matches(bearer(headers), settings.admin_key)
