"""The chat page's sessions: one generation in flight per browser session, driven into named updates.

The chat tab (:mod:`webui.ui.chat_tab`) only wires widgets: it finds the conversation and the options, calls
:class:`ChatSessions`, and maps each :class:`ChatUpdate` onto its outputs. Everything a test would want —
refusing a second send while a reply streams, Stop, cancelling a reply nobody watches any more, what the
chatbot shows while a reply streams and after it ends, putting a message back when it got no reply — lives
here, without Gradio.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

from backends.base import CancelToken, SamplingParams
from webui.chat.history import Conversation
from webui.chat.reply import Reply, throttle
from webui.chat.service import Chat, TurnOptions
from webui.presets import PresetError, params_from_form

STATS_SPAN = re.compile(r"\s*<span class='inglenook-stats'>.*?</span>\s*$", re.DOTALL)
STILL_STREAMING = "A reply is still streaming: wait for it or press Stop."


def display_messages(history: list[dict], pending: Reply | None = None) -> list[dict]:
    """What the chatbot shows: the history, each reply followed by its stats line, then the reply in flight."""
    shown = []
    for m in history:
        content = m["content"]
        if m.get("stats"):
            content = f"{content}\n\n<span class='inglenook-stats'>{m['stats']}</span>"
        shown.append({"role": m["role"], "content": content})
    if pending is not None:
        shown.append({"role": "assistant", "content": pending.text or "…"})
    return shown


def without_stats(content: object) -> str:
    """A message as the user edited it in the chatbot, without the stats line the chatbot showed under it."""
    if isinstance(content, list):  # Gradio may hand back [{"type": "text", "text": ...}]
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return STATS_SPAN.sub("", str(content or ""))


def form_params(sampling: dict) -> SamplingParams:
    """The Parameters tab's values as SamplingParams; ValueError naming a bad key."""
    try:
        return params_from_form(sampling)
    except (PresetError, TypeError) as exc:
        raise ValueError(str(exc)) from exc


@dataclass
class ChatUpdate:
    """One update of the chat page; None leaves that part as it is.

    ``busy``: a reply streams (Send off, Stop on) or not. ``shown``: after the reply, the conversation whose
    picker entry, version label and token count to show.
    """

    message: str | None = None  # the message box
    conversation_id: str | None = None
    chat: list[dict] | None = None  # what the chatbot shows
    note: str | None = None  # the line under the chat
    busy: bool | None = None
    shown: Conversation | None = None


class ChatSessions:
    """The replies in flight, at most one per browser session (per UI; not module-level)."""

    def __init__(self, chat: Chat, interval_s: float) -> None:
        self.chat = chat
        self.interval_s = interval_s
        self._cancels: dict[str, CancelToken] = {}
        self._lock = threading.Lock()

    def busy(self, session: str) -> bool:
        with self._lock:
            return session in self._cancels

    def stop(self, session: str) -> bool:
        """Stop the session's reply; False if none streams."""
        with self._lock:
            token = self._cancels.get(session)
        if token is not None:
            token.cancel()
        return token is not None

    def _begin(self, session: str) -> CancelToken:
        with self._lock:
            token = self._cancels[session] = CancelToken()
        return token

    def _end(self, session: str) -> None:
        with self._lock:
            self._cancels.pop(session, None)

    # ------------------------------------------------------------------ the actions

    def send(
        self, session: str, text: str, sampling: dict, locate: Callable[[], tuple[Conversation, TurnOptions]]
    ) -> Iterator[ChatUpdate]:
        """Send ``text`` in the conversation ``locate()`` finds (called only once the send can go ahead)."""
        text = (text or "").strip()
        if self.busy(session):  # Enter pressed again while this session's reply still streams
            yield ChatUpdate(note=STILL_STREAMING, busy=True)
            return
        if not text:
            yield ChatUpdate(note="Type a message first.")
            return
        try:
            params = form_params(sampling)
        except ValueError as exc:
            yield ChatUpdate(note=f"⚠️ {exc}")
            return
        conv, options = locate()
        cancel = self._begin(session)
        turn = self.chat.turn(conv, text, params, _with_cancel(options, cancel))
        pending = [*conv.ui_history(), {"role": "user", "content": text}]  # the turn saves it on its first step
        yield ChatUpdate(
            message="", conversation_id=conv.id, chat=display_messages(pending, Reply()), note="", busy=True
        )
        yield from self._drive(session, conv, turn, cancel, None, restore=text)

    def again(
        self, session: str, action: str, sampling: dict, locate: Callable[[], tuple[Conversation, TurnOptions]]
    ) -> Iterator[ChatUpdate]:
        """``action`` "regenerate" (a new version of the last reply) or "continue" (extend it)."""
        if self.busy(session):
            yield ChatUpdate(note=STILL_STREAMING, busy=True)
            return
        try:
            params = form_params(sampling)
        except ValueError as exc:
            yield ChatUpdate(note=f"⚠️ {exc}")
            return
        conv, options = locate()
        cancel = self._begin(session)
        replacing = bool(conv.messages) and conv.messages[-1].role == "assistant"
        act = self.chat.continue_reply if action == "continue" else self.chat.regenerate
        turn = act(conv, params, _with_cancel(options, cancel))
        keep = -1 if replacing else None
        yield ChatUpdate(conversation_id=conv.id, chat=display_messages(conv.ui_history()[:keep], Reply()), note="",
                         busy=True)  # fmt: skip
        yield from self._drive(session, conv, turn, cancel, keep)

    def impersonate(
        self, session: str, sampling: dict, locate: Callable[[], tuple[Conversation, TurnOptions]]
    ) -> Iterator[ChatUpdate]:
        """The model writes the user's next line into the message box (from the draft in ``options.start_with``)."""
        if self.busy(session):
            yield ChatUpdate(note=STILL_STREAMING, busy=True)
            return
        try:
            params = form_params(sampling)
        except ValueError as exc:
            yield ChatUpdate(note=f"⚠️ {exc}")
            return
        conv, options = locate()
        cancel = self._begin(session)
        turn = self.chat.impersonate(conv, params, _with_cancel(options, cancel))
        final = Reply(done=True)
        try:
            yield ChatUpdate(note="", busy=True)
            for reply in throttle(turn, self.interval_s):
                final = reply
                yield ChatUpdate(message=reply.text or None)
        finally:
            self._end(session)
            if not final.done:
                cancel.cancel()
        # the whole text again: API clients read only the last update
        yield ChatUpdate(message=final.text or None, note=f"⚠️ {final.error}" if final.error else "", busy=False)

    # ------------------------------------------------------------------ inside

    def _drive(
        self, session: str, conv: Conversation, turn: Iterator[Reply], cancel: CancelToken, keep: int | None,
        restore: str | None = None,
    ) -> Iterator[ChatUpdate]:  # fmt: skip
        """Drive a reply into the chatbot (``keep``: how many saved messages to show above it) and end idle.

        ``restore``: the message just sent; if the turn added nothing (no reply), it goes back into the box.
        """
        before = len(conv.messages)
        final = Reply(done=True)
        try:
            for reply in throttle(turn, self.interval_s):
                final = reply
                if not reply.done:
                    yield ChatUpdate(chat=display_messages(conv.ui_history()[:keep], reply), busy=True)
        finally:  # also when the page goes away mid-reply: stop generating for nobody
            self._end(session)
            if not final.done:
                cancel.cancel()
        note = f"⚠️ {final.error}" if final.error else self.ignored_note(final.ignored_params)
        box = restore if restore is not None and len(conv.messages) <= before else None
        # a plain value for the chatbot: API clients read the chat from it
        yield ChatUpdate(box, conv.id, display_messages(conv.ui_history()), note, busy=False, shown=conv)

    def ignored_note(self, ignored: list[str]) -> str:
        """The line under the chat when the loader did not honour some parameters the user set."""
        if not ignored:
            return ""
        info = self.chat.engine.info
        return f"ℹ️ {info.loader if info else 'the loader'} ignored: {', '.join(ignored)}"


def _with_cancel(options: TurnOptions, cancel: CancelToken) -> TurnOptions:
    return replace(options, cancel=cancel)
