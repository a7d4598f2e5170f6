"""The engine owns the loaded model: one generation at a time, a fair queue, cancel, safe switching."""

from __future__ import annotations

import threading
import time

import pytest
from conftest import collect, copy_default, greedy

from backends.base import CancelToken, ModelLoadError
from webui.engine import FairQueue

PROMPT = "The capital of France is"


@pytest.fixture
def app(make_app):
    app = make_app()
    app.start()
    return app


@pytest.mark.slow
def test_start_loads_the_embedded_default(app, gemma_path):
    assert app.engine.loaded.path.name == gemma_path.name
    assert app.engine.info.loader == "llama.cpp"
    assert app.engine.loaded.settings.n_ctx == 2048


@pytest.mark.slow
def test_engine_measures_ttft_and_speed(app):
    text, last = collect(app.engine.generate(PROMPT, greedy(16)))
    assert text
    usage = last.usage
    assert usage.completion_tokens == 16
    assert 0 < usage.ttft_s <= usage.total_s
    assert usage.tokens_per_s > 0


@pytest.mark.slow
def test_two_concurrent_generations_are_serialized_and_neither_is_lost(app):
    """Both callers get their full reply; the second waits for the first instead of interleaving."""
    events: list[tuple[str, str]] = []
    results: dict[str, tuple[str, object]] = {}

    def worker(name: str) -> None:
        text = ""
        last = None
        for chunk in app.engine.generate(PROMPT, greedy(20)):
            if chunk.text:
                events.append((name, "token"))
                text += chunk.text
            if chunk.finish_reason:
                last = chunk
        events.append((name, "done"))
        results[name] = (text, last)

    first = threading.Thread(target=worker, args=("a",))
    first.start()
    while not events:
        time.sleep(0.005)
    second = threading.Thread(target=worker, args=("b",))
    second.start()
    first.join(60)
    second.join(60)
    assert results["a"][0] == results["b"][0]  # greedy: same full reply for both
    assert results["a"][1].usage.completion_tokens == results["b"][1].usage.completion_tokens == 20
    order = [name for name, _ in events]
    assert order == sorted(order)  # every event of "a" before any of "b": no interleaving
    assert results["b"][1].usage.queued_s > 0


def test_waiters_are_served_in_arrival_order():
    queue = FairQueue()
    served: list[int] = []
    assert queue.enter()
    threads = []
    for i in range(5):
        t = threading.Thread(target=lambda i=i: (queue.enter(), served.append(i), queue.leave()))
        t.start()
        threads.append(t)
        while queue.waiting < i + 2:  # the holder plus everyone started so far
            time.sleep(0.001)
    queue.leave()
    for t in threads:
        t.join(5)
    assert served == [0, 1, 2, 3, 4]


@pytest.mark.slow
def test_cancel_frees_the_queue_for_the_next_request(app):
    cancel = CancelToken()
    stream = app.engine.generate(PROMPT, greedy(5000, ban_eos_token=True), cancel)
    next(stream)  # the first is generating
    done = threading.Event()
    result = {}

    def second():
        result["out"] = collect(app.engine.generate(PROMPT, greedy(4)))
        done.set()

    t = threading.Thread(target=second)
    t.start()
    assert app.engine.cancel() is True  # the Stop button's path
    for _ in stream:
        pass
    assert done.wait(30)
    assert result["out"][1].usage.completion_tokens == 4
    t.join()


@pytest.mark.slow
def test_a_waiting_request_can_be_cancelled_before_it_starts(app):
    first = app.engine.generate(PROMPT, greedy(5000, ban_eos_token=True))
    next(first)
    cancel = CancelToken()
    waiting = app.engine.generate(PROMPT, greedy(4), cancel)
    out: dict = {}
    t = threading.Thread(target=lambda: out.setdefault("r", collect(waiting)))
    t.start()
    time.sleep(0.1)
    cancel.cancel()
    t.join(5)
    assert out["r"][1].finish_reason == "cancelled"
    assert out["r"][1].usage.completion_tokens == 0
    first.close()  # closing the stream gives the turn up too
    assert collect(app.engine.generate(PROMPT, greedy(3)))[1].usage.completion_tokens == 3


@pytest.mark.slow
@pytest.mark.parametrize(
    ("make_bad", "message"),
    [
        (lambda d, src: d / "missing.gguf", "not found"),
        (lambda d, src: _write(d / "random.gguf", bytes(range(256)) * 4000), "not a valid GGUF"),
        (lambda d, src: _write(d / "half.gguf", src.read_bytes()[:5_000_000]), "truncated"),
        (lambda d, src: _mkdir(d / "empty-folder"), "holds no model"),
    ],
    ids=["missing", "random-bytes", "truncated", "empty-folder"],
)
def test_a_bad_model_is_a_clear_error_and_the_previous_model_stays_usable(app, tmp_path, gemma_path, make_bad, message):
    bad = make_bad(tmp_path, gemma_path)
    with pytest.raises(ModelLoadError, match=message) as err:
        app.load_model(str(bad))
    assert "\n" not in str(err.value)  # one line, fit for a status bar
    assert app.engine.loaded.path.name == gemma_path.name
    assert collect(app.engine.generate(PROMPT, greedy(3)))[1].usage.completion_tokens == 3


@pytest.mark.slow
def test_loading_while_a_generation_streams_stops_it_cleanly_first(app, tmp_path, models_dir):
    other = copy_default(models_dir, tmp_path / "other")
    stream = app.engine.generate(PROMPT, greedy(5000, ban_eos_token=True))
    next(stream)
    result: dict = {}
    t = threading.Thread(target=lambda: result.setdefault("text_last", collect(stream)))
    t.start()
    info = app.load_model(str(other))  # cancels the running generation, waits for it, then switches
    t.join(10)
    assert result["text_last"][1].finish_reason == "cancelled"
    assert info.path == str(other)
    assert collect(app.engine.generate(PROMPT, greedy(3)))[1].usage.completion_tokens == 3


@pytest.mark.slow
def test_a_model_that_fails_inside_the_loader_brings_the_previous_one_back(app, tmp_path, gemma_path):
    """A header that passes the cheap check but that llama.cpp refuses: the old model is reloaded."""
    from backends.gguf_file import read_header

    header = read_header(gemma_path)
    # Keep the valid header and tensor table, but zero the tensor data: llama.cpp loads garbage or refuses;
    # either way we must end with a working model. Use an unknown architecture to force a refusal.
    data = bytearray(gemma_path.read_bytes())
    arch_at = data.index(b"gemma3")
    data[arch_at : arch_at + 6] = b"zzzzz3"
    bad = tmp_path / "alien.gguf"
    bad.write_bytes(bytes(data))
    assert header.architecture == "gemma3"
    with pytest.raises(ModelLoadError, match="still loaded"):
        app.load_model(str(bad))
    assert app.engine.loaded.path.name == gemma_path.name
    assert collect(app.engine.generate(PROMPT, greedy(3)))[1].usage.completion_tokens == 3


@pytest.mark.slow
def test_unload_then_generate_is_a_clear_error(app):
    from backends.base import GenerationError

    app.engine.unload()
    assert app.engine.info is None
    with pytest.raises(GenerationError, match="no model is loaded"):
        collect(app.engine.generate(PROMPT, greedy(3)))


def _write(path, data):
    path.write_bytes(data)
    return path


def _mkdir(path):
    path.mkdir()
    return path


@pytest.mark.slow
def test_every_generation_decodes_on_the_engines_one_thread(app):
    """Whoever asks (UI workers, API, CLI), decoding happens on one thread (of the model's worker process):
    llama.cpp's OpenMP pools multiply per calling thread and slow every decode once several threads have
    decoded."""
    callers = [threading.Thread(target=lambda: collect(app.engine.generate(PROMPT, greedy(2)))) for _ in range(3)]
    for t in callers:
        t.start()
    for t in callers:
        t.join(60)
    collect(app.engine.generate(PROMPT, greedy(2)))  # and from this (main) thread
    seen = app.engine.loaded.model.call("decode_threads")  # thread names the worker decoded on
    assert seen == ["inglenook-decode"]


@pytest.mark.slow
def test_an_error_on_the_decode_thread_reaches_the_caller(app):
    from backends.base import GenerationError

    with pytest.raises(GenerationError, match="context holds"):
        collect(app.engine.generate("word " * 3000, greedy(2)))
    assert collect(app.engine.generate(PROMPT, greedy(2)))[1].usage.completion_tokens == 2


@pytest.mark.slow
def test_busy_listeners_hear_when_a_generation_takes_and_gives_up_its_turn(app, caplog):
    heard: list[bool] = []

    def broken(busy: bool) -> None:
        raise RuntimeError("listener bug")

    app.engine.on_busy(heard.append)
    app.engine.on_busy(broken)
    text, last = collect(app.engine.generate("Hello", greedy(3)))
    assert text and last.finish_reason == "length"  # a listener that raises never stops a generation
    assert heard == [True, False]
    assert "listener bug" in caplog.text
    collect(app.engine.generate("Hello", greedy(2)))
    assert heard == [True, False, True, False]  # the broken one was dropped after its first failure
