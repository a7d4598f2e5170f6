"""The engine on scripted fake models (fast tier): streaming, the fair queue, cancel, switching and unloading.

Everything goes through the public App/Engine API, so these keep holding wherever the model runs
(in this process or in a worker process).
"""

from __future__ import annotations

import threading
import time

import pytest
from conftest import FAKE_HELLO, SLOW_WORDS, collect, greedy, write_fake

from backends.base import CancelToken, GenerationError, ModelLoadError, SamplingParams


def test_a_generation_streams_the_scripted_reply_word_by_word_with_usage(fake_app):
    chunks = list(fake_app.engine.generate("hi", greedy(64)))
    texts = [c.text for c in chunks if c.text]
    assert "".join(texts) == FAKE_HELLO and len(texts) == len(FAKE_HELLO.split())
    last = chunks[-1]
    assert last.finish_reason == "stop"
    assert last.usage.completion_tokens == len(texts)
    assert last.usage.prompt_tokens == len(b"hi")  # the fake model's tokens are UTF-8 bytes
    assert last.usage.ttft_s >= 0 and last.usage.total_s >= last.usage.ttft_s


def test_max_new_tokens_and_stop_strings_end_a_reply(fake_app):
    text, last = collect(fake_app.engine.generate("hi", greedy(2)))
    assert text == "Hello there," and last.finish_reason == "length"
    text, last = collect(fake_app.engine.generate("hi", greedy(64, stop=["friend"])))
    assert text == "Hello there, " and last.finish_reason == "stop"


def test_a_seed_reproduces_a_sampled_reply_and_greedy_is_fixed(make_fake_app):
    app = make_fake_app("seeded.fake")
    sample = lambda seed: collect(app.engine.generate("hi", SamplingParams(temperature=1.0, seed=seed)))[0]  # noqa: E731
    assert sample(7) == sample(7)
    assert len({sample(seed) for seed in range(8)}) > 1


def test_generations_wait_their_turn_in_order_and_all_complete(make_fake_app):
    app = make_fake_app("slow.fake")  # 5 ms a word: 40 words hold the turn for at least 200 ms
    order: list[int] = []
    results: dict[int, tuple[str, object]] = {}
    started = threading.Event()

    def run(i: int) -> None:
        stream = app.engine.generate(f"caller {i}", greedy(40))
        first = next(stream)
        started.set()
        text, last = collect(stream)
        order.append(i)
        results[i] = (first.text + text, last)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    threads[0].start()
    assert started.wait(10)  # the first caller holds the turn
    threads[1].start()
    time.sleep(0.05)  # a fixed arrival order for the two that wait
    threads[2].start()
    for t in threads:
        t.join(30)
    assert order == [0, 1, 2]  # first come, first served
    for text, last in results.values():
        assert len(text.split()) == 40 and last.finish_reason == "length"
    assert results[1][1].usage.queued_s > 0.05  # they waited for the turn
    assert results[2][1].usage.queued_s > results[1][1].usage.queued_s - 0.05


def test_cancel_stops_the_running_generation_and_the_next_one_runs(make_fake_app):
    app = make_fake_app("slow.fake")
    stream = app.engine.generate("hi", greedy(SLOW_WORDS))
    first = next(stream)  # the generation holds the turn now
    assert first.text
    assert app.engine.cancel() is True
    rest, last = collect(stream)
    assert last.finish_reason == "cancelled"
    assert len((first.text + rest).split()) < SLOW_WORDS
    assert app.engine.cancel() is False  # nothing runs now
    text, last = collect(app.engine.generate("again", greedy(3)))
    assert len(text.split()) == 3 and last.finish_reason == "length"


def test_a_generation_cancelled_while_it_waits_never_runs(make_fake_app):
    app = make_fake_app("slow.fake")
    running = app.engine.generate("first", greedy(SLOW_WORDS))
    next(running)
    token = CancelToken()
    waiting: list = []
    waiter = threading.Thread(target=lambda: waiting.extend(app.engine.generate("second", greedy(5), token)))
    waiter.start()
    time.sleep(0.1)
    token.cancel()
    waiter.join(10)
    assert not waiter.is_alive()
    assert [c.text for c in waiting if c.text] == []
    assert waiting[-1].finish_reason == "cancelled"
    running.close()  # giving the turn up early cancels the decode


def test_switching_models_changes_what_answers_and_a_failed_load_keeps_the_current_one(fake_app, fake_models):
    assert fake_app.engine.info.name == "hello"
    fake_app.load_model("echo.fake")
    assert fake_app.engine.info.name == "echo"
    assert collect(fake_app.engine.generate("line one\nline two", greedy()))[0] == "You said: line two"

    write_fake(fake_models, "broken", crash="sometimes")  # refused by the loader's check, before loading
    with pytest.raises(ModelLoadError):
        fake_app.load_model("broken.fake")
    with pytest.raises(ModelLoadError, match="not found"):
        fake_app.load_model("no-such-model.fake")
    assert fake_app.engine.info.name == "echo"
    assert collect(fake_app.engine.generate("still here", greedy()))[0] == "You said: still here"


def test_loading_another_model_preempts_a_running_generation(make_fake_app):
    app = make_fake_app("slow.fake")
    stream = app.engine.generate("hi", greedy(SLOW_WORDS))
    next(stream)
    result: dict = {}
    reader = threading.Thread(target=lambda: result.update(zip(("text", "last"), collect(stream), strict=True)))
    reader.start()
    app.load_model("hello.fake")  # the UI's Load button: the running reply is cancelled first
    reader.join(10)
    assert result["last"].finish_reason == "cancelled"
    assert app.engine.info.name == "hello"
    assert collect(app.engine.generate("hi", greedy()))[0] == FAKE_HELLO


def test_unload_leaves_nothing_loaded_and_a_generation_says_so(fake_app):
    fake_app.engine.unload()
    assert fake_app.engine.info is None
    with pytest.raises(GenerationError, match="no model is loaded"):
        collect(fake_app.engine.generate("hi", greedy()))
    fake_app.load_model("hello.fake")
    assert collect(fake_app.engine.generate("hi", greedy()))[0] == FAKE_HELLO


def test_token_counts_and_ignored_parameters_come_from_the_loaded_model(fake_app):
    assert fake_app.engine.count_tokens("héllo") == len("héllo".encode())
    ignored = fake_app.engine.ignored_params(SamplingParams(temperature=0.5, top_k=5, mirostat_mode=2))
    assert "top_k" in ignored and "temperature" not in ignored


def test_a_load_reports_its_progress_rising_to_one_and_the_engine_shows_it_meanwhile(make_fake_app, fake_models):
    """Issue 13: the page's load bar shows a percentage. The worker passes the loader's fractions on."""
    from backends.base import LoadSettings
    from webui.worker import WorkerModel

    write_fake(fake_models, "heavy", reply="ok", load_ms=1500)
    app = make_fake_app(model=None)
    seen: list[float] = []
    model = WorkerModel(app.registry.get("fake"), fake_models / "heavy.fake", LoadSettings(), seen.append)
    model.close()
    assert len(seen) >= 5 and seen == sorted(seen) and seen[-1] == 1.0 and 0 < seen[0] < 1

    during: list[float | None] = []
    loading = threading.Thread(target=app.engine.load, args=(fake_models / "heavy.fake",))
    loading.start()
    while loading.is_alive():
        during.append(app.engine.load_progress)
        time.sleep(0.05)
    loading.join()
    assert any(p is not None and 0 < p < 1 for p in during), during  # the bar has something to show
    assert app.engine.load_progress is None  # nothing loads now
    assert app.engine.info.name == "heavy"
