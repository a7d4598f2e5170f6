"""What the chat page needs of each streamed update: the whole chat, or only the growing reply.

Sending the whole chat value 20 times a second made Gradio validate, diff and send every message each time,
and the browser re-render the chatbot: the page streamed at ~0.9× the model's speed (issue 13, Speed). While
a reply grows, only its text changes; the page gets that text alone (a small carrier the chat tab's script
appends to the last bubble), and the whole chat again when anything else changes and at the end, so the
final state lands in the chatbot's value exactly as before.
"""

from __future__ import annotations

from dataclasses import dataclass


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
