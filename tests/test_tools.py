"""Tool calling's core (webui/chat/tools.py), fast tier: the parsers on outputs in each family's format (as the
models' documentation shows them, and broken ones), schema validation, the streaming filter, the tools in the
prompt (our library templates and a model template that renders tools itself) and the grammar for a forced call.
"""

from __future__ import annotations

import json

import pytest

from backends.base import ModelInfo
from webui.chat.prompting import render_prompt
from webui.chat.tools import (
    GENERIC,
    HERMES,
    LLAMA3,
    MISTRAL,
    CallFilter,
    ToolCallError,
    ToolChoice,
    ToolError,
    finish_calls,
    lower_messages,
    parse_tool_calls,
    parse_tool_choice,
    parse_tools,
    tool_format,
    tool_grammar,
    validate_call,
)

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["city"],
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
TOOLS = parse_tools([WEATHER, TIME])
AUTO, REQUIRED = ToolChoice("auto"), ToolChoice("required")

# Replies as each family's models write them (Qwen 2.5 / Hermes 2 Pro, Llama 3.1, Mistral v3, our generic JSON).
RECORDED = [
    (HERMES, 'I will check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
     "I will check.", [("get_weather", {"city": "Paris"})]),
    (HERMES, '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "celsius"}}\n</tool_call>\n'
             '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>',
     "", [("get_weather", {"city": "Oslo", "unit": "celsius"}), ("get_time", {})]),
    (HERMES, "The capital of France is Paris.", "The capital of France is Paris.", []),
    (LLAMA3, '{"name": "get_weather", "parameters": {"city": "Paris"}}', "", [("get_weather", {"city": "Paris"})]),
    (LLAMA3, '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Rome"}}; {"name": "get_time", '
             '"parameters": {}}', "", [("get_weather", {"city": "Rome"}), ("get_time", {})]),
    (LLAMA3, "It is sunny.", "It is sunny.", []),
    (MISTRAL, '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "a1b2c3d4e"}]',
     "", [("get_weather", {"city": "Paris"})]),
    (MISTRAL, '[TOOL_CALLS] [{"name": "get_weather", "arguments": "{\\"city\\": \\"Lyon\\"}"}]',
     "", [("get_weather", {"city": "Lyon"})]),
    (GENERIC, '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}',
     "", [("get_weather", {"city": "Paris"})]),
    (GENERIC, '```json\n{"tool_calls": [{"name": "get_time", "arguments": {}}]}\n```', "", [("get_time", {})]),
    (GENERIC, '{"name": "get_weather", "arguments": {"city": "Bern"}}', "", [("get_weather", {"city": "Bern"})]),
    (GENERIC, '{"answer": 42}', '{"answer": 42}', []),  # JSON, but not a call: content
    (GENERIC, "Hello!", "Hello!", []),
]  # fmt: skip

BROKEN = [
    (HERMES, '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}\n</tool_call>'),  # a brace short
    (HERMES, '<tool_call>\n{"name": "get_weather", "argu'),  # cut off by max_tokens
    (LLAMA3, '{"name": "get_weather", "parameters": {"city": '),
    (MISTRAL, "[TOOL_CALLS] I cannot do that"),
    (GENERIC, '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}'),
    (GENERIC, '{"tool_calls": [{"arguments": {}}]}'),  # no name
]


@pytest.mark.parametrize(("fmt", "text", "content", "calls"), RECORDED)
def test_each_family_parser_reads_its_recorded_outputs(fmt, text, content, calls):
    parsed = parse_tool_calls(text, fmt)
    assert parsed.content == content
    assert [(c.name, json.loads(c.arguments)) for c in parsed.calls] == calls
    assert all(c.id.startswith("call_") and len(c.id) > 10 for c in parsed.calls)
    assert len({c.id for c in parsed.calls}) == len(parsed.calls)


@pytest.mark.parametrize(("fmt", "text"), BROKEN)
def test_a_broken_call_is_an_error_never_content(fmt, text):
    with pytest.raises(ToolCallError):
        parse_tool_calls(text, fmt)


def test_arguments_are_validated_against_the_schema():
    (call,) = parse_tool_calls('{"tool_calls": [{"name": "get_weather", "arguments": {"city": 5}}]}', GENERIC).calls
    with pytest.raises(ToolCallError, match="get_weather does not match its schema at city: 5 is not of type"):
        validate_call(call, TOOLS)
    (call,) = parse_tool_calls('{"name": "get_weather", "arguments": {"unit": "kelvin"}}', GENERIC).calls
    with pytest.raises(ToolCallError, match="does not match its schema"):
        validate_call(call, TOOLS)
    (call,) = parse_tool_calls('{"name": "launch", "arguments": {}}', GENERIC).calls
    with pytest.raises(ToolCallError, match="'launch', which is not among the tools"):
        validate_call(call, TOOLS)


def test_a_required_call_that_did_not_come_is_an_error_and_none_leaves_text_alone():
    with pytest.raises(ToolCallError, match="required"):
        finish_calls("Sorry, no.", GENERIC, TOOLS, REQUIRED)
    text = '{"tool_calls": [{"name": "get_time", "arguments": {}}]}'
    assert finish_calls(text, GENERIC, TOOLS, ToolChoice("none")).content == text
    named = parse_tool_choice({"type": "function", "function": {"name": "get_weather"}}, TOOLS)
    with pytest.raises(ToolCallError, match="required get_weather"):
        finish_calls(text, GENERIC, TOOLS, named)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ([{"type": "retrieval"}], "tools of type 'retrieval' are not supported; only tools of type 'function'"),
        (["get_weather"], "a tool is an object"),
        ([{"type": "function", "function": {"name": "bad name!"}}], "name must be"),
        ([{"type": "function", "function": {"name": "f", "parameters": {"type": "objekt"}}}], "not a valid JSON"),
        ([{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}], "describe an object"),
        ([WEATHER, WEATHER], "two tools are named"),
    ],
)
def test_bad_tools_are_refused_with_the_reason(raw, message):
    with pytest.raises(ToolError, match=message):
        parse_tools(raw)


def test_flat_tools_of_the_responses_and_anthropic_apis_are_read_too():
    flat = parse_tools(
        [
            {"type": "function", "name": "get_time", "parameters": {"type": "object"}},
            {"name": "get_weather", "description": "d", "input_schema": WEATHER["function"]["parameters"]},
        ]
    )
    assert [t.name for t in flat] == ["get_time", "get_weather"]
    assert flat[1].parameters == TOOLS[0].parameters and flat[1].as_dict()["function"]["description"] == "d"


def test_tool_choice_is_checked_against_the_tools():
    assert parse_tool_choice(None, TOOLS) == ToolChoice("auto")
    assert parse_tool_choice(None, []).mode == "none"
    assert parse_tool_choice("required", TOOLS, False) == ToolChoice("required", None, False)
    for bad, message in [("always", "must be 'none'"), ({"type": "function", "function": {"name": "nope"}}, "nope"),
                         ({"name": "x"}, "must be a string or")]:  # fmt: skip
        with pytest.raises(ToolError, match=message):
            parse_tool_choice(bad, TOOLS)
    with pytest.raises(ToolError, match="needs tools"):
        parse_tool_choice("required", [])


def test_the_stream_filter_shows_text_at_once_and_holds_what_may_be_a_call():
    plain = CallFilter(GENERIC, TOOLS, AUTO)
    assert plain.feed("Hel") + plain.feed("lo {x}") == "Hello {x}"
    assert plain.finish().calls == []
    held = CallFilter(GENERIC, TOOLS, AUTO)
    pieces = ['{"tool_calls": [{"name": ', '"get_time", "arguments": {}}]}']
    assert [held.feed(p) for p in pieces] == ["", ""]
    assert [c.name for c in held.finish().calls] == ["get_time"]
    hermes = CallFilter(HERMES, TOOLS, AUTO)
    shown = "".join(hermes.feed(p) for p in ["Let me look. <tool", '_call>\n{"name": "get_time", "arguments": {}}',
                                               "\n</tool_call>"])  # fmt: skip
    assert shown == "Let me look."  # the space before the tag is held with it
    parsed = hermes.finish()
    assert parsed.content == "" and [c.name for c in parsed.calls] == ["get_time"]


@pytest.mark.parametrize(
    ("fmt", "pieces"),
    [
        (GENERIC, ['{"tool_calls": [{"name": "get_weather", "argu', 'ments": {"city": "Pa', 'ris \\"}\\" {x}"}}, ',
                   '{"name": "get_time", "arguments": {}}]}']),
        (HERMES, ['<tool_call>\n{"name": "get_weather", "arguments": {"city": "Pa', 'ris \\"}\\" {x}"}}\n</tool_call>',
                  '\n<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>']),
    ],
)  # fmt: skip
def test_calls_stream_as_they_are_written_and_join_to_the_parsed_calls(fmt, pieces):
    calls = CallFilter(fmt, TOOLS, REQUIRED)
    seen = []
    for piece in pieces:
        assert calls.feed(piece) == ""
        seen.append(calls.progress())
    first = next(step for step in seen if step)  # announced once its arguments begin
    assert first[0].name == "get_weather" and first[0].id.startswith("call_")
    assert "".join(d.arguments for d in first) == '{"city": "Pa'  # a fragment before the call is complete
    parsed = calls.finish()
    assert calls.rest(parsed) == []  # everything went out live
    deltas = [d for step in seen for d in step]
    for index, call in enumerate(parsed.calls):
        mine = [d for d in deltas if d.index == index]
        assert (mine[0].id, mine[0].name) == (call.id, call.name)
        assert "".join(d.arguments for d in mine) == call.arguments
    assert json.loads(parsed.calls[0].arguments) == {"city": 'Paris "}" {x}'}


def _info(**kw) -> ModelInfo:
    return ModelInfo(name="m", loader="fake", path="m", architecture=kw.pop("architecture", "fake"), **kw)


HISTORY = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"},
]  # fmt: skip


def test_library_templates_get_the_tools_calls_and_results_in_their_family_format():
    qwen = render_prompt(HISTORY, _info(), choice="qwen", tools=tuple(TOOLS), tool_choice=AUTO).text
    assert "<tools>\n" in qwen and '"name": "get_weather"' in qwen
    assert '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}' in qwen
    assert "<|im_start|>user\n<tool_response>\n18 C, sunny\n</tool_response><|im_end|>" in qwen
    llama = render_prompt(HISTORY, _info(), choice="llama-3", tools=tuple(TOOLS), tool_choice=AUTO).text
    assert '{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>' in llama
    gemma = render_prompt(HISTORY, _info(), choice="gemma", tools=tuple(TOOLS), tool_choice=AUTO).text
    assert '<start_of_turn>model\n{"tool_calls": [{"name": "get_weather"' in gemma
    assert "Result of get_weather: 18 C, sunny<end_of_turn>" in gemma
    assert tool_format(_info(), "qwen") == (HERMES, False) and tool_format(_info(), "mistral") == (MISTRAL, False)
    none = render_prompt(HISTORY, _info(), choice="gemma", tools=tuple(TOOLS), tool_choice=ToolChoice("none")).text
    assert "get_time" not in none and "Result of get_weather" in none  # no tools offered, the history stays


# A trimmed Qwen 2.5 chat template: it renders ``tools``, assistant ``tool_calls`` and ``tool`` messages itself.
QWEN_NATIVE = (
    "{%- if tools %}<|im_start|>system\n# Tools\n<tools>{% for tool in tools %}\n{{ tool | tojson }}{% endfor %}\n"
    "</tools><|im_end|>\n{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ message.content }}\n</tool_response>"
    "<|im_end|>\n"
    "{%- elif message.tool_calls %}<|im_start|>assistant\n{%- for tc in message.tool_calls %}\n<tool_call>\n"
    '{"name": "{{ tc.function.name }}", "arguments": {{ tc.function.arguments | tojson }}}\n</tool_call>'
    "{%- endfor %}<|im_end|>\n"
    "{%- else %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}"
)


def test_a_model_template_that_renders_tools_gets_them_as_they_are():
    info = _info(chat_template=QWEN_NATIVE)
    assert tool_format(info) == (HERMES, True)
    text = render_prompt(HISTORY, info, tools=tuple(TOOLS), tool_choice=AUTO).text
    assert '<tools>{"type": "function", "function": {"name": "get_weather"' in text
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in text  # an object
    assert "<tool_response>\n18 C, sunny\n</tool_response>" in text
    assert "You may call" not in text  # our own instructions are not added to a template that has its own


def test_lowering_merges_consecutive_results_into_one_turn():
    two = [*HISTORY, {"role": "tool", "tool_call_id": "call_2", "name": "get_time", "content": "noon"}]
    out = lower_messages(two, TOOLS, GENERIC, AUTO)
    assert [m["role"] for m in out] == ["system", "user", "assistant", "user"]
    assert out[-1]["content"] == "Result of get_weather: 18 C, sunny\nResult of get_time: noon"


@pytest.mark.parametrize("fmt", [HERMES, LLAMA3, MISTRAL, GENERIC])
def test_the_forced_call_grammar_parses_in_llama_cpp(fmt):
    from llama_cpp import LlamaGrammar

    for choice in (REQUIRED, ToolChoice("required", None, False), parse_tool_choice(
            {"type": "function", "function": {"name": "get_weather"}}, TOOLS)):  # fmt: skip
        text = tool_grammar(TOOLS, fmt, choice)
        assert text.startswith("root ::=") or "\nroot ::=" in text
        LlamaGrammar.from_string(text, verbose=False)  # llama.cpp's own parser accepts it
    named = tool_grammar(TOOLS, fmt, parse_tool_choice({"type": "function", "function": {"name": "get_time"}}, TOOLS))
    assert '"\\"get_time\\""' in named and "get_weather" not in named
