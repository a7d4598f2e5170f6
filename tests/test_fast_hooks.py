"""Every extension and loader hook has a test (as datasette checks its plugin hooks), and the hooks no other
test implements (``ui``, ``api_routes``, ``startup``, ``shutdown``) are tested here on a fake model.

A hook counts as tested when some test file (or a test plugin under tests/) implements it (``def HOOK(``,
also inside the source of an extension a test writes) or calls it through a plugin manager (``.hook.HOOK(``).
"""

from __future__ import annotations

import json
import re
import textwrap
import time
from pathlib import Path
from types import ModuleType

import pluggy
from conftest import REPO
from fastapi.testclient import TestClient

import backends.hookspecs
import webui.hookspecs
from webui.server import build_server

TESTS = REPO / "tests"


def hook_names(module: ModuleType) -> set[str]:
    """The hookspecs a module declares, as pluggy sees them."""
    manager = pluggy.PluginManager(module.PROJECT)
    manager.add_hookspecs(module)
    return {name for name in vars(manager.hook) if not name.startswith("_")}


def untested(hooks: set[str], sources: list[str]) -> list[str]:
    """The hooks that no source implements or calls."""
    text = "\n".join(sources)
    # "def" after a line start, a space or a "\n" escape (extension code in a one-line string)
    return sorted(h for h in hooks if not re.search(rf"(?:^|\s|\\n)def {h}\(|\.hook\.{h}\(", text, re.M))


def sources_of_tests() -> list[str]:
    """Every Python file under tests/ (test modules, fixtures, test plugins)."""
    return [p.read_text(encoding="utf-8") for p in sorted(TESTS.rglob("*.py")) if ".venv" not in p.parts]


def test_every_extension_and_loader_hook_has_a_test():
    hooks = hook_names(webui.hookspecs) | hook_names(backends.hookspecs)
    assert {"input_modifier", "ui", "api_routes", "startup", "shutdown", "register_loaders"} <= hooks
    missing = untested(hooks, sources_of_tests())
    assert not missing, f"hooks without a test (implement or call them in a test): {', '.join(missing)}"


def test_the_check_names_a_hook_nobody_implements():
    sources = ["@hookimpl\ndef input_modifier(text):\n    return text\n", "pm.hook.register_loaders(register=r)"]
    assert untested({"input_modifier", "register_loaders", "ui", "shutdown"}, sources) == ["shutdown", "ui"]
    assert untested({"ui"}, ["def build_ui(app):"]) == ["ui"]  # a name inside another name does not count
    assert untested({"ui"}, ["'@hookimpl\\ndef ui(where):\\n    pass'"]) == []  # one-line extension code counts


# -- ui, api_routes, startup and shutdown on a fake model -------------------------------------------------

LIFECYCLE = """
import gradio as gr
from webui.extension_api import hookimpl


@hookimpl
def startup(context):
    context.data_dir.mkdir(parents=True, exist_ok=True)
    (context.data_dir / "events").open("a").write("startup\\n")


@hookimpl
def shutdown(context):
    (context.data_dir / "events").open("a").write("shutdown\\n")


@hookimpl
def api_routes(router, context):
    @router.get("/ping")
    def ping():
        return {"pong": context.name}


@hookimpl
def ui(where, context):
    if where == "tab":
        gr.Markdown("lifecycle tab", elem_id="lifecycle-tab-text")
"""


def write_extension(user_data: Path, name: str, code: str) -> None:
    """An installed, enabled extension folder, as ``inglenook extensions install`` leaves one."""
    folder = user_data / "extensions" / name
    folder.mkdir(parents=True)
    manifest = {"name": name, "version": "1.0", "description": "lifecycle hooks"}
    (folder / "extension.yaml").write_text(json.dumps(manifest))
    (folder / "extension.py").write_text(textwrap.dedent(code))
    (user_data / "extensions.json").write_text(json.dumps({"enabled": {name: True}}))


def test_startup_api_routes_ui_and_shutdown_run_when_they_should(make_fake_app, tmp_path):
    user_data = tmp_path / "user_data"  # where make_fake_app's App keeps its data
    write_extension(user_data, "lifecycle", LIFECYCLE)
    app = make_fake_app()
    events = user_data / "extension_data" / "lifecycle" / "events"
    ext = app.extensions.get("lifecycle")
    assert ext.active, ext.error
    deadline = time.monotonic() + 30  # startup hooks run on their own thread once start() has returned
    while not events.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert events.read_text() == "startup\n"

    server = build_server(app)  # builds the page: the ui hook runs for its tab
    assert ext.ui_built and ext.timings["ui"].calls >= 1
    with TestClient(server, base_url="http://127.0.0.1") as client:
        assert client.get("/extensions/lifecycle/ping").json() == {"pong": "lifecycle"}
        assert "lifecycle tab" in client.get("/config").text
        app.extensions.disable("lifecycle")
        assert events.read_text() == "startup\nshutdown\n"
        assert client.get("/extensions/lifecycle/ping").status_code == 404  # routes go away with it
        app.extensions.enable("lifecycle")
        assert client.get("/extensions/lifecycle/ping").status_code == 200
    app.close()
    assert events.read_text() == "startup\nshutdown\nstartup\nshutdown\n"
