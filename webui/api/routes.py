"""The OpenAI-compatible API: ``/v1/models``, ``/v1/chat/completions``, ``/v1/completions`` and
``/v1/internal/…``, on the same FastAPI app (and port) as the UI.

Chat requests go through :func:`webui.chat.reply.stream_chat`, the path the UI uses, so templates (and the
presets, characters and extensions built on that path) act the same here. Generations share the engine's
fair queue with the UI. A client that goes away has its generation cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from backends.base import CancelToken, LoadSettings, ModelInfo, ModelLoadError, Usage
from webui.api.auth import BodyTooLarge, error_body, is_admin
from webui.api.grammar import grammar_for
from webui.api.types import (
    ApiError,
    ChatRequest,
    CompletionRequest,
    ResponseFormat,
    chat_messages,
    sampling_params,
)
from webui.app import App
from webui.chat.reply import Reply, stream_chat, stream_completion, throttle
from webui.models.folder import list_models
from webui.paths import UnsafeName, safe_name

COMPLETION_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
RECENT = 32  # finished generations kept for /v1/internal/generations
DISCONNECT_POLL_S = 0.02
# load settings the API may never set (trust_remote_code, allow_pickle, file locations, ...)
NOT_SETTABLE = ("remote_code", "pickle", "safetensors", "unsafe", "path", "dir", "file")


class _Text(BaseModel):
    text: str
    add_special: bool = True
    model: str | None = None


class _Tokens(BaseModel):
    tokens: list[int]
    model: str | None = None


class _Load(BaseModel):
    model_name: str
    loader: str | None = None
    settings: dict = Field(default_factory=dict)


class _Unload(BaseModel):
    model_name: str | None = None


@dataclass
class Finished:
    """What happened to one API generation (for /v1/internal/generations and the disconnect tests)."""

    id: str
    model: str
    finish_reason: str | None
    completion_tokens: int
    disconnected: bool
    cancel_to_end_ms: float | None  # from the disconnect to the generation giving up the engine


# -- the stream between the engine's thread and the event loop ---------------------------------------


class Pump:
    """Runs a Reply iterator on a thread of its own and hands text deltas to the event loop.

    The iterator is owned by its thread from start to end (started, drained, closed there), so a client
    that disconnects only has to set the cancel token: the engine stops within a token and the turn
    passes to the next request.
    """

    def __init__(self, replies: Iterator[Reply], cancel: CancelToken) -> None:
        self.cancel = cancel
        self.cancelled_at: float | None = None
        self.ended = threading.Event()
        self.ended_at: float | None = None
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue = asyncio.Queue()
        self._replies = replies
        threading.Thread(target=self._run, name="inglenook-api-stream", daemon=True).start()

    def _put(self, item) -> None:
        self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    def _run(self) -> None:
        sent = sent_logprobs = 0
        final = Reply(done=True, error="the generation ended without a result")
        try:
            for reply in self._replies:
                delta = reply.text[sent:]
                sent = len(reply.text)
                if delta:
                    self._put((delta, reply.logprobs[sent_logprobs:]))
                    sent_logprobs = len(reply.logprobs)
                if reply.done:
                    final = Reply(reply.text, True, reply.finish_reason, reply.usage, reply.error, reply.ignored_params,
                                  list(reply.logprobs))  # fmt: skip
        except Exception as exc:  # a bug, not a user error: reported to the client, the server keeps serving
            final = Reply(done=True, error=f"internal error: {type(exc).__name__}: {exc}")
        finally:
            with contextlib.suppress(Exception):
                self._replies.close()
            self.ended_at = time.perf_counter()
            self.ended.set()
            with contextlib.suppress(RuntimeError):  # the loop is closed at shutdown
                self._put(final)

    async def next(self) -> tuple[str, list[dict]] | Reply:
        """The next (text delta, its tokens' log-probabilities), or the final Reply."""
        return await self._queue.get()

    def stop(self) -> None:
        """Cancel the generation unless it has already ended."""
        if not self.cancel.cancelled and not self.ended.is_set():
            self.cancelled_at = time.perf_counter()
            self.cancel.cancel()


async def _watch_disconnect(request: Request, pump: Pump) -> None:
    """Cancel the generation as soon as the client goes away (before streaming begins, or not streaming)."""
    while not pump.ended.is_set():
        if await request.is_disconnected():
            pump.stop()
            return
        await asyncio.sleep(DISCONNECT_POLL_S)


# -- responses ---------------------------------------------------------------------------------------


def usage_body(usage: Usage | None) -> dict:
    usage = usage or Usage()
    total = usage.prompt_tokens + usage.completion_tokens
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens, "total_tokens": total}


def timings_body(usage: Usage | None, finish_reason: str | None) -> dict:
    """Like llama-server's ``timings``, from the engine's own measurements."""
    usage = usage or Usage()
    return {
        "prompt_n": usage.prompt_tokens,
        "predicted_n": usage.completion_tokens,
        "ttft_ms": round(usage.ttft_s * 1000, 2),
        "predicted_ms": round((usage.total_s - usage.ttft_s) * 1000, 2),
        "predicted_per_second": round(usage.tokens_per_s, 2),
        "queued_ms": round(usage.queued_s * 1000, 2),
        "cancelled": finish_reason == "cancelled",
    }


def _finish(reason: str | None) -> str:
    return "length" if reason == "length" else "stop"


def _status_of(error: str) -> tuple[int, str | None]:
    if "no model is loaded" in error or "is not loaded" in error or "was unloaded" in error:
        return 503, "model_not_loaded"
    if "context holds" in error:
        return 400, "context_length_exceeded"
    if error.startswith("internal error"):
        return 500, None
    if "model process crashed" in error:  # webui.worker: the worker died; the server is fine
        return 500, "model_crashed"
    return 400, None


def error_response(status: int, message: str, code: str | None = None, param: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, code, param), status_code=status)


@dataclass
class Shape:
    """How one endpoint's objects look (chat vs text completion)."""

    chat: bool
    id: str
    model: str
    created: int
    include_usage: bool
    ignored: list[str]
    echo: str = ""
    logprobs: bool = False

    def choice(self, text: str | None, finish: str | None, delta: bool, logprobs: list[dict] | None = None) -> dict:
        lp = self._logprobs(logprobs or []) if self.logprobs and text is not None else None
        if not self.chat:
            return {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": lp}
        if delta:
            return {"index": 0, "delta": {} if text is None else {"content": text}, "finish_reason": finish,
                    "logprobs": lp}  # fmt: skip
        message = {"role": "assistant", "content": text or ""}
        return {"index": 0, "message": message, "finish_reason": finish, "logprobs": lp}

    def _logprobs(self, entries: list[dict]) -> dict:
        """OpenAI's shapes: chat's ``content`` list, or the legacy completions' parallel lists."""
        if self.chat:
            content = [{"token": e["token"], "logprob": e["logprob"], "bytes": e["bytes"],
                        "top_logprobs": [{"token": t["token"], "logprob": t["logprob"], "bytes": t["bytes"]}
                                         for t in e["top"]]} for e in entries]  # fmt: skip
            return {"content": content, "refusal": None}
        offsets, at = [], len(self.echo)
        for e in entries:
            offsets.append(at)
            at += len(e["token"])
        return {
            "tokens": [e["token"] for e in entries],
            "token_logprobs": [e["logprob"] for e in entries],
            "top_logprobs": [{t["token"]: t["logprob"] for t in e["top"]} for e in entries],
            "text_offset": offsets,
        }

    def envelope(self, choices: list[dict], streaming: bool) -> dict:
        kind = ("chat.completion.chunk" if streaming else "chat.completion") if self.chat else "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model, "choices": choices}

    def whole(self, final: Reply) -> dict:
        choice = self.choice(self.echo + final.text, _finish(final.finish_reason), False, final.logprobs)
        body = self.envelope([choice], False)
        body["usage"] = usage_body(final.usage)
        body["timings"] = timings_body(final.usage, final.finish_reason)
        return self._notes(body, final)

    def _notes(self, body: dict, final: Reply) -> dict:
        if self.ignored or final.ignored_params:
            body["ignored"] = {"fields": self.ignored, "params_the_loader_ignores": final.ignored_params}
        return body


def _sse(obj: dict | str) -> bytes:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)}\n\n".encode()


async def _respond(request: Request, pump: Pump, shape: Shape, stream: bool, record: Callable) -> object:
    """Wait for the first piece; errors before any text get a status code, then stream or collect."""
    watcher = asyncio.create_task(_watch_disconnect(request, pump))
    try:
        first = await pump.next()
    except BaseException:
        pump.stop()
        raise
    finally:
        watcher.cancel()
    if isinstance(first, Reply) and first.error:
        record(first, pump)
        status, code = _status_of(first.error)
        return error_response(status, first.error, code)
    if not stream:
        watcher = asyncio.create_task(_watch_disconnect(request, pump))
        try:
            text, final = "", first
            while isinstance(final, tuple):
                text += final[0]
                final = await pump.next()
        finally:
            watcher.cancel()
            pump.stop()  # no-op when finished
        record(final, pump)
        if final.error:
            status, code = _status_of(final.error)
            return error_response(max(status, 500) if text else status, final.error, code)
        return JSONResponse(shape.whole(final))
    return StreamingResponse(
        _stream(pump, shape, first, record),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _stream(pump: Pump, shape: Shape, first: tuple | Reply, record: Callable) -> AsyncIterator[bytes]:
    final: Reply | None = None
    try:
        if shape.chat:
            yield _sse(shape.envelope([{"index": 0, "delta": {"role": "assistant", "content": ""},
                                        "finish_reason": None, "logprobs": None}], True))  # fmt: skip
        elif shape.echo:
            yield _sse(shape.envelope([shape.choice(shape.echo, None, True)], True))
        item = first
        while isinstance(item, tuple):
            yield _sse(shape.envelope([shape.choice(item[0], None, True, item[1])], True))
            item = await pump.next()
        final = item
        if final.error:
            status, code = _status_of(final.error)
            yield _sse(error_body(max(status, 500), final.error, code))
        else:
            end = shape.envelope([shape.choice(None, _finish(final.finish_reason), True)], True)
            end["timings"] = timings_body(final.usage, final.finish_reason)
            yield _sse(shape._notes(end, final))
            if shape.include_usage:
                tail = shape.envelope([], True)
                tail["usage"] = usage_body(final.usage)
                yield _sse(tail)
        yield _sse("[DONE]")
    finally:
        pump.stop()  # the client went away (or we are done): let the engine go
        if final is not None:
            record(final, pump)
        else:
            asyncio.get_running_loop().run_in_executor(None, _record_when_ended, pump, record)


def _record_when_ended(pump: Pump, record: Callable) -> None:
    pump.ended.wait(timeout=600)
    record(Reply(done=True, finish_reason="cancelled"), pump)


# -- the routes -----------------------------------------------------------------------------------------


def install_api(server: FastAPI, app: App) -> None:
    """Add the /v1 routes and OpenAI-shaped error handling to ``server``."""
    recent: deque[Finished] = deque(maxlen=RECENT)
    lock = threading.Lock()

    @server.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.code, exc.param)

    @server.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return error_response(400, "the request body is not valid JSON", "invalid_json")
        first = errors[0] if errors else {}
        if tuple(first.get("loc", ())) == ("body",):
            return error_response(400, "the request body must be a JSON object", "invalid_request")
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = f"{where}: {first.get('msg', 'invalid value')}" if where else first.get("msg", "invalid request")
        return error_response(400, message, "invalid_request", where or None)

    @server.exception_handler(BodyTooLarge)
    async def _too_large(_request: Request, exc: BodyTooLarge) -> JSONResponse:
        return error_response(413, str(exc), "request_too_large")

    def record(final: Reply, pump: Pump, gen_id: str = "", model: str = "") -> None:
        latency = None
        if pump.cancelled_at is not None and pump.ended_at is not None:
            latency = round(max(0.0, pump.ended_at - pump.cancelled_at) * 1000, 2)
        usage = final.usage or Usage()
        with lock:
            recent.append(Finished(gen_id, model, final.finish_reason, usage.completion_tokens,
                                   pump.cancelled_at is not None, latency))  # fmt: skip

    # -- models --
    def catalog() -> dict[str, Path]:
        """Model id → path: every model in the models folder (loaded or not), and any loaded from elsewhere."""
        ids = {_model_id(e.name): e.path for e in list_models(app.settings.models_dir)}
        for loaded in app.engine.resident:
            ids.setdefault(loaded.model.info.name, loaded.path)
        return ids

    def resolve(name: str | None) -> Path | None:
        if name is None or not name.strip():
            return None
        try:
            safe_name(name, "model")
        except UnsafeName as exc:
            raise ApiError(400, str(exc), "invalid_model_name", "model") from None
        ids = catalog()
        path = ids.get(name) or ids.get(_model_id(name))
        if path is None:
            names = ", ".join(sorted(ids)) or "none"
            raise ApiError(404, f"model {name!r} not found; available: {names}", "model_not_found", "model")
        return path

    async def use_model(name: str | None, request: Request) -> ModelInfo:
        """The model a request names, loaded if needed (waiting its turn; admins only when a key is set)."""
        path = resolve(name)
        if path is None:
            if app.engine.info is None:
                raise ApiError(503, "no model is loaded; name one in the model field", "model_not_loaded")
            return app.engine.info
        info = app.engine.resident_info(path)
        if info is not None:
            return info
        if not is_admin(_headers(request), app.settings):
            raise ApiError(403, f"model {name!r} is not loaded and loading models needs the admin key",
                           "admin_key_required", "model")  # fmt: skip
        return await _load(path, None, {})

    async def _load(path: Path, loader_name: str | None, overrides: dict) -> ModelInfo:
        try:
            loader, settings = _load_settings(app, path, loader_name, overrides)
            return await run_in_threadpool(
                app.engine.load, path, loader, settings, preempt=False, reuse=not overrides and not loader_name
            )
        except ModelLoadError as exc:
            raise ApiError(500, str(exc), "model_load_failed") from None

    def model_card(model_id: str, path: Path) -> dict:
        loaded = {m.path: m for m in app.engine.resident}
        active = app.engine.loaded
        return {
            "id": model_id,
            "object": "model",
            "created": int(path.stat().st_mtime) if path.exists() else 0,
            "owned_by": "local",
            "loaded": path in loaded,
            "active": active is not None and active.path == path,
        }

    @server.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [model_card(i, p) for i, p in sorted(catalog().items())]}

    @server.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> dict:
        path = resolve(model_id)
        return model_card(_model_id(model_id) if _model_id(model_id) in catalog() else model_id, path)

    # -- generation --
    async def start(body, request: Request, chat: bool) -> object:
        options = chat_options(app, body)
        info = await use_model(body.model, request)
        default_max = max(1, info.context_length) if chat else COMPLETION_DEFAULT_MAX_TOKENS
        params, ignored = sampling_params(body, default_max)
        if body.response_format is not None and body.response_format.type != "text":
            params.grammar = _grammar(app, body.response_format)
        params.logprobs = _logprobs_wanted(body)
        if params.logprobs >= 0 and "logprobs" not in app.registry.get(info.loader).supported_params:
            raise ApiError(400, f"logprobs are not available from the {info.loader} loader", param="logprobs")
        cancel = CancelToken()
        gen_id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        if chat:
            replies = stream_chat(app.engine, chat_messages(body), params, cancel, model=info, **options)
            echo = ""
        else:
            prompt = _one_prompt(body.prompt)
            replies = stream_completion(app.engine, prompt, params, cancel, model=info)
            echo = prompt if body.echo else ""
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        shape = Shape(chat, gen_id, info.name, int(time.time()), include_usage, ignored, echo, params.logprobs >= 0)
        pump = Pump(throttle(replies, app.settings.stream_interval_s), cancel)  # a few tokens per SSE event

        def done(final: Reply, p: Pump) -> None:
            record(final, p, gen_id, info.name)

        return await _respond(request, pump, shape, body.stream, done)

    @server.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request):
        return await start(body, request, chat=True)

    @server.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        return await start(body, request, chat=False)

    # -- internal --
    @server.get("/v1/internal/health")
    async def health() -> dict:
        info = app.engine.info
        return {"status": "ok", "model": info.name if info else None, "waiting": app.engine._queue.waiting}

    @server.get("/v1/internal/model/info")
    async def model_info() -> dict:
        info = app.engine.info
        return {
            "model_name": info.name if info else None,
            "loader": info.loader if info else None,
            "info": jsonable_encoder(asdict(info)) if info else None,
            "resident": [m.model.info.name for m in app.engine.resident],
            "max_loaded_models": app.engine.max_loaded,
            "loaders": app.registry.names() if hasattr(app.registry, "names") else None,
            "last_crash": app.engine.last_crash.as_dict() if app.engine.last_crash else None,
            "broken": app.engine.broken,
        }

    @server.post("/v1/internal/model/load")
    async def model_load(body: _Load, request: Request) -> dict:
        require_admin(request)
        path = resolve(body.model_name)
        info = await _load(path, body.loader, body.settings)
        return {"status": "ok", "model_name": info.name, "loader": info.loader, "context_length": info.context_length}

    @server.post("/v1/internal/model/unload")
    async def model_unload(request: Request, body: _Unload | None = None) -> dict:
        require_admin(request)
        path = resolve(body.model_name) if body and body.model_name else None
        await run_in_threadpool(app.engine.unload, path)
        return {"status": "ok", "resident": [m.model.info.name for m in app.engine.resident]}

    @server.post("/v1/internal/token-count")
    async def token_count(body: _Text, request: Request) -> dict:
        tokens = await tokenize(body, request)
        return {"length": len(tokens)}

    @server.post("/v1/internal/encode")
    async def encode(body: _Text, request: Request) -> dict:
        tokens = await tokenize(body, request)
        return {"tokens": tokens, "length": len(tokens)}

    @server.post("/v1/internal/decode")
    async def decode(body: _Tokens, request: Request) -> dict:
        model = await resident_model(body.model)
        try:
            return {"text": await run_in_threadpool(model.detokenize, body.tokens)}
        except Exception as exc:
            raise ApiError(400, f"cannot decode these tokens: {exc}", param="tokens") from None

    @server.post("/v1/internal/stop-generation")
    async def stop_generation() -> dict:
        return {"stopped": app.engine.cancel()}

    @server.get("/v1/internal/generations")
    async def generations() -> dict:
        with lock:
            return {"data": [asdict(f) for f in recent]}

    async def resident_model(name: str | None):
        path = resolve(name)
        found = next((m for m in app.engine.resident if path is None or m.path == path), None)
        if found is None:
            raise ApiError(503, "that model is not loaded" if path else "no model is loaded", "model_not_loaded")
        return found.model

    async def tokenize(body: _Text, request: Request) -> list[int]:
        model = await resident_model(body.model)
        return await run_in_threadpool(model.tokenize, body.text, body.add_special)

    def require_admin(request: Request) -> None:
        if not is_admin(_headers(request), app.settings):
            raise ApiError(403, "loading and unloading models needs the admin key", "admin_key_required")


def _headers(request: Request) -> dict[str, str]:
    return {k.lower(): v for k, v in request.headers.items()}


def _model_id(name: str) -> str:
    return name[: -len(".gguf")] if name.lower().endswith(".gguf") else name


def _one_prompt(prompt: str | list[str]) -> str:
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise ApiError(400, "prompt must be one string (batches of prompts are not supported)", param="prompt")
        return prompt[0]
    return prompt


def _logprobs_wanted(body) -> int:
    """SamplingParams.logprobs for the request: -1 none, else how many alternatives per token."""
    if isinstance(body, ChatRequest):
        if body.top_logprobs is not None and not body.logprobs:
            raise ApiError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        return (body.top_logprobs or 0) if body.logprobs else -1
    return body.logprobs if body.logprobs is not None else -1


def chat_options(app: App, body) -> dict:
    """``mode`` and ``character`` as keyword arguments for :func:`stream_chat` (the UI's chat modes);
    ``preset`` likewise. A feature this build does not have yet is a clear 400, never silently ignored."""
    if body.preset is not None:
        raise ApiError(400, "preset is not available yet in this version of Inglenook", param="preset")
    if body.mode is None and body.character is None:
        return {}
    if not isinstance(body, ChatRequest):
        raise ApiError(400, "mode and character apply to chat completions only", param="mode")
    store = getattr(app, "characters", None)  # the App has a character store once chat modes exist
    if store is None:
        name = "mode" if body.mode is not None else "character"
        raise ApiError(400, f"{name} is not available yet in this version of Inglenook", param=name)
    from webui.chat.modes import CHAT, INSTRUCT, check_mode

    mode = body.mode or (CHAT if body.character else INSTRUCT)
    try:
        check_mode(mode)
    except ValueError as exc:
        raise ApiError(400, str(exc), param="mode") from None
    character = None
    if body.character:
        try:
            character = store.load(body.character)
        except UnsafeName as exc:
            raise ApiError(400, str(exc), param="character") from None
        except ValueError as exc:  # CharacterError: missing or damaged
            status = 404 if str(exc).startswith("no character") else 400
            raise ApiError(status, str(exc), "character_not_found" if status == 404 else None, "character") from None
    if mode != INSTRUCT and character is None:
        raise ApiError(400, f"mode {mode!r} needs a character", param="character")
    return {"mode": mode, "character": character}


def _grammar(app: App, response_format: ResponseFormat) -> str:
    loaded = app.engine.loaded
    if loaded is not None and "grammar" not in loaded.loader.supported_params:
        raise ApiError(400, f"response_format needs grammar support, which {loaded.loader.name} lacks",
                       param="response_format")  # fmt: skip
    try:
        return grammar_for(response_format.type, response_format.json_schema)
    except ValueError as exc:
        raise ApiError(400, str(exc), param="response_format") from None


def _load_settings(app: App, path: Path, loader_name: str | None, overrides: dict) -> tuple[str, LoadSettings]:
    """The loader and its settings as the UI would load ``path`` (saved for the model, layered over the command
    line's: App.choose_loader), with ``overrides`` from the request (never unsafe ones)."""
    loader_name, settings = app.choose_loader(path, loader_name)
    known = {f.name: f for f in fields(settings)}
    for key, value in overrides.items():
        if any(word in key.lower() for word in NOT_SETTABLE):
            raise ApiError(403, f"setting {key!r} cannot be set through the API", "setting_not_allowed", key)
        if key not in known:
            raise ApiError(400, f"{loader_name} has no setting {key!r} (it has: {', '.join(known)})", param=key)
        default = getattr(settings, key)
        if type(value) is not type(default) and not (isinstance(default, float) and type(value) is int):
            raise ApiError(400, f"setting {key!r} must be a {type(default).__name__}", param=key)
        setattr(settings, key, value)
    return loader_name, settings
