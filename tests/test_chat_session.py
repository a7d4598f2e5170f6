"""The chat page's sessions without Gradio (webui.chat.session), on the fake loader: named updates while a reply
streams and when it ends, one reply per session, Stop, a page that goes away, a message that got no reply."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from webui.app import App
from webui.chat.history import INSTRUCT_OWNER
from webui.chat.sampling import default_params
from webui.chat.service import TurnOptions
from webui.chat.session import STILL_STREAMING, ChatSessions, ChatUpdate
from webui.presets import form_values
from webui.settings import Settings

SAMPLING = form_values(default_params())  # what the Parameters tab sends


def make_app(tmp_path: Path, script: dict) -> App:
    models = tmp_path / "models"
    models.mkdir(exist_ok=True)
    (models / "m.fake").write_text(json.dumps(script))
    app = App.create(Settings(models_dir=models, user_data=tmp_path / "ud", n_ctx=4096))
    app.load_model("m.fake")
    return app


@pytest.fixture
def quick(tmp_path: Path):
    app = make_app(tmp_path, {"reply": "Hello there, friend."})
    yield app
    app.close()


@pytest.fixture
def slow(tmp_path: Path):
    app = make_app(tmp_path, {"reply": " ".join(["word"] * 400), "token_delay_ms": 20})
    yield app
    app.close()


def where(app: App, conv=None):
    conv = conv or app.history.new(INSTRUCT_OWNER)
    return lambda: (conv, TurnOptions())


def test_a_send_streams_busy_updates_then_ends_idle_with_the_saved_reply(quick):
    sessions = ChatSessions(quick.chat, 0.0)
    updates = list(sessions.send("s1", "Hi", SAMPLING, where(quick)))
    first, last = updates[0], updates[-1]
    assert first.message == "" and first.busy is True and first.chat[-1] == {"role": "assistant", "content": "…"}
    assert all(u.busy is True for u in updates[1:-1]) and len(updates) > 2, "the reply streams"
    assert last.busy is False and last.message is None, "the box is left as it is"
    assert last.note == "ℹ️ fake ignored: min_p, repetition_penalty, top_k, top_p", "said, not dropped"
    assert last.shown is not None and last.conversation_id == last.shown.id
    assert last.chat[-1]["content"].startswith("Hello there, friend.") and "inglenook-stats" in last.chat[-1]["content"]
    saved = quick.history.load(INSTRUCT_OWNER, last.conversation_id)
    assert [m.role for m in saved.messages] == ["user", "assistant"]
    assert not sessions.busy("s1")


def test_one_reply_per_session_stop_ends_it_and_another_session_is_not_blocked(slow):
    sessions = ChatSessions(slow.chat, 0.0)
    stream = sessions.send("s1", "Hi", SAMPLING, where(slow))
    while next(stream).chat[-1]["content"] == "…":  # until the reply has some text
        pass
    assert sessions.busy("s1")
    assert list(sessions.send("s1", "again", SAMPLING, where(slow))) == [ChatUpdate(note=STILL_STREAMING, busy=True)]
    assert not sessions.busy("s2")
    assert sessions.stop("s1") and not sessions.stop("s2")
    last = list(stream)[-1]
    assert last.busy is False and "stopped" in last.chat[-1]["content"]
    assert not sessions.busy("s1")


def test_a_page_that_goes_away_mid_reply_stops_the_generation_and_frees_the_session(slow):
    sessions = ChatSessions(slow.chat, 0.0)
    stream = sessions.send("s1", "Hi", SAMPLING, where(slow))
    next(stream), next(stream)
    stream.close()  # Gradio closes the handler when the page goes away
    assert not sessions.busy("s1")
    assert slow.engine._queue.waiting == 0
    # the engine is free again: a reply in another session goes through at once
    other = ChatSessions(slow.chat, 0.0).send("s2", "Hi", SAMPLING, where(slow))
    assert next(other).busy is True
    other.close()


def test_refusals_are_notes_and_a_message_that_got_no_reply_goes_back_in_the_box(tmp_path: Path):
    app = make_app(tmp_path, {"reply": ""})
    try:
        sessions = ChatSessions(app.chat, 0.0)
        assert list(sessions.send("s", "  ", SAMPLING, where(app))) == [ChatUpdate(note="Type a message first.")]
        [bad] = list(sessions.send("s", "Hi", {**SAMPLING, "top_k": "many"}, where(app)))
        assert bad.note.startswith("⚠️") and "top_k" in bad.note
        last = list(sessions.send("s", "Hi", SAMPLING, where(app)))[-1]
        assert last.message == "Hi" and "produced no text" in last.note and last.busy is False
        assert last.shown.messages == [], "the message came back out of the conversation"
    finally:
        app.close()


def test_impersonate_streams_into_the_message_box(quick):
    sessions = ChatSessions(quick.chat, 0.0)
    updates = list(sessions.impersonate("s", SAMPLING, where(quick)))
    assert updates[0] == ChatUpdate(note="", busy=True)
    assert updates[-1].busy is False and updates[-1].message == "Hello there, friend."
    assert not sessions.busy("s")


def test_the_chat_service_holds_the_hooks_not_the_engine(quick):
    assert quick.chat.hooks is quick.extensions and quick.chat.engine is quick.engine
    assert not hasattr(quick.engine, "extensions")
