"""The bundled extensions, enabled the way a user enables them: memory (a note in every chat prompt, edited
under the chat or over HTTP) and generation_stats (every reply recorded, charted in a tab of its own)."""

from __future__ import annotations

import gradio as gr
import pytest
from conftest import greedy
from fastapi import FastAPI
from fastapi.testclient import TestClient

from webui.extension_api import ReplyInfo
from webui.extensions.host import ExtensionHost
from webui.ui.extensions_tab import build_extension_blocks, build_extensions_tab, table, toggle

QUESTION = [{"role": "user", "content": "What is my name?"}]


def enabled_host(user_data, *names) -> ExtensionHost:
    host = ExtensionHost(user_data, entry_points=False)
    host.start()
    for name in names:
        host.enable(name)
    return host


def test_memory_puts_its_note_into_the_system_prompt(tmp_path):
    host = enabled_host(tmp_path, "memory")
    memory = host.get("memory").plugin
    assert host.chat_messages(QUESTION, None) == QUESTION  # no note yet: nothing changes
    memory.write_note(host.context(host.get("memory")), "The user's name is Ada.")
    heading = "Things to remember about the user and this work:"
    assert host.chat_messages(QUESTION, None) == [
        {"role": "system", "content": f"{heading}\nThe user's name is Ada."},
        *QUESTION,
    ]
    with_system = [{"role": "system", "content": "Be brief."}, *QUESTION]
    assert host.chat_messages(with_system, None)[0]["content"] == f"Be brief.\n\n{heading}\nThe user's name is Ada."
    host.set_settings("memory", {"heading": "Remember:"})
    assert host.chat_messages(QUESTION, None)[0]["content"] == "Remember:\nThe user's name is Ada."


def test_memory_note_over_http_and_its_routes_go_away_when_disabled(tmp_path):
    host = enabled_host(tmp_path, "memory")
    api = FastAPI()
    host.mount_routes(api)
    client = TestClient(api)
    assert client.get("/extensions/memory/note").json() == {"note": ""}
    assert client.put("/extensions/memory/note", json={"note": "  Likes tea. "}).json() == {"note": "Likes tea."}
    assert (tmp_path / "extension_data" / "memory" / "memory.txt").read_text() == "Likes tea."
    assert client.put("/extensions/memory/note", json={"note": "x" * 20_001}).status_code == 400
    host.disable("memory")
    assert client.get("/extensions/memory/note").status_code == 404


@pytest.mark.slow
def test_memory_reaches_the_model_in_a_real_chat(make_app, tmp_path):
    app = make_app()
    app.start()
    before = list(app.chat.stream(QUESTION, greedy(4)))[-1]
    app.extensions.enable("memory")
    app.extensions.get("memory").plugin.write_note(
        app.extensions.context(app.extensions.get("memory")), "The user's name is Ada and she likes tea."
    )
    after = list(app.chat.stream(QUESTION, greedy(4)))[-1]
    assert after.usage.prompt_tokens > before.usage.prompt_tokens + 10  # the note is in the prompt
    saved_chat_untouched = app.history.list("instruct").conversations == []
    assert saved_chat_untouched


@pytest.mark.slow
def test_generation_stats_records_every_reply_and_keeps_the_newest(make_app):
    app = make_app()
    app.start()
    app.extensions.enable("generation_stats")
    ext = app.extensions.get("generation_stats")
    stats = ext.plugin
    context = app.extensions.context(ext)
    finals = [list(app.chat.complete("Once upon a time", greedy(n)))[-1] for n in (3, 5)]
    finals.append(list(app.chat.stream(QUESTION, greedy(4)))[-1])
    rows = stats.read_rows(context)
    assert [r["completion_tokens"] for r in rows] == [f.usage.completion_tokens for f in finals]
    assert [r["mode"] for r in rows] == ["completion", "completion", "chat"]
    assert [r["n"] for r in rows] == [1, 2, 3] and all(r["tokens_per_s"] > 0 for r in rows)
    assert all(f.text == f.raw_text for f in finals)  # it only observes
    assert stats.summary(rows).startswith("**3 replies**")
    app.extensions.set_settings("generation_stats", {"keep": 10})
    for _ in range(9):
        stats.record(context, ReplyInfo(raw_text="x", completion_tokens=1, tokens_per_s=1.0), 10)
    assert len(stats.read_rows(context)) == 10


def test_the_extensions_tab_builds_extension_tabs_and_toggles_live(tmp_path, make_app):
    app = make_app()
    app.extensions.enable("memory")
    app.extensions.enable("generation_stats")
    with gr.Blocks() as blocks:
        with gr.Tab("Chat"):
            chat_blocks = build_extension_blocks(app)
        build_extensions_tab(app, chat_blocks)
    labels = [b.label for b in blocks.blocks.values() if isinstance(b, gr.Tab)]
    assert "Generation Stats" in labels and "Extensions" in labels
    assert list(chat_blocks) == ["memory"]  # memory builds a block under the chat, no tab
    assert [row[:3] for row in table(app)] == [
        ["memory", "1.0.0", "enabled"], ["calculator", "1.0.0", "disabled"], ["generation_stats", "1.0.0", "enabled"]
    ]  # fmt: skip
    assert toggle(app, "memory", False) == (
        "Disabled memory: its hooks have stopped and its interface is hidden.",
        False,
    )
    assert toggle(app, "memory", True) == ("Enabled memory.", False)  # its block was built: no restart needed
    assert toggle(app, "nope", True)[0].startswith("⚠️ no extension named 'nope'")


def test_enabling_an_extension_whose_interface_was_not_built_asks_for_a_restart(make_app):
    app = make_app()
    message, restart = toggle(app, "generation_stats", True)
    assert restart and message == "Enabled generation_stats: its hooks act now; restart to apply its interface."
