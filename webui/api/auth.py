"""Who may talk to the server: API keys, the UI login, CORS, the Host check, body size, and the
refusal to listen beyond this machine unprotected.

The serve command's flags for all of this live here too (``add_serve_options`` / ``serve_settings``),
so cli.py only wires them in.
"""

from __future__ import annotations

import hmac
import json

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from webui.settings import Settings

API_PREFIX = "/v1"
WILDCARD_HOSTS = {"0.0.0.0", "::", "[::]"}
LOOPBACK_HOST_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}


# -- command line ---------------------------------------------------------------------------------


def _missing_protection(settings: Settings) -> list[str]:
    return [what for what, ok in (("an API key (--api-key)", settings.api_key), ("a UI login (--auth)",
            settings.ui_auth)) if not ok]  # fmt: skip


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
    kind = {401: "authentication_error", 403: "permission_error", 503: "service_unavailable"}.get(status)
    kind = kind or ("server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


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


class Guard:
    """ASGI middleware: the Host check for everything; the API key and the body limit for /v1."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.hosts = allowed_host_names(settings)

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
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path == API_PREFIX or path.startswith(API_PREFIX + "/")):
            await self.app(scope, receive, send)
            return
        if self.settings.api_key and scope.get("method") != "OPTIONS":
            given = bearer(headers)
            if not (key_matches(given, self.settings.api_key) or key_matches(given, self.settings.admin_key)):
                message = "missing API key: send 'Authorization: Bearer KEY'" if not given else "invalid API key"
                await _reply(scope, send, 401, message, "invalid_api_key")
                return
        limit = self.settings.api_max_body_bytes
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            await _reply(scope, send, 413, f"request body is {int(length):,} bytes; the limit is {limit:,}",
                         "request_too_large")  # fmt: skip
            return
        await self.app(scope, _limited(receive, limit), send)


class BodyTooLarge(Exception):
    """A chunked body grew past the limit while it was read."""


def _limited(receive: Receive, limit: int) -> Receive:
    seen = 0

    async def wrapped() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge(f"request body is over the limit of {limit:,} bytes")
        return message

    return wrapped


async def _reply(scope: Scope, send: Send, status: int, message: str, code: str) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    body = json.dumps(error_body(status, message, code)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def protect(server, settings: Settings) -> None:
    """Add the guard and (only when origins are given) CORS to ``server``; CORS outermost so errors carry it."""
    server.add_middleware(Guard, settings=settings)
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
