"""The OpenAI request bodies we accept, and how their fields become :class:`SamplingParams`.

Unknown body fields are allowed (clients send many); any whose name is a SamplingParams field
(``min_p``, ``top_k``, ``repetition_penalty``, ``mirostat_mode`` ... and whatever field is added there
later) is applied generically, type-checked against the field's default.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from backends.base import SamplingParams

MAX_STOP_STRINGS = 4  # as OpenAI


class ApiError(Exception):
    """A request we refuse; rendered as OpenAI's error JSON with ``status``."""

    def __init__(
        self, status: int, message: str, code: str | None = None, param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.headers = headers or {}


class StreamOptions(BaseModel):
    include_usage: bool = False


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: dict[str, Any] | None = None


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[dict] | None = None  # an assistant's earlier calls
    tool_call_id: str | None = None  # a tool message: the call it answers


class _Common(BaseModel):
    """Fields shared by chat and text completions."""

    model_config = ConfigDict(extra="allow")
    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    n: int = Field(default=1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    # our own features, same names as in the UI
    preset: str | None = None
    mode: str | None = None
    character: str | None = None


class ChatRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    tools: list[dict] | None = None
    tool_choice: Any = None  # "none" | "auto" | "required" | {"type": "function", "function": {"name"}}
    parallel_tool_calls: bool | None = None


class CompletionRequest(_Common):
    prompt: str | list[str]
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None
    logprobs: int | None = Field(default=None, ge=0, le=5)
    response_format: ResponseFormat | None = None


# -- fields → SamplingParams -----------------------------------------------------------------------

_SAMPLING_FIELDS = frozenset(f.name for f in fields(SamplingParams))
_OPENAI_NAMES = ("temperature", "top_p", "presence_penalty", "frequency_penalty", "seed")


def request_values(body: _Common) -> tuple[dict[str, Any], list[str]]:
    """The sampling values the request sets explicitly (OpenAI's fields, and any body field named like a
    :class:`SamplingParams` field, ``grammar`` included), and the extra fields it ignored.

    These are the last layer of :func:`webui.chat.sampling.resolve_params` (model rule → preset → request), where
    :meth:`SamplingParams.from_dict` checks them.
    """
    unsupported(body)
    values: dict[str, Any] = {}
    max_tokens = getattr(body, "max_completion_tokens", None) or body.max_tokens
    if max_tokens is not None:
        values["max_new_tokens"] = max_tokens
    for name in _OPENAI_NAMES:
        if getattr(body, name) is not None:
            values[name] = getattr(body, name)
    if body.stop is not None:
        stops = [body.stop] if isinstance(body.stop, str) else list(body.stop)
        if len(stops) > MAX_STOP_STRINGS or any(not s for s in stops):
            raise ApiError(400, f"stop takes up to {MAX_STOP_STRINGS} non-empty strings", param="stop")
        values["stop"] = stops
    ignored = []
    for name, value in (body.model_extra or {}).items():
        if name not in _SAMPLING_FIELDS or name in values:
            ignored.append(name)
            continue
        values[name] = value
    grammar_too = values.get("grammar") and getattr(body, "response_format", None) is not None
    if grammar_too and body.response_format.type != "text":
        raise ApiError(400, "send either grammar or response_format, not both", param="grammar")
    return values, sorted(ignored)


def unsupported(body: _Common) -> None:
    """Refuse, clearly, what we cannot do rather than ignoring it."""
    if body.n != 1:
        raise ApiError(400, "n must be 1: one choice per request is supported", param="n")
    if body.logit_bias:
        raise ApiError(400, "logit_bias is not supported", param="logit_bias")
    if isinstance(body, CompletionRequest):
        if body.suffix:
            raise ApiError(400, "suffix (fill-in-the-middle) is not supported", param="suffix")
        if body.best_of not in (None, 1):
            raise ApiError(400, "best_of must be 1", param="best_of")


def chat_messages(body: ChatRequest) -> list[dict]:
    """Plain ``{"role", "content"}`` dicts for the chat path (with ``tool_calls`` on an assistant's calls and
    ``tool_call_id`` / ``name`` on a tool's result); text parts joined, images refused."""
    out = []
    for i, m in enumerate(body.messages):
        if isinstance(m.content, list):
            if any(p.type != "text" for p in m.content):
                raise ApiError(400, f"messages[{i}]: only text content parts are supported", param="messages")
            content = "".join(p.text or "" for p in m.content)
        else:
            content = m.content or ""
        role = "system" if m.role == "developer" else m.role
        message = {"role": role, "content": content}
        if m.role == "assistant" and m.tool_calls:
            message["tool_calls"] = _checked_calls(m.tool_calls, i)
        if m.role == "tool":
            if not m.tool_call_id:
                raise ApiError(400, f"messages[{i}]: a tool message needs its tool_call_id", param="messages")
            message["tool_call_id"] = m.tool_call_id
            if m.name:
                message["name"] = m.name
        out.append(message)
    return out


def _checked_calls(calls: list[dict], i: int) -> list[dict]:
    """An assistant message's ``tool_calls`` as OpenAI sends them (id, function name, arguments string)."""
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise ApiError(400, f"messages[{i}].tool_calls: each call needs a function with a name", param="messages")
        if not isinstance(function.get("arguments", ""), str | dict):
            raise ApiError(400, f"messages[{i}].tool_calls: arguments must be a JSON string", param="messages")
    return [{"id": c.get("id", ""), "type": "function", "function": c["function"]} for c in calls]
