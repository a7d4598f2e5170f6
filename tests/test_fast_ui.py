"""The whole server (API + Gradio UI) built on a fake model, in process (fast tier): the page is served,
health names the model, the Gradio queue slows its polling while a generation decodes, and the
Extensions tab's core functions work. The real-model versions are in tests/test_server.py."""

from __future__ import annotations

import pytest
from conftest import FAKE_HELLO, greedy
from fastapi.testclient import TestClient

from webui.server import QUEUE_POLL_BUSY_S, QUEUE_POLL_S, build_server
from webui.ui.app import describe
from webui.ui.extensions_tab import COLUMNS, table, toggle


@pytest.fixture
def served(fake_app):
    server = build_server(fake_app)
    with TestClient(server, base_url="http://127.0.0.1") as client:  # the Host check accepts loopback names
        yield fake_app, server, client


def test_the_page_and_health_are_served_on_the_fake_model(served):
    app, _, client = served
    assert client.get("/healthz").json() == {"status": "ok", "model": "hello"}
    page = client.get("/")
    assert page.status_code == 200 and "Inglenook" in page.text
    reply = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}).json()
    assert reply["choices"][0]["message"]["content"] == FAKE_HELLO  # the API is mounted beside the UI
    assert "hello" in describe(app) and "context" in describe(app)


def test_the_page_is_served_gzip_compressed_when_the_browser_asks(served):
    _, _, client = served
    packed = client.get("/", headers={"Accept-Encoding": "gzip"})
    assert packed.status_code == 200 and packed.headers.get("content-encoding") == "gzip"
    assert "Inglenook" in packed.text  # httpx unpacks it: the same page
    plain = client.get("/", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers
    assert int(packed.headers["content-length"]) < len(plain.content)


def test_the_gradio_queue_polls_less_while_a_generation_decodes(served):
    app, server, _ = served
    blocks = next(r.app.get_blocks() for r in server.routes if hasattr(getattr(r, "app", None), "get_blocks"))
    assert blocks._queue.sleep_when_free == QUEUE_POLL_S
    seen = [blocks._queue.sleep_when_free for _ in app.engine.generate("hi", greedy())]
    assert set(seen) == {QUEUE_POLL_BUSY_S}
    assert blocks._queue.sleep_when_free == QUEUE_POLL_S


def test_the_extensions_table_lists_bundled_extensions_and_toggles_them(fake_app):
    rows = table(fake_app)
    assert rows and all(len(row) == len(COLUMNS) for row in rows)
    name = rows[0][0]
    message, _ = toggle(fake_app, name, True)
    assert name in message and fake_app.extensions.get(name).enabled
    message, restart = toggle(fake_app, name, False)
    assert message.startswith(f"Disabled {name}") and not restart
    assert toggle(fake_app, "", True) == ("Pick an extension first.", False)
    assert toggle(fake_app, "no-such-extension", True)[0].startswith("⚠️")


def test_no_event_has_several_handlers_that_gradio_may_defer(served):
    """Gradio's "always_last" (the default of .change) defers a handler while its last run is pending and,
    when that run ends, sends the whole event again, to every handler of it. Two such handlers on one event
    can defer each other for ever: the conversation id's three did, under load, ~10 requests a second that
    kept resetting the sidebar's title box. So an event with several handlers gives none of them that mode."""
    _, server, _ = served
    blocks = next(r.app.get_blocks() for r in server.routes if hasattr(getattr(r, "app", None), "get_blocks"))
    handlers: dict[tuple, list] = {}
    for fn in blocks.fns.values():
        for target, event in fn.targets:
            if target is not None:
                handlers.setdefault((target, event), []).append(fn)
    shared = {key: fns for key, fns in handlers.items() if len(fns) > 1}
    chat_id = next(b._id for b in blocks.blocks.values() if getattr(b, "elem_id", None) == "conversation-id")
    assert len(shared[(chat_id, "change")]) >= 2  # the sidebar and the tool card (then following a reply)
    deferred = {key: [fn.name for fn in fns if fn.trigger_mode == "always_last"] for key, fns in shared.items()}
    assert {key: names for key, names in deferred.items() if names} == {}


def test_the_page_script_comes_first_in_the_head_before_gradios_modules(served):
    """PAGE_HEAD must run before Gradio's modules take the browser's requestAnimationFrame: it goes first into
    the served page's <head> (Gradio's own ``head=`` is added later, by its script), compressed or not."""
    from webui.ui.app import PAGE_HEAD

    _, _, client = served
    for encoding in ("identity", "gzip"):
        page = client.get("/", headers={"Accept-Encoding": encoding})
        head = page.text.index("<head")
        at = page.text.index(PAGE_HEAD)
        assert head < at < page.text.index('type="module"') and page.text.count(PAGE_HEAD) == 1
        assert "<" not in page.text[page.text.index(">", head) + 1 : at]  # nothing between <head> and the script
    assert PAGE_HEAD not in client.get("/config").text  # only the page itself is edited
