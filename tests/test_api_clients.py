"""What real HTTP clients do to the server, on a real socket (uvicorn, with the access guard `serve` installs) and
scripted fake models: a chunked oversize body, and a JavaScript client (the official ``openai`` npm package)
that aborts a stream, which must free the engine for the next request at once."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import write_fake

from webui.api.auth import protect
from webui.app import App
from webui.serve import thread_server
from webui.server import build_api_server

pytestmark = pytest.mark.slow  # starts a server

JS = Path(__file__).resolve().parent / "js"


@contextlib.contextmanager
def served(app: App) -> Iterator[str]:
    """``app``'s API as `serve` runs it (guard included), on a free loopback port; yields its URL."""
    server_app = build_api_server(app)
    protect(server_app, app.settings)
    with thread_server(server_app) as url:
        yield url


def test_a_body_over_the_limit_is_413_in_the_apis_shape_chunked_or_not(fake_app):
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
        # with a Content-Length, the same limit (one check in the guard) answers before the body is read
        sized = httpx.post(f"{url}/v1/completions", content=b"".join(ten_megabytes()), headers=headers, timeout=60)
        assert sized.status_code == 413 and sized.json()["error"]["code"] == "request_too_large"
        claude = httpx.post(f"{url}/v1/messages", content=ten_megabytes(), headers=headers, timeout=60)
        assert claude.status_code == 413 and claude.json()["error"]["type"] == "request_too_large"  # its shape


TOKEN_S = 3.0  # one token of the crawling model: a busy machine's worst (a 270M model took 0.3-1.4 s at load 15)


def node_client() -> list[str]:
    """The command that runs tests/js/abort_stream.mjs, or a skip when node or the npm package is missing."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    if not (JS / "node_modules" / "openai").is_dir():
        pytest.skip("the openai npm package is not installed: cd tests/js && npm install")
    return [node, str(JS / "abort_stream.mjs")]


@pytest.mark.parametrize("how", ["break", "abort", "signal"])
def test_a_node_client_that_aborts_a_stream_frees_the_engine_before_the_token_in_flight_ends(
    make_fake_app, fake_models, how
):
    """The official openai npm package aborts a stream after 2 chunks and stays running. The server sees the
    socket close; the engine must then be idle (nothing holds or waits for its turn) while the worker is still
    in the middle of its next token: a cancel is only seen between tokens, and one token on a busy machine
    took up to 1.4 s, which is what made cancel-to-free 153-2850 ms."""
    command = node_client()
    write_fake(fake_models, "crawl", reply=" ".join(f"w{i}" for i in range(50)), token_delay_ms=TOKEN_S * 1000)
    app = make_fake_app("crawl.fake")
    with served(app) as url:
        client = subprocess.Popen([*command, f"{url}/v1", "crawl", "2", how, str(int(TOKEN_S * 2000))],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        try:
            aborted = json.loads(client.stdout.readline() or "{}")
            assert aborted.get("event") == "aborted", client.stderr.read()
            idle_at = None
            while idle_at is None and time.time() * 1000 < aborted["t"] + TOKEN_S * 1000 / 2:
                if httpx.get(f"{url}/v1/internal/health").json()["waiting"] == 0:
                    idle_at = time.time() * 1000
                time.sleep(0.01)
            assert idle_at is not None, "the engine was held until the token in flight ended"
            assert client.poll() is None, "the client is still running: its socket closed because it aborted"
            record = httpx.get(f"{url}/v1/internal/generations").json()["data"][-1]
            assert record["disconnected"] and record["finish_reason"] == "cancelled"
            assert record["completion_tokens"] == 2  # the partial reply is counted, not reported as 0
            # and the next request really runs (the worker finishes the abandoned token, then takes it)
            nxt = httpx.post(f"{url}/v1/completions", json={"prompt": "Hi", "max_tokens": 1}, timeout=60).json()
            assert nxt["choices"][0]["text"].strip() == "w0"
        finally:
            client.kill()
            client.wait()
