"""The Extensions tab in a real browser: enable a bundled extension, restart from the page, and use its tab."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import running_server
from test_browser import CHROMIUM, CHROMIUM_ARGS, set_max_tokens, shot

sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is not installed", allow_module_level=True)

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_enable_an_extension_restart_and_see_its_tab(models_dir: Path, tmp_path):
    user_data = tmp_path / "user_data"
    with running_server("--models-dir", str(models_dir), "--user-data", str(user_data)) as (url, proc):
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(url)
            page.get_by_role("tab", name="Extensions").click()
            table = page.locator("#extensions-table")
            sync_api.expect(table).to_contain_text("generation_stats")
            sync_api.expect(page.get_by_role("tab", name="Generation Stats")).to_have_count(0)

            page.locator("#extension-choice input").click()
            page.get_by_role("option", name="generation_stats").click()
            page.click("#extension-enable")
            message = page.locator("#extension-message")
            sync_api.expect(message).to_contain_text("restart to apply its interface", timeout=30_000)
            kept = page.get_by_label("number input for Replies kept")  # its settings are rendered, and saved
            kept.fill("50")
            kept.press("Tab")
            page.click("#extension-save-settings")
            sync_api.expect(message).to_contain_text("Saved the settings of generation_stats")
            assert json.loads((user_data / "extensions.json").read_text())["settings"]["generation_stats"] == {
                "keep": 50
            }
            shot(page, "extensions-enabled")
            page.click("#extension-restart")
            sync_api.expect(message).to_contain_text("Restarting")

            stats_tab = page.get_by_role("tab", name="Generation Stats")
            # the same process re-executes itself; the page reconnects by itself (nobody reloads it here)
            stats_tab.wait_for(timeout=180_000)
            assert proc.poll() is None, proc.output()
            # a reply in the chat is recorded and shows up in the extension's own tab
            set_max_tokens(page, 8)
            page.fill("#chat-input textarea", "Say hi.")
            page.press("#chat-input textarea", "Enter")
            sync_api.expect(page.locator("#chatbot .inglenook-stats")).to_have_count(1, timeout=120_000)
            stats_tab.click()
            page.click("#generation-stats-refresh")
            sync_api.expect(page.locator("#generation-stats-summary")).to_contain_text("1 replies", timeout=30_000)
            shot(page, "extensions-stats-tab")
            browser.close()
