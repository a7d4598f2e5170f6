"""The one generation interface every loader implements.

A loader turns a path into a :class:`Model`; a model turns a prompt and
:class:`SamplingParams` into a stream of :class:`Chunk`. Nothing here knows
about Gradio, HTTP or the chat layer, so any front end can drive any loader.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import ClassVar


class ModelLoadError(Exception):
    """A model could not be loaded; the message is meant for the user, on one line."""


class GenerationError(Exception):
    """A generation failed inside the engine; the message is meant for the user."""


@dataclass
class LoadSettings:
    """Settings common to every loader; each loader subclasses this with its own fields.

    The UI renders controls from the dataclass fields of the chosen loader's
    settings type, so a field's type and default are its whole description.
    """

    n_ctx: int = 4096
    threads: int = 0  # 0 = let the loader choose


@dataclass
class SamplingParams:
    """Every sampling knob the UI, API and CLI can set, whatever the loader.

    Defaults are *neutral* (they change nothing about the model's
    distribution) so that "what differs from default" is exactly what the user
    asked for. A loader lists the names it honours in
    :attr:`Loader.supported_params`; the engine reports the rest as ignored
    instead of dropping them silently.
    """

    max_new_tokens: int = 512
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    typical_p: float = 1.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int = -1  # -1 = random
    stop: list[str] = field(default_factory=list)
    mirostat_mode: int = 0
    mirostat_tau: float = 5.0
    mirostat_eta: float = 0.1
    grammar: str = ""
    ban_eos_token: bool = False
    logprobs: int = -1  # -1 = none; 0 = each token's own log-probability; N = and the N likeliest alternatives

    def validate(self) -> None:
        """Raise ValueError naming the first out-of-range field."""
        checks = [
            ("max_new_tokens", self.max_new_tokens >= 1),
            ("temperature", self.temperature >= 0),
            ("top_p", 0 <= self.top_p <= 1),
            ("top_k", self.top_k >= 0),
            ("min_p", 0 <= self.min_p <= 1),
            ("typical_p", 0 < self.typical_p <= 1),
            ("repetition_penalty", self.repetition_penalty > 0),
            ("mirostat_mode", self.mirostat_mode in (0, 1, 2)),
            ("logprobs", -1 <= self.logprobs <= 20),
        ]
        for name, ok in checks:
            if not ok:
                raise ValueError(f"sampling parameter {name}={getattr(self, name)!r} is out of range")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError("stop strings must be non-empty strings")

    def changed(self) -> set[str]:
        """Names of the fields whose value differs from the neutral default."""
        neutral = SamplingParams()
        return {f.name for f in fields(self) if getattr(self, f.name) != getattr(neutral, f.name)}

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class Usage:
    """What a finished generation cost, measured where it ran."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_s: float = 0.0  # from the start of generation to the first token
    total_s: float = 0.0  # from the start of generation to the last token
    queued_s: float = 0.0  # time spent waiting for the model before generation started

    @property
    def tokens_per_s(self) -> float:
        """Decode speed: tokens after the first over the time after the first.

        Prompt processing is excluded (it is what TTFT measures), which is how
        llama.cpp and LM Studio report speed.
        """
        decode_s = self.total_s - self.ttft_s
        if self.completion_tokens > 1 and decode_s > 0:
            return (self.completion_tokens - 1) / decode_s
        if self.completion_tokens and self.total_s > 0:
            return self.completion_tokens / self.total_s
        return 0.0

    def as_dict(self) -> dict:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "ttft_ms": round(self.ttft_s * 1000, 1),
            "total_ms": round(self.total_s * 1000, 1),
            "tokens_per_s": round(self.tokens_per_s, 2),
            "queued_ms": round(self.queued_s * 1000, 1),
        }


@dataclass
class Chunk:
    """One piece of a streamed generation.

    Every chunk but the last carries text; the last carries ``finish_reason``
    ("stop", "length" or "cancelled") and ``usage``.
    """

    text: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None
    # with SamplingParams.logprobs >= 0: one {"token", "logprob", "bytes", "top": [{"token", "logprob", "bytes"}]}
    # per token whose text this chunk carries
    logprobs: list[dict] | None = None


@dataclass
class ModelInfo:
    """Facts about a loaded model, shown by the UI and returned by the API."""

    name: str
    loader: str
    path: str
    architecture: str = ""
    parameter_count: int | None = None
    quantization: str = ""
    context_length: int = 0
    chat_template: str | None = None
    file_size: int = 0
    bos_token: str = ""
    eos_token: str = ""
    metadata: dict[str, str] = field(default_factory=dict)


class CancelToken:
    """A cancel flag a caller sets and a generation polls between tokens."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()


class Model(ABC):
    """A loaded model. One generation at a time; the engine enforces that."""

    info: ModelInfo

    @abstractmethod
    def tokenize(self, text: str, add_special: bool = True) -> list[int]: ...

    @abstractmethod
    def detokenize(self, tokens: list[int]) -> str: ...

    @abstractmethod
    def generate(self, prompt: str, params: SamplingParams, cancel: CancelToken) -> Iterator[Chunk]:
        """Stream the continuation of ``prompt``; stop strings are never emitted."""

    @abstractmethod
    def close(self) -> None:
        """Free the weights and any cache; the model is unusable afterwards."""


class Loader(ABC):
    """Knows how to recognise and load one kind of model file or folder."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    settings_type: ClassVar[type[LoadSettings]] = LoadSettings
    supported_params: ClassVar[frozenset[str]] = frozenset()
    install_hint: ClassVar[str] = ""
    loads: ClassVar[str] = ""  # what it can load, in words (shown by `inglenook loaders`)

    def available(self) -> str | None:
        """None if the loader's dependencies import; otherwise why not and how to fix it."""
        return None

    @abstractmethod
    def can_load(self, path: Path) -> bool: ...

    def check(self, path: Path, settings: LoadSettings | None = None) -> None:
        """Cheap validation before anything is unloaded; raise ModelLoadError if ``path`` is unusable."""
        return None

    @abstractmethod
    def load(self, path: Path, settings: LoadSettings) -> Model: ...

    def ignored_params(self, params: SamplingParams) -> list[str]:
        """Parameters the user changed that this loader cannot honour."""
        return sorted(params.changed() - self.supported_params - {"max_new_tokens", "stop"})


class StopMatcher:
    """Holds back text that could be the start of a stop string.

    Loaders that stream token by token feed text in; what comes out is safe to
    show. When a stop string appears, everything from it on is dropped.
    """

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self._hold = max((len(s) for s in self.stops), default=0) - 1
        self._buffer = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        if not self.stops:
            return text
        self._buffer += text
        cut = min((i for i in (self._buffer.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            out, self._buffer, self.stopped = self._buffer[:cut], "", True
            return out
        keep = self._partial_suffix()
        out = self._buffer[: len(self._buffer) - keep]
        self._buffer = self._buffer[len(out) :]
        return out

    def flush(self) -> str:
        out, self._buffer = self._buffer, ""
        return out

    def _partial_suffix(self) -> int:
        """Length of the longest buffer suffix that is a proper prefix of some stop string."""
        for n in range(min(self._hold, len(self._buffer)), 0, -1):
            tail = self._buffer[-n:]
            if any(s.startswith(tail) for s in self.stops):
                return n
        return 0


class Stopwatch:
    """Measures TTFT and total time for one generation."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.first: float | None = None

    def mark_token(self) -> None:
        if self.first is None:
            self.first = time.perf_counter()

    def usage(self, prompt_tokens: int, completion_tokens: int) -> Usage:
        end = time.perf_counter()
        first = self.first if self.first is not None else end
        return Usage(prompt_tokens, completion_tokens, first - self.start, end - self.start)
