"""Logs: one line per HTTP request (method, path, status, time, model, tokens) and per load/unload, to stderr and
a rotating file in user_data/logs/; --log-level.

The middleware runs on a real FastAPI app (JSON, SSE and error routes shaped like ours); the end-to-end test
runs the real server on the fake loader and reads the log file it wrote.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import re
import time
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from fastapi.testclient import TestClient

from webui.logs import RequestLog, setup_logging


@pytest.fixture
def logfile(tmp_path: Path):
    """Logging set up as the CLI does, to a user_data folder; the handlers are removed afterwards."""
    path = setup_logging("info", tmp_path / "user_data")
    yield path
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_inglenook", False)]:
        root.removeHandler(handler)
        handler.close()


def _lines(path: Path) -> list[str]:
    for handler in logging.getLogger().handlers:
        handler.flush()
    return path.read_text().splitlines()


def _app() -> FastAPI:
    api = FastAPI()
    api.add_middleware(RequestLog)

    @api.post("/v1/chat/completions")
    def chat(body: dict) -> dict:
        if body.get("stream"):

            def events():
                yield 'data: {"model": "tiny", "choices": [{"delta": {"content": "Hi"}}]}\n\n'
                yield 'data: {"model": "tiny", "choices": [], "timings": {"prompt_n": 7, '
                yield '"predicted_n": 3}}\n\ndata: [DONE]\n\n'  # an event split across two sends

            return StreamingResponse(events(), media_type="text/event-stream")
        return {"model": "tiny", "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}

    @api.post("/v1/messages")
    def messages() -> dict:
        return {"model": "tiny", "usage": {"input_tokens": 4, "output_tokens": 9}}

    @api.get("/v1/boom")
    def boom() -> dict:
        raise RuntimeError("boom")

    @api.get("/theme.css")
    def asset() -> str:
        return "body {}"

    return api


def test_one_line_per_request_with_model_and_tokens(logfile: Path):
    client = TestClient(_app(), raise_server_exceptions=False)
    assert client.post("/v1/chat/completions", json={}).status_code == 200
    assert client.post("/v1/chat/completions", json={"stream": True}).status_code == 200
    assert client.post("/v1/messages", json={}).status_code == 200
    assert client.get("/v1/nothing").status_code == 404
    assert client.get("/v1/boom").status_code == 500
    client.get("/theme.css")  # the UI's own traffic: DEBUG, so not at info
    lines = [line for line in _lines(logfile) if "inglenook.http" in line]
    pattern = r"^\S+ \S+ INFO inglenook\.http: {} \d+ ms{}$"
    expected = [
        ("POST /v1/chat/completions 200", " model=tiny tokens=5\\+2"),
        ("POST /v1/chat/completions 200", " model=tiny tokens=7\\+3"),
        ("POST /v1/messages 200", " model=tiny tokens=4\\+9"),
        ("GET /v1/nothing 404", ""),
        ("GET /v1/boom 500", ""),
    ]
    assert len(lines) == len(expected), lines
    for line, (head, tail) in zip(lines, expected, strict=True):
        assert re.match(pattern.format(head, tail), line), line


def test_log_level_and_file_rotation(tmp_path: Path):
    path = setup_logging("warning", tmp_path)
    try:
        assert path == tmp_path / "logs" / "inglenook.log"
        logging.getLogger("webui.engine").info("not at warning")
        logging.getLogger("webui.engine").warning("kept")
        (handler,) = [h for h in logging.getLogger().handlers if isinstance(h, logging.handlers.RotatingFileHandler)]
        assert handler.maxBytes > 0 and handler.backupCount > 0
        text = "\n".join(_lines(path))
        assert "kept" in text and "not at warning" not in text
        with pytest.raises(ValueError, match="log-level"):
            setup_logging("chatty", tmp_path)
    finally:
        setup_logging("info", None)


@pytest.mark.slow
def test_server_logs_requests_and_loads(tmp_path: Path):
    """The real server (fake loader): its log file has the load, each API request with model and tokens, and
    the unload; stderr has the same lines."""
    from tests.conftest import running_server

    models = tmp_path / "models"
    models.mkdir()
    (models / "parrot.fake").write_text(json.dumps({"reply": "Hello there friend."}))
    user_data = tmp_path / "user_data"
    args = ("--models-dir", str(models), "--model", "parrot.fake", "--user-data", str(user_data))
    with running_server(*args) as (url, proc):
        r = httpx.post(f"{url}/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}, timeout=60)
        assert r.status_code == 200
        usage = r.json()["usage"]
        assert httpx.post(f"{url}/v1/internal/model/unload", json={}, timeout=60).status_code == 200
        deadline = time.monotonic() + 10  # the line is written once the response has gone out
        while "POST /v1/internal/model/unload 200" not in proc.output() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "POST /v1/chat/completions 200" in proc.output()  # stderr has the lines too
    text = (user_data / "logs" / "inglenook.log").read_text()
    assert re.search(r"INFO webui\.engine: loaded parrot\.fake with fake in", text), text
    line = f"POST /v1/chat/completions 200 \\d+ ms model=parrot tokens={usage['prompt_tokens']}\\+"
    assert re.search(line + str(usage["completion_tokens"]), text), text
    assert "INFO webui.engine: unloaded parrot.fake" in text
