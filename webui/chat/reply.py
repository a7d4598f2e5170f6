"""What a reply looks like as it streams, and the small helpers every face uses to show it.

The generating itself is :class:`webui.chat.service.Chat` (the one path from a message to a streamed reply).
Errors become a final :class:`Reply` with ``error`` set (and ``failure``, the typed exception, for faces that
tell failures apart): front ends show it and keep running.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from backends.base import Usage
from webui.chat.conversation import Conversation
from webui.chat.prompting import PromptPlan
from webui.chat.sampling import default_params, unknown_settings

__all__ = ["MAX_MESSAGE_CHARS", "Reply", "default_params", "format_stats", "prompt_messages", "throttle",
           "unknown_settings"]  # fmt: skip

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
    failure: Exception | None = field(default=None, repr=False)  # the typed error behind ``error``, if any
    note: str = ""  # a line for the user that is no error (a tool call waits for approval, the tool rounds ran out)


def prompt_messages(conversation: Conversation, system: str = "", upto: int | None = None) -> list[dict]:
    """The messages the model sees: the system prompt, then the conversation (its first ``upto`` messages).

    The one place a prompt's messages are assembled; chat modes and characters plug in here.
    """
    head = [{"role": "system", "content": system}] if system.strip() else []
    return head + conversation.chat_messages(upto)


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
    if usage.cached_tokens:  # a llama.cpp slot held this conversation's start: not read again
        parts.append(f"prompt cached: {usage.cached_tokens} tokens")
    if usage.draft_tokens:  # speculative decoding: the share of guessed tokens the model kept
        parts.append(f"draft accepted {100 * usage.draft_accepted / usage.draft_tokens:.0f} %")
    if finish_reason == "cancelled":
        parts.append("stopped")
    elif finish_reason == "length":
        parts.append("hit the token limit")
    return " | ".join(parts)
