"""The chat tab's "Ask two models" as a user sees it: a real server on scripted (fake) models, in headless
Chromium at 1440×900. Ask both, see the replies side by side with stats, keep B, and see it in the chat.
Screenshots land in /tmp/shots/arena-*.png.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import running_server, write_fake

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is not installed", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")

pytestmark = [pytest.mark.browser, pytest.mark.slow]
SHOTS = Path("/tmp/shots")
ALPHA, BETA = "Alpha says the sky is blue.", "Beta says the sea is green."


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> str:
    models = tmp_path_factory.mktemp("fake-models")
    write_fake(models, "alpha", reply=ALPHA)
    write_fake(models, "beta", reply=BETA)
    write_fake(models, "hello", reply="Hello there, friend.")
    write_fake(models, "slowpoke", reply=" ".join(f"s{i}" for i in range(400)), token_delay_ms=25)
    user_data = tmp_path_factory.mktemp("user_data")
    args = ("--models-dir", str(models), "--user-data", str(user_data), "--model", "hello.fake")
    with running_server(*args) as (url, _proc):
        yield url


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"arena-{name}.png"), full_page=True)


def pick(page, elem_id: str, option: str) -> None:
    page.click(f"{elem_id} input")
    page.locator(elem_id).get_by_role("option", name=option).click()


def test_ask_two_models_and_keep_b(server: str) -> None:
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.goto(server)
        page.wait_for_selector("#chat-input textarea")
        page.get_by_text("Ask two models").click()
        pick(page, "#arena-a", "alpha.fake")
        pick(page, "#arena-b", "beta.fake")
        page.fill("#chat-input textarea", "What colour?")
        page.click("#arena-ask")
        page.wait_for_selector("#arena-status:has-text('is loaded again')", timeout=60_000)
        assert ALPHA in page.inner_text("#arena-reply-a") and BETA in page.inner_text("#arena-reply-b")
        assert "tok/s" in page.inner_text("#arena-stats-a") and "tok/s" in page.inner_text("#arena-stats-b")
        page.locator("#arena").scroll_into_view_if_needed()
        shot(page, "replies")
        page.click("#arena-keep-b")
        page.wait_for_selector("#arena-status:has-text('Kept B')", timeout=30_000)
        page.wait_for_selector(f"#chatbot:has-text('{BETA}')", timeout=30_000)
        assert ALPHA not in page.inner_text("#chatbot")
        assert "2" in page.inner_text("#version-label")  # the other reply is the second version
        page.evaluate("window.scrollTo(0, 0)")
        shot(page, "kept")
        browser.close()


def test_stop_ends_the_round_keeps_what_came_and_skips_the_other_side(server: str) -> None:
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.goto(server)
        page.wait_for_selector("#chat-input textarea")
        page.get_by_text("Ask two models").click()
        pick(page, "#arena-a", "slowpoke.fake")
        pick(page, "#arena-b", "beta.fake")
        page.fill("#chat-input textarea", "Count slowly.")
        page.click("#arena-ask")
        page.wait_for_selector("#arena-reply-a:has-text('s5')", timeout=60_000)
        page.click("#arena-stop")
        page.wait_for_selector("#arena-status:has-text('is loaded again')", timeout=60_000)
        reply_a = page.inner_text("#arena-reply-a")
        assert "s5" in reply_a and "s399" not in reply_a, "A stopped part-way"
        assert "stopped" in page.inner_text("#arena-reply-b") and BETA not in page.inner_text("#arena-reply-b")
        page.wait_for_selector("#chatbot:has-text('s5')", timeout=30_000)  # A's part is saved as the reply
        assert "s399" not in page.inner_text("#chatbot")
        browser.close()
