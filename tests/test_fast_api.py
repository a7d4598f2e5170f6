"""The OpenAI-compatible API on scripted fake models (fast tier): the real FastAPI app in process
(Starlette's TestClient), so the routes, streaming, errors and engine calls are the ones `serve` runs.

The real-model API tests (tests/test_api.py) cover the same routes against llama.cpp over a socket.
"""

from __future__ import annotations

import json
import threading
import time

import pytest
from conftest import FAKE_HELLO, SLOW_WORDS
from fastapi.testclient import TestClient

from webui.server import build_api_server

CHAT = [{"role": "user", "content": "Tell me about the sea."}]


@pytest.fixture
def client(fake_app):
    with TestClient(build_api_server(fake_app)) as c:
        yield c


def events(response) -> list:
    """The JSON payloads of an SSE response, then "[DONE]"."""
    out = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line[len("data: ") :]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def test_health_and_models_name_the_loaded_model(client):
    assert client.get("/healthz").json() == {"status": "ok", "model": "hello"}
    cards = client.get("/v1/models").json()["data"]
    assert [(c["id"], c["loaded"], c["active"]) for c in cards] == [("hello", True, True)]
    assert client.get("/v1/models/hello").json()["id"] == "hello"


def test_chat_completion_returns_the_reply_with_usage_and_timings(client):
    r = client.post("/v1/chat/completions", json={"model": "hello", "messages": CHAT, "temperature": 0})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == "hello"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": FAKE_HELLO}
    assert body["choices"][0]["finish_reason"] == "stop"
    usage = body["usage"]
    assert usage["completion_tokens"] == len(FAKE_HELLO.split())
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert body["timings"]["predicted_n"] == usage["completion_tokens"]


def test_a_streamed_chat_equals_the_whole_reply_and_ends_with_usage_and_done(client):
    request = {"messages": CHAT, "stream": True, "stream_options": {"include_usage": True}}
    with client.stream("POST", "/v1/chat/completions", json=request) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        got = events(r)
    assert got[-1] == "[DONE]"
    chunks = got[:-1]
    assert chunks[0]["choices"][0]["delta"].get("role") == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == FAKE_HELLO
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert finishes == ["stop"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == len(FAKE_HELLO.split())


def test_max_tokens_and_stop_shorten_the_reply(client):
    r = client.post("/v1/chat/completions", json={"messages": CHAT, "max_tokens": 2}).json()
    assert r["choices"][0]["message"]["content"] == "Hello there," and r["choices"][0]["finish_reason"] == "length"
    r = client.post("/v1/chat/completions", json={"messages": CHAT, "stop": [" friend"]}).json()
    assert r["choices"][0]["message"]["content"] == "Hello there,"


def test_text_completion_sees_the_prompt_as_sent_and_echo_prepends_it(make_fake_app):
    with TestClient(build_api_server(make_fake_app("echo.fake"))) as client:
        r = client.post("/v1/completions", json={"prompt": "first\nsecond line", "max_tokens": 10}).json()
        assert r["object"] == "text_completion"
        assert r["choices"][0]["text"] == "You said: second line"
        r = client.post("/v1/completions", json={"prompt": "abc", "echo": True}).json()
        assert r["choices"][0]["text"] == "abcYou said: abc"


def test_tokens_encode_decode_and_count_through_the_loaded_model(client):
    text = "héllo wörld"
    encoded = client.post("/v1/internal/encode", json={"text": text}).json()
    assert encoded["tokens"] == list(text.encode()) and encoded["length"] == len(text.encode())
    assert client.post("/v1/internal/token-count", json={"text": text}).json() == {"length": len(text.encode())}
    assert client.post("/v1/internal/decode", json={"tokens": encoded["tokens"]}).json() == {"text": text}


def test_bad_requests_get_a_clear_error_and_the_api_keeps_serving(client):
    r = client.post("/v1/chat/completions", json={"messages": []})
    assert r.status_code in (400, 422) and "messages" in r.text
    r = client.post("/v1/chat/completions", json={"model": "no-such-model", "messages": CHAT})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert "hello" in r.json()["error"]["message"]  # it says what is available
    r = client.post("/v1/chat/completions", json={"model": "../etc/passwd", "messages": CHAT})
    assert r.status_code == 400
    r = client.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code in (400, 422)
    r = client.post("/v1/chat/completions", json={"messages": CHAT, "tools": [{"type": "web_search_preview"}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "tools"
    assert "tools[0]: tools of type 'web_search_preview' are not supported" in r.json()["error"]["message"]
    assert client.post("/v1/chat/completions", json={"messages": CHAT}).status_code == 200


def test_no_model_loaded_is_a_503_until_one_is_loaded_again(client, fake_app):
    assert client.post("/v1/internal/model/unload").json()["resident"] == []
    r = client.post("/v1/chat/completions", json={"messages": CHAT})
    assert r.status_code == 503 and r.json()["error"]["code"] == "model_not_loaded"
    assert client.get("/healthz").json()["model"] is None
    # The API names only models the folder lists (GGUF files, model folders), not a plugin's .fake files:
    # load it again through the App.
    fake_app.load_model("hello.fake")
    assert client.get("/v1/internal/model/info").json()["model_name"] == "hello"
    assert client.post("/v1/chat/completions", json={"messages": CHAT}).status_code == 200


def test_stop_generation_ends_a_running_streamed_reply(make_fake_app):
    app = make_fake_app("slow.fake")
    with TestClient(build_api_server(app)) as client:
        got: list = []

        def read() -> None:
            with client.stream("POST", "/v1/chat/completions", json={"messages": CHAT, "stream": True}) as r:
                got.extend(events(r))

        reader = threading.Thread(target=read)
        reader.start()
        deadline = time.monotonic() + 10
        while not client.post("/v1/internal/stop-generation").json()["stopped"]:
            assert time.monotonic() < deadline, "the generation never started"
            time.sleep(0.02)
        reader.join(10)
        assert not reader.is_alive()
    assert got[-1] == "[DONE]"
    final = [c for c in got[:-1] if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(final) == 1 and final[0]["choices"][0]["finish_reason"] == "stop"  # OpenAI has no "cancelled"
    assert final[0]["timings"]["cancelled"] is True  # but our timings say so
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in got[:-1] if c["choices"])
    assert len(text.split()) < SLOW_WORDS


def test_the_same_seed_gives_the_same_sample(make_fake_app):
    with TestClient(build_api_server(make_fake_app("seeded.fake"))) as client:

        def ask(seed: int) -> str:
            body = {"messages": CHAT, "temperature": 1.0, "seed": seed}
            return client.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"]

        assert ask(3) == ask(3)
        assert len({ask(s) for s in range(8)}) > 1


def test_recent_generations_are_recorded(client):
    client.post("/v1/chat/completions", json={"messages": CHAT})
    recent = client.get("/v1/internal/generations").json()["data"]
    assert recent and recent[-1]["model"] == "hello"
