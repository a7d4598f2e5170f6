"""The raw contender: ``llama_cpp.Llama`` loaded directly, in a process of its own, driven run by run over a pipe.

``llm.create_completion(prompt, max_tokens=N, temperature=0, stream=True)``. TTFT: from just before the
call to the first chunk with non-empty text. Tokens: the completion text tokenized again (checked
against the number of text chunks, one per token). Not in our process: llama-cpp-python's OpenMP
runtime slows *every* decode in a process once two threads have decoded (our engine decodes on a thread
of its own), so in our process "raw" would slow us and itself (see :class:`RawContender`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

from backends.base import LoadSettings
from backends.llamacpp import llama_kwargs
from webui.bench.measure import RUN_TIMEOUT_S, BenchError, Contender, Sample, reset_cache

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[2]  # the folder holding this very webui package


def raw_run(llm, prompt: str, tokens: int) -> Sample:
    """One timed raw run: ``create_completion`` streaming, from an empty cache."""
    reset_cache(llm)
    text, chunks, finish = "", 0, "length"
    first = last = None
    start = time.perf_counter()
    for chunk in llm.create_completion(prompt, max_tokens=tokens, temperature=0, stream=True):
        choice = chunk["choices"][0]
        if choice["text"]:
            last = time.perf_counter()
            first = first or last
            text += choice["text"]
            chunks += 1
        if choice.get("finish_reason"):
            finish = choice["finish_reason"]
    end = time.perf_counter()
    count = len(llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)) if text else 0
    if count != chunks:
        log.debug("raw: %d text chunks but the text tokenizes to %d tokens", chunks, count)
    first = first if first is not None else end
    return Sample(first - start, (last or end) - first, count, finish, text)


def raw_worker() -> None:
    """The raw contender's process (``python -c "from webui.bench.raw import raw_worker; raw_worker()"``).

    Reads one JSON line of settings, loads the model, answers ``{"ready": prompt_tokens}``, then
    times one run per ``run`` line and answers each with the sample as JSON. Its stdout carries
    nothing else: anything else written there goes to stderr.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the bench; it ends us by closing our stdin
    channel = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1, encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())

    def answer(**message) -> None:
        channel.write(json.dumps(message) + "\n")

    try:
        setup = json.loads(sys.stdin.readline())
        import llama_cpp

        from backends.llamacpp import ensure_backends

        ensure_backends()  # a portable build loads its CPU backend here, as the engine's worker does
        llm = llama_cpp.Llama(**setup["kwargs"])
    except Exception as exc:
        answer(error=f"{type(exc).__name__}: {exc}")
        return
    prompt, tokens = setup["prompt"], setup["tokens"]
    answer(ready=len(llm.tokenize(prompt.encode("utf-8"))))
    try:
        for line in sys.stdin:
            if line.strip() != "run":
                break
            try:
                answer(sample=asdict(raw_run(llm, prompt, tokens)))
            except Exception as exc:
                answer(error=f"{type(exc).__name__}: {exc}")
                return
    finally:
        llm.close()


class RawContender(Contender):
    """Raw llama-cpp-python in a process of its own.

    Not in ours: llama-cpp-python's wheels use OpenMP (libgomp), which keeps a
    team of worker threads for every thread that has ever run a decode and,
    once the process holds more OpenMP threads than CPUs, stops spinning at
    barriers and sleeps instead. Our engine decodes on a thread of its own
    (see ``Engine._on_decode_thread``), so in our process raw, decoding on the
    main thread, would make two decoding threads and slow both. In its own
    process it is llama-cpp-python as a user runs it.
    """

    def __init__(
        self, path: Path, settings: LoadSettings, prompt: str, tokens: int, name: str = "raw",
        env_extra: dict[str, str] | None = None,
    ) -> None:  # fmt: skip
        super().__init__(name)
        self.kwargs = llama_kwargs(path, settings)
        env = {**os.environ, **(env_extra or {})}  # e.g. an OpenMP wait policy, read when libgomp loads
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
        self._process = subprocess.Popen(
            [sys.executable, "-c", "from webui.bench.raw import raw_worker; raw_worker()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, encoding="utf-8", env=env,
        )  # fmt: skip
        self._lines: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        threading.Thread(target=self._read, name="bench-raw-reader", daemon=True).start()
        try:
            self._send(json.dumps({"kwargs": self.kwargs, "prompt": prompt, "tokens": tokens}))
            answer = self._receive(timeout=300)
            if "ready" not in answer:
                raise BenchError(f"raw llama-cpp-python could not load {path.name}: {answer.get('error')}")
        except BaseException:
            self.close()
            raise
        self.prompt_tokens = answer["ready"]

    def _read(self) -> None:
        for line in self._process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _send(self, line: str) -> None:
        try:
            self._process.stdin.write(line + "\n")
            self._process.stdin.flush()
        except OSError as exc:
            raise BenchError(f"the raw llama-cpp-python process is gone ({exc})") from exc

    def _receive(self, timeout: float) -> dict:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise BenchError(f"the raw llama-cpp-python process did not answer in {timeout:.0f} s") from None
        if line is None:
            code = self._process.wait(timeout=10)
            raise BenchError(f"the raw llama-cpp-python process exited with code {code}")
        return json.loads(line)

    def run(self) -> Sample:
        self._send("run")
        answer = self._receive(timeout=RUN_TIMEOUT_S)
        if "sample" not in answer:
            raise BenchError(f"raw llama-cpp-python failed: {answer.get('error')}")
        return Sample(**answer["sample"])

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._process.stdin.close()  # the worker's signal to finish
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=5)
