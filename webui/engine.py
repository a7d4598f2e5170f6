"""The engine: the one place that owns the loaded model(s).

It loads, unloads and switches models, runs generations in first-come-first-served order (one at a
time, or as many as the model decodes together: ``Model.parallel``; others wait in a fair queue), cancels, and
measures what the user sees: time to first token and tokens per second.
One model is *active* (the one generations run on); with ``max_loaded > 1``
up to that many stay resident, so switching back to one is instant.

Each loaded model lives in its own worker process (:mod:`webui.worker`): a native crash there ends the
reply in flight with a :class:`~webui.worker.WorkerCrashed` error, the server stays up, and the next
request loads the model again (a model whose process dies while loading twice in a row is marked broken,
and loading it answers why). Unloading ends the process, so its memory returns. A new model (or the same
one with new settings) is started before the old one is let go, so a failed load leaves the old one working.
"""

from __future__ import annotations

import gc
import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
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
    ModelNotLoaded,
    SamplingParams,
    Stopwatch,
    Usage,
)
from backends.registry import LoaderRegistry
from webui.models.memory import process_rss
from webui.worker import CrashReport, WorkerCrashed, WorkerLoadCrashed, WorkerModel

log = logging.getLogger(__name__)

_DONE = object()  # end of a decode-thread stream
LOAD_ATTEMPTS = 2  # a model whose process dies while loading this many times in a row is marked broken


class FairQueue:
    """Turns granted in arrival order, up to ``capacity()`` at once; a waiter can give up its place.

    An ``exclusive`` turn (a load, an unload) waits until it is alone. Nobody overtakes an earlier waiter,
    so an exclusive turn is never starved by a stream of shared ones.
    """

    def __init__(self, poll_s: float = 0.02, capacity: Callable[[], int] = lambda: 1) -> None:
        self._cv = threading.Condition()
        self._next_ticket = 0
        self._waiting: list[int] = []  # tickets in arrival order
        self._holders = 0
        self._exclusive = False
        self._capacity = capacity
        self._poll_s = poll_s

    @property
    def waiting(self) -> int:
        """Turns held plus turns waited for."""
        with self._cv:
            return self._holders + len(self._waiting)

    @property
    def holders(self) -> int:
        with self._cv:
            return self._holders

    def _may_enter(self, ticket: int, exclusive: bool) -> bool:
        if self._waiting[0] != ticket or self._exclusive:
            return False
        if exclusive:
            return self._holders == 0
        return self._holders < max(1, self._capacity())

    def enter(self, cancel: CancelToken | None = None, exclusive: bool = False) -> bool:
        """Wait for our turn. False if ``cancel`` fired while waiting (the place is given up)."""
        with self._cv:
            ticket = self._next_ticket
            self._next_ticket += 1
            self._waiting.append(ticket)
            while not self._may_enter(ticket, exclusive):
                if cancel is not None and cancel.cancelled:
                    self._waiting.remove(ticket)
                    self._cv.notify_all()
                    return False
                self._cv.wait(self._poll_s if cancel is not None else None)
            self._waiting.pop(0)
            self._holders += 1
            self._exclusive = exclusive
            self._cv.notify_all()  # the next waiter may fit beside us
            return True

    def leave(self) -> None:
        with self._cv:
            self._holders -= 1
            self._exclusive = False
            self._cv.notify_all()


@dataclass
class Loaded:
    """What is loaded, with what: enough to load it again."""

    path: Path
    loader: Loader
    settings: LoadSettings
    model: Model
    load_s: float

    def matches(self, path: Path, loader: Loader, settings: LoadSettings) -> bool:
        return self.path == path and self.loader.name == loader.name and self.settings == settings

    @property
    def crashed(self) -> CrashReport | None:
        """How the model's worker died, if it did (it is loaded again before its next use)."""
        return self.model.crashed() if isinstance(self.model, WorkerModel) else None


@dataclass
class Broken:
    """A model that cannot be loaded as it is: its process died on every attempt."""

    settings: LoadSettings
    mtime: float
    reason: str


class Engine:
    def __init__(self, registry: LoaderRegistry, max_loaded: int = 1, workers: bool = True) -> None:
        """``workers=False`` runs models in this process (no crash isolation; for measuring what it costs)."""
        self.registry = registry
        self.max_loaded = max(1, max_loaded)
        self.workers = workers
        self.last_crash: CrashReport | None = None  # the latest worker death, for /v1/internal/model/info
        self._broken: dict[Path, Broken] = {}
        self._revive_lock = threading.Lock()  # one reload of a crashed model at a time
        self._loaded: Loaded | None = None
        self._spare: OrderedDict[Path, Loaded] = OrderedDict()  # resident but not active; oldest first
        self._recipes: dict[Path, tuple[Loader, LoadSettings]] = {}  # how each model was last loaded
        self._queue = FairQueue(capacity=self._slots)
        self._admin = threading.Lock()  # one load/unload at a time
        self._active: set[CancelToken] = set()  # the generations running now (several when the model batches)
        self._busy = 0
        self._busy_lock = threading.Lock()
        self._decoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inglenook-decode")
        self._busy_listeners: list[Callable[[bool], None]] = []
        self._load_progress: float | None = None  # the fraction of the load in progress (None: none)

    def on_busy(self, listener: Callable[[bool], None]) -> None:
        """Call ``listener(True)`` when a generation takes its turn and ``listener(False)`` when it gives it up.

        For parts that poll (Gradio's queue) and can slow down while tokens are decoded: on a small
        machine every wake-up of another thread stalls llama.cpp's threads, which wait for each other.
        Called on the generating thread; a listener that raises is logged and dropped.
        """
        self._busy_listeners.append(listener)

    def _slots(self) -> int:
        """How many generations may run at once: what the active model decodes together."""
        loaded = self._loaded
        return max(1, getattr(loaded.model, "parallel", 1)) if loaded is not None else 1

    def _tell_busy(self, busy: bool) -> None:
        with self._busy_lock:  # listeners hear when the first generation starts and the last one ends
            self._busy += 1 if busy else -1
            if self._busy != (1 if busy else 0):
                return
        for listener in list(self._busy_listeners):
            try:
                listener(busy)
            except Exception:
                log.exception("busy listener %r failed; dropped", listener)
                self._busy_listeners.remove(listener)

    # -- what is loaded -------------------------------------------------------------
    @property
    def loaded(self) -> Loaded | None:
        return self._loaded

    @property
    def load_progress(self) -> float | None:
        """How far the load in progress is (0..1, as its loader reports it), None when nothing loads."""
        return self._load_progress

    @property
    def info(self) -> ModelInfo | None:
        return self._loaded.model.info if self._loaded else None

    @property
    def resident(self) -> list[Loaded]:
        """Every model in memory, the active one first."""
        return ([self._loaded] if self._loaded else []) + list(reversed(self._spare.values()))

    def rss(self) -> int | None:
        """Resident memory of this process and its model workers together, in bytes (None without /proc):
        with models in worker processes, this process alone no longer shows what a model costs."""
        own = process_rss()
        if own is None:
            return None
        return own + sum(getattr(m.model, "rss", lambda: 0)() or 0 for m in self.resident)

    def resident_info(self, path: Path) -> ModelInfo | None:
        """The info of ``path`` if it is in memory (active or spare), else None."""
        found = next((m for m in self.resident if m.path == path), None)
        return found.model.info if found else None

    def count_tokens(self, text: str) -> int:
        """How many tokens ``text`` is as a prompt (BOS included), counted by the loaded model's own tokenizer.

        Waits while a model loads, so it never touches a model being closed.
        """
        with self._admin:
            if self._loaded is None:
                raise ModelNotLoaded("no model is loaded")
            self._revive()
            try:
                return len(self._loaded.model.tokenize(text, add_special=True))
            except WorkerCrashed as exc:
                self._record_crash(exc.report)
                raise

    def ignored_params(self, params: SamplingParams) -> list[str]:
        return self._loaded.loader.ignored_params(params, self._loaded.model) if self._loaded else []

    # -- load / unload ----------------------------------------------------------------
    def load(
        self,
        path: Path,
        loader: str | None = None,
        settings: LoadSettings | None = None,
        preempt: bool = True,
        reuse: bool = False,
    ) -> ModelInfo:
        """Make ``path`` the active model.

        ``preempt`` (the UI's Load button): a generation in progress is cancelled and finishes before the
        switch. Without it (the API's ``model`` field) the switch waits its turn in the queue like a
        generation. Queued generations run on the new model. ``reuse``: a model already in memory is used
        with whatever settings it was loaded with. If the new model fails to load, the previous one is
        loaded again and the error says so.
        """
        chosen = self.registry.pick(path, loader)
        missing = chosen.available()
        if missing:
            raise ModelLoadError(f"loader {chosen.name} is unavailable: {missing}")
        settings = settings if settings is not None else chosen.settings_type()
        if not (reuse and self.resident_info(path)):
            chosen.check(path, settings)  # cheap validation while the current model still works
        with self._admin:
            if preempt:
                self._take_turn()
            else:
                self._queue.enter(exclusive=True)
            try:
                self._activate(path, chosen, settings, reuse)
            finally:
                self._queue.leave()
        return self._loaded.model.info

    def _activate(self, path: Path, loader: Loader, settings: LoadSettings, reuse: bool = False) -> None:
        """Make ``path`` active; the caller holds the turn.

        The new model is loaded before the current one is closed or parked: if the load fails (bad
        settings, a process that dies while loading), the current model stays active and usable.
        """
        current = self._loaded
        if (
            current is not None
            and current.path == path
            and current.crashed is None
            and (reuse or current.matches(path, loader, settings))
        ):
            return
        spare = self._spare.pop(path, None)
        if spare is not None and spare.crashed is None and (reuse or spare.matches(path, loader, settings)):
            self._park(current)
            self._loaded = spare
            return
        if spare is not None:
            self._close_one(spare)
        try:
            fresh = self._load(path, loader, settings)
        except Exception as exc:
            message = str(exc) if isinstance(exc, ModelLoadError) else f"{type(exc).__name__}: {exc}"
            if current is not None and current.crashed is None:
                message += f" ({current.path.name} is still loaded)"
            raise ModelLoadError(message) from exc
        if current is not None and current.path == path:  # same model, other settings: the old one goes
            self._close_one(current)
        else:
            self._park(current)
        self._loaded = fresh
        while len(self._spare) > self.max_loaded - 1:
            self._close_one(self._spare.popitem(last=False)[1])
        self._recipes[path] = (loader, settings)

    def reload(self, settings: LoadSettings | None = None) -> ModelInfo:
        """Load the active model again from its file (with new ``settings``, or the ones it was loaded with).

        Unlike :meth:`load`, the same settings still read the file again, so Reload picks up a changed file.
        The new copy is started before the old one is closed: if it fails, the old one stays loaded and the
        error says so.
        """
        loaded = self._loaded
        if loaded is None:
            raise ModelLoadError("no model is loaded, so there is nothing to reload")
        settings = settings if settings is not None else loaded.settings
        loaded.loader.check(loaded.path, settings)
        with self._admin:
            self._take_turn()
            try:
                current = self._loaded
                if current is None:
                    raise ModelLoadError("the model was unloaded meanwhile, so there is nothing to reload")
                try:
                    fresh = self._load(current.path, current.loader, settings)
                except Exception as exc:
                    message = str(exc) if isinstance(exc, ModelLoadError) else f"{type(exc).__name__}: {exc}"
                    raise ModelLoadError(f"{message} ({current.path.name} is still loaded as it was)") from exc
                self._close_one(current)
                self._loaded = fresh
                self._recipes[current.path] = (current.loader, settings)
            finally:
                self._queue.leave()
        return self._loaded.model.info

    def _park(self, loaded: Loaded | None) -> None:
        """Keep ``loaded`` resident as a spare if there is room for more than one model, else close it."""
        if loaded is None:
            return
        if self.max_loaded > 1 and loaded.crashed is None:
            self._spare[loaded.path] = loaded
        else:
            self._close_one(loaded)

    def unload(self, path: Path | None = None) -> None:
        """Unload ``path`` (active or spare), or every model when None."""
        with self._admin:
            self._take_turn()
            try:
                if path is None:
                    self._close()
                    for spare in list(self._spare.values()):
                        self._close_one(spare)
                    self._spare.clear()
                elif self._loaded is not None and self._loaded.path == path:
                    self._close()
                elif path in self._spare:
                    self._close_one(self._spare.pop(path))
            finally:
                self._queue.leave()

    def _take_turn(self) -> None:
        for active in list(self._active):
            active.cancel()
        self._queue.enter(exclusive=True)

    def _load(self, path: Path, loader: Loader, settings: LoadSettings) -> Loaded:
        """Load ``path`` (in a new worker process); a process that dies while loading is given one more try."""
        broken = self._broken.get(path)
        if broken is not None and broken.settings == settings and broken.mtime == _mtime(path):
            raise ModelLoadError(broken.reason)
        self._broken.pop(path, None)
        for attempt in range(1, LOAD_ATTEMPTS + 1):
            start = time.perf_counter()
            try:
                # a loader with nothing native in it (a remote server's client) needs no process of its own
                isolate = self.workers and not loader.in_process
                self._load_progress = 0.0
                model = (
                    WorkerModel(loader, path, settings, self._note_progress)
                    if isolate
                    else loader.load_reporting(path, settings, self._note_progress)
                )
            except WorkerLoadCrashed as exc:
                self._record_crash(exc.report)
                if attempt < LOAD_ATTEMPTS:
                    continue
                reason = (
                    f"{path.name} is marked broken: its model process crashed ({exc.report.how}) on each of "
                    f"{LOAD_ATTEMPTS} loads in a row; change its file or its settings to try again"
                )
                self._broken[path] = Broken(settings, _mtime(path), reason)
                log.error("%s", reason)
                raise ModelLoadError(reason) from None
            finally:
                self._load_progress = None
            load_s = time.perf_counter() - start
            where = f" in process {model.pid}" if isinstance(model, WorkerModel) else ""
            log.info("loaded %s with %s in %.2f s%s", path.name, loader.name, load_s, where)
            return Loaded(path, loader, settings, model, load_s)
        raise AssertionError("unreachable")

    def _note_progress(self, fraction: float) -> None:
        self._load_progress = fraction

    @property
    def broken(self) -> dict[str, str]:
        """Models marked broken (file name -> why), for the model info."""
        return {path.name: b.reason for path, b in self._broken.items()}

    def _record_crash(self, report: CrashReport) -> None:
        """Log a worker's death once, in one line (what it said last that is not a stack frame; the whole
        tail at debug level), and keep it for the model info."""
        if report is self.last_crash:
            return
        self.last_crash = report
        said = [line for line in report.stderr if not line.startswith((" ", "\t", "Thread 0x", "Current thread"))]
        last = " | ".join(said[-3:]) or "nothing"
        log.error("the model process of %s crashed (%s) while %s; its stderr ended with: %s",
                  report.model, report.how, report.during, last)  # fmt: skip
        log.debug("the last lines the model process of %s wrote:\n%s", report.model, "\n".join(report.stderr))

    def _revive(self) -> None:
        """Load the active model again if its worker died (the next request after a crash does this)."""
        with self._revive_lock:
            current = self._loaded
            if current is None or current.crashed is None:
                return
            self._record_crash(current.crashed)
            current.model.close()
            try:
                self._loaded = self._load(current.path, current.loader, current.settings)
            except Exception as exc:
                self._loaded = None
                message = str(exc) if isinstance(exc, ModelLoadError) else f"{type(exc).__name__}: {exc}"
                raise GenerationError(
                    f"the model process of {current.path.name} crashed earlier and it could not be loaded again: "
                    f"{message}"
                ) from exc
            log.info("loaded %s again after its process crashed", current.path.name)

    def _close(self) -> None:
        if self._loaded is not None:
            self._close_one(self._loaded)
            self._loaded = None

    @staticmethod
    def _close_one(loaded: Loaded) -> None:
        loaded.model.close()
        gc.collect()
        log.info("unloaded %s", loaded.path.name)

    # -- generation -------------------------------------------------------------------
    def generate(
        self, prompt: str, params: SamplingParams, cancel: CancelToken | None = None, model: Path | None = None
    ) -> Iterator[Chunk]:
        """Stream a completion of ``prompt``, waiting for our turn first.

        ``model``: the model the prompt was made for (the API names one per request). If another request
        switched models while this one waited, that model is made active again before generating.

        The last chunk carries ``usage`` with the engine's own timings (TTFT is
        measured to the first visible text, from the moment our turn starts;
        the time spent queued is reported apart). Close the iterator, or
        cancel, to give the turn up early.
        """
        params.validate()
        cancel = cancel or CancelToken()
        queued = time.perf_counter()
        exclusive = False
        while True:
            # a generation that must switch models first takes the model alone; others share it
            if not self._queue.enter(cancel, exclusive=exclusive):
                yield Chunk(finish_reason="cancelled", usage=Usage(queued_s=time.perf_counter() - queued))
                return
            if exclusive or model is None or (self._loaded is not None and self._loaded.path == model):
                break
            self._queue.leave()
            exclusive = True
        self._tell_busy(True)
        try:
            queued_s = time.perf_counter() - queued
            if model is not None and (self._loaded is None or self._loaded.path != model):
                self._switch_back(model)
            if self._loaded is None:
                raise ModelNotLoaded("no model is loaded")
            self._revive()
            self._active.add(cancel)
            watch = Stopwatch()
            last = Chunk(finish_reason="stop", usage=Usage())
            model = self._loaded.model
            # a worker decodes on its own one thread, a remote model streams on this one, a model that batches
            # on its own one thread; any other model in this process on the engine's decode thread
            own_thread = (
                isinstance(model, WorkerModel) or self._loaded.loader.in_process or getattr(model, "parallel", 1) > 1
            )
            chunks = model.generate(prompt, params, cancel) if own_thread else (
                self._on_decode_thread(model, prompt, params, cancel))  # fmt: skip
            try:
                for chunk in chunks:
                    if chunk.text:
                        watch.mark_token()
                        yield chunk
                    if chunk.finish_reason:
                        last = chunk
            except WorkerCrashed as exc:
                self._record_crash(exc.report)
                raise WorkerCrashed(f"{exc}; the model is loaded again for the next request", exc.report) from None
            finally:
                chunks.close()
            counted = last.usage or Usage()
            usage = watch.usage(counted.prompt_tokens, counted.completion_tokens)
            usage.queued_s = queued_s
            usage.cached_tokens = counted.cached_tokens
            usage.draft_tokens, usage.draft_accepted = counted.draft_tokens, counted.draft_accepted
            yield Chunk(finish_reason=last.finish_reason, usage=usage)
        finally:
            self._active.discard(cancel)
            self._queue.leave()
            self._tell_busy(False)

    def _switch_back(self, path: Path) -> None:
        """Activate ``path`` again (from the spares, or reloaded as it was last loaded); the caller holds the turn."""
        recipe = self._recipes.get(path)
        if path not in self._spare and recipe is None:
            raise ModelNotLoaded(f"model {path.name} is not loaded")
        loader, settings = recipe if recipe else (self._spare[path].loader, self._spare[path].settings)
        try:
            self._activate(path, loader, settings, reuse=True)
        except ModelLoadError as exc:
            raise GenerationError(str(exc)) from exc

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

    # -- embeddings ---------------------------------------------------------------------
    def embed(self, texts: list[str], model: Path | None = None) -> tuple[list[list[float]], int]:
        """(one vector per text, in order; the tokens they were) from ``model`` (a resident one: active or
        spare; None: the active one), without making it active, so an embedding model kept beside the chat
        model (``max_loaded > 1``) never takes the chat's place. Takes a turn in the queue like a generation
        (a model never embeds and generates at once; nothing is unloaded under it)."""
        # alone: a model that batches generations must not decode them while its embedding context runs
        if not self._queue.enter(None, exclusive=True):
            raise AssertionError("unreachable: no cancel token")
        try:
            if model is None or (self._loaded is not None and self._loaded.path == model):
                if self._loaded is None:
                    raise ModelNotLoaded("no model is loaded")
                self._revive()
                found = self._loaded
            else:
                found = self._spare.get(model)
                if found is None:
                    raise ModelNotLoaded(f"model {model.name} is not loaded")
                if found.crashed is not None:  # a spare whose worker died: load it again in its place
                    self._record_crash(found.crashed)
                    found.model.close()
                    found = self._spare[model] = self._load(found.path, found.loader, found.settings)
            try:
                vectors = found.model.embed(list(texts))
                tokens = sum(len(found.model.tokenize(t, add_special=True)) for t in texts)
            except WorkerCrashed as exc:
                self._record_crash(exc.report)
                raise
            return vectors, tokens
        finally:
            self._queue.leave()

    def load_beside(self, path: Path, loader: str | None = None, settings: LoadSettings | None = None) -> ModelInfo:
        """Load ``path`` as a resident spare, leaving the active model active (an embedding model beside the chat
        model). With ``max_loaded`` 1 there is no room beside it, so this is :meth:`load` (a switch)."""
        if self.max_loaded < 2 or self._loaded is None:
            return self.load(path, loader, settings, preempt=False, reuse=True)
        info = self.resident_info(path)
        if info is not None:
            return info
        chosen = self.registry.pick(path, loader)
        missing = chosen.available()
        if missing:
            raise ModelLoadError(f"loader {chosen.name} is unavailable: {missing}")
        settings = settings if settings is not None else chosen.settings_type()
        chosen.check(path, settings)
        with self._admin:
            self._queue.enter()
            try:
                if self.resident_info(path) is None:
                    fresh = self._load(path, chosen, settings)
                    self._spare[path] = fresh
                    self._recipes[path] = (chosen, settings)
                    while len(self._spare) > self.max_loaded - 1:
                        self._close_one(self._spare.popitem(last=False)[1])
            finally:
                self._queue.leave()
        return self.resident_info(path) or fresh.model.info

    def cancel(self) -> bool:
        """Cancel the generations running now (one, or several when the model batches), if any."""
        active = list(self._active)
        for token in active:
            token.cancel()
        return bool(active)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
