"""The arena: the same message to two models, one after the other, and the user keeps one of the replies.

One machine holds one model at a time here, so the arena loads A, lets it reply, loads B, lets it reply, and
then loads again the model that was active before (with the loader and settings it had). Both replies go
through :class:`webui.chat.service.Chat`, so the prompt format, mode, character and extensions act as in a
normal turn.

Both replies are saved in the conversation as soon as they are done, as two versions of one reply (like
regenerate's versions), so nothing is lost if the page closes before the user chooses; :func:`keep` shows the
chosen one (the one the model sees in later turns) and the other stays one click away.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from backends.base import ModelLoadError, SamplingParams, Usage
from webui.chat.conversation import Conversation, HistoryError
from webui.chat.options import PLAIN, TurnOptions
from webui.chat.reply import Reply, format_stats, prompt_messages
from webui.templates.prefs import TemplatePrefs

if TYPE_CHECKING:  # the App holds the chat service; the arena only uses what it is given
    from webui.app import App
    from webui.engine import Loaded

SIDES = ("A", "B")


@dataclass
class Contender:
    """One side of the arena: the model asked and its reply so far."""

    model: str
    text: str = ""
    usage: Usage | None = None
    finish_reason: str | None = None
    error: str | None = None
    done: bool = False
    raw: str = ""  # the model's own text when an extension's output modifier changed ``text``
    version: int | None = None  # which version of the saved reply this side's text is (None: not saved)

    @property
    def stats(self) -> str:
        """The model's name and the usual stats line (TTFT | tokens | tok/s), stored with its version."""
        line = format_stats(self.usage, self.finish_reason)
        return f"{self.model} | {line}" if line else self.model


@dataclass
class Round:
    """An arena round as it streams: both sides, which one is replying, and a status line."""

    sides: list[Contender] = field(default_factory=list)
    status: str = ""
    done: bool = False
    error: str | None = None  # the round failed as a whole (nothing saved but the user's message, if anything)
    saved: bool = False  # both replies (or the one that succeeded) are in the conversation


def ask_two(
    app: App,
    conversation: Conversation,
    text: str,
    models: tuple[str, str],
    params: SamplingParams,
    options: TurnOptions = PLAIN,
    allow_paths: bool = False,
) -> Iterator[Round]:
    """Ask ``models`` (names in the models folder, or paths) the same message ``text``, one after the other.

    The user's message is saved first. Each reply is streamed (a :class:`Round` per update), then both are saved
    as versions of one reply, A shown; a side that failed is left out. If both fail, the user's message is taken
    back out. The model that was loaded before is loaded again at the end, whatever happened.
    ``allow_paths``: as in :meth:`webui.app.App.load_model` (the UI only allows names in the models folder
    unless the user is this machine's admin). Each side's ``version`` says which version of the reply it became.
    """
    current = Round(sides=[Contender(m) for m in models])
    try:
        conversation.append("user", text)
    except HistoryError as exc:
        yield replace(current, done=True, error=str(exc))
        return
    app.history.save(conversation)
    messages = prompt_messages(conversation, options.system)
    before = app.engine.loaded
    prefs = TemplatePrefs(app.settings.user_data)
    try:
        for side, contender in zip(SIDES, current.sides, strict=True):
            if options.cancel is not None and options.cancel.cancelled:
                contender.error, contender.done = "stopped", True
                continue
            current.status = f"loading {side}: {contender.model}"
            yield current
            try:
                app.load_model(contender.model, allow_paths=allow_paths)
            except (ModelLoadError, ValueError) as exc:
                contender.error, contender.done = f"could not load {contender.model}: {exc}", True
                yield current
                continue
            current.status = f"{side} ({contender.model}) is replying"
            template = prefs.get(app.engine.info.name)  # this model's remembered template, not the previous one's
            turn = replace(options, mode=conversation.mode, model=None, template=template)
            for reply in app.chat.stream(messages, params, turn):
                _take(contender, reply)
                yield current
    finally:
        restored = _restore(app, before)
    replied = [c for c in current.sides if c.text.strip() and not c.error]
    if not replied:
        conversation.remove_last()
        app.history.save(conversation)
        current.error = "neither model replied: " + "; ".join(
            f"{c.model}: {c.error or 'no text'}" for c in current.sides
        )
    else:
        conversation.append("assistant", replied[0].text, replied[0].stats, replied[0].raw)
        for other in replied[1:]:
            conversation.regenerate(other.text, other.stats, other.raw)
        conversation.select_version(-1, 0)
        for number, contender in enumerate(replied):
            contender.version = number
        app.history.save(conversation)
        current.saved = True
    current.status = restored
    current.done = True
    yield current


def keep(app: App, conversation: Conversation, contender: Contender) -> Conversation:
    """Keep ``contender``'s reply (a side of the arena round that ends ``conversation``): it is shown and the
    model sees it in later turns; the other stays as another version of that reply."""
    if contender.version is None:
        raise HistoryError(f"{contender.model} has no saved reply to keep")
    conversation.select_version(-1, contender.version)
    app.history.save(conversation)
    return conversation


def _take(contender: Contender, reply: Reply) -> None:
    """Copy a streamed reply into its side of the arena."""
    contender.text = reply.text
    if reply.done:
        contender.usage, contender.finish_reason = reply.usage, reply.finish_reason
        contender.error, contender.done, contender.raw = reply.error, True, reply.raw_text


def _restore(app: App, before: Loaded | None) -> str:
    """Load again the model that was active before the arena (same loader and settings); a line saying so."""
    if before is None:
        app.engine.unload()
        return "done; no model was loaded before, so none is now"
    try:
        app.engine.load(Path(before.path), before.loader.name, before.settings, reuse=True)
    except ModelLoadError as exc:
        return f"done, but {before.path.name} could not be loaded again: {exc}"
    return f"done; {before.path.name} is loaded again"


def choices(app: App) -> list[str]:
    """The models the arena offers: the entries of the models folder that some installed loader recognises."""
    folder = app.settings.models_dir
    if not folder.is_dir():
        return []
    found = []
    for child in sorted(folder.iterdir(), key=lambda p: p.name.lower()):
        if child.name.startswith("."):
            continue
        try:
            app.registry.pick(child)
        except (ModelLoadError, ValueError, LookupError):
            continue
        found.append(child.name)
    return found
