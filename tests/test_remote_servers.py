"""Remote engines against real servers the suite starts: a second Inglenook (scripted fake models, with an API
key) and llama-cpp-python's own OpenAI server on the embedded gemma. Chat through the server's template,
completions, sampling fields mapped or reported as ignored, cancel closing the upstream stream, a slow server
(timeout), a wrong key, and a server that dies mid-stream: each failure one line, the partial reply kept.
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import REPO, cli, collect, free_port, greedy, running_server, write_fake
from fastapi.testclient import TestClient

from backends.base import CancelToken, ModelLoadError, SamplingParams
from backends.remote import NAME, RemoteSettings
from webui.chat.service import TurnOptions
from webui.models import panel
from webui.models.catalog import Catalog
from webui.serve import process_server
from webui.server import build_api_server

pytestmark = pytest.mark.slow
KEY = "peer-key-51c2"
SAY = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "The sea is blue today."}]


# the stop string the peer derives from it ("user":) holds quotes, which a JSON reply escapes: it never ends one
PROBE_TEMPLATE = "{% for m in messages %}\"{{ m['role'] }}\": {{ m['content'] }} {% endfor %}\"assistant\":"


@pytest.fixture(scope="module")
def peer(tmp_path_factory) -> Iterator[str]:
    """A second Inglenook behind an API key, serving ``probe``: a scripted model whose reply is the prompt the
    peer rendered (with its own chat template) and the sampling fields it got, as JSON."""
    folder = tmp_path_factory.mktemp("peer-models")
    write_fake(folder, "probe", echo_prompt=True, chat_template=PROBE_TEMPLATE)
    args = ("--models-dir", str(folder), "--model", "probe.fake", "--user-data", str(folder / "ud"), "--api-key", KEY)
    with running_server(*args) as (url, _):
        yield url


@contextlib.contextmanager
def peer_delay(peer: str, ms: float) -> Iterator[None]:
    """The peer's probe answers at ``ms`` per word (loaded again with the fake loader's token_delay_ms) meanwhile."""
    headers = {"Authorization": f"Bearer {KEY}"}
    for delay in (ms, None):
        if delay is None:
            yield
            delay = 0.0
        body = {"model_name": "probe", "settings": {"token_delay_ms": delay}}
        r = httpx.post(f"{peer}/v1/internal/model/load", json=body, headers=headers, timeout=120)
        assert r.status_code == 200, r.text


def reply_to(app, messages, params: SamplingParams | None = None):
    """The final Reply of a chat turn on the active model, through the chat path the UI and API use."""
    turn = TurnOptions(model=app.engine.info, cancel=CancelToken())
    return list(app.chat.stream(messages, params or greedy(), turn))[-1]


def probe_app(make_fake_app, peer: str):
    app = make_fake_app()
    app.remotes.add("peer", peer, KEY)
    return app


def test_a_second_inglenook_lists_loads_and_chats_with_its_own_template(make_fake_app, peer):
    app = probe_app(make_fake_app, peer)
    assert "peer/probe" in app.remotes.models()
    with TestClient(build_api_server(app)) as client:
        ids = [m["id"] for m in client.get("/v1/models").json()["data"]]
        assert "peer/probe" in ids and "hello" in ids
        r = client.post("/v1/chat/completions", json={"model": "peer/probe", "messages": SAY})
        assert r.status_code == 200, r.text
        got = json.loads(r.json()["choices"][0]["message"]["content"])
    # the messages arrived as messages and the peer applied its own template to them
    assert got["prompt"] == '"system": Be brief. "user": The sea is blue today. "assistant":'
    assert app.engine.info.name == "peer/probe" and app.engine.info.metadata["remote.kind"] == "inglenook"
    assert app.engine.loaded.model.__class__.__name__ == "RemoteModel"  # in this process: no worker for a remote
    text, last = collect(app.engine.generate("first line\nsecond line", greedy(200)))  # not chat: completions
    assert json.loads(text)["prompt"] == "first line\nsecond line" and last.finish_reason == "stop"
    # the Model tab: the remote's model in the dropdown, its panel (the URL, never the key), Load
    catalog = Catalog(app.settings.models_dir, app.remotes)
    assert "peer/probe" in panel.model_choices(catalog) and panel.current(app, catalog) == ("peer/probe", "peer/probe")
    shown = panel.info_markdown(app, catalog, "peer/probe", None)
    assert peer in shown and KEY not in shown
    app.load_model("hello.fake")
    labels, natural = panel.loader_choices(app, catalog, "peer/probe")
    assert natural == NAME and [name for _, name in labels] == [NAME]
    values = panel.form_values(app, catalog, NAME, "peer/probe")
    assert panel.load(app, catalog, "peer/probe", "peer/probe", NAME, values).startswith("Loaded peer/probe")
    # the command line: the same remotes file, another process
    ran = cli("run", "peer/probe", "Hello from the CLI", "--json", "--user-data", str(app.settings.user_data),
              "--models-dir", str(app.settings.models_dir), timeout=300)  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert json.loads(json.loads(ran.stdout)["text"])["prompt"] == "Hello from the CLI" and KEY not in ran.stderr


def test_sampling_fields_reach_the_server_or_are_reported_ignored(make_fake_app, peer):
    app = probe_app(make_fake_app, peer)
    app.remotes.add("strict", peer, KEY, kind="openai")  # the same server, taken as a plain OpenAI one
    params = SamplingParams(temperature=0.7, top_k=7, min_p=0.2, max_new_tokens=200)
    app.load_model("peer/probe")
    got = json.loads(reply_to(app, SAY, params).text)["params"]
    assert got["top_k"] == 7 and got["min_p"] == 0.2 and got["temperature"] == 0.7
    app.load_model("strict/probe")
    final = reply_to(app, SAY, params)
    assert "top_k" not in json.loads(final.text)["params"] and final.ignored_params == ["min_p", "top_k"]


def test_cancel_closes_the_upstream_stream(make_fake_app, peer):
    app = probe_app(make_fake_app, peer)
    app.load_model("peer/probe")
    cancel, pieces = CancelToken(), []
    with peer_delay(peer, 20):
        for chunk in app.engine.generate(" ".join(f"w{i}" for i in range(400)), SamplingParams(), cancel):
            pieces.append(chunk)
            if len(pieces) == 3:
                cancel.cancel()
        assert pieces[-1].finish_reason == "cancelled" and len(pieces) < 100
        headers = {"Authorization": f"Bearer {KEY}"}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the peer saw its client go and gave its engine up
            done = httpx.get(f"{peer}/v1/internal/generations", headers=headers).json()["data"]
            if any(g["disconnected"] and g["finish_reason"] == "cancelled" for g in done):
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"the peer never saw the stream closed: {done}")


def test_slow_server_times_out_in_one_line_and_wrong_key_keeps_the_previous_model(make_fake_app, peer):
    app = probe_app(make_fake_app, peer)
    app.load_model("peer/probe", loader=NAME, settings=RemoteSettings(read_timeout_s=1.0))
    with peer_delay(peer, 3000):
        final = reply_to(app, SAY)
    assert "remote peer" in final.error and "sent nothing for 1 s" in final.error and "\n" not in final.error
    app.load_model("hello.fake")
    app.remotes.add("wrong", peer, "not-the-key")
    with pytest.raises(ModelLoadError) as caught:
        app.load_model("wrong/probe")
    assert "refused the API key" in str(caught.value) and "not-the-key" not in str(caught.value)
    assert "still loaded" in str(caught.value) and app.engine.info.name == "hello"


def test_a_server_that_dies_mid_stream_is_one_error_and_the_partial_reply_is_kept(make_fake_app, tmp_path):
    write_fake(tmp_path / "m", "slow", reply=" ".join(f"w{i}" for i in range(400)), token_delay_ms=20)
    args = ("--models-dir", str(tmp_path / "m"), "--model", "slow.fake", "--user-data", str(tmp_path / "ud"))
    app = make_fake_app()
    with running_server(*args) as (url, proc):
        app.remotes.add("doomed", url)
        app.load_model("doomed/slow")
        turn, seen = TurnOptions(model=app.engine.info, cancel=CancelToken()), []
        for reply in app.chat.stream(SAY, SamplingParams(max_new_tokens=400), turn):
            seen.append(reply)
            if len(reply.text.split()) >= 5 and proc.poll() is None:
                proc.kill()
    final = seen[-1]
    assert final.error and "remote doomed" in final.error and "\n" not in final.error
    assert final.text.startswith("w0 w1 w2 w3") and "kept" in final.error


@contextlib.contextmanager
def llama_cpp_server(model: Path, api_key: str) -> Iterator[tuple[str, object]]:
    """llama-cpp-python's own server (python -m llama_cpp.server) on ``model``; yields its URL and its log."""
    port = free_port()
    args = ["--model", str(model), "--model_alias", "gemma", "--n_ctx", "1024", "--port", str(port),
            "--api_key", api_key, "--n_threads", "2"]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile("w+") as log:

        def tail() -> str:
            log.seek(0)
            return log.read()[-3000:]

        command = [sys.executable, "-m", "webui.bench.llama_cpp_server", *args]
        auth = {"Authorization": f"Bearer {api_key}"}
        with process_server(command, url, log, probe="/v1/models", headers=auth, cwd=REPO, explain=tail):
            yield url, log


def test_llama_cpp_pythons_own_server_as_a_remote(make_fake_app, gemma, gemma_path):
    prompt = "Once upon a time"
    local, _ = collect(gemma.generate(prompt, greedy(12), CancelToken()))
    with llama_cpp_server(gemma_path, "lcs-key") as (url, log):
        app = make_fake_app()
        app.remotes.add("lcs", url, "lcs-key")
        app.remotes.add("lcs-wrong", url, "nope")
        with pytest.raises(ModelLoadError, match="refused the API key"):
            app.load_model("lcs-wrong/gemma")
        info = app.load_model("lcs/gemma")
        assert info.metadata["remote.kind"] == "llama.cpp" and app.engine.ignored_params(greedy()) == []
        text, last = collect(app.engine.generate(prompt, greedy(12)))
        assert text == local and last.finish_reason == "length"  # greedy: the same tokens as our own loader
        assert reply_to(app, SAY).error is None
        log.seek(0)
        served = log.read()
        assert "POST /v1/completions" in served and "POST /v1/chat/completions" in served  # chat: its template
