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
from webui.chat.session import STILL_STREAMING, ChatSessions, ChatUpdate, asked_sampling, changed_sampling
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
    assert last.chat[-1]["content"] == "Hello there, friend.", "the text alone: Copy and Edit give it clean"
    assert last.chat[-1]["metadata"]["log"].startswith("time to first token")
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
    assert last.busy is False and "stopped" in last.chat[-1]["metadata"]["log"]
    assert not sessions.busy("s1")


def test_a_page_that_goes_away_mid_reply_leaves_the_reply_running_to_its_end_and_saved(slow):
    """Issue 13, bug 5: closing the tab mid-reply lost the partial reply. The reply belongs to the server."""
    slow.settings.stream_interval_s = 0
    sessions = ChatSessions(slow.chat, 0.0)
    conv = slow.history.new(INSTRUCT_OWNER)
    stream = sessions.send("s1", "Hi", SAMPLING, where(slow, conv))
    while next(stream).chat[-1]["content"] == "…":  # until the reply has some text
        pass
    stream.close()  # Gradio closes the handler when the page goes away
    flight = sessions.flight(conv.id)
    assert flight is not None and sessions.busy("s1"), "still being written"
    partial = flight.snapshot()[0].text
    # a tab opened now follows it, and can stop it though it did not start it
    seen = sessions.watch(flight)
    assert next(seen).text.startswith(partial)
    assert sessions.stop("another tab", conv.id)
    final = list(seen)[-1]
    assert final.done and final.finish_reason == "cancelled" and len(final.text) >= len(partial) > 0
    saved = slow.history.load(INSTRUCT_OWNER, conv.id)
    assert [m.role for m in saved.messages] == ["user", "assistant"] and saved.messages[-1].content == final.text
    assert not sessions.busy("s1") and sessions.flight(conv.id) is None


def test_a_reply_nobody_watches_runs_to_its_end(quick):
    sessions = ChatSessions(quick.chat, 0.0)
    conv = quick.history.new(INSTRUCT_OWNER)
    stream = sessions.send("s1", "Hi", SAMPLING, where(quick, conv))
    next(stream)
    stream.close()  # gone before a single token was shown
    flight = sessions.flight(conv.id)
    if flight is not None:
        assert list(sessions.watch(flight))[-1].done
    saved = quick.history.load(INSTRUCT_OWNER, conv.id)
    assert saved.messages[-1].content == "Hello there, friend."


def test_the_grouping_holds_back_text_never_the_end(quick):
    """Updates are grouped per interval, but the reply's end goes at once: with an interval of an hour the
    stream still ends, with the saved reply (it used to sleep a whole interval after each update)."""
    import threading

    sessions = ChatSessions(quick.chat, 3600.0)
    updates: list[ChatUpdate] = []
    reader = threading.Thread(
        target=lambda: updates.extend(sessions.send("s1", "Hi", SAMPLING, where(quick))), daemon=True
    )
    reader.start()
    reader.join(timeout=60)
    assert not reader.is_alive(), "the stream waited out its interval instead of ending with the reply"
    assert updates[-1].busy is False and updates[-1].chat[-1]["content"] == "Hello there, friend."


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


def test_a_conversation_keeps_its_system_prompt_and_changed_parameters_and_a_reload_finds_it(quick):
    """Issue 13, bug 6: a reload lost the conversation's settings (and went back to the newest instruct chat)."""
    from webui.chat.history import HistoryStore

    sessions = ChatSessions(quick.chat, 0.0)
    conv = quick.history.new("character-Wren", mode="chat")
    options = TurnOptions(system="Answer in French.")
    sampling = {**SAMPLING, "temperature": 0.3, "max_new_tokens": 77, "preset": "Creative"}  # the page's picker
    list(sessions.send("s", "Bonjour", sampling, lambda: (conv, options)))
    saved = HistoryStore(quick.settings.user_data).load("character-Wren", conv.id)
    assert saved.mode == "chat" and saved.settings == {
        "system": "Answer in French.",
        "preset": "Creative",
        "sampling": {"temperature": 0.3, "max_new_tokens": 77},
    }
    older = quick.history.new(INSTRUCT_OWNER)
    older.append("user", "older")
    quick.history.save(older)
    list(sessions.send("s", "Encore", sampling, lambda: (saved, options)))  # the character chat is newest again
    assert quick.history.newest_owner() == "character-Wren"
    plain = json.loads(quick.history.path("character-Wren", conv.id).read_text())
    assert plain["settings"]["system"] == "Answer in French."


def test_the_whole_form_comes_back_from_what_a_conversation_kept():
    """A conversation keeps only the values that differ from the defaults; the form it was asked with is the
    defaults and those, not the bare SamplingParams (temperature 1.0, top_k 0) under them."""
    creative = {**SAMPLING, "temperature": 1.3, "top_k": 7, "stop": "END\nSTOP", "preset": "Creative"}
    kept = changed_sampling(creative)
    assert kept == {"temperature": 1.3, "top_k": 7, "stop": "END\nSTOP"}
    whole = asked_sampling(kept)
    assert whole == {k: v for k, v in creative.items() if k != "preset"}
    assert whole["top_p"] == SAMPLING["top_p"] == 0.9, "a value equal to the default comes back as the default"
    assert asked_sampling({}) == SAMPLING
    with pytest.raises(ValueError, match="not_a_knob"):
        asked_sampling({"not_a_knob": 1})


def test_files_without_settings_still_read_and_bad_settings_are_refused(tmp_path):
    from webui.chat.conversation import HistoryError
    from webui.chat.transfer import from_dict, to_dict

    from_old = {"schema_version": 1, "id": "a", "owner": "instruct", "title": "", "mode": "instruct",
                "created": "", "updated": "", "messages": []}  # fmt: skip
    conv = from_dict(from_old)
    assert conv.settings == {} and "settings" not in to_dict(conv)
    conv.settings = {"system": "Be brief.", "sampling": {"top_k": 5}, "from_a_newer_version": 1}
    assert from_dict(to_dict(conv)).settings == conv.settings, "kept whole, unknown keys too"
    with pytest.raises(HistoryError, match="settings.system"):
        from_dict({**from_old, "settings": {"system": 3}})
    with pytest.raises(HistoryError, match="settings.preset"):
        from_dict({**from_old, "settings": {"preset": ["../../etc/passwd"]}})


def test_another_tab_follows_a_reply_until_it_moves_to_another_conversation(slow):
    sessions = ChatSessions(slow.chat, 0.0)
    conv = slow.history.new(INSTRUCT_OWNER)
    stream = sessions.send("s1", "Hi", SAMPLING, where(slow, conv))
    while next(stream).chat[-1]["content"] == "…":  # the message is saved and the reply has begun
        pass
    assert list(sessions.follow("s1", conv.id, lambda: conv)) == [], "the sender does not follow its own reply"
    load = lambda: slow.history.load(INSTRUCT_OWNER, conv.id)  # noqa: E731
    following = sessions.follow("s2", conv.id, load)
    first = next(following)
    assert first.busy is True and first.chat[0] == {"role": "user", "content": "Hi"}
    sessions.unfollow("s2")  # New chat (or a pick) in that tab
    assert list(following) == [], "it no longer paints the other conversation"
    assert sessions.stop("s1")
    stream.close()
