"""The chat page's stream (issue 13, Speed): while a reply grows the page gets its text alone, by its own live
channel, and appends it to the last bubble (webui.chat.live, chat_tab.LIVE_JS); the whole chat lands at the end
as before. What the page
streams must be the saved reply exactly, Stop must still stop it, and a second tab must still follow it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import running_server, write_fake
from test_browser import open_page, send

sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
pytestmark = [pytest.mark.browser, pytest.mark.slow]

# unicode, markdown, a code fence, and characters HTML would eat (<, &, an entity, a tag)
TRICKY = (
    "Grüße 👋 — **bold**, _it_ and `a < b && c > d`.\n\n"
    '```python\nif a < b and c > d:\n    print("&amp; <b>not bold</b>")\n```\n\n'
    "Done & dusted <3 ✓ " + " ".join(f"w{i}" for i in range(200))
)  # ~250 words, 30 ms each: long enough to stop mid-way

# Records, in the page, every text the streamed bubble shows (the live text) and every text the carrier
# brought, and the chat's own value of the last reply at the end (the bubble's aria-label holds the raw message).
RECORD_JS = """() => {
    window.__streamed = [];
    window.__carried = [];  // every text the live carrier brought, as LIVE_JS got it
    let value = window.__inglenookLive;
    Object.defineProperty(window, '__inglenookLive', {configurable: true, get: () => value,
        set: (v) => { value = v; if (v) window.__carried.push(v); }});
    const root = document.querySelector('#chatbot');
    new MutationObserver(() => {
        const live = root.querySelector('.inglenook-live');
        const seen = window.__streamed;
        if (live && live.textContent !== seen[seen.length - 1]) seen.push(live.textContent);
    }).observe(root, {subtree: true, childList: true, characterData: true});
}"""
FINAL_JS = """() => {
    const bots = document.querySelectorAll('#chatbot [data-testid="bot"]');
    const last = bots[bots.length - 1];
    return {label: last.getAttribute('aria-label'), live: !!document.querySelector('#chatbot .inglenook-live'),
            code: last.querySelector('pre code') ? last.querySelector('pre code').textContent : null,
            streamed: window.__streamed, carried: window.__carried};
}"""
LABEL = "bot's message: "


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    models, user_data = tmp_path_factory.mktemp("models"), tmp_path_factory.mktemp("user_data")
    write_fake(models, "tricky", reply=TRICKY, token_delay_ms=30)
    args = ("--models-dir", str(models), "--user-data", str(user_data), "--model", "tricky.fake")
    with running_server(*args) as (url, _proc):
        yield url, user_data


def new_page(browser, url: str):
    """A tab on the page; the live channels it opens (GET /inglenook/live/ID) are kept in ``page.channels``."""
    page = browser.new_context(viewport={"width": 1280, "height": 1000}).new_page()
    page.channels = []
    page.on("request", lambda r: page.channels.append(r.url) if "/inglenook/live/" in r.url else None)
    open_page(page, url)
    return page


def saved_reply(user_data: Path, title: str) -> str:
    files = (user_data / "chats" / "instruct").glob("*.json")
    [conv] = [c for c in (json.loads(p.read_text()) for p in files) if c["title"] == title]
    return conv["messages"][-1]["content"]


def check_streamed(final: dict, saved: str) -> None:
    """Every text the page streamed (and the carrier brought) is the saved reply's beginning, exactly; the chat's
    value at the end is the saved reply."""
    streamed = final["streamed"]
    assert len(streamed) >= 3, f"the reply should stream bit by bit, saw {streamed}"
    assert all(saved.startswith(text) for text in streamed), [t for t in streamed if not saved.startswith(t)]
    carried = final["carried"]  # the reply's whole text comes last, unless the page took it with the whole chat
    assert carried and all(saved.startswith(text) for text in carried)
    assert final["label"] == LABEL + saved
    assert not final["live"], "the streamed text gives way to the chat's own rendering at the end"


def test_the_streamed_text_is_the_saved_reply_exactly_and_the_end_is_rendered(browser, served):
    url, user_data = served
    page = new_page(browser, url)
    page.click("#new-chat")
    page.evaluate(RECORD_JS)
    send(page, "Say something tricky.")
    sync_api.expect(page.locator("#chatbot .inglenook-stats")).to_have_count(1, timeout=60_000)
    final = page.evaluate(FINAL_JS)
    saved = saved_reply(user_data, "Say something tricky.")
    assert saved == TRICKY
    check_streamed(final, saved)
    # the text came by the page's live channel, one for the reply, not through Gradio's stream
    [file] = [f for f in (user_data / "chats" / "instruct").glob("*.json") if "Say something tricky." in f.read_text()]
    assert len(page.channels) == 1 and page.channels[0].endswith("/inglenook/live/" + file.stem)
    assert final["code"] == 'if a < b and c > d:\n    print("&amp; <b>not bold</b>")\n', "markdown at the end"
    bubble = page.locator('#chatbot [data-testid="bot"]').last
    assert "**bold**" not in bubble.inner_text() and "Grüße 👋" in bubble.inner_text()


def test_stop_mid_stream_from_a_second_tab_that_follows_the_reply(browser, served):
    url, user_data = served
    first = new_page(browser, url)
    first.click("#new-chat")
    first.evaluate(RECORD_JS)
    send(first, "Tell me a long story.")
    first.wait_for_function("() => window.__streamed.some(t => t.includes('w5'))", timeout=60_000)
    second = new_page(browser, url)  # reopens the newest conversation: the one being written
    second.evaluate(RECORD_JS)
    second.wait_for_function("() => window.__streamed.some(t => t.includes('w40'))", timeout=60_000)
    second.click("#stop")
    for page in (first, second):
        sync_api.expect(page.locator("#chatbot .inglenook-stats")).to_contain_text("stopped", timeout=30_000)
    saved = saved_reply(user_data, "Tell me a long story.")
    assert "w40" in saved and "w199" not in saved, "stopped mid-reply, and what came is saved"
    for page in (first, second):
        check_streamed(page.evaluate(FINAL_JS), saved)
    sync_api.expect(first.locator("#send")).to_be_enabled()
