"""What real HTTP clients do to the server, on a real socket (uvicorn, with the access guard `serve` installs) and
scripted fake models: a chunked oversize body, and a JavaScript client (the official ``openai`` npm package)
that aborts a stream, which must free the engine for the next request at once."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from conftest import free_port

from webui.api.auth import protect
from webui.app import App
from webui.server import build_api_server

pytestmark = pytest.mark.slow  # starts a server

JS = Path(__file__).resolve().parent / "js"


@contextlib.contextmanager
def served(app: App) -> Iterator[str]:
    """``app``'s API as `serve` runs it (guard included), on a free loopback port; yields its URL."""
    server_app = build_api_server(app)
    protect(server_app, app.settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(server_app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="test-api-clients", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_a_chunked_body_over_the_limit_is_413_in_openai_shape(fake_app):
    """No Content-Length (a generator body goes out chunked): the limit is still a 413, not a 400 from the body
    parser; a chunked body under the limit still works."""
    megabyte = b"x" * 2**20

    def ten_megabytes() -> Iterator[bytes]:
        yield b'{"model": "hello", "prompt": "'
        for _ in range(10):
            yield megabyte
        yield b'"}'

    def small() -> Iterator[bytes]:
        yield b'{"model": "hello", '
        yield b'"prompt": "hi", "max_tokens": 3}'

    with served(fake_app) as url:
        headers = {"content-type": "application/json"}
        r = httpx.post(f"{url}/v1/completions", content=ten_megabytes(), headers=headers, timeout=60)
        assert "content-length" not in r.request.headers and r.request.headers["transfer-encoding"] == "chunked"
        assert r.status_code == 413, r.text
        error = r.json()["error"]
        assert error["code"] == "request_too_large" and "limit" in error["message"]
        assert set(error) == {"message", "type", "param", "code"}
        ok = httpx.post(f"{url}/v1/completions", content=small(), headers=headers, timeout=60)
        assert ok.status_code == 200, ok.text
        assert ok.json()["choices"][0]["text"]
