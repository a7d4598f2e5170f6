"""Where the page's first-token time goes (README, "Speed"): our chat page in headless Chromium on the embedded
gemma, a message sent with Enter, timed on the machine's one clock at each hop up to the page showing the
first word of the reply:

Enter (the page's ``performance.now()``) → the POST to Gradio's queue arrives → the queue starts the event →
our handler (``ChatSessions.send``) → the engine is asked → its first text → the page's live channel sends
it (``ChatSessions.reply_texts``, webui.chat.live) → the page shows it (a MutationObserver, as
``inglenook bench``'s page row).

It wraps a few functions of a server running in this process (timing only; nothing else changes) and prints
each run and the medians. Run: ``PYTHONPATH=. python tests/measure_page_ttft.py [--runs 8]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import gradio.queueing

import webui.chat.session as session_module
from webui.app import App
from webui.bench.page import RECORD_JS, open_chat_page, write_greedy_preset
from webui.models.folder import resolve_model
from webui.serve import thread_server
from webui.server import build_server
from webui.settings import Settings

HOPS = ["enter", "join", "queue", "handler", "engine", "first_text", "passed_on", "shown"]
PROMPT = "Write a short poem about the sea."


class Marks(dict):
    """The first time each hop is seen in the current run."""

    def hit(self, name: str) -> None:
        self.setdefault(name, time.time())


def instrument(app: App, marks: Marks):
    """Wrap the hops' functions (for this process only) and return the ASGI app that notes the POST."""
    generate = app.engine.generate

    def timed_generate(*args, **kwargs):
        marks.hit("engine")
        for chunk in generate(*args, **kwargs):
            if chunk.text:
                marks.hit("first_text")
            yield chunk

    app.engine.generate = timed_generate
    send = session_module.ChatSessions.send

    def timed_send(self, *args, **kwargs):
        marks.hit("handler")
        yield from send(self, *args, **kwargs)

    session_module.ChatSessions.send = timed_send
    reply_texts = session_module.ChatSessions.reply_texts

    def timed_reply_texts(self, *args, **kwargs):  # what the page's live channel sends (webui.chat.live)
        for text in reply_texts(self, *args, **kwargs):
            if text:
                marks.hit("passed_on")
            yield text

    session_module.ChatSessions.reply_texts = timed_reply_texts
    process = gradio.queueing.Queue.process_events

    async def timed_process(self, *args, **kwargs):
        marks.hit("queue")
        return await process(self, *args, **kwargs)

    gradio.queueing.Queue.process_events = timed_process
    inner = build_server(app)

    async def asgi(scope, receive, send):
        if scope.get("type") == "http" and scope.get("path", "").endswith("/queue/join"):
            marks.hit("join")
        await inner(scope, receive, send)

    return asgi


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=8)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    marks = Marks()
    with tempfile.TemporaryDirectory() as user_data, tempfile.TemporaryDirectory() as models:
        write_greedy_preset(Path(user_data), 32)
        app = App.create(Settings(models_dir=Path(models), user_data=Path(user_data)))
        app.load_model(str(resolve_model("default", Path(models))), "llama.cpp")
        rows = []
        try:
            with thread_server(instrument(app, marks)) as url, sync_playwright() as playwright:
                browser, page = open_chat_page(playwright, url)
                for run in range(args.runs + 1):  # the first one warms up
                    page.click("#new-chat")
                    page.wait_for_function("() => !document.querySelector('#chatbot [data-testid=\"user\"]')")
                    time.sleep(0.5)
                    marks.clear()
                    page.evaluate(RECORD_JS, PROMPT)
                    page.fill("#chat-input textarea", PROMPT)
                    page.press("#chat-input textarea", "Enter")
                    page.wait_for_selector("#chatbot .inglenook-stats", timeout=60_000)
                    seen = page.evaluate("() => ({origin: performance.timeOrigin, bench: window.__bench})")
                    origin = seen["origin"] / 1000
                    marks["enter"] = origin + seen["bench"]["enter"] / 1000
                    marks["shown"] = origin + seen["bench"]["changes"][0][0] / 1000
                    steps = [(marks[b] - marks[a]) * 1000 for a, b in zip(HOPS, HOPS[1:], strict=False)]
                    total = (marks["shown"] - marks["enter"]) * 1000
                    if run:
                        rows.append([*steps, total])
                    cells = " | ".join(f"{a}→{b} {s:.0f}" for a, b, s in zip(HOPS, HOPS[1:], steps, strict=False))
                    print(f"{'warm-up' if not run else f'run {run}'}: {cells} | total {total:.0f} ms", flush=True)
                browser.close()
        finally:
            app.close()
    medians = [statistics.median(column) for column in zip(*rows, strict=True)]
    cells = " | ".join(f"{a}→{b} {m:.0f}" for a, b, m in zip(HOPS, HOPS[1:], medians, strict=False))
    print(f"medians of {len(rows)}: {cells} | total {medians[-1]:.0f} ms")


if __name__ == "__main__":
    main()
