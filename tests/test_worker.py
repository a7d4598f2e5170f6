"""Models in worker processes: a crash costs one reply, never the server; unload returns the memory.

The fake loader (tests/plugins/fake_loader, a real entry-point plugin) kills its own process on demand
(``crash``: "load", "token:N" = SIGSEGV after N tokens, "abort:N"), the way a native fault in llama.cpp or
torch does. These tests drive it through the engine, the chat core, the API and ``inglenook run``.
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from api_fixtures import serve
from conftest import cli, collect, greedy, rss_mb

from backends.base import CancelToken, GenerationError, ModelLoadError, ModelNotLoaded, PromptTooLong, SamplingParams
from backends.registry import LoaderRegistry
from webui.engine import Engine
from webui.worker import WorkerCrashed, WorkerModel

REPLY = "one two three four five six"


def fake(folder: Path, name: str, **script) -> Path:
    """A scripted model file (see the fake loader's docstring)."""
    path = folder / f"{name}.fake"
    path.write_text(json.dumps({"reply": REPLY, **script}), encoding="utf-8")
    return path


def rewrite(path: Path, **script) -> None:
    """Change a fake model's script, with a new modification time (the engine notices a changed file)."""
    path.write_text(json.dumps({"reply": REPLY, **script}), encoding="utf-8")
    stamp = time.time() + 5
    os.utime(path, (stamp, stamp))


@pytest.fixture
def engine():
    engine = Engine(LoaderRegistry())
    yield engine
    engine.unload()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def worker_pid(engine: Engine) -> int:
    model = engine.loaded.model
    assert isinstance(model, WorkerModel), "every loaded model lives in a worker process"
    return model.pid


# -- the engine -----------------------------------------------------------------------------------------------


def test_a_typed_error_in_the_worker_reaches_the_caller_as_its_type(engine, tmp_path):
    """The API maps errors by type (webui/api/errors.py): a prompt too long stays PromptTooLong across the pipe,
    and the worker keeps serving."""
    engine.load(fake(tmp_path, "short", context_length=64))
    with pytest.raises(PromptTooLong, match="over the context of 64"):
        collect(engine.generate("word " * 100, SamplingParams()))
    with pytest.raises(ModelNotLoaded):
        collect(engine.generate("hi", SamplingParams(), model=tmp_path / "other.fake"))
    assert collect(engine.generate("hi", SamplingParams()))[0] == REPLY


def test_a_model_runs_in_its_own_process_and_unload_ends_it(engine, tmp_path):
    path = fake(tmp_path, "plain")
    info = engine.load(path)
    pid = worker_pid(engine)
    assert pid != os.getpid() and alive(pid)
    assert info.name == "plain" and info.loader == "fake"
    text, last = collect(engine.generate("hi", SamplingParams()))
    assert text == REPLY and last.finish_reason == "stop" and last.usage.completion_tokens == 6
    assert engine.count_tokens("héllo") == len("héllo".encode())  # tokenize crosses the pipe
    assert engine.loaded.model.detokenize(list(b"abc")) == "abc"
    engine.unload()
    assert engine.loaded is None
    deadline = time.monotonic() + 10
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pid), "unload ends the worker, so its memory returns"


def test_a_crash_mid_reply_ends_that_reply_with_a_clear_error_and_the_next_request_reloads(engine, tmp_path):
    path = fake(tmp_path, "crashy", crash="token:2")
    engine.load(path)
    first_pid = worker_pid(engine)
    got: list[str] = []
    with pytest.raises(GenerationError) as err:
        for chunk in engine.generate("hi", SamplingParams()):
            got.append(chunk.text)
    assert "".join(got) == "one two", "the text before the crash was streamed"
    assert "the model process crashed (SIGSEGV)" in str(err.value) and "\n" not in str(err.value)
    crash = engine.last_crash
    assert crash is not None and crash.how == "SIGSEGV" and crash.during == "generating"
    assert any("Segmentation fault" in line for line in crash.stderr), crash.stderr
    assert engine.info.name == "crashy", "the model still counts as loaded"

    rewrite(path)  # the model file is fixed: the next request loads it again and works
    text, last = collect(engine.generate("hi", SamplingParams()))
    assert text == REPLY and last.finish_reason == "stop"
    assert worker_pid(engine) != first_pid, "a new worker"


def test_a_worker_killed_while_idle_is_noticed_and_replaced_before_the_next_request(engine, tmp_path):
    engine.load(fake(tmp_path, "victim"))
    pid = worker_pid(engine)
    os.kill(pid, signal.SIGKILL)  # what the out-of-memory killer does
    engine.loaded.model.process.wait(10)
    text, _ = collect(engine.generate("hi", SamplingParams()))
    assert text == REPLY, "the request after the death was not the one to pay for it"
    assert worker_pid(engine) != pid
    assert engine.last_crash.how == "SIGKILL (out of memory?)" and engine.last_crash.during == "idle"


def test_an_abort_is_reported_as_such(engine, tmp_path):
    engine.load(fake(tmp_path, "aborts", crash="abort:0"))
    with pytest.raises(WorkerCrashed, match=r"crashed \(SIGABRT\)"):
        collect(engine.generate("hi", SamplingParams()))


def test_a_model_that_crashes_on_load_twice_is_marked_broken_and_the_current_one_stays(engine, tmp_path):
    good = fake(tmp_path, "good")
    engine.load(good)
    pid = worker_pid(engine)
    bad = fake(tmp_path, "bad", crash="load")
    with pytest.raises(ModelLoadError) as err:
        engine.load(bad)
    message = str(err.value)
    assert "crashed (SIGSEGV)" in message and "marked broken" in message and "good.fake is still loaded" in message
    assert engine.last_crash.during == "loading"
    assert engine.info.name == "good" and worker_pid(engine) == pid, "the previous model was never let go"
    assert collect(engine.generate("hi", SamplingParams()))[0] == REPLY

    crash = engine.last_crash
    start = time.perf_counter()
    with pytest.raises(ModelLoadError, match="marked broken"):
        engine.load(bad)  # answered from the mark: no new process is started
    assert engine.last_crash is crash and time.perf_counter() - start < 1
    assert "bad.fake" in engine.broken

    rewrite(bad)  # a changed file is tried again
    assert engine.load(bad).name == "bad"
    assert collect(engine.generate("hi", SamplingParams()))[0] == REPLY


def test_a_failed_reload_of_the_current_model_leaves_it_loaded_and_usable(engine, tmp_path):
    """Issue 18 item 9: the new worker starts first; the switch happens only once it is up."""
    path = fake(tmp_path, "current")
    engine.load(path)
    pid = worker_pid(engine)
    settings = engine.loaded.loader.settings_type(crash="load")
    with pytest.raises(ModelLoadError, match="current.fake is marked broken"):
        engine.reload(settings)
    assert worker_pid(engine) == pid and collect(engine.generate("hi", SamplingParams()))[0] == REPLY
    with pytest.raises(ModelLoadError, match="current.fake is still loaded"):
        engine.load(path, settings=settings)  # the same model, other settings, through load
    assert worker_pid(engine) == pid and collect(engine.generate("hi", SamplingParams()))[0] == REPLY


def children() -> set[int]:
    """This process's child processes (from /proc)."""
    found = set()
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) == os.getpid():
                    found.add(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    return found


def test_a_load_error_in_the_worker_is_a_load_error_and_leaves_no_process(engine, tmp_path):
    path = fake(tmp_path, "small", context_length=16)
    before = children()
    settings = engine.registry.get("fake").settings_type(crash="sideways")
    with pytest.raises(ModelLoadError, match="crash must be"):
        engine.loaded_model = WorkerModel(engine.registry.get("fake"), path, settings)  # check() is skipped here
    assert children() == before, "the worker of a failed load has ended"
    engine.load(path)
    with pytest.raises(ValueError, match="over the context"):  # an error in generate is not a crash
        collect(engine.generate("x" * 100, SamplingParams()))
    assert engine.last_crash is None
    text, _ = collect(engine.generate("hi", SamplingParams()))
    assert text == REPLY, "the worker kept serving"


def test_cancel_and_giving_up_early_cross_the_process_boundary(engine, tmp_path):
    engine.load(fake(tmp_path, "slow", reply=" ".join(["word"] * 200), token_delay_ms=20))
    cancel = CancelToken()
    seen = 0
    start = time.perf_counter()
    for chunk in engine.generate("hi", SamplingParams(), cancel):
        seen += bool(chunk.text)
        if seen == 3:
            engine.cancel()
        if chunk.finish_reason:
            assert chunk.finish_reason == "cancelled"
    assert time.perf_counter() - start < 2, "200 tokens at 20 ms would take 4 s"
    stream = engine.generate("hi", SamplingParams())
    next(stream)
    stream.close()  # a client that went away
    text, last = collect(engine.generate("hi", SamplingParams(max_new_tokens=3)))
    assert text == "word word word" and last.finish_reason == "length", "nothing of the abandoned stream leaks"


# -- the chat core, the API and `run` ---------------------------------------------------------------------------


def test_the_chat_core_keeps_everything_saved_and_the_partial_reply(make_app, tmp_path):
    app = make_app()
    path = fake(tmp_path, "chatty")
    app.load_model(str(path))
    conversation = app.history.new("instruct")
    turns = list(app.chat.turn(conversation, "first", SamplingParams()))
    assert turns[-1].error is None
    app.engine.load(path, settings=app.registry.get("fake").settings_type(crash="token:3"))
    final = list(app.chat.turn(conversation, "second", SamplingParams()))[-1]
    assert "the model process crashed (SIGSEGV)" in final.error
    saved = app.history.load("instruct", conversation.id)
    assert [(m.role, m.content) for m in saved.messages] == [
        ("user", "first"),
        ("assistant", REPLY),
        ("user", "second"),
        ("assistant", "one two three"),
    ]


@pytest.fixture
def fake_server(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    fake(models, "crashy", crash="token:2")
    with serve(models, tmp_path / "user_data", load=False) as served:
        served.app.load_model(str(models / "crashy.fake"))
        yield served, models


def test_the_api_answers_a_crash_with_a_500_or_an_error_event_and_stays_up(fake_server):
    served, models = fake_server
    body = {"model": "crashy", "messages": [{"role": "user", "content": "hi"}]}
    r = httpx.post(f"{served.url}/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 500, r.text
    error = r.json()["error"]
    assert "the model process crashed (SIGSEGV)" in error["message"] and error["code"] == "model_crashed"

    with httpx.stream("POST", f"{served.url}/v1/completions", json={"prompt": "hi", "stream": True},
                      timeout=60) as r:  # fmt: skip
        assert r.status_code == 200
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert "the model process crashed" in json.loads(events[-2])["error"]["message"]
    text = "".join(json.loads(e)["choices"][0]["text"] for e in events[:-2])
    assert text == "one two", "the text before the crash was streamed"

    info = httpx.get(f"{served.url}/v1/internal/model/info", timeout=30).json()
    assert info["model_name"] == "crashy" and info["last_crash"]["how"] == "SIGSEGV"
    assert any("Segmentation fault" in line for line in info["last_crash"]["stderr"])

    rewrite(models / "crashy.fake")
    r = httpx.post(f"{served.url}/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == REPLY


def test_run_exits_non_zero_with_one_line_when_the_model_crashes(tmp_path):
    path = fake(tmp_path, "crashy", crash="token:1")
    result = cli("run", str(path), "hi", "--user-data", str(tmp_path / "user_data"), timeout=120)
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "the model process crashed (SIGSEGV)" in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout.startswith("one"), "the text before the crash was printed"


# -- real models -------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_gemma_generation_in_a_worker_gives_the_same_greedy_text_as_in_process(make_app, gemma):
    app = make_app()
    app.load_model("default")
    assert isinstance(app.engine.loaded.model, WorkerModel)
    prompt = "The capital of France is"
    in_worker, last = collect(app.engine.generate(prompt, greedy(24)))
    in_process = "".join(c.text for c in gemma.generate(prompt, greedy(24), CancelToken()))
    assert in_worker == in_process and last.usage.completion_tokens > 0


@pytest.mark.slow
def test_ten_load_unload_cycles_return_the_memory(make_app):
    """TGW #2750, the peers' most reported leak: unloading must return what loading took."""
    app = make_app()
    app.registry.get("llama.cpp").available()  # its import is the app's, not the model's
    before = rss_mb()
    for _ in range(10):
        app.load_model("default")
        collect(app.engine.generate("Hello", greedy(4)))
        app.engine.unload()
    after = rss_mb()
    assert after <= before * 1.05, f"RSS {before:.0f} MB before the first load, {after:.0f} MB after 10 cycles"


@pytest.mark.slow
@pytest.mark.parametrize("change", [{"n_ctx": 10**12}, {"n_batch": 0}])
def test_a_failed_reload_of_gemma_keeps_the_loaded_one(make_app, change):
    """Issue 18 item 9 with the real loader: a reload that llama.cpp refuses (or dies on) leaves the model."""
    app = make_app()
    app.load_model("default")
    pid = app.engine.loaded.model.pid
    settings = replace(app.engine.loaded.settings, **change)
    with pytest.raises(ModelLoadError, match="still loaded"):
        app.engine.reload(settings)
    assert app.engine.loaded.model.pid == pid
    text, last = collect(app.engine.generate("Hello", greedy(4)))
    assert last.usage.completion_tokens == 4 and text


@pytest.mark.slow
@pytest.mark.parametrize("folder", ["tiny_llama", "tiny_gptq"])
def test_the_torch_loaders_run_in_a_worker_and_agree_with_in_process(make_app, request, folder):
    """transformers and GPTQ kernels crash too: they load in a worker like llama.cpp, with the same text."""
    path = request.getfixturevalue(folder)
    app = make_app()
    info = app.load_model(str(path))
    assert isinstance(app.engine.loaded.model, WorkerModel)
    in_worker, last = collect(app.engine.generate("Hello", greedy(8)))
    loader, settings = app.engine.loaded.loader, app.engine.loaded.settings
    app.engine.unload()
    model = loader.load(path, settings)
    try:
        in_process = "".join(c.text for c in model.generate("Hello", greedy(8), CancelToken()))
    finally:
        model.close()
    assert info.loader == loader.name and last.usage.completion_tokens == 8
    assert in_worker == in_process
