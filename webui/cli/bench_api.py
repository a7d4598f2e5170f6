"""``inglenook bench --api``: what our OpenAI-compatible API costs over raw llama-cpp-python.

Same rules as ``inglenook bench`` (webui/bench.py): one model file, one prompt, greedy, the settings our
loader uses, one untimed warm-up per contender, then runs interleaved, medians reported.

raw
    llama-cpp-python's ``create_completion(stream=True)`` in a process of its own (bench.RawContender).
api
    Our server (``build_server``: API + UI, on the same App, uvicorn in a thread on a free 127.0.0.1
    port), driven by the official ``openai`` client: ``completions.create(stream=True, temperature=0,
    max_tokens=N, stream_options={"include_usage": True})`` on the same prompt, so the text must equal
    raw's. TTFT: from just before the call to the first chunk with text. Tokens: ``usage``.
llama-cpp-server
    llama-cpp-python's own OpenAI server (``python -m llama_cpp.server``) on the same file and settings,
    in its own process, driven the same way. Only when ``llama_cpp.server`` imports (it needs
    ``pip install 'llama-cpp-python[server]'``); otherwise it is reported as skipped. It keeps its KV
    cache between requests, so from the second run on it does not evaluate the prompt again: its TTFT
    is flattered; compare its tok/s.

``--clients K --duration S`` adds a bounded load test (loopback only, S ≤ 60 s): K clients stream
requests through the openai client for S seconds; completed requests, errors and total tokens/s are
reported. It is a measurement, never a pass/fail.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

from backends.base import GenerationError, LoadSettings, ModelLoadError
from backends.llamacpp import llama_kwargs
from webui.app import App
from webui.cli.bench import (
    GOAL_EXTRA_TTFT_MS,
    GOAL_RATIO,
    SERVER_START_S,
    BenchError,
    Contender,
    RawContender,
    Sample,
    _engine_llm,
    _header,
    _progress,
    _reset_cache,
    format_table,
    free_port,
    summarise,
)
from webui.models.folder import resolve_model
from webui.paths import UnsafeName

MAX_LOAD_TEST_S = 60.0


def add_options(bench: argparse.ArgumentParser) -> None:
    bench.add_argument("--api", action="store_true", help="compare raw llama-cpp-python with our OpenAI API stream")
    bench.add_argument("--clients", type=int, default=0, help="with --api: clients for a load test (default: none)")
    bench.add_argument("--duration", type=float, default=20.0, help="with --clients: seconds, at most 60")


def _stream_sample(client, model: str, prompt: str, tokens: int) -> Sample:
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

    def __init__(self, app: App, port: int, prompt: str, tokens: int) -> None:
        super().__init__("api")
        import uvicorn

        from webui.server import build_server

        self.app, self.prompt, self.tokens = app, prompt, tokens
        self.model = app.engine.info.name
        self.prompt_tokens = len(app.engine.loaded.model.tokenize(prompt))
        self.url = f"http://127.0.0.1:{port}"
        config = uvicorn.Config(build_server(app), host="127.0.0.1", port=port, log_level="warning")
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
        _reset_cache(_engine_llm(self.app))
        return _stream_sample(self.client, self.model, self.prompt, self.tokens)

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
            [sys.executable, "-m", "llama_cpp.server", *args], stdout=self.log, stderr=subprocess.STDOUT
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
        return _stream_sample(self.client, self.model, self.prompt, self.tokens)

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
    done, errors, total_tokens = [0], [], [0]
    lock = threading.Lock()
    stop_at = time.monotonic() + duration_s

    def worker(i: int) -> None:
        client = _client(url, key)
        while time.monotonic() < stop_at:
            try:
                sample = _stream_sample(client, model, f"Client {i} says:", tokens)
            except Exception as exc:  # counted and reported: a load test measures failures too
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}"[:200])
                continue
            with lock:
                done[0] += 1
                total_tokens[0] += sample.tokens

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
    }


def cmd_bench_api(args: argparse.Namespace) -> int:
    from webui.cli.options import settings_from

    for noisy in ("httpx2", "httpcore2", "openai"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.tokens < 2 or args.runs < 1 or not args.prompt:
        print("error: --tokens must be at least 2, --runs at least 1, --prompt not empty", file=sys.stderr)
        return 2
    if args.clients < 0 or not 0 < args.duration <= MAX_LOAD_TEST_S:
        print(f"error: --clients must be ≥ 0 and --duration in (0, {MAX_LOAD_TEST_S:.0f}] s", file=sys.stderr)
        return 2
    scratch = tempfile.TemporaryDirectory(prefix="inglenook-bench-")
    port = free_port()
    settings = replace(settings_from(args), user_data=Path(scratch.name), host="127.0.0.1", port=port)
    app = App.create(settings)
    contenders: list[Contender] = []
    skipped: dict[str, str] = {}
    load_average = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    try:
        path = resolve_model(args.model, args.models_dir)
        loader = app.registry.pick(path, args.loader)
        if loader.name != "llama.cpp":
            raise BenchError(f"bench compares against raw llama-cpp-python, so it needs a GGUF model ({path.name})")
        load_settings = app.load_settings_for(loader.name)
        _progress(f"loading {path.name} (our engine here, raw llama-cpp-python in a process of its own)...")
        info = app.load_model(str(path), loader.name)
        raw = RawContender(path, load_settings, args.prompt, args.tokens)
        contenders.append(raw)
        _progress(f"starting our server on http://127.0.0.1:{port} ...")
        api = ApiContender(app, port, args.prompt, args.tokens)
        contenders.append(api)
        try:
            import llama_cpp.server.app  # noqa: F401  (its extra dependencies)

            _progress("starting llama-cpp-python's own server ...")
            contenders.append(LlamaCppServerContender(path, load_settings, args.prompt, args.tokens))
        except ImportError as exc:
            skipped["llama-cpp-server"] = f"not installed ({exc}); pip install 'llama-cpp-python[server]'"
        _progress("warming up: " + ", ".join(c.name for c in contenders))
        for c in contenders:
            c.warm_up()
        for i in range(args.runs):
            _progress(f"run {i + 1}/{args.runs}")
            for c in contenders:
                c.samples.append(c.run())
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
            "api_text_matches_raw": api.samples[-1].text == raw.samples[-1].text,
            "goals": {"min_ratio_tokens_per_s": GOAL_RATIO, "max_extra_ttft_ms": GOAL_EXTRA_TTFT_MS},
            "contenders": summarise(contenders, args.tokens),
            "skipped": skipped,
        }
        if args.clients:
            _progress(f"load test: {args.clients} clients for {args.duration:.0f} s ...")
            result["load_test"] = load_test(
                api.url, api.model, args.clients, args.duration, min(args.tokens, 32), app.settings.api_key or "bench"
            )
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
        return 0
    print(_header(result))
    print()
    print(format_table(result))
    for name, why in skipped.items():
        print(f"{name}: skipped, {why}")
    if not result["api_text_matches_raw"]:
        print("note: the API's text differs from raw's (it should not under greedy decoding)")
    if "load_test" in result:
        lt = result["load_test"]
        print(
            f"load test: {lt['clients']} clients, {lt['duration_s']} s: {lt['completed']} requests completed, "
            f"{lt['errors']} errors, {lt['tokens_per_s']} tok/s in total"
        )
    return 0
