"""The one path from a user's message to a streamed reply.

The UI, the CLI (and later the API) all call :func:`stream_chat` or
:func:`stream_completion`, so a prompt format or sampling choice acts the same
everywhere. Errors become a final :class:`Reply` with ``error`` set: front ends
show it and keep running.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from backends.base import CancelToken, GenerationError, ModelInfo, ModelLoadError, SamplingParams, Usage
from webui.characters.store import Character
from webui.chat.conversation import Conversation, HistoryError
from webui.chat.history import HistoryStore
from webui.chat.modes import CHAT_INSTRUCT, INSTRUCT
from webui.chat.prompting import PromptPlan, plan_prompt
from webui.engine import Engine

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
    logprobs: list[dict] = field(default_factory=list)  # per token, when SamplingParams.logprobs >= 0
    prompt: PromptPlan | None = None  # what was sent (chat replies): its size, format, and turns left out
    raw_text: str = ""  # the model's own text when an extension's output_modifier changed ``text``


def default_params(settings: dict | None = None) -> SamplingParams:
    """Sensible chat defaults until presets arrive: mild temperature, min-p, a light repetition penalty.

    ``settings`` (a ``presets/models.yaml`` rule's defaults for the loaded model) override them; names
    that are not sampling parameters are left out (:func:`unknown_settings` names them).
    """
    params = SamplingParams(
        max_new_tokens=512, temperature=0.7, top_p=0.9, top_k=40, min_p=0.05, repetition_penalty=1.1
    )
    known = {f.name for f in fields(SamplingParams)}
    return replace(params, **{k: v for k, v in (settings or {}).items() if k in known})


def unknown_settings(settings: dict | None) -> list[str]:
    """Names in a models.yaml rule's ``settings:`` that are not sampling parameters (a typo, usually)."""
    known = {f.name for f in fields(SamplingParams)}
    return sorted(k for k in (settings or {}) if k not in known)


def prompt_messages(conversation: Conversation, system: str = "", upto: int | None = None) -> list[dict]:
    """The messages the model sees: the system prompt, then the conversation (its first ``upto`` messages).

    The one place a prompt's messages are assembled; chat modes and characters plug in here.
    """
    head = [{"role": "system", "content": system}] if system.strip() else []
    return head + conversation.chat_messages()[:upto]


def stream_chat(
    engine: Engine,
    messages: list[dict],
    params: SamplingParams,
    cancel: CancelToken | None = None,
    *,
    template: str | None = None,
    prefix: str = "",
    impersonate: bool = False,
    mode: str = INSTRUCT,
    character: Character | None = None,
    model: ModelInfo | None = None,
) -> Iterator[Reply]:
    """Stream the assistant's reply to ``messages`` (``{"role", "content"}`` dicts, last one the user's),
    in a chat mode (:mod:`webui.chat.modes`; instruct unless told, spoken by ``character``).

    ``template`` is the user's choice of prompt template (None: chosen for the model). A ``prefix`` is
    text the reply starts with (kept in ``Reply.text``); ``impersonate`` makes the model write the user's
    next message instead. The oldest turns are left out when the conversation outgrows the context.
    ``model``: the model to answer with (the API's ``model`` field); default the active one.
    """
    info = model or engine.info
    if info is None:
        yield Reply(done=True, error="no model is loaded")
        return
    for m in [*messages, {"content": prefix}]:
        if len(m.get("content", "")) > MAX_MESSAGE_CHARS:
            yield Reply(done=True, error=f"a message is longer than {MAX_MESSAGE_CHARS:,} characters")
            return
    messages = engine.extensions.chat_messages(messages, info.name)  # input, chat input, history modifiers
    try:
        plan = plan_prompt(
            engine, messages, choice=template, prefix=prefix, impersonate=impersonate, reserve=params.max_new_tokens,
            mode=mode, character=character, info=info,
        )  # fmt: skip
    except ValueError as exc:
        yield Reply(done=True, error=str(exc))
        return
    params = replace(params, stop=[*params.stop, *(s for s in plan.stop if s not in params.stop)])
    text, head = plan.text, prefix
    if not impersonate:  # an impersonation is the user's line: no custom prompt, bot prefix or output hook
        text, bot_prefix = engine.extensions.chat_prompt(plan.text, messages, info.name)  # custom prompt, bot prefix
        head += bot_prefix
    strip = mode == CHAT_INSTRUCT and character is not None and not head and not impersonate
    for reply in _generate(engine, text, params, cancel, "chat", model):
        body = reply.text.lstrip() if strip else reply.text  # the prompt ends "Name:"; a space follows
        reply = replace(
            reply, text=head + body if body or not reply.error else body, prompt=plan,
            ignored_params=list(reply.ignored_params),
        )  # fmt: skip
        yield _finished(engine, reply, "chat", info.name) if reply.done and not impersonate else reply


def reply_in(
    engine: Engine,
    conversation: Conversation,
    messages: list[dict],
    params: SamplingParams,
    cancel: CancelToken | None,
    *,
    template: str | None,
    prefix: str,
    character: Character | None,
) -> Generator[Reply, None, Reply]:
    """Stream a reply in ``conversation``'s mode: yield the updates, return the final Reply (``yield from``),
    so an action that saves the conversation can look at it after the stream."""
    final = Reply(done=True)
    for reply in stream_chat(
        engine, messages, params, cancel, template=template, prefix=prefix, mode=conversation.mode,
        character=character,
    ):  # fmt: skip
        final = reply
        if not reply.done:
            yield reply
    return final


def chat_turn(
    engine: Engine,
    store: HistoryStore,
    conversation: Conversation,
    text: str,
    params: SamplingParams,
    system: str = "",
    cancel: CancelToken | None = None,
    character: Character | None = None,
    *,
    template: str | None = None,
    start_with: str = "",
) -> Iterator[Reply]:
    """One exchange of a saved conversation (in its ``mode``, spoken by ``character`` if one is given):
    the user's message is saved before generation starts,
    the reply (with its stats line) as soon as it ends, stopped or not. A crash loses at most the reply
    in flight. A reply that failed before producing any text takes its message back out.
    ``start_with`` is text the reply must begin with; it is kept in the saved reply.
    """
    try:
        conversation.append("user", text)
    except HistoryError as exc:
        yield Reply(done=True, error=str(exc))
        return
    store.save(conversation)
    messages = prompt_messages(conversation, system)
    final = yield from reply_in(
        engine, conversation, messages, params, cancel, template=template, prefix=start_with, character=character
    )
    if final.text.strip():
        conversation.append("assistant", final.text, format_stats(final.usage, final.finish_reason), final.raw_text)
    else:
        conversation.remove_last()
        final.error = final.error or "the model produced no text"
    store.save(conversation)
    yield final


def stream_completion(
    engine: Engine,
    prompt: str,
    params: SamplingParams,
    cancel: CancelToken | None = None,
    model: ModelInfo | None = None,
) -> Iterator[Reply]:
    """Stream a raw continuation of ``prompt`` (the notebook, ``inglenook run``, the API)."""
    info = model or engine.info
    name = info.name if info else None
    prompt = engine.extensions.completion_prompt(prompt, name)  # input modifiers
    for reply in _generate(engine, prompt, params, cancel, "completion", model):
        yield _finished(engine, reply, "completion", name) if reply.done else reply


def _generate(
    engine: Engine, prompt: str, params: SamplingParams, cancel: CancelToken | None, mode: str, model: ModelInfo | None
) -> Iterator[Reply]:
    """Generate from a finished prompt (with ``model``, default the active one); extensions see the
    parameters first. The caller runs the output hooks on the last reply (:func:`_finished`)."""
    info = model or engine.info
    params = engine.extensions.sampling(params, mode, info.name if info else None)  # state modifiers
    reply = Reply(ignored_params=engine.ignored_params(params))
    try:
        for chunk in engine.generate(prompt, params, cancel, Path(model.path) if model else None):
            if chunk.text:
                reply.text += chunk.text
                if chunk.logprobs:
                    reply.logprobs += chunk.logprobs
                yield reply
            if chunk.finish_reason:
                reply.finish_reason, reply.usage = chunk.finish_reason, chunk.usage
    except (GenerationError, ModelLoadError, ValueError) as exc:
        reply.error = str(exc)
    reply.done = True
    yield reply


def _finished(engine: Engine, reply: Reply, mode: str, model: str | None) -> Reply:
    """The last reply as front ends show and save it: extensions' output modifiers applied, the
    model's own text kept in ``raw_text``."""
    text = engine.extensions.output(reply.text, reply.usage, reply.finish_reason, mode, model)
    return replace(reply, text=text, raw_text=reply.text, ignored_params=list(reply.ignored_params))


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
