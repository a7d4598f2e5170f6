"""The engine: the one place that owns the loaded model.

It loads, unloads and switches models, runs one generation at a time in
first-come-first-served order (others wait in a fair queue), cancels, and
measures what the user sees: time to first token and tokens per second.
"""

from __future__ import annotations

import gc
import logging
import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from backends.base import (
    CancelToken,
    Chunk,
    GenerationError,
    Loader,
    LoadSettings,
    Model,
    ModelInfo,
    ModelLoadError,
    SamplingParams,
    Stopwatch,
    Usage,
)
from backends.registry import LoaderRegistry

log = logging.getLogger(__name__)

_DONE = object()  # end of a decode-thread stream


class FairQueue:
    """A ticket lock: turns are granted in arrival order; a waiter can give up its place."""

    def __init__(self, poll_s: float = 0.02) -> None:
        self._cv = threading.Condition()
        self._next_ticket = 0
        self._serving = 0
        self._abandoned: set[int] = set()
        self._poll_s = poll_s

    @property
    def waiting(self) -> int:
        with self._cv:
            return self._next_ticket - self._serving - len(self._abandoned)

    def enter(self, cancel: CancelToken | None = None) -> bool:
        """Wait for our turn. False if ``cancel`` fired while waiting (the place is given up)."""
        with self._cv:
            ticket = self._next_ticket
            self._next_ticket += 1
            while self._serving != ticket:
                if cancel is not None and cancel.cancelled:
                    self._abandoned.add(ticket)
                    return False
                self._cv.wait(self._poll_s if cancel is not None else None)
            return True

    def leave(self) -> None:
        with self._cv:
            self._serving += 1
            while self._serving in self._abandoned:
                self._abandoned.discard(self._serving)
                self._serving += 1
            self._cv.notify_all()


@dataclass
class Loaded:
    """What is loaded, with what: enough to load it again."""

    path: Path
    loader: Loader
    settings: LoadSettings
    model: Model
    load_s: float


class Engine:
    def __init__(self, registry: LoaderRegistry) -> None:
        self.registry = registry
        self._loaded: Loaded | None = None
        self._queue = FairQueue()
        self._admin = threading.Lock()  # one load/unload at a time
        self._active: CancelToken | None = None
        self._decoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inglenook-decode")

    # -- what is loaded -------------------------------------------------------------
    @property
    def loaded(self) -> Loaded | None:
        return self._loaded

    @property
    def info(self) -> ModelInfo | None:
        return self._loaded.model.info if self._loaded else None

    def ignored_params(self, params: SamplingParams) -> list[str]:
        return self._loaded.loader.ignored_params(params) if self._loaded else []

    # -- load / unload ----------------------------------------------------------------
    def load(self, path: Path, loader: str | None = None, settings: LoadSettings | None = None) -> ModelInfo:
        """Load ``path``, replacing the current model.

        A generation in progress is cancelled and finishes before the switch;
        queued generations run on the new model. If the new model fails to
        load, the previous one is loaded again and the error says so.
        """
        chosen = self.registry.pick(path, loader)
        missing = chosen.available()
        if missing:
            raise ModelLoadError(f"loader {chosen.name} is unavailable: {missing}")
        settings = settings if settings is not None else chosen.settings_type()
        chosen.check(path)  # cheap validation while the current model still works
        with self._admin:
            self._take_turn()
            try:
                previous = self._loaded
                self._close()
                try:
                    self._loaded = self._load(path, chosen, settings)
                except Exception as exc:
                    message = str(exc) if isinstance(exc, ModelLoadError) else f"{type(exc).__name__}: {exc}"
                    if previous is not None:
                        self._loaded = self._load(previous.path, previous.loader, previous.settings)
                        message += f" ({previous.path.name} is still loaded)"
                    raise ModelLoadError(message) from exc
            finally:
                self._queue.leave()
        return self._loaded.model.info

    def reload(self, settings: LoadSettings | None = None) -> ModelInfo:
        """Load the current model again (with new ``settings``, or the ones it was loaded with)."""
        loaded = self._loaded
        if loaded is None:
            raise ModelLoadError("no model is loaded, so there is nothing to reload")
        return self.load(loaded.path, loaded.loader.name, settings if settings is not None else loaded.settings)

    def unload(self) -> None:
        """Free the loaded model (a generation in progress is cancelled first); a no-op when none is loaded."""
        with self._admin:
            self._take_turn()
            try:
                self._close()
            finally:
                self._queue.leave()

    def _take_turn(self) -> None:
        active = self._active
        if active is not None:
            active.cancel()
        self._queue.enter()

    @staticmethod
    def _load(path: Path, loader: Loader, settings: LoadSettings) -> Loaded:
        start = time.perf_counter()
        model = loader.load(path, settings)
        load_s = time.perf_counter() - start
        log.info("loaded %s with %s in %.2f s", path.name, loader.name, load_s)
        return Loaded(path, loader, settings, model, load_s)

    def _close(self) -> None:
        if self._loaded is not None:
            self._loaded.model.close()
            self._loaded = None
            gc.collect()

    # -- generation -------------------------------------------------------------------
    def generate(self, prompt: str, params: SamplingParams, cancel: CancelToken | None = None) -> Iterator[Chunk]:
        """Stream a completion of ``prompt``, waiting for our turn first.

        The last chunk carries ``usage`` with the engine's own timings (TTFT is
        measured to the first visible text, from the moment our turn starts;
        the time spent queued is reported apart). Close the iterator, or
        cancel, to give the turn up early.
        """
        params.validate()
        cancel = cancel or CancelToken()
        queued = time.perf_counter()
        if not self._queue.enter(cancel):
            yield Chunk(finish_reason="cancelled", usage=Usage(queued_s=time.perf_counter() - queued))
            return
        try:
            queued_s = time.perf_counter() - queued
            if self._loaded is None:
                raise GenerationError("no model is loaded")
            self._active = cancel
            watch = Stopwatch()
            last = Chunk(finish_reason="stop", usage=Usage())
            for chunk in self._on_decode_thread(self._loaded.model, prompt, params, cancel):
                if chunk.text:
                    watch.mark_token()
                    yield chunk
                if chunk.finish_reason:
                    last = chunk
            counted = last.usage or Usage()
            usage = watch.usage(counted.prompt_tokens, counted.completion_tokens)
            usage.queued_s = queued_s
            yield Chunk(finish_reason=last.finish_reason, usage=usage)
        finally:
            self._active = None
            self._queue.leave()

    def _on_decode_thread(
        self, model: Model, prompt: str, params: SamplingParams, cancel: CancelToken
    ) -> Iterator[Chunk]:
        """Run ``model.generate`` on the engine's one decode thread and pass its chunks on.

        Every generation decodes on the same thread whoever asks (UI workers, API, CLI). llama.cpp's
        OpenMP runtime keeps a pool of worker threads per calling thread; once two callers have decoded,
        the pools outnumber the cores and every decode slows by 20-25 % (measured by ``inglenook bench``).
        """
        chunks: queue.SimpleQueue = queue.SimpleQueue()

        def pump() -> None:
            try:
                for chunk in model.generate(prompt, params, cancel):
                    chunks.put(chunk)
            except BaseException as exc:  # handed to the caller, raised there
                chunks.put(exc)
            finally:
                chunks.put(_DONE)

        job = self._decoder.submit(pump)
        try:
            while (item := chunks.get()) is not _DONE:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            if not job.done():  # the consumer stopped early: stop decoding before the turn is given up
                cancel.cancel()
            job.result()

    def cancel(self) -> bool:
        """Cancel the generation that is running now, if any."""
        active = self._active
        if active is None:
            return False
        active.cancel()
        return True
