"""Chat actions in the character modes: every action of the chat tab (send with "start reply with",
regenerate, continue, impersonate, the token count) works in a conversation with a character, in chat and
chat-instruct, on the real embedded Gemma; a long character chat drops its oldest turns, never the persona.

One engine (context 1,024 tokens) serves the module; every test has its own user_data folder.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import greedy

from backends.base import ModelInfo
from webui.app import App
from webui.characters.store import Character
from webui.chat.actions import preview_prompt, version_label
from webui.chat.history import HistoryStore
from webui.chat.modes import start_conversation
from webui.chat.prompting import plan_prompt, render_prompt
from webui.chat.reply import prompt_messages
from webui.chat.service import Chat, TurnOptions
from webui.settings import Settings

pytestmark = pytest.mark.slow  # real models, servers or browsers

N_CTX = 1024
WREN_OWNER = "character-Wren"
GEMMA = ModelInfo(name="g", loader="llama.cpp", path="g.gguf", architecture="gemma3")
INNKEEPER = Character(
    name="Wren", greeting="Evening, {{user}}.", context="{{char}} keeps an inn; {{user}} is a guest.",
    scenario="A rainy night.", user_name="Ann",
)  # fmt: skip
CHAT = [
    {"role": "system", "content": "Reply in one sentence."},
    {"role": "assistant", "content": "Evening, Ann."},
    {"role": "user", "content": "Is there tea?"},
]
# Gemma has no system role: the persona is the first user turn, then the greeting, then the chat (issue 13, bug 8)
PERSONA_TURN = (
    "<start_of_turn>user\nReply in one sentence.\n\nWren keeps an inn; Ann is a guest.\n\n"
    "Scenario: A rainy night.<end_of_turn>\n"
    "<start_of_turn>model\nEvening, Ann.<end_of_turn>\n"
    "<start_of_turn>user\nIs there tea?<end_of_turn>\n"
)


@pytest.fixture(scope="module")
def app(models_dir: Path, tmp_path_factory) -> App:
    app = App.create(Settings(models_dir=models_dir, user_data=tmp_path_factory.mktemp("ud"), n_ctx=N_CTX))
    app.start()
    yield app
    app.close()


@pytest.fixture
def store(tmp_path: Path) -> HistoryStore:
    return HistoryStore(tmp_path / "user_data")


@pytest.fixture
def wren(app: App) -> Character:
    return app.characters.load("Wren")  # shipped


def chat_with(app: App, store: HistoryStore) -> Chat:
    """The app's chat service, saving into this test's own history store."""
    return Chat(app.engine, store, app.extensions)


def last(replies) -> object:
    final = None
    for final in replies:  # noqa: B007
        pass
    return final


def wren_chat(app: App, store: HistoryStore, mode: str = "chat"):
    """A new conversation with Wren (greeting first), stored under her owner folder."""
    conversation = start_conversation(store, app.characters, mode, "Wren")
    assert conversation.owner == WREN_OWNER
    return conversation


# --------------------------------------------------------------------------- the exact prompts


def test_a_reply_prefix_in_chat_mode_opens_the_characters_turn_after_the_persona():
    prompt = render_prompt(CHAT, GEMMA, mode="chat", character=INNKEEPER, prefix="Well,")
    assert prompt.text == PERSONA_TURN + "<start_of_turn>model\nWell,"
    assert prompt.stop == ["<end_of_turn>", "<start_of_turn>", "\nAnn:"]


def test_a_reply_prefix_in_chat_instruct_follows_the_characters_name():
    prompt = render_prompt(CHAT, GEMMA, mode="chat-instruct", character=INNKEEPER, prefix="Well,")
    assert prompt.text.endswith("Ann: Is there tea?<end_of_turn>\n<start_of_turn>model\nWren: Well,")
    assert "\nAnn:" in prompt.stop


@pytest.mark.parametrize("mode", ["chat", "chat-instruct"])
def test_impersonating_with_a_character_opens_the_users_turn_and_stops_at_the_characters_name(mode):
    prompt = render_prompt(CHAT, GEMMA, mode=mode, character=INNKEEPER, impersonate=True, prefix="I")
    assert prompt.text == PERSONA_TURN.rsplit("Is there tea?", 1)[0] + "Is there tea?<end_of_turn>\n" + (
        "<start_of_turn>user\nI"
    )
    assert "\nWren:" in prompt.stop and "\nAnn:" not in prompt.stop


# --------------------------------------------------------------------------- actions on the real model


def test_start_reply_with_in_a_chat_with_a_character(app, store, wren):
    conversation = wren_chat(app, store)
    options = TurnOptions(character=wren, start_with="Of course,")
    final = last(chat_with(app, store).turn(conversation, "Is there tea?", greedy(8), options))
    assert final.error is None
    assert "keeps a small inn at the edge of a fen" in final.prompt.text, "the persona is in the prompt"
    assert final.prompt.text.endswith("<start_of_turn>model\nOf course,")
    assert final.text.startswith("Of course,") and len(final.text) > len("Of course,")
    saved = store.load(WREN_OWNER, conversation.id)
    assert [m.role for m in saved.messages] == ["assistant", "user", "assistant"]
    assert saved.messages[-1].content == final.text


def test_regenerate_in_a_chat_with_a_character_keeps_both_versions(app, store, wren):
    conversation = wren_chat(app, store)
    first = last(chat_with(app, store).turn(conversation, "Tell me a story.", greedy(6), TurnOptions(character=wren)))
    second = last(
        chat_with(app, store).regenerate(conversation, greedy(6), TurnOptions(character=wren, start_with="Once,"))
    )
    assert second.error is None and "keeps a small inn" in second.prompt.text
    assert second.prompt.text.endswith("Tell me a story.<end_of_turn>\n<start_of_turn>model\nOnce,")
    saved = store.load(WREN_OWNER, conversation.id)
    assert first.text.strip() and second.text.startswith("Once,")
    assert version_label(saved) == "2/2" and saved.messages[-1].content == second.text


@pytest.mark.parametrize("mode", ["chat", "chat-instruct"])
def test_continue_in_a_character_chat_goes_on_from_the_reply_so_far(app, store, wren, mode):
    conversation = wren_chat(app, store, mode)
    first = last(
        chat_with(app, store).turn(
            conversation, "Describe the fen.", greedy(6, ban_eos_token=True), TurnOptions(character=wren)
        )
    )
    assert first.error is None and first.text.strip()
    final = last(
        chat_with(app, store).continue_reply(conversation, greedy(6, ban_eos_token=True), TurnOptions(character=wren))
    )
    assert final.error is None
    assert final.text.startswith(first.text) and len(final.text) > len(first.text)
    opening = "<start_of_turn>model\n" if mode == "chat" else "<start_of_turn>model\nWren: "
    assert final.prompt.text.endswith(opening + first.text)
    assert store.load(WREN_OWNER, conversation.id).messages[-1].content == final.text


def test_impersonate_in_a_character_chat_writes_the_users_line_and_saves_nothing(app, store, wren):
    conversation = wren_chat(app, store)
    conversation.append("user", "Is there tea?")
    conversation.append("assistant", "Always. Sit down.")
    store.save(conversation)
    before = store.path(WREN_OWNER, conversation.id).read_text(encoding="utf-8")
    final = last(app.chat.impersonate(conversation, greedy(6), TurnOptions(character=wren)))
    assert final.error is None and final.text.strip()
    assert final.prompt.text.endswith("<start_of_turn>user\n") and "keeps a small inn" in final.prompt.text
    assert store.path(WREN_OWNER, conversation.id).read_text(encoding="utf-8") == before


def test_a_long_character_chat_drops_its_oldest_turns_but_keeps_the_persona(app, store, wren):
    conversation = wren_chat(app, store)
    for i in range(12):
        conversation.append("user", f"Question {i}: " + "tell me about the fen " * 20)
        conversation.append("assistant", f"Answer {i}: " + "the fen is wide " * 20)
    conversation.append("user", "The newest question?")
    messages = prompt_messages(conversation, "SYSTEM: be brief.")
    untrimmed = render_prompt(messages, app.engine.info, mode="chat", character=wren).text
    assert app.engine.count_tokens(untrimmed) > N_CTX

    plan = plan_prompt(app.engine, messages, TurnOptions(mode="chat", character=wren), reserve=200)
    assert plan.dropped > 0 and plan.tokens <= N_CTX - 200
    assert "SYSTEM: be brief.\n\nWren keeps a small inn" in plan.text, "system prompt and persona stay"
    assert "Question 0:" not in plan.text and "Answer 11:" in plan.text
    assert plan.text.endswith("The newest question?<end_of_turn>\n<start_of_turn>model\n")
    assert "\nTraveller:" in plan.stop

    final = last(chat_with(app, store).turn(conversation, "And the birds?", greedy(4), TurnOptions(character=wren)))
    assert final.error is None, "without trimming this prompt would not fit"
    assert final.prompt.dropped > 0 and "Wren keeps a small inn" in final.prompt.text


def test_the_prompt_preview_of_a_character_chat_is_what_the_send_uses(app, store, wren):
    conversation = wren_chat(app, store, "chat-instruct")
    plan = preview_prompt(app.chat, conversation, TurnOptions(character=wren), "Hello there.")
    assert 'Write a single reply for the character "Wren"' in plan.text
    assert plan.text.endswith("<start_of_turn>model\nWren:")
    final = last(chat_with(app, store).turn(conversation, "Hello there.", greedy(4), TurnOptions(character=wren)))
    assert final.prompt.text == plan.text
    assert not final.text.startswith(" "), "the space after 'Wren:' is not part of the reply"
