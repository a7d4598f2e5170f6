"""OpenAI's Responses API (``/v1/responses``, stateless) through the official ``openai`` client, unchanged, on
scripted fake models (fast tier): the real FastAPI app in process, the client's HTTP going to it through
Starlette's TestClient (an httpx client)."""

from __future__ import annotations

import json

import openai
import pytest
from conftest import FAKE_HELLO, write_fake
from fastapi.testclient import TestClient

from webui.server import build_api_server


def gpt(server) -> openai.OpenAI:
    """The official client, talking to ``server`` in process."""
    return openai.OpenAI(base_url="http://localhost/v1", api_key="unused", max_retries=0,
                         http_client=TestClient(server))  # fmt: skip


@pytest.fixture
def served(fake_app):
    return build_api_server(fake_app)


def test_responses_create_returns_the_reply_and_usage(served):
    response = gpt(served).responses.create(model="hello", input="Tell me about the sea.")
    assert response.id.startswith("resp_") and response.object == "response" and response.status == "completed"
    assert response.output_text == FAKE_HELLO
    item = response.output[0]
    assert item.type == "message" and item.role == "assistant" and item.content[0].type == "output_text"
    assert response.usage.output_tokens == len(FAKE_HELLO.split())
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens
    assert response.usage.input_tokens > len("Tell me about the sea.") and response.store is False


def test_a_streamed_response_sends_the_event_types_in_order(served):
    stream = gpt(served).responses.create(model="hello", input="Tell me about the sea.", stream=True)
    events = list(stream)
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]  # fmt: skip
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]  # fmt: skip
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert set(kinds[4:-4]) == {"response.output_text.delta"} and len(deltas) > 1
    assert "".join(deltas) == FAKE_HELLO == events[-4].text
    assert [e.sequence_number for e in events] == list(range(len(events)))
    done = events[-1].response
    assert done.output_text == FAKE_HELLO and done.usage.output_tokens == len(FAKE_HELLO.split())


def test_message_items_instructions_and_sampling_fields_reach_the_model(make_fake_app, fake_models):
    write_fake(fake_models, "params", echo_params=True)
    client = gpt(build_api_server(make_fake_app("params.fake")))
    response = client.responses.create(
        model="params", instructions="Be brief.", temperature=0.4, top_p=0.8, max_output_tokens=200,
        input=[{"role": "developer", "content": "Answer in English."},
               {"role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
               {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hello."}]},
               {"role": "user", "content": "And now?"}],
        extra_body={"min_p": 0.1},
    )  # fmt: skip
    got = json.loads(response.output_text)
    assert (got["temperature"], got["top_p"], got["max_new_tokens"], got["min_p"]) == (0.4, 0.8, 200, 0.1)


def test_max_output_tokens_makes_an_incomplete_response(served):
    response = gpt(served).responses.create(model="hello", input="Hi", max_output_tokens=2)
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    assert response.output_text == "Hello there,"
    events = list(gpt(served).responses.create(model="hello", input="Hi", max_output_tokens=2, stream=True))
    assert events[-1].type == "response.incomplete" and events[-1].response.status == "incomplete"


@pytest.mark.parametrize(
    ("fields", "message_part", "param"),
    [
        ({"previous_response_id": "resp_123"}, "stateless", "previous_response_id"),
        ({"store": True}, "stateless", "store"),
        ({"tools": [{"type": "function", "name": "f", "parameters": {"type": "objekt"}}]}, "not a valid", "tools"),
        ({"tools": [{"type": "web_search"}]}, "tools of type 'web_search' are not supported", "tools[0].type"),
        ({"input": [{"type": "function_call_output", "output": "1"}]}, "needs a string call_id", "input.0"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
            "only text parts",
            "input.0.content.0",
        ),
    ],
)
def test_what_a_stateless_server_cannot_do_is_a_clear_400(served, fields, message_part, param):
    with pytest.raises(openai.BadRequestError) as caught:
        gpt(served).responses.create(model="hello", **{"input": "Hi", **fields})
    error = caught.value.body
    assert message_part in error["message"] and error["param"] == param


def test_a_missing_input_is_a_400_in_openais_shape(served):
    with TestClient(served) as http:
        r = http.post("/v1/responses", json={"model": "hello"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input"


def test_a_crash_midway_is_a_500_whole_and_response_failed_streamed(make_fake_app, fake_models):
    write_fake(fake_models, "crashy", reply="one two three four five", crash="token:2")
    client = gpt(build_api_server(make_fake_app("crashy.fake")))
    with pytest.raises(openai.InternalServerError) as caught:
        client.responses.create(model="crashy", input="Hi")
    assert caught.value.body["code"] == "model_crashed"
    events = list(client.responses.create(model="crashy", input="Hi", stream=True))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "one two"
    assert events[-1].type == "response.failed" and events[-1].response.status == "failed"
    assert events[-1].response.error.code == "model_crashed" and "crashed" in events[-1].response.error.message
