"""The chat core on scripted fake models (fast tier): a turn and its history file, the actions (regenerate,
continue, impersonate, remove, edit, page), chat modes with a character, and the chat tab's core functions.

The real-model versions (tests/test_chat*.py) check the same paths against llama.cpp.
"""

from __future__ import annotations

import collections

import pytest
from conftest import FAKE_HELLO, SLOW_WORDS, greedy

from backends.base import CancelToken, SamplingParams
from webui.chat.actions import edit_message, page_version, remove_last
from webui.chat.conversation import INSTRUCT_OWNER
from webui.chat.modes import owner_for, start_conversation
from webui.chat.options import TurnOptions
from webui.chat.session import ChatSessions, display_messages
from webui.ui.chat_tab import (
    chat_owner,
    continue_conversation,
    open_conversation,
    startup_problems,
)


def last(replies):
    """The final update of a stream of replies."""
    return collections.deque(replies, maxlen=1).pop()


def saved(app, conversation) -> list[tuple[str, str]]:
    """(role, content) of the conversation as its file on disk holds it."""
    return [(m.role, m.content) for m in app.history.load(conversation.owner, conversation.id).messages]


def test_a_turn_saves_the_message_before_generating_and_the_reply_with_its_stats(fake_app):
    conversation = fake_app.history.new(INSTRUCT_OWNER)
    turn = fake_app.chat.turn(conversation, "Hi there", greedy())
    first = next(turn)
    assert not first.done
    assert saved(fake_app, conversation) == [("user", "Hi there")]  # on disk before the reply is finished
    final = last(turn)
    assert final.done and final.error is None and final.text == FAKE_HELLO
    assert saved(fake_app, conversation) == [("user", "Hi there"), ("assistant", FAKE_HELLO)]
    stats = fake_app.history.load(conversation.owner, conversation.id).messages[-1].stats
    assert f"{len(FAKE_HELLO.split())} tokens" in stats and "time to first token" in stats


def test_a_turn_stopped_mid_reply_keeps_what_was_said(make_fake_app):
    app = make_fake_app("slow.fake")
    conversation, cancel = app.history.new(INSTRUCT_OWNER), CancelToken()
    for reply in app.chat.turn(conversation, "Go on", greedy(SLOW_WORDS), TurnOptions(cancel=cancel)):
        if len(reply.text.split()) >= 3:
            cancel.cancel()
    kept = app.history.load(conversation.owner, conversation.id).messages[-1]
    assert kept.role == "assistant" and 3 <= len(kept.content.split()) < SLOW_WORDS
    assert "stopped" in kept.stats


def test_a_turn_that_fails_before_any_text_takes_its_message_back_out(fake_app):
    conversation = fake_app.history.new(INSTRUCT_OWNER)
    chat_turn_ok = last(fake_app.chat.turn(conversation, "first", greedy()))
    assert chat_turn_ok.error is None
    fake_app.engine.unload()
    final = last(fake_app.chat.turn(conversation, "second", greedy()))
    assert final.error and "no model is loaded" in final.error
    assert saved(fake_app, conversation) == [("user", "first"), ("assistant", FAKE_HELLO)]


def test_regenerate_adds_a_version_and_paging_shows_either(make_fake_app):
    app = make_fake_app("seeded.fake")
    conversation = app.history.new(INSTRUCT_OWNER)
    sampled = lambda seed: SamplingParams(temperature=1.0, seed=seed)  # noqa: E731
    first = last(app.chat.turn(conversation, "Pick one", sampled(1))).text
    regenerated = (last(app.chat.regenerate(conversation, sampled(s))).text for s in range(2, 20))
    second = next(text for text in regenerated if text != first)
    message = app.history.load(conversation.owner, conversation.id).messages[-1]
    assert [v.content for v in message.versions][0] == first and message.content == second
    page_version(app.history, conversation, -1)
    assert app.history.load(conversation.owner, conversation.id).messages[-1].content == first
    page_version(app.history, conversation, +1)
    assert app.history.load(conversation.owner, conversation.id).messages[-1].content == second
    assert len(conversation.messages) == 2  # one exchange, two versions of its reply


def test_continue_extends_the_last_reply_and_impersonate_saves_nothing(fake_app):
    conversation = fake_app.history.new(INSTRUCT_OWNER)
    last(fake_app.chat.turn(conversation, "Hi", greedy()))
    final = last(fake_app.chat.continue_reply(conversation, greedy()))
    assert final.error is None and final.text == FAKE_HELLO + FAKE_HELLO
    assert saved(fake_app, conversation)[-1] == ("assistant", FAKE_HELLO + FAKE_HELLO)

    before = saved(fake_app, conversation)
    written = last(fake_app.chat.impersonate(conversation, greedy(), TurnOptions(start_with="I think ")))
    assert written.text == "I think " + FAKE_HELLO
    assert saved(fake_app, conversation) == before


def test_remove_last_and_edit_are_saved(fake_app):
    conversation = fake_app.history.new(INSTRUCT_OWNER)
    for text in ("one", "two"):
        last(fake_app.chat.turn(conversation, text, greedy()))
    removed = remove_last(fake_app.history, conversation)
    assert [m.content for m in removed] == ["two", FAKE_HELLO]
    assert saved(fake_app, conversation) == [("user", "one"), ("assistant", FAKE_HELLO)]
    edit_message(fake_app.history, conversation, 0, "uno")
    assert saved(fake_app, conversation) == [("user", "uno")]  # what followed the edit is dropped
    final = last(fake_app.chat.regenerate(conversation, greedy()))
    assert final.text == FAKE_HELLO and saved(fake_app, conversation)[-1] == ("assistant", FAKE_HELLO)


def test_a_character_chat_opens_with_its_greeting_and_is_saved_under_the_character(make_fake_app):
    app = make_fake_app("echo.fake")
    conversation = start_conversation(app.history, app.characters, "chat-instruct", "Wren")
    assert conversation.owner == owner_for("chat-instruct", "Wren")
    assert [m.role for m in conversation.messages] == ["assistant"]
    assert app.history.list(conversation.owner).conversations == [], "saved with the first message, not before"
    character = app.characters.load("Wren")
    final = last(app.chat.turn(conversation, "Is there tea?", greedy(), TurnOptions(character=character)))
    # chat-instruct ends the prompt with the character's name: the echo model repeats that last line
    assert final.error is None and final.text.startswith("You said: ") and final.text.endswith(f"{character.name}:")
    assert [role for role, _ in saved(app, conversation)] == ["assistant", "user", "assistant"]
    assert conversation.id in [c.id for c in app.history.list(conversation.owner).conversations]  # the sidebar's


def test_instruct_mode_puts_the_users_message_last(make_fake_app):
    app = make_fake_app("echo.fake")
    messages = [{"role": "user", "content": "a question"}]
    final = last(app.chat.stream(messages, greedy(), TurnOptions(mode="instruct")))
    assert final.text.startswith("You said: ") and final.prompt is not None


# -- the chat tab's core functions (no Gradio needed) -------------------------------------------------------


def test_the_chat_shows_each_reply_with_its_stats_and_the_reply_in_flight(fake_app):
    conversation = fake_app.history.new(INSTRUCT_OWNER)
    pending = None
    for reply in fake_app.chat.turn(conversation, "Hi", greedy()):
        if not reply.done:
            pending = reply
            shown = display_messages(conversation.ui_history(), pending)
            assert shown[-1] == {"role": "assistant", "content": reply.text}
    assert pending is not None
    shown = display_messages(conversation.ui_history())
    assert shown[0] == {"role": "user", "content": "Hi"}
    assert shown[1]["content"] == FAKE_HELLO, "the stats line is not in the text (Copy and Edit give it clean)"
    assert shown[1]["metadata"]["log"].startswith("time to first token") and "title" not in shown[1]["metadata"]


def test_the_picker_opens_the_newest_conversation_and_a_message_never_lands_in_another(fake_app):
    older = fake_app.history.new(INSTRUCT_OWNER)
    last(fake_app.chat.turn(older, "older", greedy()))
    newer = fake_app.history.new(INSTRUCT_OWNER)
    last(fake_app.chat.turn(newer, "newer", greedy()))
    assert [c.id for c in fake_app.history.list(INSTRUCT_OWNER).conversations] == [newer.id, older.id]
    assert open_conversation(fake_app, "").id == newer.id
    assert open_conversation(fake_app, older.id).id == older.id
    fake_app.history.delete(INSTRUCT_OWNER, older.id)
    assert open_conversation(fake_app, older.id).id == newer.id  # gone: the newest one is shown
    fresh = continue_conversation(fake_app, older.id)
    assert fresh.id not in (older.id, newer.id) and not fresh.messages  # a deleted one's id is not taken again
    assert continue_conversation(fake_app, "../../etc").id not in (older.id, newer.id)


def test_the_new_chat_the_page_shows_is_saved_under_the_id_the_page_holds(fake_app):
    """New chat gives the page an id before anything is saved; the first action on it (a message, the Tools
    box) saves it under that id, so a second action sent before the first one's answer lands finds it."""
    shown = fake_app.history.new(INSTRUCT_OWNER)  # what New chat shows: not on disk yet
    first = continue_conversation(fake_app, shown.id)
    assert first.id == shown.id and not first.messages
    last(fake_app.chat.turn(first, "hello", greedy()))
    again = continue_conversation(fake_app, shown.id)
    assert again.id == shown.id and [m.content for m in again.messages][0] == "hello"
    assert continue_conversation(fake_app, "20260101-120000-zzzzzz").id != "20260101-120000-zzzzzz"  # not ours


def test_unusable_characters_fall_back_to_instruct_and_damaged_files_are_reported(fake_app):
    assert chat_owner(fake_app, "chat", "Wren") == owner_for("chat", "Wren")
    assert chat_owner(fake_app, "chat", "Nobody") == INSTRUCT_OWNER
    assert chat_owner(fake_app, "chat", "../x") == INSTRUCT_OWNER
    conversation = fake_app.history.new(INSTRUCT_OWNER)
    last(fake_app.chat.turn(conversation, "hi", greedy()))
    fake_app.history.path(INSTRUCT_OWNER, conversation.id).write_text("{ truncated")
    problems = startup_problems(fake_app)
    assert len(problems) == 1 and problems[0].startswith(f"{INSTRUCT_OWNER}/{conversation.id}.json")


def test_the_note_names_parameters_the_fake_loader_ignored(fake_app):
    final = last(fake_app.chat.stream([{"role": "user", "content": "hi"}], SamplingParams(top_k=3)))
    assert "top_k" in final.ignored_params
    sessions = ChatSessions(fake_app.chat, interval_s=0)
    assert sessions.ignored_note(final.ignored_params) == "ℹ️ fake ignored: top_k"
    assert sessions.ignored_note([]) == ""


@pytest.mark.parametrize("mode", ["chat", "chat-instruct", "instruct"])
def test_every_mode_answers_on_the_fake_model(make_fake_app, mode):
    app = make_fake_app("hello.fake")
    conversation = start_conversation(app.history, app.characters, mode, "Wren")
    character = app.characters.load("Wren") if mode != "instruct" else None
    final = last(app.chat.turn(conversation, "Hello", greedy(), TurnOptions(character=character)))
    assert final.error is None and final.text.strip() == FAKE_HELLO


PROMPT_HOOKS = """
@hookimpl
def history_modifier(messages):
    return [{"role": "system", "content": "Remember: the user's name is Ada."}, *messages]

@hookimpl
def custom_prompt(messages, prompt):
    return prompt + "[extra]"
"""


def test_show_prompt_and_the_token_count_are_the_prompt_sent_with_what_extensions_add(make_fake_app, tmp_path):
    """Issue 13, bug 7: the preview left out what extensions add (a memory note was sent but not shown)."""
    from test_extensions import write_extension

    from webui.chat.actions import preview_prompt, prompt_summary

    write_extension(tmp_path / "user_data", "note", PROMPT_HOOKS)
    app = make_fake_app()
    conversation = app.history.new(INSTRUCT_OWNER)
    plan = preview_prompt(app.chat, conversation, TurnOptions(), "Hello?")
    assert "Remember: the user's name is Ada." in plan.text and plan.text.endswith("[extra]")
    assert prompt_summary(app.chat, conversation, TurnOptions(), "Hello?") == plan.summary()
    final = last(app.chat.turn(conversation, "Hello?", greedy()))
    assert final.prompt.text == plan.text, "the preview is exactly what was sent"
    assert final.usage.prompt_tokens == plan.tokens == app.engine.count_tokens(plan.text)
