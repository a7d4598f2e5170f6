"""The "page" contender: our chat page in headless Chromium, timed as the page shows the reply.

It opens the UI the ui contender serves (same server, same App) in Chromium through playwright, types the
prompt into the chat box and presses Enter, as a person does. In the page, a keydown listener notes
``performance.now()`` at Enter and a MutationObserver notes every change of the newest reply's visible text
(the streamed text while it grows, the rendered message at the end). TTFT: Enter to the first text that is
not the "…" placeholder; decode: that to the moment the whole reply shows (the streamed text equal to the
saved reply, or else the chat's own rendering at the end). Tokens: the reply as the chat saved it, counted
again by the model's tokenizer (as the ui contender does). The server's own TTFT and tok/s come from the
reply's stats line. Greedy sampling comes from the page's default preset, which the bench writes into its
scratch user data before the server starts (:func:`write_greedy_preset`).
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

from webui.app import App
from webui.bench.measure import RUN_TIMEOUT_S, SERVER_START_S, BenchError, Contender, Sample, engine_llm, reset_cache
from webui.chat.conversation import INSTRUCT_OWNER
from webui.presets import DEFAULT_PRESET

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-sync"]
STATS = re.compile(r"time to first token (\d+) ms \| (\d+) tokens \| ([\d.]+) tok/s")

# Installed before each run: the time of Enter, and (time, text) at each change of the newest reply's text.
RECORD_JS = """(prompt) => {
    const root = document.querySelector('#chatbot');
    window.__bench = {enter: null, changes: []};
    if (!window.__benchKeys) {
        window.__benchKeys = true;
        document.addEventListener('keydown', (e) => {
            if (e.key === 'Enter' && window.__bench.enter === null) window.__bench.enter = performance.now();
        }, true);
    }
    if (window.__benchObserver) window.__benchObserver.disconnect();
    const read = () => {
        const turns = root.querySelectorAll('[data-testid="bot"], [data-testid="user"]');
        const bot = turns[turns.length - 1];
        if (!bot || bot.dataset.testid !== 'bot') return null;
        const live = bot.querySelector(':scope > .inglenook-live');
        const shown = live || bot.querySelector('.message-content');
        return shown ? [shown.textContent, !!live] : null;
    };
    window.__benchObserver = new MutationObserver(() => {
        const found = read();
        const changes = window.__bench.changes;
        if (found === null || found[0] === '' || found[0] === '…') return;
        const [text, live] = found;
        const previous = changes[changes.length - 1];
        if (!previous || previous[1] !== text || previous[2] !== live) changes.push([performance.now(), text, live]);
    });
    window.__benchObserver.observe(root, {subtree: true, childList: true, characterData: true});
}"""


def open_chat_page(playwright, url: str, timeout_s: float = SERVER_START_S):
    """Headless Chromium (Debian's when there) on our page at ``url``, 1280×1000, once the page's load event
    has restored its conversation (it shows the prompt's size last): (browser, page). The browser is closed
    again if the page does not come."""
    path = str(CHROMIUM) if CHROMIUM.exists() else None
    browser = playwright.chromium.launch(executable_path=path, headless=True, args=CHROMIUM_ARGS)
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(url)
        page.wait_for_selector("#chat-input textarea", timeout=timeout_s * 1000)
        page.wait_for_function(
            "() => (document.querySelector('#prompt-tokens') || {}).innerText?.includes('tokens')",
            timeout=timeout_s * 1000,
        )
    except Exception:
        browser.close()
        raise
    return browser, page


def write_greedy_preset(user_data: Path, tokens: int) -> None:
    """The page's default preset, greedy and ``tokens`` long, in the bench's scratch user data (never the user's)."""
    folder = user_data / "presets"
    folder.mkdir(parents=True, exist_ok=True)
    text = f"temperature: 0\ntop_p: 1\ntop_k: 0\nmin_p: 0\nrepetition_penalty: 1\nseed: 0\nmax_new_tokens: {tokens}\n"
    (folder / f"{DEFAULT_PRESET}.yaml").write_text(text, encoding="utf-8")


class PageContender(Contender):
    """Our page in headless Chromium (playwright) on the ui contender's running server."""

    def __init__(self, app: App, url: str, prompt: str, tokens: int, prompt_tokens: int) -> None:
        super().__init__("page")
        self.app, self.url, self.prompt, self.tokens = app, url, prompt, tokens
        self.prompt_tokens = prompt_tokens
        try:
            from playwright.sync_api import sync_playwright
        except ImportError:
            raise BenchError("the page contender needs playwright (pip install playwright)") from None
        self._playwright = sync_playwright().start()
        try:
            self.browser, self.page = open_chat_page(self._playwright, self.url)
        except Exception as exc:
            self.close()
            raise BenchError(f"Chromium could not open our page: {type(exc).__name__}: {exc}") from exc

    def run(self) -> Sample:
        page = self.page
        try:
            page.click("#new-chat")
            page.wait_for_function("() => !document.querySelector('#chatbot [data-testid=\"user\"]')")
            reset_cache(engine_llm(self.app))
            page.evaluate(RECORD_JS, self.prompt)
            page.fill("#chat-input textarea", self.prompt)
            page.press("#chat-input textarea", "Enter")
            page.wait_for_selector("#chatbot .inglenook-stats", timeout=RUN_TIMEOUT_S * 1000)
            # the Markdown's text only: Gradio's progress timer ("0.0s") shares the component's box
            error = page.locator('#chat-error [data-testid="markdown"]').inner_text().strip()
            record = page.evaluate("() => window.__bench")
            stats = page.locator("#chatbot .inglenook-stats").last.inner_text()
        except Exception as exc:
            raise BenchError(f"the page run failed: {type(exc).__name__}: {exc}") from exc
        if error:
            raise BenchError(f"the page reported an error: {error}")
        changes = record["changes"]
        if record["enter"] is None or not changes:
            raise BenchError("the page showed no reply")
        text, tokens, finish = self._saved_reply()
        first, last = changes[0][0], changes[-1][0]
        # the whole reply is on the screen once the streamed text is all of it, even if the chat's own
        # rendering (markdown) replaces it later; else when that rendering lands
        last = next((t for t, shown, live in changes if live and shown == text), last)
        reported = None
        if found := STATS.search(stats):
            reported = {"ttft_ms": float(found.group(1)), "tokens_per_s": float(found.group(3))}
        return Sample((first - record["enter"]) / 1000, (last - first) / 1000, tokens, finish, text, reported)

    def _saved_reply(self) -> tuple[str, int, str]:
        conversation = self.app.history.latest(INSTRUCT_OWNER)
        if conversation is None or not conversation.messages or conversation.messages[-1].role != "assistant":
            raise BenchError("the page's reply was not saved")
        text = conversation.messages[-1].content
        engine = self.app.engine
        tokens = engine.count_tokens(text) - engine.count_tokens("")  # without the BOS a prompt count includes
        return text, tokens, "length" if tokens >= self.tokens else "stop"

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.browser.close()
        with contextlib.suppress(Exception):
            self._playwright.stop()
