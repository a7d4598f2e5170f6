"""Anthropic's Messages API: ``POST /v1/messages`` (whole or streamed) and ``POST /v1/messages/count_tokens``,
for clients written for Claude (the official ``anthropic`` SDKs, coding agents).

The generation takes the OpenAI routes' path (:mod:`webui.api.turns`): the same Chat service, sampling policy
(``preset`` by name too), fair queue and cancel on disconnect. Keys: ``x-api-key`` or ``Authorization: Bearer``,
the same key as the rest of ``/v1`` (:mod:`webui.api.auth`). Errors under ``/v1/messages`` are in Anthropic's
shape (``{"type": "error", "error": {"type": "invalid_request_error", …}}``, see :mod:`webui.api.errors`).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from webui.api.auth import anthropic_error_body
from webui.api.deps import generations, get_app
from webui.api.errors import status_of
from webui.api.lookup import use_model
from webui.api.stream import Generations
from webui.api.turns import Ended, Turn, begin, new_id, sampling_extras
from webui.api.types import ApiError
from webui.app import App
from webui.chat.prompting import render_prompt

STOP_REASONS = {"end": "end_turn", "length": "max_tokens", "stop_sequence": "stop_sequence"}
TOOL_BLOCKS = ("tool_use", "tool_result", "server_tool_use", "web_search_tool_result")
SKIPPED_BLOCKS = ("thinking", "redacted_thinking")  # a thinking model's earlier turns: not shown to this model

AppDep = Annotated[App, Depends(get_app)]
GenerationsDep = Annotated[Generations, Depends(generations)]


class AnthropicMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["user", "assistant"]
    content: str | list[dict[str, Any]]


class _Prompt(BaseModel):
    """What a prompt is made of (a message request and a token count alike)."""

    model_config = ConfigDict(extra="allow")
    model: str | None = None  # Anthropic requires it; like the OpenAI routes, none means the loaded model
    messages: list[AnthropicMessage] = Field(min_length=1)
    system: str | list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None


class MessagesRequest(_Prompt):
    max_tokens: int = Field(ge=1)  # required, as Anthropic's
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    stop_sequences: list[str] | None = None
    stream: bool = False
    metadata: dict[str, Any] | None = None
    preset: str | None = None  # ours, as on the OpenAI routes


class CountTokensRequest(_Prompt):
    pass


def tools_turn(body: _Prompt) -> None:
    """Where tool use (``tools``, ``tool_use`` / ``tool_result`` blocks) will meet the tools core; for now a clear
    400 instead of a reply that ignores the tools."""
    raise ApiError(400, "tools are not supported on this endpoint yet", "tools_not_supported", "tools")


def _wants_tools(body: _Prompt) -> bool:
    blocks = (b for m in body.messages if isinstance(m.content, list) for b in m.content)
    return bool(body.tools) or any(b.get("type") in TOOL_BLOCKS for b in blocks)


def _text(content: str | list[dict[str, Any]], where: str) -> str:
    """The text of a ``content`` (a string, or content blocks: text only)."""
    if isinstance(content, str):
        return content
    parts = []
    for i, block in enumerate(content):
        kind = block.get("type")
        if kind == "text":
            if not isinstance(block.get("text"), str):
                raise ApiError(400, f"{where}.{i}.text: a text block needs a string 'text'", param=f"{where}.{i}")
            parts.append(block["text"])
        elif kind in ("image", "document"):
            raise ApiError(400, f"{where}.{i}: {kind} blocks are not supported (text only)", param=f"{where}.{i}")
        elif kind not in SKIPPED_BLOCKS:
            raise ApiError(400, f"{where}.{i}: unknown content block type {kind!r}", param=f"{where}.{i}")
    return "\n".join(parts)


def chat_messages(body: _Prompt) -> tuple[list[dict], str]:
    """``{"role", "content"}`` dicts for the chat path, and the assistant prefill (a last assistant message: the
    reply continues it)."""
    if _wants_tools(body):
        tools_turn(body)
    out = []
    if body.system:
        out.append({"role": "system", "content": _text(body.system, "system")})
    for i, m in enumerate(body.messages):
        out.append({"role": m.role, "content": _text(m.content, f"messages.{i}.content")})
    prefill = out.pop()["content"] if out[-1]["role"] == "assistant" else ""
    if not any(m["role"] == "user" for m in out):
        raise ApiError(400, "messages: the first message must use the user role", param="messages")
    return out, prefill


def _values(body: MessagesRequest) -> dict[str, Any]:
    values = sampling_extras(body)
    values["max_new_tokens"] = body.max_tokens
    values.update({k: v for k in ("temperature", "top_p", "top_k") if (v := getattr(body, k)) is not None})
    return values


def _message(msg_id: str, model: str, text: str | None, ended: Ended | None, input_tokens: int) -> dict:
    """Anthropic's message object (``text`` None: the empty one a stream starts with)."""
    return {
        "id": msg_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [] if text is None else [{"type": "text", "text": text}],
        "stop_reason": STOP_REASONS[ended.reason] if ended else None,
        "stop_sequence": ended.stop_sequence if ended else None,
        "usage": {"input_tokens": ended.input_tokens if ended else input_tokens,
                  "output_tokens": ended.output_tokens if ended else 0},
    }  # fmt: skip


def _event(data: dict) -> bytes:
    return f"event: {data['type']}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


async def _events(turn: Turn, first: str | Ended, msg_id: str, model: str) -> AsyncIterator[bytes]:
    """Anthropic's stream: message_start, content_block_start, ping, content_block_delta…, content_block_stop,
    message_delta (stop_reason, usage), message_stop; an ``error`` event if the generation fails midway."""
    try:
        yield _event({"type": "message_start", "message": _message(msg_id, model, None, None, turn.input_tokens)})
        yield _event({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
        yield _event({"type": "ping"})
        piece = first
        while isinstance(piece, str):
            yield _event({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}})
            piece = await turn.next()
        if piece.reason == "error":
            status, _ = status_of(piece.reply.failure)
            yield _event(anthropic_error_body(max(status, 500), piece.reply.error or "the generation failed"))
            return
        yield _event({"type": "content_block_stop", "index": 0})
        usage = {"input_tokens": piece.input_tokens, "output_tokens": piece.output_tokens}
        delta = {"stop_reason": STOP_REASONS[piece.reason], "stop_sequence": piece.stop_sequence}
        yield _event({"type": "message_delta", "delta": delta, "usage": usage})
        yield _event({"type": "message_stop"})
    finally:
        turn.close()  # the client went away (or we are done): let the engine go


anthropic_router = APIRouter()


@anthropic_router.post("/v1/messages")
async def messages(body: MessagesRequest, request: Request, app: AppDep, record: GenerationsDep):
    history, prefill = chat_messages(body)
    if any(not s for s in body.stop_sequences or []):
        raise ApiError(400, "stop_sequences: empty strings are not allowed", param="stop_sequences")
    msg_id = new_id("msg_")
    turn, model = await begin(
        app, request, record, gen_id=msg_id, model=body.model, messages=history, explicit=_values(body),
        preset=body.preset, stops=body.stop_sequences, prefill=prefill,
    )  # fmt: skip
    if not body.stream:
        text, ended = await turn.collect(request)
        return JSONResponse(_message(msg_id, model, text, ended, ended.input_tokens))
    first = await turn.first(request)
    if isinstance(first, Ended):
        first.raise_if_failed()
    return StreamingResponse(
        _events(turn, first, msg_id, model),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@anthropic_router.post("/v1/messages/count_tokens")
async def count_tokens(body: CountTokensRequest, request: Request, app: AppDep) -> dict:
    """The prompt's size as the model would see it: its template rendered, counted by its own tokenizer."""
    history, prefill = chat_messages(body)
    info = await use_model(app, body.model, request)
    try:
        text = render_prompt(history, info, prefix=prefill).text
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None
    loaded = next((m for m in app.engine.resident if m.path == Path(info.path)), None)
    if loaded is None:
        raise ApiError(503, "the model is not loaded", "model_not_loaded", "model")
    tokens = await run_in_threadpool(loaded.model.tokenize, text, True)
    return {"input_tokens": len(tokens)}
