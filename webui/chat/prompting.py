"""The exact prompt a chat action sends: rendered in the model's format and fitted into its context.

Three shapes of prompt, all rendered by the chosen template (:mod:`webui.templates.render`):

- a reply: the conversation, then the template's generation prompt;
- a reply that must start with given text (continue, "start reply with"): the assistant's turn is opened
  exactly as the template would open it and the text follows, so the model goes on from there;
- an impersonation: a user turn is opened instead, and the model writes the user's next message.

When the conversation does not fit, the oldest turns are left out (whole turns, from the front), never a
system message (the system prompt, a character's context) and never the newest message: a long chat keeps
working instead of failing with "the prompt is too long".

In a character mode (:mod:`webui.chat.modes`) the messages are first put the way the mode puts them: in
chat mode the persona joins the system message and the three shapes apply as above; chat-instruct writes
the transcript into one instruction and opens the reply with ``Name:`` (then the prefix). Impersonating in
chat-instruct uses the chat shape: the instruction asks for the character's reply, not the user's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from backends.base import PromptTooLong
from webui.characters.store import Character
from webui.chat.modes import (
    CHAT_INSTRUCT,
    INSTRUCT,
    add_stop,
    chat_instruct_messages,
    chat_messages,
    check_mode,
    has_system_role,
    open_line,
)
from webui.chat.options import PLAIN, TurnOptions
from webui.chat.tools import Tool, ToolChoice, prepare
from webui.engine import Engine
from webui.templates.library import PRESETS_DIR
from webui.templates.render import Prompt, TemplateError, build_chat_prompt, stops_between

# Stands in for the text of a turn, so the template shows where that text starts and what closes its turn.
SENTINEL = "InglenookTurnSentinel51c"


@dataclass
class PromptPlan:
    """What will be sent: the text, its stop strings, the format and why it was chosen, and its size."""

    text: str
    stop: list[str]
    template: str
    chosen_by: str
    tokens: int
    context_length: int
    dropped: int = 0  # oldest messages left out so the prompt fits

    def summary(self) -> str:
        """The line the chat tab shows: ``prompt 1,234 / 2,048 tokens``."""
        line = f"prompt {self.tokens:,} / {self.context_length:,} tokens"
        if self.dropped:
            line += f" · {self.dropped} oldest message{'s' if self.dropped != 1 else ''} left out to fit"
        return line


def render_prompt(
    messages: list[dict],
    info,
    *,
    choice: str | None = None,
    prefix: str = "",
    impersonate: bool = False,
    presets: Path = PRESETS_DIR,
    mode: str = INSTRUCT,
    character: Character | None = None,
    tools: tuple[Tool, ...] = (),
    tool_choice: ToolChoice | None = None,
) -> Prompt:
    """The prompt text for ``messages`` in one of the three shapes, in ``mode`` (see the module docstring);
    ``tools`` and their calls and results written the way the template takes them (:func:`webui.chat.tools.prepare`)."""
    check_mode(mode)
    choice_of_tools = tool_choice or ToolChoice("auto" if tools else "none")
    messages, native_tools = prepare(messages, list(tools), choice_of_tools, info, choice, presets)
    if mode == INSTRUCT or character is None:
        return _shaped(messages, info, choice, prefix, impersonate, presets, native_tools)
    if mode == CHAT_INSTRUCT and not impersonate:
        prompt = build_chat_prompt(chat_instruct_messages(messages, character), info, True, choice, presets)
        prompt = open_line(prompt, character.name)
        prompt.text += f" {prefix}" if prefix else ""
    else:
        shaped = chat_messages(messages, character, has_system_role(info, choice, presets))
        prompt = _shaped(shaped, info, choice, prefix, impersonate, presets)
    # stop where the model starts writing the other side's line
    return add_stop(prompt, f"\n{character.name}:" if impersonate else f"\n{character.user}:")


def _shaped(
    messages: list[dict], info, choice: str | None, prefix: str, impersonate: bool, presets: Path,
    tools: list[dict] | None = None,
) -> Prompt:  # fmt: skip
    """``messages`` rendered as a reply, a reply opened with ``prefix``, or an impersonation."""
    if impersonate:
        turn = [*messages, {"role": "user", "content": SENTINEL}]
        opened = build_chat_prompt(turn, info, True, choice, presets, tools)
        cut = opened.text.find(SENTINEL)
        if cut < 0:
            raise TemplateError(f"template {opened.template!r} hides the user's text, so it cannot impersonate")
        stops = stops_between(opened.text[cut + len(SENTINEL) :], info.bos_token, info.eos_token)
        return Prompt(opened.text[:cut] + prefix, stops, opened.template, opened.chosen_by)
    if prefix:
        turn = [*messages, {"role": "assistant", "content": SENTINEL}]
        opened = build_chat_prompt(turn, info, False, choice, presets, tools)
        cut = opened.text.find(SENTINEL)
        if cut >= 0:
            return Prompt(opened.text[:cut] + prefix, opened.stop, opened.template, opened.chosen_by)
        # a template that drops a final assistant turn: open the reply with its generation prompt instead
    prompt = build_chat_prompt(messages, info, True, choice, presets, tools)
    prompt.text += prefix
    return prompt


MAX_CHARS_PER_TOKEN = 128  # no tokenizer's token is longer: text beyond n_ctx × this cannot fit, uncounted


def _chars(messages: list[dict], start: int) -> int:
    return sum(len(str(m.get("content") or "")) for i, m in enumerate(messages)
               if m.get("role") == "system" or i >= start)  # fmt: skip


def _first_that_can_fit(messages: list[dict], starts: list[int], n_ctx: int) -> int:
    """The first turn start whose text could fit ``n_ctx`` tokens, judged by length alone (no tokenizer, no
    engine lock): a request of megabytes is refused, or cut to its newest turns, before it is tokenized.
    Raises ValueError when even the newest message (with the system prompt) is too long."""
    limit = n_ctx * MAX_CHARS_PER_TOKEN
    for start in starts:
        if _chars(messages, start) <= limit:
            return start
    raise ValueError(
        f"the prompt is {_chars(messages, starts[-1]):,} characters even with only the newest message: more than a "
        f"context of {n_ctx:,} tokens can hold; shorten the message or load the model with a larger context length"
    )


def plan_prompt(
    engine: Engine,
    messages: list[dict],
    options: TurnOptions = PLAIN,
    *,
    impersonate: bool = False,
    reserve: int = 0,
    presets: Path = PRESETS_DIR,
) -> PromptPlan:
    """Render ``messages`` and fit them into the loaded model's context, leaving ``reserve`` tokens for the reply.

    ``options``: the template choice, the text the reply starts with (``start_with``), the mode and character,
    and the model the prompt is for (``model``, the API's ``model`` field; default the active one). Tokens are
    counted with the active model's tokenizer. ``impersonate``: the model writes the user's next message.

    ``reserve`` is capped at half the context, so a large max-new-tokens setting cannot crowd out the chat.
    Raises ValueError (TemplateError, or PromptTooLong saying how long the newest message is) if nothing fits.
    """
    info = options.model or engine.info
    if info is None:
        raise ValueError("no model is loaded")
    choice, prefix, mode, character = options.template, options.start_with, options.mode or INSTRUCT, options.character
    n_ctx = info.context_length
    budget = n_ctx - min(max(reserve, 0), n_ctx // 2)

    def attempt(start: int) -> PromptPlan:
        kept = [m for i, m in enumerate(messages) if m.get("role") == "system" or i >= start]
        prompt = render_prompt(
            kept, info, choice=choice, prefix=prefix, impersonate=impersonate, presets=presets, mode=mode,
            character=character, tools=options.tools, tool_choice=options.tool_choice,
        )  # fmt: skip
        dropped = len(messages) - len(kept)
        too_long = n_ctx > 0 and len(prompt.text) > n_ctx * MAX_CHARS_PER_TOKEN  # cannot fit: not tokenized
        tokens = len(prompt.text) // MAX_CHARS_PER_TOKEN + 1 if too_long else engine.count_tokens(prompt.text)
        return PromptPlan(prompt.text, prompt.stop, prompt.template, prompt.chosen_by, tokens, n_ctx, dropped)

    # Turns start at a user message; the newest message always stays. Fewer messages, fewer tokens: bisect.
    body = [i for i, m in enumerate(messages) if m.get("role") != "system"]
    starts = [i for i in body[1:] if messages[i].get("role") == "user"]
    if body and (not starts or starts[-1] != body[-1]):
        starts.append(body[-1])
    first = _first_that_can_fit(messages, [0, *starts], n_ctx) if n_ctx > 0 else 0
    starts = [i for i in starts if i >= first]
    plan = attempt(first)
    if plan.tokens <= budget or n_ctx <= 0:
        return plan
    lo, hi, best = 0, len(starts) - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        candidate = attempt(starts[mid])
        if candidate.tokens <= budget:
            best, hi = candidate, mid - 1
        else:
            lo = mid + 1
    if best is not None:
        return best
    smallest = attempt(starts[-1]) if starts else plan
    if smallest.tokens < n_ctx:  # fits, with less room for the reply than asked for
        return smallest
    raise PromptTooLong(
        f"the prompt is {smallest.tokens:,} tokens even with only the newest message, but the context holds "
        f"{n_ctx:,}; shorten the message or load the model with a larger context length"
    )
