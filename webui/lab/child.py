"""Run one lab job in a child process and follow its JSON lines: native crashes and cancels stay out there.

The child is ``python -m MODULE REQUEST_JSON``; it prints one JSON object per line (progress and a final
report) and anything else (llama.cpp's error lines) as plain text, which is kept as the log.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from backends.base import CancelToken


@dataclass
class ChildOutcome:
    code: int
    messages: list[dict] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    cancelled: bool = False
    timed_out: bool = False

    def last(self, key: str) -> dict:
        """The last message that has ``key`` (e.g. the final report), or {}."""
        return next((m for m in reversed(self.messages) if key in m), {})

    def why(self) -> str:
        if self.timed_out:
            return "it ran past its time limit and was stopped"
        if self.code < 0:
            return f"the process died (signal {-self.code}); nothing else was affected"
        return f"the process exited with status {self.code}"


def run_child(
    module: str,
    request: dict,
    on_message: Callable[[dict], None] | None = None,
    cancel: CancelToken | None = None,
    timeout_s: float | None = None,
) -> ChildOutcome:
    """Start ``python -m module`` with ``request``; pass each JSON line to ``on_message``; kill on cancel."""
    return run_command([sys.executable, "-m", module, json.dumps(request)], on_message, cancel, timeout_s)


def run_command(
    argv: list[str],
    on_message: Callable[[dict], None] | None = None,
    cancel: CancelToken | None = None,
    timeout_s: float | None = None,
    on_line: Callable[[str], None] | None = None,
) -> ChildOutcome:
    """Run ``argv``, following its output: JSON lines go to ``on_message``, other lines to ``on_line`` and the log."""
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    outcome = ChildOutcome(code=0)
    deadline = time.monotonic() + timeout_s if timeout_s else None
    assert proc.stdout is not None
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while True:
                if cancel is not None and cancel.cancelled:
                    outcome.cancelled = True
                    proc.kill()
                    break
                if deadline is not None and time.monotonic() > deadline:
                    outcome.timed_out = True
                    proc.kill()
                    break
                if not sel.select(timeout=0.1):
                    if proc.poll() is not None:
                        break
                    continue
                line = proc.stdout.readline()
                if not line:
                    break
                message = _parse(line)
                if message is None:
                    if line.strip():
                        outcome.log.append(line.rstrip())
                        if on_line is not None:
                            on_line(line.rstrip())
                    continue
                outcome.messages.append(message)
                if on_message is not None:
                    on_message(message)
        outcome.code = proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    return outcome


def emit(message: dict) -> None:
    """In the child: one JSON line to the parent."""
    sys.stdout.write(json.dumps(message, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def _parse(line: str) -> dict | None:
    if not line.startswith("{"):
        return None
    with contextlib.suppress(json.JSONDecodeError):
        found = json.loads(line)
        return found if isinstance(found, dict) else None
    return None
