"""``inglenook bench --kv-cache`` (issue 17 §2): the next turn of a long conversation after another conversation
ran in between, against a short prompt read cold.

One long conversation (``--history`` tokens, about 3,000) is read once. Then each run: another conversation
(a short one, different each run) takes the KV cache, the long conversation's next turn is timed (its history
comes back from the per-conversation cache), and a 50-token prompt that starts unlike anything cached is timed
(read in full). TTFT is the engine's (from the turn's start to the first visible text). Goal: the next turn's
TTFT within 1.5× the short prompt's.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

from backends.base import SamplingParams, Usage
from webui.app import App

GOAL_KV_RATIO = 1.5
SHORT_TOKENS = 50
TURN = "<start_of_turn>{role}\n{text}<end_of_turn>\n"


def _facts(topic: str, start: int, count: int) -> str:
    return " ".join(
        f"Note {i}: the {topic} number {i} is {i * 7 % 13} metres long." for i in range(start, start + count)
    )


def _sized(app: App, make: Callable[[int], str], tokens: int) -> str:
    """``make(n)`` for the smallest n (a step of 10) whose prompt is at least ``tokens`` tokens long."""
    n = 10
    while app.engine.count_tokens(make(n)) < tokens:
        n += 10
    return make(n)


def _run(app: App, prompt: str, tokens: int) -> Usage:
    usage = None
    for chunk in app.engine.generate(prompt, SamplingParams(temperature=0, max_new_tokens=tokens)):
        if chunk.usage is not None:
            usage = chunk.usage
    if usage is None:
        raise RuntimeError("the generation ended without usage")
    return usage


def measure_kv_cache(app: App, history: int, runs: int, progress: Callable[[str], None]) -> dict:
    """The next turn's and the short prompt's TTFT per run (the model is loaded), their medians and ratio."""
    convo = _sized(app, lambda n: TURN.format(role="user", text=_facts("boat", 0, n) + " Which is longest?"), history)
    convo += "<start_of_turn>model\n"
    progress(f"reading the long conversation once ({app.engine.count_tokens(convo)} tokens) ...")
    first = _run(app, convo, 8)
    rows = []
    for i in range(runs):
        other = TURN.format(role="user", text=f"Run {i}. " + _facts("tree", i * 40, 12)) + "<start_of_turn>model\n"
        _run(app, other, 8)  # another conversation takes the KV cache
        follow = convo + "Note 3.<end_of_turn>\n" + TURN.format(role="user", text=f"And after {i}?")
        follow += "<start_of_turn>model\n"
        turn = _run(app, follow, 4)
        short = _sized(app, lambda n, i=i: f"Question {i}: " + _facts("cloud", i * 100, n // 10), SHORT_TOKENS)
        cold = _run(app, short, 4)
        rows.append({"next_turn_ttft_ms": round(turn.ttft_s * 1000, 1), "next_turn_prompt_tokens": turn.prompt_tokens,
                     "next_turn_cached_tokens": turn.cached_tokens, "short_ttft_ms": round(cold.ttft_s * 1000, 1),
                     "short_prompt_tokens": cold.prompt_tokens, "short_cached_tokens": cold.cached_tokens})  # fmt: skip
        progress(f"run {i + 1}/{runs}: next turn {rows[-1]['next_turn_ttft_ms']} ms "
                 f"({turn.cached_tokens} of {turn.prompt_tokens} tokens cached), short prompt "
                 f"{rows[-1]['short_ttft_ms']} ms")  # fmt: skip
    turn_ms = statistics.median(r["next_turn_ttft_ms"] for r in rows)
    short_ms = statistics.median(r["short_ttft_ms"] for r in rows)
    return {
        "history_tokens": first.prompt_tokens,
        "history_cold_ttft_ms": round(first.ttft_s * 1000, 1),
        "runs": rows,
        "next_turn_ttft_ms": turn_ms,
        "short_ttft_ms": short_ms,
        "ratio": round(turn_ms / short_ms, 2) if short_ms else None,
        "goal_ratio": GOAL_KV_RATIO,
    }


def format_kv_cache(result: dict) -> str:
    ratio = result["ratio"]
    verdict = "met" if ratio is not None and ratio <= result["goal_ratio"] else "NOT met"
    cached = statistics.median(r["next_turn_cached_tokens"] for r in result["runs"])
    prompt = statistics.median(r["next_turn_prompt_tokens"] for r in result["runs"])
    return "\n".join([
        f"long conversation: {result['history_tokens']} tokens, read cold in {result['history_cold_ttft_ms']} ms",
        f"next turn after another conversation: TTFT {result['next_turn_ttft_ms']} ms "
        f"(prompt cached: {cached:.0f} of {prompt:.0f} tokens)",
        f"a {SHORT_TOKENS}-token prompt, cold: TTFT {result['short_ttft_ms']} ms",
        f"ratio {ratio}× (goal ≤ {result['goal_ratio']}×: {verdict})",
    ])  # fmt: skip
