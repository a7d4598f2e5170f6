"""The chat page's live channel (issue 13, Speed; webui.chat.live): a reply in flight streams to the page as
server-sent events of what it added, beside Gradio's stream, which then carries only the start and the end."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient

from webui.chat.history import INSTRUCT_OWNER
from webui.chat.live import LIVE_PATH, live_events
from webui.chat.sampling import default_params
from webui.chat.service import TurnOptions
from webui.presets import form_values
from webui.server import build_server


def events(lines) -> list[tuple[str, dict]]:
    """(event name, data) of each server-sent event in ``lines``."""
    found, name = [], "message"
    for line in lines:
        if line.startswith("event: "):
            name = line[len("event: ") :]
        elif line.startswith("data: "):
            found.append((name, json.loads(line[len("data: ") :])))
            name = "message"
    return found


def rebuild(parts: list[dict]) -> str:
    """What the page's script makes of the events (it counts in UTF-16 code units, as JavaScript does)."""
    text = b""
    for part in parts:
        text = text[: 2 * part["at"]] + part["text"].encode("utf-16-le")
    return text.decode("utf-16-le")


def test_each_event_carries_what_the_reply_added_counted_as_javascript_counts():
    texts = ["Grüße", "Grüße 👋", "Grüße 👋 and", "Grüße 👋 and", "Grüße 👋 and more. STOP", "Grüße 👋 and more."]
    raw = "".join(live_events(texts)).split("\n")
    got = events(raw)
    assert got[-1] == ("end", {})
    parts = [data for name, data in got if name == "message"]
    assert parts[0] == {"at": 0, "text": "Grüße"}
    assert parts[1] == {"at": 5, "text": " 👋"}
    assert parts[2] == {"at": 8, "text": " and"}, "the emoji is two code units in the page"
    assert len(parts) == 5, "an unchanged text sends nothing"
    assert parts[4] == {"at": 18, "text": ""}, "a trimmed end (a stop string cut off) says where the text now ends"
    assert rebuild(parts) == texts[-1]
    assert list(live_events([])) == ["event: end\ndata: {}\n\n"]


def test_the_channel_streams_the_reply_in_flight_as_it_is_saved(make_fake_app):
    app = make_fake_app(model="slow.fake")
    server = build_server(app)
    conv = app.history.new(INSTRUCT_OWNER)
    sampling = form_values(default_params())
    updates = server.state.chat_sessions.send("a tab", "Tell me words.", sampling, lambda: (conv, TurnOptions()))
    assert next(updates).busy is True  # the reply is being written: it belongs to the server now
    with TestClient(server, base_url="http://127.0.0.1") as client:
        with client.stream("GET", f"{LIVE_PATH}/{conv.id}") as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            got = events(response.iter_lines())
    updates.close()  # the page went away; the reply had ended anyway
    assert got[-1] == ("end", {})
    parts = [data for name, data in got if name == "message"]
    assert len(parts) > 3, "bit by bit, as the reply grows"
    assert all(part["at"] > 0 for part in parts[1:]), "each event after the first adds to the page's text"
    saved = app.history.load(INSTRUCT_OWNER, conv.id).messages[-1].content
    assert saved.startswith("w0 w1") and rebuild(parts) == saved


def test_an_unknown_or_hostile_id_gets_only_the_end(fake_app):
    server = build_server(fake_app)
    with TestClient(server, base_url="http://127.0.0.1") as client:
        for name in ("20260101-000000-abcdef", "..%2F..%2Fetc%2Fpasswd", "%00", "..", "x" * 5000):
            response = client.get(f"{LIVE_PATH}/{name}")
            if response.status_code == 404:  # a path that leaves /inglenook/live/ is no route of ours
                continue
            assert response.status_code == 200 and events(response.text.split("\n")) == [("end", {})], name
            assert "root:" not in response.text
