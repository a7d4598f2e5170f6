"""The one path from a user's message to a streamed reply.

The UI, the CLI (and later the API) all call :func:`stream_chat` or
:func:`stream_completion`, so a prompt format or sampling choice acts the same
everywhere. Errors become a final :class:`Reply` with ``error`` set: front ends
show it and keep running.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace

from backends.base import CancelToken, GenerationError, ModelLoadError, SamplingParams, Usage
from webui.engine import Engine
from webui.history import Conversation, HistoryError, HistoryStore
from webui.templates import build_chat_prompt

MAX_MESSAGE_CHARS = 1_000_000


@dataclass
class Reply:
    """The reply so far; the last one has ``done`` set."""

    text: str = ""
    done: bool = False
    finish_reason: str | None = None
    usage: Usage | None = None
    error: str | None = None
    ignored_params: list[str] = field(default_factory=list)
    raw_text: str = ""  # the model's own text when an extension's output_modifier changed ``text``


def default_params() -> SamplingParams:
    """Sensible chat defaults until presets arrive: mild temperature, min-p, a light repetition penalty."""
    return SamplingParams(max_new_tokens=512, temperature=0.7, top_p=0.9, top_k=40, min_p=0.05, repetition_penalty=1.1)


def stream_chat(
    engine: Engine, messages: list[dict], params: SamplingParams, cancel: CancelToken | None = None
) -> Iterator[Reply]:
    """Stream the assistant's reply to ``messages`` (``{"role", "content"}`` dicts, last one the user's)."""
    info = engine.info
    if info is None:
        yield Reply(done=True, error="no model is loaded")
        return
    for m in messages:
        if len(m.get("content", "")) > MAX_MESSAGE_CHARS:
            yield Reply(done=True, error=f"a message is longer than {MAX_MESSAGE_CHARS:,} characters")
            return
    messages = engine.extensions.chat_messages(messages, info.name)  # input, chat input, history modifiers
    try:
        prompt = build_chat_prompt(messages, info)
    except ValueError as exc:
        yield Reply(done=True, error=str(exc))
        return
    params = replace(params, stop=[*params.stop, *(s for s in prompt.stop if s not in params.stop)])
    text, prefix = engine.extensions.chat_prompt(prompt.text, messages, info.name)  # custom prompt, bot prefix
    yield from _generate(engine, text, params, cancel, "chat", prefix)


def chat_turn(
    engine: Engine,
    store: HistoryStore,
    conversation: Conversation,
    text: str,
    params: SamplingParams,
    system: str = "",
    cancel: CancelToken | None = None,
) -> Iterator[Reply]:
    """One exchange of a saved conversation: the user's message is saved before generation starts,
    the reply (with its stats line) as soon as it ends, stopped or not. A crash loses at most the reply
    in flight. A reply that failed before producing any text takes its message back out.
    """
    try:
        conversation.append("user", text)
    except HistoryError as exc:
        yield Reply(done=True, error=str(exc))
        return
    store.save(conversation)
    messages = ([{"role": "system", "content": system}] if system.strip() else []) + conversation.chat_messages()
    final = Reply(done=True)
    for reply in stream_chat(engine, messages, params, cancel):
        final = reply
        if not reply.done:
            yield reply
    if final.text.strip():
        conversation.append("assistant", final.text, format_stats(final.usage, final.finish_reason))
    else:
        conversation.remove_last()
        final.error = final.error or "the model produced no text"
    store.save(conversation)
    yield final


def stream_completion(
    engine: Engine, prompt: str, params: SamplingParams, cancel: CancelToken | None = None
) -> Iterator[Reply]:
    """Stream a raw continuation of ``prompt`` (the notebook, ``inglenook run``)."""
    info = engine.info
    prompt = engine.extensions.completion_prompt(prompt, info.name if info else None)  # input modifiers
    yield from _generate(engine, prompt, params, cancel, "completion")


def _generate(
    engine: Engine, prompt: str, params: SamplingParams, cancel: CancelToken | None, mode: str, prefix: str = ""
) -> Iterator[Reply]:
    """Generate from a finished prompt; extensions see the parameters before and the reply after."""
    model = engine.info.name if engine.info else None
    params = engine.extensions.sampling(params, mode, model)  # state modifiers
    reply = Reply(text=prefix, ignored_params=engine.ignored_params(params))
    try:
        for chunk in engine.generate(prompt, params, cancel):
            if chunk.text:
                reply.text += chunk.text
                yield reply
            if chunk.finish_reason:
                reply.finish_reason, reply.usage = chunk.finish_reason, chunk.usage
    except (GenerationError, ModelLoadError, ValueError) as exc:
        reply.error = str(exc)
    reply.raw_text = reply.text
    reply.text = engine.extensions.output(reply.text, reply.usage, reply.finish_reason, mode, model)
    reply.done = True
    yield reply


def throttle(replies: Iterable[Reply], interval_s: float) -> Iterator[Reply]:
    """Pass on at most one update per ``interval_s``, and always the last one.

    A browser can redraw a few dozen times a second; a fast model produces
    hundreds of tokens a second. Sending every token makes the page fall
    behind, so updates are coalesced (the text is cumulative, nothing is lost).
    """
    last_sent = 0.0
    for reply in replies:
        now = time.perf_counter()
        if reply.done or now - last_sent >= interval_s:
            last_sent = now
            yield reply


def format_stats(usage: Usage | None, finish_reason: str | None = None) -> str:
    """The line under each reply: time to first token | tokens | speed."""
    if usage is None:
        return ""
    parts = [
        f"time to first token {usage.ttft_s * 1000:.0f} ms",
        f"{usage.completion_tokens} tokens",
        f"{usage.tokens_per_s:.1f} tok/s",
    ]
    if finish_reason == "cancelled":
        parts.append("stopped")
    elif finish_reason == "length":
        parts.append("hit the token limit")
    return " | ".join(parts)
