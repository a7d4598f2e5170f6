"""Turning a conversation into the prompt text a model expects.

This is the single entry point (:func:`build_chat_prompt`) that the chat layer
calls. For now it knows Gemma's turn format (for ``gemma*`` architectures,
whose GGUF files may carry no chat template) and a plain fallback; the
template library and per-model selection replace the body, not the callers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from backends.base import ModelInfo


@dataclass
class Prompt:
    text: str
    stop: list[str] = field(default_factory=list)
    template: str = ""  # which format produced it, shown to the user


def _gemma(messages: list[dict], add_generation_prompt: bool) -> Prompt:
    # Gemma has no system role: the system text is folded into the first user turn.
    parts: list[str] = []
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    first_user = True
    for m in messages:
        if m["role"] == "system":
            continue
        role = "model" if m["role"] == "assistant" else "user"
        content = m["content"]
        if role == "user" and first_user and system:
            content = f"{system}\n\n{content}"
        first_user = first_user and role != "user"
        parts.append(f"<start_of_turn>{role}\n{content.strip()}<end_of_turn>\n")
    if add_generation_prompt:
        parts.append("<start_of_turn>model\n")
    return Prompt("".join(parts), ["<end_of_turn>", "<start_of_turn>"], "gemma")


def _plain(messages: list[dict], add_generation_prompt: bool) -> Prompt:
    names = {"user": "User", "assistant": "Assistant"}
    parts = []
    for m in messages:
        if m["role"] == "system":
            parts.append(f"{m['content'].strip()}\n\n")
        else:
            parts.append(f"{names[m['role']]}: {m['content'].strip()}\n")
    if add_generation_prompt:
        parts.append("Assistant:")
    return Prompt("".join(parts), ["\nUser:"], "plain")


def build_chat_prompt(messages: list[dict], info: ModelInfo, add_generation_prompt: bool = True) -> Prompt:
    """The prompt for ``messages`` (``{"role", "content"}`` dicts) on the model described by ``info``."""
    for m in messages:
        if m.get("role") not in ("system", "user", "assistant"):
            raise ValueError(f"unknown message role {m.get('role')!r}")
    if info.architecture.startswith("gemma"):
        return _gemma(messages, add_generation_prompt)
    return _plain(messages, add_generation_prompt)
