"""The chat path shared by UI and CLI: prompt format, streaming replies, throttled updates, stats."""

from __future__ import annotations

import time

import pytest
from conftest import greedy

from backends.base import ModelInfo, Usage
from webui.chat.reply import Reply, format_stats, throttle
from webui.chat.service import TurnOptions
from webui.templates.render import build_chat_prompt
from webui.ui.chat_tab import display_messages

GEMMA = ModelInfo(name="g", loader="llama.cpp", path="g.gguf", architecture="gemma3")
OTHER = ModelInfo(name="x", loader="llama.cpp", path="x.gguf", architecture="llama")


def test_gemma_turn_format_folds_the_system_prompt_into_the_first_user_turn():
    prompt = build_chat_prompt(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Name a colour."},
        ],
        GEMMA,
    )
    assert prompt.text == (
        "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello!<end_of_turn>\n"
        "<start_of_turn>user\nName a colour.<end_of_turn>\n"
        "<start_of_turn>model\n"
    )
    assert "<end_of_turn>" in prompt.stop
    assert prompt.template == "gemma"


def test_other_architectures_get_a_plain_fallback_that_stops_at_the_next_user_turn():
    prompt = build_chat_prompt([{"role": "user", "content": "Hi"}], OTHER)
    assert prompt.text == "User: Hi\nAssistant:"
    assert prompt.stop == ["\nUser:"]


def test_unknown_roles_are_refused():
    with pytest.raises(ValueError, match="role"):
        build_chat_prompt([{"role": "wizard", "content": "x"}], GEMMA)


@pytest.mark.slow
def test_a_chat_reply_streams_and_ends_with_stats(make_app):
    app = make_app()
    app.start()
    replies = list(app.chat.stream([{"role": "user", "content": "Say hello."}], greedy(12)))
    assert len(replies) >= 2
    final = replies[-1]
    assert final.done and final.error is None
    assert all(r.text.startswith(prev.text) for prev, r in zip(replies, replies[1:], strict=False))  # cumulative
    assert "<end_of_turn>" not in final.text and "<start_of_turn>" not in final.text
    assert final.usage.completion_tokens >= 1
    assert final.usage.prompt_tokens > 5


@pytest.mark.slow
def test_completion_errors_become_a_final_reply_not_an_exception(make_app):
    app = make_app()
    [reply] = list(app.chat.complete("hi", greedy(3)))  # nothing loaded yet
    assert reply.done and reply.error == "no model is loaded"
    app.start()
    [reply] = list(app.chat.stream([{"role": "user", "content": "x" * 1_000_001}], greedy(3)))
    assert "longer than" in reply.error
    final = list(app.chat.complete("word " * 5000, greedy(3)))[-1]
    assert "context holds" in final.error


def test_throttle_coalesces_a_fast_stream_and_always_delivers_the_last_update():
    """A 1000 tok/s stream reaches the page at most ~20 times a second, with nothing lost."""

    def fast():
        text = ""
        for _ in range(600):
            text += "x"
            time.sleep(0.001)
            yield Reply(text=text)
        yield Reply(text=text, done=True)

    start = time.perf_counter()
    sent = list(throttle(fast(), 0.05))
    elapsed = time.perf_counter() - start
    assert sent[-1].done and sent[-1].text == "x" * 600
    assert len(sent) <= elapsed / 0.05 + 2
    assert len(sent) < 601 / 4  # far fewer updates than tokens


def test_throttle_passes_a_slow_stream_through():
    def slow():
        for i in range(3):
            time.sleep(0.06)
            yield Reply(text="x" * (i + 1))

    assert [r.text for r in throttle(slow(), 0.05)] == ["x", "xx", "xxx"]


def test_stats_line_reads_like_the_seed_table():
    usage = Usage(prompt_tokens=5, completion_tokens=128, ttft_s=0.045, total_s=1.545)
    assert format_stats(usage) == "time to first token 45 ms | 128 tokens | 84.7 tok/s"
    assert format_stats(usage, "cancelled").endswith("| stopped")
    assert format_stats(usage, "length").endswith("| hit the token limit")
    assert format_stats(None) == ""


def test_the_chat_shows_each_reply_with_its_stats_line_and_the_reply_in_flight():
    history = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello", "stats": "time to first token 5 ms | 2 tokens | 9.0 tok/s"},
    ]
    shown = display_messages(history, Reply(text="partial"))
    assert shown[0] == {"role": "user", "content": "Hi"}
    assert shown[1] == {"role": "assistant", "content": "Hello",
                        "metadata": {"log": "time to first token 5 ms | 2 tokens | 9.0 tok/s"}}  # fmt: skip
    assert shown[2] == {"role": "assistant", "content": "partial"}


@pytest.mark.slow
def test_a_chat_turn_saves_the_message_before_generating_and_the_reply_with_its_stats(make_app):
    app = make_app()
    app.start()
    conv = app.history.new("instruct")
    turn = app.chat.turn(conv, "Hello there.", greedy(6))
    first = next(turn)  # the reply has begun: the user's message is already on disk
    assert not first.done
    on_disk = app.history.load("instruct", conv.id)
    assert [m.content for m in on_disk.messages] == ["Hello there."]
    final = list(turn)[-1]
    saved = app.history.load("instruct", conv.id).ui_history()
    assert [m["role"] for m in saved] == ["user", "assistant"]
    assert saved[1]["content"] == final.text
    assert saved[1]["stats"].startswith("time to first token")


@pytest.mark.slow
def test_a_turn_that_fails_before_any_text_takes_its_message_back_out(make_app):
    app = make_app()
    app.start()
    conv = app.history.new("instruct")
    final = list(app.chat.turn(conv, "word " * 5000, greedy(3)))[-1]
    assert "context holds" in final.error
    assert app.history.load("instruct", conv.id).messages == []
    assert list(app.chat.turn(conv, "   ", greedy(3)))[-1].error  # empty: refused


@pytest.mark.slow
def test_a_turn_stopped_mid_reply_keeps_what_was_said(make_app):
    from backends.base import CancelToken

    app = make_app()
    app.start()
    conv = app.history.new("instruct")
    cancel = CancelToken()
    for reply in app.chat.turn(conv, "Tell a long story.", greedy(500, ban_eos_token=True), TurnOptions(cancel=cancel)):
        if len(reply.text) > 10:
            cancel.cancel()
    saved = app.history.load("instruct", conv.id).ui_history()
    assert saved[-1]["role"] == "assistant" and len(saved[-1]["content"]) > 10
    assert saved[-1]["stats"].endswith("stopped")
