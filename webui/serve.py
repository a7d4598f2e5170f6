"""Start a server and wait until it answers: a process (``inglenook serve``, llama-cpp-python's server) or an ASGI
app on a uvicorn thread. One start-and-wait loop for the screenshots script and the tests, so a server that dies
while starting is reported at once (with what it said) instead of after the whole timeout."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import httpx
import uvicorn

POLL_S = 0.3  # between health probes of a process
THREAD_POLL_S = 0.05  # a server thread says when it has started: a cheap flag to read


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc: subprocess.Popen, grace_s: float = 20) -> None:
    """SIGTERM, then SIGKILL after ``grace_s``."""
    proc.terminate()
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def process_server(
    command: list[str],
    url: str,
    log: IO[Any],
    *,
    probe: str = "/healthz",
    headers: Mapping[str, str] | None = None,
    timeout_s: float = 120,
    cwd: Path | None = None,
    explain: Callable[[], str] = lambda: "",
) -> Iterator[subprocess.Popen]:
    """Run ``command`` (its output into ``log``: a file, never a pipe that could fill and block it) until the
    block ends; yields the process once ``url + probe`` answers 200. Raises RuntimeError, with ``explain()``
    (e.g. the log's tail), if it exits first or does not answer within ``timeout_s``."""
    proc = subprocess.Popen(command, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited with {proc.returncode} while starting{_more(explain)}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + probe, headers=dict(headers or {}), timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not answer {probe} within {timeout_s:g} s{_more(explain)}")
            time.sleep(POLL_S)
        yield proc
    finally:
        stop_process(proc)


def _more(explain: Callable[[], str]) -> str:
    text = explain()
    return f":\n{text}" if text else ""


@contextlib.contextmanager
def thread_server(asgi: Any, port: int | None = None, timeout_s: float = 60, join_s: float = 30) -> Iterator[str]:
    """Serve the ASGI app ``asgi`` with uvicorn on a loopback port, on a thread of this process (so a test can
    look at the engine too); yields its URL once it listens, and stops it when the block ends."""
    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(asgi, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + timeout_s
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server on port {port} did not start")
            time.sleep(THREAD_POLL_S)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=join_s)
