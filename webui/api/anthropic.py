"""Anthropic's Messages API: ``POST /v1/messages`` (whole or streamed) and ``POST /v1/messages/count_tokens``,
for clients written for Claude (the official ``anthropic`` SDKs, coding agents).

The generation takes the OpenAI routes' path (:mod:`webui.api.turns`): the same Chat service, sampling policy
(``preset`` by name too), fair queue and cancel on disconnect. Keys: ``x-api-key`` or ``Authorization: Bearer``,
the same key as the rest of ``/v1`` (:mod:`webui.api.auth`). Errors under ``/v1/messages`` are in Anthropic's
shape (``{"type": "error", "error": {"type": "invalid_request_error", …}}``, see :mod:`webui.api.errors`).

Tool use goes through the tools core (:mod:`webui.chat.tools`), as on the chat completions route: ``tools``
(``input_schema``), ``tool_choice`` (auto, any, tool, none; any and tool force a call with a grammar), earlier
``tool_use`` / ``tool_result`` blocks as the core's assistant ``tool_calls`` / ``tool`` messages; a reply's calls
come back as ``tool_use`` blocks with ``stop_reason: "tool_use"``, streamed as ``input_json_delta`` fragments.
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
from webui.api.lookup import use_model
from webui.api.stream import Generations
from webui.api.turns import Ended, Turn, begin, failure_status, new_id, read_choice, read_tools, sampling_extras
from webui.api.types import ApiError
from webui.app import App
from webui.chat.prompting import render_prompt
from webui.chat.tools import CallDelta, Tool, ToolCall, ToolChoice, ToolError, parse_tool_choice

STOP_REASONS = {"end": "end_turn", "length": "max_tokens", "stop_sequence": "stop_sequence", "tool_use": "tool_use"}
SERVER_BLOCKS = ("server_tool_use", "web_search_tool_result")  # Anthropic's own tools: not run here
CLIENT_TOOL_TYPES = frozenset({None, "custom"})  # the client runs them; web_search_…, bash_… are server tools
CHOICES = {"auto": "auto", "any": "required", "none": "none"}  # Anthropic's tool_choice type → the core's mode
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


def _text(content: str | list[dict[str, Any]], where: str, skip: tuple[str, ...] = SKIPPED_BLOCKS) -> str:
    """The text of a ``content`` (a string, or content blocks: text; tool blocks are read by :func:`_turn`)."""
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
        elif kind not in skip:
            raise ApiError(400, f"{where}.{i}: unknown content block type {kind!r}", param=f"{where}.{i}")
    return "\n".join(parts)


def tool_id(call: ToolCall) -> str:
    """A call's id as Anthropic writes them (``toolu_…``)."""
    return "toolu_" + call.id.removeprefix("call_")


def tool_request(body: _Prompt) -> tuple[list[Tool], ToolChoice]:
    """The request's ``tools`` and ``tool_choice`` read by the core (a bad schema or choice is a 400 naming it; a
    server tool such as ``web_search_20250305`` is a 400 naming its type)."""
    tools = read_tools(body.tools, CLIENT_TOOL_TYPES, 'send client tools: {"name", "description", "input_schema"}')
    raw = body.tool_choice
    if raw is None:
        return tools, parse_tool_choice(None, tools)
    kind = raw.get("type")
    parallel = not raw.get("disable_parallel_tool_use", False)

    def parse() -> ToolChoice:
        if kind == "tool":
            return parse_tool_choice({"type": "function", "function": {"name": raw.get("name")}}, tools)
        if kind in CHOICES:
            return parse_tool_choice(CHOICES[kind], tools, parallel)
        raise ToolError(f"tool_choice.type must be 'auto', 'any', 'tool' or 'none', not {kind!r}")

    def reword(message: str) -> str:
        message = message.replace("'required'", "'any'").replace("tool_choice must be a string or", "tool_choice")
        return message if message.startswith("tool_choice") else f"tool_choice: {message}"

    return tools, read_choice(parse, reword)


def _result_text(block: dict, where: str) -> str:
    """A ``tool_result`` block's content as text (a string or text blocks); ``is_error`` results say so."""
    content = block.get("content", "")
    text = content if isinstance(content, str) else _text(content if isinstance(content, list) else [], where)
    return f"Error: {text}" if block.get("is_error") else text


def _turn(role: str, content: str | list[dict[str, Any]], where: str) -> list[dict]:
    """One Anthropic message as the core's messages: assistant ``tool_use`` blocks as its ``tool_calls``, user
    ``tool_result`` blocks as ``tool`` messages (before the user's own text, which follows them)."""
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    calls, results = [], []
    for i, block in enumerate(content):
        kind, at = block.get("type"), f"{where}.{i}"
        if kind == "tool_use" and role == "assistant":
            if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
                raise ApiError(400, f"{at}: a tool_use block needs a string 'id' and 'name'", param=at)
            arguments = json.dumps(block.get("input") or {}, ensure_ascii=False)
            calls.append({"id": block["id"], "type": "function",
                          "function": {"name": block["name"], "arguments": arguments}})  # fmt: skip
        elif kind == "tool_result" and role == "user":
            if not isinstance(block.get("tool_use_id"), str):
                raise ApiError(400, f"{at}: a tool_result block needs a string 'tool_use_id'", param=at)
            results.append({"role": "tool", "tool_call_id": block["tool_use_id"],
                            "content": _result_text(block, f"{at}.content")})  # fmt: skip
        elif kind in ("tool_use", "tool_result"):
            raise ApiError(400, f"{at}: a {kind} block belongs in a {'user' if kind == 'tool_result' else 'assistant'}"
                           " message", param=at)  # fmt: skip
        elif kind in SERVER_BLOCKS:
            raise ApiError(400, f"{at}: {kind} blocks (Anthropic's server tools) are not supported", param=at)
    text = _text(content, where, (*SKIPPED_BLOCKS, "tool_use", "tool_result"))
    if calls:
        return [{"role": "assistant", "content": text, "tool_calls": calls}]
    if results:
        return [*results, *([{"role": "user", "content": text}] if text else [])]
    return [{"role": role, "content": text}]


def chat_messages(body: _Prompt) -> tuple[list[dict], str]:
    """``{"role", "content"}`` dicts for the chat path (tool calls and results in the core's shape), and the
    assistant prefill (a last assistant message without calls: the reply continues it)."""
    out = []
    if body.system:
        out.append({"role": "system", "content": _text(body.system, "system")})
    for i, m in enumerate(body.messages):
        out.extend(_turn(m.role, m.content, f"messages.{i}.content"))
    prefill = ""
    if out[-1]["role"] == "assistant":
        if out[-1].get("tool_calls"):
            raise ApiError(400, "messages: the last message is an assistant tool_use; send its tool_result in a user "
                           "message", param="messages")  # fmt: skip
        prefill = out.pop()["content"]
    if not any(m["role"] in ("user", "tool") for m in out):
        raise ApiError(400, "messages: the first message must use the user role", param="messages")
    return out, prefill


def _values(body: MessagesRequest) -> dict[str, Any]:
    values = sampling_extras(body)
    values["max_new_tokens"] = body.max_tokens
    values.update({k: v for k in ("temperature", "top_p", "top_k") if (v := getattr(body, k)) is not None})
    return values


def _tool_block(call: ToolCall, with_input: bool = True) -> dict:
    """A ``tool_use`` block (a stream starts it with an empty input; its JSON follows in fragments)."""
    return {"type": "tool_use", "id": tool_id(call), "name": call.name,
            "input": json.loads(call.arguments) if with_input else {}}  # fmt: skip


def _content(text: str, ended: Ended) -> list[dict]:
    """A whole reply's content blocks: its text (when there is text or nothing else), then its calls."""
    blocks = [{"type": "text", "text": text}] if text or not ended.calls else []
    return blocks + [_tool_block(c) for c in ended.calls]


def _message(msg_id: str, model: str, text: str | None, ended: Ended | None, input_tokens: int) -> dict:
    """Anthropic's message object (``text`` None: the empty one a stream starts with)."""
    return {
        "id": msg_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [] if text is None or ended is None else _content(text, ended),
        "stop_reason": STOP_REASONS[ended.reason] if ended else None,
        "stop_sequence": ended.stop_sequence if ended else None,
        "usage": {"input_tokens": ended.input_tokens if ended else input_tokens,
                  "output_tokens": ended.output_tokens if ended else 0},
    }  # fmt: skip


def _event(data: dict) -> bytes:
    return f"event: {data['type']}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


class _Blocks:
    """The content blocks of a streamed message: one open at a time, each started, then its deltas, then stopped."""

    def __init__(self) -> None:
        self.index = -1
        self.open: str | None = None  # "text" or "tool_use"

    def start(self, block: dict) -> list[bytes]:
        out = self.stop()
        self.index += 1
        self.open = block["type"]
        return [*out, _event({"type": "content_block_start", "index": self.index, "content_block": block})]

    def stop(self) -> list[bytes]:
        if self.open is None:
            return []
        self.open = None
        return [_event({"type": "content_block_stop", "index": self.index})]

    def text(self, text: str) -> list[bytes]:
        out = [] if self.open == "text" else self.start({"type": "text", "text": ""})
        delta = {"type": "text_delta", "text": text}
        return [*out, _event({"type": "content_block_delta", "index": self.index, "delta": delta})]

    def call(self, piece: CallDelta) -> list[bytes]:
        out = []
        if piece.id is not None:
            out = self.start(_tool_block(ToolCall(piece.id, piece.name or "", "{}"), with_input=False))
        if piece.arguments:
            delta = {"type": "input_json_delta", "partial_json": piece.arguments}
            out.append(_event({"type": "content_block_delta", "index": self.index, "delta": delta}))
        return out


async def _events(turn: Turn, first: str | CallDelta | Ended, msg_id: str, model: str) -> AsyncIterator[bytes]:
    """Anthropic's stream: message_start, content_block_start, ping, content_block_delta…, content_block_stop,
    message_delta (stop_reason, usage), message_stop; an ``error`` event if the generation fails midway. With
    tools, blocks start as the reply needs them (text, or tool_use with ``input_json_delta`` fragments)."""
    blocks = _Blocks()
    try:
        yield _event({"type": "message_start", "message": _message(msg_id, model, None, None, turn.input_tokens)})
        if turn.tools is None:
            for data in blocks.start({"type": "text", "text": ""}):
                yield data
        yield _event({"type": "ping"})
        async for part in turn.rest(first):
            for data in blocks.text(part) if isinstance(part, str) else blocks.call(part):
                yield data
        piece = turn.ended
        assert piece is not None
        if piece.reason == "error":
            status, _ = failure_status(piece.reply)
            yield _event(anthropic_error_body(max(status, 500), piece.reply.error or "the generation failed"))
            return
        if blocks.index < 0:  # an empty reply still has its (empty) text block
            for data in blocks.start({"type": "text", "text": ""}):
                yield data
        for data in blocks.stop():
            yield data
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
    tools, choice = tool_request(body)
    if any(not s for s in body.stop_sequences or []):
        raise ApiError(400, "stop_sequences: empty strings are not allowed", param="stop_sequences")
    msg_id = new_id("msg_")
    turn, model = await begin(
        app, request, record, gen_id=msg_id, model=body.model, messages=history, explicit=_values(body),
        preset=body.preset, stops=body.stop_sequences, prefill=prefill, tools=tools, choice=choice,
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
    tools, choice = tool_request(body)
    info = await use_model(app, body.model, request)
    try:
        text = render_prompt(history, info, prefix=prefill, tools=tuple(tools), tool_choice=choice).text
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None
    loaded = next((m for m in app.engine.resident if m.path == Path(info.path)), None)
    if loaded is None:
        raise ApiError(503, "the model is not loaded", "model_not_loaded", "model")
    tokens = await run_in_threadpool(loaded.model.tokenize, text, True)
    return {"input_tokens": len(tokens)}
