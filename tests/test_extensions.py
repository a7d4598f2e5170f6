"""Extensions: hooks in order through the one chat path, isolation of broken ones, the TGW adapter.

Extensions here are small real folders written by each test into ``user_data/extensions/`` and
enabled in ``user_data/extensions.json``, exactly as ``inglenook extensions install`` leaves them.
"""

from __future__ import annotations

import json
import logging
import textwrap
from pathlib import Path

import pytest
from conftest import cli, greedy
from fastapi.testclient import TestClient

from backends.base import SamplingParams
from webui.chat.modes import start_conversation
from webui.chat.service import TurnOptions
from webui.extensions.host import ExtensionHost, ManifestError, parse_manifest
from webui.extensions.tgw import from_tgw_history, to_tgw_history
from webui.server import build_api_server


def write_extension(user_data: Path, name: str, code: str, priority: int = 100, enable: bool = True, **extra) -> Path:
    folder = user_data / "extensions" / name
    folder.mkdir(parents=True)
    manifest = {"name": name, "version": "1.0", "description": f"test extension {name}", "priority": priority, **extra}
    (folder / "extension.yaml").write_text(json.dumps(manifest))  # JSON is YAML
    (folder / "extension.py").write_text("from webui.extension_api import hookimpl\n" + textwrap.dedent(code))
    if enable:
        state_path = user_data / "extensions.json"
        state = json.loads(state_path.read_text()) if state_path.exists() else {"enabled": {}}
        state["enabled"][name] = True
        state_path.write_text(json.dumps(state))
    return folder


def host_for(user_data: Path, timeout_s: float = 30) -> ExtensionHost:
    host = ExtensionHost(user_data, bundled_dir=None, entry_points=False, timeout_s=timeout_s)
    host.start()
    return host


# --------------------------------------------------------------------------- order and results


def test_modifiers_chain_in_priority_then_name_order(tmp_path):
    for name, priority in (("b_second", 10), ("a_third", 20), ("z_first", 5)):
        write_extension(
            tmp_path, name,
            f"""
            @hookimpl
            def input_modifier(text):
                return text + "|{name}"
            """,
            priority=priority,
        )  # fmt: skip
    host = host_for(tmp_path)
    assert [e.name for e in host.list()] == ["z_first", "b_second", "a_third"]
    assert host.completion_prompt("x", None) == "x|z_first|b_second|a_third"
    timing = host.get("b_second").timings["input_modifier"]
    assert timing.calls == 1 and timing.total_s >= 0


def test_none_leaves_the_value_and_custom_prompt_takes_the_first_answer(tmp_path):
    write_extension(tmp_path, "quiet", "@hookimpl\ndef custom_prompt(prompt):\n    return None\n", priority=1)
    write_extension(
        tmp_path, "mine", "@hookimpl\ndef custom_prompt(prompt):\n    return 'MINE:' + prompt\n", priority=2
    )
    write_extension(tmp_path, "late", "@hookimpl\ndef custom_prompt():\n    return 'LATE'\n", priority=3)
    write_extension(tmp_path, "prefix", "@hookimpl\ndef bot_prefix_modifier(prefix):\n    return prefix + 'Sure,'\n")
    host = host_for(tmp_path)
    assert host.chat_prompt("P", [{"role": "user", "content": "hi"}], None) == ("MINE:PSure,", "Sure,")


def test_timing_of_each_hook_is_logged(tmp_path, caplog):
    write_extension(tmp_path, "timed", "@hookimpl\ndef input_modifier(text):\n    return text\n")
    host = host_for(tmp_path)
    with caplog.at_level(logging.DEBUG, logger="webui.extensions.host"):
        host.completion_prompt("x", None)
    assert any("timed: input_modifier took" in r.getMessage() for r in caplog.records)


HOOKS_EVERYWHERE = """
from dataclasses import replace

@hookimpl
def output_modifier(text, reply, context):
    return f"[{context.mode}] " + text.upper()

@hookimpl
def state_modifier(params):
    return replace(params, max_new_tokens=4)

@hookimpl
def history_modifier(messages):
    return [{"role": "system", "content": "Answer in one word."}, *messages]
"""


@pytest.mark.slow
def test_hooks_act_through_the_chat_functions_with_the_real_model(make_app, tmp_path):
    write_extension(tmp_path / "user_data", "everywhere", HOOKS_EVERYWHERE)
    app = make_app()
    app.start()
    final = list(app.chat.stream([{"role": "user", "content": "Name a colour."}], greedy(40)))[-1]
    assert final.error is None
    assert final.usage.completion_tokens <= 4  # state_modifier capped it
    assert final.text == "[chat] " + final.raw_text.upper()  # the raw reply is kept beside the modified one
    final = list(app.chat.complete("The sky is", greedy(40)))[-1]
    assert final.text.startswith("[completion] ") and final.usage.completion_tokens <= 4


@pytest.mark.slow
def test_the_ui_path_saves_the_modified_reply(make_app, tmp_path):
    write_extension(tmp_path / "user_data", "everywhere", HOOKS_EVERYWHERE)
    app = make_app()
    app.start()
    conv = app.history.new("instruct")
    final = list(app.chat.turn(conv, "Hello", greedy(40)))[-1]
    saved = app.history.load("instruct", conv.id)
    assert saved.messages[-1].content == final.text and final.text.startswith("[chat] ")  # what people read
    # ...while the model is shown its own words in later prompts, as TGW keeps `internal` apart from `visible`
    assert final.raw_text and final.raw_text != final.text
    assert saved.chat_messages()[-1] == {"role": "assistant", "content": final.raw_text}
    assert not any(m["role"] == "system" for m in saved.chat_messages())  # history_modifier changed the prompt only


@pytest.mark.slow
def test_hooks_act_on_chat_actions_in_character_modes_for_a_named_model(make_app, tmp_path):
    write_extension(tmp_path / "user_data", "everywhere", HOOKS_EVERYWHERE)
    app = make_app()
    app.start()
    wren = app.characters.load("Wren")
    for mode in ("chat", "chat-instruct"):
        conv = start_conversation(app.history, app.characters, mode, "Wren")
        final = list(app.chat.turn(conv, "Hello", greedy(40), TurnOptions(character=wren)))[-1]
        assert final.error is None and final.usage.completion_tokens <= 4, mode
        assert final.text == "[chat] " + final.raw_text.upper(), mode
        again = list(app.chat.regenerate(conv, greedy(40), TurnOptions(character=wren, start_with="Well")))[-1]
        assert again.raw_text.startswith("Well") and again.text == "[chat] " + again.raw_text.upper(), mode
        assert conv.messages[-1].content == again.text  # the saved version is the modified one
        more = list(app.chat.continue_reply(conv, greedy(40), TurnOptions(character=wren)))[-1]
        # the model goes on from its own words, not from the decorated ones
        assert more.raw_text.startswith(again.raw_text) and more.text == "[chat] " + more.raw_text.upper(), mode
        assert conv.messages[-1].model_text == more.raw_text, mode
        # an impersonation is the user's own line: sampling hooks act, the reply's output hook does not
        line = list(app.chat.impersonate(conv, greedy(40), TurnOptions(character=wren, start_with="I")))[-1]
        assert line.text.startswith("I") and not line.text.startswith("[chat]") and line.raw_text == "", mode
        assert line.usage.completion_tokens <= 4, mode
    named = app.engine.info  # the API passes the model a request names
    final = list(app.chat.stream([{"role": "user", "content": "Hi"}], greedy(40), TurnOptions(model=named)))[-1]
    assert final.text == "[chat] " + final.raw_text.upper() and final.usage.completion_tokens <= 4
    final = list(app.chat.complete("The sky is", greedy(40), TurnOptions(model=named)))[-1]
    assert final.text == "[completion] " + final.raw_text.upper() and final.usage.completion_tokens <= 4


@pytest.mark.slow
def test_hooks_act_on_the_openai_api(make_app, tmp_path):
    write_extension(tmp_path / "user_data", "everywhere", HOOKS_EVERYWHERE)
    app = make_app()
    app.start()
    client = TestClient(build_api_server(app), base_url="http://127.0.0.1")
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 40, "temperature": 0}
    answer = client.post("/v1/chat/completions", json=body).json()
    assert answer["choices"][0]["message"]["content"].startswith("[chat] ")
    assert answer["usage"]["completion_tokens"] <= 4
    answer = client.post("/v1/completions", json={"prompt": "The sky is", "max_tokens": 40}).json()
    assert answer["choices"][0]["text"].startswith("[completion] ")


@pytest.mark.slow
def test_inglenook_run_goes_through_the_hooks(models_dir, tmp_path):
    user_data = tmp_path / "user_data"
    write_extension(user_data, "everywhere", HOOKS_EVERYWHERE)
    common = ["--models-dir", str(models_dir), "--user-data", str(user_data), "--temperature", "0", "--json"]
    done = cli("run", "default", "The capital of France is", *common)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    body = result["text"].removeprefix("[completion] ")
    assert body != result["text"] and body == body.upper() and body.strip()
    assert result["usage"]["completion_tokens"] <= 4
    done = cli("run", "default", "Hi", "--chat", *common)
    assert json.loads(done.stdout)["text"].startswith("[chat] ")


def test_disabled_extensions_do_nothing_and_enabling_is_live(tmp_path):
    write_extension(tmp_path, "shout", "@hookimpl\ndef input_modifier(text):\n    return text.upper()\n", enable=False)
    host = host_for(tmp_path)
    assert host.completion_prompt("hi", None) == "hi"
    host.enable("shout")
    assert host.completion_prompt("hi", None) == "HI"
    host.disable("shout")
    assert host.completion_prompt("hi", None) == "hi"
    assert json.loads((tmp_path / "extensions.json").read_text())["enabled"] == {"shout": False}


def test_settings_are_declared_saved_and_handed_back(tmp_path):
    write_extension(
        tmp_path, "greeter",
        """
        from webui.extension_api import Setting

        @hookimpl
        def settings():
            return [Setting("suffix", "!", label="Suffix"), Setting("times", 1, minimum=1, maximum=5)]

        @hookimpl
        def input_modifier(text, context):
            return text + context.settings["suffix"] * context.settings["times"]
        """,
    )  # fmt: skip
    host = host_for(tmp_path)
    assert host.completion_prompt("hi", None) == "hi!"
    assert host.set_settings("greeter", {"suffix": "?", "times": 3}) == []
    assert host.set_settings("greeter", {"times": 9, "nope": 1}) == [
        "times must be between 1 and 5", "greeter has no setting 'nope'"
    ]  # fmt: skip
    assert host.completion_prompt("hi", None) == "hi???"
    assert host_for(tmp_path).completion_prompt("hi", None) == "hi???"  # saved for the next start


# --------------------------------------------------------------------------- isolation


@pytest.mark.slow
def test_an_extension_that_fails_to_import_is_reported_and_the_rest_work(make_app, tmp_path):
    user_data = tmp_path / "user_data"
    write_extension(user_data, "broken", "import no_such_module_anywhere\n")
    write_extension(user_data, "fine", "@hookimpl\ndef output_modifier(text):\n    return 'ok: ' + text\n")
    app = make_app()  # start-up does not fail
    app.start()
    broken = app.extensions.get("broken")
    assert broken.status == "error" and "No module named 'no_such_module_anywhere'" in broken.error
    final = list(app.chat.complete("Hello", greedy(3)))[-1]
    assert final.error is None and final.text.startswith("ok: ")


@pytest.mark.slow
def test_a_raising_hook_is_disabled_and_the_chat_gets_no_traceback(make_app, tmp_path, caplog):
    user_data = tmp_path / "user_data"
    write_extension(
        user_data, "raiser", "@hookimpl\ndef output_modifier(text):\n    raise RuntimeError('boom')\n", priority=1
    )
    write_extension(
        user_data, "after", "@hookimpl\ndef output_modifier(text):\n    return text + ' (after)'\n", priority=2
    )
    app = make_app()
    app.start()
    final = list(app.chat.complete("Hello", greedy(3)))[-1]
    assert final.error is None and final.text == final.raw_text + " (after)"
    assert "Traceback" not in final.text and "boom" not in final.text
    raiser = app.extensions.get("raiser")
    assert not raiser.active and raiser.error == "output_modifier raised RuntimeError: boom"
    assert any("raiser disabled" in r.getMessage() for r in caplog.records)
    final = list(app.chat.complete("Hello", greedy(3)))[-1]  # and it stays out of the way
    assert final.text.endswith(" (after)")


def test_a_hanging_hook_times_out_and_is_disabled(tmp_path):
    write_extension(tmp_path, "hang", "import time\n@hookimpl\ndef input_modifier(text):\n    time.sleep(3600)\n")
    host = host_for(tmp_path, timeout_s=0.5)
    assert host.completion_prompt("hi", None) == "hi"
    assert host.get("hang").error == "input_modifier did not return within 0.5 s"
    assert host.completion_prompt("hi", None) == "hi"  # no second wait: it is disabled


def test_wrong_return_types_and_unknown_hooks_disable_the_extension(tmp_path):
    write_extension(tmp_path, "wrongtype", "@hookimpl\ndef input_modifier(text):\n    return 42\n")
    write_extension(tmp_path, "typo", "@hookimpl\ndef input_modifer(text):\n    return text\n")
    write_extension(
        tmp_path, "badparams", "@hookimpl\ndef state_modifier(params):\n    params.top_p = 7\n    return params\n"
    )
    host = host_for(tmp_path)
    assert host.completion_prompt("hi", None) == "hi"
    assert host.sampling(SamplingParams(), "chat", None).top_p == 1.0
    assert host.get("wrongtype").error == "input_modifier returned int, expected str"
    assert host.get("typo").error == "unknown hook(s): input_modifer"
    assert host.get("badparams").error == "state_modifier must return valid SamplingParams"


def test_an_extension_needing_a_newer_inglenook_is_not_loaded(tmp_path):
    write_extension(tmp_path, "future", "", requires={"inglenook": ">=99"})
    host = host_for(tmp_path)
    assert host.get("future").error.startswith("needs Inglenook >=99, this is ")


@pytest.mark.parametrize(
    "data, problem",
    [
        ({"name": "../x", "version": "1", "description": "d"}, "may not contain path separators"),
        ({"name": "Bad Name", "version": "1", "description": "d"}, "lower-case letters"),
        ({"name": "x", "description": "d"}, "missing required field(s): version"),
        ({"name": "x", "version": "1", "description": "d", "requires": {"python": ["not a req !!"]}}, "not valid"),
        ({"name": "x", "version": "1", "description": "d", "requires": {"inglenook": "soon"}}, "not a version range"),
        ({"name": "x", "version": "1", "description": "d", "module": "../evil.py"}, "may not contain"),
        (["name", "x"], "expected a mapping"),
    ],
)
def test_bad_manifests_are_refused_with_the_reason(data, problem):
    with pytest.raises(ManifestError, match="extension.yaml") as info:
        parse_manifest(data, "extension.yaml")
    assert problem in str(info.value)


def test_a_bad_manifest_among_good_ones_is_listed_as_a_problem(tmp_path):
    folder = write_extension(tmp_path, "good", "")
    (tmp_path / "extensions" / "bad").mkdir()
    (tmp_path / "extensions" / "bad" / "extension.yaml").write_text("name: [unclosed")
    host = host_for(tmp_path)
    assert [e.name for e in host.list()] == ["good"] and host.get("good").active
    assert "bad" in host.problems[0] and folder.exists()


# --------------------------------------------------------------------------- text-generation-webui adapter

TGW_SCRIPT = """
import json
params = {"display_name": "TGW test", "is_tab": False, "suffix": " (tgw)", "max_tokens": 5}
calls = []

def input_modifier(string, state, is_chat=False):
    calls.append(("input", is_chat, state["mode"]))
    return string + params["suffix"]

def chat_input_modifier(text, visible_text, state):
    return text + " [internal]", visible_text

def output_modifier(string, state, is_chat=False):
    return string.replace("a", "4")

def history_modifier(history):
    history["internal"].insert(0, ["Earlier question", "Earlier answer"])
    return history

def state_modifier(state):
    state["max_new_tokens"] = params["max_tokens"]
    state["temperature"] = 0
    return state

def bot_prefix_modifier(string, state):
    return string + "Well,"

def custom_css():
    return ".tgw-test { color: red; }"

def custom_js():
    return "console.log('tgw');"
"""


def tgw_extension(user_data: Path, name: str = "tgw_test") -> Path:
    folder = user_data / "extensions" / name
    folder.mkdir(parents=True)
    (folder / "script.py").write_text(TGW_SCRIPT)
    (user_data / "extensions.json").write_text(json.dumps({"enabled": {name: True}}))
    return folder


def test_a_tgw_script_runs_on_our_hooks(tmp_path):
    tgw_extension(tmp_path)
    host = host_for(tmp_path)
    ext = host.get("tgw_test")
    assert ext.active and ext.manifest.kind == "tgw"
    assert [s.name for s in ext.setting_specs] == ["suffix", "max_tokens"]  # display_name/is_tab are not settings
    assert host.completion_prompt("hi", None) == "hi (tgw)"
    messages = host.chat_messages([{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}], None)
    assert messages == [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "Earlier question"},
        {"role": "assistant", "content": "Earlier answer"},
        {"role": "user", "content": "hi [internal] (tgw)"},
    ]
    params = host.sampling(SamplingParams(max_new_tokens=100, temperature=0.7), "chat", None)
    assert (params.max_new_tokens, params.temperature) == (5, 0.0)
    assert host.chat_prompt("P", [], None) == ("PWell,", "Well,")
    assert host.output("banana", None, "stop", "chat", None) == "b4n4n4"
    assert ".tgw-test" in host.custom_css() and "console.log('tgw')" in host.head_html()
    # TGW code reads params: a saved setting is written back into it
    assert host.set_settings("tgw_test", {"suffix": " [saved]"}) == []
    assert host.completion_prompt("hi", None) == "hi [saved]"


def test_a_tgw_script_with_old_one_argument_functions(tmp_path):
    folder = tmp_path / "extensions" / "old_style"
    folder.mkdir(parents=True)
    (folder / "script.py").write_text("def input_modifier(string):\n    return string[::-1]\n")
    (tmp_path / "extensions.json").write_text(json.dumps({"enabled": {"old_style": True}}))
    assert host_for(tmp_path).completion_prompt("abc", None) == "cba"


def test_tgw_history_round_trip():
    messages = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "u1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "u2"},
    ]
    system, history = to_tgw_history(messages)
    assert history["internal"] == [["u1", "a1"], ["u2", ""]]
    assert system + from_tgw_history(history) == messages


@pytest.mark.slow
def test_a_tgw_extension_acts_in_a_real_chat(make_app, tmp_path):
    tgw_extension(tmp_path / "user_data")
    app = make_app()
    app.start()
    final = list(app.chat.stream([{"role": "user", "content": "Hello"}], greedy(40)))[-1]
    assert final.error is None and final.raw_text.startswith("Well,")  # bot prefix put in the reply's mouth
    assert final.usage.completion_tokens <= 5  # state_modifier
    assert final.text == final.raw_text.replace("a", "4")
