"""Tool (function) calling, for every face: the tools a request offers, how they reach the prompt, how the
model's text becomes :class:`ToolCall` s, and the grammar that makes a call certain.

Nothing here knows about HTTP or Gradio: functions take plain OpenAI-shaped dicts (``{"type": "function",
"function": {"name", "description", "parameters"}}``) and return dataclasses, so the OpenAI route, the
Anthropic and Responses routes and the chat UI share one implementation.

Formats (one per family; :func:`tool_format` picks it from the prompt template that will be used):

- ``hermes`` (Qwen, ChatML, Hermes): ``<tool_call>{"name": …, "arguments": {…}}</tool_call>``;
- ``llama3`` (Llama 3.1+): a bare JSON object ``{"name": …, "parameters": {…}}`` (``<|python_tag|>`` allowed);
- ``mistral``: ``[TOOL_CALLS][{"name": …, "arguments": {…}}]``;
- ``generic`` (any other template): ``{"tool_calls": [{"name": …, "arguments": {…}}]}``.

A model whose own chat template renders ``tools`` gets them that way (its template knows its training format);
every other template gets the tools, the earlier calls and their results written into plain messages in its
family's format (:func:`lower_messages`). ``tool_choice: "required"`` or a named function constrains decoding
with a GBNF grammar built from the tools' JSON Schemas (:func:`tool_grammar`), so even a tiny model answers
with a call that parses; its arguments are still validated against the schema (:func:`validate_call`).
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from backends.base import ModelInfo
from backends.gbnf import grammar_problem
from webui.templates.library import PRESETS_DIR
from webui.templates.render import TemplateError, renders_tools, select_template

HERMES, LLAMA3, MISTRAL, GENERIC = "hermes", "llama3", "mistral", "generic"
FORMATS = (HERMES, LLAMA3, MISTRAL, GENERIC)
MAX_TOOLS = 128  # as OpenAI
MAX_PARALLEL_CALLS = 8  # calls one grammar-constrained reply may hold
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")  # OpenAI's rule for function names
# library template → family (a model's own template is recognised by what it writes: _native_format)
_LIBRARY_FORMATS = {"qwen": HERMES, "chatml": HERMES, "llama-3": LLAMA3, "mistral": MISTRAL}


class ToolError(ValueError):
    """A request's tools or tool_choice that cannot be used (the client's fault: a 400)."""


class ToolCallError(ValueError):
    """A call the model wrote that does not parse or does not match its tool's schema; never passed on."""


@dataclass(frozen=True)
class Tool:
    """One function the model may call: its name, what it does, and its arguments' JSON Schema."""

    name: str
    description: str = ""
    parameters: dict = field(default_factory=lambda: {"type": "object", "properties": {}})

    def as_dict(self) -> dict:
        """OpenAI's ``{"type": "function", "function": {…}}`` shape (what chat templates expect)."""
        function = {"name": self.name, "description": self.description, "parameters": self.parameters}
        return {"type": "function", "function": function}


@dataclass(frozen=True)
class ToolCall:
    """A call the model made: ``arguments`` is a JSON string, as OpenAI sends it."""

    id: str
    name: str
    arguments: str

    def as_dict(self) -> dict:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass(frozen=True)
class ToolChoice:
    """How the model may use the tools: ``mode`` is none, auto or required; ``name`` forces one function."""

    mode: str = "auto"
    name: str | None = None
    parallel: bool = True

    @property
    def forced(self) -> bool:
        """Whether the reply must be a call (then a grammar constrains it)."""
        return self.mode == "required" or self.name is not None


@dataclass
class Parsed:
    """A reply split into its text and its calls."""

    content: str
    calls: list[ToolCall] = field(default_factory=list)


# -- the request's tools -----------------------------------------------------------------------------------


def parse_tools(raw: list | None) -> list[Tool]:
    """:class:`Tool` s from OpenAI's ``tools`` list (or the flat ``{"name", "description", "parameters" |
    "input_schema"}`` of the Responses and Anthropic APIs); a malformed tool or a schema that is not a valid JSON Schema
    raises :class:`ToolError` naming it."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    if raw is None:
        return []
    if not isinstance(raw, list) or len(raw) > MAX_TOOLS:
        raise ToolError(f"tools must be a list of at most {MAX_TOOLS} functions")
    tools: list[Tool] = []
    for i, item in enumerate(raw):
        where = f"tools[{i}]"
        if not isinstance(item, dict):
            raise ToolError(f"{where}: a tool is an object; only tools of type 'function' are supported")
        if (kind := item.get("type", "function")) not in ("function", "custom"):
            raise ToolError(f"{where}: tools of type {kind!r} are not supported; only tools of type 'function' are")
        function = item.get("function", item)  # also flat: Responses' {"name", "parameters"}, Anthropic's too
        if not isinstance(function, dict):
            raise ToolError(f"{where}.function must be an object")
        name = function.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise ToolError(f"{where}.function.name must be 1-64 letters, digits, '_', '-' or '.'")
        if any(t.name == name for t in tools):
            raise ToolError(f"{where}: two tools are named {name!r}")
        params = function.get("parameters", function.get("input_schema"))  # input_schema: Anthropic's name
        if params is None:
            params = {"type": "object", "properties": {}}
        if not isinstance(params, dict):
            raise ToolError(f"{where}.function.parameters must be a JSON Schema object")
        try:
            Draft202012Validator.check_schema(params)
        except SchemaError as exc:
            raise ToolError(f"{where}.function.parameters is not a valid JSON Schema: {exc.message}") from None
        if params.get("type", "object") != "object":
            raise ToolError(f"{where}.function.parameters must describe an object (type: object)")
        description = function.get("description") or ""
        if not isinstance(description, str):
            raise ToolError(f"{where}.function.description must be a string")
        tools.append(Tool(name, description, params))
    return tools


def parse_tool_choice(raw: object, tools: list[Tool], parallel: bool | None = None) -> ToolChoice:
    """OpenAI's ``tool_choice`` (None, "none", "auto", "required" or ``{"type": "function", "function":
    {"name"}}``) checked against ``tools``; :class:`ToolError` if it cannot be honoured."""
    parallel = True if parallel is None else bool(parallel)
    if raw is None:
        return ToolChoice("auto" if tools else "none", None, parallel)
    if isinstance(raw, str):
        if raw not in ("none", "auto", "required"):
            raise ToolError(f"tool_choice must be 'none', 'auto', 'required' or a function, not {raw!r}")
        if raw == "required" and not tools:
            raise ToolError("tool_choice 'required' needs tools")
        return ToolChoice(raw, None, parallel)
    function = raw.get("function") if isinstance(raw, dict) and raw.get("type") == "function" else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str):
        raise ToolError('tool_choice must be a string or {"type": "function", "function": {"name": …}}')
    if not any(t.name == name for t in tools):
        raise ToolError(f"tool_choice names {name!r}, which is not among the tools")
    return ToolChoice("required", name, False)


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


# -- which format ------------------------------------------------------------------------------------------


def _native_format(template: str) -> str:
    if "<tool_call>" in template:
        return HERMES
    if "[TOOL_CALLS]" in template:
        return MISTRAL
    if "<|python_tag|>" in template or "ipython" in template:
        return LLAMA3
    return GENERIC


def tool_format(info: ModelInfo, choice: str | None = None, presets: Path = PRESETS_DIR) -> tuple[str, bool]:
    """(the family format for ``info``'s replies, whether its template renders the tools itself)."""
    try:
        chosen = select_template(info, choice, presets)
    except TemplateError:
        return GENERIC, False
    if chosen.chosen_by.startswith("chat template in the model file"):
        native = renders_tools(chosen.text)
        return (_native_format(chosen.text) if native else GENERIC), native
    return _LIBRARY_FORMATS.get(chosen.name, GENERIC), False


# -- into the prompt ---------------------------------------------------------------------------------------


def _arguments_object(arguments: object) -> object:
    """A call's arguments as a value (templates and our formats write them as JSON, not as a JSON string)."""
    if isinstance(arguments, str):
        try:
            return json.loads(arguments) if arguments.strip() else {}
        except ValueError:
            return arguments
    return arguments if arguments is not None else {}


def _calls_of(message: dict) -> list[dict]:
    calls = message.get("tool_calls") or []
    return [c.get("function", c) for c in calls if isinstance(c, dict)]


def _instructions(tools: list[Tool], fmt: str, choice: ToolChoice) -> str:
    specs = "\n".join(json.dumps(t.as_dict(), ensure_ascii=False) for t in tools)
    must = ""
    if choice.name:
        must = f"\nYou must call the function {choice.name}."
    elif choice.mode == "required":
        must = "\nYou must call at least one function."
    if fmt == HERMES:
        return (
            "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with "
            f"function signatures within <tools></tools> XML tags:\n<tools>\n{specs}\n</tools>\n\nFor each function "
            "call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n"
            '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>' + must
        )
    if fmt == LLAMA3:
        return (
            "You have access to the following functions. To call a function, respond with only a JSON object in the "
            'format {"name": function name, "parameters": dictionary of argument name and its value}. Do not use '
            f"variables. Otherwise answer normally.\n\n{specs}" + must
        )
    if fmt == MISTRAL:
        return (
            f"[AVAILABLE_TOOLS]{json.dumps([t.as_dict() for t in tools], ensure_ascii=False)}[/AVAILABLE_TOOLS]\n"
            'To call functions, reply with [TOOL_CALLS] followed by a JSON list [{"name": …, "arguments": {…}}].' + must
        )
    return (
        f"You can call these functions (their arguments are JSON Schemas):\n{specs}\n\nTo call one or more of them, "
        'reply with only this JSON and nothing else: {"tool_calls": [{"name": "<function name>", "arguments": '
        "{<arguments>}}]}. Otherwise answer normally." + must
    )


def _written_calls(calls: list[dict], fmt: str) -> str:
    """Earlier calls as the model would have written them in ``fmt``."""
    items = [{"name": c.get("name", ""), "arguments": _arguments_object(c.get("arguments"))} for c in calls]
    if fmt == HERMES:
        return "\n".join(f"<tool_call>\n{json.dumps(i, ensure_ascii=False)}\n</tool_call>" for i in items)
    if fmt == LLAMA3:
        return "; ".join(json.dumps({"name": i["name"], "parameters": i["arguments"]}, ensure_ascii=False)
                         for i in items)  # fmt: skip
    if fmt == MISTRAL:
        return "[TOOL_CALLS]" + json.dumps(items, ensure_ascii=False)
    return json.dumps({"tool_calls": items}, ensure_ascii=False)


def _written_result(message: dict, names: dict[str, str], fmt: str) -> str:
    content = message.get("content") or ""
    name = message.get("name") or names.get(message.get("tool_call_id") or "", "")
    if fmt == HERMES:
        return f"<tool_response>\n{content}\n</tool_response>"
    if fmt == MISTRAL:
        return f"[TOOL_RESULTS]{json.dumps({'name': name, 'content': content}, ensure_ascii=False)}[/TOOL_RESULTS]"
    return f"Result of {name or 'the function'}: {content}"


def lower_messages(messages: list[dict], tools: list[Tool], fmt: str, choice: ToolChoice) -> list[dict]:
    """``messages`` (with ``tool`` results and assistant ``tool_calls``) as plain system/user/assistant messages
    in ``fmt``, the tools described in the system message: for templates that know nothing of tools."""
    out: list[dict] = []
    names: dict[str, str] = {}
    offered = tools if choice.mode != "none" else []
    if offered:
        text = _instructions(offered, fmt, choice)
        if messages and messages[0].get("role") == "system":
            text = f"{messages[0].get('content') or ''}\n\n{text}".lstrip()
            messages = messages[1:]
        out.append({"role": "system", "content": text})
    for m in messages:
        role = m.get("role")
        if role == "assistant" and m.get("tool_calls"):
            for call in m["tool_calls"]:
                if isinstance(call, dict):
                    names[str(call.get("id", ""))] = str(call.get("function", call).get("name", ""))
            written = _written_calls(_calls_of(m), fmt)
            content = m.get("content") or ""
            out.append({"role": "assistant", "content": f"{content}\n{written}".strip()})
        elif role == "tool":
            result = _written_result(m, names, fmt)
            if out and out[-1]["role"] == "user" and out[-1].get("tool_results"):
                out[-1]["content"] += "\n" + result  # consecutive results share one turn
            else:
                out.append({"role": "user", "content": result, "tool_results": True})
        else:
            out.append({"role": role, "content": m.get("content") or ""})
    return [{k: v for k, v in m.items() if k != "tool_results"} for m in out]


def native_messages(messages: list[dict]) -> list[dict]:
    """``messages`` for a template that renders tools itself: arguments as objects (as transformers passes them)."""
    out = []
    for m in messages:
        m = dict(m)
        if m.get("tool_calls"):
            m["tool_calls"] = [
                {**c, "function": {**c.get("function", {}), "arguments": _arguments_object(c.get("function", {})
                                                                                              .get("arguments"))}}
                for c in m["tool_calls"] if isinstance(c, dict)
            ]  # fmt: skip
        out.append(m)
    return out


def prepare(
    messages: list[dict],
    tools: list[Tool],
    choice: ToolChoice,
    info: ModelInfo,
    template: str | None = None,
    presets: Path = PRESETS_DIR,
) -> tuple[list[dict], list[dict] | None]:
    """(the messages to render, the ``tools`` a template that renders them itself gets, else None): the one
    step between a conversation with tools and :func:`webui.templates.render.build_chat_prompt`."""
    if not uses_tools(messages, tools):
        return messages, None
    fmt, native = tool_format(info, template, presets)
    if native:
        offered = [t.as_dict() for t in tools] if choice.mode != "none" else None
        return native_messages(messages), offered
    return lower_messages(messages, tools, fmt, choice), None


def uses_tools(messages: list[dict], tools: list[Tool]) -> bool:
    """Whether a request involves tools at all (offered, or calls and results in its history)."""
    return bool(tools) or any(m.get("role") == "tool" or m.get("tool_calls") for m in messages)


# -- out of the reply --------------------------------------------------------------------------------------

_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)
_BEGUN_CALL = re.compile(r'^(\{\s*"(name|tool_calls|function)"|\[\s*\{\s*"name")')
_HERMES_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


def _json_values(text: str) -> list[object]:
    """The JSON values ``text`` is made of, back to back (separated by whitespace, ``;`` or ``,``)."""
    decoder, values, at = json.JSONDecoder(), [], 0
    while True:
        while at < len(text) and text[at] in " \t\r\n;,":
            at += 1
        if at >= len(text):
            return values
        value, at = decoder.raw_decode(text, at)
        values.append(value)


def _call(item: object, keys: tuple[str, ...] = ("arguments", "parameters")) -> ToolCall:
    if isinstance(item, dict) and isinstance(item.get("function"), dict):
        item = item["function"]  # OpenAI's own {"type": "function", "function": {…}} shape
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise ToolCallError(f"a tool call must be a JSON object with a 'name', not {json.dumps(item)[:200]}")
    arguments = next((item[k] for k in keys if k in item), {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except ValueError:
            raise ToolCallError(f"the arguments of {item['name']} are not JSON: {arguments[:200]}") from None
    return ToolCall(new_call_id(), item["name"], json.dumps(arguments, ensure_ascii=False))


def _calls_from_json(text: str, wrapper: str | None) -> list[ToolCall] | None:
    """Calls in ``text`` if it is JSON of the expected shape; None if it is not JSON at all (plain content)."""
    fenced = _FENCE.match(text.strip())
    body = fenced.group(1) if fenced else text.strip()
    if not body or body[0] not in "{[":
        return None
    try:
        values = _json_values(body)
    except ValueError:
        if _BEGUN_CALL.match(body):  # a call was begun but is broken: never taken for plain text
            raise ToolCallError(f"the model's tool call is not valid JSON: {body[:200]!r}") from None
        return None
    items: list[object] = []
    wrapped = False
    for value in values:
        if wrapper and isinstance(value, dict) and isinstance(value.get(wrapper), list):
            items.extend(value[wrapper])
            wrapped = True
        elif isinstance(value, list):
            items.extend(value)
        else:
            items.append(value)
    if not items or not all(isinstance(i, dict) and ("name" in i or "function" in i) for i in items):
        if wrapped:  # {"tool_calls": [...]} is a call by its shape: a nameless one is broken, not content
            raise ToolCallError(f"a tool call has no function name: {body[:200]!r}")
        return None
    return [_call(i) for i in items]


def parse_tool_calls(text: str, fmt: str) -> Parsed:
    """Split a reply in ``fmt`` into its content and its calls.

    Text that is not a call stays content. A call that was begun but is broken (``<tool_call>`` with JSON that
    does not parse, ``[TOOL_CALLS]`` without a list) raises :class:`ToolCallError`.
    """
    if fmt == HERMES:
        found = list(_HERMES_CALL.finditer(text))
        if not found:
            return Parsed(text)
        calls = []
        for match in found:
            try:
                values = _json_values(match.group(1))
            except ValueError:
                raise ToolCallError(f"a <tool_call> is not valid JSON: {match.group(1)[:200]!r}") from None
            calls.extend(_call(v) for v in values)
        content = _HERMES_CALL.sub("", text).strip()
        return Parsed(content, calls)
    if fmt == MISTRAL:
        head, marker, rest = text.partition("[TOOL_CALLS]")
        if not marker:
            calls = _calls_from_json(text, None)
            return Parsed("", calls) if calls else Parsed(text)
        calls = _calls_from_json(rest, None)
        if not calls:
            raise ToolCallError(f"[TOOL_CALLS] is not followed by a list of calls: {rest.strip()[:200]!r}")
        return Parsed(head.strip(), calls)
    if fmt == LLAMA3:
        body = text.strip().removeprefix("<|python_tag|>")
        calls = _calls_from_json(body, None)
        return Parsed("", calls) if calls else Parsed(text)
    calls = _calls_from_json(text, "tool_calls")
    return Parsed("", calls) if calls else Parsed(text)


def validate_call(call: ToolCall, tools: list[Tool]) -> None:
    """Raise :class:`ToolCallError` unless ``call`` names one of ``tools`` and its arguments match its schema."""
    from jsonschema import Draft202012Validator

    tool = next((t for t in tools if t.name == call.name), None)
    if tool is None:
        offered = ", ".join(t.name for t in tools) or "none"
        raise ToolCallError(f"the model called {call.name!r}, which is not among the tools ({offered})")
    arguments = json.loads(call.arguments)
    errors = sorted(Draft202012Validator(tool.parameters).iter_errors(arguments), key=lambda e: list(e.path))
    if errors:
        first = errors[0]
        where = "/".join(str(p) for p in first.path) or "(the arguments)"
        raise ToolCallError(f"the model's call to {call.name} does not match its schema at {where}: {first.message}")


def finish_calls(text: str, fmt: str, tools: list[Tool], choice: ToolChoice) -> Parsed:
    """The reply's content and its validated calls; :class:`ToolCallError` when a call is broken or invalid, or
    when a call was required and none came."""
    parsed = parse_tool_calls(text, fmt) if choice.mode != "none" else Parsed(text)
    if choice.forced and not parsed.calls:
        raise ToolCallError(f"a tool call was required but the model answered: {text.strip()[:200]!r}")
    if not choice.parallel and len(parsed.calls) > 1:
        parsed.calls = parsed.calls[:1]
    for call in parsed.calls:
        validate_call(call, tools)
    if choice.name and any(c.name != choice.name for c in parsed.calls):
        raise ToolCallError(f"the model called another function than the required {choice.name}")
    return parsed


# -- streaming: what is content, what may be a call ---------------------------------------------------------

_OPENERS = {HERMES: ("<tool_call>",), MISTRAL: ("[TOOL_CALLS]", "["), LLAMA3: ("{", "<|python_tag|>", "```"),
            GENERIC: ("{", "```")}  # fmt: skip


@dataclass
class CallDelta:
    """A piece of a streamed call: its first piece has ``id`` and ``name``; ``arguments`` is the next fragment of
    its JSON arguments (the fragments of one call join to its ``ToolCall.arguments``)."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass
class _Live:
    """A call whose arguments are streaming: where they start in the text, how far they were sent and scanned."""

    id: str
    name: str
    start: int
    sent: int
    scanned: int
    depth: int = 0
    in_string: bool = False
    escaped: bool = False
    end: int | None = None  # once the arguments' JSON value is complete


# a call's name and the start of its arguments object, as the families (and the grammar) write them
_LIVE_HEAD = re.compile(r'"name"\s*:\s*"([A-Za-z0-9_.-]{1,64})"\s*,\s*"(?:arguments|parameters)"\s*:\s*(?=\{)')


class CallFilter:
    """Decides, as a reply streams in, which text is plain content (released at once) and which may be a call
    (held, and parsed by :func:`finish_calls` when the reply ends).

    With a forced choice everything is held. Otherwise text is held while it could still be the start of a
    call in ``fmt``; Hermes replies may write text before their ``<tool_call>``, so only from the tag on is held.
    Calls in the held text stream as they are written (:meth:`progress`): a call's name once its arguments
    begin, then its arguments as they grow; they are validated when the reply ends.
    """

    def __init__(self, fmt: str, tools: list[Tool], choice: ToolChoice) -> None:
        self.fmt, self.tools, self.choice = fmt, tools, choice
        self.text = ""
        self.released = 0  # characters of ``text`` given out as content
        self.content_only = choice.mode == "none"
        self.live: list[_Live] = []

    def feed(self, delta: str) -> str:
        """Add ``delta``; return the content that can be shown now."""
        self.text += delta
        if self.content_only:
            return self._release(len(self.text))
        if self.choice.forced:
            return ""
        if self.fmt == HERMES:  # whitespace is held too: before a call it is not content
            end = _safe_end(self.text, "<tool_call>", self.released)
            while end > self.released and self.text[end - 1].isspace():
                end -= 1
            return self._release(end)
        stripped = self.text[self.released :].lstrip()
        if not stripped:
            return ""
        if any(stripped.startswith(o) or o.startswith(stripped) for o in _OPENERS[self.fmt]):
            return ""  # could be a call: hold it to the end
        self.content_only = True
        return self._release(len(self.text))

    def _release(self, end: int) -> str:
        out = self.text[self.released : end]
        self.released = max(self.released, end)
        return out

    def progress(self) -> list[CallDelta]:
        """The pieces of calls written since the last call: new calls (id, name) and argument fragments."""
        if self.content_only:
            return []
        out: list[CallDelta] = []
        while True:
            if self.live and self.live[-1].end is None:
                self._scan(self.live[-1])
            current = self.live[-1] if self.live else None
            if current is not None:
                upto = current.end if current.end is not None else len(self.text)
                if upto > current.sent:
                    out.append(CallDelta(len(self.live) - 1, arguments=self.text[current.sent : upto]))
                    current.sent = upto
                if current.end is None:
                    return out
            if len(self.live) >= (MAX_PARALLEL_CALLS if self.choice.parallel else 1):
                return out
            head = _LIVE_HEAD.search(self.text, max(self.released, current.end if current else 0))
            if head is None:
                return out
            at = head.end()
            self.live.append(_Live(new_call_id(), head.group(1), at, at, at))
            out.append(CallDelta(len(self.live) - 1, self.live[-1].id, head.group(1)))

    def _scan(self, live: _Live) -> None:
        """Follow the arguments' JSON value (strings, escapes, nesting) to its end, as far as the text goes."""
        text, i = self.text, live.scanned
        while i < len(text):
            c = text[i]
            i += 1
            if live.in_string:
                if live.escaped:
                    live.escaped = False
                elif c == "\\":
                    live.escaped = True
                elif c == '"':
                    live.in_string = False
            elif c == '"':
                live.in_string = True
            elif c in "{[":
                live.depth += 1
            elif c in "}]":
                live.depth -= 1
                if live.depth == 0:
                    live.end = i
                    break
        live.scanned = i

    def finish(self, finish_reason: str | None = None) -> Parsed:
        """The held text parsed: the rest of the content, and the calls (validated; those that streamed keep
        their ids and their arguments as sent). ``finish_reason`` ``length`` turns a broken call into the
        reason: the reply was cut off in the middle of it."""
        held = self.text[self.released :]
        if self.content_only and self.fmt != HERMES:
            return Parsed(held)
        try:
            parsed = finish_calls(held, self.fmt, self.tools, self.choice)
        except ToolCallError as exc:
            if finish_reason != "length":
                raise
            raise ToolCallError(
                f"the reply reached max_tokens in the middle of a tool call; raise max_tokens (or set "
                f"parallel_tool_calls false when a small model repeats its call) ({exc})"
            ) from None
        for i, live in enumerate(self.live):
            sent = self.text[live.start : live.sent]
            call = parsed.calls[i] if i < len(parsed.calls) else None
            if call is None or call.name != live.name or live.end is None or not _same_json(sent, call.arguments):
                raise ToolCallError(f"the streamed call to {live.name} does not match the reply's calls when parsed")
            parsed.calls[i] = ToolCall(live.id, live.name, sent)
        return parsed

    def rest(self, parsed: Parsed) -> list[CallDelta]:
        """What of ``parsed`` (from :meth:`finish`) has not streamed yet: the calls that did not stream live,
        each as a first piece (id, name) and its arguments in fragments."""
        out: list[CallDelta] = []
        for index, call in enumerate(parsed.calls[len(self.live) :], start=len(self.live)):
            out.append(CallDelta(index, call.id, call.name))
            out.extend(CallDelta(index, arguments=piece) for piece in argument_fragments(call.arguments))
        return out


def _same_json(a: str, b: str) -> bool:
    try:
        return json.loads(a) == json.loads(b)
    except ValueError:
        return False


def _safe_end(text: str, marker: str, start: int) -> int:
    """How much of ``text`` cannot be part of ``marker`` or what follows it: up to the marker, or up to a tail
    that could be the marker's beginning."""
    at = text.find(marker, start)
    if at >= 0:
        return at
    for keep in range(min(len(marker) - 1, len(text) - start), 0, -1):
        if marker.startswith(text[len(text) - keep :]):
            return len(text) - keep
    return len(text)


@dataclass(frozen=True)
class ToolUse:
    """What a face needs to turn one reply's text into calls: the tools, the choice, and the reply's format."""

    tools: tuple[Tool, ...]
    choice: ToolChoice
    fmt: str

    def filter(self) -> CallFilter:
        return CallFilter(self.fmt, list(self.tools), self.choice)


def argument_fragments(arguments: str, size: int = 16) -> list[str]:
    """A call's arguments cut into the pieces a stream sends (OpenAI streams them in fragments)."""
    return [arguments[i : i + size] for i in range(0, len(arguments), size)] or [""]


# -- the grammar for a forced call -------------------------------------------------------------------------


def _call_schema(tool: Tool, arguments_key: str) -> dict:
    return {
        "type": "object",
        "properties": {"name": {"const": tool.name}, arguments_key: tool.parameters},
        "required": ["name", arguments_key],
    }


def tool_grammar(tools: list[Tool], fmt: str, choice: ToolChoice) -> str:
    """GBNF that only lets the model write a call (or, with ``parallel``, up to :data:`MAX_PARALLEL_CALLS`) in
    ``fmt`` to one of ``tools`` (``choice.name``'s only) whose arguments follow its schema. :class:`ToolError`
    if a schema cannot be expressed as a grammar or the grammar is over the bounds of ``backends/gbnf.py``."""
    try:
        from llama_cpp import llama_grammar
    except ImportError as exc:
        raise ToolError(f"tool_choice 'required' needs llama-cpp-python's grammar support ({exc})") from None
    chosen = [t for t in tools if choice.name in (None, t.name)]
    key = "parameters" if fmt == LLAMA3 else "arguments"
    one = {"anyOf": [_call_schema(t, key) for t in chosen]} if len(chosen) > 1 else _call_schema(chosen[0], key)
    most = MAX_PARALLEL_CALLS if choice.parallel else 1
    if fmt in (GENERIC, MISTRAL):
        calls = {"type": "array", "items": one, "minItems": 1, "maxItems": most}
        schema = {"type": "object", "properties": {"tool_calls": calls}, "required": ["tool_calls"]}
        schema = calls if fmt == MISTRAL else schema
    else:
        schema = one
    try:
        body = llama_grammar.json_schema_to_gbnf(json.dumps(schema))
    except Exception as exc:  # the converter raises assorted errors on schemas it cannot express
        raise ToolError(f"cannot turn the tools' schemas into a grammar: {type(exc).__name__}: {exc}") from None
    if fmt == HERMES:
        body = re.sub(r"(?m)^root ::=", "inglenook-call ::=", body)
        call = '"<tool_call>\\n" inglenook-call "\\n</tool_call>"'
        body = f'root ::= {call} ( "\\n" {call} ){{0,{most - 1}}}\n{body}'
    elif fmt == MISTRAL:
        body = re.sub(r"(?m)^root ::=", "inglenook-calls ::=", body)
        body = f'root ::= "[TOOL_CALLS]" inglenook-calls\n{body}'
    elif fmt == LLAMA3 and most > 1:
        body = re.sub(r"(?m)^root ::=", "inglenook-call ::=", body)
        body = f'root ::= inglenook-call ( "; " inglenook-call ){{0,{most - 1}}}\n{body}'
    problem = grammar_problem(body)
    if problem:
        raise ToolError(f"the tools' schemas make too large a grammar: {problem}")
    return body
