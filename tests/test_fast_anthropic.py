"""Anthropic's Messages API (``/v1/messages``, ``/v1/messages/count_tokens``) through the official ``anthropic``
client, unchanged, on scripted fake models (fast tier): the real FastAPI app in process, with the client's
HTTP going to it through Starlette's TestClient (an httpx client)."""

from __future__ import annotations

import json

import anthropic
import pytest
from conftest import FAKE_HELLO, write_fake
from fastapi.testclient import TestClient

from webui.api.auth import protect
from webui.chat.prompting import render_prompt
from webui.server import build_api_server

USER = [{"role": "user", "content": "Tell me about the sea."}]


def claude(server, api_key: str = "unused") -> anthropic.Anthropic:
    """The official client, talking to ``server`` in process."""
    return anthropic.Anthropic(base_url="http://localhost", api_key=api_key, max_retries=0,
                               http_client=TestClient(server))  # fmt: skip


@pytest.fixture
def served(fake_app):
    return build_api_server(fake_app)


def test_messages_create_returns_anthropics_message_shape(served):
    message = claude(served).messages.create(model="hello", max_tokens=100, messages=USER)
    assert message.id.startswith("msg_") and message.type == "message" and message.role == "assistant"
    assert [(b.type, b.text) for b in message.content] == [("text", FAKE_HELLO)]
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert message.usage.output_tokens == len(FAKE_HELLO.split())
    assert message.usage.input_tokens > len("Tell me about the sea.")  # the template's text is counted too
    assert message.model == "hello"


def test_max_tokens_and_stop_sequences_end_the_reply_and_say_why(served):
    client = claude(served)
    short = client.messages.create(model="hello", max_tokens=2, messages=USER)
    assert short.content[0].text == "Hello there," and short.stop_reason == "max_tokens"
    assert short.usage.output_tokens == 2
    stopped = client.messages.create(model="hello", max_tokens=50, messages=USER, stop_sequences=["zzz", "ere, f"])
    assert stopped.content[0].text == "Hello th"
    assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == "ere, f"


def test_a_stream_sends_anthropics_events_in_order_and_the_same_text(served):
    with claude(served).messages.stream(model="hello", max_tokens=100, messages=USER) as stream:
        deltas = [e.delta.text for e in stream if e.type == "content_block_delta"]
        final = stream.get_final_message()
    assert "".join(deltas) == FAKE_HELLO and len(deltas) > 1  # word by word
    assert final.content[0].text == FAKE_HELLO and final.stop_reason == "end_turn"
    assert final.usage.output_tokens == len(FAKE_HELLO.split()) and final.usage.input_tokens > 0
    # the raw events, in order (the SDK hides pings)
    request = {"model": "hello", "max_tokens": 100, "messages": USER, "stream": True}
    with TestClient(served) as http, http.stream("POST", "/v1/messages", json=request) as r:
        lines = list(r.iter_lines())
    names = [line[len("event: ") :] for line in lines if line.startswith("event: ")]
    datas = [json.loads(line[len("data: ") :]) for line in lines if line.startswith("data: ")]
    assert [d["type"] for d in datas] == names  # each event's data names its type
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(names[3:-3]) == {"content_block_delta"}
    assert datas[0]["message"]["usage"]["input_tokens"] == datas[-2]["usage"]["input_tokens"] > 0
    assert datas[-2]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}


def test_text_stream_of_a_stopped_reply_ends_before_the_stop_sequence(served):
    with claude(served).messages.stream(model="hello", max_tokens=100, messages=USER,
                                        stop_sequences=["friend"]) as stream:  # fmt: skip
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Hello there, " and final.stop_reason == "stop_sequence" and final.stop_sequence == "friend"


def test_count_tokens_counts_the_rendered_prompt_with_system_and_blocks(served, fake_app):
    """The count is the model's template rendered with the system text and the joined text blocks, counted by
    the model's tokenizer (the fake's: one token per UTF-8 byte)."""
    client = claude(served)
    blocks = [{"type": "text", "text": "first block"}, {"type": "text", "text": "last block"}]
    count = client.messages.count_tokens(model="hello", system=[{"type": "text", "text": "Be brief."}],
                                         messages=[{"role": "user", "content": blocks}]).input_tokens  # fmt: skip
    expected = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "first block\nlast block"}]
    text = render_prompt(expected, fake_app.engine.info).text
    assert "Be brief." in text and count == len(text.encode())
    plain = client.messages.count_tokens(model="hello", messages=USER).input_tokens
    assert plain == len(render_prompt(USER, fake_app.engine.info).text.encode()) < count
    message = client.messages.create(model="hello", max_tokens=50, system="Be brief.", messages=USER)
    counted = client.messages.count_tokens(model="hello", system="Be brief.", messages=USER).input_tokens
    assert message.usage.input_tokens == counted  # what the reply's usage says is what count_tokens predicted


def test_an_assistant_prefill_is_continued_and_not_sent_back(make_fake_app, fake_models):
    write_fake(fake_models, "hello", reply="there, friend.")
    app = make_fake_app("hello.fake")
    message = claude(build_api_server(app)).messages.create(
        model="hello", max_tokens=50, messages=[*USER, {"role": "assistant", "content": "Well,"}]
    )
    assert message.content[0].text == "there, friend."  # the fake's reply: the prefill itself is not repeated


def test_sampling_fields_and_presets_take_the_same_policy_as_the_openai_routes(make_fake_app, fake_models):
    """The 2026 SDK has no temperature / top_p / top_k arguments any more: they travel in extra_body, as do
    SamplingParams names (min_p) and our ``preset``, resolved by the one policy (preset, then the request)."""
    write_fake(fake_models, "params", echo_params=True)
    app = make_fake_app("params.fake")
    client = claude(build_api_server(app))
    sampling = {"temperature": 0.5, "top_k": 7, "top_p": 0.9, "min_p": 0.2}
    message = client.messages.create(model="params", max_tokens=300, messages=USER, extra_body=sampling)
    got = json.loads(message.content[0].text)
    assert {k: got[k] for k in sampling} == sampling and got["max_new_tokens"] == 300
    balanced = client.messages.create(model="params", max_tokens=300, messages=USER,
                                      extra_body={"preset": "Balanced", "top_k": 3})  # fmt: skip
    got = json.loads(balanced.content[0].text)
    assert (got["temperature"], got["min_p"], got["top_k"]) == (0.7, 0.05, 3)  # the preset's, then the request's
    with pytest.raises(anthropic.NotFoundError) as caught:
        client.messages.create(model="params", max_tokens=5, messages=USER, extra_body={"preset": "no-such"})
    assert caught.value.body["error"]["type"] == "not_found_error"


def test_wrong_key_is_an_authentication_error_and_x_api_key_works(fake_app):
    fake_app.settings.api_key = "sekrit"
    server = build_api_server(fake_app)
    protect(server, fake_app.settings)
    with pytest.raises(anthropic.AuthenticationError) as caught:
        claude(server, api_key="wrong").messages.create(model="hello", max_tokens=10, messages=USER)
    assert caught.value.body["type"] == "error" and caught.value.body["error"]["type"] == "authentication_error"
    message = claude(server, api_key="sekrit").messages.create(model="hello", max_tokens=10, messages=USER)
    assert message.content[0].text == FAKE_HELLO  # the SDK sends x-api-key


@pytest.mark.parametrize(
    ("request_fields", "message_part"),
    [
        ({"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]}, "image blocks"),
        ({"tools": [{"name": "f", "input_schema": {"type": "objekt"}}]}, "not a valid JSON Schema"),
        (
            {
                "messages": [
                    *USER,
                    {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]},
                ]
            },
            "send its tool_result",
        ),
        ({"model": "no-such-model"}, "not found"),
        ({"messages": [{"role": "assistant", "content": "hi"}]}, "user role"),
    ],
)
def test_bad_requests_are_bad_request_errors_in_anthropics_shape(served, request_fields, message_part):
    fields = {"model": "hello", "max_tokens": 10, "messages": USER, **request_fields}
    with pytest.raises(anthropic.APIStatusError) as caught:
        claude(served).messages.create(**fields)
    body = caught.value.body
    assert body["type"] == "error" and message_part in body["error"]["message"]
    expected = 404 if "not found" in message_part else 400
    assert caught.value.status_code == expected
    if expected == 400:
        assert isinstance(caught.value, anthropic.BadRequestError)
        assert body["error"]["type"] == "invalid_request_error"


def test_a_missing_max_tokens_is_a_bad_request_in_anthropics_shape(served):
    with TestClient(served) as http:
        r = http.post("/v1/messages", json={"model": "hello", "messages": USER})
        assert r.status_code == 400
        assert r.json() == {"type": "error", "error": {"type": "invalid_request_error",
                                                       "message": "max_tokens: Field required"}}  # fmt: skip
        assert http.post("/v1/chat/completions", json={"messages": "x"}).json()["error"]["type"]  # OpenAI's shape


def test_a_crash_midway_is_an_api_error_whole_and_an_error_event_streamed(make_fake_app, fake_models):
    write_fake(fake_models, "crashy", reply="one two three four five", crash="token:2")
    client = claude(build_api_server(make_fake_app("crashy.fake")))
    with pytest.raises(anthropic.InternalServerError) as caught:
        client.messages.create(model="crashy", max_tokens=50, messages=USER)
    assert caught.value.body["error"]["type"] == "api_error" and "crashed" in caught.value.body["error"]["message"]
    pieces: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as caught:  # noqa: PT012
        with client.messages.stream(model="crashy", max_tokens=50, messages=USER) as stream:
            pieces.extend(stream.text_stream)
    assert "".join(pieces) == "one two"  # what came before the crash, then the error event
    assert "crashed" in str(caught.value)


def test_a_prompt_over_the_context_and_unknown_paths_answer_in_anthropics_shape(make_fake_app, fake_models):
    write_fake(fake_models, "tiny", reply="hi", context_length=64)
    server = build_api_server(make_fake_app("tiny.fake"))
    with pytest.raises(anthropic.BadRequestError) as caught:
        claude(server).messages.create(model="tiny", max_tokens=5, messages=[{"role": "user", "content": "x" * 500}])
    assert "context" in caught.value.body["error"]["message"]
    with TestClient(server) as http:
        wrong_method = http.get("/v1/messages")
        no_route = http.post("/v1/messages/nothing", json={})
    assert wrong_method.status_code == 405 and wrong_method.json()["error"]["type"] == "invalid_request_error"
    assert no_route.status_code == 404 and no_route.json() == {
        "type": "error", "error": {"type": "not_found_error", "message": "there is no /v1/messages/nothing in this API"}
    }  # fmt: skip
