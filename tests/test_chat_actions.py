"""Chat actions on the real embedded Gemma: regenerate and page versions, continue, impersonate, remove last,
edit then regenerate, "start reply with", context trimming with the real tokenizer, the per-model template
choice, import/export of conversations, and the notebook.

One engine (context 1,024 tokens) serves the module; every test has its own user_data folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import greedy

from backends.base import CancelToken, ModelInfo, SamplingParams
from webui.app import App
from webui.chat.actions import (
    edit_message,
    export_conversation,
    import_conversation,
    page_version,
    preview_prompt,
    prompt_summary,
    remove_last,
    template_status,
    version_label,
)
from webui.chat.conversation import HistoryError
from webui.chat.history import HistoryStore
from webui.chat.notebook import NotebookStore, generate, token_count
from webui.chat.prompting import plan_prompt, render_prompt
from webui.chat.reply import default_params, prompt_messages
from webui.chat.service import Chat, TurnOptions
from webui.paths import UnsafeName
from webui.settings import Settings
from webui.templates.prefs import TemplatePrefs
from webui.ui.chat_tab import continue_conversation, open_conversation, startup_problems

N_CTX = 1024
OWNER = "instruct"


@pytest.fixture(scope="module")
def app(models_dir: Path, tmp_path_factory) -> App:
    app = App.create(Settings(models_dir=models_dir, user_data=tmp_path_factory.mktemp("ud"), n_ctx=N_CTX))
    app.start()
    yield app
    app.close()


@pytest.fixture
def store(tmp_path: Path) -> HistoryStore:
    return HistoryStore(tmp_path / "user_data")


def chat_with(app: App, store: HistoryStore) -> Chat:
    """The app's chat service, saving into this test's own history store."""
    return Chat(app.engine, store, app.extensions)


def last(replies) -> object:
    final = None
    for final in replies:  # noqa: B007
        pass
    return final


def said(store: HistoryStore, *pairs: tuple[str, str]):
    """A saved conversation of (user, reply) pairs written by hand (no generation needed)."""
    conversation = store.new(OWNER)
    for user, reply in pairs:
        conversation.append("user", user)
        conversation.append("assistant", reply)
    store.save(conversation)
    return conversation


def sampled(seed: int, n: int = 12) -> SamplingParams:
    return SamplingParams(temperature=1.0, top_k=40, seed=seed, max_new_tokens=n)


# --------------------------------------------------------------------------- regenerate and versions


@pytest.mark.slow
def test_regenerate_keeps_the_old_reply_as_a_version_and_paging_picks_either(app, store):
    conversation = store.new(OWNER)
    first = last(chat_with(app, store).turn(conversation, "Tell me a word.", sampled(1)))
    second = last(chat_with(app, store).regenerate(conversation, sampled(2)))
    assert first.error is None and second.error is None
    assert first.text != second.text, "different seeds give different replies"
    assert [m.role for m in conversation.messages] == ["user", "assistant"], "a version, not a new message"
    assert version_label(conversation) == "2/2"

    page_version(store, conversation, -1)
    assert version_label(conversation) == "1/2"
    on_disk = store.load(OWNER, conversation.id)
    assert on_disk.messages[-1].content == first.text, "the page choice is saved"
    assert on_disk.chat_messages()[-1]["content"] == first.text, "and it is what the model sees next"

    page_version(store, conversation, +1)
    page_version(store, conversation, +1)  # past the end: stays on the last one
    assert store.load(OWNER, conversation.id).messages[-1].content == second.text
    assert version_label(conversation) == "2/2"


@pytest.mark.slow
def test_regenerate_answers_a_last_user_message_and_refuses_an_empty_chat(app, store):
    conversation = store.new(OWNER)
    assert "empty" in last(chat_with(app, store).regenerate(conversation, greedy(4))).error
    conversation.append("user", "Hello?")
    store.save(conversation)
    final = last(chat_with(app, store).regenerate(conversation, greedy(6)))
    assert [m.role for m in store.load(OWNER, conversation.id).messages] == ["user", "assistant"]
    assert store.load(OWNER, conversation.id).messages[-1].content == final.text


@pytest.mark.slow
def test_a_failed_regeneration_keeps_the_reply_it_would_have_replaced(app, store):
    conversation = said(store, ("Hi", "Hello there."))
    final = last(chat_with(app, store).regenerate(conversation, greedy(4), TurnOptions(system="x" * 2_000_000)))
    assert "longer than" in final.error
    saved = store.load(OWNER, conversation.id).messages[-1]
    assert saved.content == "Hello there." and len(saved.versions) == 1


# --------------------------------------------------------------------------- continue, start with, impersonate


@pytest.mark.slow
def test_continue_extends_the_last_reply_from_where_it_stopped(app, store):
    conversation = store.new(OWNER)
    first = last(chat_with(app, store).turn(conversation, "Write a long poem.", greedy(6, ban_eos_token=True)))
    final = last(chat_with(app, store).continue_reply(conversation, greedy(6, ban_eos_token=True)))
    assert final.error is None
    assert final.text.startswith(first.text) and len(final.text) > len(first.text)
    assert final.prompt.text.endswith("<start_of_turn>model\n" + first.text), "the reply is open, not closed"
    saved = store.load(OWNER, conversation.id).messages
    assert [m.role for m in saved] == ["user", "assistant"] and saved[-1].content == final.text
    assert "tokens" in saved[-1].stats


@pytest.mark.slow
def test_continue_needs_a_reply(app, store):
    conversation = store.new(OWNER)
    assert "no reply to continue" in last(chat_with(app, store).continue_reply(conversation, greedy(4))).error


@pytest.mark.slow
def test_start_reply_with_makes_the_reply_begin_with_the_text_and_keeps_it(app, store):
    conversation = store.new(OWNER)
    final = last(
        chat_with(app, store).turn(conversation, "Greet me.", greedy(8), TurnOptions(start_with="Dear friend,"))
    )
    assert final.prompt.text.endswith("<start_of_turn>model\nDear friend,")
    assert final.text.startswith("Dear friend,") and len(final.text) > len("Dear friend,")
    assert store.load(OWNER, conversation.id).messages[-1].content == final.text


@pytest.mark.slow
def test_impersonate_writes_the_users_next_message_and_saves_nothing(app, store):
    conversation = said(store, ("What is your favourite colour?", "Blue. And yours?"))
    before = store.path(OWNER, conversation.id).read_bytes()
    final = last(app.chat.impersonate(conversation, greedy(12, ban_eos_token=True), TurnOptions(start_with="I think")))
    assert final.error is None
    assert final.prompt.text.endswith("<start_of_turn>user\nI think"), "a user turn is opened for the model"
    assert final.text.startswith("I think") and len(final.text) > len("I think")
    assert "<start_of_turn>" not in final.text and "<end_of_turn>" not in final.text
    assert store.path(OWNER, conversation.id).read_bytes() == before


@pytest.mark.slow
def test_impersonation_stops_where_the_template_closes_the_users_turn(app):
    info = app.engine.info
    prompt = render_prompt(
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}], info, impersonate=True
    )
    assert prompt.text.endswith("<start_of_turn>model\nYo<end_of_turn>\n<start_of_turn>user\n")
    assert "<end_of_turn>" in prompt.stop
    plain = render_prompt([{"role": "user", "content": "Hi"}], info, choice="plain", impersonate=True)
    assert plain.text == "User: Hi\nUser: " and plain.stop == ["\nAssistant:", info.eos_token]


# --------------------------------------------------------------------------- remove, edit


@pytest.mark.slow
def test_remove_last_removes_the_last_exchange_and_saves(app, store):
    conversation = said(store, ("one", "1"), ("two", "2"))
    removed = remove_last(store, conversation)
    assert [m.content for m in removed] == ["two", "2"]
    assert [m.content for m in store.load(OWNER, conversation.id).messages] == ["one", "1"]
    remove_last(store, conversation)
    with pytest.raises(HistoryError, match="empty"):
        remove_last(store, conversation)


@pytest.mark.slow
def test_editing_a_middle_message_drops_what_followed_and_regenerates_from_there(app, store):
    conversation = said(store, ("My cat is Tom.", "Nice."), ("My dog is Rex.", "Cool."), ("Bye.", "Bye!"))
    edit_message(store, conversation, 2, "My dog is Max.")
    assert [m.content for m in store.load(OWNER, conversation.id).messages] == [
        "My cat is Tom.",
        "Nice.",
        "My dog is Max.",
    ]
    final = last(chat_with(app, store).regenerate(conversation, greedy(6)))
    assert final.prompt.text.endswith("My dog is Max.<end_of_turn>\n<start_of_turn>model\n")
    assert "Rex" not in final.prompt.text and "Bye" not in final.prompt.text
    saved = store.load(OWNER, conversation.id).messages
    assert [m.role for m in saved] == ["user", "assistant", "user", "assistant"]
    assert saved[-1].content == final.text


def test_an_edited_reply_becomes_a_new_version(store):
    conversation = said(store, ("Hi", "Helo"))
    edit_message(store, conversation, 1, "Hello")
    assert version_label(conversation) == "2/2"
    assert store.load(OWNER, conversation.id).messages[1].content == "Hello"
    with pytest.raises(HistoryError):
        edit_message(store, conversation, 1, "   ")
    with pytest.raises(HistoryError):
        edit_message(store, conversation, 7, "x")


# --------------------------------------------------------------------------- context


def long_chat(store: HistoryStore, turns: int = 12):
    """Turns of ~120 tokens each: together far beyond the 1,024-token context."""
    pairs = [
        (f"Question {i}: " + "tell me about the sea " * 20, f"Answer {i}: " + "the sea is wide " * 20)
        for i in range(turns)
    ]
    return said(store, *pairs)


@pytest.mark.slow
def test_a_long_chat_drops_its_oldest_turns_but_keeps_the_system_prompt(app, store):
    conversation = long_chat(store)
    conversation.append("user", "The newest question?")
    messages = prompt_messages(conversation, "SYSTEM: you are a sailor.")
    untrimmed = render_prompt(messages, app.engine.info).text
    assert app.engine.count_tokens(untrimmed) > N_CTX

    plan = plan_prompt(app.engine, messages, reserve=200)
    assert plan.dropped > 0 and plan.tokens <= N_CTX - 200
    assert plan.text.startswith("<start_of_turn>user\nSYSTEM: you are a sailor.\n\nQuestion ")
    assert plan.text.endswith("The newest question?<end_of_turn>\n<start_of_turn>model\n")
    assert "Question 0:" not in plan.text, "the oldest turn went first"
    assert "Answer 11:" in plan.text, "the newest turns stay"
    assert plan.tokens == len(app.engine.loaded.model.tokenize(plan.text)), "counted by the model's tokenizer"
    assert f"{plan.dropped} oldest messages left out" in plan.summary()
    # the turns left out are whole: the first message after the system prompt is a question
    kept = plan.text.split("SYSTEM: you are a sailor.\n\n", 1)[1]
    assert kept.startswith("Question ")

    final = last(app.chat.stream(messages, greedy(4)))
    assert final.error is None, "without trimming this prompt would not fit"
    assert final.usage.prompt_tokens == final.prompt.tokens, "the count shown is the count the model saw"


@pytest.mark.slow
def test_a_newest_message_too_long_for_the_context_is_a_clear_error(app, store):
    conversation = store.new(OWNER)
    final = last(chat_with(app, store).turn(conversation, "word " * 3000, greedy(3)))
    assert "context holds 1,024" in final.error and "newest message" in final.error
    assert store.load(OWNER, conversation.id).messages == []


@pytest.mark.slow
def test_the_token_count_line_measures_the_next_prompt(app, store):
    conversation = said(store, ("Hi", "Hello!"))
    summary = prompt_summary(app.chat, conversation, TurnOptions(system="Be brief."), draft="How are you?")
    plan = preview_prompt(app.chat, conversation, TurnOptions(system="Be brief."), "How are you?")
    assert plan.text.endswith("How are you?<end_of_turn>\n<start_of_turn>model\n")
    assert summary == f"prompt {app.engine.count_tokens(plan.text):,} / 1,024 tokens"
    assert prompt_summary(app.chat, store.new(OWNER)) == "prompt 0 / 1,024 tokens"


# --------------------------------------------------------------------------- templates per model


@pytest.mark.slow
def test_a_template_chosen_for_a_model_is_remembered_and_used(app, tmp_path):
    prefs = TemplatePrefs(tmp_path / "user_data")
    name = app.engine.info.name
    assert prefs.get(name) is None
    assert prefs.set(name, "ChatML") == "chatml"
    assert TemplatePrefs(tmp_path / "user_data").get(name) == "chatml", "kept on disk"
    data = json.loads((tmp_path / "user_data" / "model_templates.json").read_text())
    assert data == {"schema_version": 1, "templates": {name: "chatml"}}

    final = last(app.chat.stream([{"role": "user", "content": "Hi"}], greedy(3), TurnOptions(template=prefs.get(name))))
    assert final.prompt.template == "chatml" and final.prompt.chosen_by == "user choice"
    assert final.prompt.text.endswith("<|im_start|>assistant\n")
    assert template_status(app.engine.info, "chatml").chosen_by == "user choice"
    auto = template_status(app.engine.info, None)
    assert (auto.name, auto.chosen_by) == ("gemma", "known for architecture gemma3")

    prefs.set(name, "auto")
    assert prefs.get(name) is None


@pytest.mark.parametrize("model", ["../x", "/etc/passwd", "a\x00b", "con", "..", ""])
def test_bad_model_names_for_a_template_choice_are_refused_and_nothing_is_written(tmp_path, model):
    prefs = TemplatePrefs(tmp_path)
    with pytest.raises(UnsafeName):
        prefs.set(model, "chatml")
    assert not prefs.path.exists()


@pytest.mark.parametrize("template", ["../models", "/etc/passwd", "no-such-template"])
def test_bad_or_unknown_template_names_are_refused(tmp_path, template):
    prefs = TemplatePrefs(tmp_path)
    with pytest.raises(ValueError):
        prefs.set("model", template)
    assert not prefs.path.exists()


def test_a_damaged_choices_file_is_moved_aside_not_overwritten(tmp_path):
    prefs = TemplatePrefs(tmp_path)
    prefs.path.write_text("{not json")
    assert prefs.get("model") is None
    [aside] = tmp_path.glob("model_templates.json.corrupt-*")
    assert aside.read_text() == "{not json"
    prefs.set("model", "gemma")
    assert prefs.get("model") == "gemma"


def test_a_models_yaml_rule_brings_its_default_settings(tmp_path):
    presets = tmp_path / "presets"
    (presets / "templates").mkdir(parents=True)
    (presets / "templates" / "chatml.yaml").write_text("instruction_template: |-\n  {{ messages[0]['content'] }}\n")
    (presets / "models.yaml").write_text(
        "rules:\n  - name: hermes\n    template: chatml\n    settings: {temperature: 0.3, top_k: 7, colour: blue}\n"
    )
    status = template_status(ModelInfo("open-hermes-7b", "llama.cpp", "x.gguf", "llama"), presets=presets)
    assert status.name == "chatml" and status.chosen_by.startswith("presets/models.yaml rule")
    assert (status.defaults.temperature, status.defaults.top_k) == (0.3, 7)
    assert status.settings == {"temperature": 0.3, "top_k": 7}, "the settings the page sets after loading"
    assert status.defaults.max_new_tokens == default_params().max_new_tokens, "the rest stay as they were"
    assert "colour" in status.note and "ignored" in status.note


# --------------------------------------------------------------------------- conversations from the page, files


@pytest.mark.parametrize("bad", ["../../etc/passwd", "/etc/passwd", "a/b", "x\x00y", "con", ".hidden", "a\\b"])
def test_conversation_ids_from_the_page_go_through_the_one_validator(store, bad):
    with pytest.raises(UnsafeName):
        store.path(OWNER, bad)
    app = App(Settings(), None, None, store, None)  # only the history store is used by these two
    fresh = continue_conversation(app, bad)
    assert fresh.id != bad and fresh.messages == [], "a bad id never reaches the disk: a new chat starts"
    assert open_conversation(app, bad).id != bad
    assert not any(p.name.startswith("passwd") for p in store.root.rglob("*"))


def test_export_then_import_gives_the_same_conversation(store, tmp_path):
    conversation = said(store, ("Hi", "Hello"))
    path = export_conversation(store, OWNER, conversation.id, tmp_path / "downloads")
    assert json.loads(path.read_text())["messages"][0]["content"] == "Hi"
    other = HistoryStore(tmp_path / "elsewhere")
    imported = import_conversation(other, OWNER, path)
    assert imported.chat_messages() == conversation.chat_messages()


def test_a_text_generation_webui_history_imports(store, tmp_path):
    upload = tmp_path / "tgw.json"
    upload.write_text(json.dumps({"internal": [["Hi", "Hello!"]], "visible": [["Hi", "Hello!"]]}))
    imported = import_conversation(store, OWNER, upload)
    assert store.load(OWNER, imported.id).chat_messages() == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
    ]


@pytest.mark.parametrize("content", [b"not json at all", b"[1, 2, 3]", b'{"messages": "nope"}', b"\xff\xfe"])
def test_an_import_that_is_not_a_conversation_is_a_clear_error_and_writes_nothing(store, tmp_path, content):
    upload = tmp_path / "upload.json"
    upload.write_bytes(content)
    with pytest.raises(HistoryError, match="not valid JSON|not a conversation"):
        import_conversation(store, OWNER, upload)
    assert not store.root.exists() or not any(store.root.rglob("*.json"))


# --------------------------------------------------------------------------- notebook


@pytest.mark.slow
def test_the_notebook_continues_its_text_raw_and_saves_it(app, tmp_path):
    notebook = NotebookStore(tmp_path)
    text = "The three primary colours are"
    replies = list(generate(app.chat, notebook, text, greedy(8)))
    final = replies[-1]
    assert final.done and final.error is None
    assert all(r.text.startswith(text) for r in replies)
    assert len(final.text) > len(text)
    assert final.usage.prompt_tokens == app.engine.count_tokens(text), "raw: no chat format was added"
    assert NotebookStore(tmp_path).load() == final.text, "restored after a restart"
    assert token_count(app.engine, final.text) == f"{app.engine.count_tokens(final.text):,} / 1,024 tokens"


@pytest.mark.slow
def test_a_stopped_notebook_keeps_what_was_written(app, tmp_path):
    notebook = NotebookStore(tmp_path)
    cancel = CancelToken()
    for reply in generate(app.chat, notebook, "Once upon a time", greedy(400, ban_eos_token=True), cancel):
        if len(reply.text) > len("Once upon a time") + 10:
            cancel.cancel()
    assert reply.finish_reason == "cancelled"
    assert notebook.load() == reply.text and len(reply.text) < 400 * 8


@pytest.mark.slow
def test_an_empty_notebook_is_refused(app, tmp_path):
    final = last(generate(app.chat, NotebookStore(tmp_path), "   ", greedy(3)))
    assert "write something" in final.error
    assert NotebookStore(tmp_path).load() == ""


def test_damaged_history_files_found_at_start_are_reported_for_the_page(store):
    good = said(store, ("Hi", "Hello"))
    (store.root / OWNER / "broken.json").write_text('{"schema_version": 1, "messages": [')
    app = App(Settings(), None, None, store, None)
    [notice] = startup_problems(app)
    assert notice.startswith("instruct/broken.json:") and "moved to broken.json.corrupt-" in notice
    assert [c.id for c in store.list(OWNER).conversations] == [good.id], "the others still list"
