"""The Compare tab as a user sees it: a real server on scripted (fake) models, driven in headless Chromium.

Run a comparison of two fake models and see the table and the answers in columns; open a saved result
(with perplexities) and see the charts; export it. Screenshots land in /tmp/shots/compare-*.png.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import copy_default, running_server, write_fake

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is not installed", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")

pytestmark = [pytest.mark.browser, pytest.mark.slow]
SHOTS = Path("/tmp/shots")
SAVED = {
    "version": 1,
    "created": "2026-11-30T08:00:00+00:00",
    "settings": {"prompts": ["What is the capital of France?"]},
    "rows": [
        {"model": "gemma-3-270m-Q8_0", "quantization": "Q8_0", "file_size_mb": 278.0, "peak_rss_mb": 1012.5,
         "load_s": 0.4, "pp_tokens_per_s": 310.0, "tg_tokens_per_s": 38.2, "ttft_ms": 120.0, "ppl": 5.48,
         "ppl_error": 0.43, "answers": ["Paris is the capital of France."]},
        {"model": "gemma-3-270m-Q2_K", "quantization": "Q2_K", "file_size_mb": 226.1, "peak_rss_mb": 995.9,
         "load_s": 0.3, "pp_tokens_per_s": 350.0, "tg_tokens_per_s": 45.0, "ttft_ms": 100.0, "ppl": 35.8,
         "ppl_error": 4.1, "answers": ["The capital is the capital."]},
    ],
}  # fmt: skip


@pytest.fixture(scope="module")
def server(tmp_path_factory, models_dir: Path) -> str:
    models = tmp_path_factory.mktemp("fake-models")
    copy_default(models_dir, models)  # one real GGUF for the quantize and perplexity panels
    write_fake(models, "alpha", reply="Alpha says hello.")
    write_fake(models, "beta", reply="Beta answers differently.")
    user_data = tmp_path_factory.mktemp("user_data")
    (user_data / "compare").mkdir()
    (user_data / "compare" / "seeded-result.json").write_text(json.dumps(SAVED))
    args = ("--models-dir", str(models), "--user-data", str(user_data), "--model", "alpha.fake")
    with running_server(*args) as (url, _proc):
        yield url


@pytest.fixture
def page(server: str):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1300})
        page.goto(server)
        page.get_by_role("tab", name="Compare").click()
        page.wait_for_selector("#compare-run")
        yield page
        browser.close()


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"compare-{name}.png"), full_page=True)


def pick(page, elem_id: str, option: str) -> None:
    page.click(f"{elem_id} input")
    page.locator(elem_id).get_by_role("option", name=option).click()  # this dropdown's list, not another's


def test_compare_two_models_shows_the_table_and_answers(page) -> None:
    pick(page, "#compare-models", "alpha.fake")
    pick(page, "#compare-models", "beta.fake")
    page.click("#compare-ppl input")  # perplexity off: fake models have no logits
    page.fill("#compare-pp input", "32")
    page.fill("#compare-ctx input", "256")
    page.fill("#compare-prompts textarea", "Hello?")
    page.click("#compare-run")
    sync_api.expect(page.locator("#compare-status")).to_contain_text("Saved as", timeout=120_000)
    table = page.locator("#compare-table")
    sync_api.expect(table).to_contain_text("alpha")
    sync_api.expect(table).to_contain_text("beta")
    answers = page.locator("#compare-answers")
    sync_api.expect(answers).to_contain_text("Alpha says hello.")
    sync_api.expect(answers).to_contain_text("Beta answers differently.")
    shot(page, "run")


def test_saved_result_shows_charts_and_exports(page) -> None:
    page.click("#compare-refresh")
    pick(page, "#compare-saved", "seeded-result")
    page.click("#compare-show")
    sync_api.expect(page.locator("#compare-status")).to_contain_text("seeded-result", timeout=30_000)
    sync_api.expect(page.locator("#compare-table")).to_contain_text("35.8")
    sync_api.expect(page.locator("#compare-answers")).to_contain_text("Paris is the capital of France.")
    # the charts drew the data (axis labels are SVG text): one bar per model and kind, one point per model
    sync_api.expect(page.locator("#compare-speed")).to_contain_text("gemma-3-270m-Q2_K tg", timeout=30_000)
    sync_api.expect(page.locator("#compare-speed")).to_contain_text("gemma-3-270m-Q8_0 pp")
    sync_api.expect(page.locator("#compare-ppl-plot")).to_contain_text("size MB")
    assert (
        page.locator(
            "#compare-ppl-plot path[aria-roledescription='point'], #compare-ppl-plot .mark-symbol path"
        ).count()
        >= 2
    )
    page.click("#compare-export")
    link = page.locator("#compare-file a[href$='compare.csv']")
    sync_api.expect(link).to_be_visible(timeout=30_000)
    csv_text = page.request.get(link.get_attribute("href")).text()
    assert csv_text.startswith("model,quant,size MB") and "gemma-3-270m-Q2_K,Q2_K,226.1" in csv_text
    shot(page, "saved")


def test_quantize_panel_makes_a_quant_that_joins_the_lists(page) -> None:
    page.click("#quantize-panel button")  # open the accordion
    pick(page, "#quantize-source", "gemma-3-270m-q4_k_m.gguf")
    pick(page, "#quantize-type", "Q8_0")
    page.locator("#quantize-out textarea, #quantize-out input").first.fill("panel-made")
    page.click("#quantize-run")
    status = page.locator("#quantize-status")
    sync_api.expect(status).to_contain_text("Made panel-made.gguf", timeout=180_000)
    sync_api.expect(status).to_contain_text("already quantized (Q4_K_M)")  # the requantize warning
    pick(page, "#compare-models", "panel-made.gguf")  # the new file is offered for comparison at once
    page.click("#perplexity-panel button")
    pick(page, "#perplexity-model", "panel-made.gguf")
    page.fill("#perplexity-ctx input", "64")
    page.fill("#perplexity-chunks input", "2")
    page.click("#perplexity-run")
    sync_api.expect(page.locator("#perplexity-status")).to_contain_text("PPL = ", timeout=180_000)
    sync_api.expect(page.locator("#perplexity-status")).to_contain_text("2 windows of 64")
    shot(page, "quantize")
