"""``POST /v1/embeddings``: OpenAI's embeddings endpoint on whatever model can embed.

``input`` is one string or a list of them (a batch; the vectors come back in the same order), ``encoding_format``
``float`` (lists of numbers) or ``base64`` (little-endian float32, what the official Python client asks for by
default). ``model`` names the model: one already in memory (the chat model, or an embedding model kept beside
it) embeds without becoming the active model; one not in memory is loaded *beside* the active model when
``--max-loaded-models`` leaves room (2 or more), else it replaces it, as a chat request naming it would. A model
whose loader cannot embed is a 400 saying so.
"""

from __future__ import annotations

import base64
import struct
import time
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict
from starlette.concurrency import run_in_threadpool

from backends.base import ModelLoadError
from webui.api.auth import is_admin
from webui.api.deps import get_app
from webui.api.errors import status_of
from webui.api.lookup import require_model_name, resolve
from webui.api.types import ApiError
from webui.app import App

MAX_INPUTS = 2048  # as OpenAI: the most texts in one request

AppDep = Annotated[App, Depends(get_app)]


class EmbeddingRequest(BaseModel):
    """OpenAI's body; token arrays (lists of ints) are refused with a clear 400 (send text)."""

    model_config = ConfigDict(extra="allow")
    input: str | list[str] | list[int] | list[list[int]]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None


def texts_of(body: EmbeddingRequest) -> list[str]:
    """The request's texts; a 400 for what OpenAI refuses too (empty strings, empty or oversize batches)."""
    given = body.input
    texts = [given] if isinstance(given, str) else given
    if not texts:
        raise ApiError(400, "input must not be empty", param="input")
    if len(texts) > MAX_INPUTS:
        raise ApiError(400, f"input holds {len(texts):,} items; the most is {MAX_INPUTS:,}", param="input")
    if not all(isinstance(t, str) for t in texts):
        raise ApiError(400, "input as token ids is not supported here: send the text", param="input")
    if any(not t for t in texts):
        raise ApiError(400, "input must not contain empty strings", param="input")
    return list(texts)


def encode(vector: list[float], encoding: str) -> list[float] | str:
    """A vector as OpenAI sends it: numbers, or base64 of little-endian float32."""
    if encoding == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
    return vector


embeddings_router = APIRouter()


@embeddings_router.post("/v1/embeddings")
async def embeddings(body: EmbeddingRequest, request: Request, app: AppDep) -> dict:
    texts = texts_of(body)
    name = require_model_name(app, body.model)
    path = resolve(app, name)
    if path is not None and app.engine.resident_info(path) is None:
        headers = {k.lower(): v for k, v in request.headers.items()}
        if not is_admin(headers, app.settings):
            raise ApiError(403, f"model {name!r} is not loaded and loading models needs the admin key",
                           "admin_key_required", "model")  # fmt: skip
        loader, settings = app.choose_loader(path, None)
        try:
            await run_in_threadpool(app.engine.load_beside, path, loader, settings)
        except ModelLoadError as exc:
            raise ApiError(500, str(exc), "model_load_failed") from None
    if path is None and app.engine.info is None:
        raise ApiError(503, "no model is loaded; name one in the model field", "model_not_loaded")
    started = time.perf_counter()
    try:
        vectors, tokens = await run_in_threadpool(app.engine.embed, texts, path)
    except Exception as exc:
        status, code = status_of(exc)
        raise ApiError(status, str(exc) if status < 500 or code else f"{type(exc).__name__}: {exc}", code) from exc
    if body.dimensions is not None and vectors and body.dimensions != len(vectors[0]):
        raise ApiError(400, f"dimensions: this model's embeddings have {len(vectors[0])} dimensions and cannot be "
                       "shortened", param="dimensions")  # fmt: skip
    info = app.engine.resident_info(path) if path is not None else app.engine.info
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": encode(v, body.encoding_format)}
            for i, v in enumerate(vectors)
        ],  # fmt: skip
        "model": info.name if info else (name or ""),
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        "timings": {"total_ms": round((time.perf_counter() - started) * 1000, 2)},
    }
