"""Tool use on Anthropic's ``/v1/messages`` and OpenAI's ``/v1/responses``, through the official ``anthropic``
and ``openai`` clients, unchanged.

Fast tier: scripted fake models (the real FastAPI app in process, the clients on Starlette's TestClient) whose
replies are calls in the generic family format, a bad call, text, a Qwen-style ``<tool_call>`` reply, or the
prompt's last line echoed (so a test sees how the history reached the prompt).
Slow tier: the embedded gemma with a forced call (the grammar makes its answer a call that validates).
"""

from __future__ import annotations

import json

import anthropic
import jsonschema
import openai
import pytest
from api_fixtures import ASK, TOOLS, WEATHER_SCHEMA, write_qwenish, write_tool_fakes
from fastapi.testclient import TestClient

from webui.server import build_api_server

CLAUDE_TOOLS = [{"name": "get_weather", "description": "Current weather in a city", "input_schema": WEATHER_SCHEMA}]
RESPONSES_TOOLS = [{"type": "function", "name": "get_weather", "description": "Current weather in a city",
                    "parameters": WEATHER_SCHEMA}]  # fmt: skip
PARIS = {"city": "Paris", "unit": "celsius"}
RESULT_LINE = "You said: user: Result of get_weather: 18 C and sunny"  # what the echo model answers to a result


class Clients:
    """Both official clients on one fake app; ``use`` loads another of its fake models."""

    def __init__(self, app, http: TestClient) -> None:
        self.app = app
        self.claude = anthropic.Anthropic(base_url="http://testserver", api_key="x", http_client=http, max_retries=0)
        self.gpt = openai.OpenAI(base_url="http://testserver/v1", api_key="x", http_client=http, max_retries=0)
        self.http = http

    def use(self, name: str) -> None:
        self.app.load_model(f"{name}.fake")


@pytest.fixture
def served(fake_models, make_fake_app):
    write_tool_fakes(fake_models)
    app = make_fake_app(model="caller.fake")
    with TestClient(build_api_server(app)) as http:
        yield Clients(app, http)


def _events(http: TestClient, path: str, body: dict) -> list[dict]:
    """The raw SSE events' data of a streamed request."""
    with http.stream("POST", path, json={**body, "stream": True}) as r:
        return [json.loads(line[len("data: ") :]) for line in r.iter_lines() if line.startswith("data: ")]


# -- Anthropic Messages ---------------------------------------------------------------------------------------


def test_messages_a_call_comes_back_as_a_tool_use_block(served):
    message = served.claude.messages.create(model="caller", max_tokens=200, messages=ASK, tools=CLAUDE_TOOLS)
    assert message.stop_reason == "tool_use"
    (block,) = message.content
    assert block.type == "tool_use" and block.id.startswith("toolu_") and block.name == "get_weather"
    assert block.input == PARIS


def test_messages_streamed_input_json_fragments_reassemble_to_the_same_input(served):
    request = {"model": "caller", "max_tokens": 200, "messages": ASK, "tools": CLAUDE_TOOLS}
    with served.claude.messages.stream(**request) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use" and [(b.type, b.name, b.input) for b in final.content] == [
        ("tool_use", "get_weather", PARIS)
    ]
    events = _events(served.http, "/v1/messages", request)
    kinds = [e["type"] for e in events]
    assert kinds[:3] == ["message_start", "ping", "content_block_start"]
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    start = events[2]["content_block"]
    assert start["type"] == "tool_use" and start["id"].startswith("toolu_") and start["input"] == {}
    fragments = [e["delta"]["partial_json"] for e in events if e["type"] == "content_block_delta"]
    assert all(e["delta"]["type"] == "input_json_delta" for e in events if e["type"] == "content_block_delta")
    assert len(fragments) > 1 and json.loads("".join(fragments)) == PARIS
    assert events[-2]["delta"]["stop_reason"] == "tool_use"


def test_messages_tool_use_and_tool_result_blocks_round_trip_through_the_history(served):
    call = served.claude.messages.create(model="caller", max_tokens=200, messages=ASK, tools=CLAUDE_TOOLS)
    block = call.content[0]
    result = {"type": "tool_result", "tool_use_id": block.id, "content": [{"type": "text", "text": "18 C and sunny"}]}
    history = [*ASK, {"role": "assistant", "content": [b.model_dump() for b in call.content]},
               {"role": "user", "content": [result]}]  # fmt: skip
    served.use("lastline")
    answer = served.claude.messages.create(model="lastline", max_tokens=200, messages=history, tools=CLAUDE_TOOLS)
    assert answer.stop_reason == "end_turn" and answer.content[0].text == RESULT_LINE
    # the same history in OpenAI's shape makes the same prompt (one core for both)
    openai_history = [*ASK, {"role": "assistant", "content": None, "tool_calls": [{"id": block.id, "type": "function",
                      "function": {"name": "get_weather", "arguments": json.dumps(block.input)}}]},
                      {"role": "tool", "tool_call_id": block.id, "content": "18 C and sunny"}]  # fmt: skip
    counted = served.claude.messages.count_tokens(model="lastline", messages=history, tools=CLAUDE_TOOLS)
    chat = served.gpt.chat.completions.create(model="lastline", messages=openai_history, tools=TOOLS)
    assert chat.choices[0].message.content == RESULT_LINE
    assert counted.input_tokens == answer.usage.input_tokens == chat.usage.prompt_tokens


def test_messages_a_qwen_style_model_sends_its_text_then_its_call(fake_models, make_fake_app):
    write_qwenish(fake_models)
    with TestClient(build_api_server(make_fake_app(model="qwenish.fake"))) as http:
        client = Clients(None, http).claude
        message = client.messages.create(model="qwenish", max_tokens=200, messages=ASK, tools=CLAUDE_TOOLS)
        with client.messages.stream(model="qwenish", max_tokens=200, messages=ASK, tools=CLAUDE_TOOLS) as stream:
            text = "".join(stream.text_stream)
            final = stream.get_final_message()
    for got in (message, final):
        assert [b.type for b in got.content] == ["text", "tool_use"] and got.stop_reason == "tool_use"
        assert got.content[0].text == "Checking." and got.content[1].input == {"city": "Oslo"}
    assert text == "Checking."


def test_messages_invalid_arguments_and_a_missing_forced_call_are_errors_the_client_sees(served):
    served.use("badcaller")
    with pytest.raises(anthropic.UnprocessableEntityError) as caught:
        served.claude.messages.create(model="badcaller", max_tokens=200, messages=ASK, tools=CLAUDE_TOOLS)
    assert caught.value.body["type"] == "error" and caught.value.body["error"]["type"] == "invalid_request_error"
    assert "does not match its schema at city" in caught.value.body["error"]["message"]
    with pytest.raises(anthropic.APIStatusError, match="does not match its schema"):  # noqa: PT012
        with served.claude.messages.stream(model="badcaller", max_tokens=200, messages=ASK, tools=CLAUDE_TOOLS) as s:
            s.get_final_message()
    served.use("hello")
    with pytest.raises(anthropic.UnprocessableEntityError, match="a tool call was required"):
        served.claude.messages.create(model="hello", max_tokens=200, messages=ASK, tools=CLAUDE_TOOLS,
                                      tool_choice={"type": "any"})  # fmt: skip
    plain = served.claude.messages.create(model="hello", max_tokens=200, messages=ASK, tools=CLAUDE_TOOLS,
                                          tool_choice={"type": "auto"})  # fmt: skip
    assert plain.stop_reason == "end_turn" and [b.type for b in plain.content] == ["text"]
    with served.claude.messages.stream(model="hello", max_tokens=200, messages=ASK, tools=CLAUDE_TOOLS) as stream:
        assert "".join(stream.text_stream) == plain.content[0].text  # text with tools offered streams as text
        assert stream.get_final_message().stop_reason == "end_turn"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"tools": [{"name": "f", "input_schema": {"type": "objekt"}}]}, "not a valid JSON Schema"),
        ({"tools": [{"name": "bad name", "input_schema": {"type": "object"}}]}, "function.name must be"),
        ({"tools": CLAUDE_TOOLS, "tool_choice": {"type": "sometimes"}}, "tool_choice.type must be"),
        ({"tools": CLAUDE_TOOLS, "tool_choice": {"type": "tool", "name": "nope"}}, "'nope', which is not among"),
        ({"tool_choice": {"type": "any"}}, "tool_choice 'any' needs tools"),
    ],
)  # fmt: skip
def test_messages_a_bad_schema_or_tool_choice_is_a_400_in_anthropics_shape(served, extra, message):
    with pytest.raises(anthropic.BadRequestError) as caught:
        served.claude.messages.create(model="caller", max_tokens=50, messages=ASK, **extra)
    body = caught.value.body
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert message in body["error"]["message"]


# -- OpenAI Responses -----------------------------------------------------------------------------------------


def test_responses_a_call_comes_back_as_a_function_call_item(served):
    response = served.gpt.responses.create(model="caller", input=ASK[0]["content"], tools=RESPONSES_TOOLS)
    assert response.status == "completed"
    (item,) = response.output
    assert item.type == "function_call" and item.name == "get_weather" and item.call_id.startswith("call_")
    assert item.id.startswith("fc_") and json.loads(item.arguments) == PARIS
    assert response.tools[0].name == "get_weather" and response.tool_choice == "auto"


def test_responses_streamed_argument_deltas_reassemble_to_the_same_call(served):
    request = {"model": "caller", "input": ASK[0]["content"], "tools": RESPONSES_TOOLS}
    events = list(served.gpt.responses.create(**request, stream=True))
    kinds = [e.type for e in events]
    assert kinds[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert kinds[-3:] == ["response.function_call_arguments.done", "response.output_item.done", "response.completed"]
    deltas = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
    assert set(kinds[3:-3]) == {"response.function_call_arguments.delta"} and len(deltas) > 1
    added, done = events[2].item, events[-2].item
    assert added.type == "function_call" and added.arguments == "" and added.call_id == done.call_id
    assert "".join(deltas) == events[-3].arguments == done.arguments and json.loads(done.arguments) == PARIS
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].response.output[0].call_id == done.call_id
    with served.gpt.responses.stream(**request) as stream:  # the SDK's own accumulator agrees
        final = stream.get_final_response()
    assert [(i.type, i.name, json.loads(i.arguments)) for i in final.output] == [("function_call", "get_weather",
                                                                                   PARIS)]  # fmt: skip


def test_responses_function_call_items_round_trip_through_the_input(served):
    call = served.gpt.responses.create(model="caller", input=ASK[0]["content"], tools=RESPONSES_TOOLS).output[0]
    history = [*ASK, call.model_dump(exclude_none=True),
               {"type": "function_call_output", "call_id": call.call_id, "output": "18 C and sunny"}]  # fmt: skip
    served.use("lastline")
    response = served.gpt.responses.create(model="lastline", input=history, tools=RESPONSES_TOOLS)
    assert response.output_text == RESULT_LINE and response.output[0].type == "message"


def test_responses_invalid_arguments_are_an_error_the_client_sees(served):
    served.use("badcaller")
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        served.gpt.responses.create(model="badcaller", input="Weather?", tools=RESPONSES_TOOLS)
    assert caught.value.code == "invalid_tool_call" and "does not match its schema" in caught.value.message
    events = list(served.gpt.responses.create(model="badcaller", input="Weather?", tools=RESPONSES_TOOLS, stream=True))
    assert events[-1].type == "response.failed" and events[-1].response.error.code == "invalid_tool_call"
    served.use("hello")
    with pytest.raises(openai.UnprocessableEntityError, match="a tool call was required"):
        served.gpt.responses.create(model="hello", input="Hi", tools=RESPONSES_TOOLS, tool_choice="required")
    with served.gpt.responses.stream(model="hello", input="Hi", tools=RESPONSES_TOOLS) as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert text == final.output_text == "Hello there, friend." and [i.type for i in final.output] == ["message"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"tools": [{"type": "function", "name": "f", "parameters": {"type": "objekt"}}]}, "not a valid JSON Schema"),
        ({"tools": RESPONSES_TOOLS, "tool_choice": "always"}, "tool_choice must be"),
        ({"tools": RESPONSES_TOOLS, "tool_choice": {"type": "function", "name": "nope"}}, "'nope', which is not"),
        ({"tool_choice": "required"}, "needs tools"),
    ],
)  # fmt: skip
def test_responses_a_bad_schema_or_tool_choice_is_a_400_in_openais_shape(served, extra, message):
    with pytest.raises(openai.BadRequestError) as caught:
        served.gpt.responses.create(model="caller", input="Hi", **extra)
    assert message in caught.value.message and caught.value.body["type"] == "invalid_request_error"
    assert caught.value.param == ("tools" if "JSON Schema" in message else "tool_choice")


# -- the real model --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gemma_server(models_dir, tmp_path_factory):
    from api_fixtures import serve

    with serve(models_dir, tmp_path_factory.mktemp("tools-user-data")) as server:
        yield server


@pytest.mark.slow
def test_the_embedded_gemma_answers_messages_with_a_valid_tool_use_when_one_is_forced(gemma_server):
    """``tool_choice: {"type": "tool"}``: the grammar makes the 270M gemma's answer a call that validates."""
    from api_fixtures import GEMMA

    client = anthropic.Anthropic(base_url=gemma_server.url, api_key="x", max_retries=0, timeout=300)
    message = client.messages.create(model=GEMMA, max_tokens=60, messages=ASK, tools=CLAUDE_TOOLS,
                                     tool_choice={"type": "tool", "name": "get_weather"},
                                     extra_body={"temperature": 0})  # fmt: skip
    assert message.stop_reason == "tool_use", message
    (block,) = [b for b in message.content if b.type == "tool_use"]
    assert block.name == "get_weather"
    jsonschema.validate(block.input, WEATHER_SCHEMA)


@pytest.mark.slow
def test_the_embedded_gemma_answers_responses_with_a_valid_function_call_when_one_is_required(gemma_server):
    from api_fixtures import GEMMA

    client = openai.OpenAI(base_url=f"{gemma_server.url}/v1", api_key="x", max_retries=0, timeout=300)
    events = list(client.responses.create(model=GEMMA, input=ASK[0]["content"], tools=RESPONSES_TOOLS,
                                          tool_choice="required", parallel_tool_calls=False, max_output_tokens=60,
                                          temperature=0, stream=True))  # fmt: skip
    final = events[-1].response
    assert events[-1].type == "response.completed", events[-1]
    (call,) = [i for i in final.output if i.type == "function_call"]
    assert call.name == "get_weather"
    jsonschema.validate(json.loads(call.arguments), WEATHER_SCHEMA)
    deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert deltas == call.arguments


# -- tools this server does not run: a 400 naming the type, in each API's own error shape -----------------------

SERVER_TOOLS = [
    {"type": "web_search_20250305", "name": "web_search", "max_uses": 3},
    {"type": "bash_20250124", "name": "bash"},
    {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"},
    {"type": "code_execution_20250522", "name": "code_execution"},
]
BUILT_IN_TOOLS = [
    {"type": "web_search"},
    {"type": "file_search", "vector_store_ids": ["vs_1"]},
    {"type": "computer_use_preview", "display_width": 1024, "display_height": 768, "environment": "linux"},
    {"type": "code_interpreter", "container": {"type": "auto"}},
    {"type": "mcp", "server_label": "docs", "server_url": "https://example.com/mcp"},
    {"type": "image_generation"},
    {"type": "custom", "name": "grammar_tool"},  # a free-form tool: not a function either
]


@pytest.mark.parametrize("tool", SERVER_TOOLS, ids=lambda t: t["type"])
def test_messages_an_anthropic_server_tool_is_a_400_naming_its_type(served, tool):
    """Anthropic runs these tools on its side; this server runs none, so it says so instead of answering as if
    the model had searched. A client tool beside it is fine, and the server tool is named by its index."""
    with pytest.raises(anthropic.BadRequestError) as err:
        served.claude.messages.create(model="caller", max_tokens=50, messages=ASK, tools=[*CLAUDE_TOOLS, tool])
    body = err.value.body
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert f"tools[1]: tools of type {tool['type']!r} are not supported" in body["error"]["message"]
    with pytest.raises(anthropic.BadRequestError, match=tool["type"]):  # streamed: refused before it starts
        with served.claude.messages.stream(model="caller", max_tokens=50, messages=ASK, tools=[tool]):
            pass


@pytest.mark.parametrize("tool", BUILT_IN_TOOLS, ids=lambda t: t["type"])
def test_responses_a_built_in_tool_is_a_400_naming_its_type(served, tool):
    with pytest.raises(openai.BadRequestError) as err:
        served.gpt.responses.create(model="caller", input="Weather?", tools=[tool, *RESPONSES_TOOLS])
    error = err.value.body if "message" in err.value.body else err.value.body["error"]
    assert f"tools[0]: tools of type {tool['type']!r} are not supported" in error["message"]
    assert error["param"] == "tools[0].type" and err.value.status_code == 400
    r = served.http.post("/v1/responses", json={"model": "caller", "input": "Hi", "tools": [tool], "stream": True})
    assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_a_custom_anthropic_tool_and_an_untyped_one_still_work(served):
    typed = [{**CLAUDE_TOOLS[0], "type": "custom"}]
    message = served.claude.messages.create(model="caller", max_tokens=200, messages=ASK, tools=typed)
    assert message.stop_reason == "tool_use" and message.content[0].input == PARIS
