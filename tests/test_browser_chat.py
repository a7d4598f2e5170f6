"""The chat's behaviour in the browser, on scripted fake models (quick): what a walk-through found losing state
or showing the wrong thing (issue 13) — each test failed before its fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import running_server, write_fake
from test_browser import LOCAL_HOSTS, markdown, open_page, send, user_messages

sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPLY = "Hello there, friend.\nA second line."
LONG = " ".join(f"w{i}" for i in range(400))


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    models, user_data = tmp_path_factory.mktemp("models"), tmp_path_factory.mktemp("user_data")
    write_fake(models, "hello", reply=REPLY)
    args = ("--models-dir", str(models), "--user-data", str(user_data), "--model", "hello.fake")
    with running_server(*args) as (url, _proc):
        yield url, user_data


@pytest.fixture
def context(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=None)

    def only_local(route):
        from urllib.parse import urlparse

        if urlparse(route.request.url).hostname in LOCAL_HOSTS or route.request.url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            route.abort()

    context.route("**/*", only_local)
    yield context
    context.close()


@pytest.fixture
def page(context, served):
    page = context.new_page()
    open_page(page, served[0])
    page.click("#new-chat")
    sync_api.expect(page.locator("#chatbot [data-testid='user']")).to_have_count(0)
    return page


def stats_lines(page):
    return page.locator("#chatbot .inglenook-stats")


def saved_conversations(user_data: Path, owner: str = "instruct") -> list[dict]:
    folder = user_data / "chats" / owner
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []


def test_new_chat_stays_new_when_the_title_box_or_character_dropdown_loses_focus(page):
    """Bug 1: New chat, then Tab out of the Conversation (or Character) dropdown reloaded the newest old chat.
    (The sidebar's list and title box replaced that dropdown.)"""
    send(page, "First conversation.")
    sync_api.expect(stats_lines(page)).to_have_count(1, timeout=60_000)
    page.click("#new-chat")
    sync_api.expect(page.locator("#chatbot [data-testid='user']")).to_have_count(0)
    for box in ("#rename-title input", "#chat-character input"):
        page.click(box)
        page.keyboard.press("Tab")
        page.wait_for_timeout(1_500)  # the blur's event has had its round trip
        assert user_messages(page) == [], f"the new chat was replaced after a blur of {box}"
    send(page, "Second conversation.")
    sync_api.expect(stats_lines(page)).to_have_count(1, timeout=60_000)
    assert user_messages(page) == ["Second conversation."], "the message went into the new chat, alone"


def test_copy_and_edit_give_the_reply_text_without_the_stats_markup(page):
    """Bug 2: copying a reply copied <span class='inglenook-stats'>…; the Edit box showed the same markup."""
    send(page, "Say hello.")
    sync_api.expect(stats_lines(page)).to_have_count(1, timeout=60_000)
    assert "time to first token" in stats_lines(page).first.inner_text(), "the stats still show beside the reply"
    bot = page.locator('#chatbot [data-testid="bot"]').last
    bot.hover()
    page.locator("#chatbot").get_by_role("button", name="Copy message").last.click()
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied.strip() == REPLY, copied
    bot.hover()
    page.locator("#chatbot").get_by_role("button", name="Edit").last.click()
    editor = page.locator("#chatbot textarea").last
    assert editor.input_value() == REPLY
    assert "inglenook-stats" not in editor.input_value()


@pytest.fixture(scope="module")
def slow_served(tmp_path_factory):
    """A server whose model takes 16 s for a reply (400 words, 40 ms each)."""
    models, user_data = tmp_path_factory.mktemp("slow_models"), tmp_path_factory.mktemp("slow_user_data")
    write_fake(models, "slow", reply=LONG, token_delay_ms=40)
    args = ("--models-dir", str(models), "--user-data", str(user_data), "--model", "slow.fake")
    with running_server(*args) as (url, _proc):
        yield url, user_data


def bot_text(page) -> str:
    bots = page.locator('#chatbot [data-testid="bot"]')
    return bots.last.inner_text() if bots.count() else ""


def test_a_reply_goes_on_and_is_saved_when_its_tab_closes_and_a_new_tab_follows_it(context, slow_served):
    """Bug 5: closing the tab mid-reply lost the partial reply. The reply belongs to the server."""
    url, user_data = slow_served
    first = context.new_page()
    open_page(first, url)
    first.click("#new-chat")
    send(first, "Tell me a long story.")
    first.wait_for_function(
        "() => { const b = document.querySelectorAll('#chatbot [data-testid=\"bot\"]');"
        " return b.length && b[b.length - 1].innerText.includes('w5'); }",
        timeout=60_000,
    )
    first.close()  # mid-reply: 400 words at 40 ms each take 16 s
    second = context.new_page()
    open_page(second, url)  # reopens the newest conversation: the one being written
    assert user_messages(second) == ["Tell me a long story."]
    sync_api.expect(second.locator('#chatbot [data-testid="bot"]')).to_contain_text("w5", timeout=30_000)
    sync_api.expect(stats_lines(second)).to_have_count(1, timeout=90_000)  # it followed the reply to its end
    assert "w399" in bot_text(second)
    [saved] = [c for c in saved_conversations(user_data) if c["title"] == "Tell me a long story."]
    assert saved["messages"][-1]["content"].split()[-1] == "w399", "written to its end and saved"
    assert "inglenook-stats" not in json.dumps(saved), "the file holds the text, the stats apart"


def test_a_reload_brings_back_the_character_chat_its_mode_system_prompt_and_changed_parameters(page, served):
    """Bug 6: a Wren chat-mode conversation came back as instruct / Assistant, the System prompt box empty,
    the Parameters back to the preset."""
    from test_browser import set_max_tokens
    from test_browser_characters import choose

    page.locator("#chat-mode").get_by_text("chat", exact=True).click()
    choose(page, "chat-character", "Wren")
    sync_api.expect(page.locator('#chatbot [data-testid="bot"]').first).to_contain_text("Wren looks up")
    set_max_tokens(page, 33)
    page.get_by_role("button", name="System prompt").click()
    system = page.get_by_label("System prompt", exact=True)
    system.fill("Answer in French.")
    send(page, "Is the causeway safe tonight?")
    sync_api.expect(stats_lines(page)).to_have_count(1, timeout=60_000)
    page.reload()
    open_page(page, served[0])
    assert user_messages(page) == ["Is the causeway safe tonight?"]
    sync_api.expect(page.locator("#chat-mode input[value='chat']")).to_be_checked()
    sync_api.expect(page.locator("#chat-character input")).to_have_value("Wren")
    page.get_by_role("button", name="System prompt").click()
    sync_api.expect(page.get_by_label("System prompt", exact=True)).to_have_value("Answer in French.")
    page.get_by_role("tab", name="Parameters").click()
    sync_api.expect(page.get_by_label("number input for Max new tokens")).to_have_value("33")


def test_the_chat_keys(page):
    """Enter sends, Shift+Enter a new line, Ctrl+Enter regenerates, Alt+Enter continues, ↑ in an empty box edits
    the last message."""
    box = page.locator("#chat-input textarea")
    box.fill("Hi")
    box.press("Shift+Enter")
    box.type("there")
    assert box.input_value() == "Hi\nthere" and user_messages(page) == [], "Shift+Enter is a new line, not a send"
    box.press("Enter")
    sync_api.expect(stats_lines(page)).to_have_count(1, timeout=60_000)
    box.press("Control+Enter")
    sync_api.expect(markdown(page, "#version-label")).to_have_text("2/2", timeout=60_000)
    sync_api.expect(page.locator("#regenerate")).to_be_enabled(timeout=60_000)  # the new version has ended
    box.press("Alt+Enter")
    sync_api.expect(page.locator('#chatbot [data-testid="bot"]').last).to_contain_text(
        "A second line.Hello there", timeout=60_000
    )  # continued: the fake model says its line again after the reply
    assert user_messages(page) == ["Hi\nthere"], "Ctrl/Alt+Enter sent nothing"
    sync_api.expect(page.locator("#regenerate")).to_be_enabled(timeout=60_000)  # the continuation has ended
    box.press("ArrowUp")
    sync_api.expect(page.locator("#chatbot textarea").first).to_have_value("Hi\nthere")


def test_escape_stops_and_regenerate_is_off_while_a_reply_streams(context, slow_served):
    page = context.new_page()
    open_page(page, slow_served[0])
    page.click("#new-chat")
    send(page, "Go on and on.")
    sync_api.expect(page.locator("#regenerate")).to_be_disabled(timeout=30_000)
    page.wait_for_function(
        "() => { const b = document.querySelectorAll('#chatbot [data-testid=\"bot\"]');"
        " return b.length && b[b.length - 1].innerText.includes('w3'); }",
        timeout=60_000,
    )
    page.locator("#chat-input textarea").press("Escape")
    sync_api.expect(stats_lines(page)).to_contain_text("stopped", timeout=30_000)
    sync_api.expect(page.locator("#regenerate")).to_be_enabled()
