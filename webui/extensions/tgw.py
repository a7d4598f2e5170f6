"""Run a text-generation-webui ``script.py`` extension on Inglenook's hooks.

TGW extensions are modules with a ``params`` dict and optional functions. Each function that has a
counterpart becomes a hook; ``params`` entries with simple values become settings (saved values are
written back into ``params``, which is where TGW code reads them). TGW's ``state`` dict is built from
our SamplingParams (the field names are the same) and TGW's ``history`` from our messages
(``internal``/``visible`` pairs). Older TGW functions take fewer arguments; they get as many as they accept.
"""

from __future__ import annotations

import inspect
from dataclasses import asdict, fields
from types import ModuleType, SimpleNamespace
from typing import TYPE_CHECKING, Any

from backends.base import SamplingParams
from webui.hookspecs import SETTING_TYPES, Context, Setting, hookimpl

if TYPE_CHECKING:
    from webui.extensions.host import Extension

SAMPLING_FIELDS = frozenset(f.name for f in fields(SamplingParams))

RESERVED_PARAMS = ("display_name", "is_tab")


def adapt(module: ModuleType, ext: Extension) -> SimpleNamespace:
    """A pluggy plugin calling ``module``'s TGW functions; fills ``ext``'s settings, CSS and JS."""
    params = getattr(module, "params", None)
    params = params if isinstance(params, dict) else {}
    ext.setting_specs = [
        Setting(key, value, label=key)
        for key, value in params.items()
        if key not in RESERVED_PARAMS and isinstance(value, SETTING_TYPES)
    ]
    ext.on_settings = params.update
    ext.css = _text_of(module, "custom_css")
    ext.js = _text_of(module, "custom_js")
    plugin = SimpleNamespace()
    fn = {name: getattr(module, name) for name in dir(module) if callable(getattr(module, name, None))}

    if "input_modifier" in fn:

        @hookimpl
        def input_modifier(text: str, context: Context) -> Any:
            return _call(fn["input_modifier"], text, _state(context), is_chat=context.mode == "chat")

        plugin.input_modifier = input_modifier

    if "output_modifier" in fn:

        @hookimpl
        def output_modifier(text: str, context: Context) -> Any:
            return _call(fn["output_modifier"], text, _state(context), is_chat=context.mode == "chat")

        plugin.output_modifier = output_modifier

    if "chat_input_modifier" in fn:

        @hookimpl
        def chat_input_modifier(text: str, visible_text: str, context: Context) -> Any:
            return _call(fn["chat_input_modifier"], text, visible_text, _state(context))

        plugin.chat_input_modifier = chat_input_modifier

    if "bot_prefix_modifier" in fn:

        @hookimpl
        def bot_prefix_modifier(prefix: str, context: Context) -> Any:
            return _call(fn["bot_prefix_modifier"], prefix, _state(context))

        plugin.bot_prefix_modifier = bot_prefix_modifier

    if "history_modifier" in fn:

        @hookimpl
        def history_modifier(messages: list[dict], context: Context) -> Any:
            system, history = to_tgw_history(messages)
            changed = _call(fn["history_modifier"], history, _state(context))
            return None if changed is None else system + from_tgw_history(changed)

        plugin.history_modifier = history_modifier

    if "state_modifier" in fn:

        @hookimpl
        def state_modifier(params: SamplingParams, context: Context) -> Any:
            state = _state(context, params)
            changed = _call(fn["state_modifier"], state)
            return None if changed is None else params_from_state(changed, params)

        plugin.state_modifier = state_modifier

    if "ui" in fn:
        place = "tab" if params.get("is_tab") else "chat"

        @hookimpl
        def ui(where: str) -> None:
            if where == place:
                fn["ui"]()

        plugin.ui = ui

    if "setup" in fn:

        @hookimpl
        def startup() -> None:
            fn["setup"]()

        plugin.startup = startup

    return plugin


def _text_of(module: ModuleType, name: str) -> str:
    func = getattr(module, name, None)
    return str(func() or "") if callable(func) else ""


def _call(func: Any, *args: Any, **kwargs: Any) -> Any:
    """Call a TGW function with as many positional arguments as it takes, and the keywords it knows."""
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):
        return func(*args, **kwargs)
    parameters = list(signature.parameters.values())
    if any(p.kind is p.VAR_POSITIONAL for p in parameters):
        count = len(args)
    else:
        count = sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name not in kwargs for p in parameters)
    known = {p.name for p in parameters}
    takes_any = any(p.kind is p.VAR_KEYWORD for p in parameters)
    return func(*args[:count], **{k: v for k, v in kwargs.items() if takes_any or k in known})


def _state(context: Context, params: SamplingParams | None = None) -> dict[str, Any]:
    """TGW's ``state`` dict: the sampling parameters plus a few chat facts."""
    state = asdict(params or SamplingParams())
    state.update(mode="chat" if context.mode == "chat" else "notebook", name1="You", name2="Assistant")
    if context.model:
        state["model_name"] = context.model
    return state


def params_from_state(state: Any, params: SamplingParams) -> SamplingParams:
    """SamplingParams with the fields a TGW ``state_modifier`` changed (same names, same types), through the one
    coercer (:meth:`SamplingParams.from_dict`); the state's other keys (mode, name1, …) are not parameters."""
    if not isinstance(state, dict):
        raise TypeError(f"state_modifier returned {type(state).__name__}, expected the state dict")
    changed = {k: v for k, v in state.items() if k in SAMPLING_FIELDS and v != getattr(params, k)}
    return SamplingParams.from_dict(changed, params)[0]


def to_tgw_history(messages: list[dict]) -> tuple[list[dict], dict[str, list[list[str]]]]:
    """(system messages, TGW history with ``internal`` and ``visible`` [user, assistant] pairs)."""
    system = [dict(m) for m in messages if m.get("role") == "system"]
    pairs: list[list[str]] = []
    for m in messages:
        if m.get("role") == "user":
            pairs.append([m.get("content", ""), ""])
        elif m.get("role") == "assistant":
            if pairs and not pairs[-1][1]:
                pairs[-1][1] = m.get("content", "")
            else:
                pairs.append(["", m.get("content", "")])
    return system, {"internal": [list(p) for p in pairs], "visible": [list(p) for p in pairs]}


def from_tgw_history(history: Any) -> list[dict]:
    """Our messages back from a TGW history's ``internal`` pairs (empty sides are skipped)."""
    rows = history.get("internal") if isinstance(history, dict) else None
    if not isinstance(rows, list):
        raise TypeError("history_modifier must return a history dict with an 'internal' list")
    messages = []
    for row in rows:
        user, assistant = (list(row) + ["", ""])[:2]
        if user:
            messages.append({"role": "user", "content": str(user)})
        if assistant:
            messages.append({"role": "assistant", "content": str(assistant)})
    return messages
