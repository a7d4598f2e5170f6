"""Tools in the chat core (issue 15), on scripted fake models (fast tier): an extension offers a function, the
model's reply in a family format becomes a tool-call message, the user approves (or denies) it, the result is a
message and the model answers with it in its prompt. Invalid arguments, a tool that raises, the round cap, and
histories with tool messages saved, loaded and removed.

The fake models answer by what their prompt holds (the fake loader's ``when``), so a scripted answer only comes
when the tool's result really reached the prompt.
"""

from __future__ import annotations

import collections
import json
import textwrap
from pathlib import Path

import pytest
from conftest import greedy, write_fake

from webui.chat.actions import remove_last, set_tools
from webui.chat.conversation import INSTRUCT_OWNER, HistoryError
from webui.chat.options import TurnOptions
from webui.chat.session import ChatSessions, display_messages, stats_of
from webui.chat.toolbox import MAX_TOOL_ROUNDS, Toolbox
from webui.chat.transfer import from_dict, to_dict
from webui.extension_api import ExtensionTool

CALL = json.dumps({"tool_calls": [{"name": "calculator", "arguments": {"expression": "2+2"}}]})  # generic format
ANSWER = "The answer is 4."


def last(replies):
    return collections.deque(replies, maxlen=1).pop()


def kinds(conversation) -> list[tuple[str, str]]:
    """(role, status or content) per message: the shape of a conversation with tools."""
    return [(m.role, m.tool["status"] if m.tool else m.content) for m in conversation.messages]


def tool_app(make_fake_app, fake_models: Path, tmp_path: Path, *extensions: str, **script):
    """An App on a scripted ``tools.fake`` with ``extensions`` (the bundled calculator, or ones in user_data)
    enabled."""
    write_fake(fake_models, "tools", **script)
    app = make_fake_app("tools.fake")
    for name in extensions:
        app.extensions.enable(name)
    return app


def conversation_with_tools(app, auto: bool = False):
    conversation = app.history.new(INSTRUCT_OWNER)
    set_tools(app.history, conversation, True, auto)
    return conversation


BROKEN = """
from webui.extension_api import ExtensionTool, hookimpl

def explode(arguments):
    raise RuntimeError("boom: " + arguments["why"])

@hookimpl
def tools(context):
    schema = {"type": "object", "properties": {"why": {"type": "string"}}, "required": ["why"]}
    return [ExtensionTool("explode", "Always fails.", schema, explode)]
"""


def write_extension(user_data: Path, name: str, code: str) -> None:
    folder = user_data / "extensions" / name
    folder.mkdir(parents=True)
    (folder / "extension.yaml").write_text(json.dumps({"name": name, "version": "1.0", "description": "a tool"}))
    (folder / "extension.py").write_text(textwrap.dedent(code))


def test_approve_runs_the_tool_and_the_model_answers_with_its_result(make_fake_app, fake_models, tmp_path):
    app = tool_app(make_fake_app, fake_models, tmp_path, "calculator",
                   reply=CALL, when=[["Result of calculator: 4", ANSWER]])  # fmt: skip
    conversation = conversation_with_tools(app)
    final = last(app.chat.turn(conversation, "What is 2+2?", greedy()))
    assert final.error is None
    assert final.note == 'Run calculator({"expression": "2+2"})? Approve or deny the call.'
    assert kinds(conversation) == [("user", "What is 2+2?"), ("tool_call", "pending")]
    on_disk = app.history.load(INSTRUCT_OWNER, conversation.id)
    assert [m.content for m in on_disk.pending_calls()] == ['calculator({"expression": "2+2"})']

    final = last(app.chat.resolve_tools(on_disk, True, greedy()))
    assert final.error is None and final.text == ANSWER
    assert kinds(on_disk) == [("user", "What is 2+2?"), ("tool_call", "ran"), ("tool", "ran"), ("assistant", ANSWER)]
    assert on_disk.messages[2].content == "4"
    assert on_disk.messages[1].tool["id"] == on_disk.messages[2].tool["id"]
    assert kinds(app.history.load(INSTRUCT_OWNER, conversation.id)) == kinds(on_disk)
    assert on_disk.messages[1].stats  # the reply that made the call has its stats line
    # the call and its result as the model reads them next time (OpenAI's shape, rendered by webui.chat.tools)
    shape = on_disk.chat_messages()
    assert shape[1]["tool_calls"][0]["function"] == {"name": "calculator", "arguments": '{"expression": "2+2"}'}
    assert shape[2] == {"role": "tool", "tool_call_id": on_disk.messages[1].tool["id"], "name": "calculator",
                        "content": "4"}  # fmt: skip


def test_auto_approve_in_the_hermes_format(make_fake_app, fake_models, tmp_path):
    call = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "6*7"}}\n</tool_call>'
    answer = [["<tool_response>\n42\n</tool_response>", "It is 42."]]
    app = tool_app(make_fake_app, fake_models, tmp_path, "calculator", reply=f"Sure. {call}", when=answer)
    conversation = conversation_with_tools(app, auto=True)
    options = TurnOptions(template="chatml")  # a Qwen/Hermes family template: <tool_call> tags
    replies = list(app.chat.turn(conversation, "6 times 7?", greedy(), options))
    assert replies[-1].text == "It is 42." and replies[-1].note == ""
    assert not any("<tool_call>" in r.text for r in replies)  # a call being written never shows as reply text
    assert kinds(conversation) == [("user", "6 times 7?"), ("assistant", "Sure."),
                                   ("tool_call", "ran"), ("tool", "ran"), ("assistant", "It is 42.")]  # fmt: skip
    assert conversation.chat_messages()[1]["tool_calls"][0]["function"]["name"] == "calculator"


def test_deny_sends_denied_by_user_and_the_tool_never_runs(make_fake_app, fake_models, tmp_path):
    ran = []
    app = tool_app(make_fake_app, fake_models, tmp_path, reply=CALL,
                   when=[["Result of calculator: denied by user", "Fine, I will not."]])  # fmt: skip
    app.extensions.tools = lambda: [ExtensionTool("calculator", "", {"type": "object"}, ran.append)]
    conversation = conversation_with_tools(app)
    last(app.chat.turn(conversation, "What is 2+2?", greedy()))
    final = last(app.chat.resolve_tools(conversation, False, greedy()))
    assert ran == []
    assert final.text == "Fine, I will not."
    assert kinds(conversation)[1:] == [("tool_call", "denied"), ("tool", "denied"), ("assistant", "Fine, I will not.")]
    assert conversation.messages[2].content == "denied by user"
    assert last(app.chat.resolve_tools(conversation, True, greedy())).error == "no tool call is waiting for approval"


def test_invalid_arguments_are_not_run_and_the_model_reads_why(make_fake_app, fake_models, tmp_path):
    bad = json.dumps({"tool_calls": [{"name": "calculator", "arguments": {"expr": "2+2"}}]})
    app = tool_app(make_fake_app, fake_models, tmp_path, "calculator",
                   reply=bad, when=[["does not match its schema", "Sorry, I wrote that call wrong."]])  # fmt: skip
    conversation = conversation_with_tools(app)
    final = last(app.chat.turn(conversation, "What is 2+2?", greedy()))
    assert final.error is None and final.note == ""  # nothing waits: an invalid call is never offered to run
    assert kinds(conversation)[1:] == [("tool_call", "invalid"), ("tool", "error"),
                                       ("assistant", "Sorry, I wrote that call wrong.")]  # fmt: skip
    assert "'expression' is a required property" in conversation.messages[2].content
    card = display_messages(conversation.ui_history())[1]
    assert card["metadata"]["title"] == "🛠️ calculator — not run: invalid arguments"


def test_a_tool_that_raises_is_a_message_in_the_chat(make_fake_app, fake_models, tmp_path):
    write_extension(tmp_path / "user_data", "broken", BROKEN)
    call = json.dumps({"tool_calls": [{"name": "explode", "arguments": {"why": "testing"}}]})
    app = tool_app(make_fake_app, fake_models, tmp_path, "broken",
                   reply=call, when=[["RuntimeError: boom: testing", "The tool failed."]])  # fmt: skip
    conversation = conversation_with_tools(app, auto=True)
    final = last(app.chat.turn(conversation, "Go", greedy()))
    assert final.error is None and final.text == "The tool failed."
    assert kinds(conversation)[1:] == [("tool_call", "ran"), ("tool", "error"), ("assistant", "The tool failed.")]
    assert conversation.messages[2].content == "error: explode raised RuntimeError: boom: testing"
    assert app.extensions.get("broken").active  # a tool raising is its result, not a broken extension
    assert display_messages(conversation.ui_history())[2]["metadata"]["title"] == "⚠️ explode failed"


def test_a_tool_that_hangs_times_out():
    toolbox = Toolbox((ExtensionTool("wait", "", {"type": "object"}, lambda a: __import__("time").sleep(5)),))
    assert toolbox.run("wait", "{}", timeout_s=0.2) == ("error", "error: wait did not finish within 0.2 s")
    assert toolbox.run("gone", "{}")[1] == "error: there is no tool named gone (any more)"


def test_the_rounds_are_capped_then_the_model_answers_without_tools(make_fake_app, fake_models, tmp_path):
    app = tool_app(make_fake_app, fake_models, tmp_path, "calculator",
                   reply="I give up.", when=[["You can call these functions", CALL]])  # fmt: skip
    conversation = conversation_with_tools(app, auto=True)
    final = last(app.chat.turn(conversation, "Loop", greedy()))
    calls = [m for m in conversation.messages if m.role == "tool_call"]
    assert len(calls) == MAX_TOOL_ROUNDS
    assert conversation.messages[-1].role == "assistant" and final.text == "I give up."
    assert final.note == f"the model called tools {MAX_TOOL_ROUNDS} times in a row: it answers without them now"


def test_a_new_message_settles_a_waiting_call_and_regenerate_waits_for_it(make_fake_app, fake_models, tmp_path):
    app = tool_app(make_fake_app, fake_models, tmp_path, "calculator", reply=CALL)
    conversation = conversation_with_tools(app)
    last(app.chat.turn(conversation, "What is 2+2?", greedy()))
    assert "approve or deny" in last(app.chat.regenerate(conversation, greedy())).error
    set_tools(app.history, conversation, False, False)  # tools off: the next reply is plain text
    last(app.chat.turn(conversation, "Never mind.", greedy()))
    assert kinds(conversation)[1:3] == [("tool_call", "denied"), ("tool", "denied")]
    assert conversation.messages[2].content == "not run: the user sent another message instead"
    assert conversation.messages[3].content == "Never mind."


def test_histories_with_tool_messages_save_load_and_remove(make_fake_app, fake_models, tmp_path):
    app = tool_app(make_fake_app, fake_models, tmp_path, "calculator",
                   reply=CALL, when=[["Result of calculator: 4", ANSWER]])  # fmt: skip
    plain = app.history.new(INSTRUCT_OWNER)
    plain.append("user", "hi")
    assert to_dict(plain)["schema_version"] == 1  # no tools: still readable by an older Inglenook
    conversation = conversation_with_tools(app, auto=True)
    last(app.chat.turn(conversation, "What is 2+2?", greedy()))
    path = app.history.path(INSTRUCT_OWNER, conversation.id)
    data = json.loads(path.read_text())
    assert data["schema_version"] == 2 and data["settings"] == {"tools": True, "auto_approve_tools": True}
    assert data["messages"][1]["tool"]["name"] == "calculator" and data["messages"][2]["content"] == "4"
    assert to_dict(from_dict(data)) == data  # exact round trip
    exported = app.history.export(INSTRUCT_OWNER, conversation.id)
    imported = app.history.import_text(exported, INSTRUCT_OWNER)
    assert kinds(imported) == kinds(conversation)
    broken = json.loads(json.dumps(data))
    del broken["messages"][1]["tool"]
    with pytest.raises(HistoryError, match="message 1: a tool_call message needs a 'tool' object"):
        from_dict(broken)
    removed = remove_last(app.history, conversation)  # the whole exchange: question, call, result, answer
    assert [m.role for m in removed] == ["user", "tool_call", "tool", "assistant"]
    assert app.history.load(INSTRUCT_OWNER, conversation.id).messages == []


def test_the_chat_shows_calls_and_results_as_cards(make_fake_app, fake_models, tmp_path):
    app = tool_app(make_fake_app, fake_models, tmp_path, "calculator",
                   reply=CALL, when=[["Result of calculator: 4", ANSWER]])  # fmt: skip
    conversation = conversation_with_tools(app)
    sessions = ChatSessions(app.chat, 0)
    locate = lambda: (conversation, TurnOptions())  # noqa: E731
    updates = list(sessions.send("s", "What is 2+2?", {}, locate))
    assert updates[-1].note == 'Run calculator({"expression": "2+2"})? Approve or deny the call.'
    card = updates[-1].chat[1]
    assert card["metadata"] == {"title": "🛠️ calculator — waiting for your approval", "status": "pending"}
    assert '"expression": "2+2"' in card["content"]
    updates = list(sessions.resolve("s", True, {}, locate))
    shown = updates[-1].chat
    assert [m.get("metadata", {}).get("title") for m in shown[1:3]] == ["🛠️ calculator", "📋 Result of calculator"]
    assert shown[2]["content"] == "4" and shown[3]["content"] == ANSWER and updates[-1].busy is False
    assert stats_of(shown) == ["", "", conversation.messages[-1].stats]  # the cards have no stats line
    assert list(sessions.resolve("s", True, {}, locate))[-1].note == "No tool call is waiting."


def test_an_extension_whose_tools_are_malformed_is_disabled(make_fake_app, tmp_path):
    code = "from webui.extension_api import hookimpl\n@hookimpl\ndef tools(context):\n    return ['not a tool']\n"
    write_extension(tmp_path / "user_data", "sloppy", code)
    app = make_fake_app()
    app.extensions.enable("sloppy")
    assert app.extensions.tools() == []
    assert not app.extensions.get("sloppy").active


def test_the_calculator_evaluates_arithmetic_and_refuses_everything_else(tmp_path):
    from webui.extensions.host import ExtensionHost

    host = ExtensionHost(tmp_path, entry_points=False)
    host.start()
    assert host.tools() == []  # bundled extensions are off until enabled
    host.enable("calculator")
    (tool,) = host.tools()
    assert (tool.name, tool.parameters["required"]) == ("calculator", ["expression"])
    assert tool.run({"expression": "(2 + 3) * 4 / sqrt(16)"}) == "5"
    assert tool.run({"expression": "2 ** 0.5"}) == "1.4142135623730951"
    refused = {
        "__import__('os').system('true')": "not allowed in an expression",
        "open('/etc/passwd')": "not allowed in an expression",
        "(1).__class__": "not allowed in an expression",
        "9 ** 9 ** 9": "powers are limited",
        "(10 ** 999) ** 1000": "powers are limited",
        "1 / 0": "division by zero",
        "2 +": "not an arithmetic expression",
        "1" * 201: "longer than 200 characters",
    }
    for expression, why in refused.items():
        with pytest.raises(ValueError, match=why):
            tool.run({"expression": expression})


def test_stop_while_a_tool_runs_ends_the_rounds(make_fake_app, fake_models, tmp_path):
    from backends.base import CancelToken

    stop = CancelToken()

    def pressed_stop(arguments: dict) -> str:  # the user presses Stop while the tool runs
        stop.cancel()
        return "4"

    app = tool_app(make_fake_app, fake_models, tmp_path, reply=CALL, when=[["Result of calculator: 4", ANSWER]])
    app.extensions.tools = lambda: [ExtensionTool("calculator", "", {"type": "object"}, pressed_stop)]
    conversation = conversation_with_tools(app, auto=True)
    final = last(app.chat.turn(conversation, "What is 2+2?", greedy(), TurnOptions(cancel=stop)))
    assert final.finish_reason == "cancelled" and final.error is None
    assert kinds(conversation)[1:] == [("tool_call", "ran"), ("tool", "ran")]  # no answer was generated after it


def test_regenerating_the_answer_after_a_tool_round_leaves_the_old_answer_out(make_fake_app, fake_models, tmp_path):
    from webui.chat.reply import prompt_messages

    call = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "6*7"}}\n</tool_call>'
    answer = [["<tool_response>\n42\n</tool_response>", "It is 42."]]
    app = tool_app(make_fake_app, fake_models, tmp_path, "calculator", reply=f"Sure. {call}", when=answer)
    conversation = conversation_with_tools(app, auto=True)
    options = TurnOptions(template="chatml")
    last(app.chat.turn(conversation, "6 times 7?", greedy(), options))
    assert len(conversation.messages) == 5  # user, "Sure.", the call, its result, the answer
    before_answer = prompt_messages(conversation, "", len(conversation.messages) - 1)
    assert [m["role"] for m in before_answer] == ["user", "assistant", "tool"]  # "Sure." and its call: one turn
    assert before_answer[1]["content"] == "Sure." and before_answer[1]["tool_calls"]
    final = last(app.chat.regenerate(conversation, greedy(), options))
    assert final.text == "It is 42." and len(conversation.messages[-1].versions) == 2
    with pytest.raises(HistoryError, match="cannot be edited"):
        conversation.edit(2, "calculator({})")


@pytest.mark.slow
def test_the_real_model_forced_to_call_the_calculator_in_a_chat(make_app):
    """The embedded gemma with tool_choice "required": the grammar makes its reply a call that validates; approved,
    the calculator runs and the model goes on with the result in its prompt."""
    from webui.chat.tools import ToolChoice

    app = make_app()
    app.start()
    app.extensions.enable("calculator")
    conversation = conversation_with_tools(app)
    options = TurnOptions(tool_choice=ToolChoice("required"))
    final = last(app.chat.turn(conversation, "Use the calculator: what is 12 * 7?", greedy(80), options))
    assert final.error is None, final.error
    (call,) = conversation.pending_calls()  # it parsed and matched the schema: it waits for approval
    assert call.tool["name"] == "calculator" and "expression" in json.loads(call.tool["arguments"])
    final = last(app.chat.resolve_tools(conversation, True, greedy(40), options))
    result = next(m for m in conversation.messages if m.role == "tool")
    assert result.tool["status"] == "ran"  # gemma writes "12 * 7" here; the calculator's own answer is the result
    assert result.content == app.extensions.tools()[0].run(json.loads(call.tool["arguments"]))
    assert final.error is None and conversation.messages[-1].role == "assistant"  # it went on, in text
