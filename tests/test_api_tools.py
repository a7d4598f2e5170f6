"""Tool calling through ``POST /v1/chat/completions`` with the official ``openai`` client, unchanged.

Fast tier: scripted fake models (the real FastAPI app in process, the client on Starlette's TestClient).
Slow tier: the embedded gemma with ``tool_choice: "required"`` (the grammar makes its answer a call that
validates against the schema), and langchain-openai's ``bind_tools`` when it is installed.
"""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest
from api_fixtures import ASK, CALL, TOOLS, WEATHER_SCHEMA, write_qwenish, write_tool_fakes
from conftest import write_fake
from fastapi.testclient import TestClient

from webui.server import build_api_server


@pytest.fixture
def served(fake_models, make_fake_app):
    """An openai client on a fake app whose models answer with a call, a bad call, text, or echo the prompt."""
    write_tool_fakes(fake_models)
    app = make_fake_app(model="caller.fake")
    with TestClient(build_api_server(app)) as http:
        client = openai.OpenAI(base_url="http://testserver/v1", api_key="x", http_client=http, max_retries=0)
        client.use = lambda name: app.load_model(f"{name}.fake")  # the fake models are not listed for the API
        yield client


def test_a_call_comes_back_as_message_tool_calls(served):
    r = served.chat.completions.create(model="caller", messages=ASK, tools=TOOLS)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.id.startswith("call_") and call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris", "unit": "celsius"}


def test_streamed_tool_call_deltas_reassemble_to_the_same_call(served):
    whole = served.chat.completions.create(model="caller", messages=ASK, tools=TOOLS, tool_choice="auto")
    chunks = list(served.chat.completions.create(model="caller", messages=ASK, tools=TOOLS, stream=True))
    calls: dict[int, dict] = {}
    finish = None
    for chunk in chunks:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        assert not delta.content  # the call's JSON is not shown as text
        for piece in delta.tool_calls or []:
            if piece.id:  # the first fragment: index, id, type and name
                assert piece.index not in calls and piece.function.name and piece.type == "function"
                calls[piece.index] = {"id": piece.id, "name": piece.function.name, "arguments": ""}
            calls[piece.index]["arguments"] += piece.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    assert sum(len(c.choices[0].delta.tool_calls or []) for c in chunks if c.choices) > 2  # arguments in fragments
    (streamed,) = calls.values()
    expected = whole.choices[0].message.tool_calls[0]
    assert streamed["name"] == expected.function.name
    assert json.loads(streamed["arguments"]) == json.loads(expected.function.arguments)


def test_tool_results_and_earlier_calls_in_the_history_are_accepted(served):
    history = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_abc", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_abc", "content": "18 C and sunny"},
    ]  # fmt: skip
    served.use("lastline")
    r = served.chat.completions.create(model="lastline", messages=history, tools=TOOLS)
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.content == "You said: user: Result of get_weather: 18 C and sunny"
    plain = served.chat.completions.create(model="lastline", messages=history)  # no tools offered now
    assert plain.choices[0].message.content == r.choices[0].message.content


def test_a_model_whose_template_renders_tools_is_read_in_its_own_format(fake_models, make_fake_app):
    """A Qwen-style model: its template gets the tools, and its ``<tool_call>`` reply becomes tool_calls."""
    write_qwenish(fake_models)
    app = make_fake_app(model="qwenish.fake")
    with TestClient(build_api_server(app)) as http:
        client = openai.OpenAI(base_url="http://testserver/v1", api_key="x", http_client=http, max_retries=0)
        r = client.chat.completions.create(model="qwenish", messages=ASK, tools=TOOLS)
        streamed = list(client.chat.completions.create(model="qwenish", messages=ASK, tools=TOOLS, stream=True))
    message = r.choices[0].message
    assert message.content == "Checking." and r.choices[0].finish_reason == "tool_calls"
    assert [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls] == [
        ("get_weather", {"city": "Oslo"})
    ]
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert text == "Checking."  # the text before the call streams as content, the tag never does
    assert "<tool_call>" not in text


def test_text_without_a_call_stays_content_with_auto(served):
    served.use("hello")
    r = served.chat.completions.create(model="hello", messages=ASK, tools=TOOLS)
    assert r.choices[0].finish_reason == "stop" and r.choices[0].message.tool_calls is None
    assert r.choices[0].message.content == "Hello there, friend."
    streamed = served.chat.completions.create(model="hello", messages=ASK, tools=TOOLS, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == "Hello there, friend."


def test_arguments_that_fail_the_schema_are_an_error_the_client_sees(served):
    served.use("badcaller")
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        served.chat.completions.create(model="badcaller", messages=ASK, tools=TOOLS)
    assert caught.value.code == "invalid_tool_call"
    assert "get_weather does not match its schema at city: 5 is not of type 'string'" in caught.value.message
    with pytest.raises(openai.APIError, match="does not match its schema"):
        list(served.chat.completions.create(model="badcaller", messages=ASK, tools=TOOLS, stream=True))
    served.use("caller")
    with pytest.raises(openai.UnprocessableEntityError, match="reached max_tokens in the middle of a tool call"):
        served.chat.completions.create(model="caller", messages=ASK, tools=TOOLS, max_tokens=4)
    served.use("hello")
    with pytest.raises(openai.UnprocessableEntityError, match="a tool call was required"):
        served.chat.completions.create(model="hello", messages=ASK, tools=TOOLS, tool_choice="required")


@pytest.mark.parametrize(
    ("extra", "param", "message"),
    [
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "objekt"}}}]}, "tools",
         "not a valid JSON Schema"),
        ({"tools": TOOLS, "tool_choice": "always"}, "tool_choice", "tool_choice must be"),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice",
         "'nope', which is not among the tools"),
        ({"tool_choice": "required"}, "tool_choice", "needs tools"),
    ],
)  # fmt: skip
def test_a_bad_schema_or_tool_choice_is_a_400_in_openais_shape(served, extra, param, message):
    with pytest.raises(openai.BadRequestError) as caught:
        served.chat.completions.create(model="caller", messages=ASK, **extra)
    assert caught.value.status_code == 400 and caught.value.param == param
    assert message in caught.value.message
    assert caught.value.body["type"] == "invalid_request_error"


def _langchain_tool_call(base_url: str, model: str, **client) -> dict:
    """One ``ChatOpenAI(...).bind_tools([...], tool_choice="required").invoke(...)``: the call it returns."""
    langchain_openai = pytest.importorskip("langchain_openai")  # pinned in the test extra

    llm = langchain_openai.ChatOpenAI(base_url=base_url, api_key="x", model=model, temperature=0, max_tokens=60,
                                      max_retries=0, **client)  # fmt: skip
    message = llm.bind_tools(TOOLS, tool_choice="required", parallel_tool_calls=False).invoke(ASK[0]["content"])
    assert len(message.tool_calls) == 1, message
    return message.tool_calls[0]


def test_langchain_openai_bind_tools_gets_a_tool_call(fake_models, make_fake_app):
    write_fake(fake_models, "caller", reply=CALL)
    app = make_fake_app(model="caller.fake")
    with TestClient(build_api_server(app)) as http:
        call = _langchain_tool_call("http://testserver/v1", "caller", http_client=http)
    assert call["name"] == "get_weather" and call["args"] == {"city": "Paris", "unit": "celsius"}
    assert call["id"].startswith("call_")


# -- the real model --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_embedded_gemma_returns_a_valid_call_when_one_is_required(models_dir, tmp_path):
    """The grammar makes even the 270M gemma answer with a call that parses and validates (about 30 tokens)."""
    from api_fixtures import GEMMA, serve

    with serve(models_dir, tmp_path / "user_data") as server:
        r = server.client().chat.completions.create(
            model=GEMMA, messages=ASK, tools=TOOLS, tool_choice="required", parallel_tool_calls=False, max_tokens=60,
            temperature=0,
        )  # fmt: skip
        assert r.choices[0].finish_reason == "tool_calls", r
        (call,) = r.choices[0].message.tool_calls
        assert call.function.name == "get_weather"
        jsonschema.validate(json.loads(call.function.arguments), WEATHER_SCHEMA)
        via_langchain = _langchain_tool_call(f"{server.url}/v1", GEMMA)  # langchain-openai, unchanged
        assert via_langchain["name"] == "get_weather"
        jsonschema.validate(via_langchain["args"], WEATHER_SCHEMA)
