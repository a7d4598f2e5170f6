"""A timed run of one contender, the contender interface, and the interleaved runs.

What is measured, all with ``time.perf_counter`` on the consumer's side: TTFT from just before the call
to the first chunk (update) with text; tok/s is the decode speed, the same formula for every contender:
``(tokens - 1) / (t_last - t_first)``, from the first text chunk to the last.

Every run starts from an empty KV cache (the raw model and the engine's model are reset before each
run), so no contender is helped by reusing the previous run's prompt: TTFT always includes evaluating
the whole prompt. Goals: ≥ 0.97× raw tok/s and ≤ 10 ms extra TTFT over raw, for our contenders.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from webui.app import App
from webui.worker import llama_handle

GOAL_RATIO = 0.97  # engine and ui tok/s at least this fraction of raw
GOAL_EXTRA_TTFT_MS = 10.0  # engine and ui TTFT at most this much above raw
SERVER_START_S = 60.0
RUN_TIMEOUT_S = 600.0  # one run of one contender


class BenchError(Exception):
    """The benchmark could not run; the message is for the user, on one line."""


@dataclass
class Sample:
    """One timed run of one contender."""

    ttft_s: float
    decode_s: float  # from the first text (update) to the last
    tokens: int
    finish_reason: str
    text: str = ""
    reported: dict | None = None  # the server's own measurement (TTFT and tok/s), where it sends one

    @property
    def tokens_per_s(self) -> float:
        if self.tokens > 1 and self.decode_s > 0:
            return (self.tokens - 1) / self.decode_s
        return 0.0


@dataclass
class Contender:
    name: str
    samples: list[Sample] = field(default_factory=list)
    prompt_tokens: int = 0

    def warm_up(self) -> None:
        self.run()

    def run(self) -> Sample:  # pragma: no cover - overridden
        raise NotImplementedError

    def close(self) -> None:
        return None


def run_interleaved(contenders: list[Contender], runs: int, progress: Callable[[str], None]) -> None:
    """One untimed warm-up each, then ``runs`` rounds of one run per contender, in turn."""
    progress("warming up: " + ", ".join(c.name for c in contenders))
    for c in contenders:
        c.warm_up()
    for i in range(runs):
        progress(f"run {i + 1}/{runs}")
        for c in contenders:
            c.samples.append(c.run())


def engine_llm(app: App):
    """The engine's ``llama_cpp.Llama`` (private to the loader; read only to reset its cache and check its settings)."""
    loaded = app.engine.loaded
    if loaded is None:
        return None
    return llama_handle(loaded.model) or getattr(loaded.model, "_llm", None)  # in a worker, or in this process


def reset_cache(llm) -> None:
    """Forget the evaluated tokens so the next run evaluates its whole prompt (no prefix reuse)."""
    if llm is not None and hasattr(llm, "reset"):
        llm.reset()


def settings_mismatch(app: App, kwargs: dict) -> list[str]:
    """Where the engine's loaded ``Llama`` differs from what raw is given (empty when they agree)."""
    llm = engine_llm(app)
    if llm is None:
        return []
    actual = {
        "n_ctx": llm.n_ctx(),
        "n_threads": getattr(llm, "n_threads", kwargs["n_threads"]),
        "n_threads_batch": getattr(llm, "n_threads_batch", kwargs["n_threads_batch"]),
        "n_batch": getattr(llm, "n_batch", kwargs["n_batch"]),
    }
    expected = {**kwargs, "n_batch": min(kwargs["n_ctx"], kwargs["n_batch"])}
    return [f"{k}: engine {v}, raw {expected[k]}" for k, v in actual.items() if v != expected[k]]
