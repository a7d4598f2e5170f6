"""The ``inglenook`` command line, run for real: ``python -m webui`` in a subprocess on the embedded Gemma.

Every call names its models folder (the session's ``models_dir`` or a temporary one), never ./models.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from conftest import INGLENOOK, REPO, cli, free_port, running_server

PROMPT = "The capital of France is"
STATS = re.compile(r"\[time to first token \d+ ms \| (\d+) tokens \| [\d.]+ tok/s[^\]]*\]")


def run_json(models_dir: Path, *args: str) -> dict:
    """``inglenook run default PROMPT --json ...``: the one JSON object it prints on stdout."""
    result = cli("run", "default", PROMPT, "--json", "--models-dir", str(models_dir), *args)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, f"expected exactly one JSON line on stdout, got:\n{result.stdout}"
    return json.loads(lines[0])


def assert_clean_error(result: subprocess.CompletedProcess, *expected: str) -> str:
    """A failed command: non-zero exit, nothing on stdout, and one ``error: ...`` line on stderr, no traceback."""
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), f"want one 'error: ...' line, got:\n{result.stderr}"
    message = lines[0].lower()
    assert any(word.lower() in message for word in expected), f"{lines[0]!r} should say one of {expected}"
    return lines[0]


@pytest.fixture(scope="module")
def greedy_run(models_dir: Path) -> dict:
    """The greedy 12-token completion of PROMPT, as ``--json`` reports it."""
    return run_json(models_dir, "--temperature", "0", "--max-tokens", "12")


# -- one-shot completion ------------------------------------------------------------------------


@pytest.mark.slow
def test_json_run_prints_one_object_with_the_text_and_its_stats(greedy_run: dict, gemma_path: Path):
    assert greedy_run["text"].strip()
    assert greedy_run["model"] == gemma_path.stem
    assert greedy_run["loader"] == "llama.cpp"
    assert greedy_run["error"] is None
    usage = greedy_run["usage"]
    assert greedy_run["finish_reason"] in ("length", "stop")
    if greedy_run["finish_reason"] == "length":
        assert usage["completion_tokens"] == 12
    assert 0 < usage["completion_tokens"] <= 12
    assert usage["prompt_tokens"] > 0
    assert usage["ttft_ms"] > 0 and usage["tokens_per_s"] > 0


@pytest.mark.slow
def test_greedy_output_is_the_same_every_time(greedy_run: dict, models_dir: Path):
    again = run_json(models_dir, "--temperature", "0", "--max-tokens", "12")
    assert again["text"] == greedy_run["text"]


@pytest.mark.slow
def test_a_seed_reproduces_a_sampled_completion(models_dir: Path):
    sampled = ("--temperature", "1", "--max-tokens", "24")
    first = run_json(models_dir, *sampled, "--seed", "7")
    second = run_json(models_dir, *sampled, "--seed", "7")
    other = run_json(models_dir, *sampled, "--seed", "8")
    assert first["text"] == second["text"]
    assert other["text"] != first["text"], "a different seed should sample a different completion"


@pytest.mark.slow
def test_max_tokens_caps_the_completion(greedy_run: dict, models_dir: Path):
    short = run_json(models_dir, "--temperature", "0", "--max-tokens", "3")
    assert short["usage"]["completion_tokens"] == 3
    assert short["finish_reason"] == "length"
    assert greedy_run["text"].startswith(short["text"]), "the first 3 greedy tokens begin the 12-token completion"


@pytest.mark.slow
def test_streaming_run_prints_the_text_on_stdout_and_the_stats_on_stderr(greedy_run: dict, models_dir: Path):
    result = cli("run", "default", PROMPT, "--temperature", "0", "--max-tokens", "12", "--models-dir", str(models_dir))
    assert result.returncode == 0, result.stderr
    assert result.stdout == greedy_run["text"], "stdout holds exactly the completion, nothing else"
    stats = STATS.search(result.stderr)
    assert stats, result.stderr
    assert int(stats.group(1)) == greedy_run["usage"]["completion_tokens"]
    assert "tok/s" not in result.stdout


@pytest.mark.slow
def test_a_stop_string_ends_the_text_before_it_and_is_not_printed(greedy_run: dict, models_dir: Path):
    text = greedy_run["text"]
    # the longest word of the completion's second half: a stop string the greedy run is known to reach
    stop = max(text[len(text) // 2 :].split(), key=len)
    expected = text[: text.index(stop)]
    assert expected.strip(), f"pick a later stop string than {stop!r} in {text!r}"
    result = cli(
        "run", "default", PROMPT, "--temperature", "0", "--max-tokens", "12", "--stop", stop,
        "--models-dir", str(models_dir),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected
    assert stop not in result.stdout
    assert "hit the token limit" not in result.stderr


@pytest.mark.slow
def test_the_llama_cpp_loader_can_be_named(models_dir: Path):
    result = run_json(models_dir, "--loader", "llama.cpp", "--temperature", "0", "--max-tokens", "4")
    assert result["loader"] == "llama.cpp"
    assert result["text"]


def test_an_unknown_loader_is_refused_with_the_known_ones(models_dir: Path):
    result = cli("run", "default", PROMPT, "--loader", "nope", "--max-tokens", "4", "--models-dir", str(models_dir))
    line = assert_clean_error(result, "unknown loader")
    assert "nope" in line and "llama.cpp" in line


# -- interactive chat --------------------------------------------------------------------------


@pytest.mark.slow
def test_interactive_chat_replies_and_quits_on_bye(models_dir: Path):
    result = cli(
        "run", "default", "--temperature", "0", "--max-tokens", "8", "--models-dir", str(models_dir),
        input="Hello\n/bye\n",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Chatting with" in result.stdout and "/bye" in result.stdout
    prompts = result.stdout.split(">>> ")
    assert len(prompts) == 3, f"one prompt for 'Hello', one for '/bye':\n{result.stdout}"
    assert prompts[1].strip(), "the model's reply is printed after the first prompt"
    assert STATS.search(result.stderr), result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_chat_is_run_in_the_chat_format(models_dir: Path):
    """``inglenook chat MODEL "MESSAGE"`` equals ``run --chat``; ``inglenook chat`` alone is the terminal chat."""
    args = ["Name a colour.", "--json", "--temperature", "0", "--max-tokens", "6", "--models-dir", str(models_dir)]
    as_chat, as_run = cli("chat", "default", *args), cli("run", "default", *args, "--chat")
    raw = cli("run", "default", *args)
    assert as_chat.returncode == as_run.returncode == raw.returncode == 0, as_chat.stderr
    chat_reply, run_reply = json.loads(as_chat.stdout), json.loads(as_run.stdout)
    assert chat_reply["text"] == run_reply["text"]
    # the Gemma turn markup makes the chat prompt longer than the raw message
    assert chat_reply["usage"]["prompt_tokens"] == run_reply["usage"]["prompt_tokens"]
    assert chat_reply["usage"]["prompt_tokens"] > json.loads(raw.stdout)["usage"]["prompt_tokens"]
    session = cli("chat", "--max-tokens", "4", "--models-dir", str(models_dir), input="/bye\n")
    assert session.returncode == 0 and "Chatting with" in session.stdout, session.stderr


# -- help --------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["--help"], ["serve", "--help"]], ids=["inglenook", "inglenook serve"])
def test_help_documents_the_server_options(command: list[str]):
    result = cli(*command, timeout=60)
    assert result.returncode == 0, result.stderr
    for option in ("--host", "--port", "--models-dir", "--model", "--loader", "--threads", "--n-ctx"):
        assert re.search(rf"{option}\b", result.stdout), f"{option} missing from {' '.join(command)}"
    assert "127.0.0.1" in result.stdout, "the help says where the server listens by default"


# -- bad input -------------------------------------------------------------------------------


def _missing_path(tmp: Path, gemma: Path) -> str:
    return str(tmp / "nowhere" / "model.gguf")


def _truncated_gguf(tmp: Path, gemma: Path) -> str:
    with gemma.open("rb") as f:
        (tmp / "x.gguf").write_bytes(f.read(1 << 20))
    return str(tmp / "x.gguf")


def _random_bytes(tmp: Path, gemma: Path) -> str:
    (tmp / "noise.gguf").write_bytes(os.urandom(64 * 1024))
    return str(tmp / "noise.gguf")


def _empty_folder(tmp: Path, gemma: Path) -> str:
    (tmp / "empty").mkdir()
    return str(tmp / "empty")


def _escaping_name(tmp: Path, gemma: Path) -> str:
    return "../../etc/passwd"


def _unknown_name(tmp: Path, gemma: Path) -> str:
    return "no-such-model"


BAD_MODELS = [
    pytest.param(_missing_path, ("not found", "does not exist"), id="path that does not exist"),
    pytest.param(_truncated_gguf, ("truncated", "ends early", "not a valid gguf"), id="truncated gguf"),
    pytest.param(_random_bytes, ("not a valid gguf",), id="random bytes named .gguf"),
    pytest.param(_empty_folder, ("holds no model",), id="folder with no model"),
    pytest.param(_escaping_name, ("not found", "no loader recognises", "outside", "may not"), id="../../etc/passwd"),
    pytest.param(_unknown_name, ("not found",), id="unknown name"),
]


@pytest.mark.parametrize(("make", "expected"), BAD_MODELS)
def test_a_bad_model_is_a_one_line_error_not_a_traceback(make, expected, tmp_path: Path, gemma_path: Path):
    spec = make(tmp_path, gemma_path)
    models = tmp_path / "models"
    models.mkdir()
    result = cli("run", spec, "hello", "--max-tokens", "2", "--models-dir", str(models), timeout=120)
    line = assert_clean_error(result, *expected)
    assert Path(spec).name in line, "the message names the model it is about"


def test_an_unknown_model_name_lists_what_is_available(models_dir: Path, gemma_path: Path):
    result = cli("run", "no-such-model", "hello", "--models-dir", str(models_dir), timeout=120)
    line = assert_clean_error(result, "not found")
    assert gemma_path.name in line


@pytest.mark.slow
def test_serve_with_a_missing_model_exits_with_a_clear_error(tmp_path: Path):
    result = cli(
        "serve", "--port", str(free_port()), "--model", "no-such-model", "--models-dir", str(tmp_path / "models"),
        "--user-data", str(tmp_path / "user_data"), timeout=120,
    )  # fmt: skip
    assert_clean_error(result, "not found")
    assert "running at" not in result.stdout


@pytest.mark.slow
def test_serve_on_a_port_already_in_use_says_so_and_never_claims_to_run(models_dir: Path, tmp_path: Path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli(
            "serve", "--port", str(port), "--models-dir", str(models_dir), "--user-data", str(tmp_path / "user_data"),
            timeout=120,
        )  # fmt: skip
    assert "running at" not in result.stdout, "it must not announce a URL that another program answers"
    line = assert_clean_error(result, "in use", "cannot listen", "could not listen")
    assert str(port) in line


# -- serve -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(models_dir: Path, tmp_path_factory) -> tuple[str, subprocess.Popen]:
    user_data = tmp_path_factory.mktemp("user_data")
    with running_server("--models-dir", str(models_dir), "--user-data", str(user_data)) as (url, proc):
        yield url, proc


@pytest.mark.slow
def test_serve_answers_on_localhost_with_the_ui_and_a_health_check(server, gemma_path: Path):
    url, proc = server
    page = httpx.get(f"{url}/", timeout=30)
    assert page.status_code == 200
    assert "text/html" in page.headers["content-type"]
    assert "gradio_config" in page.text and '"title":"Inglenook"' in page.text
    health = httpx.get(f"{url}/healthz", timeout=10)
    assert health.status_code == 200
    assert health.json() == {"status": "ok", "model": gemma_path.stem}
    assert f"Inglenook is running at {url}" in proc.output()


@pytest.mark.slow
def test_serve_does_not_send_usage_analytics_to_gradio(server):
    """A local app must not phone home: Gradio's telemetry and version check are off."""
    url, _ = server
    config = httpx.get(f"{url}/config", timeout=10).json()
    assert config["analytics_enabled"] is False


@pytest.mark.slow
def test_serve_on_all_interfaces_warns_that_nothing_is_protected(models_dir: Path, tmp_path: Path):
    """Binding 0.0.0.0 unprotected (it takes --insecure-no-auth) prints the warning first thing; no request is
    ever sent to the server. Without that flag it refuses to start (tests/test_api_security.py)."""
    proc = subprocess.Popen(
        [*INGLENOOK, "serve", "--host", "0.0.0.0", "--insecure-no-auth", "--port", str(free_port()),
         "--models-dir", str(models_dir), "--user-data", str(tmp_path / "user_data")],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    seen = ""
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stderr, selectors.EVENT_READ)
            deadline = time.monotonic() + 120
            while "WARNING" not in seen and time.monotonic() < deadline and proc.poll() is None:
                if sel.select(timeout=1):
                    seen += proc.stderr.readline()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        proc.stderr.close()
    warning = next((line for line in seen.splitlines() if "WARNING" in line), "")
    assert "0.0.0.0" in warning, seen
    assert "anyone" in warning and "--insecure-no-auth" in warning
