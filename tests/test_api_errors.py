"""The API's failures in OpenAI's shape, everywhere under /v1, and what a stream the client left is recorded as;
on the fake loader."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn
from conftest import free_port
from fastapi import FastAPI
from fastapi.testclient import TestClient

from webui.api.routes import install_api
from webui.app import App
from webui.server import build_api_server
from webui.settings import Settings


@pytest.fixture
def app(tmp_path: Path):
    models = tmp_path / "models"
    models.mkdir()
    (models / "slow.fake").write_text(json.dumps({"reply": " ".join(["word"] * 300), "token_delay_ms": 10}))
    app = App.create(Settings(models_dir=models, user_data=tmp_path / "ud", n_ctx=4096))
    app.load_model("slow.fake")
    yield app
    app.close()


def openai_error(r: httpx.Response) -> dict:
    assert set(r.json()) == {"error"}, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def test_unknown_routes_and_wrong_methods_under_v1_answer_in_openai_shape(app):
    server = FastAPI()
    install_api(server, app)
    client = TestClient(server)
    r = client.get("/v1/no/such/thing")
    assert r.status_code == 404 and openai_error(r)["code"] == "not_found"
    r = client.get("/v1/chat/completions")
    assert r.status_code == 405 and openai_error(r)["code"] == "method_not_allowed"
    assert r.headers["allow"] == "POST" and "POST" in openai_error(r)["message"]
    r = client.delete("/v1/models")
    assert r.status_code == 405 and r.headers["allow"] == "GET"
    assert client.get("/v1/models").status_code == 200, "the routes themselves still answer"
    assert client.post("/v1/internal/token-count", json={"text": "abc"}).json() == {"length": 3}


@pytest.mark.slow  # starts a server
def test_a_stream_the_client_left_is_recorded_with_the_tokens_it_produced(app):
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(build_api_server(app), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port}"
        body = {"prompt": "Hi", "max_tokens": 200, "stream": True}
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=30) as r:
            chunks = 0
            for line in r.iter_lines():
                if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["text"]:
                    chunks += 1
                if chunks == 4:
                    break  # leaving the block closes the connection mid-stream
        deadline = time.monotonic() + 20
        records: list[dict] = []
        while not records and time.monotonic() < deadline:
            records = httpx.get(f"{url}/v1/internal/generations").json()["data"]
            time.sleep(0.1)
        [record] = records
        assert record["disconnected"] and record["finish_reason"] == "cancelled"
        assert 4 <= record["completion_tokens"] < 200, "the tokens it produced before the client left"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
