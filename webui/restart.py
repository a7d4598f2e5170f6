"""Restart the running server process in place (the Extensions tab's "Restart" button).

Gradio builds the page once, so an extension's tab or block appears only in a page built after it
was enabled. The process replaces itself with the same command line (``os.execv``); the listening
socket is not inherited (Python sockets are close-on-exec), so the new process binds the port again.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


def restart_later(before: Callable[[], None], delay_s: float = 0.5) -> None:
    """After ``delay_s`` (so the click's answer reaches the page), run ``before`` and re-execute this process."""

    def go() -> None:
        try:
            before()
        except Exception:  # the restart matters more than a clean shutdown
            log.exception("while closing before the restart")
        log.info("restarting: %s", " ".join(sys.orig_argv))
        os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])

    threading.Timer(delay_s, go).start()
