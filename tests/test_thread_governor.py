"""Issue 17 §3 / 18 item 13: the decode's thread count follows the machine's load, token by token.

A simulated machine stands in for the CPU here (the governor is pure logic over measured times; the real
decode's figures come from ``inglenook bench --contention``). Its times are this machine's: 2 threads 11 ms
per token idle, 1 thread 18 ms; beside a busy core 2 threads take 400 ms (a barrier waits for a descheduled
thread), 1 thread 40 ms.
"""

from __future__ import annotations

from collections.abc import Callable

from backends.cpu import ThreadGovernor

IDLE = {2: 0.011, 1: 0.018}
BUSY = {2: 0.400, 1: 0.040}


class Machine:
    """A clock that a token's decode advances by the time that thread count takes under the current load."""

    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now


def decode(gov: ThreadGovernor, machine: Machine, seconds: float, speed: Callable[[int, float], float]) -> dict:
    """Decode for ``seconds`` of simulated time; returns tokens made and tokens per thread count."""
    end = machine.now + seconds
    made = {1: 0, 2: 0}
    while machine.now < end:
        threads = gov.threads
        took = speed(threads, machine.now)
        machine.now += took
        made[threads] += 1
        gov.observe(took)
    return {"tokens": sum(made.values()), **made}


def test_an_idle_machine_keeps_every_core_and_loses_almost_nothing():
    machine = Machine()
    gov = ThreadGovernor(2, clock=machine.clock)
    run = decode(gov, machine, 30, lambda t, now: IDLE[t])
    ideal = 30 / IDLE[2]
    assert run[1] <= 3, "one early try of fewer threads, then never again"
    assert run["tokens"] >= 0.99 * ideal


def test_beside_a_busy_core_it_drops_to_one_thread_and_keeps_most_of_that_speed():
    machine = Machine()
    gov = ThreadGovernor(2, clock=machine.clock)
    run = decode(gov, machine, 60, lambda t, now: BUSY[t])
    best = 60 / BUSY[1]
    assert run["tokens"] >= 0.9 * best, run  # the tries of 2 threads back off and end at their first slow token
    assert run[2] <= 12, run


def test_load_that_starts_mid_reply_is_left_within_a_second_and_a_quiet_machine_regains_its_speed():
    machine = Machine()
    gov = ThreadGovernor(2, clock=machine.clock)

    def speed(threads: int, now: float) -> float:
        return (BUSY if 10 <= now < 40 else IDLE)[threads]

    decode(gov, machine, 10, speed)
    assert gov.threads == 2
    decode(gov, machine, 1, speed)  # the hog started at 10 s
    assert gov.threads == 1
    decode(gov, machine, 29, speed)  # until 40 s: busy
    assert gov.threads == 1
    back = decode(gov, machine, 20, speed)  # quiet again
    assert gov.threads == 2
    assert back["tokens"] >= 0.8 * 20 / IDLE[2], "back at full speed within a few seconds (its longest wait is 16 s)"


def test_a_slowdown_that_fewer_threads_do_not_fix_is_work_not_contention():
    """A growing context slows every token; halving the threads would only slow it more, so it stays."""
    machine = Machine()
    gov = ThreadGovernor(2, clock=machine.clock)
    start = machine.now

    def speed(threads: int, now: float) -> float:
        grown = 1 + 3 * (now - start) / 60  # 4x slower per token after a minute
        return IDLE[threads] * grown

    run = decode(gov, machine, 60, speed)
    assert run[1] <= 0.03 * run["tokens"], run


def test_one_core_has_nothing_to_choose():
    machine = Machine()
    gov = ThreadGovernor(1, clock=machine.clock)
    for took in (0.01, 0.5, 0.01, 2.0):
        assert gov.observe(took) == 1
