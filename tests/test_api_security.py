"""Who may use the API: keys, the admin key, CORS, the Host check, and the refusal to listen
beyond this machine unprotected."""

from __future__ import annotations

import argparse

import httpx
import openai
import pytest
from api_fixtures import COPY, GEMMA, serve, two_model_folder
from conftest import cli, running_server

from webui.api.auth import check_exposure
from webui.cli.options import add_serve_options, serve_settings
from webui.settings import API_KEY_ENV, Settings

KEY, ADMIN = "sk-test-key", "sk-admin-key"


@pytest.fixture(scope="module")
def models(models_dir, tmp_path_factory):
    return two_model_folder(models_dir, tmp_path_factory.mktemp("sec-models"))


@pytest.fixture(scope="module")
def keyed(models, tmp_path_factory):
    with serve(models, tmp_path_factory.mktemp("sec-ud"), api_key=KEY, admin_key=ADMIN) as s:
        yield s


@pytest.mark.slow
def test_api_key_is_required_on_v1_when_set(keyed):
    with pytest.raises(openai.AuthenticationError) as err:
        keyed.client().models.list()  # the client sends "Bearer unused"
    assert "invalid API key" in err.value.message
    r = httpx.get(f"{keyed.url}/v1/models")
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    assert r.headers["www-authenticate"] == "Bearer"
    assert "missing API key" in r.json()["error"]["message"]
    assert GEMMA in [m.id for m in keyed.client(KEY).models.list()]
    assert httpx.get(f"{keyed.url}/healthz").status_code == 200  # the UI's side is not behind the API key


@pytest.mark.slow
def test_admin_key_guards_model_loading(keyed):
    user, admin = keyed.client(KEY), keyed.client(ADMIN)
    with pytest.raises(openai.PermissionDeniedError) as err:
        user.completions.create(model=COPY, prompt="Hi", max_tokens=1)
    assert "admin key" in err.value.message
    r = httpx.post(f"{keyed.url}/v1/internal/model/unload", headers={"Authorization": f"Bearer {KEY}"}, json={})
    assert r.status_code == 403
    assert admin.completions.create(model=COPY, prompt="Hi", max_tokens=1).model == COPY
    assert user.completions.create(model=COPY, prompt="Hi", max_tokens=1).model == COPY  # loaded: anyone may use it


def test_without_a_key_the_api_is_open_on_loopback(models, tmp_path):
    with serve(models, tmp_path / "ud", load=False) as s:
        assert httpx.get(f"{s.url}/v1/models").status_code == 200
        r = httpx.post(f"{s.url}/v1/completions", json={"prompt": "Hi", "max_tokens": 1})
        assert r.status_code == 503 and "no model is loaded" in r.json()["error"]["message"]


def test_cors_is_off_by_default_and_allows_only_the_given_origin(models, tmp_path):
    preflight = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    with serve(models, tmp_path / "a", load=False) as s:
        r = httpx.options(f"{s.url}/v1/chat/completions", headers=preflight)
        assert "access-control-allow-origin" not in r.headers
        r = httpx.get(f"{s.url}/v1/models", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers
    with serve(models, tmp_path / "b", load=False, cors_origins=["https://app.example"]) as s:
        good = {**preflight, "Origin": "https://app.example"}
        r = httpx.options(f"{s.url}/v1/chat/completions", headers=good)
        assert r.headers["access-control-allow-origin"] == "https://app.example"
        r = httpx.options(f"{s.url}/v1/chat/completions", headers=preflight)
        assert r.headers.get("access-control-allow-origin") != "https://evil.example"


@pytest.mark.slow
def test_host_header_must_name_this_server(keyed):
    """DNS rebinding: a page on evil.example resolving to 127.0.0.1 sends Host: evil.example."""
    auth = {"Authorization": f"Bearer {KEY}"}
    r = httpx.get(f"{keyed.url}/v1/models", headers={**auth, "Host": "evil.example"})
    assert r.status_code == 403 and "DNS rebinding" in r.json()["error"]["message"]
    assert httpx.get(f"{keyed.url}/", headers={"Host": "evil.example:7860"}).status_code == 403  # the UI too
    port = keyed.url.rsplit(":", 1)[1]
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", "localhost"):
        assert httpx.get(f"{keyed.url}/v1/models", headers={**auth, "Host": host}).status_code == 200


@pytest.mark.slow
def test_listen_refuses_to_start_without_keys(tmp_path):
    result = cli("serve", "--listen", "--models-dir", str(tmp_path), timeout=120)
    assert result.returncode != 0
    assert "refusing to listen" in result.stderr and "--api-key" in result.stderr and "--auth" in result.stderr
    result = cli("serve", "--listen", "--api-key", "k", "--models-dir", str(tmp_path), timeout=120)
    assert result.returncode != 0 and "UI login" in result.stderr


def test_exposure_rules():
    check_exposure(Settings())  # loopback: fine without anything
    with pytest.raises(ValueError):
        check_exposure(Settings(host="0.0.0.0", api_key="k"))
    check_exposure(Settings(host="0.0.0.0", api_key="k", ui_auth=[("u", "p")]))
    check_exposure(Settings(host="0.0.0.0", insecure_no_auth=True))


def parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_serve_options(p)
    return p.parse_args(list(argv))


def test_keys_come_from_flag_file_or_environment(tmp_path, monkeypatch):
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    assert serve_settings(parse())["api_key"] is None
    key_file = tmp_path / "key"
    key_file.write_text("from-file\n")
    assert serve_settings(parse("--api-key-file", str(key_file)))["api_key"] == "from-file"
    monkeypatch.setenv(API_KEY_ENV, "from-env")
    assert serve_settings(parse())["api_key"] == "from-env"
    assert serve_settings(parse("--api-key", "flag"))["api_key"] == "flag"
    logins = tmp_path / "logins"
    logins.write_text("# people\nann:pw1\nbob:pw2\n")
    assert serve_settings(parse("--auth", "me:x", "--auth-file", str(logins)))["ui_auth"] == [
        ("me", "x"), ("ann", "pw1"), ("bob", "pw2"),
    ]  # fmt: skip
    with pytest.raises(ValueError):
        serve_settings(parse("--auth", "no-colon"))
    assert serve_settings(parse("--listen"))["host"] == "0.0.0.0"


@pytest.mark.slow
def test_a_real_server_process_with_a_key_from_a_file(models, tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text(KEY)
    with running_server("--models-dir", str(models), "--model", GEMMA, "--api-key-file", str(key_file)) as (url, _):
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=300)
        r = client.chat.completions.create(model=GEMMA, messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
        assert r.usage.completion_tokens >= 1
        assert httpx.get(f"{url}/v1/models").status_code == 401


@pytest.mark.slow
def test_ui_login_and_an_api_only_port(models, tmp_path):
    from conftest import free_port

    api_port = free_port()
    args = ("--models-dir", str(models), "--model", GEMMA, "--auth", "ann:secret", "--api-port", str(api_port))
    with running_server(*args) as (url, _):
        assert httpx.get(f"{url}/config").status_code == 401  # the UI wants a login
        with httpx.Client(base_url=url) as browser:
            assert browser.post("/login", data={"username": "ann", "password": "wrong"}).status_code >= 400
            assert browser.post("/login", data={"username": "ann", "password": "secret"}).status_code == 200
            assert browser.get("/config").status_code == 200
        api = f"http://127.0.0.1:{api_port}"
        assert GEMMA in [m["id"] for m in httpx.get(f"{api}/v1/models").json()["data"]]
        assert httpx.get(f"{api}/config").status_code == 404  # the API port serves no UI
