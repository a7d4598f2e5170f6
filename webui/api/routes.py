"""The OpenAI-compatible API: ``/v1/models``, ``/v1/chat/completions``, ``/v1/completions`` and
``/v1/internal/…``, on the same FastAPI app (and port) as the UI.

Anthropic's Messages API (:mod:`webui.api.anthropic`) and the Responses API (:mod:`webui.api.responses`) are
routers in :data:`ROUTERS` too, on the same path (:mod:`webui.api.turns`).

Routes live in :class:`fastapi.APIRouter` s (like llama-cpp-python's server); what they need comes through
dependencies: the :class:`~webui.app.App` (:func:`webui.api.deps.get_app`) and the admin check. Adding a router
is one line in :data:`ROUTERS`. Streaming and the response shapes are :mod:`webui.api.stream`; errors become
statuses in :mod:`webui.api.errors`.

Chat requests go through :class:`webui.chat.service.Chat`, the path the UI uses, so templates, presets, chat
modes, characters and extensions act the same here; the sampling parameters come from
:func:`webui.chat.sampling.resolve_params` (model rule → preset → request). Generations share the engine's fair
queue with the UI.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.routing import Match

from backends.base import CancelToken, ModelInfo, SamplingParams
from webui.api.anthropic import anthropic_router
from webui.api.deps import generations, get_app, require_admin
from webui.api.embeddings import embeddings_router
from webui.api.errors import install_error_handlers
from webui.api.grammar import grammar_for
from webui.api.hub import hub_router
from webui.api.lookup import catalog, load, resolve, use_model
from webui.api.lookup import find_preset as _preset
from webui.api.lookup import model_id as _model_id
from webui.api.responses import responses_router
from webui.api.stream import Generations, Pump, Shape, respond
from webui.api.turns import tool_use
from webui.api.types import (
    ApiError,
    ChatRequest,
    CompletionRequest,
    ResponseFormat,
    chat_messages,
    request_values,
)
from webui.app import App
from webui.chat.reply import Reply, throttle
from webui.chat.sampling import resolve_params, rule_settings
from webui.chat.service import TurnOptions
from webui.chat.tools import ToolError, ToolUse, parse_tool_choice, parse_tools
from webui.models.catalog import Catalog
from webui.models.facts import path_size
from webui.paths import UnsafeName

COMPLETION_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions

AppDep = Annotated[App, Depends(get_app)]
GenerationsDep = Annotated[Generations, Depends(generations)]


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


# -- models: what the folder holds, and the model a request names ----------------------------------------


def model_card(app: App, model_id: str, path: Path, files: Catalog | None = None) -> dict:
    """OpenAI's model object, plus (as extra fields) what the model is: ``context_length`` (the loaded context,
    or the file's trained one when not loaded), ``loader`` (the one it runs, or would load, with),
    ``quantization`` and ``size_bytes`` (on disk). Facts of files not loaded come from their headers (cached per
    file by ``files``); a field it cannot tell is null."""
    loaded = {m.path: m for m in app.engine.resident}
    active = app.engine.loaded
    card = {
        "id": model_id,
        "object": "model",
        "created": int(path.stat().st_mtime) if path.exists() else 0,
        "owned_by": f"remote:{model_id.split('/')[0]}" if str(path).startswith("remote:") else "local",
        "loaded": path in loaded,
        "active": active is not None and active.path == path,
    }
    if path in loaded:
        info = loaded[path].model.info
        card.update(context_length=info.context_length or None, loader=info.loader,
                    quantization=info.quantization or None, size_bytes=info.file_size or path_size(path))  # fmt: skip
        return card
    facts = files.variant_at(path).facts if files is not None and path.exists() else None
    try:
        loader = app.choose_loader(path)[0]
    except Exception:  # no loader recognises it: the card says so with null
        loader = None
    card.update(context_length=(facts.context_length or None) if facts else None, loader=loader,
                quantization=(facts.quantization or None) if facts else None,
                size_bytes=path_size(path) if path.exists() else None)  # fmt: skip
    return card


def _files(request: Request) -> Catalog:
    """The server's cache of model files' facts (read once per file version)."""
    return request.app.state.inglenook_files


models_router = APIRouter()


@models_router.get("/v1/models")
async def models(app: AppDep, request: Request) -> dict:
    files = _files(request)
    cards = await run_in_threadpool(lambda: [model_card(app, i, p, files) for i, p in sorted(catalog(app).items())])
    return {"object": "list", "data": cards}


@models_router.get("/v1/models/{model_id:path}")
async def model(model_id: str, app: AppDep, request: Request) -> dict:
    path = resolve(app, model_id)
    if path is None:  # a blank id
        raise ApiError(404, "give a model id: /v1/models/{id}", "model_not_found", "model")
    model_id = _model_id(model_id) if _model_id(model_id) in catalog(app) else model_id
    return await run_in_threadpool(model_card, app, model_id, path, _files(request))


# -- generation ---------------------------------------------------------------------------------------------

generation_router = APIRouter()


def request_params(app: App, body: ChatRequest | CompletionRequest, info: ModelInfo) -> tuple[SamplingParams, list]:
    """The request's SamplingParams by the one policy (webui.chat.sampling): neutral with OpenAI's defaults, or
    the named ``preset`` → the model's models.yaml rule → the preset → the request's fields; and the request's
    extra fields that were ignored."""
    values, ignored = request_values(body)
    preset = _preset(app, body.preset)
    default_max = max(1, info.context_length) if isinstance(body, ChatRequest) else COMPLETION_DEFAULT_MAX_TOKENS
    try:
        resolved = resolve_params(
            start=SamplingParams(max_new_tokens=default_max), rule=rule_settings(info), preset=preset, explicit=values
        )
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None
    return resolved.params, ignored


async def start(app: App, record: Generations, body: ChatRequest | CompletionRequest, request: Request) -> object:
    chat = isinstance(body, ChatRequest)
    options = chat_options(app, body)
    info = await use_model(app, body.model, request)
    params, ignored = request_params(app, body, info)
    if body.response_format is not None and body.response_format.type != "text":
        params.grammar = _grammar(app, body.response_format)
    tool_use = _tool_use(app, body, info, params) if chat else None
    params.logprobs = _logprobs_wanted(body)
    if params.logprobs >= 0 and "logprobs" not in app.registry.get(info.loader).supported_params:
        raise ApiError(400, f"logprobs are not available from the {info.loader} loader", param="logprobs")
    cancel = CancelToken()
    gen_id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
    tools = {"tools": tool_use.tools, "tool_choice": tool_use.choice} if tool_use else {}
    turn = TurnOptions(model=info, cancel=cancel, **options, **tools)
    if chat:
        replies = app.chat.stream(chat_messages(body), params, turn)
        echo = ""
    else:
        prompt = _one_prompt(body.prompt)
        replies = app.chat.complete(prompt, params, turn)
        echo = prompt if body.echo else ""
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    shape = Shape(chat, gen_id, info.name, int(time.time()), include_usage, ignored, echo, params.logprobs >= 0,
                  tool_use)  # fmt: skip
    pump = Pump(throttle(replies, app.settings.stream_interval_s), cancel)  # a few tokens per SSE event

    def done(final: Reply, p: Pump) -> None:
        record.record(final, p, gen_id, info.name)

    return await respond(request, pump, shape, body.stream, done)


@generation_router.post("/v1/chat/completions")
async def chat_completions(body: ChatRequest, request: Request, app: AppDep, record: GenerationsDep):
    return await start(app, record, body, request)


@generation_router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request, app: AppDep, record: GenerationsDep):
    return await start(app, record, body, request)


# -- internal -----------------------------------------------------------------------------------------------

internal_router = APIRouter(prefix="/v1/internal")
admin_only = [Depends(require_admin)]


@internal_router.get("/health")
async def health(app: AppDep) -> dict:
    info = app.engine.info
    return {"status": "ok", "model": info.name if info else None, "waiting": app.engine._queue.waiting}


@internal_router.get("/model/info")
async def model_info(app: AppDep) -> dict:
    info = app.engine.info
    return {
        "model_name": info.name if info else None,
        "loader": info.loader if info else None,
        "info": jsonable_encoder(asdict(info)) if info else None,
        "resident": [m.model.info.name for m in app.engine.resident],
        "max_loaded_models": app.engine.max_loaded,
        "loaders": app.registry.names() if hasattr(app.registry, "names") else None,
        "last_crash": app.engine.last_crash.as_dict() if app.engine.last_crash else None,  # webui/worker.py
        "broken": app.engine.broken,  # models that crashed twice while loading, with why
    }


@internal_router.post("/model/load", dependencies=admin_only)
async def model_load(body: _Load, app: AppDep) -> dict:
    path = resolve(app, body.model_name)
    if path is None:  # a blank name
        raise ApiError(400, "model_name is empty", "invalid_model_name", "model_name")
    info = await load(app, path, body.loader, body.settings)
    return {"status": "ok", "model_name": info.name, "loader": info.loader, "context_length": info.context_length}


@internal_router.post("/model/unload", dependencies=admin_only)
async def model_unload(app: AppDep, body: _Unload | None = None) -> dict:
    path = resolve(app, body.model_name) if body and body.model_name else None
    await run_in_threadpool(app.engine.unload, path)
    return {"status": "ok", "resident": [m.model.info.name for m in app.engine.resident]}


@internal_router.post("/token-count")
async def token_count(body: _Text, app: AppDep) -> dict:
    tokens = await tokenize(app, body)
    return {"length": len(tokens)}


@internal_router.post("/encode")
async def encode(body: _Text, app: AppDep) -> dict:
    tokens = await tokenize(app, body)
    return {"tokens": tokens, "length": len(tokens)}


@internal_router.post("/decode")
async def decode(body: _Tokens, app: AppDep) -> dict:
    model = resident_model(app, body.model)
    try:
        return {"text": await run_in_threadpool(model.detokenize, body.tokens)}
    except Exception as exc:
        raise ApiError(400, f"cannot decode these tokens: {exc}", param="tokens") from None


@internal_router.post("/stop-generation")
async def stop_generation(app: AppDep) -> dict:
    return {"stopped": app.engine.cancel()}


@internal_router.get("/generations")
async def recent_generations(record: GenerationsDep) -> dict:
    return {"data": record.listing()}


def resident_model(app: App, name: str | None):
    path = resolve(app, name)
    found = next((m for m in app.engine.resident if path is None or m.path == path), None)
    if found is None:
        raise ApiError(503, "that model is not loaded" if path else "no model is loaded", "model_not_loaded")
    return found.model


async def tokenize(app: App, body: _Text) -> list[int]:
    model = resident_model(app, body.model)
    return await run_in_threadpool(model.tokenize, body.text, body.add_special)


# -- what is not a route ---------------------------------------------------------------------------------------

fallback_router = APIRouter()
ANY_METHOD = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


@fallback_router.api_route("/v1/{rest:path}", methods=ANY_METHOD, include_in_schema=False)
async def no_such_route(request: Request, rest: str) -> None:
    """Anything under /v1 that no route serves: OpenAI's error shape (404, or 405 naming the methods that work),
    not FastAPI's ``{"detail": …}`` nor the UI's page."""
    routers = request.app.state.inglenook_routers
    routes = (r for router in routers for r in router.routes if isinstance(r, APIRoute))
    allowed = sorted({m for r in routes if r.matches(request.scope)[0] == Match.PARTIAL for m in r.methods})
    if allowed:
        raise ApiError(405, f"{request.url.path} takes {', '.join(allowed)}, not {request.method}",
                       "method_not_allowed", headers={"Allow": ", ".join(allowed)})  # fmt: skip
    raise ApiError(404, f"there is no {request.url.path} in this API", "not_found")


# -- the API on a server ------------------------------------------------------------------------------------

# Every router the API serves; another one (hub downloads, embeddings …) is one more line here.
ROUTERS: tuple[APIRouter, ...] = (
    models_router,
    generation_router,
    internal_router,
    anthropic_router,
    responses_router,
    embeddings_router,
)


def install_api(server: FastAPI, app: App) -> None:
    """Add the /v1 routes and OpenAI-shaped error handling to ``server`` (which then serves ``app``).

    A /v1 route added to ``server`` after this call would be shadowed by the fallback: add its router to
    :data:`ROUTERS` (or to ``routers`` below, for one built per app) instead."""
    routers = [*ROUTERS, hub_router(app)]  # routers built for this app follow ROUTERS
    server.state.inglenook_app = app
    server.state.inglenook_files = Catalog(app.settings.models_dir)
    server.state.inglenook_generations = Generations()
    server.state.inglenook_routers = routers  # for the fallback's 405s
    install_error_handlers(server)
    for router in routers:
        server.include_router(router)
    server.include_router(fallback_router)  # last: only what no router above serves


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
    """``mode`` and ``character`` as :class:`TurnOptions` fields (the UI's chat modes). A feature this build does
    not have is a clear 400, never silently ignored."""
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


def _tool_use(app: App, body: ChatRequest, info: ModelInfo, params: SamplingParams) -> ToolUse | None:
    """The request's tools and tool_choice, checked (a bad schema or choice is a 400), with the reply's format for
    the model; a forced call (``required`` or a named function) sets a grammar where the loader takes one."""
    try:
        tools = parse_tools(body.tools)
        choice = parse_tool_choice(body.tool_choice, tools, body.parallel_tool_calls)
    except ToolError as exc:
        raise ApiError(400, str(exc), param="tool_choice" if str(exc).startswith("tool_choice") else "tools") from None
    return tool_use(app, info, tools, choice, params)


def _grammar(app: App, response_format: ResponseFormat) -> str:
    loaded = app.engine.loaded
    if loaded is not None and "grammar" not in loaded.loader.supported_params:
        raise ApiError(400, f"response_format needs grammar support, which {loaded.loader.name} lacks",
                       param="response_format")  # fmt: skip
    try:
        return grammar_for(response_format.type, response_format.json_schema)
    except ValueError as exc:
        raise ApiError(400, str(exc), param="response_format") from None
