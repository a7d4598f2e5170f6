"""The chat page's stream split (webui.chat.live): while a reply only grows, the page gets its text alone."""

from __future__ import annotations

from webui.chat.live import LiveSplit, reply_only

HISTORY = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello", "metadata": {"log": "1 tok"}}]


def pending(text: str) -> list[dict]:
    return [*HISTORY, {"role": "user", "content": "More?"}, {"role": "assistant", "content": text}]


def test_a_reply_that_grows_goes_alone_and_anything_else_goes_whole():
    assert reply_only(pending("…"), pending("Sure")) == "Sure"
    assert reply_only(pending("Sure"), pending("Sure, <b>&amp;</b> ✓")) == "Sure, <b>&amp;</b> ✓"
    assert reply_only(None, pending("Sure")) is None  # the page holds nothing yet
    assert reply_only(pending("Sure")[:-1], pending("Sure")) is None  # a message was added
    edited = [{"role": "user", "content": "Hi!"}, *pending("Sure")[1:]]
    assert reply_only(pending("Sure"), edited) is None  # an earlier message changed
    with_stats = pending("Sure")
    with_stats[-1] = {**with_stats[-1], "metadata": {"log": "2 tokens"}}
    assert reply_only(pending("Sure"), with_stats) is None  # the stats line comes with the whole chat
    assert reply_only(HISTORY[:1], [{"role": "user", "content": "Hi there"}]) is None  # not a reply


def test_a_stream_sends_the_chat_whole_first_and_last_and_the_text_between():
    live = LiveSplit()
    first = pending("…")
    assert live.split(first, streaming=True) == (first, "")  # the chat with the pending bubble, carrier empty
    assert live.split(pending("Su"), streaming=True) == (None, "Su")
    assert live.split(pending("Sure"), streaming=True) == (None, "Sure")
    assert live.split(None, streaming=True) == (None, None)  # an update without a chat leaves both
    final = pending("Sure.")
    assert live.split(final, streaming=False) == (final, "")  # the end: whole, and the carrier emptied
    assert live.held is final


def test_the_end_shows_the_whole_text_at_once_where_the_page_holds_the_bubble():
    live = LiveSplit()
    live.split(pending("…"), streaming=True)
    live.split(pending("Su"), streaming=True)
    final = pending("Sure.")
    final[-1] = {**final[-1], "metadata": {"log": "5 tokens"}}
    assert live.finishing(final) == "Sure."  # before the whole chat, which also carries the stats line
    assert LiveSplit().finishing(final) is None  # a page that holds nothing yet gets the whole chat only
    assert live.finishing(pending("…")[:-1]) is None  # no reply came (the message went back into the box)
