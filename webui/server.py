"""One HTTP server for the UI and the OpenAI-compatible API on one port (and, optionally, the API alone on another)."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import sys

import gradio as gr
import uvicorn
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from starlette.datastructures import MutableHeaders
from starlette.middleware.gzip import GZipMiddleware
from starlette.routing import Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from webui.api.auth import UiUser, check_exposure, exposure_warning, protect
from webui.api.routes import install_api
from webui.app import App
from webui.chat.live import LIVE_PATH, live_events
from webui.chat.session import ChatSessions
from webui.logs import RequestLog
from webui.ui.app import CSS, PAGE_HEAD, build_ui

log = logging.getLogger(__name__)

QUEUE_POLL_S = 0.005
QUEUE_POLL_BUSY_S = 0.05  # while a generation decodes: a new generation waits for it anyway
PROGRESS_POLL_S = 0.1
GZIP_MIN_BYTES = 1024  # smaller answers are not worth the work
NO_BUFFERING = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # each event as it comes
HEAD_TAG = re.compile(rb"<head(?:\s[^>]*)?>", re.IGNORECASE)


def build_api_server(app: App) -> FastAPI:
    """The FastAPI app with /healthz and the /v1 API (the UI is mounted on it by :func:`build_server`)."""
    api = FastAPI(title="Inglenook", docs_url=None, redoc_url=None, openapi_url=None)
    api.add_middleware(RequestLog)  # one log line per request: method, path, status, time, model, tokens

    @api.get("/healthz", include_in_schema=False)
    def healthz() -> dict:
        info = app.engine.info
        return {"status": "ok", "model": info.name if info else None}

    install_api(api, app)  # before the UI's mount at "/", so /v1 routes match first
    app.extensions.mount_routes(api)  # /extensions/NAME/…, before the UI takes every other path
    return api


def build_server(app: App) -> FastAPI:
    """The FastAPI app serving the API at ``/v1``, extension routes, the chat page's live channel
    (``/inglenook/live``, :mod:`webui.chat.live`) and the Gradio UI at ``/``."""
    api = build_api_server(app)
    sessions = ChatSessions(app.chat, app.settings.stream_interval_s)  # the chat page's replies in flight
    api.state.chat_sessions = sessions
    blocks = build_ui(app, sessions)

    @api.get(LIVE_PATH + "/{conversation_id}", include_in_schema=False)
    def live(conversation_id: str) -> StreamingResponse:
        """The reply being written into a conversation, as the page's live channel reads it (the id is only
        looked up among the replies in flight, never on disk)."""
        events = live_events(sessions.reply_texts(conversation_id))
        return StreamingResponse(events, media_type="text/event-stream", headers=NO_BUFFERING)

    server = gr.mount_gradio_app(
        api, blocks, path="", server_name=app.settings.host, server_port=app.settings.port,
        css=CSS + app.extensions.custom_css(), head=app.extensions.head_html(),
        footer_links=[], ssr_mode=False, allowed_paths=[str(app.characters.thumbs)],
        auth=[*app.settings.ui_auth, *app.settings.admin_auth] or None,
    )  # fmt: skip
    _quiet_queue(blocks, app)
    protect(server, app.settings, ui_user=_gradio_user(server))
    # the page (~360 KiB of JS and JSON) goes compressed to a browser that asks; streams (text/event-stream)
    # are left alone by Starlette's middleware, so tokens are not held back
    server.add_middleware(FirstInHead, script=PAGE_HEAD.encode())  # inside the compression: it edits plain HTML
    server.add_middleware(GZipMiddleware, minimum_size=GZIP_MIN_BYTES, compresslevel=6)
    return server


class FirstInHead:
    """Puts ``script`` first in the page's ``<head>``, so it runs before Gradio's modules load (a ``head=`` of
    Gradio's is added to the page later, by Gradio's own script; see :data:`webui.ui.app.PAGE_HEAD`).

    Only the page itself (a GET of ``/`` answered with uncompressed HTML) is touched; every other answer, and
    every stream, passes through as it comes."""

    def __init__(self, app: ASGIApp, script: bytes) -> None:
        self.app, self.script = app, script

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET" or scope["path"] != "/":
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        parts: list[bytes] = []

        async def edit(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
                return
            if start is None or message["type"] != "http.response.body":
                await send(message)
                return
            parts.append(message.get("body", b""))
            if message.get("more_body"):
                return
            body, headers = b"".join(parts), MutableHeaders(raw=start["headers"])
            if headers.get("content-type", "").startswith("text/html") and "content-encoding" not in headers:
                body = HEAD_TAG.sub(lambda m: m.group(0) + self.script, body, count=1)
                headers["content-length"] = str(len(body))
            await send(start)
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, edit)


def _gradio_user(server: FastAPI) -> UiUser:
    """Who is logged in to the UI, from a request's cookies: Gradio keeps its login tokens on its mounted app."""
    gradio_app = next(r.app for r in server.routes if isinstance(r, Mount) and r.path == "")
    names = (f"access-token-{gradio_app.cookie_id}", f"access-token-unsecure-{gradio_app.cookie_id}")

    def user(cookies: dict[str, str]) -> str | None:
        return next((gradio_app.tokens[c] for n in names if (c := cookies.get(n)) in gradio_app.tokens), None)

    return user


def _quiet_queue(blocks: gr.Blocks, app: App) -> None:
    """Make Gradio's queue poll every 5 ms instead of every 1 ms when it has nothing to do, and every 50 ms
    while a generation decodes.

    Its 1 ms poll costs ~7 % of a core while idle; on a small machine those wake-ups preempt llama.cpp's
    decode threads, which wait for each other at every step. Even at 5 ms the poll was most of the event
    loop's CPU during an API stream (measured: 50 of 78 ms per 128-token stream on 2 cores). 5 ms adds at
    most 5 ms before a new event is picked up; 50 ms during a generation delays only a click that would
    wait for the engine anyway, or a quick UI action (once an event streams, its updates do not go through
    this poll). Gradio is pinned, and a test checks the attribute still exists.
    """
    queue = blocks._queue
    if not all(hasattr(queue, a) for a in ("sleep_when_free", "progress_update_sleep_when_free")):
        raise RuntimeError("gradio's queue has no sleep_when_free any more; revisit _quiet_queue")
    queue.sleep_when_free = QUEUE_POLL_S
    queue.progress_update_sleep_when_free = PROGRESS_POLL_S  # we report no gr.Progress

    def pace(busy: bool) -> None:
        queue.sleep_when_free = QUEUE_POLL_BUSY_S if busy else QUEUE_POLL_S

    app.engine.on_busy(pace)


def _check_port_free(host: str, port: int) -> None:
    """Fail before loading a model if ``host:port`` cannot be bound (another server holds it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host.strip("[]"), port))
        except OSError as exc:
            raise ValueError(
                f"cannot listen on {host}:{port}: {exc.strerror or exc} (another server? try another --port)"
            ) from None


def serve(app: App) -> int:
    """Load the start-up model, then serve until interrupted."""
    settings = app.settings
    check_exposure(settings)
    if warning := exposure_warning(settings):
        print(warning, file=sys.stderr, flush=True)
    _check_port_free(settings.host, settings.port)
    if settings.api_port:
        _check_port_free(settings.host, settings.api_port)
    info = app.start()
    log.info("model ready: %s (%s)", info.name, info.loader)
    server = build_server(app)
    url_host = settings.host if settings.loopback or settings.host != "0.0.0.0" else "127.0.0.1"
    print(f"Inglenook is running at http://{url_host}:{settings.port}", flush=True)
    servers = [uvicorn.Server(uvicorn.Config(server, host=settings.host, port=settings.port, log_level="warning"))]
    if settings.api_port:
        api_only = build_api_server(app)
        protect(api_only, settings)
        config = uvicorn.Config(api_only, host=settings.host, port=settings.api_port, log_level="warning")
        servers.append(uvicorn.Server(config))
        print(f"The API alone is also at http://{url_host}:{settings.api_port}/v1", flush=True)
    try:
        asyncio.run(_serve_all(servers))
    finally:
        app.close()
    return 0


async def _serve_all(servers: list[uvicorn.Server]) -> None:
    """Run every server until one stops (Ctrl-C stops them all: uvicorn handles the signal in each)."""
    tasks = [asyncio.create_task(s.serve()) for s in servers]
    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for s in servers:
        s.should_exit = True
    await asyncio.gather(*tasks, return_exceptions=True)
