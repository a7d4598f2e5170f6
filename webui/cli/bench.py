"""``inglenook bench``: what our streaming costs over raw llama-cpp-python.

One command, one model file, one prompt, greedy decoding (temperature 0), the
same ``n_ctx``/threads/batch settings our llama.cpp loader uses. Three
contenders, each given one untimed warm-up run, then interleaved run by run
(raw, engine, ui, raw, engine, ui, ...) so that machine noise hits all alike;
the median of ``--runs`` runs is reported.

What is measured, all with ``time.perf_counter`` on the consumer's side:

raw
    ``llama_cpp.Llama`` loaded directly, driven by
    ``llm.create_completion(prompt, max_tokens=N, temperature=0, stream=True)``.
    TTFT: from just before the call to the first chunk with non-empty text.
    Tokens: the completion text tokenized again (checked against the number
    of text chunks, one per token). It runs in a process of its own (timed
    there, driven run by run over a pipe): llama-cpp-python's OpenMP runtime
    slows *every* decode in a process once two threads have decoded (our
    engine decodes on a thread of its own), so in our process "raw" would slow
    us and itself (see :class:`RawContender`).
engine
    Our :class:`~webui.engine.Engine` (``App.create`` + ``App.load_model``),
    ``engine.generate(prompt, SamplingParams(temperature=0, max_new_tokens=N))``.
    TTFT: from just before the call to the first chunk with text. Tokens: the
    engine's own count (``usage.completion_tokens`` of the final chunk). It is
    called from our main thread, while the ui contender's generations run on
    the server's worker threads: with today's loader that is two threads
    decoding in one process, which OpenMP penalises (see above); ``--no-ui``
    measures the engine alone.
ui
    Our real server (``webui.server.build_server`` on the *same* App, served by
    uvicorn in a background thread on a free 127.0.0.1 port), driven by a real
    ``gradio_client.Client`` submitting to ``/chat`` in a fresh session (so no
    history). The chat path wraps the prompt in the model's chat template, so
    its text differs from the other two; ``max_new_tokens=N`` is passed, and a
    run that stops before N is reported. TTFT: from just before
    ``Client.submit`` to the first update whose assistant text is non-empty and
    not the "…" placeholder. Tokens: the count in the final stats line.
    The stream is throttled to 20 updates/s by design (``webui.chat.reply.throttle``)
    and gradio_client itself polls its message queue every 50 ms, so this TTFT
    includes 0–50 ms of *client-side* delay a browser does not have.

tok/s is the decode speed, the same formula for all three:
``(tokens - 1) / (t_last - t_first)``, where ``t_first`` is the first text
chunk (first non-placeholder update for ui) and ``t_last`` the last text chunk
(the final update, the one carrying the stats line, for ui). The first update
of the ui stream carries exactly one token (the throttle always passes the
first reply at once), so ``tokens - 1`` tokens arrive in that interval, as for
the other two.

Every run starts from an empty KV cache (the raw model and the engine's model
are both reset before each run), so no contender is helped by reusing the
previous run's prompt: TTFT always includes evaluating the whole prompt.

Goals: ≥ 0.97× raw tok/s and ≤ 10 ms extra TTFT over raw, for engine and ui.
This is a measurement, not a test: it returns 0 whatever the figures (and
non-zero with a message when something fails).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import queue
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from backends.base import GenerationError, LoadSettings, ModelLoadError, SamplingParams
from backends.llamacpp import llama_kwargs
from webui.app import App
from webui.models.folder import resolve_model
from webui.paths import UnsafeName
from webui.templates.render import build_chat_prompt
from webui.worker import llama_handle

GOAL_RATIO = 0.97  # engine and ui tok/s at least this fraction of raw
GOAL_EXTRA_TTFT_MS = 10.0  # engine and ui TTFT at most this much above raw
PLACEHOLDER = "…"  # what the chat shows before the first token (webui.ui.chat_tab.display_messages)
SERVER_START_S = 60.0
RUN_TIMEOUT_S = 600.0  # one run of one contender

log = logging.getLogger(__name__)


class BenchError(Exception):
    """The benchmark could not run; the message is for the user, on one line."""


@dataclass
class Sample:
    """One timed run of one contender."""

    ttft_s: float
    decode_s: float  # from the first text (update) to the last
    tokens: int
    finish_reason: str
    text: str = ""
    reported: dict | None = None  # ui only: TTFT and tok/s as the server's stats line reports them

    @property
    def tokens_per_s(self) -> float:
        if self.tokens > 1 and self.decode_s > 0:
            return (self.tokens - 1) / self.decode_s
        return 0.0


@dataclass
class Contender:
    name: str
    samples: list[Sample] = field(default_factory=list)
    prompt_tokens: int = 0

    def warm_up(self) -> None:
        self.run()

    def run(self) -> Sample:  # pragma: no cover - overridden
        raise NotImplementedError

    def close(self) -> None:
        return None


def _settings_mismatch(app: App, kwargs: dict) -> list[str]:
    """Where the engine's loaded ``Llama`` differs from what raw is given (empty when they agree)."""
    llm = _engine_llm(app)
    if llm is None:
        return []
    actual = {
        "n_ctx": llm.n_ctx(),
        "n_threads": getattr(llm, "n_threads", kwargs["n_threads"]),
        "n_threads_batch": getattr(llm, "n_threads_batch", kwargs["n_threads_batch"]),
        "n_batch": getattr(llm, "n_batch", kwargs["n_batch"]),
    }
    expected = {**kwargs, "n_batch": min(kwargs["n_ctx"], kwargs["n_batch"])}
    return [f"{k}: engine {v}, raw {expected[k]}" for k, v in actual.items() if v != expected[k]]


def _reset_cache(llm) -> None:
    """Forget the evaluated tokens so the next run evaluates its whole prompt (no prefix reuse)."""
    if llm is not None and hasattr(llm, "reset"):
        llm.reset()


def _raw_run(llm, prompt: str, tokens: int) -> Sample:
    """One timed raw run: ``create_completion`` streaming, from an empty cache."""
    _reset_cache(llm)
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
    """The raw contender's process (``python -c "from webui.cli.bench import raw_worker; raw_worker()"``).

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
                answer(sample=asdict(_raw_run(llm, prompt, tokens)))
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

    def __init__(self, path: Path, settings: LoadSettings, prompt: str, tokens: int) -> None:
        super().__init__("raw")
        self.kwargs = llama_kwargs(path, settings)
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parent.parent)  # so the worker imports this very webui
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        self._process = subprocess.Popen(
            [sys.executable, "-c", "from webui.cli.bench import raw_worker; raw_worker()"],
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


class EngineContender(Contender):
    def __init__(self, app: App, prompt: str, tokens: int) -> None:
        super().__init__("engine")
        self.app, self.prompt, self.tokens = app, prompt, tokens
        self.prompt_tokens = len(app.engine.loaded.model.tokenize(prompt))

    def run(self) -> Sample:
        _reset_cache(_engine_llm(self.app))
        params = SamplingParams(temperature=0, max_new_tokens=self.tokens)
        text, finish, tokens = "", "stop", 0
        first = last = None
        start = time.perf_counter()
        for chunk in self.app.engine.generate(self.prompt, params):
            if chunk.text:
                last = time.perf_counter()
                first = first or last
                text += chunk.text
            if chunk.finish_reason:
                finish = chunk.finish_reason
                tokens = chunk.usage.completion_tokens if chunk.usage else 0
        end = time.perf_counter()
        first = first if first is not None else end
        return Sample(first - start, (last or end) - first, tokens, finish, text)


def _engine_llm(app: App):
    """The engine's ``llama_cpp.Llama`` (private to the loader; read only to reset its cache and check its settings)."""
    loaded = app.engine.loaded
    if loaded is None:
        return None
    return llama_handle(loaded.model) or getattr(loaded.model, "_llm", None)  # in a worker, or in this process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CHATBOT, ERROR = 2, 3  # positions in /chat's outputs: message, conversation id, chatbot, error, ...
_STATS = re.compile(r"\n\n<span class='inglenook-stats'>(?P<stats>.*?)</span>\s*$", re.S)
_TOKENS = re.compile(r"(\d+) tokens")
_REPORTED_TTFT = re.compile(r"time to first token (\d+) ms")
_REPORTED_SPEED = re.compile(r"([\d.]+) tok/s")


def _assistant_text(chatbot) -> str:
    """The text of the last assistant message in a Chatbot value as gradio_client returns it."""
    if not isinstance(chatbot, list):
        return ""
    for message in reversed(chatbot):
        if isinstance(message, dict) and message.get("role") == "assistant":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return "".join(part.get("text", "") for part in content if isinstance(part, dict))
            return ""
    return ""


def _parse_final(text: str) -> tuple[str, int, str, dict]:
    """Split a finished reply into (text, token count, finish reason, reported timings) using its stats line."""
    match = _STATS.search(text)
    if not match:
        raise BenchError(f"the UI's final reply has no stats line: {text[-200:]!r}")
    stats = match["stats"]
    count = _TOKENS.search(stats)
    if not count:
        raise BenchError(f"the UI's stats line has no token count: {stats!r}")
    finish = "length" if "hit the token limit" in stats else "cancelled" if "stopped" in stats else "stop"
    ttft, speed = _REPORTED_TTFT.search(stats), _REPORTED_SPEED.search(stats)
    reported = {"ttft_ms": float(ttft[1]) if ttft else None, "tokens_per_s": float(speed[1]) if speed else None}
    return text[: match.start()], int(count[1]), finish, reported


class UIContender(Contender):
    """Our server in a background thread, on the same App, driven by gradio_client."""

    def __init__(self, app: App, port: int, prompt: str, tokens: int) -> None:
        super().__init__("ui")
        import uvicorn

        from webui.server import build_server

        self.app, self.prompt, self.tokens = app, prompt, tokens
        info = app.engine.info
        chat = build_chat_prompt([{"role": "user", "content": prompt}], info)
        self.prompt_tokens = len(app.engine.loaded.model.tokenize(chat.text))
        self.url = f"http://127.0.0.1:{port}"
        config = uvicorn.Config(
            build_server(app), host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=2
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="bench-ui-server", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + SERVER_START_S
        while not self.server.started:
            if not self.thread.is_alive():
                raise BenchError(f"the UI server did not start on {self.url}")
            if time.monotonic() > deadline:
                self._stop_server()
                raise BenchError(f"the UI server did not start on {self.url} within {SERVER_START_S:.0f} s")
            time.sleep(0.05)
        try:
            from gradio_client import Client

            self.client = Client(self.url, verbose=False)
        except Exception as exc:
            self._stop_server()
            raise BenchError(f"gradio_client could not connect to {self.url}: {exc}") from exc

    def run(self) -> Sample:
        greedy = {"max_new_tokens": self.tokens, "temperature": 0, "top_p": 1, "top_k": 0, "min_p": 0,
                     "repetition_penalty": 1, "seed": 0}  # fmt: skip
        _reset_cache(_engine_llm(self.app))
        self.client.reset_session()  # a new session: the chat history starts empty
        first = last = None
        outputs = None
        start = time.perf_counter()
        try:
            job = self.client.submit(
                self.prompt, "", "", "", "instruct", None, api_name="/chat", **greedy
            )  # message, conversation id ("" = a new one), system, start reply with, mode, character
            for outputs in job:
                last = time.perf_counter()
                if first is None and _assistant_text(outputs[CHATBOT]) not in ("", PLACEHOLDER):
                    first = last
        except Exception as exc:
            raise BenchError(f"the UI stream failed: {type(exc).__name__}: {exc}") from exc
        if outputs is None:
            raise BenchError("the UI stream sent nothing")
        error = outputs[ERROR] if isinstance(outputs[ERROR], str) else ""
        if error:
            raise BenchError(f"the UI reported an error: {error}")
        text, tokens, finish, reported = _parse_final(_assistant_text(outputs[CHATBOT]))
        first = first if first is not None else last
        return Sample(first - start, last - first, tokens, finish, text, reported)

    def _stop_server(self) -> None:
        # The client's heartbeat stream is still open; uvicorn cancels it after the grace period
        # and logs that as an error, which here is expected.
        logging.getLogger("uvicorn.error").setLevel(logging.CRITICAL)
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()
        self._stop_server()


# -- summary ---------------------------------------------------------------------------------


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def summarise(contenders: list[Contender], tokens: int) -> dict:
    out: dict[str, dict] = {}
    for c in contenders:
        runs = c.samples
        out[c.name] = {
            "tokens_per_s": round(_median([s.tokens_per_s for s in runs]), 2),
            "ttft_ms": round(_median([s.ttft_s for s in runs]) * 1000, 1),
            "tokens": int(_median([s.tokens for s in runs])),
            "prompt_tokens": c.prompt_tokens,
            "finish_reasons": sorted({s.finish_reason for s in runs}),
            "stopped_early": any(s.tokens < tokens for s in runs),
            "runs": [
                {
                    "tokens_per_s": round(s.tokens_per_s, 2),
                    "ttft_ms": round(s.ttft_s * 1000, 1),
                    "tokens": s.tokens,
                    "finish_reason": s.finish_reason,
                }
                for s in runs
            ],
        }
        reported = [s.reported for s in runs if s.reported]
        if reported:  # what the server measured itself (engine side), next to what the client saw
            out[c.name]["server_reported"] = {
                key: _median([r[key] for r in reported if r[key] is not None]) for key in ("ttft_ms", "tokens_per_s")
            }
    raw = out.get("raw")
    for name, row in out.items():
        if raw and raw["tokens_per_s"] > 0:
            row["ratio_tokens_per_s"] = round(row["tokens_per_s"] / raw["tokens_per_s"], 3)
        else:
            row["ratio_tokens_per_s"] = None
        row["extra_ttft_ms"] = round(row["ttft_ms"] - raw["ttft_ms"], 1) if raw else None
        if name != "raw":
            row["goal_tokens_per_s"] = _verdict(row["ratio_tokens_per_s"], lambda r: r >= GOAL_RATIO)
            row["goal_ttft"] = _verdict(row["extra_ttft_ms"], lambda x: x <= GOAL_EXTRA_TTFT_MS)
    return out


def _verdict(value, ok) -> str:
    if value is None:
        return "n/a"
    return "PASS" if ok(value) else "MISS"


def _pad(cell: str, width: int, left: bool) -> str:
    return cell.ljust(width) if left else cell.rjust(width)


def format_table(result: dict) -> str:
    head = ("contender", "tok/s", "TTFT ms", "tokens", "× raw tok/s", "+TTFT ms vs raw")
    rows = [head]
    for name, row in result["contenders"].items():
        ratio = f"{row['ratio_tokens_per_s']:.3f}" if row["ratio_tokens_per_s"] is not None else "-"
        extra = f"{row['extra_ttft_ms']:+.1f}" if name != "raw" and row["extra_ttft_ms"] is not None else "-"
        tokens = str(row["tokens"])
        if row["stopped_early"]:
            tokens += "*"
        rows.append((name, f"{row['tokens_per_s']:.1f}", f"{row['ttft_ms']:.1f}", tokens, ratio, extra))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = [" | ".join(_pad(cell, w, i == 0) for i, (cell, w) in enumerate(zip(r, widths, strict=True))) for r in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    goals = []
    for name, row in result["contenders"].items():
        if name == "raw":
            continue
        goals.append(
            f"{name}: tok/s ≥ {GOAL_RATIO:.2f}× raw {row['goal_tokens_per_s']}, "
            f"TTFT ≤ +{GOAL_EXTRA_TTFT_MS:.0f} ms {row['goal_ttft']}"
        )
    text = "\n".join(lines)
    if goals:
        text += "\n\ngoals: " + "; ".join(goals)
    for name, row in result["contenders"].items():
        reported = row.get("server_reported")
        if reported and reported["ttft_ms"] is not None and reported["tokens_per_s"] is not None:
            text += (
                f"\n{name} as its own stats line reports it (engine side, no HTTP or client): "
                f"TTFT {reported['ttft_ms']:.0f} ms, {reported['tokens_per_s']:.1f} tok/s"
            )
    if "ui" in result["contenders"]:
        text += "\nui TTFT includes 0-50 ms of gradio_client's own polling, which a browser does not have"
    early = [f"{n} ({', '.join(r['finish_reasons'])})" for n, r in result["contenders"].items() if r["stopped_early"]]
    if early:
        text += f"\n* stopped before {result['tokens_requested']} tokens on some run: {', '.join(early)}"
    return text


def _header(result: dict) -> str:
    load = result.get("load_average")
    load_text = f", load average {load[0]:.2f} at start" if load else ""
    return (
        f"model {result['model']} ({result['loader']}), {result['threads']} threads, n_ctx {result['n_ctx']}, "
        f"{result['tokens_requested']} tokens, median of {result['runs']} runs{load_text}\n"
        f"prompt: {result['prompt']!r}"
    )


# -- command -----------------------------------------------------------------------------------


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def bench_switch(app: App, model: str, cycles: int) -> dict:
    """Load and unload ``model`` ``cycles`` times: load time, and this process's RSS loaded and unloaded."""
    from webui.models.catalog import process_rss

    rows = []
    baseline = process_rss()
    for i in range(cycles):
        start = time.perf_counter()
        info = app.load_model(model)
        load_s = time.perf_counter() - start
        loaded = process_rss()
        app.engine.unload()
        rows.append({"cycle": i + 1, "load_s": round(load_s, 3), "rss_loaded_mb": _mb(loaded),
                     "rss_unloaded_mb": _mb(process_rss())})  # fmt: skip
    first, last = rows[0]["rss_loaded_mb"], rows[-1]["rss_loaded_mb"]
    return {
        "model": info.name,
        "loader": info.loader,
        "rss_before_mb": _mb(baseline),
        "cycles": rows,
        "rss_growth_percent": round(100 * (last - first) / first, 1) if first else None,
    }


def _mb(n: int | None) -> float | None:
    return round(n / 2**20, 1) if n else None


def format_switch(result: dict) -> str:
    lines = [f"model {result['model']} ({result['loader']}); RSS before loading: {result['rss_before_mb']} MB", "",
             "cycle | load s | RSS loaded MB | RSS unloaded MB", "---|---|---|---"]  # fmt: skip
    lines += [
        f"{r['cycle']} | {r['load_s']:.2f} | {r['rss_loaded_mb']} | {r['rss_unloaded_mb']}" for r in result["cycles"]
    ]
    lines.append(f"\nRSS loaded, last cycle vs first: {result['rss_growth_percent']:+.1f} %")
    return "\n".join(lines)


def cmd_bench(args: argparse.Namespace) -> int:
    from webui.cli.options import settings_from

    if getattr(args, "switch", False):
        if args.runs < 1:
            print("error: --runs must be at least 1", file=sys.stderr)
            return 2
        scratch = tempfile.TemporaryDirectory(prefix="inglenook-bench-")
        app = App.create(replace(settings_from(args), user_data=Path(scratch.name)))
        try:
            result = bench_switch(app, args.model, args.runs)
        except (ModelLoadError, UnsafeName) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        finally:
            app.close()
            scratch.cleanup()
        print(json.dumps(result, ensure_ascii=False) if args.json else format_switch(result))
        return 0

    if args.tokens < 2:
        print("error: --tokens must be at least 2 (decode speed needs a first and a last token)", file=sys.stderr)
        return 2
    if args.runs < 1:
        print("error: --runs must be at least 1", file=sys.stderr)
        return 2
    if not args.prompt:
        print("error: --prompt must not be empty", file=sys.stderr)
        return 2

    port = free_port() if not args.no_ui else 0
    scratch = tempfile.TemporaryDirectory(prefix="inglenook-bench-")  # the UI's runs save chats: not the user's
    settings = replace(settings_from(args), user_data=Path(scratch.name))
    if port:
        settings = replace(settings, host="127.0.0.1", port=port)
    app = App.create(settings)
    contenders: list[Contender] = []
    load_average = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    try:
        path = resolve_model(args.model, args.models_dir)
        loader = app.registry.pick(path, args.loader)
        if loader.name != "llama.cpp":
            raise BenchError(f"bench compares against raw llama-cpp-python, so it needs a GGUF model; {path.name} "
                             f"loads with {loader.name}")  # fmt: skip
        load_settings = app.load_settings_for(loader.name)
        _progress(f"loading {path.name} twice (our engine here, raw llama-cpp-python in a process of its own)...")
        info = app.load_model(str(path), loader.name)
        raw = RawContender(path, load_settings, args.prompt, args.tokens)
        contenders.append(raw)
        contenders.append(EngineContender(app, args.prompt, args.tokens))
        if not args.no_ui:
            _progress(f"starting our server on http://127.0.0.1:{port} ...")
            contenders.append(UIContender(app, port, args.prompt, args.tokens))

        _progress("warming up: " + ", ".join(c.name for c in contenders))
        for c in contenders:
            c.warm_up()
        for i in range(args.runs):
            _progress(f"run {i + 1}/{args.runs}")
            for c in contenders:
                c.samples.append(c.run())

        engine_text = contenders[1].samples[-1].text
        result = {
            "model": info.name,
            "loader": info.loader,
            "prompt": args.prompt,
            "tokens_requested": args.tokens,
            "runs": args.runs,
            "threads": raw.kwargs["n_threads"],
            "n_ctx": raw.kwargs["n_ctx"],
            "n_batch": raw.kwargs["n_batch"],
            "load_average": [round(x, 2) for x in load_average] if load_average else None,
            "settings_mismatch": _settings_mismatch(app, raw.kwargs),
            "engine_text_matches_raw": engine_text == raw.samples[-1].text,
            "goals": {"min_ratio_tokens_per_s": GOAL_RATIO, "max_extra_ttft_ms": GOAL_EXTRA_TTFT_MS},
            "contenders": summarise(contenders, args.tokens),
        }
    except (BenchError, GenerationError, ModelLoadError, UnsafeName) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        for c in reversed(contenders):
            with contextlib.suppress(Exception):
                c.close()
        app.close()

    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        print(_header(result))
        print()
        print(format_table(result))
        if result["settings_mismatch"]:
            print("WARNING: raw and the engine load the model differently: " + "; ".join(result["settings_mismatch"]))
        if not result["engine_text_matches_raw"]:
            print("note: the engine's text differs from raw's (it should not under greedy decoding)")
    return 0
