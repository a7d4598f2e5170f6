"""The chat page's sessions: one generation in flight per browser session, driven into named updates.

The chat tab (:mod:`webui.ui.chat_tab`) only wires widgets: it finds the conversation and the options, calls
:class:`ChatSessions`, and maps each :class:`ChatUpdate` onto its outputs. Everything a test would want —
refusing a second send while a reply streams, Stop, cancelling a reply nobody watches any more, what the
chatbot shows while a reply streams and after it ends, putting a message back when it got no reply — lives
here, without Gradio.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

from backends.base import CancelToken, SamplingParams
from webui.chat.conversation import DENIED, INVALID, PENDING, TOOL_CALL
from webui.chat.history import Conversation
from webui.chat.reply import Reply, throttle
from webui.chat.sampling import default_params
from webui.chat.service import Chat, TurnOptions
from webui.presets import PresetError, form_values, params_from_form

log = logging.getLogger(__name__)

STATS_SPAN = re.compile(r"\s*<span class='inglenook-stats'>.*?</span>\s*$", re.DOTALL)
STILL_STREAMING = "A reply is still streaming: wait for it or press Stop."


def display_messages(history: list[dict], pending: Reply | None = None) -> list[dict]:
    """What the chatbot shows: the history, then the reply in flight.

    A reply's stats line travels beside its text, in the message's ``metadata`` (``log``; no ``title``, so it
    is no "thought"), and the page draws it under the message (:data:`webui.ui.chat_tab.STATS_JS`): the
    message's own text stays clean for Copy and Edit.
    """
    shown = []
    for m in history:
        if m.get("tool"):
            shown.append(tool_card(m))
            continue
        item = {"role": m["role"], "content": m["content"]}
        if m.get("stats"):
            item["metadata"] = {"log": m["stats"]}
        shown.append(item)
    if pending is not None:
        shown.append({"role": "assistant", "content": pending.text or "…"})
    return shown


TOOL_TITLES = {PENDING: "🛠️ {name} — waiting for your approval", "ran": "🛠️ {name}", DENIED: "🛠️ {name} — denied",
               INVALID: "🛠️ {name} — not run: invalid arguments"}  # fmt: skip
RESULT_TITLES = {"ran": "📋 Result of {name}", "error": "⚠️ {name} failed", DENIED: "🚫 {name} was not run"}


def tool_card(message: dict) -> dict:
    """A tool call or its result as a collapsible card (Gradio's metadata ``title``): the call's arguments as
    JSON, the result as text. A waiting call shows as pending."""
    tool = message["tool"]
    status, name = tool.get("status", ""), tool.get("name", "?")
    if message["role"] == TOOL_CALL:
        try:
            arguments = json.dumps(json.loads(tool.get("arguments", "")), ensure_ascii=False, indent=1)
        except ValueError:
            arguments = tool.get("arguments", "")
        title = TOOL_TITLES.get(status, "🛠️ {name}").format(name=name)
        content = f"```json\n{arguments}\n```"
    else:
        title = RESULT_TITLES.get(status, "📋 Result of {name}").format(name=name)
        content = message["content"]
    metadata = {"title": title, "status": "pending" if status == PENDING else "done"}
    return {"role": "assistant", "content": content, "metadata": metadata}  # no stats line: a card is no reply


def without_stats(content: object) -> str:
    """A message as the user edited it in the chatbot (Gradio may hand back ``[{"type": "text", ...}]``), without
    a stats line that older pages put inside the text."""
    if isinstance(content, list):
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return STATS_SPAN.sub("", str(content or ""))


def stats_of(shown: list[dict]) -> list[str]:
    """The stats line of each assistant message the chatbot shows ("" where none): what the page draws."""
    return [(m.get("metadata") or {}).get("log", "") for m in shown if m.get("role") == "assistant"]


# The Parameters tab's preset name comes with its values (the page sends it beside them); it is no parameter.
PRESET = "preset"


def changed_sampling(sampling: dict) -> dict:
    """The Parameters form's values that differ from the defaults (what a conversation keeps of them)."""
    defaults = form_values(default_params())
    given = form_values(form_params(sampling))
    return {k: v for k, v in given.items() if k in sampling and v != defaults.get(k) and _plain(v)}


def asked_sampling(changed: dict) -> dict:
    """The whole Parameters form a conversation was asked with, from what it kept (:func:`changed_sampling`):
    the defaults, then the values it changed. ValueError naming a bad key (a hand-edited file)."""
    return form_values(form_params({**form_values(default_params()), **changed}))


def _plain(value: object) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def remember_settings(conv: Conversation, system: str, sampling: dict) -> None:
    """Keep how the conversation is asked for in it (saved with its next message): the system prompt, the
    preset's name and the changed parameters (issue 13: a reload lost them)."""
    kept = {k: v for k, v in conv.settings.items() if k not in ("system", "sampling", PRESET)}
    if system.strip():
        kept["system"] = system
    if isinstance(name := sampling.get(PRESET), str) and name:
        kept[PRESET] = name
    if changed := changed_sampling(sampling):
        kept["sampling"] = changed
    conv.settings = kept


def form_params(sampling: dict) -> SamplingParams:
    """The Parameters tab's values as SamplingParams (its preset's name aside); ValueError naming a bad key."""
    try:
        return params_from_form({k: v for k, v in sampling.items() if k != PRESET})
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


@dataclass
class Flight:
    """A reply being written: it belongs to the server, not to the tab that asked for it.

    A thread drives the turn to its end (or to Stop) and the turn saves it, whether or not any page still
    watches; pages watch ``reply`` (``version`` counts its changes) under ``changed``.
    """

    conversation_id: str
    cancel: CancelToken
    keep: int | None  # how many saved messages the reply shows under (None: all; -1: it replaces the last)
    reply: Reply = field(default_factory=Reply)
    version: int = 0
    done: bool = False
    changed: threading.Condition = field(default_factory=threading.Condition)

    def snapshot(self) -> tuple[Reply, int, bool]:
        with self.changed:
            return self.reply, self.version, self.done


class ChatSessions:
    """The replies in flight, at most one per browser session (per UI; not module-level)."""

    def __init__(self, chat: Chat, interval_s: float) -> None:
        self.chat = chat
        self.interval_s = interval_s
        self._cancels: dict[str, CancelToken] = {}  # impersonations: the page's own, ended with the page
        self._flights: dict[str, Flight] = {}  # replies saved into a conversation: the server's
        self._following: dict[str, int] = {}  # per session: which follow is current (another view ends it)
        self._lock = threading.Lock()

    def busy(self, session: str) -> bool:
        with self._lock:
            return session in self._cancels or session in self._flights

    def stop(self, session: str, conversation_id: str = "") -> bool:
        """Stop the session's reply, or else the one being written into ``conversation_id`` (a tab opened while
        it streams); False if none streams."""
        with self._lock:
            token = self._cancels.get(session)
            flight = self._flights.get(session) or self._flight_of(conversation_id)
        if flight is not None:
            token = flight.cancel
        if token is not None:
            token.cancel()
        return token is not None

    def flight(self, conversation_id: str) -> Flight | None:
        """The reply being written into ``conversation_id``, if one is."""
        with self._lock:
            return self._flight_of(conversation_id)

    def reply_texts(self, conversation_id: str) -> Iterator[str]:
        """The text of the reply being written into ``conversation_id`` as it grows (grouped as the page's
        updates are), to its end; nothing when none is. What the page's live channel streams."""
        flight = self.flight(conversation_id)
        if flight is None:
            return
        for reply in self.watch(flight, shown=-1):
            yield reply.text

    def _flight_of(self, conversation_id: str) -> Flight | None:
        if not conversation_id:
            return None
        return next((f for f in self._flights.values() if f.conversation_id == conversation_id), None)

    def _begin(self, session: str) -> CancelToken:
        with self._lock:
            token = self._cancels[session] = CancelToken()
        return token

    def _end(self, session: str) -> None:
        with self._lock:
            self._cancels.pop(session, None)

    # ------------------------------------------------------------------ the actions

    def _ready(
        self,
        session: str,
        sampling: dict,
        locate: Callable[[], tuple[Conversation, TurnOptions]],
        text: str | None = None,
    ) -> ChatUpdate | tuple[SamplingParams, Conversation, TurnOptions]:
        """What every action checks before it starts a reply: the refusal to show, or (params, conversation,
        options). ``text``: the message a send carries (an empty one is refused)."""
        if self.busy(session):  # Enter pressed again while this session's reply still streams
            return ChatUpdate(note=STILL_STREAMING, busy=True)
        if text is not None and not text:
            return ChatUpdate(note="Type a message first.")
        try:
            params = form_params(sampling)
        except ValueError as exc:
            return ChatUpdate(note=f"⚠️ {exc}")
        conv, options = locate()
        if self.flight(conv.id) is not None:  # another tab's reply is being written into this conversation
            return ChatUpdate(note=STILL_STREAMING)
        return params, conv, options

    def send(
        self, session: str, text: str, sampling: dict, locate: Callable[[], tuple[Conversation, TurnOptions]]
    ) -> Iterator[ChatUpdate]:
        """Send ``text`` in the conversation ``locate()`` finds (called only once the send can go ahead)."""
        text = (text or "").strip()
        ready = self._ready(session, sampling, locate, text)
        if isinstance(ready, ChatUpdate):
            yield ready
            return
        params, conv, options = ready
        remember_settings(conv, options.system, sampling)
        self.unfollow(session)
        cancel = CancelToken()
        turn = self.chat.turn(conv, text, params, _with_cancel(options, cancel))
        pending = [*conv.ui_history(), {"role": "user", "content": text}]  # the turn saves it on its first step
        flight = self._start(session, Flight(conv.id, cancel, None), turn)
        yield ChatUpdate(
            message="", conversation_id=conv.id, chat=display_messages(pending, Reply()), note="", busy=True
        )
        yield from self._drive(conv, flight, before=len(pending) - 1, restore=text)

    def again(
        self, session: str, action: str, sampling: dict, locate: Callable[[], tuple[Conversation, TurnOptions]]
    ) -> Iterator[ChatUpdate]:
        """``action`` "regenerate" (a new version of the last reply) or "continue" (extend it)."""
        ready = self._ready(session, sampling, locate)
        if isinstance(ready, ChatUpdate):
            yield ready
            return
        params, conv, options = ready
        remember_settings(conv, options.system, sampling)
        self.unfollow(session)
        cancel = CancelToken()
        replacing = bool(conv.messages) and conv.messages[-1].role == "assistant"
        act = self.chat.continue_reply if action == "continue" else self.chat.regenerate
        turn = act(conv, params, _with_cancel(options, cancel))
        keep = -1 if replacing else None
        shown = display_messages(conv.ui_history()[:keep], Reply())
        flight = self._start(session, Flight(conv.id, cancel, keep), turn)
        yield ChatUpdate(conversation_id=conv.id, chat=shown, note="", busy=True)
        yield from self._drive(conv, flight, before=len(conv.messages))

    def resolve(
        self, session: str, approve: bool, sampling: dict, locate: Callable[[], tuple[Conversation, TurnOptions]]
    ) -> Iterator[ChatUpdate]:
        """The user's Approve (``approve``) or Deny of the tool calls waiting in the conversation; the model then
        goes on with the results, streamed as a reply is."""
        ready = self._ready(session, sampling, locate)
        if isinstance(ready, ChatUpdate):
            yield ready
            return
        params, conv, options = ready
        if not conv.pending_calls():
            yield ChatUpdate(chat=display_messages(conv.ui_history()), note="No tool call is waiting.", shown=conv)
            return
        self.unfollow(session)
        cancel = CancelToken()
        turn = self.chat.resolve_tools(conv, approve, params, _with_cancel(options, cancel))
        flight = self._start(session, Flight(conv.id, cancel, None), turn)
        yield ChatUpdate(conversation_id=conv.id, chat=display_messages(conv.ui_history(), Reply()), note="", busy=True)
        yield from self._drive(conv, flight, before=len(conv.messages))

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

    def follow(self, session: str, conversation_id: str, load: Callable[[], Conversation]) -> Iterator[ChatUpdate]:
        """A page that opens a conversation while a reply is being written into it (another tab's, or its own
        before a reload) watches that reply to its end; ``load`` reads the conversation as saved. Nothing when
        no reply is being written, or when this session is already watching its own."""
        flight = self.flight(conversation_id)
        with self._lock:
            mine = flight is not None and self._flights.get(session) is flight
            ticket = self._following[session] = self._following.get(session, 0) + 1
        if flight is None or mine:
            return
        saved = load().ui_history()[: flight.keep]
        for reply in self.watch(flight):
            with self._lock:
                if self._following.get(session) != ticket:  # the page moved to another conversation
                    return
            if not reply.done:
                yield ChatUpdate(chat=display_messages(saved, reply), busy=True)
        conv = load()
        yield ChatUpdate(chat=display_messages(conv.ui_history()), busy=False, shown=conv)

    def unfollow(self, session: str) -> None:
        """The page shows another conversation now: a reply it was following stops updating it."""
        with self._lock:
            self._following[session] = self._following.get(session, 0) + 1

    def _start(self, session: str, flight: Flight, turn: Iterator[Reply]) -> Flight:
        """Start the reply's thread: from here on it runs to its end (or Stop) and is saved, watched or not."""
        with self._lock:
            self._flights[session] = flight
        threading.Thread(target=self._write, args=(session, flight, turn), daemon=True, name="chat-reply").start()
        return flight

    def _drive(
        self, conv: Conversation, flight: Flight, before: int, restore: str | None = None
    ) -> Iterator[ChatUpdate]:
        """Watch the reply into the chatbot (``flight.keep``: how many saved messages to show above it) and end
        idle. The page going away ends the watching, not the reply.

        ``restore``: the message just sent; if the turn added nothing (``conv`` still holds ``before`` messages
        or fewer: no reply), it goes back into the box.
        """
        final = Reply(done=True)
        for final in self.watch(flight):
            if not final.done:
                yield ChatUpdate(chat=display_messages(conv.ui_history()[: flight.keep], final), busy=True)
        note = f"⚠️ {final.error}" if final.error else (final.note or self.ignored_note(final.ignored_params))
        box = restore if restore is not None and len(conv.messages) <= before else None
        # a plain value for the chatbot: API clients read the chat from it
        yield ChatUpdate(box, conv.id, display_messages(conv.ui_history()), note, busy=False, shown=conv)

    def _write(self, session: str, flight: Flight, turn: Iterator[Reply]) -> None:
        """The reply's thread: drive the turn (which saves the conversation) to its end, whoever watches."""
        final = Reply(done=True)
        try:
            for final in turn:
                with flight.changed:
                    flight.reply, flight.version = final, flight.version + 1
                    flight.changed.notify_all()
        except Exception as exc:  # a bug, not a generation error (those come as a Reply): end the flight anyway
            log.exception("chat reply failed")
            final = Reply(done=True, error=f"the reply failed: {exc}")
        finally:
            with self._lock:
                if self._flights.get(session) is flight:
                    del self._flights[session]
            with flight.changed:
                flight.reply, flight.done = replace(final, done=True), True
                flight.changed.notify_all()

    def watch(self, flight: Flight, shown: int = 0) -> Iterator[Reply]:
        """The flight's reply as it grows, at most one update per interval, then the final one (``done``).
        ``shown``: the version the watcher has (0: the empty reply the flight starts with; -1: none)."""
        seen = shown
        while True:
            with flight.changed:
                flight.changed.wait_for(lambda seen=seen: flight.done or flight.version != seen)
                reply, seen, done = flight.reply, flight.version, flight.done
            if done:
                yield reply
                return
            yield reply
            if self.interval_s > 0:  # the grouping holds back text, never the end (it would add up to 50 ms)
                with flight.changed:
                    flight.changed.wait_for(lambda: flight.done, timeout=self.interval_s)

    def ignored_note(self, ignored: list[str]) -> str:
        """The line under the chat when the loader did not honour some parameters the user set."""
        if not ignored:
            return ""
        info = self.chat.engine.info
        return f"ℹ️ {info.loader if info else 'the loader'} ignored: {', '.join(ignored)}"


def _with_cancel(options: TurnOptions, cancel: CancelToken) -> TurnOptions:
    return replace(options, cancel=cancel)
