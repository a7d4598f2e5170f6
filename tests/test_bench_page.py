"""``inglenook bench``'s page contender on a fake model: our page in headless Chromium (webui.bench.page).

Its own module: it starts playwright itself, which cannot run beside another module's playwright fixture."""

from __future__ import annotations

from pathlib import Path

import pytest

sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
if not Path("/usr/bin/chromium").exists():
    pytest.skip("/usr/bin/chromium is not installed", allow_module_level=True)
pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_the_bench_page_contender_times_the_reply_as_chromium_shows_it(make_fake_app):
    """``inglenook bench``'s "page" row: our page in Chromium, on the ui contender's server, reads back the saved
    reply and the server's own stats line."""
    from conftest import SLOW_WORDS

    from webui.bench.contenders import UIContender
    from webui.bench.page import PageContender, write_greedy_preset
    from webui.serve import free_port
    from webui.server import build_server

    app = make_fake_app("slow.fake", host="127.0.0.1")
    write_greedy_preset(app.settings.user_data, 4000)
    ui = UIContender(app, build_server, free_port(), "Tell me a story", tokens=4000)
    try:
        page = PageContender(app, ui.url, "Tell me a story", 4000, ui.prompt_tokens)
        try:
            samples = [page.run(), page.run()]  # a second run in a new chat of the same page
        finally:
            page.close()
    finally:
        ui.close()
    for sample in samples:
        assert sample.text == " ".join(f"w{i}" for i in range(SLOW_WORDS)), "the saved reply, whole"
        assert sample.tokens == len(sample.text.encode())  # counted again by the fake tokenizer (bytes)
        assert sample.ttft_s > 0 and sample.decode_s > 0  # it streamed: first and last change apart
        assert sample.reported is not None and sample.reported["tokens_per_s"] > 0  # the stats line, parsed
