"""The web UI as a user sees it: a real server on the embedded Gemma, driven in headless Chromium.

One server and one browser serve the whole module; each test opens its own page (its own Gradio session).
Screenshots of the key moments land in /tmp/shots/.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest
from conftest import running_server

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is not installed", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SHOTS = Path("/tmp/shots")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
TOKENS = re.compile(r"(\d+) tokens")

# The text of the newest assistant message, with its stats line (if any) reported apart.
LAST_REPLY_JS = """() => {
    const bots = document.querySelectorAll('#chatbot [data-testid="bot"]');
    const last = bots[bots.length - 1];
    if (!last) return null;
    const stats = last.querySelector('.inglenook-stats');
    const text = stats ? last.innerText.replace(stats.innerText, '') : last.innerText;
    return {text: text.trim(), stats: stats ? stats.innerText : null};
}"""

# Records every state of the newest assistant message as the page changes it (no polling gaps).
WATCH_REPLY_JS = (
    """() => {
    const read = """
    + LAST_REPLY_JS
    + """;
    window.__replies = [];
    new MutationObserver(() => { const r = read(); if (r) window.__replies.push(r); })
        .observe(document.querySelector('#chatbot'), {subtree: true, childList: true, characterData: true});
}"""
)


@pytest.fixture(scope="module")
def server(models_dir: Path, tmp_path_factory) -> str:
    user_data = tmp_path_factory.mktemp("user_data")
    with running_server("--models-dir", str(models_dir), "--user-data", str(user_data)) as (url, _proc):
        yield url


@pytest.fixture
def page(browser, server: str):
    """A fresh tab on the UI; any request that would leave this machine is blocked and remembered."""
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    outside: list[str] = []

    def only_local(route):
        if urlparse(route.request.url).hostname in LOCAL_HOSTS or route.request.url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    context.route("**/*", only_local)
    page = context.new_page()
    page.requests_outside = outside
    open_page(page, server)
    page.click("#new-chat")  # the page reopens the newest saved conversation; each test starts its own
    sync_api.expect(page.locator("#chatbot [data-testid='user']")).to_have_count(0)
    yield page
    context.close()


def open_page(page, url: str) -> None:
    page.goto(url)
    page.wait_for_selector("#chat-input textarea", timeout=60_000)
    sync_api.expect(page.locator("#new-chat")).to_be_visible()
    # the page's load event has restored its conversation (it shows the prompt's size last): a click on
    # "New chat" before that would be overtaken by the restore
    sync_api.expect(markdown(page, "#prompt-tokens")).to_contain_text("tokens", timeout=60_000)


def markdown(page, elem_id: str):
    """The text part of a Markdown component (without Gradio's progress timer that shares its box)."""
    return page.locator(f'{elem_id} [data-testid="markdown"]')


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def set_max_tokens(page, n: int) -> None:
    """Type ``n`` into 'Max new tokens' on the Parameters tab, then come back to the Chat tab."""
    page.get_by_role("tab", name="Parameters").click()
    box = page.get_by_label("number input for Max new tokens")
    slider = page.get_by_label("range slider for Max new tokens")
    for _ in range(10):  # a freshly shown tab may mount its inputs after the first keystrokes land
        box.fill(str(n))
        box.press("Tab")
        try:
            sync_api.expect(slider).to_have_value(str(n), timeout=1_000)
            break
        except AssertionError:
            continue
    sync_api.expect(slider).to_have_value(str(n))
    page.get_by_role("tab", name="Chat").click()
    page.wait_for_selector("#chat-input textarea")


def fill_steady(box, text: str) -> None:
    """Fill ``box`` and make sure the text stayed: a box on a tab just shown may still be mounting, and the
    mount sets its value again right after the first keystrokes land (a race only a robot's speed can hit)."""
    for _ in range(10):
        box.fill(text)
        box.page.wait_for_timeout(250)
        if box.input_value() == text:
            return
    sync_api.expect(box).to_have_value(text)


def send(page, text: str, enter: bool = True) -> None:
    page.fill("#chat-input textarea", text)
    if enter:
        page.press("#chat-input textarea", "Enter")
    else:
        page.click("#send")


def wait_for_reply_text(page, timeout_s: float = 60) -> None:
    """Wait until the assistant's reply shows some text (more than the '…' placeholder)."""
    page.wait_for_function(
        f"(() => {{ const r = ({LAST_REPLY_JS})(); return r !== null && r.text.length > 3; }})()",
        timeout=timeout_s * 1000,
    )


def wait_for_stats(page, count: int = 1, timeout_s: float = 120) -> str:
    """Wait until ``count`` replies carry their stats line; return the newest one."""
    stats = page.locator("#chatbot .inglenook-stats")
    sync_api.expect(stats).to_have_count(count, timeout=timeout_s * 1000)
    return stats.nth(count - 1).inner_text()


def user_messages(page) -> list[str]:
    return [m.strip() for m in page.locator('#chatbot [data-testid="user"]').all_inner_texts()]


def open_model_tab(page) -> None:
    """The model controls (picker, Load, settings, licence note) live on the Model tab."""
    page.get_by_role("tab", name="Model").click()
    page.wait_for_selector("#load-model")


def test_a_message_sent_with_enter_streams_a_reply_then_its_stats(page):
    header = markdown(page, "#model-header").inner_text()
    assert "gemma-3-270m" in header and "llama.cpp" in header and "context 4096" in header
    open_model_tab(page)
    assert "small base model" in markdown(page, "#default-note").inner_text()
    page.get_by_role("tab", name="Chat").click()
    shot(page, "1-start")

    set_max_tokens(page, 64)
    page.evaluate(WATCH_REPLY_JS)
    send(page, "Once upon a time")
    wait_for_reply_text(page)
    shot(page, "1-streaming")
    stats = wait_for_stats(page)
    shot(page, "1-reply")

    assert user_messages(page) == ["Once upon a time"]
    assert page.locator("#chat-input textarea").input_value() == "", "the box is emptied once the message is sent"
    while_streaming = [r["text"] for r in page.evaluate("window.__replies") if r["stats"] is None]
    growing = [t for i, t in enumerate(while_streaming) if t not in ("", "…") and t not in while_streaming[:i]]
    assert len(growing) >= 2, f"the reply should appear bit by bit before its stats line, saw {growing}"
    assert len(growing[-1]) > len(growing[0])
    final = page.evaluate(LAST_REPLY_JS)
    assert final["text"] and final["stats"] == stats
    for part in ("time to first token", "tokens", "tok/s"):
        assert part in stats
    assert 0 < int(TOKENS.search(stats).group(1)) <= 64
    assert markdown(page, "#chat-error").inner_text().strip() == ""
    assert page.requests_outside == [], "the page loads nothing from outside this machine"


def test_stop_ends_a_long_reply_early_and_the_chat_goes_on(page):
    sync_api.expect(page.locator("#stop")).to_be_disabled()  # nothing to stop yet
    set_max_tokens(page, 2000)
    send(page, "Write a long essay about the sea.", enter=False)
    wait_for_reply_text(page)
    sync_api.expect(page.locator("#send")).to_be_disabled()  # while a reply streams, only Stop can act
    page.click("#stop")
    stats = wait_for_stats(page, timeout_s=15)  # 2000 tokens would take minutes: the stop must end it
    shot(page, "2-stopped")
    assert "stopped" in stats
    sync_api.expect(page.locator("#stop")).to_be_disabled()
    sync_api.expect(page.locator("#send")).to_be_enabled()
    assert int(TOKENS.search(stats).group(1)) < 200, f"far fewer than the 2000 allowed: {stats}"
    assert markdown(page, "#chat-error").inner_text().strip() == ""

    set_max_tokens(page, 16)
    send(page, "Tell me about the moon.")
    stats = wait_for_stats(page, count=2)
    shot(page, "2-after-stop")
    assert "stopped" not in stats
    assert user_messages(page) == ["Write a long essay about the sea.", "Tell me about the moon."]
    assert page.evaluate(LAST_REPLY_JS)["text"]


def load_model_named(page, name: str) -> str:
    """Type ``name`` into the model picker, press Load, and return the one-line status it shows."""
    open_model_tab(page)
    picker = page.locator("#model-choice input")
    picker.fill(name)
    page.click("#load-model")
    status = markdown(page, "#model-status")
    sync_api.expect(status).not_to_have_text(re.compile(r"^\s*$"), timeout=60_000)
    return status.inner_text().strip()


def test_loading_a_model_that_does_not_exist_shows_an_error_and_keeps_the_current_one(page):
    header_before = markdown(page, "#model-header").inner_text()
    status = load_model_named(page, "no-such-model")
    shot(page, "3-load-error")
    assert status.startswith("⚠️")
    assert "no-such-model" in status and "not found" in status
    assert "\n" not in status, "the error fits on one line"
    assert markdown(page, "#model-header").inner_text() == header_before
    assert "gemma-3-270m" in header_before
    assert page.locator("#default-note").is_visible()

    set_max_tokens(page, 12)
    send(page, "Hello")
    stats = wait_for_stats(page)
    assert "tokens" in stats and page.evaluate(LAST_REPLY_JS)["text"]
    shot(page, "3-chat-after-error")


def test_after_a_failed_load_the_picker_shows_the_model_still_loaded(page, gemma_path: Path):
    """The picker must not keep naming a model that was never loaded."""
    load_model_named(page, "no-such-model")
    sync_api.expect(page.locator("#model-choice input")).to_have_value("gemma-3-270m", timeout=10_000)


def test_the_chat_clear_button_starts_a_fresh_conversation(page):
    """The bin icon on the chat empties it for good: the old turns neither come back nor reach the model."""
    set_max_tokens(page, 8)
    send(page, "My name is Ada.")
    wait_for_stats(page)
    page.locator("#chatbot button[aria-label='Clear']").click()
    sync_api.expect(page.locator('#chatbot [data-testid="user"]')).to_have_count(0)

    send(page, "What is my name?")
    sync_api.expect(page.locator('#chatbot [data-testid="user"]').last).to_have_text("What is my name?")
    wait_for_stats(page)
    shot(page, "5-after-clear")
    assert user_messages(page) == ["What is my name?"]


def test_a_second_message_while_a_reply_streams_waits_in_the_box_and_nothing_is_lost(page):
    set_max_tokens(page, 300)
    send(page, "Count to one hundred.")
    wait_for_reply_text(page)
    send(page, "And now something else.")  # Enter while the first reply still streams: not sent
    page.wait_for_timeout(500)
    page.click("#stop")
    wait_for_stats(page, timeout_s=15)
    assert user_messages(page) == ["Count to one hundred."]
    assert page.locator("#chat-input textarea").input_value() == "And now something else."  # kept to send later


def test_a_message_that_cannot_be_answered_goes_back_into_the_box_with_the_reason(page):
    """A message longer than the model's context gets no reply: it is not lost, it waits in the box."""
    huge = " ".join(["tea"] * 6000)  # ~6,000 tokens; the server's context holds 4,096
    page.evaluate(
        "t => { const a = document.querySelector('#chat-input textarea'); a.value = t;"
        " a.dispatchEvent(new Event('input', {bubbles: true})); }",
        huge,
    )
    page.press("#chat-input textarea", "Enter")
    sync_api.expect(markdown(page, "#chat-error")).to_contain_text("context holds", timeout=60_000)
    sync_api.expect(page.locator("#chat-input textarea")).to_have_value(huge)
    assert user_messages(page) == []  # nothing half-sent stays in the chat


def test_an_api_client_sending_twice_in_one_session_gets_a_clear_refusal(server):
    """The page blocks a second send while streaming; a script using the same session is told why."""
    from gradio_client import Client

    client = Client(server, verbose=False)
    args = ("", "", "", "instruct", None)  # conversation id, system, start reply with, mode, character
    knobs = {"max_new_tokens": 300, "temperature": 0}
    first = client.submit("Count to one hundred.", *args, api_name="/chat", **knobs)
    deadline = time.monotonic() + 60
    while len(first.outputs()) < 2 and time.monotonic() < deadline:  # until the first reply streams
        time.sleep(0.05)
    second = client.submit("Something else.", *args, api_name="/chat", **knobs).result(timeout=60)
    assert "still streaming" in second[3]
    client.predict(api_name="/stop")
    final = first.result(timeout=60)
    assert "stopped" in str(final[2])


def test_a_refreshed_page_shows_its_conversation_again(page, server):
    set_max_tokens(page, 8)
    send(page, "Remember the word lighthouse.")
    wait_for_stats(page)
    page.reload()
    page.wait_for_selector("#chat-input textarea", timeout=60_000)
    sync_api.expect(page.locator("#chatbot [data-testid='user']").first).to_have_text("Remember the word lighthouse.")
    assert page.locator("#chatbot .inglenook-stats").count() == 1  # the reply and its stats line came back
    title = page.locator("#rename-title textarea, #rename-title input").first  # the sidebar's title box
    sync_api.expect(title).to_have_value(re.compile(r"^Remember the word"))  # titled after its first message


def test_regenerate_keeps_the_old_reply_and_the_arrows_page_between_versions(page):
    set_max_tokens(page, 12)
    send(page, "Name a fruit.")
    wait_for_stats(page)
    first = page.evaluate(LAST_REPLY_JS)["text"]
    label = markdown(page, "#version-label")
    assert label.inner_text().strip() == "", "one version: no pager label"

    page.click("#regenerate")
    sync_api.expect(label).to_have_text("2/2", timeout=120_000)
    second = page.evaluate(LAST_REPLY_JS)["text"]
    shot(page, "6-regenerated")
    assert user_messages(page) == ["Name a fruit."], "a new version of the reply, not a new exchange"
    assert page.locator("#chatbot .inglenook-stats").count() == 1

    page.click("#version-prev")
    sync_api.expect(label).to_have_text("1/2")
    assert page.evaluate(LAST_REPLY_JS)["text"] == first
    page.click("#version-next")
    sync_api.expect(label).to_have_text("2/2")
    assert page.evaluate(LAST_REPLY_JS)["text"] == second

    page.click("#version-prev")
    sync_api.expect(label).to_have_text("1/2")
    page.reload()  # the choice of version was saved
    page.wait_for_selector("#chat-input textarea", timeout=60_000)
    sync_api.expect(markdown(page, "#version-label")).to_have_text("1/2")
    assert page.evaluate(LAST_REPLY_JS)["text"] == first
    assert re.search(r"prompt [\d,]+ / [\d,]+ tokens", markdown(page, "#prompt-tokens").inner_text())


def test_the_notebook_continues_its_text_stops_and_keeps_it(page):
    set_max_tokens(page, 2000)  # the notebook generates with the chat tab's sampling settings
    page.get_by_role("tab", name="Notebook").click()
    box = page.locator("#notebook-text textarea")
    fill_steady(box, "Once upon a time, in a village by the sea,")
    sync_api.expect(page.locator("#notebook-stop")).to_be_disabled()
    page.click("#notebook-generate")
    page.wait_for_function("() => document.querySelector('#notebook-text textarea').value.length > 80", timeout=60_000)
    sync_api.expect(page.locator("#notebook-generate")).to_be_disabled()
    where = page.locator("#notebook-stop").bounding_box()
    page.wait_for_timeout(500)
    assert page.locator("#notebook-stop").bounding_box() == where, "Stop must stay put while the text streams"
    page.click("#notebook-stop")
    stats = markdown(page, "#notebook-stats")
    sync_api.expect(stats).to_contain_text("stopped", timeout=15_000)
    shot(page, "7-notebook")
    text = box.input_value()
    assert text.startswith("Once upon a time, in a village by the sea,") and len(text) > 80
    assert int(TOKENS.search(stats.inner_text()).group(1)) < 500, "the stop ended it long before 2000 tokens"
    assert re.fullmatch(r"[\d,]+ / [\d,]+ tokens", markdown(page, "#notebook-tokens").inner_text().strip())
    sync_api.expect(page.locator("#notebook-generate")).to_be_enabled()

    page.reload()  # the notebook's text was saved
    page.wait_for_selector("#chat-input textarea", timeout=60_000)
    page.get_by_role("tab", name="Notebook").click()
    sync_api.expect(page.locator("#notebook-text textarea")).to_have_value(text, timeout=30_000)


def test_a_conversation_is_renamed_exported_and_imported_and_a_bad_import_changes_nothing(page, tmp_path):
    set_max_tokens(page, 8)
    send(page, "Remember the colour teal.")
    wait_for_stats(page)
    page.fill("#rename-title input, #rename-title textarea", "Teal chat")  # in the sidebar
    page.click("#rename-chat")
    sync_api.expect(page.locator("#conversations-today")).to_contain_text("Teal chat · 2 messages")
    page.get_by_role("button", name=re.compile(r"^Conversation")).click()

    page.click("#export-chat")
    link = page.locator("#export-file a").first
    sync_api.expect(link).to_be_visible(timeout=30_000)
    with page.expect_download() as download:
        link.click()
    exported = tmp_path / "exported.json"
    download.value.save_as(exported)
    data = json.loads(exported.read_text())
    assert data["title"] == "Teal chat" and data["messages"][0]["content"] == "Remember the colour teal."

    bad = tmp_path / "bad.json"
    bad.write_text("this is not JSON")
    with page.expect_file_chooser() as chooser:
        page.click("#import-chat")
    chooser.value.set_files(str(bad))
    sync_api.expect(markdown(page, "#chat-error")).to_contain_text("Import failed, nothing was saved", timeout=30_000)
    assert "not valid JSON" in markdown(page, "#chat-error").inner_text()
    assert user_messages(page) == ["Remember the colour teal."], "the chat on screen stays"
    shot(page, "8-bad-import")

    with page.expect_file_chooser() as chooser:
        page.click("#import-chat")
    chooser.value.set_files(str(exported))
    sync_api.expect(markdown(page, "#chat-error")).to_contain_text("Imported", timeout=30_000)
    assert user_messages(page) == ["Remember the colour teal."]
    sync_api.expect(page.locator("#rename-title input, #rename-title textarea").first).to_have_value("Teal chat")


def test_editing_an_earlier_message_in_the_chat_replies_again_from_there(page):
    set_max_tokens(page, 8)
    send(page, "My cat is called Tom.")
    wait_for_stats(page)
    send(page, "What is my cat called?")
    wait_for_stats(page, count=2)

    page.locator('#chatbot [data-testid="user"]').first.hover()
    page.locator("#chatbot button[aria-label='Edit']").first.click()
    box = page.locator("#chatbot textarea.edit-textarea").first
    box.fill("My cat is called Max.")
    page.locator("#chatbot button[aria-label='Submit']").first.click()
    sync_api.expect(page.locator('#chatbot [data-testid="user"]')).to_have_count(1, timeout=30_000)
    wait_for_stats(page, count=1)
    shot(page, "9-edited")
    assert user_messages(page) == ["My cat is called Max."], "what followed the edited message is gone"
    assert page.evaluate(LAST_REPLY_JS)["text"], "and it has a new reply"


def choose_template(page, name: str) -> None:
    if not page.locator("#template-choice input").is_visible():
        page.get_by_role("button", name=re.compile(r"^Prompt template")).click()
    page.locator("#template-choice input").click()
    page.get_by_role("option", name=name, exact=True).click()


def test_the_template_choice_is_shown_can_be_changed_and_show_prompt_prints_the_exact_text(page):
    page.get_by_role("button", name=re.compile(r"^Prompt template")).click()
    source = markdown(page, "#template-source")
    sync_api.expect(source).to_contain_text("gemma")
    assert "known for architecture gemma3" in source.inner_text()
    page.get_by_role("button", name=re.compile(r"^Show prompt")).click()
    page.fill("#chat-input textarea", "Hi there")
    page.click("#show-prompt")
    preview = page.locator("#prompt-preview textarea")
    sync_api.expect(preview).to_have_value("<start_of_turn>user\nHi there<end_of_turn>\n<start_of_turn>model\n")
    assert re.fullmatch(r"prompt \d+ / 4,096 tokens", markdown(page, "#prompt-tokens").inner_text().strip())

    try:
        choose_template(page, "chatml")
        sync_api.expect(source).to_contain_text("user choice")
        page.click("#show-prompt")
        sync_api.expect(preview).to_have_value(re.compile(r"<\|im_start\|>user\nHi there<\|im_end\|>"))
        shot(page, "10-template")
        page.reload()  # remembered for the model
        page.wait_for_selector("#chat-input textarea", timeout=60_000)
        page.get_by_role("button", name=re.compile(r"^Prompt template")).click()
        sync_api.expect(page.locator("#template-choice input")).to_have_value("chatml")
    finally:
        choose_template(page, "auto")  # the server is shared by this module's tests
        sync_api.expect(markdown(page, "#template-source")).to_contain_text("known for architecture")


def test_a_preset_chosen_on_the_parameters_tab_drives_the_chat(page):
    """Pick Deterministic: its values fill the form, the chat replies greedily (twice the same), Neutralize resets."""
    page.get_by_role("tab", name="Parameters").click()
    choice = page.locator("#preset-choice input")
    sync_api.expect(choice).to_have_value("Balanced")
    choice.click()
    page.get_by_role("option", name="Deterministic").click()
    sync_api.expect(markdown(page, "#preset-status")).to_contain_text("Loaded preset Deterministic")
    sync_api.expect(page.get_by_label("number input for Temperature")).to_have_value("0")
    sync_api.expect(page.get_by_label("number input for top_k")).to_have_value("0")  # Balanced's 40 is gone
    shot(page, "6-preset")
    set_max_tokens(page, 12)
    send(page, "The capital of France is")
    wait_for_stats(page)
    first = page.evaluate(LAST_REPLY_JS)["text"]
    page.click("#new-chat")
    sync_api.expect(page.locator("#chatbot [data-testid='user']")).to_have_count(0)
    send(page, "The capital of France is")
    wait_for_stats(page)
    assert page.evaluate(LAST_REPLY_JS)["text"] == first, "greedy decoding gives the same reply"
    assert markdown(page, "#chat-error").inner_text().strip() == ""

    page.get_by_role("tab", name="Parameters").click()
    page.click("#preset-neutralize")
    sync_api.expect(page.get_by_label("number input for Temperature")).to_have_value("1")
    sync_api.expect(page.get_by_label("number input for Max new tokens")).to_have_value("12")  # not a sampler


def test_filter_by_loader_hides_what_llama_cpp_ignores_and_a_set_one_is_reported(page):
    page.get_by_role("tab", name="Parameters").click()
    page.get_by_text("More samplers").click()
    tfs = page.locator("#param-tfs")
    sync_api.expect(tfs).to_contain_text("ignored by llama.cpp")
    page.get_by_label("number input for tfs (ignored by llama.cpp)").fill("0.5")
    page.get_by_label("number input for tfs (ignored by llama.cpp)").press("Tab")
    page.locator("#filter-by-loader input").check()
    sync_api.expect(tfs).to_be_hidden()
    sync_api.expect(page.locator("#param-typical_p")).to_be_visible()  # llama.cpp honours typical_p
    shot(page, "7-filtered")
    set_max_tokens(page, 6)
    send(page, "Hello")
    wait_for_stats(page)
    sync_api.expect(markdown(page, "#chat-error")).to_contain_text("llama.cpp ignored: tfs")


def test_a_preset_saved_as_a_new_name_appears_and_loads_back(page):
    page.get_by_role("tab", name="Parameters").click()
    page.get_by_label("number input for Temperature").fill("0.42")
    page.get_by_label("number input for Temperature").press("Tab")
    page.fill("#preset-new-name textarea, #preset-new-name input", "My browser preset")
    page.click("#preset-save-as")
    sync_api.expect(markdown(page, "#preset-status")).to_contain_text("Saved preset My browser preset")
    sync_api.expect(page.locator("#preset-choice input")).to_have_value("My browser preset")
    for name, temperature in (("Precise", "0.3"), ("My browser preset", "0.42")):
        page.locator("#preset-choice input").click()
        page.get_by_role("option", name=name).click()
        sync_api.expect(page.get_by_label("number input for Temperature")).to_have_value(temperature)
    page.fill("#preset-new-name textarea, #preset-new-name input", "../escape")
    page.click("#preset-save-as")
    sync_api.expect(markdown(page, "#preset-status")).to_contain_text("may not contain path separators")
    sync_api.expect(page.locator("#preset-choice input")).to_have_value("My browser preset")


def test_pick_a_quantization_and_a_loader_change_the_context_load_and_chat(browser, models_dir, gemma_path, tmp_path):
    """The Model row end to end: two quantization files of one model, a loader (llama.cpp or transformers for a
    GGUF, each with its own settings), a context length, Load, a reply."""
    import os

    folder = tmp_path / "models"
    folder.mkdir()
    for name in ("gemma-3-270m.Q4_K_M.gguf", "gemma-3-270m-Q8_0.gguf"):
        os.link(gemma_path, folder / name)
    args = (
        "--models-dir",
        str(folder),
        "--user-data",
        str(tmp_path / "user_data"),
        "--model",
        "gemma-3-270m-Q8_0.gguf",
    )
    page = browser.new_context(viewport={"width": 1280, "height": 1200}).new_page()
    with running_server(*args) as (url, _proc):
        open_page(page, url)
        open_model_tab(page)
        sync_api.expect(page.locator("#model-choice input")).to_have_value("gemma-3-270m")
        page.locator("#variant-choice input").click()
        page.get_by_role("option", name="Q4_K_M (gguf) — gemma-3-270m.Q4_K_M.gguf").click()
        page.locator("#loader-choice input").click()
        page.get_by_role("option", name="transformers").click()  # it reads GGUF too: its own settings show
        page.get_by_text("Load settings").click()
        sync_api.expect(page.locator("#setting-dtype")).to_be_visible(timeout=30_000)
        sync_api.expect(page.locator("#setting-trust_remote_code")).to_be_visible()
        sync_api.expect(page.locator("#setting-use_mmap")).to_be_hidden()
        page.locator("#loader-choice input").click()
        page.get_by_role("option", name="llama.cpp").click()
        sync_api.expect(page.locator("#setting-use_mmap")).to_be_visible(timeout=30_000)
        sync_api.expect(page.locator("#setting-dtype")).to_be_hidden()
        ctx = page.locator("#setting-n_ctx input")
        ctx.fill("1024")
        ctx.press("Tab")
        page.get_by_text("Model info").click()
        sync_api.expect(markdown(page, "#model-info")).to_contain_text("memory at 1024 tokens", timeout=30_000)
        page.click("#load-model")
        status = markdown(page, "#model-status")
        sync_api.expect(status).to_contain_text("Loaded gemma-3-270m.Q4_K_M", timeout=60_000)
        assert "context 1024" in status.inner_text()
        assert "context 1024" in markdown(page, "#model-header").inner_text()
        shot(page, "6-model-tab")
        page.get_by_role("tab", name="Chat").click()
        page.click("#new-chat")
        set_max_tokens(page, 12)
        page.evaluate(WATCH_REPLY_JS)
        send(page, "Once upon a time")
        stats = wait_for_stats(page)
        assert "tokens" in stats and page.evaluate(LAST_REPLY_JS)["text"]
        growing = {r["text"] for r in page.evaluate("window.__replies") if r["stats"] is None} - {"", "…"}
        assert growing, "the reply streamed in before its stats line"
    page.context.close()


def set_context(page, n: int) -> None:
    """Type ``n`` into the Model tab's context length (Load settings) and leave the box."""
    open_model_tab(page)
    if not page.locator("#setting-n_ctx input").is_visible():
        page.get_by_text("Load settings").click()
    fill_steady(page.locator("#setting-n_ctx input"), str(n))
    page.locator("#setting-n_ctx input").press("Tab")


def press_and_wait(page, button: str, text: str) -> str:
    """Click ``button`` on the Model tab and wait for the status line to say ``text``; return the status."""
    status = markdown(page, "#model-status")
    page.click(button)
    sync_api.expect(status).to_contain_text(text, timeout=120_000)
    return status.inner_text()


def restore_context(page) -> None:
    """The module's server is shared: put the model back as it started (context 4096)."""
    set_context(page, 4096)
    press_and_wait(page, "#load-model", "context 4096")


def test_load_after_unload_uses_the_settings_form(page):
    """Bug 3: Unload cleared the model picker, so Load loaded the default with the start-up settings."""
    try:
        set_context(page, 1024)
        press_and_wait(page, "#unload-model", "Unloaded")
        sync_api.expect(markdown(page, "#model-header")).to_contain_text("No model loaded")
        sync_api.expect(page.locator("#model-choice input")).to_have_value("gemma-3-270m")  # still chosen
        status = press_and_wait(page, "#load-model", "Loaded")
        assert "context 1024" in status, status
        sync_api.expect(markdown(page, "#model-header")).to_contain_text("context 1024")
        shot(page, "11-load-after-unload")
    finally:
        restore_context(page)


def test_a_new_tab_shows_the_model_and_settings_running_now(page, browser, server):
    """Bug 4: a new tab showed the header and form of server start (context 4096, a model long unloaded),
    and its Load put the model back to those start-up settings."""
    try:
        set_context(page, 2048)
        press_and_wait(page, "#load-model", "context 2048")
        other = browser.new_context(viewport={"width": 1280, "height": 1000}).new_page()
        open_page(other, server)
        sync_api.expect(markdown(other, "#model-header")).to_contain_text("context 2048")
        open_model_tab(other)
        other.get_by_text("Load settings").click()
        sync_api.expect(other.locator("#setting-n_ctx input")).to_have_value("2048")
        assert "context 2048" in press_and_wait(other, "#load-model", "Loaded")  # not back to 4096

        press_and_wait(page, "#unload-model", "Unloaded")
        third = browser.new_context(viewport={"width": 1280, "height": 1000}).new_page()
        third.goto(server)
        third.wait_for_selector("#chat-input textarea", timeout=60_000)
        sync_api.expect(markdown(third, "#model-header")).to_contain_text("No model loaded")
        shot(third, "12-new-tab-no-model")
        other.context.close()
        third.context.close()
    finally:
        restore_context(page)


@pytest.mark.parametrize("size", [(1440, 900), (390, 844)])
def test_the_chat_input_is_on_the_first_screen_and_focused(browser, server, size):
    """Chat first: without scrolling, the message box lies inside the window at desktop and phone sizes."""
    width, height = size
    page = browser.new_context(viewport={"width": width, "height": height}).new_page()
    page.goto(server, wait_until="load")
    box = page.locator("#chat-input textarea")
    box.wait_for(timeout=60_000)
    sync_api.expect(markdown(page, "#prompt-tokens")).to_contain_text("tokens", timeout=60_000)  # restored
    sync_api.expect(box).to_be_focused(timeout=30_000)
    assert page.evaluate("window.scrollY") == 0
    where = box.bounding_box()
    assert where is not None and where["width"] > 100
    assert 0 <= where["x"] and where["x"] + where["width"] <= width, where
    assert 0 <= where["y"] and where["y"] + where["height"] <= height, where
    chat = page.locator("#chatbot").bounding_box()
    assert chat["y"] >= 0 and chat["height"] >= 200, "the chat itself is on the first screen too"
    assert page.get_by_role("textbox", name="Message").count() == 1  # named for screen readers
    assert page.get_by_role("button", name="Previous version").count() == 1
    shot(page, f"13-first-screen-{width}x{height}")
    page.context.close()


def test_the_sidebar_lists_conversations_by_day_and_opens_one(page):
    set_max_tokens(page, 6)
    send(page, "Remember the word kettle.")
    wait_for_stats(page)
    today = page.locator("#conversations-today")
    sync_api.expect(today).to_contain_text("Remember the word kettle. · 2 messages")
    page.click("#new-chat")
    sync_api.expect(page.locator("#chatbot [data-testid='user']")).to_have_count(0)
    sync_api.expect(today.get_by_role("radio", checked=True)).to_have_count(0)  # the new chat is not listed yet
    search = page.locator("#conversation-search textarea, #conversation-search input").first
    search.fill("kettle")
    sync_api.expect(today.get_by_role("radio")).to_have_count(1)
    today.get_by_text("Remember the word kettle.", exact=False).click()
    sync_api.expect(page.locator("#chatbot [data-testid='user']").first).to_have_text("Remember the word kettle.")
    search.fill("no such title anywhere")
    sync_api.expect(today).to_be_hidden()


# Last in this module: run before the notebook test, the notebook's box came up empty after its fill
# (seen 2026-11-30; not understood yet, see the closing note).
def test_a_server_restart_with_the_page_open_loses_nothing(browser, models_dir, tmp_path):
    """Stop the server under an open page, start it again: the next message continues the same chat."""
    from conftest import free_port

    port, user_data = free_port(), tmp_path / "user_data"
    args = ("--models-dir", str(models_dir), "--user-data", str(user_data))
    page = browser.new_context(viewport={"width": 1280, "height": 1000}).new_page()
    with running_server(*args, port=port) as (url, _proc):
        open_page(page, url)
        set_max_tokens(page, 8)
        send(page, "First message.")
        wait_for_stats(page)
    with running_server(*args, port=port):  # the page stayed open while the server was down
        send(page, "Second message.")
        wait_for_stats(page, count=2)
        assert user_messages(page) == ["First message.", "Second message."]
        page.reload()
        page.wait_for_selector("#chat-input textarea", timeout=60_000)
        sync_api.expect(page.locator("#chatbot [data-testid='user']")).to_have_count(2)
    [chat_file] = (user_data / "chats" / "instruct").glob("*.json")
    saved = [m["content"] for m in json.loads(chat_file.read_text())["messages"] if m["role"] == "user"]
    assert saved == ["First message.", "Second message."]
    page.context.close()
