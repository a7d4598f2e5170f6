"""Chat modes: the exact prompt each mode sends, per-character conversations, and a real chat as a character."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from conftest import cli, greedy

from backends.base import ModelInfo
from webui.characters.store import Character, CharacterStore
from webui.chat.conversation import INSTRUCT_OWNER
from webui.chat.history import HistoryStore
from webui.chat.modes import (
    CHARACTER_PREFIX,
    character_of,
    has_system_role,
    owner_for,
    start_conversation,
)
from webui.chat.prompting import render_prompt
from webui.chat.service import TurnOptions
from webui.paths import UnsafeName

GEMMA = ModelInfo(name="g", loader="llama.cpp", path="g.gguf", architecture="gemma3")
WREN = Character(
    name="Wren", greeting="Evening, {{user}}.", context="{{char}} keeps an inn; {{user}} is a guest.",
    scenario="A rainy night.", user_name="Ann",
)  # fmt: skip
CHAT = [
    {"role": "system", "content": "Reply in one sentence."},
    {"role": "assistant", "content": "Evening, Ann."},
    {"role": "user", "content": "Is there tea?"},
]


def test_instruct_mode_is_the_templates_format_with_no_character():
    prompt = render_prompt(CHAT, GEMMA, mode="instruct", character=WREN)
    assert prompt.text == (
        "<start_of_turn>model\nEvening, Ann.<end_of_turn>\n"
        "<start_of_turn>user\nReply in one sentence.\n\nIs there tea?<end_of_turn>\n"
        "<start_of_turn>model\n"
    )
    assert prompt.stop == ["<end_of_turn>", "<start_of_turn>"]


def test_chat_mode_puts_the_persona_first_then_the_greeting_then_the_chat_and_stops_at_the_users_name():
    """Gemma's template has no system role: the persona is the first user turn, before the greeting (issue 13,
    bug 8: it came after the greeting, inside the user's first message)."""
    prompt = render_prompt(CHAT, GEMMA, mode="chat", character=WREN)
    assert prompt.text == (
        "<start_of_turn>user\nReply in one sentence.\n\nWren keeps an inn; Ann is a guest.\n\n"
        "Scenario: A rainy night.<end_of_turn>\n"
        "<start_of_turn>model\nEvening, Ann.<end_of_turn>\n"
        "<start_of_turn>user\nIs there tea?<end_of_turn>\n"
        "<start_of_turn>model\n"
    )
    assert prompt.stop == ["<end_of_turn>", "<start_of_turn>", "\nAnn:"]  # the template's stops still apply


def test_chat_mode_on_a_template_with_a_system_role_sends_the_persona_as_system_text_before_the_greeting():
    qwen = ModelInfo(name="q", loader="llama.cpp", path="q.gguf", architecture="qwen2")
    assert has_system_role(qwen) and not has_system_role(GEMMA)
    text = render_prompt(CHAT, qwen, mode="chat", character=WREN).text
    persona, greeting, question = (text.index(s) for s in ("Wren keeps an inn", "Evening, Ann.", "Is there tea?"))
    assert persona < greeting < question
    assert text.index("system") < persona < text.index("assistant"), "the persona is the system turn"


def test_chat_instruct_wraps_the_transcript_in_an_instruction_and_opens_the_characters_line():
    prompt = render_prompt(CHAT, GEMMA, mode="chat-instruct", character=WREN)
    assert prompt.text == (
        "<start_of_turn>user\nReply in one sentence.\n\n"
        'Continue the chat dialogue below. Write a single reply for the character "Wren".\n\n'
        "Wren keeps an inn; Ann is a guest.\n\nScenario: A rainy night.\n\n"
        "Wren: Evening, Ann.\nAnn: Is there tea?<end_of_turn>\n"
        "<start_of_turn>model\nWren:"
    )
    assert prompt.stop == ["<end_of_turn>", "<start_of_turn>", "\nAnn:"]


def test_an_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="unknown chat mode"):
        render_prompt(CHAT, GEMMA, mode="roleplay", character=WREN)


def test_conversations_are_stored_per_character_and_a_character_called_instruct_cannot_meet_instruct_chats():
    assert owner_for("instruct", "Wren") == INSTRUCT_OWNER
    assert owner_for("chat", "Wren") == owner_for("chat-instruct", "Wren") == CHARACTER_PREFIX + "Wren"
    assert owner_for("chat", INSTRUCT_OWNER) != INSTRUCT_OWNER
    assert character_of(owner_for("chat", INSTRUCT_OWNER)) == INSTRUCT_OWNER and character_of(INSTRUCT_OWNER) is None
    for bad in ("../x", "/etc", "a/b"):
        with pytest.raises(UnsafeName):
            owner_for("chat", bad)


def test_a_new_chat_with_a_character_opens_with_its_greeting(tmp_path):
    history, characters = HistoryStore(tmp_path), CharacterStore(tmp_path / "characters")
    characters.save("Wren", WREN)
    conv = start_conversation(history, characters, "chat", "Wren")
    assert conv.owner == "character-Wren" and conv.mode == "chat"
    assert conv.chat_messages() == [{"role": "assistant", "content": "Evening, Ann."}]
    assert history.list(conv.owner).conversations == [], "picking a character saves no file of its greeting alone"
    assert start_conversation(history, characters, "instruct", "Wren").messages == []


def test_a_character_chat_is_titled_from_the_users_first_message_and_the_picker_shows_date_and_count(tmp_path):
    """Issue 13, bug 9: character chats stayed "New conversation" (the greeting-only save titled them)."""
    history, characters = HistoryStore(tmp_path), CharacterStore(tmp_path / "characters")
    characters.save("Wren", WREN)
    conv = start_conversation(history, characters, "chat", "Wren")
    conv.append("user", "Is the causeway safe tonight?")
    history.save(conv)
    [summary] = history.list(conv.owner).conversations
    assert summary.title == "Is the causeway safe tonight?"
    when = f"{summary.updated[:10]} {summary.updated[11:16]}"
    assert summary.label() == f"Is the causeway safe tonight? · {when} · 2 messages"


def test_a_cards_alternate_greetings_are_versions_of_the_first_message(tmp_path):
    """SillyTavern offers alternate greetings as swipes; here they are versions to page with ◀ ▶."""
    history, characters = HistoryStore(tmp_path), CharacterStore(tmp_path / "characters")
    characters.save("Wren", replace(WREN, alternate_greetings=["Back again, {{user}}?", "  "]))
    conv = start_conversation(history, characters, "chat", "Wren")
    history.save(conv)
    first = history.load(conv.owner, conv.id).messages[0]
    assert [v.content for v in first.versions] == ["Evening, Ann.", "Back again, Ann?"] and first.shown == 0
    conv.page_version(0, 1)
    assert conv.chat_messages() == [{"role": "assistant", "content": "Back again, Ann?"}]


def test_post_history_instructions_follow_the_newest_message_in_the_prompt_only():
    card = replace(WREN, post_history_instructions="{{original}} Stay in character as {{char}}.")
    prompt = render_prompt(CHAT, GEMMA, mode="chat", character=card)
    assert prompt.text.endswith("Is there tea?\n\nStay in character as Wren.<end_of_turn>\n<start_of_turn>model\n")
    assert CHAT[-1]["content"] == "Is there tea?"  # the conversation itself is untouched
    instructed = render_prompt(CHAT, GEMMA, mode="chat-instruct", character=card)
    assert instructed.text.endswith(
        "Ann: Is there tea?\n\nStay in character as Wren.<end_of_turn>\n<start_of_turn>model\nWren:"
    )
    instruct = render_prompt(CHAT, GEMMA, mode="instruct", character=card)
    assert "Stay in character" not in instruct.text  # no character, no card text
    # the reply is the newest message: nothing to follow
    continuing = render_prompt(CHAT[:2], GEMMA, mode="chat", character=card)
    assert "Stay in character" not in continuing.text


@pytest.mark.slow
def test_a_chat_as_a_character_streams_on_the_real_model_and_is_stored_under_that_character(make_app):
    app = make_app()
    app.start()
    wren = app.characters.load("Wren")  # shipped
    conv = start_conversation(app.history, app.characters, "chat", "Wren")
    replies = list(app.chat.turn(conv, "Is the causeway safe?", greedy(16), TurnOptions(character=wren)))
    final = replies[-1]
    assert final.done and final.error is None and final.text.strip()
    assert len(replies) > 2  # it streamed: several updates before the last
    saved = app.history.load("character-Wren", conv.id)
    assert [m["role"] for m in saved.chat_messages()] == ["assistant", "user", "assistant"]
    assert saved.chat_messages()[0]["content"].startswith("*Wren looks up")
    assert "Traveller" in saved.chat_messages()[0]["content"]  # {{user}} became Wren's user name
    assert saved.chat_messages()[2]["content"] == final.text
    assert "\nTraveller:" not in final.text
    assert app.history.list(INSTRUCT_OWNER).conversations == []


def test_the_characters_command_lists_imports_and_exports(tmp_path: Path):
    user_data = tmp_path / "ud"
    listed = cli("characters", "--user-data", str(user_data), "list")
    assert listed.returncode == 0 and "Wren" in listed.stdout and "(shipped)" in listed.stdout
    out = tmp_path / "wren.png"
    exported = cli("characters", "--user-data", str(user_data), "export", "Wren", str(out))
    assert exported.returncode == 0, exported.stderr
    imported = cli("characters", "--user-data", str(user_data), "import", str(out))
    assert imported.returncode == 0 and "'Wren (2)'" in imported.stdout
    store = CharacterStore(user_data / "characters")
    assert store.load("Wren (2)") == store.load("Wren")
    bad = cli("characters", "--user-data", str(user_data), "export", "../Wren", str(out))
    assert bad.returncode == 1 and "error:" in bad.stderr and "Traceback" not in bad.stderr
    broken = tmp_path / "broken.png"
    broken.write_bytes(out.read_bytes()[:500])
    failed = cli("characters", "--user-data", str(user_data), "import", str(broken))
    assert failed.returncode == 1 and "truncated" in failed.stderr


def test_a_renamed_character_keeps_its_conversations(tmp_path):
    from webui.chat.modes import move_conversations

    history, characters = HistoryStore(tmp_path), CharacterStore(tmp_path / "characters")
    characters.save("Wren", WREN)
    conv = start_conversation(history, characters, "chat", "Wren")
    history.save(conv)
    move_conversations(history, "Wren", "Robin")
    assert history.load("character-Robin", conv.id).chat_messages() == conv.chat_messages()


def test_the_chat_tab_picks_the_owner_from_mode_and_character(make_app):
    from webui.ui.chat_tab import chat_owner, open_conversation

    app = make_app()
    assert chat_owner(app, "chat", "Wren") == chat_owner(app, "chat-instruct", "Wren") == "character-Wren"
    assert chat_owner(app, "instruct", "Wren") == INSTRUCT_OWNER
    assert chat_owner(app, "chat", "No such one") == chat_owner(app, "chat", "../x") == INSTRUCT_OWNER
    conv = open_conversation(app, "", "character-Wren")  # nothing saved yet: a new chat, greeting first
    assert conv.chat_messages()[0]["role"] == "assistant" and "Traveller" in conv.chat_messages()[0]["content"]
    app.history.save(conv)
    assert open_conversation(app, conv.id, "character-Wren").id == conv.id


@pytest.mark.slow
def test_a_chat_instruct_reply_on_the_real_model_has_no_leading_space_and_is_stored(make_app):
    app = make_app()
    app.start()
    conv = start_conversation(app.history, app.characters, "chat-instruct", "Wren")
    assert conv.mode == "chat-instruct"
    replies = list(app.chat.turn(conv, "Hello!", greedy(8), TurnOptions(character=app.characters.load("Wren"))))
    final = replies[-1]
    assert final.done and final.error is None and final.text == final.text.lstrip()
    assert app.history.load("character-Wren", conv.id).chat_messages()[-1]["content"] == final.text


def test_a_damaged_character_file_falls_back_to_instruct_instead_of_failing(make_app):
    from webui.ui.chat_tab import chat_owner

    app = make_app()
    app.characters.folder.mkdir(parents=True)
    (app.characters.folder / "Broken.yaml").write_text("name: [unclosed")
    assert chat_owner(app, "chat", "Broken") == INSTRUCT_OWNER


def test_chat_instruct_on_the_plain_template_opens_the_characters_line_after_a_space():
    """A base model (no template in its metadata) gets the plain ``Assistant:`` label; the character's name
    follows it as its own word, not glued to it."""
    base = ModelInfo(name="base", loader="llama.cpp", path="base.gguf", architecture="llama")
    text = render_prompt(CHAT, base, mode="chat-instruct", character=WREN).text
    assert text.endswith("Assistant: Wren:"), text[-40:]
