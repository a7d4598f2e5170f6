"""Turning a conversation into the prompt text a model expects.

:func:`build_chat_prompt` is the single entry point the chat layer calls. It
chooses a template (:func:`select_template`: the user's choice → a rule in
``presets/models.yaml`` → the model file's own chat template → the template
known for the architecture → a plain fallback), renders it in a Jinja2
sandbox exactly as ``transformers``' ``apply_chat_template`` would
(:func:`render`), and derives stop strings from the template itself
(:func:`derive_stops`). The template files are found by
:mod:`webui.templates.library`.
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from pathlib import Path

import jinja2
import jinja2.ext
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from backends.base import ModelInfo
from webui.templates.library import PRESETS_DIR, TemplateFile, TemplateFileError, get_template, load_rules

ROLES = ("system", "user", "assistant")
FALLBACK = "plain"
# When the library's plain.yaml is missing (e.g. a trimmed install), this keeps chat working.
_BUILTIN_PLAIN = (
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'system' -%}{{ m['content'] | trim }}{{ '\\n\\n' }}"
    "{%- elif m['role'] == 'user' -%}{{ 'User: ' + (m['content'] | trim) + '\\n' }}"
    "{%- else -%}{{ 'Assistant: ' + (m['content'] | trim) + '\\n' }}{%- endif -%}"
    "{%- endfor -%}{%- if add_generation_prompt -%}{{ 'Assistant:' }}{%- endif -%}"
)

# GGUF ``general.architecture`` → library template, for model files that carry no chat template.
# ``llama`` is missing on purpose: Llama 2, Llama 3 and Mistral fine-tunes all report it.
KNOWN_ARCHITECTURES: list[tuple[str, str]] = [
    (r"gemma\d*n?", "gemma"),
    (r"llama3|llama-3", "llama-3"),
    (r"qwen\d*(moe)?", "qwen"),
    (r"phi3", "phi-3"),
    (r"mistral\d*", "mistral"),
    (r"command-r|cohere\d*", "command-r"),
]


class TemplateError(ValueError):
    """A template that cannot be rendered; the message names the template and says why, on one line."""


# A chat template from a model file is untrusted code: its rendering is bounded in time and size, so a
# loop of 10^10 steps or ``{{ 'x' * 200000000 }}`` ends with a TemplateError instead of a busy core or
# gigabytes of memory (and never reaches the tokenizer, which runs under the engine's lock).
RENDER_TIME_LIMIT_S = 2.0
MAX_RENDER_CHARS = 16_000_000  # the rendered prompt; a context of 128k tokens is ~0.5M characters
MAX_POWER_BITS = 4096  # ``a ** b`` results larger than this many bits are refused


class _TooMuch(Exception):
    """Raised inside the template's own frames when it runs out of time (escapes the sandbox's handlers)."""


@dataclass
class Prompt:
    text: str
    stop: list[str] = field(default_factory=list)
    template: str = ""  # which format produced it, shown to the user
    chosen_by: str = ""  # which selection rule chose that format, shown to the user


@dataclass(frozen=True)
class Selection:
    """The template chosen for a model and why; ``settings`` are default settings from a models.yaml rule."""

    name: str
    text: str
    chosen_by: str
    settings: dict = field(default_factory=dict)


# ---------------------------------------------------------------- rendering


class _Sandbox(ImmutableSandboxedEnvironment):
    """The transformers sandbox, except that touching an unsafe attribute fails at once.

    Jinja's sandbox answers ``''.__class__`` with an undefined value that prints
    as nothing, so an escape attempt would silently render. Raising instead makes
    it a clear error and stops the template before anything else is evaluated.
    """

    intercepted_binops = frozenset(["*", "**"])

    def unsafe_undefined(self, obj: object, attribute: str) -> jinja2.Undefined:
        raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe")

    def call_binop(self, context, operator: str, left: object, right: object) -> object:
        """``*`` and ``**`` with their result's size checked before it is made."""
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                sized = isinstance(seq, str | list | tuple) and isinstance(times, int)
                if sized and len(seq) * times > MAX_RENDER_CHARS:
                    raise SecurityError(f"a repetition of {len(seq) * times:,} items is over the limit")
            return left * right
        if isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and right > 0:
            if right * math.log2(abs(left)) > MAX_POWER_BITS:
                raise SecurityError(f"{left} ** {right} is too large")
        return left**right


class _Namespace(jinja2.utils.Namespace):
    """``namespace()`` that refuses underscore names, as transformers does, so no dunder can be planted."""

    def __init__(*args, **kwargs) -> None:  # same signature trick as jinja2's Namespace
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: object) -> None:
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: object) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise SecurityError(f"a namespace may not hold the underscore name {name!r}")


class _Dict:
    """``dict()`` for templates without exposing the ``dict`` type itself."""

    def __call__(self, *args, **kwargs) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs) -> dict:
        return dict.fromkeys(*args, **kwargs)


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


def _tojson(x: object, ensure_ascii: bool = False, indent=None, separators=None, sort_keys: bool = False) -> str:
    # Jinja's own tojson escapes HTML characters; model templates expect plain JSON (as transformers renders it).
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@lru_cache(maxsize=1)
def _environment() -> _Sandbox:
    env = _Sandbox(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    env.globals["dict"] = _Dict()
    env.globals["namespace"] = _Namespace
    return env


@lru_cache(maxsize=64)
def _compile(text: str, name: str) -> jinja2.Template:
    try:
        return _environment().from_string(text)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"template {name!r} has a Jinja syntax error on line {exc.lineno}: {exc.message}") from None


def render(
    text: str,
    messages: list[dict],
    *,
    name: str = "template",
    add_generation_prompt: bool = True,
    bos_token: str = "",
    eos_token: str = "",
    tools: list[dict] | None = None,
) -> str:
    """Render template ``text`` over ``messages`` with the variables transformers gives a chat template.

    Like ``apply_chat_template``: message keys whose value is None are dropped,
    ``tools`` is the request's tools (OpenAI's shape) or None, and ``documents`` is None. Every failure, including a
    sandbox violation, becomes a :class:`TemplateError` naming the template.
    """
    if not messages:
        raise TemplateError("the conversation is empty")
    template = _compile(text, name)
    chat = [{k: v for k, v in m.items() if v is not None} for m in messages]
    variables = {"bos_token": bos_token, "eos_token": eos_token}
    try:
        with _time_limit(RENDER_TIME_LIMIT_S):
            chunks = template.generate(
                messages=chat, tools=tools, documents=None, add_generation_prompt=add_generation_prompt, **variables
            )
            return _bounded_join(chunks, name)
    except TemplateError:
        raise
    except _TooMuch:
        raise TemplateError(
            f"template {name!r} took longer than {RENDER_TIME_LIMIT_S:g} s to render and was stopped"
        ) from None
    except SecurityError as exc:
        raise TemplateError(f"template {name!r} tried to reach Python internals and was stopped: {exc}") from None
    except jinja2.TemplateError as exc:
        raise TemplateError(f"template {name!r} refused the conversation: {exc}") from None
    except Exception as exc:  # a template is untrusted code: whatever it trips over is the template's error
        raise TemplateError(f"template {name!r} failed: {type(exc).__name__}: {exc}") from None


def _bounded_join(chunks: Iterator[str], name: str) -> str:
    parts, size = [], 0
    for chunk in chunks:
        size += len(chunk)
        if size > MAX_RENDER_CHARS:
            raise TemplateError(f"template {name!r} rendered more than {MAX_RENDER_CHARS:,} characters and was stopped")
        parts.append(chunk)
    return "".join(parts)


@contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    """Stop the template's own code (compiled from "<template>") once ``seconds`` have passed.

    A trace function on this thread only, active only in template frames: every line a template runs checks
    the clock. Python code cannot be interrupted from outside, so this is how a render can be abandoned.
    """
    end = time.monotonic() + seconds
    previous = sys.gettrace()

    def in_template(frame, event, arg):
        if time.monotonic() > end:
            raise _TooMuch
        return in_template

    def any_frame(frame, event, arg):
        return in_template if frame.f_code.co_filename == "<template>" else None

    sys.settrace(any_frame)
    try:
        yield
    finally:
        sys.settrace(previous)


# ---------------------------------------------------------------- stop strings

_SENTINEL_A, _SENTINEL_U = "InglenookAssistantSentinel7f3", "InglenookUserSentinel7f3"
# Control markers such as <end_of_turn>, <|im_end|>, </s>, [INST].
_MARKER = re.compile(r"<\|[^<>|\s]{1,40}\|>|</?[A-Za-z_][^<>\s]{0,40}>|\[/?[A-Z_]{2,20}\]")


def derive_stops(text: str, name: str = "template", bos_token: str = "", eos_token: str = "") -> list[str]:
    """Stop strings for replies in ``text``'s format: what follows an assistant turn, up to the next user message.

    A conversation with sentinel messages is rendered; the text between the end
    of the assistant's content and the next user's content is the end-of-turn
    marker plus the next user turn's prefix. Control markers in it (Gemma's
    ``<end_of_turn>``, ChatML's ``<|im_end|>``) each become a stop; plain-text
    formats stop at the next speaker label (``\\nUser:``). The eos token is added.
    """
    turns = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": _SENTINEL_A},
        {"role": "user", "content": _SENTINEL_U},
    ]
    try:
        rendered = render(text, turns, name=name, add_generation_prompt=False, bos_token=bos_token, eos_token=eos_token)
        start, end = rendered.index(_SENTINEL_A) + len(_SENTINEL_A), rendered.index(_SENTINEL_U)
        between = rendered[start:end] if start <= end else ""
    except ValueError:  # a template that refuses this shape: only the eos token is known
        between = ""
    return stops_between(between, bos_token, eos_token)


def stops_between(between: str, bos_token: str = "", eos_token: str = "") -> list[str]:
    """Stop strings in the text that closes one turn and opens the next (see :func:`derive_stops`).

    Also used to end an impersonated user message where the template would close the user's turn.
    """
    stops: list[str] = []
    markers = [m for m in _MARKER.findall(between) if m != bos_token]
    stops.extend(markers)
    rest = _MARKER.split(between)[-1]  # the text after the last marker: a speaker label such as "User:"
    label = rest.strip()
    if re.search(r"\w", label) and (not markers or label.endswith(":")):  # never a bare ":" or other punctuation
        newline_before = "\n" in rest[: len(rest) - len(rest.lstrip())]
        stops.append(("\n" if newline_before else "") + label)
    if eos_token:
        stops.append(eos_token)
    unique = list(dict.fromkeys(s for s in stops if s))
    return [s for s in unique if not any(o != s and o in s for o in unique)]  # a longer stop never fires first


# ---------------------------------------------------------------- selection


def known_template_for(architecture: str) -> str | None:
    """The library template for a GGUF architecture name, if one is known."""
    for pattern, template in KNOWN_ARCHITECTURES:
        if re.fullmatch(pattern, architecture, re.IGNORECASE):
            return template
    return None


def _library(name: str, presets: Path) -> TemplateFile:
    try:
        return get_template(name, presets)
    except TemplateFileError as exc:
        raise TemplateError(str(exc)) from None


def select_template(info: ModelInfo, choice: str | None = None, presets: Path = PRESETS_DIR) -> Selection:
    """Which template ``info``'s model gets, and which rule chose it (first match wins)."""
    if choice:
        t = _library(choice, presets)
        return Selection(t.name, t.text, "user choice")
    try:
        rules = load_rules(presets)
    except TemplateFileError as exc:
        raise TemplateError(str(exc)) from None
    for rule in rules:
        if rule.matches(info.name, info.architecture):
            t = _library(rule.template, presets)
            return Selection(t.name, t.text, f"presets/models.yaml rule {rule.label}", dict(rule.settings))
    if info.chat_template and info.chat_template.strip():
        return Selection("model", info.chat_template, "chat template in the model file")
    known = known_template_for(info.architecture)
    if known:
        t = _library(known, presets)
        return Selection(t.name, t.text, f"known for architecture {info.architecture}")
    try:
        t = get_template(FALLBACK, presets)
        return Selection(t.name, t.text, "fallback")
    except TemplateFileError:
        return Selection(FALLBACK, _BUILTIN_PLAIN, "fallback (built in)")


def build_chat_prompt(
    messages: list[dict],
    info: ModelInfo,
    add_generation_prompt: bool = True,
    choice: str | None = None,
    presets: Path = PRESETS_DIR,
    tools: list[dict] | None = None,
) -> Prompt:
    """The prompt for ``messages`` (``{"role", "content"}`` dicts) on the model described by ``info``.

    ``tools`` (OpenAI's shape) go to a template that renders them itself, with ``tool`` messages and assistant
    ``tool_calls`` in ``messages`` (:func:`webui.chat.tools.prepare` decides, and writes them as plain messages
    for every other template). A leading BOS token is removed from the text: the loaders add BOS when they
    tokenize, and a second one degrades many models.
    """
    chosen = select_template(info, choice, presets)
    native = renders_tools(chosen.text)  # a template that takes tool results and calls as they are
    for m in messages:
        if m.get("role") not in ROLES and not (native and m.get("role") == "tool"):
            raise ValueError(f"unknown message role {m.get('role')!r}")
        if not isinstance(m.get("content"), str) and not (native and m.get("tool_calls")):
            raise ValueError(f"a {m['role']} message has no text content")
    tokens = {"bos_token": info.bos_token, "eos_token": info.eos_token}
    text = render(
        chosen.text, messages, name=chosen.name, add_generation_prompt=add_generation_prompt, tools=tools, **tokens
    )
    if info.bos_token and text.startswith(info.bos_token):
        text = text[len(info.bos_token) :]
    return Prompt(text, list(_cached_stops(chosen.text, chosen.name, **tokens)), chosen.name, chosen.chosen_by)


def renders_tools(template: str) -> bool:
    """Whether a chat template renders the ``tools`` variable itself (then it also takes ``tool`` messages)."""
    return re.search(r"\btools\b", template) is not None


@lru_cache(maxsize=64)
def _cached_stops(text: str, name: str, bos_token: str, eos_token: str) -> tuple[str, ...]:
    return tuple(derive_stops(text, name, bos_token, eos_token))
