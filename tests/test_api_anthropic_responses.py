"""Anthropic Messages and OpenAI Responses on the embedded gemma, over a real socket, with the official clients
unchanged (slow tier): the real template and tokenizer (count_tokens equals the reply's usage), greedy replies
that agree whole and streamed, and a client that leaves mid-stream has its generation cancelled."""

from __future__ import annotations

import time

import anthropic
import httpx
import pytest
from api_fixtures import GEMMA, serve

pytestmark = pytest.mark.slow
GREEDY = {"temperature": 0}  # the 2026 anthropic SDK sends sampling fields through extra_body
USER = [{"role": "user", "content": "Name three colours."}]


@pytest.fixture(scope="module")
def served(models_dir, tmp_path_factory):
    with serve(models_dir, tmp_path_factory.mktemp("messages-user-data")) as s:
        yield s


def claude(served) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=served.url, api_key="unused", max_retries=0, timeout=300)


def test_messages_whole_and_streamed_agree_and_count_tokens_matches_usage(served):
    client = claude(served)
    whole = client.messages.create(model=GEMMA, max_tokens=12, system="Answer briefly.", messages=USER,
                                   extra_body=GREEDY)  # fmt: skip
    text = whole.content[0].text
    assert text.strip() and whole.stop_reason in ("end_turn", "max_tokens") and 0 < whole.usage.output_tokens <= 12
    counted = client.messages.count_tokens(model=GEMMA, system="Answer briefly.", messages=USER).input_tokens
    assert whole.usage.input_tokens == counted  # gemma's template and tokenizer, BOS included
    with client.messages.stream(model=GEMMA, max_tokens=12, system="Answer briefly.", messages=USER,
                                extra_body=GREEDY) as stream:  # fmt: skip
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed == text and final.usage.output_tokens == whole.usage.output_tokens


def test_responses_whole_and_streamed_agree(served):
    client = served.client()
    whole = client.responses.create(model=GEMMA, input=USER, instructions="Answer briefly.", max_output_tokens=12,
                                    temperature=0)  # fmt: skip
    assert whole.output_text.strip() and whole.usage.output_tokens <= 12
    events = list(client.responses.create(model=GEMMA, input=USER, instructions="Answer briefly.",
                                          max_output_tokens=12, temperature=0, stream=True))  # fmt: skip
    streamed = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert streamed == whole.output_text == events[-1].response.output_text
    assert events[-1].response.usage.input_tokens == whole.usage.input_tokens


def test_a_messages_client_that_leaves_mid_stream_has_its_generation_cancelled(served):
    body = {"model": GEMMA, "max_tokens": 1000, "messages": [{"role": "user", "content": "Tell a long story."}],
            "stream": True, "temperature": 0}  # fmt: skip
    with httpx.stream("POST", f"{served.url}/v1/messages", json=body, timeout=300) as r:
        lines = r.iter_lines()
        while not next(lines).startswith("event: content_block_delta"):
            pass
    deadline = time.monotonic() + 120
    record = None
    while time.monotonic() < deadline and record is None:
        found = httpx.get(f"{served.url}/v1/internal/generations").json()["data"]
        record = next((g for g in found if g["id"].startswith("msg_") and g["disconnected"]), None)
        time.sleep(0.05)
    assert record is not None, "the abandoned generation was never cancelled"
    assert record["finish_reason"] == "cancelled" and record["completion_tokens"] < 1000
