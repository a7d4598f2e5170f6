"""OpenAI's Responses API, stateless: ``POST /v1/responses`` (whole or streamed), for clients and agent
frameworks that speak it (``client.responses.create`` in the official SDKs).

Nothing is stored: ``previous_response_id`` and ``store: true`` are refused with a clear 400, so a client never
believes a conversation is kept here. The generation takes the OpenAI chat route's path (:mod:`webui.api.turns`):
the same Chat service, sampling policy (``preset`` by name too), fair queue and cancel on disconnect.

Function tools go through the tools core (:mod:`webui.chat.tools`), as on the chat completions route: ``tools``
(``{"type": "function", "name", "parameters"}``), ``tool_choice`` (auto, required, none or a named function:
required and named force a call with a grammar), ``function_call`` / ``function_call_output`` input items as the
core's assistant ``tool_calls`` / ``tool`` messages; the reply's calls are ``function_call`` output items,
streamed as ``response.function_call_arguments.delta`` fragments.
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
from webui.api.stream import Generations
from webui.api.turns import Ended, Turn, begin, failure_status, new_id, read_choice, read_tools, sampling_extras
from webui.api.types import ApiError
from webui.app import App
from webui.chat.tools import CallDelta, Tool, ToolCall, ToolChoice, parse_tool_choice

FUNCTION_TOOL = frozenset({"function"})  # built-in tools (web_search, file_search, mcp …) are not run here
ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}
TEXT_PARTS = ("input_text", "output_text", "text")

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
    parallel_tool_calls: bool | None = None
    text: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    preset: str | None = None  # ours, as on the OpenAI routes


def tool_request(body: ResponsesRequest) -> tuple[list[Tool], ToolChoice]:
    """The request's function ``tools`` and ``tool_choice`` read by the core (a bad schema or choice is a 400; a
    built-in tool such as ``web_search`` or ``file_search`` is a 400 naming its type)."""
    tools = read_tools(body.tools, FUNCTION_TOOL, 'send function tools: {"type": "function", "name", "parameters"}')
    raw = body.tool_choice
    if isinstance(raw, dict) and raw.get("type") == "function" and "function" not in raw:
        raw = {"type": "function", "function": {"name": raw.get("name")}}  # the Responses API's flat shape
    flat = '{"type": "function", "name": …}'
    return tools, read_choice(lambda: parse_tool_choice(raw, tools, body.parallel_tool_calls),
                              lambda m: m.replace('{"type": "function", "function": {"name": …}}', flat))  # fmt: skip


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
    """``{"role", "content"}`` dicts for the chat path: ``instructions`` first, then ``input`` (``function_call``
    items as the assistant's ``tool_calls``, ``function_call_output`` items as ``tool`` messages)."""
    items = body.input if isinstance(body.input, list) else [{"role": "user", "content": body.input}]
    out = [{"role": "system", "content": body.instructions}] if body.instructions else []
    for i, item in enumerate(items):
        kind, role = item.get("type", "message"), item.get("role")
        if kind == "function_call":
            _add_call(item, f"input.{i}", out)
        elif kind == "function_call_output":
            if not isinstance(item.get("call_id"), str):
                raise ApiError(400, f"input.{i}: a function_call_output needs a string call_id", param=f"input.{i}")
            output = _content(item.get("output", ""), f"input.{i}.output")
            out.append({"role": "tool", "tool_call_id": item["call_id"], "content": output})
        elif kind != "message" or role not in ROLES:
            what = f"role {role!r}" if kind == "message" else f"item type {kind!r}"
            raise ApiError(400, f"input.{i}: {what} is not supported (messages of user, assistant, system or "
                           "developer, function_call and function_call_output)", param=f"input.{i}")  # fmt: skip
        else:
            out.append({"role": ROLES[role], "content": _content(item.get("content"), f"input.{i}.content")})
    if not any(m["role"] == "user" for m in out):
        raise ApiError(400, "input holds no user message", param="input")
    return out


def _add_call(item: dict, where: str, out: list[dict]) -> None:
    """A ``function_call`` item as the ``tool_calls`` of an assistant message: of the one just before it (its text,
    or calls made together), else of a new one."""
    name, arguments, call_id = item.get("name"), item.get("arguments", "{}"), item.get("call_id")
    if not isinstance(name, str) or not isinstance(arguments, str) or not isinstance(call_id, str):
        raise ApiError(400, f"{where}: a function_call needs string call_id, name and arguments", param=where)
    call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
    if out and out[-1]["role"] == "assistant":
        out[-1].setdefault("tool_calls", []).append(call)
    else:
        out.append({"role": "assistant", "content": "", "tool_calls": [call]})


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

    def call_item(self, call: ToolCall, status: str = "completed") -> dict:
        """A ``function_call`` output item (``call_id``: what the client's ``function_call_output`` names)."""
        return {"type": "function_call", "id": "fc_" + call.id.removeprefix("call_"), "call_id": call.id,
                "name": call.name, "arguments": call.arguments, "status": status}  # fmt: skip

    def output(self, text: str, ended: Ended) -> list[dict]:
        """A whole reply's output items: its message (when it has text or nothing else), then its calls."""
        status = "incomplete" if ended.reason == "length" else "completed"
        message = [self.item(text, status)] if text or not ended.calls else []
        return message + [self.call_item(c) for c in ended.calls]

    def response(self, text: str | None, ended: Ended | None, output: list[dict] | None = None) -> dict:
        """The response object; ``output``: the items as streamed (else the whole reply's, once it ended)."""
        status = "in_progress" if ended is None else ("incomplete" if ended.reason == "length" else "completed")
        body = self.body
        if output is None:
            output = [] if ended is None else self.output(text or "", ended)
        choice = body.tool_choice if body.tool_choice is not None else ("auto" if body.tools else "none")
        out = {
            "id": self.id, "object": "response", "created_at": self.created, "status": status,
            "model": self.model, "output": output,
            "instructions": body.instructions, "max_output_tokens": body.max_output_tokens,
            "temperature": body.temperature, "top_p": body.top_p, "metadata": body.metadata or {},
            "parallel_tool_calls": body.parallel_tool_calls is not False, "tool_choice": choice,
            "tools": body.tools or [], "store": False,
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


class _Items:
    """The output items of a streamed response: one open at a time (the message, or a function call), each
    added, then its deltas, then done; the finished ones make the final response's ``output``."""

    def __init__(self, shape: _Shape) -> None:
        self.shape = shape
        self.done: list[dict] = []
        self.text: str | None = None  # the open message's text so far
        self.call: ToolCall | None = None  # the open call, its arguments so far

    def where(self) -> dict:
        return {"item_id": self.shape.item_id, "output_index": len(self.done), "content_index": 0}

    def open_text(self) -> list[bytes]:
        shape, self.text = self.shape, ""
        if any(i["type"] == "message" for i in self.done):
            shape.item_id = new_id("msg_")  # text after a call: a second message item
        return [shape.event("response.output_item.added", output_index=len(self.done),
                            item=shape.item(None, "in_progress")),
                shape.event("response.content_part.added", **self.where(), part=shape.part(""))]  # fmt: skip

    def add_text(self, piece: str) -> list[bytes]:
        out = [] if self.text is not None else [*self.close(), *self.open_text()]
        self.text = (self.text or "") + piece
        return [*out, self.shape.event("response.output_text.delta", **self.where(), delta=piece, logprobs=[])]

    def add_call(self, piece: CallDelta) -> list[bytes]:
        shape, out = self.shape, []
        if piece.id is not None:
            out = self.close()
            self.call = ToolCall(piece.id, piece.name or "", "")
            out.append(shape.event("response.output_item.added", output_index=len(self.done),
                                   item=shape.call_item(self.call, "in_progress")))  # fmt: skip
        if piece.arguments and self.call is not None:
            self.call = ToolCall(self.call.id, self.call.name, self.call.arguments + piece.arguments)
            out.append(shape.event("response.function_call_arguments.delta", output_index=len(self.done),
                                   item_id=shape.call_item(self.call)["id"], delta=piece.arguments))  # fmt: skip
        return out

    def close(self, status: str = "completed") -> list[bytes]:
        """Finish the open item (its done events), if any."""
        shape, at = self.shape, len(self.done)
        if self.text is not None:
            text, self.text = self.text, None
            item = shape.item(text, status)
            self.done.append(item)
            return [shape.event("response.output_text.done", **{**self.where(), "output_index": at}, text=text,
                                logprobs=[]),
                    shape.event("response.content_part.done", **{**self.where(), "output_index": at},
                                part=shape.part(text)),
                    shape.event("response.output_item.done", output_index=at, item=item)]  # fmt: skip
        if self.call is not None:
            item, self.call = shape.call_item(self.call), None
            self.done.append(item)
            return [shape.event("response.function_call_arguments.done", output_index=at, item_id=item["id"],
                                name=item["name"], arguments=item["arguments"]),
                    shape.event("response.output_item.done", output_index=at, item=item)]  # fmt: skip
        return []


async def _events(turn: Turn, first: str | CallDelta | Ended, shape: _Shape) -> AsyncIterator[bytes]:
    """The Responses stream: response.created, response.in_progress, response.output_item.added,
    response.content_part.added, response.output_text.delta…, response.output_text.done,
    response.content_part.done, response.output_item.done, then response.completed (response.incomplete at
    max_output_tokens, as OpenAI's); response.failed if the generation fails midway. With tools, items are
    added as the reply needs them: a function call's is followed by response.function_call_arguments.delta…,
    response.function_call_arguments.done and response.output_item.done."""
    items = _Items(shape)
    try:
        yield shape.event("response.created", response=shape.response(None, None))
        yield shape.event("response.in_progress", response=shape.response(None, None))
        if turn.tools is None:
            for data in items.open_text():
                yield data
        async for part in turn.rest(first):
            for data in items.add_text(part) if isinstance(part, str) else items.add_call(part):
                yield data
        piece = turn.ended
        assert piece is not None
        if piece.reason == "error":
            status, code = failure_status(piece.reply)
            failed = shape.response(None, None, [*items.done, *([shape.item(items.text, "incomplete")]
                                                                if items.text is not None else [])])  # fmt: skip
            failed["status"] = "failed"
            failed["error"] = {"code": code or "server_error", "message": piece.reply.error or "generation failed"}
            yield shape.event("response.failed", response=failed)
            return
        if not items.done and items.text is None and items.call is None:
            for data in items.open_text():  # an empty reply still has its (empty) message
                yield data
        for data in items.close("incomplete" if piece.reason == "length" else "completed"):
            yield data
        final = shape.response(None, piece, items.done)
        yield shape.event(f"response.{final['status']}", response=final)
    finally:
        turn.close()  # the client went away (or we are done): let the engine go


responses_router = APIRouter()


@responses_router.post("/v1/responses")
async def responses(body: ResponsesRequest, request: Request, app: AppDep, record: GenerationsDep):
    _refuse_state(body)
    history = chat_messages(body)
    tools, choice = tool_request(body)
    gen_id = new_id("resp_")
    turn, model = await begin(
        app, request, record, gen_id=gen_id, model=body.model, messages=history, explicit=_values(body),
        preset=body.preset, tools=tools, choice=choice,
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
