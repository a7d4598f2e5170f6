"""The one generation interface every loader implements.

A loader turns a path into a :class:`Model`; a model turns a prompt and
:class:`SamplingParams` into a stream of :class:`Chunk`. Nothing here knows
about Gradio, HTTP or the chat layer, so any front end can drive any loader.
"""

from __future__ import annotations

import importlib.util
import json
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from backends.gbnf import grammar_problem


def missing_modules(*names: str) -> str | None:
    """Name the first module not installed, without importing any: a loader's ``available()`` runs in the server
    and the CLI (model list, doctor), where importing torch or GPTQModel would cost seconds and hundreds of MB
    for a model that is loaded in a worker process anyway. A module installed but broken fails at load instead."""
    for name in names:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            return f"No module named '{name}'"
    return None


class ModelLoadError(Exception):
    """A model could not be loaded; the message is meant for the user, on one line."""


class GenerationError(Exception):
    """A generation failed inside the engine; the message is meant for the user."""


# Typed failures: raised by loaders, the engine and the chat core, told apart by type (never by wording) where
# a face needs to (the API maps each to an HTTP status in webui/api/errors.py). Every message is for the user.


class BadRequest(ValueError):
    """What was asked for cannot be done as asked (a bad value, a missing part); the asker can fix it."""


class ModelNotFound(ModelLoadError, LookupError):
    """No model of that name or path exists."""


class ModelNotLoaded(GenerationError):
    """The generation needs a model that is not loaded (none is, or the named one was unloaded)."""


class PromptTooLong(GenerationError, BadRequest):
    """The prompt does not fit in the model's context, even with the oldest turns left out."""


class ModelCrashed(GenerationError):
    """The process running the model died mid-request (a native fault, an out-of-memory kill); the server is fine."""


class Busy(GenerationError):
    """The engine cannot take this request now (try again later)."""


@dataclass
class LoadSettings:
    """Settings common to every loader; each loader subclasses this with its own fields.

    The UI renders controls from the dataclass fields of the chosen loader's
    settings type, so a field's type and default are its whole description.
    """

    n_ctx: int = 4096
    threads: int = 0  # 0 = let the loader choose


def _knob(
    default, lo: float | None = None, hi: float | None = None, *, above: bool = False, doc: str = "", ui: bool = True
):
    """A SamplingParams field with its valid range (``above``: the low end itself is excluded) and a one-line help.

    ``ui=False``: a field the Parameters tab does not show (set by the API, not a sampler).
    """
    factory = {"default_factory": lambda: list(default)} if isinstance(default, list) else {"default": default}
    return field(**factory, metadata={"lo": lo, "hi": hi, "above": above, "doc": doc, "ui": ui})


# The samplers ``sampler_priority`` can name (text-generation-webui's names); the default order is theirs.
SAMPLER_NAMES = (
    "repetition_penalty", "presence_penalty", "frequency_penalty", "dry", "temperature", "dynamic_temperature",
    "quadratic_sampling", "top_n_sigma", "top_k", "top_p", "typical_p", "epsilon_cutoff", "eta_cutoff", "tfs",
    "top_a", "min_p", "mirostat", "xtc", "encoder_repetition_penalty", "no_repeat_ngram",
)  # fmt: skip


@dataclass
class SamplingParams:
    """Every sampling knob the UI, API and CLI can set, whatever the loader.

    Names and neutral values are text-generation-webui's, so its preset files
    map onto these fields one to one. Defaults are *neutral* (they change
    nothing about the model's distribution) so that "what differs from default"
    is exactly what the user asked for. A loader lists the names it honours in
    :attr:`Loader.supported_params`; the engine reports the rest as ignored
    instead of dropping them silently.
    """

    max_new_tokens: int = _knob(512, 1, doc="the most tokens a reply may have")
    temperature: float = _knob(1.0, 0, doc="0 = always the most likely token; higher = more varied")
    top_p: float = _knob(1.0, 0, 1, doc="keep the smallest set of tokens whose probabilities add up to this")
    top_k: int = _knob(0, 0, doc="keep only the k most likely tokens (0 = off)")
    min_p: float = _knob(0.0, 0, 1, doc="drop tokens less likely than this fraction of the top token")
    typical_p: float = _knob(1.0, 0, 1, above=True, doc="locally typical sampling (1 = off)")
    tfs: float = _knob(1.0, 0, 1, doc="tail-free sampling (1 = off)")
    top_a: float = _knob(0.0, 0, doc="drop tokens below top_a x (top probability)^2 (0 = off)")
    top_n_sigma: float = _knob(0.0, 0, doc="keep tokens within n standard deviations of the top logit (0 = off)")
    epsilon_cutoff: float = _knob(0.0, 0, 1, doc="drop tokens below this probability (0 = off)")
    eta_cutoff: float = _knob(0.0, 0, doc="eta sampling, in units of 1e-4 (0 = off)")
    smoothing_factor: float = _knob(0.0, 0, doc="quadratic sampling (0 = off)")
    smoothing_curve: float = _knob(1.0, 1, doc="quadratic sampling curve")
    repetition_penalty: float = _knob(1.0, 0, above=True, doc="divide the scores of tokens already seen (1 = off)")
    repetition_penalty_range: int = _knob(1024, 0, doc="how many recent tokens the penalties look at (0 = all)")
    presence_penalty: float = _knob(0.0, -2, 2, doc="subtract this from tokens already seen")
    frequency_penalty: float = _knob(0.0, -2, 2, doc="subtract this times the count of each token seen")
    encoder_repetition_penalty: float = _knob(1.0, 0, above=True, doc="favour tokens from the prompt (1 = off)")
    no_repeat_ngram_size: int = _knob(0, 0, doc="never repeat an n-gram of this size (0 = off)")
    dry_multiplier: float = _knob(0.0, 0, doc="DRY: penalise repeating longer sequences (0 = off)")
    dry_base: float = _knob(1.75, 1, above=True, doc="DRY: how fast the penalty grows with length")
    dry_allowed_length: int = _knob(2, 1, doc="DRY: longest repetition that is not penalised")
    dry_sequence_breakers: str = _knob('"\\n", ":", "\\"", "*"', doc="DRY: strings that end a sequence, quoted")
    xtc_threshold: float = _knob(0.1, 0, 0.5, doc="XTC: tokens above this probability are candidates to remove")
    xtc_probability: float = _knob(0.0, 0, 1, doc="XTC: chance of removing the top choices (0 = off)")
    dynamic_temperature: bool = _knob(False, doc="scale temperature between dynatemp_low and dynatemp_high")
    dynatemp_low: float = _knob(1.0, 0, doc="dynamic temperature: lowest")
    dynatemp_high: float = _knob(1.0, 0, doc="dynamic temperature: highest")
    dynatemp_exponent: float = _knob(1.0, 0, doc="dynamic temperature: exponent")
    temperature_last: bool = _knob(False, doc="apply temperature after the truncation samplers")
    mirostat_mode: int = _knob(0, 0, 2, doc="0 = off, 1 = Mirostat, 2 = Mirostat 2.0")
    mirostat_tau: float = _knob(5.0, 0, doc="Mirostat target surprise")
    mirostat_eta: float = _knob(0.1, 0, doc="Mirostat learning rate")
    penalty_alpha: float = _knob(0.0, 0, doc="contrastive search (0 = off)")
    guidance_scale: float = _knob(1.0, doc="classifier-free guidance (1 = off)")
    do_sample: bool = _knob(True, doc="false = greedy decoding")
    seed: int = _knob(-1, -1, 2**32 - 1, doc="-1 = random")
    stop: list[str] = _knob([], doc="strings that end the reply (not shown)")
    ban_eos_token: bool = _knob(False, doc="never end the reply on the end-of-text token")
    grammar: str = _knob("", doc="a GBNF grammar the reply must follow")
    sampler_priority: list[str] = _knob(list(SAMPLER_NAMES), doc="the order the samplers apply in")
    # not a sampler: the API's logprobs/top_logprobs (-1 = none; 0 = each token's own; N = and N alternatives)
    logprobs: int = _knob(-1, -1, 20, doc="log-probabilities to report per token", ui=False)

    def validate(self) -> None:
        """Raise ValueError naming the first field of the wrong type or out of range."""
        for f in fields(self):
            value = getattr(self, f.name)
            kind = field_kind(f.type)
            if kind is bool and not isinstance(value, bool):
                raise ValueError(f"sampling parameter {f.name} must be true or false, not {value!r}")
            if kind in (int, float) and (isinstance(value, bool) or not isinstance(value, kind | int)):
                noun = "a whole number" if kind is int else "a number"
                raise ValueError(f"sampling parameter {f.name} must be {noun}, not {value!r}")
            if kind is float and value != value:  # NaN passes every comparison
                raise ValueError(f"sampling parameter {f.name} must be a number, not NaN")
            if kind is str and not isinstance(value, str):
                raise ValueError(f"sampling parameter {f.name} must be text, not {value!r}")
            if kind is list and (not isinstance(value, list) or any(not isinstance(s, str) or not s for s in value)):
                raise ValueError(f"sampling parameter {f.name} must be a list of non-empty strings")
            lo, hi, above = f.metadata.get("lo"), f.metadata.get("hi"), f.metadata.get("above")
            if kind in (int, float) and not (
                (lo is None or (value > lo if above else value >= lo)) and (hi is None or value <= hi)
            ):
                low = "" if lo is None else f"{'above' if above else 'at least'} {lo}"
                high = "" if hi is None else f"at most {hi}"
                bounds = " and ".join(b for b in (low, high) if b)
                raise ValueError(f"sampling parameter {f.name}={value!r} is out of range (must be {bounds})")
        unknown = [s for s in self.sampler_priority if s not in SAMPLER_NAMES]
        if unknown:
            raise ValueError(f"sampling parameter sampler_priority names unknown samplers: {', '.join(unknown)}")
        if self.dynamic_temperature and self.dynatemp_low > self.dynatemp_high:
            raise ValueError("sampling parameter dynatemp_low must not be above dynatemp_high")
        if self.grammar and (problem := grammar_problem(self.grammar)):  # before llama.cpp's parser sees it
            raise ValueError(f"sampling parameter grammar is refused: {problem}")

    @classmethod
    def from_dict(
        cls, values: Mapping[str, Any], base: SamplingParams | None = None
    ) -> tuple[SamplingParams, list[str]]:
        """``base`` (default: neutral) with ``values`` applied and checked, and the keys that are not parameters.

        The one coercer from a dict (presets, API bodies, models.yaml rules, extensions' state): a whole number
        where a decimal is expected is fine, an integral decimal where a whole number is expected too, and the
        text forms preset files use for lists; anything else of the wrong type is a ValueError naming the key
        (from :meth:`validate`). text-generation-webui's and OpenAI's names for a field are accepted
        (:data:`ALIASES`).
        """
        if not isinstance(values, Mapping):
            raise ValueError(f"sampling parameters must be a mapping of names to values, not {type(values).__name__}")
        known: dict[str, Any] = {}
        unknown: list[str] = []
        names = {f.name: f for f in fields(cls)}
        for key, value in values.items():
            name = ALIASES.get(str(key), str(key))
            if name not in names:
                unknown.append(str(key))
                continue
            known[name] = _coerce(name, field_kind(names[name].type), value)
        start = base if base is not None else cls()
        params = cls(**{**{f.name: getattr(start, f.name) for f in fields(cls)}, **known})
        params.validate()
        return params, unknown

    def changed(self) -> set[str]:
        """Names of the fields whose value differs from the neutral default."""
        neutral = SamplingParams()
        return {f.name for f in fields(self) if getattr(self, f.name) != getattr(neutral, f.name)}

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or not self.do_sample


# Other programs' names for a field (text-generation-webui, llama.cpp, OpenAI).
ALIASES = {"max_tokens": "max_new_tokens", "repeat_penalty": "repetition_penalty", "stopping_strings": "stop"}


def _coerce(name: str, kind: type, value: Any) -> Any:
    """``value`` in the field's type where the conversion loses nothing; unchanged otherwise (then
    :meth:`SamplingParams.validate` names the key)."""
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if name == "sampler_priority" and isinstance(value, str):  # text-generation-webui's UI keeps it one per line
        return [s.strip() for s in value.replace(",", "\n").splitlines() if s.strip()]
    if name == "stop" and isinstance(value, str):
        return [value] if value else []
    if name == "dry_sequence_breakers" and isinstance(value, list) and all(isinstance(s, str) for s in value):
        return ", ".join(json.dumps(s) for s in value)
    if kind is list and isinstance(value, tuple):
        return list(value)
    return value


def field_kind(annotation) -> type:
    """The plain type of a field annotation (annotations are strings under ``from __future__ import annotations``)."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    for name, kind in (("list", list), ("bool", bool), ("int", int), ("float", float), ("str", str)):
        if text.startswith(name):
            return kind
    return object


def param_doc(name: str) -> str:
    """The one-line help of a SamplingParams field (for the UI and the CLI)."""
    return next((f.metadata.get("doc", "") for f in fields(SamplingParams) if f.name == name), "")


def param_range(name: str) -> tuple[float | None, float | None]:
    """The valid (low, high) of a numeric SamplingParams field; None where unbounded."""
    f = next(f for f in fields(SamplingParams) if f.name == name)
    return f.metadata.get("lo"), f.metadata.get("hi")


@dataclass
class Usage:
    """What a finished generation cost, measured where it ran."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_s: float = 0.0  # from the start of generation to the first token
    total_s: float = 0.0  # from the start of generation to the last token
    queued_s: float = 0.0  # time spent waiting for the model before generation started
    cached_tokens: int = 0  # prompt tokens found in the KV cache (not processed again)
    draft_tokens: int = 0  # tokens guessed by speculative decoding (prompt lookup), checked in batches
    draft_accepted: int = 0  # of those, the ones the model picked itself (kept)

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
            **({"cached_tokens": self.cached_tokens} if self.cached_tokens else {}),
            **({"draft_tokens": self.draft_tokens, "draft_accepted": self.draft_accepted} if self.draft_tokens else {}),
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
    """A loaded model. ``parallel`` generations at a time (one unless it batches); the engine enforces that."""

    info: ModelInfo
    parallel: int = 1  # generations it decodes together (llama.cpp's continuous batching); more wait their turn

    @abstractmethod
    def tokenize(self, text: str, add_special: bool = True) -> list[int]: ...

    @abstractmethod
    def detokenize(self, tokens: list[int]) -> str: ...

    @abstractmethod
    def generate(self, prompt: str, params: SamplingParams, cancel: CancelToken) -> Iterator[Chunk]:
        """Stream the continuation of ``prompt``; stop strings are never emitted."""

    def embed(self, texts: list[str]) -> list[list[float]]:
        """One embedding vector per text, in order (for ``/v1/embeddings``); a loader that can overrides this.

        Raises :class:`BadRequest` here: a model that cannot embed is the asker's choice to change, not a crash.
        """
        info = self.info
        raise BadRequest(f"{info.name} cannot make embeddings: the {info.loader} loader has no embedding mode")

    @abstractmethod
    def close(self) -> None:
        """Free the weights and any cache; the model is unusable afterwards."""


LoadProgress = Callable[[float], None]  # told the fraction of a load done


class Loader(ABC):
    """Knows how to recognise and load one kind of model file or folder."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    settings_type: ClassVar[type[LoadSettings]] = LoadSettings
    supported_params: ClassVar[frozenset[str]] = frozenset()
    install_hint: ClassVar[str] = ""
    loads: ClassVar[str] = ""  # what it can load, in words (shown by `inglenook loaders`)
    # True: nothing native runs in the model (a remote server's HTTP client), so the engine holds it in the
    # server process and streams it on the caller's thread: no worker process, no decode thread
    in_process: ClassVar[bool] = False

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

    def load_reporting(self, path: Path, settings: LoadSettings, progress: LoadProgress) -> Model:
        """:meth:`load`, telling ``progress`` the fraction done (0..1, rising, 1.0 last) where the loader can
        (the page's load bar); a loader that cannot just reports 1.0 once loaded."""
        model = self.load(path, settings)
        progress(1.0)
        return model

    def ignored_params(self, params: SamplingParams, model: Model | None = None) -> list[str]:
        """Parameters the user changed that this loader (or ``model``, where it says what it honours: a remote
        model honours what its server's kind takes) cannot honour."""
        supported = getattr(model, "supported_params", None)
        if not isinstance(supported, frozenset):
            supported = self.supported_params
        return sorted(params.changed() - supported - {"max_new_tokens", "stop"})


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
