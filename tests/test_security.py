"""Issue 18's attacks, replayed the way the attacker ran them: raw ``/gradio_api/queue/join`` with an
``fn_index`` read from ``/config``, raw HTTP with httpx, a real Chromium page on another origin (in
``test_security_browser.py``). Servers here load no model (``load=False``): the attacks never need one.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import re
import struct
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from api_fixtures import serve, two_model_folder
from conftest import REPO, cli, copy_default, rss_mb, running_server
from fastapi.routing import APIRoute
from starlette.routing import Mount
from test_extension_install import make_extension
from test_extensions import write_extension

from backends.base import ModelLoadError, SamplingParams
from backends.gbnf import MAX_GRAMMAR_CHARS, MAX_GRAMMAR_DEPTH, MAX_GRAMMAR_RULES, grammar_problem
from backends.gguf_file import read_header
from webui.access import FailureThrottle, is_ui_admin, origin_allowed
from webui.api.auth import PUBLIC_PATHS, check_exposure
from webui.api.grammar import grammar_for
from webui.chat.history import HistoryStore, to_json
from webui.chat.notebook import NotebookStore
from webui.cli.options import add_serve_options, serve_settings
from webui.extensions.host import ExtensionHost
from webui.extensions.install import InstallError, install
from webui.paths import UnsafeName, safe_name
from webui.server import build_api_server
from webui.settings import Settings
from webui.templates.render import RENDER_TIME_LIMIT_S, TemplateError, render

KEY = "sk-user"
USER, ADMIN = ("alice", "alice-pw"), ("root", "root-pw")
SCRIPT = "import pathlib\npathlib.Path(__file__).with_name('RAN').write_text('ran')\n"


# -- driving Gradio the way the attacker did -----------------------------------------------------------


# handlers that run after a first client-side step (Load shows its progress bar, then loads), by api_name
CHAINED = {"load-model": "load_model"}


def fn_index(client: httpx.Client, url: str, elem_id: str) -> int:
    """The event id of the click handler on the component with ``elem_id``, read from /config."""
    config = client.get(f"{url}/config").json()
    if elem_id in CHAINED:
        return next(d["id"] for d in config["dependencies"] if d.get("api_name") == CHAINED[elem_id])
    ids = {c["id"] for c in config["components"] if c.get("props", {}).get("elem_id") == elem_id}
    return next(d["id"] for d in config["dependencies"] if any(t[0] in ids for t in d["targets"]))


def queue_call(client: httpx.Client, url: str, index: int, data: list) -> dict:
    """POST /gradio_api/queue/join and read the SSE stream to the end: the completed message (or an error)."""
    session = uuid.uuid4().hex
    r = client.post(f"{url}/gradio_api/queue/join",
                    json={"data": data, "fn_index": index, "session_hash": session, "event_data": None})  # fmt: skip
    if r.status_code != 200:
        return {"refused": r.status_code, "body": r.text}
    with client.stream("GET", f"{url}/gradio_api/queue/data", params={"session_hash": session}, timeout=120) as s:
        for line in s.iter_lines():
            if line.startswith("data:"):
                message = json.loads(line[5:])
                if message.get("msg") == "process_completed":
                    return message
    raise AssertionError("the queue stream ended without a result")


def upload(client: httpx.Client, url: str, name: str, text: str) -> Path:
    """Upload a file the way the page does; Gradio keeps it as <tmp>/gradio/<sha>/<name>."""
    r = client.post(f"{url}/gradio_api/upload", files={"files": (name, text.encode())})
    assert r.status_code == 200, r.text
    return Path(r.json()[0])


@contextlib.contextmanager
def logged_in(url: str, user: tuple[str, str]) -> Iterator[httpx.Client]:
    """A client holding the login cookie of ``user`` (Gradio's /login form)."""
    with httpx.Client(timeout=60) as client:
        r = client.post(f"{url}/login", data={"username": user[0], "password": user[1]})
        assert r.status_code == 200, r.text
        yield client


def output_text(message: dict) -> str:
    return json.dumps(message.get("output", message))


# -- 1: code execution through the UI's install handler ------------------------------------------------


@pytest.mark.slow
def test_install_handler_is_admin_only_on_the_server(tmp_path):
    """A logged-in user who is not an admin uploads script.py and calls "Yes, install" by its fn_index:
    refused, nothing installed, nothing ran. The admin login through the same route installs (so the test
    can fail)."""
    models = tmp_path / "models"
    models.mkdir()
    with serve(models, tmp_path / "ud", load=False, ui_auth=[USER], admin_auth=[ADMIN]) as s:
        with logged_in(s.url, USER) as user:
            script = upload(user, s.url, "script.py", SCRIPT)
            index = fn_index(user, s.url, "extension-install-confirm")
            result = queue_call(user, s.url, index, [str(script.parent)])
            assert "needs an admin" in output_text(result)
            enable = fn_index(user, s.url, "extension-enable")
            assert "needs an admin" in output_text(queue_call(user, s.url, enable, ["memory", 0]))
        assert not (tmp_path / "ud" / "extensions").exists() or not any((tmp_path / "ud" / "extensions").iterdir())
        assert s.app.extensions.get("memory").active is False
        with logged_in(s.url, ADMIN) as admin:
            script = upload(admin, s.url, "script.py", SCRIPT)
            index = fn_index(admin, s.url, "extension-install-confirm")
            result = queue_call(admin, s.url, index, [str(script.parent)])
            assert "Installed and enabled" in output_text(result), output_text(result)


def session_call(client: httpx.Client, url: str, session: str, index: int, data: list) -> dict:
    """Like :func:`queue_call` but in one page session, so handlers a ``gr.render`` made in it are callable."""
    r = client.post(f"{url}/gradio_api/queue/join",
                    json={"data": data, "fn_index": index, "session_hash": session, "event_data": None})  # fmt: skip
    assert r.status_code == 200, r.text
    with client.stream("GET", f"{url}/gradio_api/queue/data", params={"session_hash": session}, timeout=120) as s:
        for line in s.iter_lines():
            if line.startswith("data:") and (message := json.loads(line[5:])).get("msg") == "process_completed":
                return message
    raise AssertionError("the queue stream ended without a result")


def rendered_save(client: httpx.Client, url: str, session: str, name: str) -> int:
    """Pick ``name`` in the Extensions tab (its render handler, by fn_index): the Save button's new fn_index."""
    config = client.get(f"{url}/config").json()
    # the form follows a hidden box that the picker sets (emptied first, see webui/ui/extensions_tab.py)
    shown = next(c["id"] for c in config["components"] if c.get("props", {}).get("elem_id") == "extension-form-of")
    render = next(d["id"] for d in config["dependencies"] if [shown, "change"] in [list(t) for t in d["targets"]])
    result = session_call(client, url, session, render, [name, 0])
    made = result["output"]["render_config"]
    button = next(c["id"] for c in made["components"] if c.get("props", {}).get("elem_id") == "extension-save-settings")
    return next(d["id"] for d in made["dependencies"] if any(t[0] == button for t in d["targets"]))


@pytest.mark.slow
def test_extension_settings_save_is_admin_only_on_the_server(tmp_path):
    """A logged-in user who is not an admin renders an enabled extension's settings and calls Save by its
    fn_index: refused, nothing saved. The admin through the same route saves (so the test can fail)."""
    models = tmp_path / "models"
    models.mkdir()
    with serve(models, tmp_path / "ud", load=False, ui_auth=[USER], admin_auth=[ADMIN]) as s:
        s.app.extensions.enable("memory")
        with logged_in(s.url, USER) as user:
            session = uuid.uuid4().hex
            save = rendered_save(user, s.url, session, "memory")
            result = session_call(user, s.url, session, save, ["pwned heading"])
            assert "needs an admin" in output_text(result), output_text(result)
        assert s.app.extensions.get("memory").values.get("heading") != "pwned heading"
        with logged_in(s.url, ADMIN) as admin:
            session = uuid.uuid4().hex
            save = rendered_save(admin, s.url, session, "memory")
            result = session_call(admin, s.url, session, save, ["admin heading"])
            assert "Saved the settings of memory" in output_text(result), output_text(result)
        assert s.app.extensions.get("memory").values["heading"] == "admin heading"


@pytest.mark.slow
def test_the_download_handler_is_admin_only_on_the_server(tmp_path):
    """A logged-in user who is not an admin calls the Download panel's Download by its fn_index: refused
    before the hub is asked anything, and no download job exists."""
    models = tmp_path / "models"
    models.mkdir()
    with serve(models, tmp_path / "ud", load=False, ui_auth=[USER], admin_auth=[ADMIN]) as s:
        with logged_in(s.url, USER) as user:
            index = fn_index(user, s.url, "hub-download")
            result = queue_call(user, s.url, index, ["some/repo", None, False])
            assert "downloading models is refused" in output_text(result), output_text(result)
        assert s.app.downloads.jobs() == []


def test_without_logins_only_a_loopback_server_has_an_admin():
    assert is_ui_admin(Settings(host="127.0.0.1"), None)
    assert not is_ui_admin(Settings(host="0.0.0.0", insecure_no_auth=True), None)
    logins = Settings(host="127.0.0.1", ui_auth=[USER], admin_auth=[ADMIN])
    assert not is_ui_admin(logins, None) and not is_ui_admin(logins, USER[0]) and is_ui_admin(logins, ADMIN[0])


@pytest.mark.slow
def test_load_by_path_and_code_running_settings_need_an_admin(tmp_path):
    """The Model tab's Load handler, called by fn_index with a path outside the models folder."""
    models = tmp_path / "models"
    models.mkdir()
    outside = tmp_path / "elsewhere.fake"
    outside.write_text(json.dumps({"reply": "hi"}))
    with serve(models, tmp_path / "ud", load=False, ui_auth=[USER], admin_auth=[ADMIN]) as s:
        config_path = str(outside)
        for who, allowed in ((USER, False), (ADMIN, True)):
            with logged_in(s.url, who) as client:
                config = client.get(f"{s.url}/config").json()
                load = fn_index(client, s.url, "load-model")
                dep = next(d for d in config["dependencies"] if d["id"] == load)
                data = [None] * len(dep["inputs"])
                data[0] = config_path  # the model box (allow_custom_value): a typed path
                queue_call(client, s.url, load, data)
            assert (s.app.engine.info is not None) is allowed, who
            s.app.engine.unload()


# -- 2: other origins (the raw-HTTP half; the browser half is in test_security_browser.py) -------------


@pytest.mark.slow
def test_foreign_origins_may_not_post_or_preflight_anywhere(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    evil = {"Origin": "http://evil.test:8000"}
    preflight = {**evil, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
    with serve(models, tmp_path / "ud", load=False, allowed_hosts=["mybox.test"]) as s:
        host = {"Host": f"mybox.test:{s.url.rsplit(':', 1)[1]}"}
        for path in ("/gradio_api/upload", "/gradio_api/queue/join", "/v1/chat/completions", "/extensions/x"):
            r = httpx.options(s.url + path, headers={**preflight, **host})
            assert "access-control-allow-origin" not in r.headers, path
            r = httpx.post(s.url + path, headers={**evil, **host}, json={})
            assert r.status_code == 403 and r.json()["error"]["code"] == "origin_not_allowed", path
        r = httpx.get(s.url + "/config", headers={**evil, **host})
        assert "access-control-allow-origin" not in r.headers  # reads are answered, but not to the page
        own = {"Origin": f"http://mybox.test:{s.url.rsplit(':', 1)[1]}", **host}
        r = httpx.post(s.url + "/gradio_api/upload", headers=own, files={"files": ("a.txt", b"a")})
        assert r.status_code == 200


def test_only_our_own_and_the_allowed_origins_count():
    settings = Settings(cors_origins=["https://app.example"])
    assert origin_allowed("http://127.0.0.1:7860", "127.0.0.1:7860", settings)
    assert origin_allowed("https://app.example", "127.0.0.1:7860", settings)
    assert origin_allowed("http://box.lan", "box.lan:80", settings)
    for origin in ("http://127.0.0.1:7861", "null", "http://evil.test:7860", "file://", "https://127.0.0.1:7860x"):
        assert not origin_allowed(origin, "127.0.0.1:7860", settings), origin


# -- 3: a refused extension runs no code -----------------------------------------------------------------


def test_a_requirement_that_needs_building_is_refused_before_any_setup_py_runs(tmp_path):
    marker = tmp_path / "SETUP_RAN"
    sdist_src = tmp_path / "evilpkg-1.0"
    sdist_src.mkdir()
    (sdist_src / "setup.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
        "from setuptools import setup\nsetup(name='evilpkg', version='1.0')\n"
    )
    import tarfile

    sdist = tmp_path / "evilpkg-1.0.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        tar.add(sdist_src, arcname="evilpkg-1.0")
    source = make_extension(tmp_path / "evil", "evil", requires={"python": [f"evilpkg @ {sdist.as_uri()}",
                                                                             "gradio==4.0"]})  # fmt: skip
    host = ExtensionHost(tmp_path / "ud", bundled_dir=None, entry_points=False)
    with pytest.raises(InstallError) as err:
        install(host, str(source))
    assert "evilpkg" in str(err.value) and "building" in str(err.value)
    assert not marker.exists()
    assert not (tmp_path / "ud" / "extensions" / "evil").exists()


def mounted(routes: list, prefix: str = "") -> Iterator[tuple[str, set[str]]]:
    """(path, methods) of every route, through included routers (FastAPI keeps those as _IncludedRouter)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield prefix + route.path, route.methods
        elif hasattr(route, "original_router"):
            yield from mounted(route.original_router.routes, prefix + route.include_context.prefix)
        elif not isinstance(route, Mount):
            raise AssertionError(f"a route the walk does not know: {route!r}")


def enable_memory(user_data: Path) -> None:
    """Enable the bundled memory extension (its /extensions/memory/note route) the way the tab does."""
    host = ExtensionHost(user_data, entry_points=False)
    host.start()
    host.enable("memory")
    host.stop()


# -- 4: every route we mount is behind the key or the login ----------------------------------------------


@pytest.mark.slow
def test_every_mounted_route_needs_the_key_or_the_ui_login(tmp_path):
    """Walks every route on the server (the API's and the extensions'): without credentials each is refused;
    the memory extension's note (the attack: PUT /extensions/memory/note) needs the key or a UI login."""
    models = tmp_path / "models"
    models.mkdir()
    user_data = tmp_path / "ud"
    enable_memory(user_data)
    with serve(models, user_data, load=False, api_key=KEY, ui_auth=[USER]) as s:
        routes = [(p, m) for p, m in mounted(build_api_server(s.app).routes) if p not in PUBLIC_PATHS]
        assert any(p == "/extensions/memory/note" for p, _ in routes) and any(p == "/v1/models" for p, _ in routes)
        with httpx.Client(timeout=30) as anonymous:
            for path, methods in routes:
                for method in methods - {
                    "OPTIONS"
                }:  # preflights carry no credentials (CORS); the Guard judges their origin
                    url = s.url + re.sub(r"\{[^}]*\}", "x", path)
                    r = anonymous.request(method, url, json={"note": "pwned"})
                    assert r.status_code in (401, 429), (method, path, r.status_code)
        assert "pwned" not in json.dumps(s.app.extensions.chat_messages([{"role": "user", "content": "hi"}], None))
        with httpx.Client(timeout=30) as keyed:
            r = keyed.put(f"{s.url}/extensions/memory/note", json={"note": "by key"},
                          headers={"Authorization": f"Bearer {KEY}"})  # fmt: skip
        assert r.status_code in (200, 429)


@pytest.mark.slow
def test_a_ui_login_opens_the_extension_routes_but_not_v1(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    user_data = tmp_path / "ud"
    enable_memory(user_data)
    with serve(models, user_data, load=False, api_key=KEY, ui_auth=[USER]) as s, logged_in(s.url, USER) as user:
        assert user.put(f"{s.url}/extensions/memory/note", json={"note": "by login"}).status_code == 200
        assert user.get(f"{s.url}/extensions/memory/note").json()["note"] == "by login"
        assert user.get(f"{s.url}/v1/models").status_code == 401


@pytest.mark.slow
def test_the_pages_live_channel_needs_the_ui_login_when_there_is_one(tmp_path):
    """/inglenook/live/ID streams a reply in flight to the chat page (webui.chat.live): with UI logins set it is
    refused to an anonymous client, as the page is, and open to a logged-in one."""
    models = tmp_path / "models"
    models.mkdir()
    with serve(models, tmp_path / "ud", load=False, ui_auth=[USER]) as s:
        with httpx.Client(timeout=30) as anonymous:
            r = anonymous.get(f"{s.url}/inglenook/live/20260101-000000-abcdef")
            assert r.status_code == 401 and "log in" in r.text
        with logged_in(s.url, USER) as user:
            r = user.get(f"{s.url}/inglenook/live/20260101-000000-abcdef")
            assert r.status_code == 200 and r.text == "event: end\ndata: {}\n\n"


# -- 5: repeated failures slow down -----------------------------------------------------------------------


@pytest.mark.slow
def test_repeated_wrong_keys_and_logins_are_slowed_down_and_logged(tmp_path, caplog):
    models = tmp_path / "models"
    models.mkdir()
    caplog.set_level(logging.WARNING, logger="webui.access")
    with serve(models, tmp_path / "ud", load=False, api_key=KEY) as s, httpx.Client(timeout=30) as c:
        codes = [c.get(f"{s.url}/v1/models", headers={"Authorization": f"Bearer wrong{i}"}).status_code
                 for i in range(30)]  # fmt: skip
        assert codes[:5] == [401] * 5 and codes.count(429) >= 20
        r = c.get(f"{s.url}/v1/models", headers={"Authorization": f"Bearer {KEY}"})
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1  # even the right key waits its turn
    assert "failed API key from 127.0.0.1" in caplog.text
    with serve(models, tmp_path / "ud2", load=False, ui_auth=[USER]) as s, httpx.Client(timeout=30) as c:
        started = time.monotonic()
        codes = [c.post(f"{s.url}/login", data={"username": "alice", "password": f"x{i}"}).status_code
                 for i in range(30)]  # fmt: skip
        assert codes[:5] == [400] * 5 and codes.count(429) >= 20, codes
        assert time.monotonic() - started < 30
    assert "failed UI login from 127.0.0.1" in caplog.text


def test_the_throttle_waits_longer_after_each_failure_and_forgets():
    now = [0.0]
    throttle = FailureThrottle(free=2, base_s=1.0, max_s=8.0, forget_s=100.0, clock=lambda: now[0])
    for _ in range(2):
        assert throttle.wait_s("a") == 0
        throttle.failed("a", "key")
    throttle.failed("a", "key")
    assert throttle.wait_s("a") == 2.0 and throttle.wait_s("b") == 0
    now[0] = 2.0
    assert throttle.wait_s("a") == 0
    for _ in range(10):
        throttle.failed("a", "key")
    assert throttle.wait_s("a") == 8.0
    now[0] = 200.0
    assert throttle.wait_s("a") == 0


# -- 6: a grammar too deep for llama.cpp's parser --------------------------------------------------------


def deep_grammar(depth: int) -> str:
    return "root ::= " + "(" * depth + '"a"' + ")" * depth + "\n"


def test_grammar_bounds_count_groups_outside_literals_classes_and_comments():
    assert grammar_problem(deep_grammar(MAX_GRAMMAR_DEPTH)) is None
    assert "deep" in grammar_problem(deep_grammar(MAX_GRAMMAR_DEPTH + 1))
    assert "deep" in grammar_problem(deep_grammar(20_000))
    literal = 'root ::= "' + "(" * 5000 + '" [(((] # ' + "(" * 5000 + "\n"
    assert grammar_problem(literal) is None
    assert "characters" in grammar_problem('root ::= "' + "a" * MAX_GRAMMAR_CHARS + '"')
    assert "rules" in grammar_problem("".join(f'r{i} ::= "a"\n' for i in range(MAX_GRAMMAR_RULES + 1)))
    for shipped in (REPO / "presets" / "grammars").glob("*.gbnf"):
        assert grammar_problem(shipped.read_text()) is None, shipped.name
    nested = {"type": "object", "properties": {"a": {"type": "array", "items": {"type": "string"}}}}
    assert grammar_problem(grammar_for("json_schema", {"schema": nested})) is None
    with pytest.raises(ValueError, match="grammar is refused"):
        SamplingParams(grammar=deep_grammar(20_000)).validate()


def test_run_refuses_a_deep_grammar_file_with_one_line(tmp_path):
    """The CLI path: `run MODEL --grammar FILE` (the fake loader: the refusal comes before any loader)."""
    model = tmp_path / "m.fake"
    model.write_text(json.dumps({"reply": "a"}))
    grammar = tmp_path / "deep.gbnf"
    grammar.write_text(deep_grammar(20_000))
    done = cli("run", str(model), "Hi", "--grammar", str(grammar), "--models-dir", str(tmp_path), timeout=120)
    assert done.returncode == 1 and "grammar is refused" in done.stderr and "Traceback" not in done.stderr, done.stderr


def chat_data(config: dict, dep: dict, values: dict[str, object]) -> list:
    """The data array the page would send for ``dep``: every input's current value, some replaced by elem_id."""
    components = {c["id"]: c for c in config["components"]}
    data = []
    for cid in dep["inputs"]:
        props = components[cid].get("props", {})
        data.append(values.get(props.get("elem_id"), props.get("value")))
    return data


@pytest.mark.slow
def test_a_deeply_nested_grammar_from_the_chat_does_not_kill_the_server(models_dir, tmp_path):
    """The attack: the Parameters tab's grammar box 20,000 deep, sent with a chat message by fn_index."""
    with running_server("--models-dir", str(models_dir), "--user-data", str(tmp_path / "ud")) as (url, proc):
        with httpx.Client(timeout=120) as client:
            config = client.get(f"{url}/config").json()
            index = fn_index(client, url, "send")
            dep = next(d for d in config["dependencies"] if d["id"] == index)
            data = chat_data(config, dep, {"param-grammar": deep_grammar(20_000), "chat-input": "Say a"})
            result = queue_call(client, url, index, data)
            assert "grammar is refused" in output_text(result)
            assert proc.poll() is None and client.get(f"{url}/healthz").json()["model"]


# -- 7/8: crafted GGUF hyper-parameters --------------------------------------------------------------------

U32, I32, F32, STR, ARR, U64 = 4, 5, 6, 8, 9, 10


def _gguf_string(text: str) -> bytes:
    data = text.encode()
    return struct.pack("<Q", len(data)) + data


def _gguf_value(value: object) -> tuple[int, bytes]:
    if isinstance(value, str):
        return STR, _gguf_string(value)
    if isinstance(value, float):
        return F32, struct.pack("<f", value)
    if isinstance(value, list):
        return ARR, struct.pack("<IQ", U32, len(value)) + b"".join(struct.pack("<I", v) for v in value)
    return U32, struct.pack("<I", value)


def crafted_gguf(path: Path, **metadata: object) -> Path:
    """A GGUF v3 file with no tensors and the given metadata (keys: dots as "__", "arch" for the architecture)."""
    kv = {"general.architecture": metadata.pop("arch", "llama")}
    arch = kv["general.architecture"]
    for key, value in metadata.items():
        key = key.replace("__", ".")
        kv[key if key.startswith("general.") else f"{arch}.{key}"] = value
    body = b"".join(_gguf_string(k) + struct.pack("<I", _gguf_value(v)[0]) + _gguf_value(v)[1] for k, v in kv.items())
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, len(kv)) + body)
    return path


LLAMA = {"context_length": 2048, "embedding_length": 64, "block_count": 2, "feed_forward_length": 128,
         "attention__head_count": 4, "attention__head_count_kv": 4}  # fmt: skip
BAD = {
    "layers-1000": {**LLAMA, "block_count": 1000},
    "layers-0": {**LLAMA, "block_count": 0},
    "ctx-inf": {**LLAMA, "context_length": float("inf")},
    "ctx-array": {**LLAMA, "context_length": [1, 2]},
    "heads-inf": {**LLAMA, "attention__head_count": float("inf")},
    "heads-per-layer-wrong": {**LLAMA, "attention__head_count": [4, 4, 4]},
    "align-abc": {**LLAMA, "general__alignment": "abc"},
    "align-array": {**LLAMA, "general__alignment": [32]},
    "align-3": {**LLAMA, "general__alignment": 3},
    "experts": {**LLAMA, "expert_count": 2, "expert_used_count": 4},
}


def test_crafted_hyper_parameters_are_refused_by_the_header_check(tmp_path):
    assert read_header(crafted_gguf(tmp_path / "ok.gguf", **LLAMA)).context_length == 2048
    per_layer = crafted_gguf(tmp_path / "per-layer.gguf", **{**LLAMA, "attention__head_count_kv": [4, 2]})
    assert read_header(per_layer).get("{arch}.attention.head_count_kv") == [4, 2]
    for name, metadata in BAD.items():
        with pytest.raises(ModelLoadError) as err:
            read_header(crafted_gguf(tmp_path / f"{name}.gguf", **metadata))
        assert "not a valid GGUF file" in str(err.value), name


def test_run_refuses_a_block_count_llama_cpp_would_abort_on(tmp_path):
    """The attack through `run`: block_count 1000 aborted the process inside llama.cpp (GGML_ASSERT)."""
    bad = crafted_gguf(tmp_path / "layers.gguf", **{**LLAMA, "block_count": 1000})
    done = cli("run", str(bad), "Hello", "--max-tokens", "1", timeout=120)
    assert done.returncode == 1, (done.returncode, done.stderr[-2000:])
    assert "block_count = 1000 is out of range" in done.stderr and "Traceback" not in done.stderr


def bad_models_folder(into: Path) -> Path:
    into.mkdir(parents=True, exist_ok=True)
    for name, metadata in BAD.items():
        crafted_gguf(into / f"{name}.gguf", **metadata)
    return into


@pytest.mark.slow
def test_bad_model_files_are_listed_as_broken_and_the_server_starts(tmp_path):
    models = bad_models_folder(tmp_path / "models")
    done = cli("models", "list", "--json", "--models-dir", str(models), timeout=120)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    listed = json.dumps(json.loads(done.stdout))
    for name in BAD:
        assert name in listed
    assert "block_count = 1000 is out of range" in listed and "general.alignment must be" in listed
    with serve(models, tmp_path / "ud", load=False) as s:  # the UI builds with them in the folder
        for name in ("ctx-inf", "align-abc", "layers-1000"):
            r = httpx.post(f"{s.url}/v1/internal/model/load", json={"model_name": name}, timeout=60)
            error = r.json()["error"]  # the API's handled load failure, with the reason (was: a bare 500)
            assert error["code"] == "model_load_failed" and "not a valid GGUF file" in error["message"], r.text


@pytest.mark.slow
def test_with_bad_files_in_the_folder_other_models_still_load(models_dir, tmp_path):
    """Load through the API and the UI's Load (by fn_index), also after a bad file is dropped in while running."""
    models = bad_models_folder(tmp_path / "models")
    good = copy_default(models_dir, models).stem
    with serve(models, tmp_path / "ud", load=False) as s:
        r = httpx.post(f"{s.url}/v1/internal/model/load", json={"model_name": good}, timeout=300)
        assert r.status_code == 200, r.text
        crafted_gguf(models / "late-ctx-inf.gguf", **BAD["ctx-inf"])
        s.app.engine.unload()
        with httpx.Client(timeout=300) as client:
            config = client.get(f"{s.url}/config").json()
            load = fn_index(client, s.url, "load-model")
            dep = next(d for d in config["dependencies"] if d["id"] == load)
            queue_call(client, s.url, load, chat_data(config, dep, {"model-choice": good, "variant-choice": None}))
        assert s.app.engine.info is not None and s.app.engine.info.name == good


# -- 12: names and symbolic links ------------------------------------------------------------------------

LONG = "m" * 10_000
RTL = "model\u202eloot"


@pytest.mark.slow
def test_blank_long_and_right_to_left_names_are_refused_over_http(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    with serve(models, tmp_path / "ud", load=False) as s, httpx.Client(timeout=60) as c:
        for model_id in ("%20", "%20%20", LONG, RTL):
            r = c.get(f"{s.url}/v1/models/{model_id}")
            assert r.status_code in (400, 404) and r.json()["error"]["param"] == "model", (model_id[:20], r.text)
        for name in ("", "   ", LONG, RTL):
            r = c.post(f"{s.url}/v1/internal/model/load", json={"model_name": name})
            assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_model_name", (name[:20], r.text)
        config = c.get(f"{s.url}/config").json()
        load = fn_index(c, s.url, "load-model")
        dep = next(d for d in config["dependencies"] if d["id"] == load)
        result = queue_call(c, s.url, load, chat_data(config, dep, {"model-choice": LONG, "variant-choice": None}))
        assert result["success"] and "is no model name or path" in output_text(result)


def test_the_command_line_says_one_line_for_a_name_too_long(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    for args in (("run", LONG, "Hi"), ("models", "inspect", LONG), ("run", "default", "Hi", "--grammar", LONG)):
        done = cli(*args, "--models-dir", str(models), timeout=120)
        assert done.returncode == 1 and "Traceback" not in done.stderr, (args[:2], done.stderr[-1500:])


def test_right_to_left_overrides_are_not_names():
    for name in (RTL, "a\u2066b", "x\u200fy"):
        with pytest.raises(UnsafeName):
            safe_name(name)


@pytest.mark.slow
def test_symbolic_links_in_user_data_are_skipped_and_the_server_starts(tmp_path):
    """A linked chats/<owner> folder, a linked history file and a linked notebook.txt: each skipped with one
    log line; the server starts and every page-load handler (by fn_index) succeeds."""
    models, user_data, outside = tmp_path / "models", tmp_path / "ud", tmp_path / "outside"
    models.mkdir()
    outside.mkdir()
    secret = outside / "secret.txt"
    secret.write_text("the outside file")
    store = HistoryStore(user_data)
    real = store.new("instruct")
    real.append("user", "hello")
    store.save(real)
    stolen = store.new("instruct")
    stolen.append("user", "from outside")
    (outside / "c.json").write_text(to_json(stolen))
    (user_data / "chats" / "instruct" / "zzz-linked.json").symlink_to(outside / "c.json")
    (outside / "elsewhere").mkdir()
    (user_data / "chats" / "character-Eve").symlink_to(outside / "elsewhere", target_is_directory=True)
    (user_data / "notebook").mkdir()
    (user_data / "notebook" / "notebook.txt").symlink_to(secret)
    assert [c.id for c in store.list("instruct").conversations] == [real.id]
    assert "character-Eve" not in store.owners() and store.list("character-Eve").conversations == []
    assert store.latest("instruct").id == real.id
    assert NotebookStore(user_data).load() == ""
    with serve(models, user_data, load=False) as s, httpx.Client(timeout=60) as c:
        config = c.get(f"{s.url}/config").json()
        loads = [
            d for d in config["dependencies"] if any(t[1] == "load" for t in d["targets"]) and d.get("backend_fn", True)
        ]  # not the JS-only ones
        assert loads
        for dep in loads:
            result = queue_call(c, s.url, dep["id"], chat_data(config, dep, {}))
            assert result["success"], output_text(result)
            assert "the outside file" not in output_text(result) and "from outside" not in output_text(result)


# -- 13: sizes checked before the engine ------------------------------------------------------------------


@pytest.mark.slow
def test_megabytes_of_messages_are_refused_before_they_are_tokenized(models_dir, tmp_path):
    """The attack: 8 × 1M-character messages held the engine 17.8 s (tokenizing) before the 400."""
    models = two_model_folder(models_dir, tmp_path / "models")
    with serve(models, tmp_path / "ud") as s, httpx.Client(timeout=120) as c:
        messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": "word " * 200_000} for i in range(8)]
        started = time.monotonic()
        r = c.post(f"{s.url}/v1/chat/completions", json={"messages": messages, "max_tokens": 1})
        took = time.monotonic() - started
        assert r.status_code == 400 and "characters" in r.json()["error"]["message"], r.text[:500]
        assert took < 5, took
        ok = c.post(f"{s.url}/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}],
                                                          "max_tokens": 2})  # fmt: skip
        assert ok.status_code == 200


# -- 10: a malicious chat template in a model file ---------------------------------------------------------

LOOP = "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}"
HUGE = "{{ 'x' * 200000000 }}"


@pytest.mark.parametrize("template", [LOOP, HUGE])
@pytest.mark.slow
def test_a_model_files_chat_template_is_bounded_in_time_and_size(tmp_path, template):
    """The attack over HTTP: a model whose own chat template loops 10^10 steps, or renders 200 MB. The
    request ends with the template's error in seconds, memory stays put, and the next request is served."""
    models = tmp_path / "models"
    models.mkdir()
    evil = tmp_path / "evil.fake"
    evil.write_text(json.dumps({"reply": "ok", "chat_template": template}))
    with serve(models, tmp_path / "ud", load=False) as s, httpx.Client(timeout=60) as c:
        s.app.load_model(str(evil))
        before = rss_mb()
        started = time.monotonic()
        r = c.post(f"{s.url}/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}]})
        assert time.monotonic() - started < RENDER_TIME_LIMIT_S + 3
        assert r.status_code in (400, 500) and "template" in r.json()["error"]["message"], r.text
        assert rss_mb() - before < 200
        good = tmp_path / "good.fake"
        good.write_text(json.dumps({"reply": "fine"}))
        s.app.load_model(str(good))
        r = c.post(f"{s.url}/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}]})
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "fine"


def test_template_bounds_leave_real_templates_alone():
    messages = [{"role": "user", "content": "hi " * 1000}]
    assert render("{% for m in messages %}{{ m.content * 2 }}{% endfor %}", messages) == "hi " * 2000
    assert render("{{ 2 ** 10 }}", messages) == "1024"
    with pytest.raises(TemplateError, match="too large"):
        render("{{ 7 ** 100000 }}", messages)


# -- 11: extensions that hang at import or startup ---------------------------------------------------------


def test_an_extension_that_loops_at_import_is_abandoned_for_real_and_its_error_stays_visible(tmp_path):
    """It is imported in a process of its own first: that process is ended, nothing spins here, start-up
    does not wait for a hung startup hook, and the error shows in the tab's rows and `extensions list`,
    also after a later install."""
    write_extension(tmp_path, "spin", "while True:\n    pass\n")
    write_extension(tmp_path, "sleepy", "import time\n@hookimpl\ndef startup():\n    time.sleep(3600)\n")
    write_extension(tmp_path, "fine", "@hookimpl\ndef input_modifier(text):\n    return text + '!'\n")
    host = ExtensionHost(tmp_path, bundled_dir=None, entry_points=False, timeout_s=2)
    started = time.monotonic()
    host.start()
    assert time.monotonic() - started < 2 * 2 + 3  # the checks run side by side; no startup hook is waited for
    spin = host.get("spin")
    assert not spin.active and "import did not finish within 2 s" in spin.error
    assert host.get("fine").active and host.completion_prompt("hi", None) == "hi!"
    cpu = time.process_time()
    time.sleep(1.0)
    assert time.process_time() - cpu < 0.3  # no thread of ours is still running the loop
    deadline = time.monotonic() + 10
    while "startup did not return" not in host.get("sleepy").error:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    make_extension(tmp_path / "src-later", "later")
    install(host, str(tmp_path / "src-later"))  # discover() again: the failed ones keep their errors
    rows = {r["name"]: r for r in host.rows()}
    assert rows["spin"]["status"] == "error" and "import did not finish" in rows["spin"]["error"]
    listed = cli("extensions", "--user-data", str(tmp_path), "list", "--json", timeout=120)
    rows = {r["name"]: r for r in json.loads(listed.stdout)["extensions"]}
    assert rows["spin"]["status"] == "error" and "import did not finish" in rows["spin"]["error"]
    assert rows["fine"]["status"] == "enabled" and not rows["fine"]["error"]


def test_admin_logins_from_the_command_line(tmp_path):
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    add_serve_options(parser)
    admins = tmp_path / "admins"
    admins.write_text("root:pw\n# a comment\nops:pw2\n")
    fields = serve_settings(parser.parse_args(["--auth", "alice:x", "--admin-auth-file", str(admins)]))
    assert fields["ui_auth"] == [("alice", "x")] and fields["admin_auth"] == [("root", "pw"), ("ops", "pw2")]
    with pytest.raises(ValueError, match="both as a login"):
        serve_settings(parser.parse_args(["--auth", "root:x", "--admin-auth", "root:y"]))
    check_exposure(Settings(host="0.0.0.0", api_key="k", admin_auth=[("root", "pw")]))  # an admin login is a login
