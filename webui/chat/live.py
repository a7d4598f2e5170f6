"""What the chat page needs of each streamed update: the whole chat, or only the growing reply.

Sending the whole chat value 20 times a second made Gradio validate, diff and send every message each time,
and the browser re-render the chatbot: the page streamed at ~0.9× the model's speed (issue 13, Speed). While
a reply grows, only its text changes; the page gets that text alone, and the whole chat again when anything
else changes and at the end, so the final state lands in the chatbot's value exactly as before.

The text goes by the page's own channel (:func:`live_events`, an event stream at ``/inglenook/live/ID``),
not through Gradio: every message of a Gradio stream costs the browser ~17 ms of bookkeeping over all of the
page's components (its loading statuses), on the cores llama.cpp decodes on. A page that has not opened the
channel yet (and an API client of ``/chat``) gets the text in a small carrier output instead, which the chat
tab's script appends to the last bubble the same way.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

LIVE_PATH = "/inglenook/live"  # + /CONVERSATION_ID: the reply being written into it, as an event stream
LIVE_MARK = "\x00live:"  # the carrier's value that tells the page to read the reply from the channel: + the id


def live_events(texts: Iterable[str]) -> Iterator[str]:
    """Server-sent events for a reply's successive texts: ``{"at": N, "text": T}`` replaces what the page has
    from position N on with T (N is where the new text leaves the old, so a grown reply sends what it added,
    and a trimmed one, e.g. a stop string cut off, what changed; N counts UTF-16 code units, as JavaScript's
    strings do), then one ``end`` event."""
    sent = ""
    for text in texts:
        if text == sent:
            continue
        at = len(sent) if text.startswith(sent) else len(os.path.commonprefix([sent, text]))  # usually: it grew
        # the page counts in UTF-16 code units (JavaScript strings): an emoji is two there, one here
        units = len(text[:at].encode("utf-16-le", errors="surrogatepass")) // 2
        yield f"data: {json.dumps({'at': units, 'text': text[at:]})}\n\n"
        sent = text
    yield "event: end\ndata: {}\n\n"


def reply_only(before: list[dict] | None, chat: list[dict]) -> str | None:
    """The last message's text when ``chat`` differs from ``before`` (what the page holds) in nothing else: an
    assistant's reply that grew. None when the page must get the whole chat (first update, a message added or
    changed, metadata such as a stats line)."""
    if not before or len(before) != len(chat):
        return None
    last, old = chat[-1], before[-1]
    if last.get("role") != "assistant" or old.get("role") != "assistant" or not isinstance(last.get("content"), str):
        return None
    if {k: v for k, v in last.items() if k != "content"} != {k: v for k, v in old.items() if k != "content"}:
        return None
    if chat[:-1] != before[:-1]:
        return None
    return last["content"]


@dataclass
class LiveSplit:
    """One stream's updates as (chat for the chatbot or None, text for the carrier or None).

    ``held``: the chat value the page holds (the last one sent whole). While the reply only grows, the chatbot
    is left alone and the carrier gets the reply's text; a chat sent whole empties the carrier, which removes
    the streamed text from the page (the chatbot now shows it)."""

    held: list[dict] | None = None

    def split(self, chat: list[dict] | None, streaming: bool) -> tuple[list[dict] | None, str | None]:
        """(chat to send or None to leave it, carrier text or None to leave it) for one update."""
        if chat is None:
            return None, None
        text = reply_only(self.held, chat) if streaming else None
        if text is not None:
            return None, text
        self.held = chat
        return chat, ""

    def finishing(self, chat: list[dict] | None) -> str | None:
        """At the end of a stream: the reply's whole text, for the carrier, when the page holds its bubble (the
        same chat before it); the page shows it at once, before the whole chat (which costs more to build and
        to draw) lands. None when there is nothing to show that way."""
        held = self.held
        if not chat or not held or len(held) != len(chat) or chat[:-1] != held[:-1]:
            return None
        last = chat[-1]
        if last.get("role") != "assistant" or held[-1].get("role") != "assistant":
            return None
        content = last.get("content")
        return content if isinstance(content, str) and content else None
