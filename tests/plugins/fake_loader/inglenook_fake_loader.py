"""A loader plugin for tests (like `llm`'s MockModel): a `.fake` file is a scripted model.

It goes through the same path as any third-party loader (the entry point group `inglenook.backends`),
so the fast test tier exercises the registry, the engine, the chat core, the API and the UI core without
loading real weights; the real-model tests cover the real loaders.

A `.fake` file is JSON (every key optional)::

    {"reply": "Hello there.",            # what the model says (default: echoes the prompt's last line)
     "replies": ["a", "b"],               # sampled with the seed when temperature > 0
     "when": [["text", "reply"], ...],    # the reply of the first pair whose text is in the prompt (before
                                          # "reply"): a scripted tool call, then an answer once its result is in
     "context_length": 8192, "chat_template": null, "architecture": "fake",
     "token_delay_ms": 0,                 # time per token (a slow model, for cancel and streaming tests)
     "parallel": 1,                       # generations it runs together (as llama.cpp's batching does)
     "echo_params": false,                # true: the reply is the JSON of the sampling parameters it got
                                          # (those that differ from neutral), to test which ones reach a model
     "echo_prompt": false,                # true: the reply is {"prompt": the prompt as rendered, "params": ...}
                                          # (how a server behind a remote rendered the messages it got)
     "load_ms": 0,                        # a load that takes this long, reporting its progress in 10 steps
     "crash": "",                         # "load", "token:N" (after N tokens), "abort:N": the process dies
     "embed": false}                      # true: embed() gives bag-of-words vectors (64 dims, L2-normalised),
                                          # so texts sharing words are closer; false: it cannot embed

Tokens are UTF-8 bytes for tokenize/detokenize (exact and reversible); a reply streams word by word.
`crash` kills the process that runs the model (SIGSEGV, or abort() for "abort:N"), which is how a native
fault inside llama.cpp or torch looks from outside: only safe where models run in worker processes.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import signal
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from backends.base import (
    CancelToken,
    Chunk,
    Loader,
    LoadProgress,
    LoadSettings,
    Model,
    ModelInfo,
    ModelLoadError,
    PromptTooLong,
    SamplingParams,
    StopMatcher,
    Stopwatch,
)
from backends.hookspecs import hookimpl

SUFFIX = ".fake"
EMBED_DIMS = 64


@dataclass
class FakeSettings(LoadSettings):
    crash: str = ""  # overrides the file's "crash" (same forms)
    token_delay_ms: float = -1.0  # overrides the file's "token_delay_ms" when >= 0
    parallel: int = 0  # overrides the file's "parallel" when > 0


def _die(how: str) -> None:
    """Die here, as a native fault does: the signal goes to this thread (``os.kill`` from a thread that is not
    the main one lets the process run on until another thread takes the signal)."""
    if how == "abort":
        os.abort()
    signal.pthread_kill(threading.get_ident(), signal.SIGSEGV)
    time.sleep(60)  # never reached: the signal's handler ends the process


def _crash_plan(spec: str) -> tuple[str, int] | None:
    """("segv" | "abort" | "load", after N tokens) from "load", "token:N" or "abort:N"."""
    if not spec:
        return None
    if spec == "load":
        return ("load", 0)
    kind, _, n = spec.partition(":")
    if kind not in ("token", "abort") or not n.isdigit():
        raise ModelLoadError(f"fake model: crash must be 'load', 'token:N' or 'abort:N', not {spec!r}")
    return ("abort" if kind == "abort" else "segv", int(n))


class FakeModel(Model):
    def __init__(self, script: dict, info: ModelInfo, crash: tuple[str, int] | None, delay_s: float) -> None:
        self.script, self.info, self.crash, self.delay_s = script, info, crash, delay_s
        self.closed = False

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        return list(text.encode("utf-8"))

    def detokenize(self, tokens: list[int]) -> str:
        return bytes(tokens).decode("utf-8", errors="replace")

    def _reply(self, prompt: str, params: SamplingParams) -> str:
        changed = {k: getattr(params, k) for k in sorted(params.changed())}
        if self.script.get("echo_prompt"):
            return json.dumps({"prompt": prompt, "params": changed}, sort_keys=True)
        if self.script.get("echo_params"):
            return json.dumps(changed, sort_keys=True)
        for needle, reply in self.script.get("when", []):
            if needle in prompt:
                return str(reply)
        replies = self.script.get("replies")
        if replies and not params.greedy:
            return random.Random(params.seed if params.seed >= 0 else None).choice(replies)
        if "reply" in self.script:
            return str(self.script["reply"])
        lines = [line for line in prompt.splitlines() if line.strip()]
        return "You said: " + (lines[-1].strip() if lines else "nothing")

    def generate(self, prompt: str, params: SamplingParams, cancel: CancelToken) -> Iterator[Chunk]:
        if self.closed:
            raise RuntimeError("fake model is closed")
        watch = Stopwatch()
        prompt_tokens = len(self.tokenize(prompt))
        if prompt_tokens > self.info.context_length:
            raise PromptTooLong(f"prompt is {prompt_tokens} tokens, over the context of {self.info.context_length}")
        words = re.findall(r"\s*\S+", self._reply(prompt, params))
        matcher = StopMatcher(params.stop)
        produced, finish = 0, "stop"
        for word in words:
            if cancel.cancelled:
                finish = "cancelled"
                break
            if produced >= params.max_new_tokens:
                finish = "length"
                break
            if self.crash and self.crash[0] != "load" and produced == self.crash[1]:
                _die(self.crash[0])
            if self.delay_s:
                time.sleep(self.delay_s)
            produced += 1
            watch.mark_token()
            text = matcher.feed(word)
            if text:
                yield Chunk(text=text)
            if matcher.stopped:
                break
        if not matcher.stopped and (tail := matcher.flush()):
            yield Chunk(text=tail)
        yield Chunk(finish_reason=finish, usage=watch.usage(prompt_tokens, produced))

    def embed(self, texts: list[str]) -> list[list[float]]:
        if not self.script.get("embed"):
            return super().embed(texts)
        out = []
        for text in texts:
            vector = [0.0] * EMBED_DIMS
            for word in re.findall(r"\w+", text.lower()):
                vector[zlib.crc32(word.encode()) % EMBED_DIMS] += 1.0
            norm = math.sqrt(sum(v * v for v in vector)) or 1.0
            out.append([v / norm for v in vector])
        return out

    def close(self) -> None:
        self.closed = True


class FakeLoader(Loader):
    name = "fake"
    description = "scripted test model (.fake JSON files)"
    loads = "`.fake` JSON files (tests only)"
    settings_type = FakeSettings
    supported_params = frozenset({"temperature", "seed", "do_sample", "max_new_tokens", "stop"})

    def can_load(self, path: Path) -> bool:
        return path.suffix == SUFFIX and path.is_file()

    def _script(self, path: Path) -> dict:
        try:
            script = json.loads(path.read_text(encoding="utf-8") or "{}")
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"fake model {path.name}: {exc}") from None
        if not isinstance(script, dict):
            raise ModelLoadError(f"fake model {path.name}: expected a JSON object")
        return script

    def check(self, path: Path, settings: LoadSettings | None = None) -> None:
        if not self.can_load(path):
            raise ModelLoadError(f"not a .fake file: {path}")
        script = self._script(path)
        _crash_plan(getattr(settings, "crash", "") or str(script.get("crash", "")))

    def load_reporting(self, path: Path, settings: LoadSettings, progress: LoadProgress) -> Model:
        """A load of ``load_ms`` in ten steps, each reported (the page's load bar)."""
        self.check(path, settings)
        steps, total_s = 10, float(self._script(path).get("load_ms", 0)) / 1000
        for step in range(1, steps + 1):
            time.sleep(total_s / steps)
            progress(step / steps if step < steps else 0.99)  # 1.0 once the model exists
        model = self.load(path, settings)
        progress(1.0)
        return model

    def load(self, path: Path, settings: LoadSettings) -> Model:
        self.check(path, settings)
        script = self._script(path)
        crash = _crash_plan(getattr(settings, "crash", "") or str(script.get("crash", "")))
        if crash and crash[0] == "load":
            _die("segv")
        delay_ms = getattr(settings, "token_delay_ms", -1.0)
        delay_s = (delay_ms if delay_ms >= 0 else float(script.get("token_delay_ms", 0))) / 1000
        context = int(script.get("context_length", 8192))
        info = ModelInfo(
            name=path.stem,
            loader=self.name,
            path=str(path),
            architecture=str(script.get("architecture", "fake")),
            context_length=min(context, settings.n_ctx) if settings.n_ctx else context,
            chat_template=script.get("chat_template"),
            file_size=path.stat().st_size,
        )
        model = FakeModel(script, info, crash, delay_s)
        model.parallel = getattr(settings, "parallel", 0) or int(script.get("parallel", 1))
        return model


@hookimpl
def register_loaders(register) -> None:
    register(FakeLoader())
