"""Models in worker processes: the child that runs a loader, and the proxy ``Model`` the engine holds.

A native fault in llama.cpp, torch or a GPTQ kernel (a CPU that advertises an instruction it cannot run,
an out-of-memory kill, an ``abort()``) kills the process it happens in. So each loaded model lives in its
own process, started with ``python -m webui.worker`` (a fresh interpreter: no fork of a threaded server),
and the server only ever loses the reply in flight.

The protocol is pickled tuples over three pipes (``multiprocessing.connection.Connection`` framing):

- requests, parent -> child: ``(op, *args)``: ``load``, ``tokenize``, ``detokenize``, ``embed`` (run on the
  decode thread, as llama.cpp wants one calling thread), ``generate``, ``cancel``, ``call`` (a few named
  extras, e.g. the llama.cpp cache reset ``inglenook bench`` needs), ``close``;
- replies, child -> parent: ``("ok", value)`` or ``("err", kind, message)`` for every request but
  ``generate`` and ``cancel``, in order; while loading, ``("progress", fraction)`` before the load's reply
  (the page's load bar);
- the stream, child -> parent: ``(generation id, text, finish_reason, usage, logprobs)`` per chunk, then
  ``(generation id, None, "end", None, error)``.

The stream has its own pipe, written by the child's one decode thread and read directly by the thread that
asked for the generation (no relay thread, so a token costs one pickle, one pipe write and one wake-up).
A model that decodes several generations together (``Model.parallel > 1``, llama.cpp's batching) runs each
on a thread of its own in the child (they only relay: the model decodes on its one batch thread); in the
parent, whichever reader holds the stream passes the other generations' chunks to their inboxes.
The child's main thread answers requests meanwhile, so cancel and tokenize work during a generation.
When the child dies, its pipes close: the reader sees EOF and reports how it died (the signal), with the
last lines the child wrote to stderr (``faulthandler`` writes the Python stack of a fault there).

This module is imported by the child, so it imports nothing heavy at module level.
"""

from __future__ import annotations

import os
import pickle
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

from backends.base import (
    BadRequest,
    Busy,
    CancelToken,
    Chunk,
    GenerationError,
    Loader,
    LoadProgress,
    LoadSettings,
    Model,
    ModelCrashed,
    ModelInfo,
    ModelLoadError,
    ModelNotFound,
    ModelNotLoaded,
    PromptTooLong,
    SamplingParams,
    Usage,
)

STDERR_LINES = 80  # how much of a worker's stderr is kept for a crash report
CANCEL_POLL_S = 0.02  # how often a waiting reader checks its cancel token (a token arriving wakes it at once)
# After a cancel, how long the reader waits for the worker's end of the generation before it gives the engine up
# anyway. A cancel is seen between tokens, so the end comes after the token in flight: ~30 ms on an idle machine,
# but 0.3-1.4 s for one gemma-270m token on 2 cores at load 15 (measured 2026-11-30, what made cancel-to-free
# 153-2850 ms). The worker finishes that token on its own; the next generation queues behind it and skips its tail.
# 20 ms covers one gemma-270m token on an idle machine (~12 ms); 50 ms put the Node and Vercel clients' median
# cancel-to-free at 105-124 ms under load (issue 15 asks < 100 ms).
CANCEL_GRACE_S = 0.02
CLOSE_TIMEOUT_S = 10.0
# OpenMP's wait policy for llama.cpp's threads in a worker. ACTIVE (libgomp's default) spins at every barrier,
# so on a small machine one busy core (a browser, an IDE, a build) makes each step wait for a descheduled peer:
# 2-3 tok/s instead of ~25. PASSIVE sleeps at the barrier instead. Override with INGLENOOK_OMP_WAIT_POLICY
# (or OMP_WAIT_POLICY in the server's environment); libgomp reads it once when it loads, so it is set at spawn.
WAIT_POLICY_ENV = "INGLENOOK_OMP_WAIT_POLICY"
DEFAULT_WAIT_POLICY = ""  # libgomp's own: PASSIVE halved idle decode here (45 vs 90 tok/s, 2026-11-30)


def worker_environment(parent: Mapping[str, str]) -> dict[str, str]:
    """The environment a worker starts with: ``parent``'s plus the OpenMP wait policy for its decode threads."""
    env = dict(parent)
    policy = parent.get(WAIT_POLICY_ENV) or parent.get("OMP_WAIT_POLICY") or DEFAULT_WAIT_POLICY
    if policy.strip():
        env["OMP_WAIT_POLICY"] = policy.strip().upper()
    return env


# The typed errors a worker's failure keeps across the pipe (by name, rebuilt here), so the API maps a prompt too
# long, a model not found, a bad value … to the same status as in one process (webui/api/errors.py).
TYPED_ERRORS: dict[str, type[Exception]] = {
    cls.__name__: cls
    for cls in (PromptTooLong, ModelNotFound, ModelNotLoaded, ModelCrashed, Busy, BadRequest, ModelLoadError,
                GenerationError, ValueError)
}  # fmt: skip


def error_message(exc: BaseException, fallback: type[Exception]) -> tuple[str, str]:
    """(kind, message) for a failure in the worker: its typed-error class, or ``fallback`` naming its type."""
    for cls in type(exc).__mro__:
        if TYPED_ERRORS.get(cls.__name__) is cls:
            return cls.__name__, str(exc)
    return fallback.__name__, f"{type(exc).__name__}: {exc}"


def rebuild_error(kind: str, message: str) -> Exception:
    """The error the worker reported, as its own type (GenerationError for a kind this side does not know)."""
    return TYPED_ERRORS.get(kind, GenerationError)(message)


class WorkerCrashed(ModelCrashed):
    """The model's process died; ``report`` says how."""

    def __init__(self, message: str, report: CrashReport) -> None:
        super().__init__(message)
        self.report = report


class WorkerLoadCrashed(ModelLoadError):
    """The model's process died while loading; ``report`` says how."""

    def __init__(self, message: str, report: CrashReport) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class CrashReport:
    """How a worker died: for the log, the API's model info and the error the user sees."""

    model: str
    how: str  # "SIGSEGV", "SIGABRT", "SIGKILL (out of memory?)", "exit status 3"
    during: str  # "loading", "generating", "tokenize", ...
    when: float = field(default_factory=time.time)
    stderr: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "model": self.model,
            "how": self.how,
            "during": self.during,
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.when)),
            "stderr": self.stderr,
        }


def describe_exit(returncode: int | None) -> str:
    """``-11`` -> ``SIGSEGV``; a kill by signal 9 is most often the kernel's out-of-memory killer."""
    if returncode is None:
        return "no exit status"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"{name} (out of memory?)" if name == "SIGKILL" else name
    return f"exit status {returncode}"


# -- the parent's side --------------------------------------------------------------------------------------


class WorkerModel(Model):
    """A :class:`Model` whose loader runs in a worker process; every call crosses the pipe.

    ``info`` is the child's model info, cached. After the worker dies, :attr:`crash` says how, and every call
    raises :class:`WorkerCrashed`; the engine loads the model again in a new worker.
    """

    def __init__(
        self, loader: Loader, path: Path, settings: LoadSettings, progress: LoadProgress | None = None
    ) -> None:
        """``progress`` hears the fraction of the load done, as the child's loader reports it."""
        self.path, self.loader_name = path, loader.name
        self.crash: CrashReport | None = None
        self.closed = False
        self._stderr: deque[str] = deque(maxlen=STDERR_LINES)
        self._lock = threading.Lock()  # one request/reply at a time on the request pipes
        self._read_lock = threading.Lock()  # one reader of the stream at a time; it hands on others' chunks
        self._inbox: dict[int, queue.SimpleQueue] = {}  # generation id -> chunks read by another reader
        self._id_lock = threading.Lock()
        self._next_id = 0
        self.parallel = 1
        requests_r, requests_w = os.pipe()
        replies_r, replies_w = os.pipe()
        stream_r, stream_w = os.pipe()
        child_fds = (requests_r, replies_w, stream_w)
        env = worker_environment(os.environ)
        # the child imports the same code (a worktree, pytest's rootdir, an editable install) as this process
        env["PYTHONPATH"] = os.pathsep.join(os.path.abspath(p or ".") for p in sys.path)
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "webui.worker", *map(str, child_fds)],
                pass_fds=child_fds,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env=env,
                close_fds=True,
            )
        finally:
            for fd in child_fds:
                os.close(fd)
        self._requests = Connection(requests_w, readable=False)
        self._replies = Connection(replies_r, writable=False)
        self._stream = Connection(stream_r, writable=False)
        self._stderr_reader = threading.Thread(
            target=self._read_stderr, name=f"inglenook-worker-stderr-{self.process.pid}", daemon=True
        )
        self._stderr_reader.start()
        try:
            self.info = self._load(loader, path, settings, progress)
            self.parallel = self._call("call", "parallel")
        except BaseException:
            self.close()  # a load that failed (or was interrupted) leaves no process behind
            raise

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.crash is None and not self.closed and self.process.poll() is None

    def crashed(self) -> CrashReport | None:
        """How the worker died, if it did, noticed even while idle (e.g. killed for memory between requests)."""
        if self.crash is None and not self.closed and self.process.poll() is not None:
            self._died("idle")
        return self.crash

    def rss(self) -> int | None:
        """The worker's resident memory in bytes (what the model costs, interpreter included), if known."""
        try:
            with open(f"/proc/{self.process.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            pass
        return None

    def stderr_tail(self) -> list[str]:
        return list(self._stderr)

    def _read_stderr(self) -> None:
        """Keep the last lines the child writes (llama.cpp's messages, a fault's stack) for crash reports."""
        import logging

        log = logging.getLogger("webui.engine")
        stream = self.process.stderr
        if stream is None:
            return
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", errors="replace").rstrip()
            if line:
                self._stderr.append(line)
                log.debug("worker %s: %s", self.process.pid, line)
        stream.close()

    def _load(self, loader: Loader, path: Path, settings: LoadSettings, progress: LoadProgress | None) -> ModelInfo:
        try:
            loader_ref = pickle.dumps(loader)
        except Exception:  # a loader with unpicklable state: the child finds it by name in its own registry
            loader_ref = None
        try:
            return self._call("load", loader.name, loader_ref, str(path), settings, during="loading", progress=progress)
        except WorkerCrashed as exc:
            raise WorkerLoadCrashed(str(exc), exc.report) from None

    def _died(self, during: str) -> WorkerCrashed:
        """The worker is gone (its pipe closed): wait for its status and say how it died."""
        if self.crash is None:
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:  # a pipe broke but the process hangs: end it
                self.process.kill()
                self.process.wait(timeout=5)
            self._stderr_reader.join(timeout=2)  # the last lines a fault wrote
            self.crash = CrashReport(Path(self.path).name, describe_exit(self.process.returncode), during,
                                     stderr=self.stderr_tail())  # fmt: skip
        crash = self.crash
        return WorkerCrashed(f"the model process crashed ({crash.how}) while {crash.during} ({crash.model})", crash)

    def _call(self, op: str, *args, during: str | None = None, progress: LoadProgress | None = None):
        """Send one request and wait for its reply; the worker's death raises :class:`WorkerCrashed`.
        ``progress`` hears the ``("progress", fraction)`` messages that come before a load's reply."""
        if self.crash is not None:
            raise self._died(self.crash.during)
        if self.closed:
            raise GenerationError("the model was unloaded")
        with self._lock:
            try:
                self._requests.send((op, *args))
                reply = self._replies.recv()
                while reply[0] == "progress":
                    if progress is not None:
                        progress(reply[1])
                    reply = self._replies.recv()
            except (EOFError, OSError):
                raise self._died(during or op) from None
        if reply[0] == "ok":
            return reply[1]
        _, kind, message = reply
        raise rebuild_error(kind, message)

    def _send(self, *message) -> None:
        with self._lock:
            self._requests.send(message)

    # -- Model ---------------------------------------------------------------------------------------------
    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        return self._call("tokenize", text, add_special)

    def detokenize(self, tokens: list[int]) -> str:
        return self._call("detokenize", list(tokens))

    def embed(self, texts: list[str]) -> list[list[float]]:
        return self._call("embed", list(texts), during="embedding")

    def call(self, name: str, *args):
        """One of the worker's extras (see ``_EXTRAS``), e.g. ``call("reset_cache")``."""
        return self._call("call", name, *args)

    def _receive(self, gid: int) -> tuple | None:
        """The next stream item of generation ``gid``, or None after a short wait (to check its cancel token).

        Whoever gets the read lock reads the pipe and puts other generations' items in their inboxes; the
        others wait on their inbox meanwhile. With one generation this is the direct read it always was.
        """
        box = self._inbox[gid]
        try:
            return box.get_nowait()
        except queue.Empty:
            pass
        if not self._read_lock.acquire(timeout=CANCEL_POLL_S):
            try:
                return box.get(timeout=CANCEL_POLL_S)
            except queue.Empty:
                return None
        try:
            try:
                return box.get_nowait()  # put there while we took the lock
            except queue.Empty:
                pass
            if not self._stream.poll(CANCEL_POLL_S):
                return None
            item = self._stream.recv()
        finally:
            self._read_lock.release()
        if item[0] == gid:
            return item
        other = self._inbox.get(item[0])
        if other is not None:  # else the tail of a generation given up early
            other.put(item)
        return None

    def generate(self, prompt: str, params: SamplingParams, cancel: CancelToken) -> Iterator[Chunk]:
        with self._id_lock:
            self._next_id += 1
            gid = self._next_id
            self._inbox[gid] = queue.SimpleQueue()
        try:
            try:
                if self.crash is not None:
                    raise self._died(self.crash.during)
                if self.closed:
                    raise GenerationError("the model was unloaded")
                self._send("generate", gid, prompt, params)
            except (EOFError, OSError):
                raise self._died("generating") from None
            ended = cancel_sent = False
            give_up_at = 0.0
            received = 0
            try:
                while True:
                    if not cancel_sent and cancel.cancelled:
                        self._send("cancel", gid)
                        cancel_sent = True
                        give_up_at = time.monotonic() + CANCEL_GRACE_S
                    if cancel_sent and time.monotonic() >= give_up_at:  # the engine is free; the worker ends alone
                        ended = True  # usage: the chunks that carried text (a token each, as loaders stream)
                        yield Chunk(finish_reason="cancelled", usage=Usage(completion_tokens=received))
                        return
                    item = self._receive(gid)
                    if item is None:
                        continue
                    _, text, finish, usage, extra = item
                    if finish == "end":
                        ended = True
                        if extra is not None:
                            kind, message = extra
                            raise rebuild_error(kind, message)
                        return
                    received += bool(text)
                    yield Chunk(text, finish, usage, extra)
            except (EOFError, OSError):
                ended = True
                raise self._died("generating") from None
            finally:
                if not ended:  # the consumer stopped early: stop the worker (its tail is skipped)
                    self._abandon(gid, cancel_sent)
        finally:
            self._inbox.pop(gid, None)

    def _abandon(self, gid: int, cancel_sent: bool) -> None:
        """Stop the worker's generation ``gid`` without waiting for it (its tail is skipped by the next reader)."""
        try:
            if not cancel_sent:
                self._send("cancel", gid)
        except (EOFError, OSError):
            self._died("generating")  # recorded; the next call reports it

    def close(self) -> None:
        """End the worker: its memory returns to the system whatever the loader leaked."""
        if self.closed:
            return
        self.closed = True
        if self.crash is None and self.process.poll() is None:
            try:
                with self._lock:
                    self._requests.send(("close",))
                    if self._replies.poll(CLOSE_TIMEOUT_S):
                        self._replies.recv()
            except (EOFError, OSError):
                pass
        try:
            self.process.wait(timeout=CLOSE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
        for conn in (self._requests, self._replies, self._stream):
            conn.close()
        self._stderr_reader.join(timeout=2)


class LlamaHandle:
    """What ``inglenook bench`` reads of a worker's ``llama_cpp.Llama``: its cache reset and its settings."""

    def __init__(self, model: WorkerModel, state: dict) -> None:
        self._model = model
        self.n_threads, self.n_threads_batch, self.n_batch = (
            state["n_threads"],
            state["n_threads_batch"],
            state["n_batch"],
        )
        self._n_ctx = state["n_ctx"]

    def n_ctx(self) -> int:
        return self._n_ctx

    def reset(self) -> None:
        self._model.call("reset_cache")


def llama_handle(model: Model) -> LlamaHandle | None:
    """The worker's llama.cpp handle for ``inglenook bench``; None for other loaders."""
    if not isinstance(model, WorkerModel):
        return None
    state = model.call("llama_state")
    return LlamaHandle(model, state) if state else None


# -- the child's side ----------------------------------------------------------------------------------------


def _llama_state(model: Model) -> dict | None:
    llm = getattr(model, "_llm", None)
    if llm is None:
        return None
    n_ctx = llm.n_ctx() // _parallel(model)  # each parallel sequence's own context
    return {"n_ctx": n_ctx, "n_threads": llm.n_threads, "n_threads_batch": llm.n_threads_batch,
            "n_batch": llm.n_batch}  # fmt: skip


def _reset_cache(model: Model) -> None:
    if hasattr(model, "forget_kv"):  # llama.cpp: the KV cache, the slots' and the per-conversation cache
        model.forget_kv()
        return
    llm = getattr(model, "_llm", None)
    if getattr(model, "_batch", None) is not None:
        model._batch.forget()  # the parallel slots' caches
    if llm is not None:
        llm.reset()
        if hasattr(model, "_cached_prompt"):
            model._cached_prompt = []


def _decode_threads(model: Model) -> list[str]:
    return sorted(getattr(model, "_inglenook_decode_threads", set()))


def _openmp_environment(model: Model) -> dict[str, str]:
    """The worker's own ``OMP_*`` variables (what its libgomp read at load): tests and bench check the policy."""
    return {k: v for k, v in os.environ.items() if k.startswith("OMP_")}


def _parallel(model: Model) -> int:
    return max(1, int(getattr(model, "parallel", 1)))


_EXTRAS = {"llama_state": _llama_state, "reset_cache": _reset_cache, "decode_threads": _decode_threads,
           "openmp_environment": _openmp_environment, "parallel": _parallel}  # fmt: skip


class _Child:
    """The worker: loads one model, answers requests on the main thread, decodes on one thread."""

    def __init__(self, requests: Connection, replies: Connection, stream: Connection) -> None:
        self.requests, self.replies, self.stream = requests, replies, stream
        self.model: Model | None = None
        self.cancels: dict[int, CancelToken] = {}
        # generations (id, prompt, params), or a callable to run on the decode thread (an embedding)
        self.jobs: deque[tuple[int, str, SamplingParams] | Callable[[], None]] = deque()
        self.wake = threading.Condition()
        self.decode_threads: set[str] = set()
        self.send_lock = threading.Lock()  # parallel generations write the stream from several threads

    def load(self, name: str, loader_ref: bytes | None, path: str, settings: LoadSettings) -> ModelInfo:
        loader = None
        if loader_ref is not None:
            try:
                loader = pickle.loads(loader_ref)
            except Exception:
                loader = None
        if loader is None:
            from backends.registry import LoaderRegistry

            loader = LoaderRegistry().get(name)  # built-ins and entry-point plugins, as in the parent
        sent = [-1.0]

        def report(fraction: float) -> None:  # at most ~100 messages a load, the last one 1.0
            if fraction >= 1.0 or fraction - sent[0] >= 0.01:
                sent[0] = fraction
                self.replies.send(("progress", min(max(float(fraction), 0.0), 1.0)))

        self.model = loader.load_reporting(Path(path), settings, report)
        self.model._inglenook_decode_threads = self.decode_threads  # read by the "decode_threads" extra
        return self.model.info

    def serve(self) -> None:
        threading.Thread(target=self.decode_loop, name="inglenook-decode", daemon=True).start()
        while True:
            try:
                op, *args = self.requests.recv()
            except (EOFError, OSError):  # the server is gone
                os._exit(0)
            if op == "generate":
                gid, prompt, params = args
                self.cancels[gid] = CancelToken()
                with self.wake:
                    self.jobs.append((gid, prompt, params))
                    self.wake.notify()
                continue
            if op == "cancel":
                token = self.cancels.get(args[0])
                if token is not None:
                    token.cancel()
                continue
            if op == "close":  # on the decode thread: after a generation given up early has ended there
                self.on_decode_thread(self.close)
                self.replies.send(("ok", None))
                os._exit(0)
            try:
                reply = ("ok", self.handle(op, args))
            except Exception as exc:  # reported to the caller as its type; the worker keeps serving
                reply = ("err", *error_message(exc, ModelLoadError if op == "load" else GenerationError))
            self.replies.send(reply)

    def handle(self, op: str, args: list):
        if op == "load":
            return self.load(*args)
        if self.model is None:
            raise GenerationError("no model is loaded in this worker")
        if op == "tokenize":
            return self.model.tokenize(*args)
        if op == "detokenize":
            return self.model.detokenize(*args)
        if op == "embed":
            return self.on_decode_thread(lambda: self.model.embed(*args))
        if op == "call":
            name, *rest = args
            if name not in _EXTRAS:
                raise GenerationError(f"unknown worker call {name!r}")
            return _EXTRAS[name](self.model, *rest)
        raise GenerationError(f"unknown worker request {op!r}")

    def on_decode_thread(self, work: Callable[[], object]) -> object:
        """Run ``work`` on the decode thread (after the generation queued before it) and return its result."""
        done: Future = Future()

        def job() -> None:
            try:
                done.set_result(work())
            except BaseException as exc:
                done.set_exception(exc)

        with self.wake:
            self.jobs.append(job)
            self.wake.notify()
        return done.result()

    def decode_loop(self) -> None:
        """Every generation decodes on this one thread (llama.cpp's OpenMP pools are per calling thread).

        A model that batches (``parallel > 1``) decodes on its own one thread; each of its generations is
        relayed by a thread of its own here, so they run together.
        """
        while True:
            with self.wake:
                while not self.jobs:
                    self.wake.wait()
                job = self.jobs.popleft()
            if callable(job):
                job()
                continue
            gid, prompt, params = job
            if self.model is not None and _parallel(self.model) > 1:
                threading.Thread(target=self.run_job, args=(gid, prompt, params), daemon=True,
                                 name=f"inglenook-relay-{gid}").start()  # fmt: skip
                continue
            self.decode_threads.add(threading.current_thread().name)
            self.run_job(gid, prompt, params)

    def send(self, item: tuple) -> None:
        with self.send_lock:
            self.stream.send(item)

    def run_job(self, gid: int, prompt: str, params: SamplingParams) -> None:
        cancel = self.cancels.get(gid) or CancelToken()
        error = None
        try:
            if self.model is None:
                raise GenerationError("no model is loaded in this worker")
            for chunk in self.model.generate(prompt, params, cancel):
                self.send((gid, chunk.text, chunk.finish_reason, chunk.usage, chunk.logprobs))
        except Exception as exc:
            error = error_message(exc, GenerationError)
        finally:
            self.cancels.pop(gid, None)
        self.send((gid, None, "end", None, error))

    def close(self) -> None:
        if self.model is not None:
            self.model.close()


def main(argv: list[str]) -> None:
    """``python -m webui.worker REQUESTS_FD REPLIES_FD STREAM_FD``: serve one model until told to close."""
    import faulthandler

    faulthandler.enable()  # a fault prints the Python stack to stderr: the parent keeps the last lines
    # Ctrl+C in the terminal reaches the whole process group: the server decides when its workers end
    # (it closes them, and a worker whose server is gone sees its pipe close and exits).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.dup2(2, 1)  # anything a library prints goes to stderr, never into the protocol
    sys.stdout = sys.stderr
    requests_fd, replies_fd, stream_fd = (int(a) for a in argv)
    child = _Child(
        Connection(requests_fd, writable=False),
        Connection(replies_fd, readable=False),
        Connection(stream_fd, readable=False),
    )
    child.serve()


if __name__ == "__main__":
    main(sys.argv[1:])
