"""Logs a person can use: one line per HTTP request and per model load/unload/crash, to stderr and to a
rotating file in ``user_data/logs/``.

A request line reads ``POST /v1/chat/completions 200 412 ms model=gemma-3-270m-it tokens=12+24``: method,
path, status, time to the end of the response (the whole stream for a streamed reply), and where the response
says so (OpenAI's ``usage``, our ``timings``, Anthropic's ``usage``), the model and prompt+completion tokens.
It is read from the response itself, so every route is covered without each one reporting. API, health and
extension routes log at INFO; the UI's own traffic (assets, Gradio's queue) at DEBUG.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import sys
import time
from pathlib import Path

LEVELS = ("debug", "info", "warning", "error")
FILE = "inglenook.log"
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
MAX_BYTES = 5 * 1024 * 1024
BACKUPS = 3
API_PREFIXES = ("/v1", "/healthz", "/extensions/")
MAX_JSON = 1024 * 1024  # larger JSON bodies are not parsed for model and tokens

log = logging.getLogger("inglenook.http")


def setup_logging(level: str = "info", user_data: Path | None = None) -> Path | None:
    """Log at ``level`` to stderr, and to ``user_data/logs/inglenook.log`` (rotated at 5 MB, 3 kept) when a
    user_data folder is given. Returns the log file's path. Calling it again replaces the handlers it added."""
    if level.lower() not in LEVELS:
        raise ValueError(f"--log-level must be one of {', '.join(LEVELS)}, not {level!r}")
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_inglenook", False)]:
        root.removeHandler(handler)
        handler.close()
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    path = None
    if user_data is not None:
        path = user_data / "logs" / FILE
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handlers.append(logging.handlers.RotatingFileHandler(path, maxBytes=MAX_BYTES, backupCount=BACKUPS))
        except OSError as exc:
            print(f"warning: cannot write the log file {path}: {exc}", file=sys.stderr)
            path = None
    for handler in handlers:
        handler._inglenook = True  # type: ignore[attr-defined]
        handler.setFormatter(logging.Formatter(FORMAT))
        root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    return path


class _Facts:
    """Model and token counts found in a response body as it streams past."""

    def __init__(self, content_type: str) -> None:
        self.sse = content_type.startswith("text/event-stream")
        self.json = content_type.startswith("application/json")
        self.model: str | None = None
        self.tokens: tuple[int, int] | None = None
        self._buffer = b""

    def feed(self, body: bytes) -> None:
        if self.sse:
            self._buffer += body
            *events, self._buffer = self._buffer.split(b"\n\n")
            for event in events:
                for line in event.split(b"\n"):
                    if line.startswith(b"data:") and (b'"model"' in line or b'"usage"' in line or b'"timings"' in line):
                        self._read(line[5:])
        elif self.json and len(self._buffer) + len(body) <= MAX_JSON:
            self._buffer += body

    def finish(self) -> None:
        if self.json and self._buffer:
            self._read(self._buffer)

    def _read(self, raw: bytes) -> None:
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return
        if not isinstance(data, dict):
            return
        inner = data.get("message") if isinstance(data.get("message"), dict) else {}  # Anthropic's message_start
        model = data.get("model") or inner.get("model")
        if isinstance(model, str) and model and self.model is None:
            self.model = model
        for usage, prompt_key, completion_key in (
            (data.get("usage"), "prompt_tokens", "completion_tokens"),
            (data.get("usage"), "input_tokens", "output_tokens"),
            (data.get("timings"), "prompt_n", "predicted_n"),
        ):
            if isinstance(usage, dict) and isinstance(usage.get(completion_key), int):
                prompt = usage.get(prompt_key)
                self.tokens = (prompt if isinstance(prompt, int) else 0, usage[completion_key])


class RequestLog:
    """ASGI middleware: one log line per HTTP request, written when its response has been sent (or failed)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 0
        facts = _Facts("")

        async def sending(message) -> None:
            nonlocal status, facts
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = dict(message.get("headers") or [])
                facts = _Facts(headers.get(b"content-type", b"").decode("latin-1").lower())
            elif message["type"] == "http.response.body":
                facts.feed(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except BaseException:
            status = status or 500
            raise
        finally:
            facts.finish()
            path = scope.get("path", "")
            level = logging.INFO if path.startswith(API_PREFIXES) else logging.DEBUG
            if log.isEnabledFor(level):
                log.log(level, request_line(scope.get("method", ""), path, status, start, facts))


def request_line(method: str, path: str, status: int, start: float, facts: _Facts) -> str:
    line = f"{method} {path} {status or '-'} {(time.perf_counter() - start) * 1000:.0f} ms"
    if facts.model:
        line += f" model={facts.model}"
    if facts.tokens:
        line += f" tokens={facts.tokens[0]}+{facts.tokens[1]}"
    return line
