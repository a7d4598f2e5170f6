"""Streaming a reply to an API client: the thread that drives the reply, the SSE framing, the response objects
(chat vs text completion) and the record of finished generations (``/v1/internal/generations``).

A client that goes away has its generation cancelled within a token.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import asdict, dataclass, replace

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from backends.base import CancelToken, Usage
from webui.api.auth import error_body
from webui.api.errors import error_response, status_of
from webui.chat.reply import Reply
from webui.chat.tools import CallDelta, Parsed, ToolCallError, ToolUse

RECENT = 32  # finished generations kept for /v1/internal/generations
DISCONNECT_POLL_S = 0.02


@dataclass
class Finished:
    """What happened to one API generation (for /v1/internal/generations and the disconnect tests)."""

    id: str
    model: str
    finish_reason: str | None
    completion_tokens: int
    disconnected: bool
    cancel_to_end_ms: float | None  # from the disconnect to the generation giving up the engine
    cancelled_at: float | None  # wall clock (epoch ms) when the server saw the client go: a client's own clock
    ended_at: float | None  # … and when the generation gave the engine up (to time a client's abort end to end)


class Generations:
    """The last :data:`RECENT` finished API generations (one record per server, shared by its requests)."""

    def __init__(self) -> None:
        self._recent: deque[Finished] = deque(maxlen=RECENT)
        self._lock = threading.Lock()

    def record(self, final: Reply, pump: Pump, gen_id: str = "", model: str = "") -> None:
        latency = None
        if pump.cancelled_at is not None and pump.ended_at is not None:
            latency = round(max(0.0, pump.ended_at - pump.cancelled_at) * 1000, 2)
        usage = final.usage or Usage()
        with self._lock:
            self._recent.append(Finished(gen_id, model, final.finish_reason, usage.completion_tokens,
                                         pump.cancelled_at is not None, latency, pump.cancelled_wall_ms,
                                         pump.ended_wall_ms))  # fmt: skip

    def listing(self) -> list[dict]:
        with self._lock:
            return [asdict(f) for f in self._recent]


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
        self.cancelled_wall_ms: float | None = None
        self.ended = threading.Event()
        self.ended_at: float | None = None
        self.ended_wall_ms: float | None = None
        self.final: Reply | None = None  # the last Reply, once the generation has ended
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
                                  list(reply.logprobs), failure=reply.failure)  # fmt: skip
        except Exception as exc:  # a bug, not a user error: reported to the client, the server keeps serving
            final = Reply(done=True, error=f"internal error: {type(exc).__name__}: {exc}", failure=exc)
        finally:
            with contextlib.suppress(Exception):
                self._replies.close()
            self.ended_at = time.perf_counter()
            self.ended_wall_ms = round(time.time() * 1000, 1)
            self.final = final
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
            self.cancelled_wall_ms = round(time.time() * 1000, 1)
            self.cancel.cancel()


async def _watch_disconnect(request: Request, pump: Pump) -> None:
    """Cancel the generation as soon as the client goes away (before streaming begins, or not streaming)."""
    while not pump.ended.is_set():
        if await request.is_disconnected():
            pump.stop()
            return
        await asyncio.sleep(DISCONNECT_POLL_S)


# -- responses---------------------------------------------------------------------------------------


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


def _finish(reason: str | None, calls: bool = False) -> str:
    if calls:
        return "tool_calls"
    return "length" if reason == "length" else "stop"


INVALID_CALL = 422  # the model's call does not parse or match its schema (not retried by clients, unlike 5xx)


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
    tools: ToolUse | None = None  # chat with tools: the reply's calls are parsed out of its text

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

    def tool_delta(self, piece: CallDelta) -> dict:
        """A chunk carrying a piece of a call as OpenAI streams it: ``delta.tool_calls`` with the call's index,
        its id, type and name in the first piece, then fragments of its arguments."""
        call: dict = {"index": piece.index}
        if piece.id is not None:
            call.update(id=piece.id, type="function", function={"name": piece.name, "arguments": piece.arguments})
        else:
            call["function"] = {"arguments": piece.arguments}
        choice = {"index": 0, "delta": {"tool_calls": [call]}, "finish_reason": None, "logprobs": None}
        return self.envelope([choice], True)

    def envelope(self, choices: list[dict], streaming: bool) -> dict:
        kind = ("chat.completion.chunk" if streaming else "chat.completion") if self.chat else "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model, "choices": choices}

    def whole(self, final: Reply) -> dict:
        """The non-streamed response; raises ToolCallError when the reply holds a call that is not valid."""
        if self.tools is not None:
            calls = self.tools.filter()
            content = calls.feed(final.text)
            calls.progress()  # the same ids and argument text as a stream would send
            parsed = calls.finish(final.finish_reason)
            choice = self.choice(content + parsed.content, _finish(final.finish_reason, bool(parsed.calls)), False,
                                 final.logprobs)  # fmt: skip
            if parsed.calls:
                choice["message"]["tool_calls"] = [c.as_dict() for c in parsed.calls]
                choice["message"]["content"] = choice["message"]["content"] or None
        else:
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


async def respond(request: Request, pump: Pump, shape: Shape, stream: bool, record: Callable) -> object:
    """Wait for the first piece; errors before any text get a status code (by the failure's type), then stream
    or collect."""
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
        status, code = status_of(first.failure)
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
            status, code = status_of(final.failure)
            return error_response(max(status, 500) if text else status, final.error, code)
        try:
            return JSONResponse(shape.whole(final))
        except ToolCallError as exc:
            return error_response(INVALID_CALL, str(exc), "invalid_tool_call")
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
        calls = shape.tools.filter() if shape.tools is not None else None
        item = first
        while isinstance(item, tuple):
            text = calls.feed(item[0]) if calls is not None else item[0]
            if text:  # held back while it may be a tool call
                yield _sse(shape.envelope([shape.choice(text, None, True, item[1] if text == item[0] else [])], True))
            for delta in calls.progress() if calls is not None else ():  # calls as they are written
                yield _sse(shape.tool_delta(delta))
            item = await pump.next()
        final = item
        parsed = Parsed("")
        if not final.error and calls is not None:
            try:
                parsed = calls.finish(final.finish_reason)
            except ToolCallError as exc:
                final = replace(final, error=str(exc), failure=exc)
        if final.error:
            if isinstance(final.failure, ToolCallError):
                yield _sse(error_body(INVALID_CALL, final.error, "invalid_tool_call"))
            else:
                status, code = status_of(final.failure)
                yield _sse(error_body(max(status, 500), final.error, code))
        else:
            if parsed.content:
                yield _sse(shape.envelope([shape.choice(parsed.content, None, True)], True))
            for delta in calls.rest(parsed) if calls is not None else ():  # calls that did not stream live
                yield _sse(shape.tool_delta(delta))
            end = shape.envelope([shape.choice(None, _finish(final.finish_reason, bool(parsed.calls)), True)], True)
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
    """Record a stream the client left: what the generation had done when it stopped (its tokens so far)."""
    pump.ended.wait(timeout=600)
    final = pump.final or Reply(done=True)
    record(replace(final, finish_reason=final.finish_reason or "cancelled"), pump)
