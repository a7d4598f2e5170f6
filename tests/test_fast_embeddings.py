"""``/v1/embeddings``, the extra ``/v1/models`` fields and ``--require-model`` on scripted fake models (fast tier).

The fake loader's embeddings are bag-of-words vectors (``"embed": true`` in a ``.fake`` file): texts that share
words are closer, so order, batching, base64 and the engine's plumbing are checked without weights; the real
loaders' embeddings are tests/test_embeddings.py.
"""

from __future__ import annotations

import base64
import math
import struct

import pytest
from conftest import write_fake
from fastapi.testclient import TestClient

from webui.server import build_api_server

TEXTS = ["the cat sat on the mat", "a dog ran in the park", "the cat sat on a mat", "stocks fell sharply today"]


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


@pytest.fixture
def embedder(fake_models, make_fake_app):
    """An app with the chat model ``hello`` loaded and room for an embedding model beside it."""
    path = write_fake(fake_models, "vectors", embed=True)
    app = make_fake_app(max_loaded_models=2)
    app.engine.load_beside(path)  # the API lists only GGUF files and folders: .fake files are loaded by path
    with TestClient(build_api_server(app)) as client:
        yield app, client


def test_a_batch_comes_back_in_order_with_usage(embedder):
    app, client = embedder
    r = client.post("/v1/embeddings", json={"model": "vectors", "input": TEXTS})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["model"] == "vectors"
    assert [d["index"] for d in body["data"]] == [0, 1, 2, 3]
    vectors = [d["embedding"] for d in body["data"]]
    singles = [client.post("/v1/embeddings", json={"model": "vectors", "input": t}).json() for t in TEXTS]
    assert vectors == [s["data"][0]["embedding"] for s in singles]  # the batch keeps the order of its inputs
    assert cosine(vectors[0], vectors[2]) > cosine(vectors[0], vectors[1])
    assert body["usage"] == {"prompt_tokens": sum(len(t.encode()) for t in TEXTS),
                             "total_tokens": sum(len(t.encode()) for t in TEXTS)}  # fmt: skip
    # the embedding model was loaded beside the chat model, which stays the active one
    assert app.engine.info.name == "hello"
    assert {m.model.info.name for m in app.engine.resident} == {"hello", "vectors"}
    chat = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
    assert chat.json()["model"] == "hello"


def test_base64_decodes_to_the_same_floats(embedder):
    _, client = embedder
    floats = client.post("/v1/embeddings", json={"model": "vectors", "input": TEXTS[:2]}).json()
    packed = client.post("/v1/embeddings", json={"model": "vectors", "input": TEXTS[:2], "encoding_format": "base64"})
    for f, b in zip(floats["data"], packed.json()["data"], strict=True):
        raw = base64.b64decode(b["embedding"])
        decoded = struct.unpack(f"<{len(raw) // 4}f", raw)
        assert decoded == pytest.approx(f["embedding"], abs=1e-6)


def test_a_model_that_cannot_embed_is_a_clear_400(embedder):
    _, client = embedder
    r = client.post("/v1/embeddings", json={"model": "hello", "input": "hi"})
    assert r.status_code == 400
    assert "hello cannot make embeddings" in r.json()["error"]["message"]
    r = client.post("/v1/embeddings", json={"input": "hi"})  # no model: the active one (hello), which cannot
    assert r.status_code == 400


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"input": []}, "must not be empty"),
        ({"input": ["a", ""]}, "empty strings"),
        ({"input": [1, 2, 3]}, "token ids"),
        ({"input": "a", "encoding_format": "int8"}, "encoding_format"),
        ({"input": "a", "dimensions": 3}, "dimensions"),
        ({"input": "a", "model": "nope"}, "not found"),
    ],
)
def test_bad_requests_say_what_is_wrong(embedder, body, words):
    _, client = embedder
    r = client.post("/v1/embeddings", json={"model": "vectors", **body})
    assert r.status_code in (400, 404), r.text
    assert words in r.json()["error"]["message"]


def test_models_carry_context_loader_quantization_and_size(embedder, fake_models):
    _, client = embedder
    cards = {c["id"]: c for c in client.get("/v1/models").json()["data"]}
    hello = cards["hello"]
    assert hello["loader"] == "fake" and hello["context_length"] == 4096  # the loaded context (Settings.n_ctx)
    assert hello["size_bytes"] == (fake_models / "hello.fake").stat().st_size
    assert "quantization" in hello
    assert client.get("/v1/models/hello").json()["loader"] == "fake"


def test_a_missing_model_is_lenient_by_default_and_400_with_require_model(make_fake_app):
    chat = {"messages": [{"role": "user", "content": "hi"}]}
    with TestClient(build_api_server(make_fake_app())) as client:
        assert client.post("/v1/chat/completions", json=chat).status_code == 200
    with TestClient(build_api_server(make_fake_app(require_model=True))) as client:
        r = client.post("/v1/chat/completions", json=chat)
        assert r.status_code == 400
        assert r.json()["error"]["param"] == "model" and "must provide a model" in r.json()["error"]["message"]
        assert client.post("/v1/chat/completions", json={**chat, "model": "hello"}).status_code == 200
        assert client.post("/v1/embeddings", json={"input": "hi"}).status_code == 400


def test_the_require_model_flag_reaches_the_settings():
    from webui.cli.main import build_parser
    from webui.cli.options import serve_settings

    parser = build_parser()
    assert serve_settings(parser.parse_args(["serve"]))["require_model"] is False
    assert serve_settings(parser.parse_args(["serve", "--require-model"]))["require_model"] is True
