"""Issue 14 in the browser: from nothing to chatting with a model found by search, with progress and licence.

A real server (its own process, ``HF_ENDPOINT`` at the local fake hub of ``tests/fake_hub.py``) driven in
headless Chromium. Screenshots of the panel at 1440×900 and 390×844 land in /tmp/shots/.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import copy_default, running_server
from fake_hub import FakeHub, gguf_repo, serve_hub

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is not installed", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SHOTS = Path("/tmp/shots")
REPO_ID = "acme/gemma-270m-GGUF"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]


@pytest.fixture(scope="module")
def hub(gemma_path: Path):
    h = FakeHub()
    repo = h.add(gguf_repo(REPO_ID, gemma_path, downloads=1234, likes=56))
    repo.delay_per_chunk = 0.01  # ~10 s for the whole file: the progress bar can be seen moving
    with serve_hub(h):
        yield h


@pytest.fixture(scope="module")
def server(hub: FakeHub, models_dir: Path, tmp_path_factory):
    folder = tmp_path_factory.mktemp("hub-models")
    copy_default(models_dir, folder)
    user_data = tmp_path_factory.mktemp("hub-user-data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_ENDPOINT", hub.url)  # the server process inherits it
        mp.delenv("HF_TOKEN", raising=False)
        mp.delenv("HF_HUB_OFFLINE", raising=False)
        with running_server("--models-dir", str(folder), "--user-data", str(user_data), "--n-ctx", "1024") as (url, _):
            yield url, folder


def _shot(page, name: str, width: int, height: int) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.set_viewport_size({"width": width, "height": height})
    page.locator("#download-panel").scroll_into_view_if_needed()
    page.screenshot(path=str(SHOTS / f"{name}-{width}x{height}.png"), full_page=False)
    page.locator("#download-panel").screenshot(path=str(SHOTS / f"{name}-{width}x{height}-panel.png"))


def test_search_download_with_progress_and_licence_then_load_and_chat(server, hub):
    url, folder = server
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.goto(url)
        page.wait_for_selector("#chat-input textarea", timeout=60_000)
        page.get_by_role("tab", name="Model").click()  # the model controls and the hub live on the Model tab
        page.locator("#download-panel button").first.click()  # open the accordion
        page.locator("#hub-query input, #hub-query textarea").first.fill("gemma")
        page.click("#hub-search")
        expect = sync_api.expect
        expect(page.locator("#hub-results")).to_contain_text(REPO_ID, timeout=30_000)
        expect(page.locator("#hub-files")).to_contain_text("Q4_K_M", timeout=30_000)
        expect(page.locator("#hub-files")).to_contain_text("fits in RAM")
        expect(page.locator("#hub-card")).to_contain_text("Licence: gemma")
        expect(page.locator("#hub-status")).to_contain_text(hub.url)
        _shot(page, "hub-1-search", 1440, 900)
        _shot(page, "hub-1-search", 390, 844)
        page.set_viewport_size({"width": 1440, "height": 900})

        page.click("#hub-download")
        progress = page.locator("#hub-progress")
        moving = re.compile(r"running\s*\d+\.\d% · [\d.]+ MB of 241\.4 MB · [\d.]+ MB/s · ETA \d+ s")
        expect(progress).to_contain_text(moving, timeout=30_000)
        _shot(page, "hub-2-progress", 1440, 900)
        _shot(page, "hub-2-progress", 390, 844)
        page.set_viewport_size({"width": 1440, "height": 900})
        expect(progress).to_contain_text("done", timeout=120_000)
        expect(page.locator("#hub-downloads")).to_contain_text("gemma-270m-GGUF-Q4_K_M.gguf — done")
        assert (folder / "gemma-270m-GGUF-Q4_K_M.gguf").is_file()

        # the Model dropdown knows the new model without a restart; load it, see its licence, chat
        page.locator("#model-choice input").click()
        expect(page.locator("ul[role='listbox']")).to_contain_text("gemma-270m-GGUF", timeout=10_000)
        page.get_by_role("option", name="gemma-270m-GGUF", exact=True).click()
        expect(page.locator("#variant-choice input")).to_have_value(re.compile("Q4_K_M"), timeout=30_000)
        page.locator("#model-info-box button").first.click()
        expect(page.locator("#model-info")).to_contain_text(f"Downloaded from {REPO_ID}", timeout=30_000)
        expect(page.locator("#model-info")).to_contain_text("licence: gemma")
        page.click("#load-model")
        expect(page.locator("#model-status")).to_contain_text("Loaded gemma-270m-GGUF-Q4_K_M", timeout=120_000)
        expect(page.locator("#model-header")).to_contain_text("gemma-270m-GGUF-Q4_K_M")
        page.locator("#model-info-box").screenshot(path=str(SHOTS / "hub-3-model-info-1440x900.png"))
        page.get_by_role("tab", name="Chat").click()
        page.locator("#chat-input textarea").fill("Hello")
        page.keyboard.press("Enter")
        expect(page.locator("#chatbot [data-testid='bot']").last).not_to_have_text(re.compile(r"^\s*$"),
                                                                                timeout=120_000)  # fmt: skip
        browser.close()
