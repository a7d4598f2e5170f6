"""Unload, Reload and switching give the memory back: measured as this process's resident memory (RSS)."""

from __future__ import annotations

import pytest
from conftest import collect, greedy

from backends.base import ModelLoadError
from backends.llamacpp import LlamaCppSettings
from webui.models.catalog import Catalog
from webui.models.memory import estimate_memory, process_rss

pytestmark = [pytest.mark.skipif(process_rss() is None, reason="needs /proc/self/status"), pytest.mark.slow]


def server_rss(app) -> int:
    """The server's memory: its own process and the worker process of every model it holds."""
    return app.engine.rss()


def test_rss_after_five_load_unload_cycles_stays_within_ten_percent_of_the_first_load(make_app, gemma_path):
    app = make_app()
    settings = LlamaCppSettings(n_ctx=2048)
    app.load_model("default", settings=settings)
    first = server_rss(app)
    loaded, unloaded = [], []
    for _ in range(5):
        app.engine.unload()
        unloaded.append(server_rss(app))
        app.load_model("default", settings=settings)
        loaded.append(server_rss(app))
    assert loaded[-1] <= first * 1.10, f"RSS after 5 cycles {loaded[-1] >> 20} MB vs first load {first >> 20} MB"
    weights = gemma_path.stat().st_size
    for before, after in zip(loaded, unloaded[1:], strict=False):
        assert before - after > weights // 2, "an unload gives back (most of) the weights"


def test_the_estimate_is_close_to_what_a_load_really_costs(make_app, gemma_path):
    """The info panel's estimate (weights + KV cache + buffers) against the RSS a real load adds."""
    app = make_app()
    settings = LlamaCppSettings(n_ctx=2048, use_mmap=False)  # weights read into memory, all counted in RSS
    before = process_rss()
    app.load_model("default", settings=settings)
    cost = server_rss(app) - before  # the model's worker process, and what the server itself took for it
    estimate = estimate_memory(Catalog(gemma_path.parent).variant_at(gemma_path).facts, 2048).total
    assert 0.7 * estimate < cost < 1.3 * estimate, f"load cost {cost >> 20} MB, estimate {estimate >> 20} MB"


def test_reload_applies_new_settings_and_unload_leaves_nothing_loaded(make_app):
    app = make_app()
    app.load_model("default", settings=LlamaCppSettings(n_ctx=1024))
    assert app.engine.info.context_length == 1024
    info = app.engine.reload(LlamaCppSettings(n_ctx=512))
    assert info.context_length == 512 and app.engine.loaded.settings.n_ctx == 512
    assert app.engine.reload().context_length == 512  # again, with the settings it has
    text, last = collect(app.engine.generate("The capital of France is", greedy(4)))
    assert text and last.finish_reason == "length"
    app.engine.unload()
    assert app.engine.info is None
    with pytest.raises(ModelLoadError, match="nothing to reload"):
        app.engine.reload()
    app.engine.unload()  # unloading twice is harmless
