"""The contenders that go through our code, and llama-cpp-python's own server, and the API load test.

engine
    Our :class:`~webui.engine.Engine` (``App.create`` + ``App.load_model``),
    ``engine.generate(prompt, SamplingParams(temperature=0, max_new_tokens=N))``. Tokens: the engine's own
    count (``usage.completion_tokens``). It is called from the main thread, while the ui contender's
    generations run on the server's worker threads (``--no-ui`` measures the engine alone).
ui
    Our server (the ASGI app ``serve(app)`` builds: API + UI on the *same* App, uvicorn in a background
    thread on a free 127.0.0.1 port), driven by a real ``gradio_client.Client`` submitting to ``/chat`` in a
    fresh session (so no history). The chat path wraps the prompt in the model's chat template, so its
    text differs from the others; a run that stops before N tokens is reported. TTFT: to the first update
    whose assistant text (in the chatbot, or while it streams in /chat's last output, the live reply) is
    non-empty and not the "…" placeholder. Text and tokens: the reply as the chat
    saved it (read back from the history store, never from the page's HTML), tokenized again as raw's is.
    The stream is throttled to 20 updates/s by design and gradio_client polls every 50 ms, so this TTFT
    includes 0–50 ms of *client-side* delay a browser does not have.
api
    The same server driven by the official ``openai`` client: ``completions.create(stream=True,
    temperature=0, max_tokens=N, stream_options={"include_usage": True})`` on the same prompt, so the text
    must equal raw's. Tokens: ``usage``; the server's own TTFT and tok/s come in its ``timings``.
page
    Our chat page in headless Chromium on the same server (:mod:`webui.bench.page`): times as the page shows
    the reply (``performance.now()`` at Enter, a MutationObserver on the reply).
llama-cpp-server
    llama-cpp-python's own OpenAI server (``python -m llama_cpp.server``) on the same file and settings, in
    its own process, driven the same way. It keeps its KV cache between requests, so from the second run
    on its TTFT is flattered; compare its tok/s.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from backends.base import LoadSettings, SamplingParams
from backends.llamacpp import llama_kwargs
from webui.app import App
from webui.bench.measure import (
    SERVER_START_S,
    BenchError,
    Contender,
    Sample,
    engine_llm,
    reset_cache,
)
from webui.chat.conversation import INSTRUCT_OWNER, HistoryError
from webui.paths import UnsafeName
from webui.serve import free_port
from webui.templates.render import build_chat_prompt

MAX_LOAD_TEST_S = 60.0
PLACEHOLDER = "…"  # what the chat shows before the first token (webui.ui.chat_tab.display_messages)
CONVERSATION, CHATBOT, ERROR = 1, 2, 3  # positions in /chat's outputs: message, conversation id, chatbot, error, ...
LIVE = -1  # the last output: the reply's text while it streams (the chatbot gets it whole at the end)


class EngineContender(Contender):
    def __init__(self, app: App, prompt: str, tokens: int) -> None:
        super().__init__("engine")
        self.app, self.prompt, self.tokens = app, prompt, tokens
        self.prompt_tokens = len(app.engine.loaded.model.tokenize(prompt))

    def run(self) -> Sample:
        reset_cache(engine_llm(self.app))
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


class UIContender(Contender):
    """Our server in a background thread, on the same App, driven by gradio_client."""

    def __init__(self, app: App, serve: Callable[[App], Any], port: int, prompt: str, tokens: int) -> None:
        super().__init__("ui")
        import uvicorn

        self.app, self.prompt, self.tokens = app, prompt, tokens
        info = app.engine.info
        chat = build_chat_prompt([{"role": "user", "content": prompt}], info)
        self.prompt_tokens = len(app.engine.loaded.model.tokenize(chat.text))
        self.url = f"http://127.0.0.1:{port}"
        config = uvicorn.Config(
            serve(app), host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=2
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
        reset_cache(engine_llm(self.app))
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
                live = outputs[LIVE] if isinstance(outputs[LIVE], str) else ""
                if first is None and (_assistant_text(outputs[CHATBOT]) or live) not in ("", PLACEHOLDER):
                    first = last
        except Exception as exc:
            raise BenchError(f"the UI stream failed: {type(exc).__name__}: {exc}") from exc
        if outputs is None:
            raise BenchError("the UI stream sent nothing")
        error = outputs[ERROR] if isinstance(outputs[ERROR], str) else ""
        if error:
            raise BenchError(f"the UI reported an error: {error}")
        text, tokens, finish = self._saved_reply(outputs[CONVERSATION])
        first = first if first is not None else last
        return Sample(first - start, last - first, tokens, finish, text)

    def _saved_reply(self, conversation_id: object) -> tuple[str, int, str]:
        """The reply as the chat saved it (a Conversation, not the page's HTML): its text, and its length
        in tokens counted again by the loaded model's tokenizer, as raw counts its own."""
        try:
            conversation = self.app.history.load(INSTRUCT_OWNER, str(conversation_id))
        except (HistoryError, UnsafeName) as exc:
            raise BenchError(f"the UI's reply was not saved: {exc}") from None
        if not conversation.messages or conversation.messages[-1].role != "assistant":
            raise BenchError("the UI saved no reply")
        text = conversation.messages[-1].content
        engine = self.app.engine
        tokens = engine.count_tokens(text) - engine.count_tokens("")  # without the BOS a prompt count includes
        return text, tokens, "length" if tokens >= self.tokens else "stop"

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


def stream_sample(client, model: str, prompt: str, tokens: int) -> Sample:
    """One timed streamed completion through an openai client."""
    text, finish, count, pieces, reported = "", "length", 0, 0, None
    first = last = None
    start = time.perf_counter()
    stream = client.completions.create(
        model=model, prompt=prompt, max_tokens=tokens, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    for chunk in stream:
        if chunk.choices:
            choice = chunk.choices[0]
            if choice.text:
                last = time.perf_counter()
                first = first or last
                text += choice.text
                pieces += 1
            if choice.finish_reason:
                finish = choice.finish_reason
                timings = (chunk.model_extra or {}).get("timings")  # ours: the server's own measurement
                if timings:
                    reported = {"ttft_ms": timings["ttft_ms"], "tokens_per_s": timings["predicted_per_second"]}
        if chunk.usage:
            count = chunk.usage.completion_tokens
    end = time.perf_counter()
    first = first if first is not None else end
    return Sample(first - start, (last or end) - first, count or pieces, finish, text, reported)  # pieces: no usage


def _client(url: str, key: str = "bench"):
    import openai

    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=600)


class ApiContender(Contender):
    """Our server in a background thread on the same App, driven by the official openai client."""

    def __init__(self, app: App, serve: Callable[[App], Any], port: int, prompt: str, tokens: int) -> None:
        super().__init__("api")
        import uvicorn

        self.app, self.prompt, self.tokens = app, prompt, tokens
        self.model = app.engine.info.name
        self.prompt_tokens = len(app.engine.loaded.model.tokenize(prompt))
        self.url = f"http://127.0.0.1:{port}"
        config = uvicorn.Config(serve(app), host="127.0.0.1", port=port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="bench-api-server", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + SERVER_START_S
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.close()
                raise BenchError(f"our server did not start on {self.url}")
            time.sleep(0.05)
        self.client = _client(self.url, app.settings.api_key or "bench")

    def run(self) -> Sample:
        reset_cache(engine_llm(self.app))
        return stream_sample(self.client, self.model, self.prompt, self.tokens)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


class LlamaCppServerContender(Contender):
    """``python -m llama_cpp.server`` on the same model file and settings, in a process of its own."""

    def __init__(self, path: Path, settings: LoadSettings, prompt: str, tokens: int) -> None:
        super().__init__("llama-cpp-server")
        import httpx

        kw = llama_kwargs(path, settings)
        port = free_port()
        self.url, self.prompt, self.tokens, self.model = f"http://127.0.0.1:{port}", prompt, tokens, path.stem
        self.log = tempfile.TemporaryFile("w+")
        args = ["--model", str(path), "--model_alias", self.model, "--host", "127.0.0.1", "--port", str(port),
                "--n_ctx", str(kw["n_ctx"]), "--n_batch", str(kw["n_batch"]), "--n_threads", str(kw["n_threads"]),
                "--n_threads_batch", str(kw["n_threads_batch"]), "--n_gpu_layers", str(kw["n_gpu_layers"]),
                "--verbose", "False"]  # fmt: skip
        self.process = subprocess.Popen(
            [sys.executable, "-m", "webui.bench.llama_cpp_server", *args], stdout=self.log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if self.process.poll() is not None:
                self.log.seek(0)
                raise BenchError(f"llama_cpp.server exited: {self.log.read()[-500:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/v1/models", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                self.close()
                raise BenchError("llama_cpp.server did not start in time")
            time.sleep(0.3)
        self.client = _client(self.url)
        self.prompt_tokens = 0

    def run(self) -> Sample:
        return stream_sample(self.client, self.model, self.prompt, self.tokens)

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


def load_test(url: str, model: str, clients: int, duration_s: float, tokens: int, key: str) -> dict:
    """``clients`` threads stream requests back to back for ``duration_s`` seconds (loopback only)."""
    duration_s = min(duration_s, MAX_LOAD_TEST_S)
    done, errors, total_tokens, ttfts = [0], [], [0], []
    lock = threading.Lock()
    stop_at = time.monotonic() + duration_s

    def worker(i: int) -> None:
        client = _client(url, key)
        while time.monotonic() < stop_at:
            try:
                sample = stream_sample(client, model, f"Client {i} says:", tokens)
            except Exception as exc:  # counted and reported: a load test measures failures too
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}"[:200])
                continue
            with lock:
                done[0] += 1
                total_tokens[0] += sample.tokens
                ttfts.append(sample.ttft_s)

    start = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=duration_s + 600)
    elapsed = time.perf_counter() - start
    return {
        "clients": clients,
        "duration_s": round(elapsed, 1),
        "completed": done[0],
        "errors": len(errors),
        "first_errors": errors[:3],
        "tokens": total_tokens[0],
        "tokens_per_s": round(total_tokens[0] / elapsed, 2) if elapsed else 0.0,
        "ttft_ms_median": round(sorted(ttfts)[len(ttfts) // 2] * 1000, 1) if ttfts else None,
    }
