"""Where the page's stream speed goes (README, "Speed"): the CPU each process spends while our chat page in
headless Chromium shows one reply of the embedded gemma, beside the reply's own tok/s (its stats line).

On a 2-core machine Chromium draws on the cores llama.cpp decodes on, so every CPU-second the page takes
slows the decode. Per reply it prints: Chromium's CPU (all its processes), this process's (the server:
Gradio and our handlers), the model worker's, and Chromium's main-thread time (CDP ``Performance`` metrics:
tasks, script, layout, style). ``--interval`` is the chat stream's grouping (``stream_interval_s``; 10 sends
only the first and the final update, which shows what the page costs without streamed updates).

Run: ``PYTHONPATH=. python tests/measure_page_cpu.py [--runs 4] [--interval 0.05]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import psutil

from webui.app import App
from webui.bench.page import RECORD_JS, STATS, open_chat_page, write_greedy_preset
from webui.models.folder import resolve_model
from webui.serve import thread_server
from webui.server import build_server
from webui.settings import Settings

PROMPT = "Write a long story about the sea."
METRICS = ("TaskDuration", "ScriptDuration", "LayoutDuration", "RecalcStyleDuration")


def cpu_seconds(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.Error:  # a Chromium helper that ended
            continue
        total += times.user + times.system
    return total


def chromium_processes() -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["name"]) if "chrom" in (p.info["name"] or "")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--interval", type=float, default=0.05)
    parser.add_argument("--tokens", type=int, default=128)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    me = psutil.Process()
    rows = []
    with tempfile.TemporaryDirectory() as user_data, tempfile.TemporaryDirectory() as models:
        write_greedy_preset(Path(user_data), args.tokens)
        settings = Settings(models_dir=Path(models), user_data=Path(user_data), stream_interval_s=args.interval)
        app = App.create(settings)
        app.load_model(str(resolve_model("default", Path(models))), "llama.cpp")
        workers = me.children(recursive=True)  # the model's worker process, before Chromium starts
        try:
            with thread_server(build_server(app)) as url, sync_playwright() as playwright:
                browser, page = open_chat_page(playwright, url)
                cdp = page.context.new_cdp_session(page)
                cdp.send("Performance.enable")

                def metrics() -> dict:
                    return {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}

                for run in range(args.runs + 1):  # the first one warms up
                    page.click("#new-chat")
                    page.wait_for_function("() => !document.querySelector('#chatbot [data-testid=\"user\"]')")
                    time.sleep(1.0)
                    page.evaluate(RECORD_JS, PROMPT)
                    page.fill("#chat-input textarea", PROMPT)
                    chromium = chromium_processes()
                    before = (cpu_seconds(chromium), cpu_seconds([me]), cpu_seconds(workers), metrics())
                    page.press("#chat-input textarea", "Enter")
                    page.wait_for_selector("#chatbot .inglenook-stats", timeout=120_000)
                    after = (cpu_seconds(chromium), cpu_seconds([me]), cpu_seconds(workers), metrics())
                    stats = STATS.search(page.locator("#chatbot .inglenook-stats").last.inner_text())
                    row = {
                        "tok/s (stats line)": float(stats.group(3)) if stats else 0.0,
                        "updates shown": len(page.evaluate("() => window.__bench.changes")),
                        "Chromium CPU s": after[0] - before[0],
                        "server CPU s": after[1] - before[1],
                        "worker CPU s": after[2] - before[2],
                        **{f"main {name[:-8].lower()} s": after[3][name] - before[3][name] for name in METRICS},
                    }
                    if run:
                        rows.append(row)
                    cells = ", ".join(f"{k} {v:.3g}" for k, v in row.items())
                    print(f"{'warm-up' if not run else f'run {run}'}: {cells}", flush=True)
                browser.close()
        finally:
            app.close()
    medians = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    cells = ", ".join(f"{k} {v:.3g}" for k, v in medians.items())
    print(f"medians of {len(rows)} (interval {args.interval} s): {cells}")


if __name__ == "__main__":
    main()
