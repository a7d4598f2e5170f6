"""The notebook: free text that a (base) model continues, raw, with no chat format around it.

The text lives in ``<user_data>/notebook/notebook.txt``, written atomically before a generation starts and
again when it ends (stopped or not), so a refresh or a restart shows what was there.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from backends.base import CancelToken, GenerationError, SamplingParams
from webui.chat.reply import MAX_MESSAGE_CHARS, Reply
from webui.chat.service import Chat, TurnOptions
from webui.engine import Engine
from webui.files import write_atomic
from webui.paths import is_link_out

log = logging.getLogger(__name__)


class NotebookStore:
    """The notebook's text on disk; holds nothing but its path."""

    def __init__(self, user_data: Path) -> None:
        self.path = Path(user_data) / "notebook" / "notebook.txt"

    def load(self) -> str:
        """The saved text; "" (with one warning) when notebook.txt is a link, which could show any file."""
        if self.path.is_symlink() or (self.path.exists() and is_link_out(self.path, self.path.parent.parent)):
            log.warning("%s is a symbolic link or leads outside user data: not shown (saving replaces it)", self.path)
            return ""
        try:
            return self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return ""
        except UnicodeDecodeError:
            return self.path.read_bytes().decode("utf-8", errors="replace")

    def save(self, text: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, text.encode("utf-8", errors="surrogatepass"))


def generate(
    chat: Chat, store: NotebookStore, text: str, params: SamplingParams, cancel: CancelToken | None = None
) -> Iterator[Reply]:
    """Continue ``text``; each ``Reply.text`` is the whole notebook (the text, then what the model wrote)."""
    if not text.strip():
        yield Reply(text=text, done=True, error="write something for the model to continue first")
        return
    if len(text) > MAX_MESSAGE_CHARS:
        yield Reply(text=text, done=True, error=f"the text is longer than {MAX_MESSAGE_CHARS:,} characters")
        return
    store.save(text)
    final = Reply(text=text, done=True)
    for reply in chat.complete(text, params, TurnOptions(cancel=cancel)):
        final = replace(reply, text=text + reply.text, ignored_params=list(reply.ignored_params))
        yield final
    if final.text != text:
        store.save(final.text)


def token_count(engine: Engine, text: str) -> str:
    """``"123 / 2,048 tokens"``: the text's size as a prompt against the context length."""
    info = engine.info
    if info is None:
        return ""
    try:
        return f"{engine.count_tokens(text):,} / {info.context_length:,} tokens"
    except GenerationError as exc:
        return f"⚠️ {exc}"
