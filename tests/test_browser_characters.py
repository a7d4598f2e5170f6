"""Characters in the browser: pick a character and chat with it; import a card in the Characters tab."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest
from conftest import running_server
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from test_browser import CHROMIUM_ARGS, open_page, send, set_max_tokens, shot, wait_for_stats

from webui.characters.cards import read_card_png

sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def served(models_dir: Path, tmp_path_factory):
    user_data = tmp_path_factory.mktemp("user_data")
    with running_server("--models-dir", str(models_dir), "--user-data", str(user_data)) as (url, _proc):
        yield url, user_data


@pytest.fixture
def page(served):
    url, _ = served
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1100})
        open_page(page, url)
        yield page
        browser.close()


def choose(page, elem_id: str, option: str) -> None:
    """Pick ``option`` in a Gradio dropdown the way a user does: open it, click the option."""
    page.click(f"#{elem_id} input")
    page.get_by_role("option", name=option, exact=True).click()


def test_a_user_picks_a_character_sees_its_greeting_and_picture_and_chats_with_it(page, served):
    _, user_data = served
    page.locator("#chat-mode").get_by_text("chat", exact=True).click()
    choose(page, "chat-character", "Wren")
    first_bot = page.locator('#chatbot [data-testid="bot"]').first
    sync_api.expect(first_bot).to_contain_text("Wren looks up from the fire")
    sync_api.expect(first_bot).to_contain_text("Traveller")  # {{user}} filled with Wren's user name
    avatar = page.locator("#chatbot img.avatar-image, #chatbot .avatar-container img").first
    sync_api.expect(avatar).to_be_visible(timeout=10_000)
    loaded = "(img) => img.complete && img.naturalWidth > 0"
    page.wait_for_function(loaded, arg=avatar.element_handle(), timeout=15_000)  # the picture really loaded
    assert page.request.get(avatar.get_attribute("src")).status == 200
    set_max_tokens(page, 12)
    send(page, "Is the causeway safe tonight?")
    wait_for_stats(page, 1)
    shot(page, "character-chat")
    chats = list((user_data / "chats" / "character-Wren").glob("*.json"))
    saved = [json.loads(p.read_text()) for p in chats]
    assert any(len(c["messages"]) == 3 and c["mode"] == "chat" for c in saved)  # greeting, question, reply
    assert not (user_data / "chats" / "instruct").exists() or not any(
        "causeway" in p.read_text() for p in (user_data / "chats" / "instruct").glob("*.json")
    )


def test_a_card_imported_in_the_characters_tab_becomes_a_character_to_chat_with(page, served, tmp_path):
    _, user_data = served
    data = {"name": "Captain Bo", "first_mes": "Ahoy, {{user}}!", "description": "{{char}} sails."}
    card = {"spec": "chara_card_v2", "spec_version": "2.0", "data": data}
    info = PngInfo()
    info.add_text("chara", base64.b64encode(json.dumps(card).encode()).decode())
    path = tmp_path / "bo.png"
    buf = io.BytesIO()
    Image.new("RGB", (90, 120), (10, 60, 120)).save(buf, "PNG", pnginfo=info)
    path.write_bytes(buf.getvalue())

    page.get_by_role("tab", name="Characters").click()
    page.locator("#characters-import input[type=file]").set_input_files(str(path))
    sync_api.expect(page.locator("#characters-status")).to_contain_text("Imported Captain Bo", timeout=30_000)
    sync_api.expect(page.locator("#characters-greeting textarea")).to_have_value("Ahoy, {{user}}!")
    assert (user_data / "characters" / "Captain Bo.yaml").is_file()
    assert (user_data / "characters" / "Captain Bo.png").is_file()
    sync_api.expect(page.locator("#characters-picture img")).to_be_visible()  # the card's image is its picture
    sync_api.expect(page.locator("#characters-import")).to_contain_text("Drop File Here")  # empty again
    shot(page, "characters-tab")

    picture = tmp_path / "new-picture.png"
    Image.new("RGB", (2000, 1000), (200, 150, 20)).save(picture)
    page.locator("#characters-upload input[type=file]").set_input_files(str(picture))
    sync_api.expect(page.locator("#characters-status")).to_contain_text("Picture saved", timeout=30_000)
    sync_api.expect(page.locator("#characters-upload")).to_contain_text("Drop File Here")
    with Image.open(user_data / "characters" / "Captain Bo.png") as stored:
        assert stored.size == (1024, 512) and stored.getpixel((10, 10))[:3] == (200, 150, 20)

    page.click("#characters-export")
    sync_api.expect(page.locator("#characters-status")).to_contain_text("Exported Captain Bo", timeout=30_000)
    link = page.locator("#characters-exported a").first
    sync_api.expect(link).to_be_visible()
    downloaded = page.request.get(link.get_attribute("href")).body()
    assert read_card_png(downloaded).name == "Captain Bo"  # the download is a card that imports back

    page.get_by_role("tab", name="Chat").click()
    page.locator("#chat-mode").get_by_text("chat", exact=True).click()
    choose(page, "chat-character", "Captain Bo")
    sync_api.expect(page.locator('#chatbot [data-testid="bot"]').first).to_contain_text("Ahoy, You!")
