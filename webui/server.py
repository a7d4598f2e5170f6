"""One HTTP server for the UI (and, later, the API) on one port."""

from __future__ import annotations

import logging
import socket
import sys

import gradio as gr
import uvicorn
from fastapi import FastAPI

from webui.app import App
from webui.ui.app import CSS, build_ui

log = logging.getLogger(__name__)

QUEUE_POLL_S = 0.005
PROGRESS_POLL_S = 0.1


def build_server(app: App) -> FastAPI:
    """The FastAPI app serving the Gradio UI at ``/``."""
    api = FastAPI(title="Inglenook", docs_url=None, redoc_url=None)

    @api.get("/healthz", include_in_schema=False)
    def healthz() -> dict:
        info = app.engine.info
        return {"status": "ok", "model": info.name if info else None}

    app.extensions.mount_routes(api)  # /extensions/NAME/…, before the UI takes every other path
    blocks = build_ui(app)
    server = gr.mount_gradio_app(
        api, blocks, path="", server_name=app.settings.host, server_port=app.settings.port,
        css=CSS + app.extensions.custom_css(), head=app.extensions.head_html(), footer_links=[], ssr_mode=False,
    )  # fmt: skip
    _quiet_queue(blocks)
    return server


def _quiet_queue(blocks: gr.Blocks) -> None:
    """Make Gradio's queue poll every 5 ms instead of every 1 ms when it has nothing to do.

    Its 1 ms poll costs ~7 % of a core while idle; on a small machine those wake-ups preempt llama.cpp's
    decode threads, which wait for each other at every step. 5 ms adds at most 5 ms before a new event
    is picked up (once an event streams, its updates do not go through this poll). Gradio is pinned, and
    a test checks the attribute still exists.
    """
    queue = blocks._queue
    if not all(hasattr(queue, a) for a in ("sleep_when_free", "progress_update_sleep_when_free")):
        raise RuntimeError("gradio's queue has no sleep_when_free any more; revisit _quiet_queue")
    queue.sleep_when_free = QUEUE_POLL_S
    queue.progress_update_sleep_when_free = PROGRESS_POLL_S  # we report no gr.Progress


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
    if not settings.loopback:
        print(
            f"WARNING: listening on {settings.host}: anyone who can reach this machine can use Inglenook. "
            "Nothing is protected yet (no API key, no login).",
            file=sys.stderr,
        )
    _check_port_free(settings.host, settings.port)
    info = app.start()
    log.info("model ready: %s (%s)", info.name, info.loader)
    server = build_server(app)
    url_host = settings.host if settings.loopback or settings.host != "0.0.0.0" else "127.0.0.1"
    print(f"Inglenook is running at http://{url_host}:{settings.port}", flush=True)
    try:
        uvicorn.run(server, host=settings.host, port=settings.port, log_level="warning")
    finally:
        app.close()
    return 0
