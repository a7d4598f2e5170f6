"""The page's leftovers of issue 13 in the browser, on scripted fake models (quick): the preset's "modified" mark,
the load bar's percentage, Undo after a delete, the sidebar's rows (picture, count, editable title) and picking
a conversation there bringing back its settings, and the extension settings form without console warnings."""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import urlparse

import pytest
from conftest import running_server, write_fake
from test_browser import (
    LOCAL_HOSTS,
    fill_steady,
    markdown,
    open_page,
    send,
    set_max_tokens,
    user_messages,
)

sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPLY = "Tea is ready."


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    models, user_data = tmp_path_factory.mktemp("models"), tmp_path_factory.mktemp("user_data")
    write_fake(models, "hello", reply=REPLY)
    write_fake(models, "heavy", reply=REPLY, load_ms=6000)  # a load long enough to watch its bar
    args = ("--models-dir", str(models), "--user-data", str(user_data), "--model", "hello.fake")
    with running_server(*args) as (url, _proc):
        yield url, user_data


@pytest.fixture
def page(browser, served):
    """A fresh tab on a new chat; what the page logs to its console is kept in ``page.console``."""
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    context.route(
        "**/*",
        lambda route: (
            route.continue_()
            if urlparse(route.request.url).hostname in LOCAL_HOSTS or route.request.url.startswith(("data:", "blob:"))
            else route.abort()
        ),
    )
    page = context.new_page()
    page.console = []
    page.on("console", lambda m: page.console.append((m.type, m.text)))
    open_page(page, served[0])
    page.click("#new-chat")
    sync_api.expect(page.locator("#chatbot [data-testid='user']")).to_have_count(0)
    yield page
    context.close()


def saved(user_data: Path, owner: str = "instruct") -> dict[str, bytes]:
    """File name -> bytes of every saved conversation of ``owner``."""
    folder = user_data / "chats" / owner
    return {p.name: p.read_bytes() for p in folder.glob("*.json")} if folder.is_dir() else {}


def choose(page, elem_id: str, option: str) -> None:
    page.click(f"#{elem_id} input")
    page.get_by_role("option", name=option, exact=True).click()


def title_box(page):
    return page.locator("#rename-title input, #rename-title textarea").first


def system_box(page):
    page.get_by_role("button", name="System prompt").click()
    return page.get_by_label("System prompt", exact=True)


def wait_reply(page, n: int = 1) -> None:
    sync_api.expect(page.locator("#chatbot .inglenook-stats")).to_have_count(n, timeout=60_000)


def test_the_preset_line_marks_a_changed_slider_until_saved_or_picked_again(page):
    page.get_by_role("tab", name="Parameters").click()
    state = markdown(page, "#preset-state")
    sync_api.expect(state).to_have_text("Preset: Balanced", timeout=30_000)
    fill_steady(page.get_by_label("number input for Temperature"), "1.3")
    page.get_by_label("number input for Temperature").press("Tab")
    sync_api.expect(state).to_have_text("Preset: Balanced •modified", timeout=30_000)
    choose(page, "preset-choice", "Balanced")  # picked again: its values back, the mark gone
    sync_api.expect(page.get_by_label("number input for Temperature")).not_to_have_value("1.3")
    sync_api.expect(state).to_have_text("Preset: Balanced", timeout=30_000)
    fill_steady(page.get_by_label("number input for top_p"), "0.5")
    page.get_by_label("number input for top_p").press("Tab")
    sync_api.expect(state).to_have_text("Preset: Balanced •modified", timeout=30_000)
    fill_steady(page.locator("#preset-new-name textarea, #preset-new-name input").first, "Narrow")
    page.click("#preset-save-as")  # saved under a new name: that preset is active and unmodified
    sync_api.expect(state).to_have_text("Preset: Narrow", timeout=30_000)


def test_delete_asks_nothing_and_undo_gives_back_the_same_file(page, served):
    user_data = served[1]
    send(page, "Remember the word anchor.")
    wait_reply(page)
    before = saved(user_data)
    [name] = [n for n, data in before.items() if b"Remember the word anchor." in data]
    page.click("#delete-chat")
    sync_api.expect(page.locator("#undo-delete")).to_be_visible(timeout=30_000)
    sync_api.expect(markdown(page, "#undo-delete-note")).to_contain_text("Remember the word anchor.")
    assert name not in saved(user_data), "deleted at once, nothing asked"
    sync_api.expect(page.get_by_role("radio", name=re.compile("Remember the word anchor"))).to_have_count(0)
    page.click("#undo-delete")
    sync_api.expect(page.locator("#undo-delete")).to_be_hidden(timeout=30_000)
    sync_api.expect(page.locator("#chatbot [data-testid='user']").first).to_have_text("Remember the word anchor.")
    assert saved(user_data)[name] == before[name], "the same bytes came back"
    sync_api.expect(page.locator("#conversations-today")).to_contain_text("Remember the word anchor. · 2 messages")
    page.click("#delete-chat")  # the offer ends by itself after about ten seconds
    sync_api.expect(page.locator("#undo-delete")).to_be_visible(timeout=30_000)
    sync_api.expect(page.locator("#undo-delete")).to_be_hidden(timeout=30_000)
    assert name not in saved(user_data)


def test_the_title_is_renamed_in_the_sidebar_and_saved_in_the_file(page, served):
    send(page, "Plan the garden.")
    wait_reply(page)
    sync_api.expect(title_box(page)).to_have_value("Plan the garden.", timeout=30_000)
    fill_steady(title_box(page), "Garden plans")
    title_box(page).press("Enter")
    sync_api.expect(page.locator("#conversations-today")).to_contain_text("Garden plans · 2 messages")
    titles = [json.loads(data)["title"] for data in saved(served[1]).values()]
    assert "Garden plans" in titles


def test_picking_a_conversation_in_the_sidebar_brings_back_its_settings(page):
    """Its system prompt and changed parameters (the old dropdown's job; the sidebar did not do it)."""
    set_max_tokens(page, 33)
    fill_steady(system_box(page), "Answer like a gardener.")
    send(page, "Which roses climb?")
    wait_reply(page)
    page.click("#new-chat")
    sync_api.expect(page.locator("#chatbot [data-testid='user']")).to_have_count(0)
    set_max_tokens(page, 44)
    fill_steady(page.get_by_label("System prompt", exact=True), "Answer like a sailor.")
    send(page, "Which knots hold?")
    wait_reply(page)
    today = page.locator("#conversations-today")
    sync_api.expect(today).to_contain_text("Which knots hold? · 2 messages")
    today.get_by_text("Which roses climb?", exact=False).click()
    sync_api.expect(page.locator("#chatbot [data-testid='user']").first).to_have_text("Which roses climb?")
    sync_api.expect(page.get_by_label("System prompt", exact=True)).to_have_value("Answer like a gardener.")
    page.get_by_role("tab", name="Parameters").click()
    sync_api.expect(page.get_by_label("number input for Max new tokens")).to_have_value("33")
    sync_api.expect(markdown(page, "#preset-state")).to_contain_text("•modified")  # 33 is not Balanced's


def test_a_conversation_brings_back_its_preset_with_its_changes_from_the_sidebar_and_after_a_reload(page, served):
    """The preset's name is kept in the conversation file: picking the conversation (or reloading the page on
    it) shows that preset again, the form as the conversation was asked with, "•modified" where it differed."""
    state = markdown(page, "#preset-state")
    page.get_by_role("tab", name="Parameters").click()
    choose(page, "preset-choice", "Creative")
    sync_api.expect(state).to_have_text("Preset: Creative", timeout=30_000)
    fill_steady(page.get_by_label("number input for top_k"), "7")
    page.get_by_label("number input for top_k").press("Tab")
    sync_api.expect(state).to_have_text("Preset: Creative •modified", timeout=30_000)
    page.get_by_role("tab", name="Chat").click()
    send(page, "Name three herbs.")
    wait_reply(page)
    [kept] = [json.loads(d)["settings"] for d in saved(served[1]).values() if b"Name three herbs." in d]
    assert kept["preset"] == "Creative" and kept["sampling"]["top_k"] == 7
    page.click("#new-chat")
    sync_api.expect(page.locator("#chatbot [data-testid='user']")).to_have_count(0)
    page.get_by_role("tab", name="Parameters").click()
    choose(page, "preset-choice", "Precise")
    sync_api.expect(state).to_have_text("Preset: Precise", timeout=30_000)
    page.get_by_role("tab", name="Chat").click()
    page.locator("#conversations-today").get_by_text("Name three herbs.", exact=False).click()
    sync_api.expect(page.locator("#chatbot [data-testid='user']").first).to_have_text("Name three herbs.")
    page.get_by_role("tab", name="Parameters").click()
    sync_api.expect(state).to_have_text("Preset: Creative •modified", timeout=30_000)
    sync_api.expect(page.get_by_label("number input for top_k")).to_have_value("7")
    sync_api.expect(page.locator("#preset-choice input")).to_have_value("Creative")
    page.reload()  # the page opens on the conversation it showed, with its preset
    open_page(page, served[0])
    sync_api.expect(page.locator("#chatbot [data-testid='user']").first).to_have_text("Name three herbs.")
    page.get_by_role("tab", name="Parameters").click()
    sync_api.expect(state).to_have_text("Preset: Creative •modified", timeout=30_000)
    sync_api.expect(page.get_by_label("number input for top_k")).to_have_value("7")


def test_a_character_chat_row_shows_its_picture_and_comes_back_in_its_mode(page):
    page.locator("#chat-mode").get_by_text("chat-instruct", exact=True).click()
    choose(page, "chat-character", "Wren")
    sync_api.expect(page.locator('#chatbot [data-testid="bot"]').first).to_contain_text("Wren looks up")
    send(page, "Is the causeway open?")
    wait_reply(page)
    today = page.locator("#conversations-today")
    sync_api.expect(today).to_contain_text("Is the causeway open? · 3 messages")  # greeting, question, reply
    picture = today.locator("label").first.evaluate("l => getComputedStyle(l, '::before').backgroundImage")
    assert picture.startswith('url("data:image/png;base64,'), picture
    page.locator("#chat-mode").get_by_text("chat", exact=True).click()
    page.click("#new-chat")
    sync_api.expect(page.locator("#chatbot [data-testid='user']")).to_have_count(0)
    sync_api.expect(today.get_by_role("radio", checked=True)).to_have_count(0)  # the list follows the new chat
    today.get_by_text("Is the causeway open?", exact=False).click()
    sync_api.expect(page.locator("#chatbot [data-testid='user']").first).to_have_text("Is the causeway open?")
    sync_api.expect(page.locator("#chat-mode input[value='chat-instruct']")).to_be_checked()
    page.locator("#chat-mode").get_by_text("instruct", exact=True).click()  # no picture for instruct rows
    sync_api.expect(page.locator("#conversation-avatar")).not_to_contain_text("data:image", use_inner_text=False)


def test_switching_the_extension_settings_form_logs_no_warning(page):
    """A number box reused for a text setting warned "The specified value ... cannot be parsed"."""
    page.get_by_role("tab", name="Extensions").click()
    message = markdown(page, "#extension-message")
    for name in ("memory", "generation_stats"):
        choose(page, "extension-choice", name)
        page.click("#extension-enable")
        sync_api.expect(message).to_contain_text(f"Enabled {name}", timeout=30_000)
    page.console.clear()
    for name, label in [("memory", "Heading above the note"), ("generation_stats", "Replies kept")] * 2:
        choose(page, "extension-choice", name)
        sync_api.expect(page.get_by_label(label).first).to_be_visible(timeout=30_000)
        page.wait_for_timeout(500)
    problems = [(kind, text) for kind, text in page.console if kind in ("warning", "error")]
    assert problems == []


def test_the_load_bar_shows_how_far_the_load_is(page):
    """Last in the module: it leaves heavy.fake loaded."""
    page.get_by_role("tab", name="Model").click()
    page.locator("#model-choice input").fill("heavy.fake")
    page.keyboard.press("Enter")
    page.click("#load-model")
    words = page.locator("#model-progress .inglenook-loading-text")
    sync_api.expect(words).to_have_text(re.compile(r"^Loading… ([1-9]|[1-9]\d) %$"), timeout=30_000)
    bar = page.locator("#model-progress [role=progressbar]")
    assert 0 < int(bar.get_attribute("aria-valuenow")) < 100
    sync_api.expect(page.locator("#model-progress")).to_be_hidden(timeout=60_000)
    sync_api.expect(markdown(page, "#model-header")).to_contain_text("heavy")
    assert user_messages(page) == []


# Counts the page's requests for an animation frame: installed before any of the page's own scripts, so Gradio's
# modules (which keep the function they find at load) and our <head> script both call through it.
COUNT_FRAMES = """
window.__frames = 0;
const frame = window.requestAnimationFrame.bind(window);
window.requestAnimationFrame = (callback) => { window.__frames += 1; return frame(callback); };
"""


def test_an_idle_page_asks_for_no_animation_frames(browser, served):
    """Gradio 6.31's status tracker counts seconds in a requestAnimationFrame loop that the page's own "Loading…"
    tracker never ends: an idle page drew 60 frames a second. Our <head> script (PAGE_HEAD) runs such counters
    on a 100 ms timer, so an idle page asks for (almost) none."""
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    try:
        context.add_init_script(COUNT_FRAMES)
        page = context.new_page()
        open_page(page, served[0])
        page.wait_for_timeout(5000)  # the page's own transitions after loading end within ~4 s
        before = page.evaluate("window.__frames")
        page.wait_for_timeout(2000)
        frames = page.evaluate("window.__frames") - before
        assert frames < 20, f"{frames} animation frames in 2 s of an idle page"
    finally:
        context.close()
