"""Parallel generations on one model (fast tier): the fair queue's capacity, and the engine and worker
running ``Model.parallel`` generations together on a scripted model that batches (the fake loader's
``parallel``). The real llama.cpp batch is tested in tests/test_llamacpp_parallel.py."""

from __future__ import annotations

import threading
import time

from conftest import collect, greedy, write_fake

from backends.base import CancelToken
from webui.engine import FairQueue


def _enter_in_thread(queue: FairQueue, **kw) -> tuple[threading.Thread, threading.Event]:
    entered = threading.Event()

    def run() -> None:
        queue.enter(**kw)
        entered.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, entered


def test_the_fair_queue_lets_capacity_turns_share_and_an_exclusive_turn_waits_for_them_all():
    queue = FairQueue(capacity=lambda: 2)
    assert queue.enter() and queue.enter()  # two share the model
    third, third_in = _enter_in_thread(queue)
    assert not third_in.wait(0.2)  # the third waits for a place
    queue.leave()
    assert third_in.wait(5)
    exclusive, exclusive_in = _enter_in_thread(queue, exclusive=True)
    time.sleep(0.05)
    late, late_in = _enter_in_thread(queue)  # arrives after the exclusive waiter: never overtakes it
    queue.leave()
    assert not exclusive_in.wait(0.2) and not late_in.is_set()  # one turn is still held
    queue.leave()
    assert exclusive_in.wait(5)
    assert not late_in.wait(0.2)  # the exclusive turn is alone
    queue.leave()
    assert late_in.wait(5)
    queue.leave()
    assert queue.waiting == 0


def test_a_waiter_cancelled_in_the_queue_gives_up_its_place_to_the_next():
    queue = FairQueue(capacity=lambda: 1)
    assert queue.enter()
    token = CancelToken()
    gave_up: list[bool] = []
    waiter = threading.Thread(target=lambda: gave_up.append(queue.enter(token)), daemon=True)
    waiter.start()
    time.sleep(0.05)
    follower, follower_in = _enter_in_thread(queue)
    token.cancel()
    waiter.join(5)
    assert gave_up == [False]
    queue.leave()
    assert follower_in.wait(5)  # the cancelled waiter no longer blocks the queue
    queue.leave()


def _stream(app, prompt: str, n: int, log: list, results: dict, cancel: CancelToken | None = None) -> None:
    text = ""
    for chunk in app.engine.generate(prompt, greedy(n), cancel):
        if chunk.text:
            results.setdefault((prompt, "first text at"), time.monotonic())
            log.append((prompt, "text"))
            text += chunk.text
        if chunk.finish_reason:
            log.append((prompt, "end"))
            results[prompt] = (text, chunk)


def test_a_model_that_batches_runs_its_generations_together_in_its_worker(make_fake_app, fake_models):
    write_fake(fake_models, "batched", token_delay_ms=5, parallel=3)
    app = make_fake_app("batched.fake")
    assert app.engine.loaded.model.parallel == 3  # read from the worker
    busy: list[bool] = []
    app.engine.on_busy(busy.append)
    log: list[tuple[str, str]] = []
    results: dict = {}
    # the echo reply ("You said: w w w ...") streams word by word, 5 ms a word
    prompts = [" ".join([f"p{i}"] * 60) for i in range(3)]
    threads = [threading.Thread(target=_stream, args=(app, p, 40, log, results)) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for p in prompts:
        text, last = results[p]
        assert text.startswith("You said: " + p.split()[0]) and last.finish_reason == "length"  # each its own reply
    ends = [i for i, (_, what) in enumerate(log) if what == "end"]
    firsts = [next(i for i, (p, what) in enumerate(log) if p == q and what == "text") for q in prompts]
    assert max(firsts) < min(ends)  # every stream had started before any ended: they ran together
    assert busy == [True, False]  # the busy listeners hear the first start and the last end only


def test_requests_beyond_parallel_wait_and_a_cancel_leaves_the_others_running(make_fake_app, fake_models):
    write_fake(fake_models, "batched", token_delay_ms=5, parallel=2)
    app = make_fake_app("batched.fake")
    log: list[tuple[str, str]] = []
    results: dict = {}
    cancel = CancelToken()
    a, b, c = "a " * 120, "b " * 80, "c " * 30  # the echo reply has a word per word of the prompt
    ta = threading.Thread(target=_stream, args=(app, a, 200, log, results, cancel))
    tb = threading.Thread(target=_stream, args=(app, b, 60, log, results))  # 300 ms: a's cancel frees c's place
    ta.start()
    tb.start()
    while len({p for p, _ in log}) < 2:
        time.sleep(0.01)
    tc = threading.Thread(target=_stream, args=(app, c, 5, log, results))
    tc.start()  # a third request: no place until one of the two ends
    time.sleep(0.1)
    cancelled_at = time.monotonic()
    cancel.cancel()  # cancel a: b keeps running, c takes a's place
    for t in (ta, tb, tc):
        t.join(60)
    assert results[a][1].finish_reason == "cancelled"
    assert results[b][1].finish_reason == "length" and len(results[b][0].split()) == 60
    assert results[c][1].finish_reason == "length"
    # c waited for a place (times, not the order of the three threads' log lines, which race each other)
    assert results[(c, "first text at")] > cancelled_at
    assert results[(b, "first text at")] < cancelled_at, "b ran all along"
    assert results[b][1].usage.completion_tokens == 60
    assert results[c][1].usage.queued_s > 0
    text, last = collect(app.engine.generate("after", greedy(64)))
    assert text == "You said: after" and last.finish_reason == "stop"  # the model serves on
