"""The HTTP server in-process: health, the UI mounted at /, and a quiet Gradio queue."""

from __future__ import annotations

import pytest
from conftest import greedy
from fastapi.testclient import TestClient

from webui.server import PROGRESS_POLL_S, QUEUE_POLL_BUSY_S, QUEUE_POLL_S, build_server


@pytest.mark.slow
def test_health_names_the_loaded_model_and_the_page_is_served(make_app):
    app = make_app()
    client = TestClient(build_server(app), base_url="http://127.0.0.1")  # the Host check accepts loopback names
    assert client.get("/healthz").json() == {"status": "ok", "model": None}
    app.start()
    assert client.get("/healthz").json()["model"] == "gemma-3-270m-q4_k_m"
    page = client.get("/")
    assert page.status_code == 200
    assert "<title>Inglenook</title>" in page.text or "Inglenook" in page.text


def test_gradio_queue_polls_gently_and_sends_no_analytics(make_app):
    """Gradio's 1 ms idle poll would steal time from the decode threads; analytics would leave the machine."""
    server = build_server(make_app())
    blocks = next(r.app.get_blocks() for r in server.routes if hasattr(getattr(r, "app", None), "get_blocks"))
    assert blocks._queue.sleep_when_free == QUEUE_POLL_S
    assert blocks._queue.progress_update_sleep_when_free == PROGRESS_POLL_S
    assert blocks.analytics_enabled is False


@pytest.mark.slow
def test_gradio_queue_polls_even_less_while_a_generation_decodes(make_app):
    """Every wake-up of the event loop preempts llama.cpp's threads; during a generation a new one waits anyway."""
    app = make_app()
    server = build_server(app)
    blocks = next(r.app.get_blocks() for r in server.routes if hasattr(getattr(r, "app", None), "get_blocks"))
    app.start()
    seen = []
    for _ in app.engine.generate("The sky is", greedy(3)):
        seen.append(blocks._queue.sleep_when_free)
    assert set(seen) == {QUEUE_POLL_BUSY_S} and QUEUE_POLL_BUSY_S > QUEUE_POLL_S
    assert blocks._queue.sleep_when_free == QUEUE_POLL_S  # back to the idle pace once the turn is given up
