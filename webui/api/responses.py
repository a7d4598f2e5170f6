"""OpenAI's Responses API, stateless: ``POST /v1/responses`` (whole or streamed), for clients and agent
frameworks that speak it (``client.responses.create`` in the official SDKs).

Nothing is stored: ``previous_response_id`` and ``store: true`` are refused with a clear 400, so a client never
believes a conversation is kept here. The generation takes the OpenAI chat route's path (:mod:`webui.api.turns`):
the same Chat service, sampling policy (``preset`` by name too), fair queue and cancel on disconnect.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from webui.api.deps import generations, get_app
from webui.api.errors import status_of
from webui.api.stream import Generations
from webui.api.turns import Ended, Turn, begin, new_id, sampling_extras
from webui.api.types import ApiError
from webui.app import App

ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}
TEXT_PARTS = ("input_text", "output_text", "text")
TOOL_ITEMS = ("function_call", "function_call_output", "custom_tool_call", "custom_tool_call_output")

AppDep = Annotated[App, Depends(get_app)]
GenerationsDep = Annotated[Generations, Depends(generations)]


class ResponsesRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str | None = None
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    stream: bool = False
    store: bool | None = None
    previous_response_id: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    text: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    preset: str | None = None  # ours, as on the OpenAI routes


def tools_turn(body: ResponsesRequest) -> None:
    """Where function tools (``tools``, ``function_call`` / ``function_call_output`` items) will meet the tools
    core; for now a clear 400 instead of a reply that ignores the tools."""
    raise ApiError(400, "tools are not supported on this endpoint yet", "tools_not_supported", "tools")


def _refuse_state(body: ResponsesRequest) -> None:
    if body.previous_response_id:
        message = "previous_response_id is not supported: this server is stateless and keeps no responses; send "
        raise ApiError(400, message + "the whole conversation in input", "stateless", "previous_response_id")
    if body.store:
        raise ApiError(400, "store: true is not supported: this server is stateless and keeps no responses",
                       "stateless", "store")  # fmt: skip
    fmt = (body.text or {}).get("format") or {}
    if fmt.get("type", "text") != "text":
        raise ApiError(400, f"text.format {fmt.get('type')!r} is not supported on this endpoint yet (text only)",
                       param="text.format")  # fmt: skip


def _content(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ApiError(400, f"{where}: content must be a string or a list of parts", param=where)
    parts = []
    for i, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in TEXT_PARTS or not isinstance(part.get("text"), str):
            raise ApiError(400, f"{where}.{i}: only text parts are supported, not {kind!r}", param=f"{where}.{i}")
        parts.append(part["text"])
    return "\n".join(parts)


def chat_messages(body: ResponsesRequest) -> list[dict]:
    """``{"role", "content"}`` dicts for the chat path: ``instructions`` first, then ``input``."""
    items = body.input if isinstance(body.input, list) else [{"role": "user", "content": body.input}]
    if body.tools or any(i.get("type") in TOOL_ITEMS for i in items):
        tools_turn(body)
    out = [{"role": "system", "content": body.instructions}] if body.instructions else []
    for i, item in enumerate(items):
        kind, role = item.get("type", "message"), item.get("role")
        if kind != "message" or role not in ROLES:
            what = f"role {role!r}" if kind == "message" else f"item type {kind!r}"
            raise ApiError(400, f"input.{i}: {what} is not supported (messages of user, assistant, system or "
                           "developer)", param=f"input.{i}")  # fmt: skip
        out.append({"role": ROLES[role], "content": _content(item.get("content"), f"input.{i}.content")})
    if not any(m["role"] == "user" for m in out):
        raise ApiError(400, "input holds no user message", param="input")
    return out


def _values(body: ResponsesRequest) -> dict[str, Any]:
    values = sampling_extras(body)
    if body.max_output_tokens is not None:
        values["max_new_tokens"] = body.max_output_tokens
    values.update({k: v for k in ("temperature", "top_p") if (v := getattr(body, k)) is not None})
    return values


class _Shape:
    """One response's objects: the response, its message item and its text part, as they stand."""

    def __init__(self, body: ResponsesRequest, model: str, response_id: str) -> None:
        self.body, self.model = body, model
        self.id, self.item_id, self.created = response_id, new_id("msg_"), int(time.time())
        self.sequence = 0

    def part(self, text: str) -> dict:
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}

    def item(self, text: str | None, status: str) -> dict:
        content = [] if text is None else [self.part(text)]
        return {"type": "message", "id": self.item_id, "status": status, "role": "assistant", "content": content}

    def response(self, text: str | None, ended: Ended | None, input_tokens: int = 0) -> dict:
        status = "in_progress" if ended is None else ("incomplete" if ended.reason == "length" else "completed")
        body = self.body
        out = {
            "id": self.id, "object": "response", "created_at": self.created, "status": status,
            "model": self.model, "output": [] if ended is None else [self.item(text or "", status)],
            "instructions": body.instructions, "max_output_tokens": body.max_output_tokens,
            "temperature": body.temperature, "top_p": body.top_p, "metadata": body.metadata or {},
            "parallel_tool_calls": False, "tool_choice": "none", "tools": [], "store": False,
            "previous_response_id": None, "text": {"format": {"type": "text"}}, "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "usage": None,
        }  # fmt: skip
        if ended is not None:
            out["usage"] = {
                "input_tokens": ended.input_tokens, "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": ended.output_tokens, "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": ended.input_tokens + ended.output_tokens,
            }  # fmt: skip
        return out

    def event(self, kind: str, **fields: Any) -> bytes:
        data = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return f"event: {kind}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


async def _events(turn: Turn, first: str | Ended, shape: _Shape) -> AsyncIterator[bytes]:
    """The Responses stream: response.created, response.in_progress, response.output_item.added,
    response.content_part.added, response.output_text.delta…, response.output_text.done,
    response.content_part.done, response.output_item.done, then response.completed (response.incomplete at
    max_output_tokens, as OpenAI's); response.failed if the generation fails midway."""
    where = {"item_id": shape.item_id, "output_index": 0, "content_index": 0}
    try:
        yield shape.event("response.created", response=shape.response(None, None))
        yield shape.event("response.in_progress", response=shape.response(None, None))
        yield shape.event("response.output_item.added", output_index=0, item=shape.item(None, "in_progress"))
        yield shape.event("response.content_part.added", **where, part=shape.part(""))
        text, piece = "", first
        while isinstance(piece, str):
            text += piece
            yield shape.event("response.output_text.delta", **where, delta=piece, logprobs=[])
            piece = await turn.next()
        if piece.reason == "error":
            status, code = status_of(piece.reply.failure)
            failed = shape.response(text, None)
            failed["status"] = "failed"
            failed["error"] = {"code": code or "server_error", "message": piece.reply.error or "generation failed"}
            yield shape.event("response.failed", response=failed)
            return
        final = shape.response(text, piece)
        yield shape.event("response.output_text.done", **where, text=text, logprobs=[])
        yield shape.event("response.content_part.done", **where, part=shape.part(text))
        yield shape.event("response.output_item.done", output_index=0, item=final["output"][0])
        yield shape.event(f"response.{final['status']}", response=final)
    finally:
        turn.close()  # the client went away (or we are done): let the engine go


responses_router = APIRouter()


@responses_router.post("/v1/responses")
async def responses(body: ResponsesRequest, request: Request, app: AppDep, record: GenerationsDep):
    _refuse_state(body)
    history = chat_messages(body)
    gen_id = new_id("resp_")
    turn, model = await begin(
        app, request, record, gen_id=gen_id, model=body.model, messages=history, explicit=_values(body),
        preset=body.preset,
    )  # fmt: skip
    shape = _Shape(body, model, gen_id)
    if not body.stream:
        text, ended = await turn.collect(request)
        return JSONResponse(shape.response(text, ended))
    first = await turn.first(request)
    if isinstance(first, Ended):
        first.raise_if_failed()
    return StreamingResponse(
        _events(turn, first, shape),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
