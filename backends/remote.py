"""The ``openai-remote`` loader: a model served by another OpenAI-compatible server (vLLM, llama-server,
llama-cpp-python's server, TGI, ollama, LM Studio, another Inglenook).

Remotes come only from the user's configuration (``inglenook remotes add``, stored in ``user_data/remotes.yaml``
by :mod:`webui.remotes`), which hands them to this loader with :meth:`RemoteLoader.configure`; no URL ever
comes from a request. A remote model's path is ``remote:NAME/<quoted model id>`` (:func:`remote_path`), a name
and not a file, so nothing reaches the disk or the network but the configured URL.

Loading is one ``GET /v1/models`` (the id must be there); generating is one streamed POST. A prompt rendered
with :data:`ENVELOPE_TEMPLATE` (the model's chat template when the server does chat) carries the messages
themselves: they go to the server's ``/v1/chat/completions`` and the server applies its own template; any
other prompt (a template chosen here, the notebook, ``/v1/completions``) goes to ``/v1/completions``.
Sampling fields map to what the server's *kind* accepts; the rest are reported as ignored. Closing the stream
or cancelling closes the upstream response. Every failure is one line naming the remote, never its key.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from backends.base import (
    BadRequest,
    CancelToken,
    Chunk,
    GenerationError,
    Loader,
    LoadSettings,
    Model,
    ModelInfo,
    ModelLoadError,
    ModelNotFound,
    SamplingParams,
    StopMatcher,
    Stopwatch,
)
from backends.hookspecs import hookimpl

NAME = "openai-remote"
PATH_PREFIX = "remote:"
KINDS = ("auto", "openai", "vllm", "llama.cpp", "inglenook")
MAX_UPSTREAM_STOPS = 4  # OpenAI's limit; the rest are applied here
ERROR_TEXT_LIMIT = 300  # how much of a server's error message is shown
LOAD_TIMEOUT_S = 15.0  # the longest a load waits for the server's /v1/models

# Sampling fields each kind of server takes, ours → theirs (max_new_tokens and stop always go).
_OPENAI = {"temperature": "temperature", "top_p": "top_p", "presence_penalty": "presence_penalty",
           "frequency_penalty": "frequency_penalty", "seed": "seed", "do_sample": ""}  # fmt: skip
KIND_FIELDS: dict[str, dict[str, str]] = {
    "openai": _OPENAI,
    "vllm": {**_OPENAI, "top_k": "top_k", "min_p": "min_p", "repetition_penalty": "repetition_penalty",
             "ban_eos_token": "ignore_eos", "grammar": "structured_outputs"},  # fmt: skip
    "llama.cpp": {**_OPENAI, "top_k": "top_k", "min_p": "min_p", "typical_p": "typical_p",
                  "repetition_penalty": "repeat_penalty", "mirostat_mode": "mirostat_mode",
                  "mirostat_tau": "mirostat_tau", "mirostat_eta": "mirostat_eta", "grammar": "grammar"},  # fmt: skip
    # another Inglenook takes every SamplingParams field by its own name
    "inglenook": {**_OPENAI, **{n: n for n in SamplingParams().__dict__ if n not in ("logprobs", "max_new_tokens",
                                                                                    "stop", "do_sample")}},
}  # fmt: skip

# The chat template of a remote model whose server does chat: the messages travel in the prompt, one record each
# (\x0f, a role mark, \x10, the text), after a \x0e (control characters that are not whitespace, so no strip or
# Jinja trim removes them); those characters are dropped from a text, so a record cannot be forged. Between two
# turns there is no word and no marker, so no stop string is derived from the template.
ENVELOPE_START, _RECORD, _UNIT = "\x0e", "\x0f", "\x10"
_ROLE_MARKS = {"system": "=", "user": ">", "assistant": "<"}
_MARK_ROLES = {v: k for k, v in _ROLE_MARKS.items()}
ENVELOPE_TEMPLATE = (
    "\x0e{% for m in messages %}\x0f"
    "{{ {'system': '=', 'user': '>', 'assistant': '<'}[m['role']] }}\x10"
    "{{ m['content'] | replace('\x0e', '') | replace('\x0f', '') | replace('\x10', '') }}"
    "{% endfor %}{% if add_generation_prompt %}\x0f<\x10{% endif %}"
)


def remote_path(remote: str, model_id: str) -> Path:
    """The path a remote model goes by in the engine: one component per part, the id quoted (no suffix, no /)."""
    return Path(PATH_PREFIX + remote) / quote(model_id, safe="").replace(".", "%2E")


def parse_remote_path(path: Path | str) -> tuple[str, str] | None:
    """(remote, model id) of a :func:`remote_path`, or None for any other path."""
    parts = Path(path).parts
    if len(parts) != 2 or not parts[0].startswith(PATH_PREFIX) or len(parts[0]) == len(PATH_PREFIX):
        return None
    return parts[0][len(PATH_PREFIX) :], unquote(parts[1])


def parse_envelope(prompt: str) -> tuple[list[dict], str] | None:
    """(messages, the start of the reply) from a prompt rendered with :data:`ENVELOPE_TEMPLATE`; None otherwise."""
    if not prompt.startswith(ENVELOPE_START):
        return None
    messages: list[dict] = []
    for record in prompt[1:].split(_RECORD)[1:]:
        mark, sep, text = record.partition(_UNIT)
        if not sep or mark not in _MARK_ROLES:
            return None
        messages.append({"role": _MARK_ROLES[mark], "content": text})
    if not messages or messages[-1]["role"] != "assistant":
        return messages, ""  # no generation prompt: reply to the messages as they are
    start = messages.pop()["content"]  # the open assistant turn: empty, or what the reply starts with
    return messages, start


@dataclass(frozen=True)
class Remote:
    """One configured server. ``api_key`` is read from its 0600 file by the caller; never shown or logged."""

    name: str
    url: str  # base URL, without /v1
    api_key: str = ""
    kind: str = "auto"
    chat: bool = True  # the server does chat (applies its own template); False: only /v1/completions

    def __repr__(self) -> str:  # a key must never reach a log line through a repr
        return f"Remote(name={self.name!r}, url={self.url!r}, kind={self.kind!r}, chat={self.chat})"


def check_url(url: str) -> str:
    """``url`` as a base URL (http/https, a host, no query, no credentials, no trailing /v1); ValueError if not."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"a remote URL must be http:// or https:// with a host, not {url!r}")
    if parts.username or parts.password:
        raise ValueError("put no credentials in the URL; give the key with --api-key-file")
    if parts.query or parts.fragment:
        raise ValueError("a remote URL takes no query or fragment")
    path = parts.path.rstrip("/")
    if path.endswith("/v1"):
        path = path[: -len("/v1")]
    return f"{parts.scheme}://{parts.netloc}{path}"


@dataclass
class RemoteSettings(LoadSettings):
    """How to talk to a remote. ``n_ctx``: the context to plan prompts for when the server does not say."""

    n_ctx: int = 4096
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 120.0  # the longest wait for the next piece of a reply


def _one_line(text: str) -> str:
    line = " ".join(str(text).split())
    return line[:ERROR_TEXT_LIMIT] + ("…" if len(line) > ERROR_TEXT_LIMIT else "")


def _server_error(response: Any) -> str:
    """The message in an error response (OpenAI's shape, FastAPI's ``detail``, or the text)."""
    try:
        body = json.loads(response.read())
    except (ValueError, UnicodeDecodeError):
        return _one_line(response.text) if hasattr(response, "text") else ""
    if isinstance(body, dict):
        err = body.get("error", body.get("detail", body))
        if isinstance(err, dict):
            return _one_line(err.get("message") or json.dumps(err))
        return _one_line(err if isinstance(err, str) else json.dumps(err))
    return _one_line(json.dumps(body))


def detect_kind(card: dict) -> str:
    """The kind of server a ``/v1/models`` entry comes from (``owned_by`` and the fields only some servers add)."""
    owner = str(card.get("owned_by", "")).lower()
    if owner == "vllm" or "max_model_len" in card:
        return "vllm"
    if owner in ("llamacpp", "me"):  # llama-server, llama-cpp-python's server
        return "llama.cpp"
    if "active" in card and "loaded" in card:  # Inglenook's model card
        return "inglenook"
    return "openai"


class RemoteClient:
    """HTTP to one remote, with its key; every failure becomes one line naming the remote (never the key)."""

    def __init__(self, remote: Remote, settings: RemoteSettings) -> None:
        import httpx

        self.remote = remote
        self._httpx = httpx
        headers = {"Authorization": f"Bearer {remote.api_key}"} if remote.api_key else {}
        timeout = httpx.Timeout(settings.read_timeout_s, connect=settings.connect_timeout_s)
        # no proxies from the environment and no redirects: the request goes to the configured URL and nowhere else
        self.http = httpx.Client(base_url=remote.url, headers=headers, timeout=timeout, trust_env=False,
                                 follow_redirects=False)  # fmt: skip

    def failure(self, exc: Exception, doing: str) -> str:
        """One line for a transport failure."""
        httpx = self._httpx
        where = f"remote {self.remote.name} ({self.remote.url})"
        if isinstance(exc, httpx.ConnectTimeout | httpx.ConnectError):
            return f"{where} is unreachable while {doing}: {_one_line(exc) or type(exc).__name__}"
        if isinstance(exc, httpx.ReadTimeout):
            return f"{where} sent nothing for {self.http.timeout.read:g} s while {doing} (read_timeout_s)"
        if isinstance(exc, httpx.TimeoutException):
            return f"{where} timed out while {doing}"
        return f"{where} failed while {doing}: {type(exc).__name__}: {_one_line(exc)}"

    def status_message(self, response: Any, doing: str) -> str:
        where = f"remote {self.remote.name}"
        if response.status_code in (401, 403):
            return f"{where} refused the API key while {doing} (HTTP {response.status_code}); check its --api-key-file"
        said = _server_error(response)
        return f"{where} answered HTTP {response.status_code} while {doing}" + (f": {said}" if said else "")

    def models(self) -> list[dict]:
        """The server's ``/v1/models`` entries; ModelLoadError (one line) when it cannot be asked."""
        try:
            response = self.http.get("/v1/models")
        except self._httpx.HTTPError as exc:
            raise ModelLoadError(self.failure(exc, "listing its models")) from None
        if response.status_code != 200:
            raise ModelLoadError(self.status_message(response, "listing its models"))
        try:
            data = response.json().get("data")
        except (ValueError, AttributeError):
            data = None
        if not isinstance(data, list):
            raise ModelLoadError(f"remote {self.remote.name} answered /v1/models with no model list")
        return [d for d in data if isinstance(d, dict) and isinstance(d.get("id"), str)]

    def close(self) -> None:
        self.http.close()


def sampling_body(params: SamplingParams, kind: str) -> dict[str, Any]:
    """The request fields for ``params`` on a server of ``kind`` (our neutral values sent explicitly, so the
    server's own defaults, e.g. llama.cpp's top_k 40, do not change what the user chose)."""
    fields = KIND_FIELDS[kind]
    body: dict[str, Any] = {"max_tokens": params.max_new_tokens}
    for ours, theirs in fields.items():
        value = getattr(params, ours)
        if ours == "do_sample" or (ours == "seed" and value < 0) or (ours == "grammar" and not value):
            continue
        if ours == "grammar" and kind == "vllm":  # vLLM: structured_outputs now, guided_grammar before 0.12
            body["structured_outputs"] = {"grammar": value}
            body["guided_grammar"] = value
            continue
        if ours == "top_k" and kind == "vllm" and value == 0:
            value = -1  # vLLM's "off"
        if kind == "inglenook" and value == getattr(SamplingParams(), ours) and ours not in ("temperature", "top_p"):
            continue  # neutral is Inglenook's default too: keep the request small
        body[theirs] = value
    if params.greedy:
        body["temperature"] = 0.0
    stops = params.stop[:MAX_UPSTREAM_STOPS]
    if stops:
        body["stop"] = stops
    return body


class RemoteModel(Model):
    """A model on a remote server; nothing of it lives here but an HTTP client."""

    def __init__(self, remote: Remote, model_id: str, card: dict, settings: RemoteSettings, path: Path) -> None:
        self.remote, self.model_id = remote, model_id
        self.kind = remote.kind if remote.kind != "auto" else detect_kind(card)
        self.supported_params = frozenset(KIND_FIELDS[self.kind]) | {"max_new_tokens", "stop"}
        self.client = RemoteClient(remote, settings)
        context = card.get("max_model_len") or (card.get("meta") or {}).get("n_ctx_train") or settings.n_ctx
        self.info = ModelInfo(
            name=f"{remote.name}/{model_id}",
            loader=NAME,
            path=str(path),
            architecture="remote",
            context_length=int(context) if isinstance(context, int | float) and context > 0 else settings.n_ctx,
            chat_template=ENVELOPE_TEMPLATE if remote.chat else None,
            metadata={
                "remote": remote.name,
                "remote.url": remote.url,
                "remote.kind": self.kind,
                "remote.model": model_id,
                "remote.chat": str(remote.chat).lower(),
            },  # fmt: skip
        )

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        """An estimate (servers tokenize differently, some not at all over HTTP): one token per 4 characters of
        the text (for an envelope, of the messages' text). Only prompt planning uses it."""
        parsed = parse_envelope(text)
        counted = "".join(m["content"] for m in parsed[0]) + parsed[1] if parsed else text
        return [0] * (len(counted) // 4 + int(add_special))

    def detokenize(self, tokens: list[int]) -> str:
        raise BadRequest(f"{self.info.name} is a remote model: its tokens cannot be turned back into text here")

    def generate(self, prompt: str, params: SamplingParams, cancel: CancelToken) -> Iterator[Chunk]:
        envelope = parse_envelope(prompt)
        body: dict[str, Any] = {"model": self.model_id, "stream": True, **sampling_body(params, self.kind)}
        if self.kind in ("vllm", "inglenook", "openai"):
            body["stream_options"] = {"include_usage": True}
        if envelope is not None:
            messages, start = envelope
            if start:
                messages = [*messages, {"role": "assistant", "content": start}]
                if self.kind == "vllm":
                    body.update(add_generation_prompt=False, continue_final_message=True)
            endpoint, body["messages"] = "/v1/chat/completions", messages
        else:
            endpoint, body["prompt"] = "/v1/completions", prompt
        yield from self._stream(endpoint, body, params, cancel)

    def _stream(self, endpoint: str, body: dict, params: SamplingParams, cancel: CancelToken) -> Iterator[Chunk]:
        httpx = self.client._httpx
        watch, stops = Stopwatch(), StopMatcher(params.stop)
        finish, usage, pieces = "stop", None, 0
        doing = f"generating with {self.model_id}"
        try:
            with self.client.http.stream("POST", endpoint, json=body) as response:
                if response.status_code != 200:
                    response.read()
                    message = self.client.status_message(response, doing)
                    raise (BadRequest if response.status_code in (400, 404, 422) else GenerationError)(message)
                closer = _close_on_cancel(response, cancel)
                try:
                    for data in _sse_data(response):
                        if cancel.cancelled:
                            finish = "cancelled"
                            break
                        event = _event(data, self.remote.name)
                        if event.get("usage"):
                            usage = event["usage"]
                        for choice in event.get("choices") or []:
                            text = (choice.get("delta") or {}).get("content") or choice.get("text") or ""
                            if text:
                                pieces += 1
                                shown = stops.feed(text)
                                if shown:
                                    watch.mark_token()
                                    yield Chunk(text=shown)
                            if choice.get("finish_reason"):
                                finish = "length" if choice["finish_reason"] == "length" else "stop"
                        if stops.stopped:
                            break
                finally:
                    closer.set()
        except httpx.HTTPError as exc:
            if cancel.cancelled:  # the response was closed under the reader on purpose
                finish = "cancelled"
            else:
                raise GenerationError(self.client.failure(exc, doing) + "; the reply so far is kept") from None
        if not stops.stopped and finish != "cancelled" and (tail := stops.flush()):
            yield Chunk(text=tail)
        if cancel.cancelled:
            finish = "cancelled"
        prompt_tokens = int((usage or {}).get("prompt_tokens") or 0)
        completion = int((usage or {}).get("completion_tokens") or pieces)
        yield Chunk(finish_reason=finish, usage=watch.usage(prompt_tokens, completion))

    def close(self) -> None:
        self.client.close()


def _close_on_cancel(response: Any, cancel: CancelToken) -> threading.Event:
    """Close ``response`` as soon as ``cancel`` fires (a stalled server must not hold a cancel up); set the
    returned event when the stream ends, which ends the watcher."""
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.05):
            if cancel.cancelled:
                response.close()
                return

    threading.Thread(target=watch, name="inglenook-remote-cancel", daemon=True).start()
    return done


def _sse_data(response: Any) -> Iterator[str]:
    """The ``data:`` payloads of a server-sent event stream, up to ``[DONE]``."""
    for line in response.iter_lines():
        if not line.startswith("data:"):
            continue
        data = line[len("data:") :].strip()
        if data == "[DONE]":
            return
        if data:
            yield data


def _event(data: str, remote: str) -> dict:
    """One streamed event; an ``error`` event (Inglenook and vLLM send one mid-stream) becomes GenerationError."""
    try:
        event = json.loads(data)
    except ValueError:
        raise GenerationError(f"remote {remote} sent something that is not JSON: {_one_line(data)[:80]}") from None
    if not isinstance(event, dict):
        raise GenerationError(f"remote {remote} sent an event that is not an object")
    error = event.get("error")
    if error:
        message = error.get("message") if isinstance(error, dict) else error
        raise GenerationError(f"remote {remote} failed mid-reply: {_one_line(message)}; the reply so far is kept")
    return event


class RemoteLoader(Loader):
    """Loads ``remote:NAME/<model id>`` paths from the remotes the user configured."""

    name = NAME
    description = "a model served by an OpenAI-compatible server (vLLM, llama-server, another Inglenook, ...)"
    loads = "models of the remotes in user_data/remotes.yaml (inglenook remotes add NAME URL)"
    settings_type = RemoteSettings
    in_process = True  # nothing native runs here: no worker process is needed
    supported_params = frozenset(name for kind in KIND_FIELDS.values() for name in kind)

    def __init__(self) -> None:
        self._remotes: dict[str, Remote] = {}
        self._lock = threading.Lock()

    def configure(self, remotes: list[Remote]) -> None:
        """The remotes this loader may reach (the user's configuration, read by webui.remotes)."""
        with self._lock:
            self._remotes = {r.name: r for r in remotes}

    def remote(self, name: str) -> Remote:
        with self._lock:
            found = self._remotes.get(name)
        if found is None:
            raise ModelNotFound(f"no remote named {name!r} is configured (inglenook remotes list)")
        return found

    def can_load(self, path: Path) -> bool:
        parsed = parse_remote_path(path)
        return parsed is not None and parsed[0] in self._remotes

    def check(self, path: Path, settings: LoadSettings | None = None) -> None:
        parsed = parse_remote_path(path)
        if parsed is None:
            raise ModelLoadError(f"{path} is not a remote model (remote:NAME/MODEL)")
        self.remote(parsed[0])

    def load(self, path: Path, settings: LoadSettings) -> Model:
        parsed = parse_remote_path(path)
        if parsed is None:
            raise ModelLoadError(f"{path} is not a remote model (remote:NAME/MODEL)")
        remote = self.remote(parsed[0])
        settings = settings if isinstance(settings, RemoteSettings) else RemoteSettings(n_ctx=settings.n_ctx)
        # a load asks one quick question: a hung server must not hold the engine for a whole reply's timeout
        client = RemoteClient(remote, replace(settings, read_timeout_s=min(settings.read_timeout_s, LOAD_TIMEOUT_S)))
        try:
            cards = {c["id"]: c for c in client.models()}
        finally:
            client.close()
        if parsed[1] not in cards:
            raise ModelNotFound(f"remote {remote.name} serves no model {parsed[1]!r} (it serves: "
                                f"{', '.join(sorted(cards)) or 'none'})")  # fmt: skip
        return RemoteModel(remote, parsed[1], cards[parsed[1]], settings, path)


@hookimpl
def register_loaders(register) -> None:
    register(RemoteLoader())
