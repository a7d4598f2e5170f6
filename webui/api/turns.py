"""One generation for the Anthropic Messages and the Responses endpoints, read back as text pieces and how it
ended; each endpoint renders those in its own shape (:mod:`webui.api.anthropic`, :mod:`webui.api.responses`).

It is the OpenAI routes' path: the model a request names (:mod:`webui.api.lookup`), the one sampling policy
(:func:`webui.chat.sampling.resolve_params`: model rule → preset → request), the :class:`~webui.chat.service.Chat`
service (templates, extensions, context fitting), the engine's fair queue, the :class:`~webui.api.stream.Pump`
that cancels a generation within a token when its client goes away, and the record of finished generations.

Stop sequences the request names are matched here, not by the loader, so the answer can say which one stopped
the reply (Anthropic's ``stop_sequence``); the generation is cancelled as soon as one appears.

Tools: the request's tools and choice (:func:`tool_use`, shared with the chat completions route) go to the Chat
service, and the reply's text passes through the core's :class:`~webui.chat.tools.CallFilter`: :meth:`Turn.next`
gives content text, :class:`~webui.chat.tools.CallDelta` pieces of calls as they are written, and at the end
the validated calls in :attr:`Ended.calls` (a broken or invalid call ends the turn as an error, status 422).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field, fields, replace
from typing import Any

from fastapi import Request
from pydantic import BaseModel

from backends.base import CancelToken, ModelInfo, SamplingParams, StopMatcher
from webui.api.errors import status_of
from webui.api.lookup import find_preset, use_model
from webui.api.stream import INVALID_CALL, Generations, Pump, _record_when_ended, _watch_disconnect
from webui.api.types import ApiError
from webui.app import App
from webui.chat.prompting import PromptPlan
from webui.chat.reply import Reply, throttle
from webui.chat.sampling import resolve_params, rule_settings
from webui.chat.service import TurnOptions
from webui.chat.tools import (
    CallDelta,
    CallFilter,
    Tool,
    ToolCall,
    ToolCallError,
    ToolChoice,
    ToolError,
    ToolUse,
    parse_tools,
    tool_format,
    tool_grammar,
)

SAMPLING_FIELDS = frozenset(f.name for f in fields(SamplingParams))


def new_id(prefix: str) -> str:
    """``prefix`` + 24 random hex digits (``msg_…``, ``resp_…``)."""
    return prefix + secrets.token_hex(12)


def sampling_extras(body: BaseModel) -> dict[str, Any]:
    """Body fields beyond the endpoint's own that are named like a :class:`SamplingParams` field (``min_p``,
    ``repetition_penalty``, ``grammar`` …): applied as on the OpenAI routes, checked by the policy."""
    return {k: v for k, v in (body.model_extra or {}).items() if k in SAMPLING_FIELDS}


def read_tools(raw: list | None, kinds: frozenset[str | None], runs_here: str) -> list[Tool]:
    """The request's ``tools`` read by the core. A tool whose ``type`` is not one of ``kinds`` (Anthropic's server
    tools, the Responses API's built-in tools) is a 400 naming its type: this server runs no tool itself, and a
    client should hear that rather than get a reply that silently never searched. ``runs_here`` says what does
    work. Any other bad tool is a 400 naming it."""
    for i, item in enumerate(raw if isinstance(raw, list) else []):
        kind = item.get("type") if isinstance(item, dict) else None
        if isinstance(item, dict) and kind not in kinds:
            raise ApiError(400, f"tools[{i}]: tools of type {kind!r} are not supported: this server runs no "
                           f"built-in or server tools; {runs_here}", param=f"tools[{i}].type")  # fmt: skip
    try:
        return parse_tools(raw)
    except ToolError as exc:
        raise ApiError(400, f"tools: {exc}", param="tools") from None


def read_choice(parse: Callable[[], ToolChoice], reword: Callable[[str], str]) -> ToolChoice:
    """The ``tool_choice`` that ``parse`` reads; its ToolError is a 400 worded by ``reword`` in the endpoint's
    own terms."""
    try:
        return parse()
    except ToolError as exc:
        raise ApiError(400, reword(str(exc)), param="tool_choice") from None


def tool_use(
    app: App, info: ModelInfo, tools: list[Tool], choice: ToolChoice, params: SamplingParams
) -> ToolUse | None:
    """The reply's format for ``info`` with the request's (already parsed) tools; a forced call (``required`` or a
    named function) sets a grammar where the loader takes one. None without tools (results in the history still
    reach the prompt: :func:`webui.chat.tools.prepare`)."""
    if not tools:
        return None
    fmt, _native = tool_format(info, None)
    if choice.forced and "grammar" in app.registry.get(info.loader).supported_params:
        if params.grammar:
            raise ApiError(400, "a required tool call cannot be combined with a grammar or a response format",
                           param="tool_choice")  # fmt: skip
        try:
            params.grammar = tool_grammar(tools, fmt, choice)
        except ToolError as exc:
            raise ApiError(400, str(exc), param="tools") from None
    return ToolUse(tuple(tools), choice, fmt)


def failure_status(reply: Reply) -> tuple[int, str | None]:
    """(status, code) of a failed reply: an invalid tool call is 422 ``invalid_tool_call``, as on the chat route."""
    if isinstance(reply.failure, ToolCallError):
        return INVALID_CALL, "invalid_tool_call"
    return status_of(reply.failure)


@dataclass
class Ended:
    """How a generation ended. ``reason``: "end" (the model finished), "length" (the token limit),
    "stop_sequence" (``stop_sequence`` appeared), "tool_use" (the reply holds ``calls``) or "error"
    (``reply.error``)."""

    reply: Reply
    reason: str
    stop_sequence: str | None
    input_tokens: int
    output_tokens: int
    calls: list[ToolCall] = field(default_factory=list)

    def raise_if_failed(self) -> None:
        """An error before any text: the failure's status (by its type), in the endpoint's error shape."""
        if self.reason == "error":
            status, code = failure_status(self.reply)
            raise ApiError(status, self.reply.error or "the generation failed", code)


class Turn:
    """A started generation: :meth:`next` gives text pieces (and, with tools, :class:`CallDelta` pieces of calls),
    then an :class:`Ended`."""

    def __init__(
        self, pump: Pump, plan: list[PromptPlan], stops: list[str], skip: int, done, tools: ToolUse | None = None
    ) -> None:
        self.pump = pump
        self.tools = tools
        self._calls: CallFilter | None = tools.filter() if tools else None
        self._pending: list[str | CallDelta | Ended] = []
        self._plan = plan
        self._stops = stops
        self._matcher = StopMatcher(stops)
        self._skip = skip  # characters of an assistant prefill the reply starts with (not sent back)
        self._seen = ""  # text fed to the matcher …
        self._passed = 0  # … of which this much was passed on
        self._done = done
        self.ended: Ended | None = None

    @property
    def input_tokens(self) -> int:
        """The prompt's size in tokens (known once the first piece has come)."""
        return self._plan[0].tokens if self._plan else 0

    async def next(self) -> str | CallDelta | Ended:
        """The next piece: content text, a piece of a call, or (last) how it ended."""
        if self._calls is None:
            return await self._next_text()
        while not self._pending:
            item = await self._next_text()
            if isinstance(item, Ended):
                self._pending.extend(self._finish_calls(self._calls, item))
                break
            shown = self._calls.feed(item)
            self._pending.extend([shown] if shown else [])
            self._pending.extend(self._calls.progress())
        return self._pending.pop(0)

    def _finish_calls(self, calls: CallFilter, ended: Ended) -> list[str | CallDelta | Ended]:
        """The held text parsed when the reply ends: the rest of the content, the calls that did not stream live,
        and the Ended with the calls (or the error when a call is broken or does not match its schema)."""
        if ended.reason == "error":
            return [ended]
        try:
            parsed = calls.finish("length" if ended.reason == "length" else None)
        except ToolCallError as exc:
            ended.reason = "error"
            ended.reply = replace(ended.reply, error=str(exc), failure=exc)
            return [ended]
        ended.calls = parsed.calls
        if parsed.calls:
            ended.reason = "tool_use"
        rest: list[str | CallDelta | Ended] = [parsed.content] if parsed.content else []
        return [*rest, *calls.rest(parsed), ended]

    async def _next_text(self) -> str | Ended:
        while self.ended is None:
            item = await self.pump.next()
            if isinstance(item, Reply):
                tail = "" if self._matcher.stopped else self._matcher.flush()
                self._finish(item, None)
                if tail:
                    return tail
                break
            text = item[0]
            if self._skip:
                cut = min(self._skip, len(text))
                text, self._skip = text[cut:], self._skip - cut
            self._seen += text
            out = self._matcher.feed(text)
            if self._matcher.stopped:
                stop = self._which_stop(self._passed + len(out))
                self.pump.cancel.cancel()  # our stop, not the client's leaving: not recorded as a disconnect
                while not isinstance(final := await self.pump.next(), Reply):
                    pass
                self._finish(final, stop)
            self._passed += len(out)
            if out:
                return out
        return self.ended

    async def rest(self, first: str | CallDelta | Ended) -> AsyncIterator[str | CallDelta]:
        """``first`` and every piece after it, up to the end; then :attr:`ended` says how it ended (the stream
        loop of both endpoints)."""
        piece = first
        while not isinstance(piece, Ended):
            yield piece
            piece = await self.next()
        self.ended = piece

    async def first(self, request: Request) -> str | CallDelta | Ended:
        """The first piece; the generation is cancelled if the client leaves while it waits in the queue."""
        watcher = asyncio.create_task(_watch_disconnect(request, self.pump))
        try:
            return await self.next()
        except BaseException:
            self.pump.stop()
            raise
        finally:
            watcher.cancel()

    async def collect(self, request: Request) -> tuple[str, Ended]:
        """The whole reply (not streamed): its content and how it ended (with its calls), cancelled if the client
        leaves; a failure raises its ApiError."""
        watcher = asyncio.create_task(_watch_disconnect(request, self.pump))
        text = ""
        try:
            while not isinstance(piece := await self.next(), Ended):
                text += piece if isinstance(piece, str) else ""
        finally:
            watcher.cancel()
            self.pump.stop()  # no-op when finished
        if piece.reason == "error":
            status, code = failure_status(piece.reply)
            if text and status < 500 and not isinstance(piece.reply.failure, ToolCallError):
                status = 500  # it failed midway: not the request's fault
            raise ApiError(status, piece.reply.error or "the generation failed", code)
        return text, piece

    def close(self) -> None:
        """Let the engine go (a stream whose client left); its record is written when the generation ends."""
        if self.ended is None:
            self.pump.stop()
            asyncio.get_running_loop().run_in_executor(None, _record_when_ended, self.pump, self._done)

    def _which_stop(self, at: int) -> str:
        found = [(i, s) for s in self._stops if (i := self._seen.find(s, at)) >= 0]
        return min(found)[1] if found else self._stops[0]

    def _finish(self, final: Reply, stop: str | None) -> None:
        usage = final.usage
        if final.error:
            reason = "error"
        elif stop is not None:
            reason = "stop_sequence"
        else:
            reason = "length" if final.finish_reason == "length" else "end"
        inputs = usage.prompt_tokens if usage and usage.prompt_tokens else self.input_tokens
        self.ended = Ended(final, reason, stop, inputs, usage.completion_tokens if usage else 0)
        self._done(replace(final, finish_reason="stop") if stop is not None else final, self.pump)


def _noting_plan(replies: Iterator[Reply], plan: list[PromptPlan]) -> Iterator[Reply]:
    """Pass ``replies`` on, keeping the prompt's plan (its token count) from the first."""
    for reply in replies:
        if not plan and reply.prompt is not None:
            plan.append(reply.prompt)
        yield reply


async def begin(
    app: App, request: Request, record: Generations, *, gen_id: str, model: str | None, messages: list[dict],
    explicit: dict[str, Any], preset: str | None = None, stops: list[str] | None = None, prefill: str = "",
    tools: list[Tool] | None = None, choice: ToolChoice | None = None,
) -> tuple[Turn, str]:  # fmt: skip
    """Start a chat generation for ``messages`` (``{"role", "content"}`` dicts, with assistant ``tool_calls`` and
    ``tool`` results as OpenAI's) as the OpenAI chat route does: the named model (loaded if needed), the sampling
    policy with ``explicit`` as the request's layer, ``prefill`` as the start of the reply (not sent back), the
    ``tools`` the model may call as ``choice`` allows. Returns the turn and the model's name."""
    info = await use_model(app, model, request)
    try:
        resolved = resolve_params(
            start=SamplingParams(max_new_tokens=max(1, info.context_length)), rule=rule_settings(info),
            preset=find_preset(app, preset), explicit=explicit,
        )  # fmt: skip
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None
    uses = tool_use(app, info, tools or [], choice or ToolChoice("auto" if tools else "none"), resolved.params)
    cancel = CancelToken()
    plan: list[PromptPlan] = []
    offered = {"tools": uses.tools, "tool_choice": uses.choice} if uses else {}
    options = TurnOptions(model=info, cancel=cancel, start_with=prefill, **offered)
    replies = _noting_plan(app.chat.stream(messages, resolved.params, options), plan)
    pump = Pump(throttle(replies, app.settings.stream_interval_s), cancel)

    def done(final: Reply, p: Pump) -> None:
        record.record(final, p, gen_id, info.name)

    return Turn(pump, plan, [s for s in stops or [] if s], len(prefill), done, uses), info.name
