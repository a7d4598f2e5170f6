"""Chat modes: who speaks and how the conversation becomes a prompt.

- **instruct**: the model's instruction format over the conversation, no character.
- **chat**: a character speaks. Its persona (context, description, personality, scenario, example dialogue,
  placeholders filled) is the system message, its greeting the first message (a card's alternate greetings
  are further versions of it); the user has a name. A card's post-history instructions follow the newest
  user message in the prompt (never in the saved chat).
- **chat-instruct**: the chat written out as a transcript inside one instruction to write the character's next
  reply (text-generation-webui's chat-instruct command), the reply opened with ``Name:``.

Every mode renders through :func:`webui.templates.render.build_chat_prompt`, so the template's stop strings still
apply; the character modes also stop where the model starts writing the user's line (``\\nYou:``).

Conversations are stored per character: the owner folder of a character is ``character-KEY``, which can
never equal the instruct owner (``instruct``), whatever the character is called.
"""

from __future__ import annotations

from pathlib import Path

from backends.base import ModelInfo
from webui.characters.store import Character, CharacterStore, valid_name
from webui.chat.conversation import INSTRUCT_OWNER, MODES, Conversation, Version
from webui.chat.history import HistoryStore
from webui.templates.library import PRESETS_DIR
from webui.templates.render import Prompt, TemplateError, build_chat_prompt

CHAT, CHAT_INSTRUCT, INSTRUCT = "chat", "chat-instruct", "instruct"
CHARACTER_PREFIX = "character-"
_PROBE_SYSTEM, _PROBE_USER = "InglenookSystemProbe7f3", "InglenookUserProbe7f3"
CHAT_INSTRUCT_COMMAND = (
    'Continue the chat dialogue below. Write a single reply for the character "<|character|>".\n\n<|prompt|>'
)
assert not INSTRUCT_OWNER.startswith(CHARACTER_PREFIX)  # the two kinds of owner folder cannot meet


def owner_for(mode: str, character_key: str | None) -> str:
    """The history owner folder for a mode and character: ``instruct`` or ``character-KEY``."""
    check_mode(mode)
    if mode == INSTRUCT or not character_key:
        return INSTRUCT_OWNER
    return CHARACTER_PREFIX + valid_name(character_key)


def character_of(owner: str) -> str | None:
    """The character key of a history owner folder, or None for the instruct one."""
    return owner[len(CHARACTER_PREFIX) :] if owner.startswith(CHARACTER_PREFIX) else None


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"unknown chat mode {mode!r}; expected one of {', '.join(MODES)}")
    return mode


def start_conversation(
    history: HistoryStore, characters: CharacterStore, mode: str, character_key: str | None
) -> Conversation:
    """A new conversation for the mode and character; in a character mode it opens with the greeting.

    Not saved: it reaches the disk with the user's first message (or a change to it), so merely picking a
    character leaves no file holding only its greeting.
    """
    owner = owner_for(mode, character_key)
    conversation = history.new(owner, mode=mode)
    if owner != INSTRUCT_OWNER:
        greetings = characters.load(character_key).greetings()
        if greetings:
            message = conversation.append("assistant", greetings[0])
            message.versions += [Version(text) for text in greetings[1:]]  # alternate greetings: page with ◀ ▶
    return conversation


def has_system_role(info: ModelInfo, choice: str | None = None, presets: Path = PRESETS_DIR) -> bool:
    """Whether the template gives a system message its own place (False: it folds the system text into the
    first user turn, as Gemma's does, or refuses a system message)."""
    probe = [{"role": "system", "content": _PROBE_SYSTEM}, {"role": "user", "content": _PROBE_USER}]
    try:
        text = build_chat_prompt(probe, info, False, choice, presets).text
    except (TemplateError, ValueError):
        return False
    start, end = text.find(_PROBE_SYSTEM), text.find(_PROBE_USER)
    if start < 0 or end < 0:
        return False
    return bool(text[start + len(_PROBE_SYSTEM) : end].strip())  # a turn boundary between them


def chat_messages(messages: list[dict], character: Character, system_role: bool = True) -> list[dict]:
    """Chat mode's messages: the user's system text then the character's persona as one system message,
    then the dialogue as it is (greeting first).

    ``system_role`` False (a template without a system role): the persona becomes the first user turn when
    the dialogue opens with the character's greeting, as text-generation-webui does, so the persona still
    comes before the greeting instead of inside the user's first message after it.
    """
    system = user_system(messages)
    dialogue = [m for m in messages if m.get("role") != "system"]
    context = "\n\n".join(part for part in (system, character.persona()) if part)
    after = character.after_history()
    if after and dialogue and dialogue[-1].get("role") == "user":  # in the prompt only, after the newest message
        dialogue[-1] = {**dialogue[-1], "content": f"{dialogue[-1]['content']}\n\n{after}"}
    if not context:
        return dialogue
    if not system_role and dialogue and dialogue[0].get("role") == "assistant":
        return [{"role": "user", "content": context}, *dialogue]
    return [{"role": "system", "content": context}, *dialogue]


def chat_instruct_messages(messages: list[dict], character: Character) -> list[dict]:
    """Chat-instruct's messages: the user's system text, then one user turn holding the command with the
    transcript. The reply is opened with ``Name:`` after rendering."""
    system = user_system(messages)
    dialogue = [m for m in messages if m.get("role") != "system"]
    command = CHAT_INSTRUCT_COMMAND.replace("<|character|>", character.name)
    command = command.replace("<|prompt|>", transcript(character, dialogue))
    if after := character.after_history():
        command += f"\n\n{after}"
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": command}]


def user_system(messages: list[dict]) -> str:
    """The user's system prompt: the system messages' text, joined."""
    return "\n\n".join(m["content"].strip() for m in messages if m.get("role") == "system" and m["content"].strip())


def open_line(prompt: Prompt, name: str) -> Prompt:
    """``prompt`` opened with the character's ``Name:``, apart from a turn label that ends without a space or
    newline (the plain template's ``Assistant:``), so the model reads ``Assistant: Wren:``, not ``Assistant:Wren:``."""
    if prompt.text and not prompt.text[-1].isspace():
        prompt.text += " "
    prompt.text += f"{name}:"
    return prompt


def add_stop(prompt: Prompt, stop: str) -> Prompt:
    """``prompt`` with ``stop`` among its stop strings (once)."""
    if stop not in prompt.stop:
        prompt.stop.append(stop)
    return prompt


def transcript(character: Character, dialogue: list[dict]) -> str:
    """The chat written out for chat-instruct: the persona, then one ``Name: text`` line per message."""
    names = {"user": character.user, "assistant": character.name}
    lines = [f"{names.get(m['role'], m['role'])}: {m['content'].strip()}" for m in dialogue]
    return "\n\n".join(part for part in (character.persona(), "\n".join(lines)) if part)


def move_conversations(history: HistoryStore, old_key: str, new_key: str) -> None:
    """A renamed character keeps its conversations: its owner folder moves with it (never over another)."""
    source, target = history.folder(owner_for(CHAT, old_key)), history.folder(owner_for(CHAT, new_key))
    if source.is_dir() and not target.exists():
        source.rename(target)
