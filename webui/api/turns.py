"""One generation for the Anthropic Messages and the Responses endpoints, read back as text pieces and how it
ended; each endpoint renders those in its own shape (:mod:`webui.api.anthropic`, :mod:`webui.api.responses`).

It is the OpenAI routes' path: the model a request names (:mod:`webui.api.lookup`), the one sampling policy
(:func:`webui.chat.sampling.resolve_params`: model rule → preset → request), the :class:`~webui.chat.service.Chat`
service (templates, extensions, context fitting), the engine's fair queue, the :class:`~webui.api.stream.Pump`
that cancels a generation within a token when its client goes away, and the record of finished generations.

Stop sequences the request names are matched here, not by the loader, so the answer can say which one stopped
the reply (Anthropic's ``stop_sequence``); the generation is cancelled as soon as one appears.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace
from typing import Any

from fastapi import Request
from pydantic import BaseModel

from backends.base import CancelToken, SamplingParams, StopMatcher
from webui.api.errors import status_of
from webui.api.lookup import find_preset, use_model
from webui.api.stream import Generations, Pump, _record_when_ended, _watch_disconnect
from webui.api.types import ApiError
from webui.app import App
from webui.chat.prompting import PromptPlan
from webui.chat.reply import Reply, throttle
from webui.chat.sampling import resolve_params, rule_settings
from webui.chat.service import TurnOptions

SAMPLING_FIELDS = frozenset(f.name for f in fields(SamplingParams))


def new_id(prefix: str) -> str:
    """``prefix`` + 24 random hex digits (``msg_…``, ``resp_…``)."""
    return prefix + secrets.token_hex(12)


def sampling_extras(body: BaseModel) -> dict[str, Any]:
    """Body fields beyond the endpoint's own that are named like a :class:`SamplingParams` field (``min_p``,
    ``repetition_penalty``, ``grammar`` …): applied as on the OpenAI routes, checked by the policy."""
    return {k: v for k, v in (body.model_extra or {}).items() if k in SAMPLING_FIELDS}


@dataclass
class Ended:
    """How a generation ended. ``reason``: "end" (the model finished), "length" (the token limit),
    "stop_sequence" (``stop_sequence`` appeared) or "error" (``reply.error``)."""

    reply: Reply
    reason: str
    stop_sequence: str | None
    input_tokens: int
    output_tokens: int

    def raise_if_failed(self) -> None:
        """An error before any text: the failure's status (by its type), in the endpoint's error shape."""
        if self.reason == "error":
            status, code = status_of(self.reply.failure)
            raise ApiError(status, self.reply.error or "the generation failed", code)


class Turn:
    """A started generation: :meth:`next` gives text pieces, then an :class:`Ended`."""

    def __init__(self, pump: Pump, plan: list[PromptPlan], stops: list[str], skip: int, done) -> None:
        self.pump = pump
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

    async def next(self) -> str | Ended:
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

    async def first(self, request: Request) -> str | Ended:
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
        """The whole reply (not streamed), cancelled if the client leaves; a failure raises its ApiError."""
        watcher = asyncio.create_task(_watch_disconnect(request, self.pump))
        text = ""
        try:
            while isinstance(piece := await self.next(), str):
                text += piece
        finally:
            watcher.cancel()
            self.pump.stop()  # no-op when finished
        if piece.reason == "error":
            status, code = status_of(piece.reply.failure)
            raise ApiError(max(status, 500) if text else status, piece.reply.error or "the generation failed", code)
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
) -> tuple[Turn, str]:  # fmt: skip
    """Start a chat generation for ``messages`` (``{"role", "content"}`` dicts) as the OpenAI chat route does:
    the named model (loaded if needed), the sampling policy with ``explicit`` as the request's layer,
    ``prefill`` as the start of the reply (not sent back). Returns the turn and the model's name."""
    info = await use_model(app, model, request)
    try:
        resolved = resolve_params(
            start=SamplingParams(max_new_tokens=max(1, info.context_length)), rule=rule_settings(info),
            preset=find_preset(app, preset), explicit=explicit,
        )  # fmt: skip
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None
    cancel = CancelToken()
    plan: list[PromptPlan] = []
    options = TurnOptions(model=info, cancel=cancel, start_with=prefill)
    replies = _noting_plan(app.chat.stream(messages, resolved.params, options), plan)
    pump = Pump(throttle(replies, app.settings.stream_interval_s), cancel)

    def done(final: Reply, p: Pump) -> None:
        record.record(final, p, gen_id, info.name)

    return Turn(pump, plan, [s for s in stops or [] if s], len(prefill), done), info.name
