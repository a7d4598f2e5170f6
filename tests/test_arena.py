"""The arena (issue 16): one message to two models, one after the other, keep one reply; on the fake loader."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import FAKE_HELLO, greedy, write_fake

from webui.chat.arena import Round, ask_two, keep
from webui.chat.conversation import INSTRUCT_OWNER
from webui.chat.options import TurnOptions


def run_round(app, conversation, text: str, models: tuple[str, str]) -> Round:
    """Drive an arena round to its end; the last update."""
    rounds = list(ask_two(app, conversation, text, models, greedy(), TurnOptions()))
    assert rounds[-1].done
    return rounds[-1]


def saved_reply(app, conversation) -> dict:
    """The last message as the history file on disk holds it."""
    path = next(Path(app.settings.user_data).rglob(f"{conversation.id}*.json"))
    return json.loads(path.read_text(encoding="utf-8"))["messages"][-1]


def arena_app(make_fake_app, fake_models: Path):
    write_fake(fake_models, "alpha", reply="Alpha says the sky is blue.")
    write_fake(fake_models, "beta", reply="Beta says the sea is green.")
    return make_fake_app("hello.fake")


def test_two_models_reply_and_the_previous_model_is_back(make_fake_app, fake_models: Path) -> None:
    app = arena_app(make_fake_app, fake_models)
    conversation = app.history.new(INSTRUCT_OWNER)
    final = run_round(app, conversation, "What colour?", ("alpha.fake", "beta.fake"))
    a, b = final.sides
    assert (a.model, a.text, a.error) == ("alpha.fake", "Alpha says the sky is blue.", None)
    assert (b.model, b.text, b.error) == ("beta.fake", "Beta says the sea is green.", None)
    assert a.usage.completion_tokens > 0 and b.usage.completion_tokens > 0
    assert "tok/s" in a.stats and a.stats.startswith("alpha.fake |")
    assert final.saved and app.engine.info.name.startswith("hello")
    assert "hello.fake is loaded again" in final.status
    # the model that is back replies as before
    text = "".join(r.text for r in app.chat.stream([{"role": "user", "content": "hi"}], greedy()) if r.done)
    assert text == FAKE_HELLO


def test_keep_b_saves_it_as_the_reply_and_a_as_another_version(make_fake_app, fake_models: Path) -> None:
    app = arena_app(make_fake_app, fake_models)
    conversation = app.history.new(INSTRUCT_OWNER)
    final = run_round(app, conversation, "What colour?", ("alpha.fake", "beta.fake"))
    assert saved_reply(app, conversation)["shown"] == 0  # both saved before the user chooses, A shown
    keep(app, conversation, final.sides[1])
    on_disk = saved_reply(app, conversation)
    versions = [v["content"] for v in on_disk["versions"]]
    assert versions == ["Alpha says the sky is blue.", "Beta says the sea is green."]
    assert on_disk["versions"][on_disk["shown"]]["content"] == "Beta says the sea is green."
    reopened = app.history.load(conversation.owner, conversation.id)
    assert [m["content"] for m in reopened.chat_messages()] == ["What colour?", "Beta says the sea is green."]
    keep(app, reopened, final.sides[0])
    assert app.history.load(conversation.owner, conversation.id).messages[-1].content.startswith("Alpha")


def test_a_side_that_cannot_load_is_left_out(make_fake_app, fake_models: Path) -> None:
    app = arena_app(make_fake_app, fake_models)
    write_fake(fake_models, "broken", crash="load")
    conversation = app.history.new(INSTRUCT_OWNER)
    final = run_round(app, conversation, "What colour?", ("broken.fake", "beta.fake"))
    broken, beta = final.sides
    assert broken.error and "broken.fake" in broken.error and broken.version is None
    assert beta.version == 0 and final.saved
    reply = app.history.load(conversation.owner, conversation.id).messages[-1]
    assert [v.content for v in reply.versions] == ["Beta says the sea is green."]
    assert app.engine.info.name.startswith("hello")


def test_both_failing_takes_the_message_back(make_fake_app, fake_models: Path) -> None:
    app = arena_app(make_fake_app, fake_models)
    conversation = app.history.new(INSTRUCT_OWNER)
    final = run_round(app, conversation, "What colour?", ("missing.fake", "../beta.fake"))
    assert final.error and not final.saved
    assert app.history.load(conversation.owner, conversation.id).messages == []
    assert app.engine.info.name.startswith("hello")
