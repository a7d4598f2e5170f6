"""Tool calls in the page (issue 15), on a scripted fake model: turn tools on for the conversation, the model
calls the bundled calculator, the page asks before it runs, Approve runs it, and the call, its result and the
final reply show as cards and a message (and are saved)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from conftest import running_server, write_fake
from test_browser import CHROMIUM_ARGS, markdown, open_page, send
from test_chat_tools import ANSWER, CALL

sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    models, user_data = tmp_path_factory.mktemp("models"), tmp_path_factory.mktemp("user_data")
    write_fake(models, "tools", reply=CALL, when=[["Result of calculator: 4", ANSWER]])
    (user_data / "extensions.json").write_text(json.dumps({"enabled": {"calculator": True}}))
    args = ("--models-dir", str(models), "--user-data", str(user_data), "--model", "tools.fake")
    with running_server(*args) as (url, _proc):
        yield url, user_data


def saved_with_tools(user_data: Path, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        files = list((user_data / "chats" / "instruct").glob("*.json"))
        if any(json.loads(f.read_text()).get("settings", {}).get("tools") for f in files):
            return
        time.sleep(0.1)
    raise AssertionError("turning tools on saved no conversation with tools")


def check_steady(box) -> None:
    """Tick ``box`` and make sure it stayed ticked: the New chat just clicked redraws the Tools box from the
    new conversation (unticked) when its answer lands, which under load can be after the click."""
    for _ in range(10):
        if not box.is_checked():
            box.click()  # not check(): that fails at once if the redraw unticks it under the click
        box.page.wait_for_timeout(300)
        if box.is_checked():
            return
    sync_api.expect(box).to_be_checked()


def test_approve_a_tool_call_in_the_page_and_see_its_result_and_the_reply(served):
    url, user_data = served
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        open_page(page, url)
        page.click("#new-chat")
        check_steady(page.locator("#chat-tools input"))
        saved_with_tools(user_data)  # the choice is saved with the (new) conversation before anything is sent
        sync_api.expect(markdown(page, "#chat-error")).to_have_text("")  # the calculator is enabled: no hint
        send(page, "What is 2+2?")
        approval = page.locator("#tool-approve")
        sync_api.expect(approval).to_be_visible(timeout=60_000)
        sync_api.expect(markdown(page, "#tool-approval-text")).to_have_text('Run calculator({"expression": "2+2"})?')
        sync_api.expect(page.locator("#chatbot")).to_contain_text("calculator — waiting for your approval")
        page.click("#tool-approve")
        sync_api.expect(page.locator("#chatbot")).to_contain_text(ANSWER, timeout=60_000)
        sync_api.expect(page.locator("#chatbot")).to_contain_text("Result of calculator")
        sync_api.expect(approval).to_be_hidden()
        sync_api.expect(page.locator("#chatbot .inglenook-stats")).to_have_count(1)  # under the reply, not the cards
        browser.close()
    (saved,) = [json.loads(f.read_text()) for f in (user_data / "chats" / "instruct").glob("*.json")]
    assert [m["role"] for m in saved["messages"]] == ["user", "tool_call", "tool", "assistant"]
    assert saved["messages"][2]["content"] == "4" and saved["settings"]["tools"] is True
