"""``inglenook bench``: the flags, and the runs put together from :mod:`webui.bench`.

- ``bench [MODEL]``: raw llama-cpp-python vs our engine vs our UI stream (gradio_client) vs our page in headless
  Chromium (``--no-ui``: without the UI and the page).
- ``bench --api``: raw vs our OpenAI-compatible API stream vs llama-cpp-python's own server, and with
  ``--clients K --duration S`` a bounded load test.
- ``bench --switch``: load/unload cycles, load time and resident memory.
- ``bench --contention``: tok/s idle and beside a busy-loop on one core (raw, raw passive, engine).
- ``bench --kv-cache``: the next turn of a long conversation after another one ran, against a short cold prompt.
- ``bench --draft``: prompt-lookup speculative decoding against plain decoding, on a task that repeats its prompt and
  on one that does not.

A measurement, not a test: it returns 0 whatever the figures (non-zero with a message when something fails).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from backends.base import GenerationError, ModelLoadError
from webui.app import App
from webui.bench.batch import raw_batch_ceiling
from webui.bench.contenders import (
    MAX_LOAD_TEST_S,
    ApiContender,
    EngineContender,
    LlamaCppServerContender,
    UIContender,
    load_test,
)
from webui.bench.measure import (
    GOAL_EXTRA_TTFT_MS,
    GOAL_RATIO,
    BenchError,
    Contender,
    run_interleaved,
    settings_mismatch,
)
from webui.bench.page import PageContender, write_greedy_preset
from webui.bench.raw import RawContender
from webui.bench.report import format_switch, format_table, header, summarise, text_note
from webui.bench.switch import bench_switch
from webui.cli.options import add_model_options, settings_from
from webui.models.folder import resolve_model
from webui.paths import UnsafeName
from webui.serve import free_port


@contextlib.contextmanager
def _scratch_app(args: argparse.Namespace) -> Iterator[App]:
    """An App on the user's models with a throwaway user_data (a bench never writes the user's chats or
    settings), closed with it."""
    with tempfile.TemporaryDirectory(prefix="inglenook-bench-") as folder:
        app = App.create(replace(settings_from(args), user_data=Path(folder)))
        try:
            yield app
        finally:
            app.close()


def _close(contenders: list, app: App) -> None:
    """End the contenders (newest first; one that fails to close never stops the others), then the app."""
    for c in reversed(contenders):
        with contextlib.suppress(Exception):
            c.close()
    app.close()


def add_parser(sub) -> None:
    bench = sub.add_parser(
        "bench",
        help="measure streaming overhead: raw llama-cpp-python vs our engine vs our UI stream",
        description="On the same model and prompt, greedy: raw llama-cpp-python streaming, our engine, and our "
        "UI's stream through gradio_client against a running server. Prints tok/s, TTFT and ratios to raw.",
    )
    add_model_options(bench, with_model=False)
    bench.add_argument("model", nargs="?", default="default")
    bench.add_argument("--tokens", type=int, default=128, help="tokens per run (default: 128)")
    bench.add_argument("--runs", type=int, default=5, help="runs per contender; the median is reported (default: 5)")
    bench.add_argument("--prompt", default="The history of the city of Rome begins", help="prompt to continue")
    bench.add_argument("--no-ui", action="store_true", help="skip the UI stream and the page (no server is started)")
    bench.add_argument("--json", action="store_true", help="print the results as JSON")
    bench.add_argument("--api", action="store_true", help="compare raw llama-cpp-python with our OpenAI API stream")
    bench.add_argument("--clients", type=int, default=0, help="with --api: clients for a load test (default: none)")
    bench.add_argument("--duration", type=float, default=20.0, help="with --clients: seconds, at most 60")
    bench.add_argument(
        "--switch", action="store_true", help="instead: --runs load/unload cycles, printing load time and RSS per cycle"
    )
    bench.add_argument(
        "--speed", nargs="+", metavar="MODEL", default=None,
        help="instead: llama-bench's columns per model, each in a fresh process: load time, peak RSS, "
        "pp (--pp prompt tokens) and tg (--tokens new tokens) speed",
    )  # fmt: skip
    bench.add_argument(
        "--contention", action="store_true",
        help="instead: tok/s idle and beside a busy-loop on one core, for raw llama-cpp-python (default and "
        "OMP_WAIT_POLICY=PASSIVE) and our engine",
    )  # fmt: skip
    bench.add_argument("--pp", type=int, default=512, help="with --speed: prompt tokens for pp (default: 512)")
    bench.add_argument(
        "--kv-cache", action="store_true",
        help="instead: TTFT of a long conversation's next turn after another conversation ran (the per-conversation "
        "KV cache) against a 50-token prompt read cold",
    )  # fmt: skip
    bench.add_argument("--history", type=int, default=3000, help="with --kv-cache: the conversation's tokens")
    bench.add_argument(
        "--draft", type=int, nargs="?", const=8, default=0, metavar="N",
        help="instead: tok/s with prompt-lookup drafting of N tokens (default 8) against without, on a task that "
        "repeats its prompt and one that does not",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    if args.speed:
        return cmd_speed(args)
    if args.api:
        return cmd_bench_api(args)
    if args.contention:
        return cmd_contention(args)
    if args.kv_cache:
        return cmd_kv_cache(args)
    if args.draft:
        return cmd_draft(args)
    return cmd_switch(args) if args.switch else cmd_bench(args)


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _serve(app: App):
    """The ASGI app the ui and api contenders serve: the real server, API and UI, on the bench's App."""
    from webui.server import build_server

    return build_server(app)


def _load_average() -> list[float] | None:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def _gguf(app: App, args: argparse.Namespace) -> Path:
    """The model file, which must load with llama.cpp: raw llama-cpp-python is what we compare against."""
    path = resolve_model(args.model, args.models_dir)
    loader = app.registry.pick(path, args.loader)
    if loader.name != "llama.cpp":
        raise BenchError(f"bench compares against raw llama-cpp-python, so it needs a GGUF model; {path.name} "
                         f"loads with {loader.name}")  # fmt: skip
    return path


def _kernel_facts(info) -> dict[str, str]:
    """What decides whether the engine's greedy text should equal raw's: parallel and the extra buffer types."""
    return {k: v for k, v in info.metadata.items() if k in ("inglenook.parallel", "inglenook.extra_buffer_types")}


def _common(info, args: argparse.Namespace, raw: RawContender, load_average, contenders: list[Contender]) -> dict:
    """The result fields every comparison has."""
    return {
        "model": info.name,
        "loader": info.loader,
        "prompt": args.prompt,
        "tokens_requested": args.tokens,
        "runs": args.runs,
        "threads": raw.kwargs["n_threads"],
        "n_ctx": raw.kwargs["n_ctx"],
        "n_batch": raw.kwargs["n_batch"],
        "load_average": load_average,
        "goals": {"min_ratio_tokens_per_s": GOAL_RATIO, "max_extra_ttft_ms": GOAL_EXTRA_TTFT_MS},
        "contenders": summarise(contenders, args.tokens),
    }


def cmd_speed(args: argparse.Namespace) -> int:
    from webui.bench.speed import bench_speed, format_speed

    if args.tokens < 2 or args.pp < 8:
        print("error: --tokens must be at least 2 and --pp at least 8", file=sys.stderr)
        return 2
    try:
        paths = [resolve_model(m, args.models_dir) for m in args.speed]
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    result = bench_speed(paths, args.pp, args.tokens, args.threads or 0, _progress)
    print(json.dumps(result, ensure_ascii=False) if args.json else format_speed(result))
    return 1 if all(r.get("error") for r in result["rows"]) else 0


def cmd_contention(args: argparse.Namespace) -> int:
    """Issue 17 §3: does a competing load collapse the decode? Raw (both policies) and the engine, idle and loaded."""
    from webui.bench.contention import format_contention, measure_contention

    if args.tokens < 2 or args.runs < 1:
        print("error: --tokens must be at least 2 and --runs at least 1", file=sys.stderr)
        return 2
    scratch = tempfile.TemporaryDirectory(prefix="inglenook-bench-")
    app = App.create(replace(settings_from(args), user_data=Path(scratch.name)))
    contenders: list[Contender] = []
    load_average = _load_average()
    try:
        path = _gguf(app, args)
        load_settings = app.load_settings_for("llama.cpp")
        _progress(f"loading {path.name} three times (raw, raw with a passive wait policy, our engine)...")
        info = app.load_model(str(path), "llama.cpp")
        raw = RawContender(path, load_settings, args.prompt, args.tokens)
        contenders.append(raw)
        passive = {"OMP_WAIT_POLICY": "PASSIVE"}
        contenders.append(RawContender(path, load_settings, args.prompt, args.tokens, "raw passive", passive))
        contenders.append(EngineContender(app, args.prompt, args.tokens))
        measured = measure_contention(contenders, args.runs, _progress)
        result = {
            "model": info.name, "tokens_requested": args.tokens, "runs": args.runs,
            "threads": raw.kwargs["n_threads"], "load_average_before": load_average,
            "engine_wait_policy": app.engine.loaded.model.call("openmp_environment").get("OMP_WAIT_POLICY"),
            "raw_wait_policy": os.environ.get("OMP_WAIT_POLICY", "libgomp default"), **measured,
        }  # fmt: skip
    except (BenchError, GenerationError, ModelLoadError, UnsafeName) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        _close(contenders, app)
        scratch.cleanup()
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
        return 0
    print(f"{result['model']}, {result['threads']} threads, {args.tokens} tokens, median of {args.runs} runs; "
          f"load average before: {load_average}; engine OMP_WAIT_POLICY={result['engine_wait_policy']}, "
          f"raw: {result['raw_wait_policy']}; hog pinned to core {result['hog_core']}")  # fmt: skip
    print(format_contention(result))
    return 0


def cmd_kv_cache(args: argparse.Namespace) -> int:
    """Issue 17 §2: going back to a long conversation costs about what a short prompt does."""
    from webui.bench.kvcache import format_kv_cache, measure_kv_cache

    if args.history < 100 or args.runs < 1:
        print("error: --history must be at least 100 tokens and --runs at least 1", file=sys.stderr)
        return 2
    with _scratch_app(args) as app:
        try:
            path = _gguf(app, args)
            load_settings = app.load_settings_for("llama.cpp")
            n_ctx = max(load_settings.n_ctx, args.history + 512)  # room for the conversation and its next turns
            _progress(f"loading {path.name} (n_ctx {n_ctx}) ...")
            info = app.load_model(str(path), "llama.cpp", settings=replace(load_settings, n_ctx=n_ctx))
            measured = measure_kv_cache(app, args.history, args.runs, _progress)
            ram_mb = getattr(load_settings, "kv_cache_ram_mb", 0)
            result = {"model": info.name, "n_ctx": n_ctx, "kv_cache_ram_mb": ram_mb,
                      "load_average_before": _load_average(), **measured}  # fmt: skip
        except (BenchError, GenerationError, ModelLoadError, UnsafeName) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
        return 0
    print(f"{result['model']}, n_ctx {n_ctx}, kv_cache_ram_mb {result['kv_cache_ram_mb']}, median of {args.runs} runs")
    print(format_kv_cache(result))
    return 0


def cmd_draft(args: argparse.Namespace) -> int:
    """Issue 17 §5: what prompt-lookup drafting gains where the reply repeats the prompt, and costs where not."""
    from webui.bench.draft import format_draft, measure_draft

    if not 1 <= args.draft <= 64 or args.tokens < 2 or args.runs < 1:
        print("error: --draft must be 1 to 64, --tokens at least 2 and --runs at least 1", file=sys.stderr)
        return 2
    with _scratch_app(args) as app:
        try:
            path = _gguf(app, args)
            result = measure_draft(app, str(path), app.load_settings_for("llama.cpp"), args.draft, args.tokens,
                                   args.runs, _progress)  # fmt: skip
            result["model"], result["load_average_before"] = path.stem, _load_average()
        except (BenchError, GenerationError, ModelLoadError, UnsafeName) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    print(json.dumps(result, ensure_ascii=False) if args.json else f"{result['model']}: " + format_draft(result))
    return 0


def cmd_switch(args: argparse.Namespace) -> int:
    if args.runs < 1:
        print("error: --runs must be at least 1", file=sys.stderr)
        return 2
    with _scratch_app(args) as app:
        try:
            result = bench_switch(app, args.model, args.runs)
        except (ModelLoadError, UnsafeName) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    print(json.dumps(result, ensure_ascii=False) if args.json else format_switch(result))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
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
    load_average = _load_average()
    try:
        path = _gguf(app, args)
        load_settings = app.load_settings_for("llama.cpp")
        _progress(f"loading {path.name} twice (our engine here, raw llama-cpp-python in a process of its own)...")
        info = app.load_model(str(path), "llama.cpp")
        raw = RawContender(path, load_settings, args.prompt, args.tokens)
        contenders.append(raw)
        engine = EngineContender(app, args.prompt, args.tokens)
        contenders.append(engine)
        if not args.no_ui:
            write_greedy_preset(Path(scratch.name), args.tokens)  # what the page's form starts with
            _progress(f"starting our server on http://127.0.0.1:{port} ...")
            ui = UIContender(app, _serve, port, args.prompt, args.tokens)
            contenders.append(ui)
            _progress("opening our page in headless Chromium ...")
            try:
                contenders.append(PageContender(app, ui.url, args.prompt, args.tokens, ui.prompt_tokens))
            except BenchError as exc:  # no browser here: the other contenders still run
                _progress(f"note: without the page contender: {exc}")
        run_interleaved(contenders, args.runs, _progress)
        result = {
            **_common(info, args, raw, load_average, contenders),
            "settings_mismatch": settings_mismatch(app, raw.kwargs),
            "engine_text_matches_raw": engine.samples[-1].text == raw.samples[-1].text,
            "engine_metadata": _kernel_facts(info),
        }
    except (BenchError, GenerationError, ModelLoadError, UnsafeName) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        _close(contenders, app)

    if args.json:
        print(json.dumps(result, ensure_ascii=False))
        return 0
    print(header(result))
    print()
    print(format_table(result))
    if result["settings_mismatch"]:
        print("WARNING: raw and the engine load the model differently: " + "; ".join(result["settings_mismatch"]))
    if note := text_note("the engine's", result["engine_text_matches_raw"], result["engine_metadata"]):
        print(note)
    return 0


def format_parallel(result: dict) -> str:
    """The parallel decoding lines: aggregate and TTFT of K clients against 1, and raw's batch ceiling."""
    one, many, raw = result.get("load_test_single"), result.get("load_test"), result.get("raw_batch")
    if not (one and many and raw):
        return ""
    ratio = many["tokens_per_s"] / one["tokens_per_s"] if one["tokens_per_s"] else 0.0
    ttft = (many["ttft_ms_median"] or 0) / one["ttft_ms_median"] if one["ttft_ms_median"] else 0.0
    lines = [
        f"parallel decoding (model loaded with parallel={result['parallel']}): {many['clients']} clients give "
        f"{ratio:.2f}× the tok/s of 1 (goal ≥ 2.5×), median TTFT {ttft:.2f}× (goal ≤ 2×)",
        f"ceiling, raw llama-cpp-python: {raw['batch_tokens_per_s']} tok/s for {raw['clients']} sequences in one "
        f"batch vs {raw['single_tokens_per_s']} for 1 ({raw['ratio']:.2f}×)",
    ]
    if raw["batch_tokens_per_s"] and raw["single_tokens_per_s"]:
        # A request that joins running streams gets its first token from the next step at the earliest, and a
        # step of K sequences costs what raw measured: the least TTFT can grow by on this machine.
        step_many = raw["clients"] * 1000 / raw["batch_tokens_per_s"]
        step_one = 1000 / raw["single_tokens_per_s"]
        lines.append(
            f"ceiling for TTFT: a step of {raw['clients']} sequences takes {step_many:.1f} ms against "
            f"{step_one:.1f} ms for 1 ({step_many / step_one:.2f}×); a request joining {raw['clients'] - 1} running "
            "streams waits at least one such step for its first token"
        )
    if result["parallel"] < many["clients"]:
        lines.append(f"note: load with --set parallel={many['clients']} (or 0, auto) to decode the clients together")
    return "\n".join(lines)


def cmd_bench_api(args: argparse.Namespace) -> int:
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
    load_average = _load_average()
    try:
        path = _gguf(app, args)
        load_settings = app.load_settings_for("llama.cpp")
        _progress(f"loading {path.name} (our engine here, raw llama-cpp-python in a process of its own)...")
        info = app.load_model(str(path), "llama.cpp")
        raw = RawContender(path, load_settings, args.prompt, args.tokens)
        contenders.append(raw)
        _progress(f"starting our server on http://127.0.0.1:{port} ...")
        api = ApiContender(app, _serve, port, args.prompt, args.tokens)
        contenders.append(api)
        try:
            import llama_cpp.server.app  # noqa: F401  (its extra dependencies)

            _progress("starting llama-cpp-python's own server ...")
            contenders.append(LlamaCppServerContender(path, load_settings, args.prompt, args.tokens))
        except ImportError as exc:
            skipped["llama-cpp-server"] = f"not installed ({exc}); pip install 'llama-cpp-python[server]'"
        except BenchError as exc:  # a comparison, not what is measured: the rest still runs
            skipped["llama-cpp-server"] = f"it did not start: {str(exc).splitlines()[-1]}"
        run_interleaved(contenders, args.runs, _progress)
        result = {
            **_common(info, args, raw, load_average, contenders),
            "api_text_matches_raw": api.samples[-1].text == raw.samples[-1].text,
            "engine_metadata": _kernel_facts(info),
            "skipped": skipped,
        }
        if args.clients:
            key, tokens = app.settings.api_key or "bench", min(args.tokens, 32)
            if args.clients > 1:  # the same load with one client first: the ratio is the parallel decoding's gain
                _progress(f"load test: 1 client for {args.duration:.0f} s ...")
                result["load_test_single"] = load_test(api.url, api.model, 1, args.duration, tokens, key)
            _progress(f"load test: {args.clients} clients for {args.duration:.0f} s ...")
            result["load_test"] = load_test(api.url, api.model, args.clients, args.duration, tokens, key)
            result["parallel"] = getattr(app.engine.loaded.model, "parallel", 1)
            if args.clients > 1:
                _progress(f"raw llama-cpp-python: 1 sequence, then {args.clients} in one batch (the ceiling) ...")
                result["raw_batch"] = raw_batch_ceiling(path, load_settings, args.prompt, args.clients, tokens)
    except (BenchError, GenerationError, ModelLoadError, UnsafeName) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        _close(contenders, app)

    if args.json:
        print(json.dumps(result, ensure_ascii=False))
        return 0
    print(header(result))
    print()
    print(format_table(result))
    for name, why in skipped.items():
        print(f"{name}: skipped, {why}")
    if note := text_note("the API's", result["api_text_matches_raw"], result["engine_metadata"]):
        print(note)
    if "load_test" in result:
        for lt in (result.get("load_test_single"), result["load_test"]):
            if lt:
                print(
                    f"load test: {lt['clients']} clients, {lt['duration_s']} s: {lt['completed']} requests completed, "
                    f"{lt['errors']} errors, {lt['tokens_per_s']} tok/s in total, median TTFT {lt['ttft_ms_median']} ms"
                )
        print(format_parallel(result))
    return 0
