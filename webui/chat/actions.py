"""Chat actions that generate nothing: remove last, edit, page versions, export and import, plus what the chat
tab shows about the next prompt (its template, its exact text, its token count). The ones that generate
(send, regenerate, continue, impersonate) are :class:`webui.chat.service.Chat`'s.

Each action that changes a conversation saves it atomically as soon as the change is made. The UI, and any
other front end, only calls these.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from backends.base import ModelInfo, SamplingParams
from webui.chat.conversation import Conversation, HistoryError, Message
from webui.chat.history import HistoryStore
from webui.chat.options import PLAIN, TurnOptions
from webui.chat.prompting import PromptPlan
from webui.chat.sampling import default_params, known_settings, unknown_settings
from webui.chat.service import Chat
from webui.chat.toolbox import set_tool_settings
from webui.paths import UnsafeName
from webui.templates.library import PRESETS_DIR
from webui.templates.render import TemplateError, select_template


def set_tools(store: HistoryStore, conversation: Conversation, enabled: bool, approve_all: bool) -> None:
    """Turn tools (the enabled extensions' functions) and auto-approval of their calls on or off for
    ``conversation``, and save it: the choice stays with the conversation."""
    set_tool_settings(conversation, bool(enabled), bool(approve_all))
    store.save(conversation)


def remove_last(store: HistoryStore, conversation: Conversation) -> list[Message]:
    """Remove the last exchange (the last reply and the message it answered) and save."""
    removed = conversation.remove_last()
    store.save(conversation)
    return removed


def edit_message(store: HistoryStore, conversation: Conversation, index: int, text: str) -> Message:
    """Change message ``index`` and drop what followed it, then save. An edited user message is now the last
    one: :func:`regenerate` answers it. An edited reply becomes a new version of that reply."""
    message = conversation.edit(index, text)
    store.save(conversation)
    return message


def page_version(store: HistoryStore, conversation: Conversation, step: int, index: int = -1) -> Message:
    """Show the previous (``step=-1``) or next (``+1``) version of a message (default: the last) and save."""
    if not conversation.messages:
        raise HistoryError("the conversation is empty")
    message = conversation.page_version(index, step)
    store.save(conversation)
    return message


def version_label(conversation: Conversation, index: int = -1) -> str:
    """``"2/3"`` when message ``index`` has several versions (the one shown / how many), else ``""``."""
    if not conversation.messages:
        return ""
    message = conversation.messages[index]
    return f"{message.shown + 1}/{len(message.versions)}" if len(message.versions) > 1 else ""


# --------------------------------------------------------------------------- what the tab shows


@dataclass
class TemplateStatus:
    """The template the loaded model gets, why, and the sampling defaults its models.yaml rule brings."""

    name: str
    chosen_by: str
    defaults: SamplingParams
    note: str = ""
    settings: dict = field(default_factory=dict)  # the rule's own sampling settings (the ones it changes)

    def describe(self) -> str:
        line = f"Prompt template **{self.name}** (chosen by: {self.chosen_by})"
        return f"{line}. {self.note}" if self.note else line


def template_status(info: ModelInfo | None, choice: str | None = None, presets: Path = PRESETS_DIR) -> TemplateStatus:
    """Which template ``info``'s model gets with ``choice`` (None: automatic), and the defaults to start from."""
    if info is None:
        return TemplateStatus("none", "no model is loaded", default_params())
    try:
        selection = select_template(info, choice, presets)
    except TemplateError as exc:
        return TemplateStatus("?", "error", default_params(), f"⚠️ {exc}")
    note = ""
    if selection.settings:
        shown = ", ".join(f"{k}={v}" for k, v in selection.settings.items())
        note = f"Its rule's default settings apply: {shown}."
        unknown = unknown_settings(selection.settings)
        if unknown:
            note += f" ⚠️ Not sampling settings, ignored: {', '.join(unknown)}."
    own = known_settings(selection.settings)
    return TemplateStatus(selection.name, selection.chosen_by, default_params(own), note, own)


def preview_prompt(
    chat: Chat,
    conversation: Conversation,
    options: TurnOptions = PLAIN,
    draft: str = "",
    *,
    max_new_tokens: int = 0,
) -> PromptPlan | None:
    """The exact prompt the next send would generate from (with ``draft`` as the user's message, if any), asked
    for with ``options`` (system prompt, template, start reply with, character) in the conversation's mode,
    with what extensions add (:meth:`Chat.preview`, the path a send takes).

    None when there is nothing to send yet. Raises ValueError when it cannot be built (the same error the
    send would show).
    """
    return chat.preview(conversation, options, draft, max_new_tokens=max_new_tokens)


def prompt_summary(chat: Chat, conversation: Conversation, options: TurnOptions = PLAIN, draft: str = "", **kw) -> str:
    """The token-count line for the chat tab, or the reason there is none."""
    info = chat.engine.info
    if info is None:
        return ""
    try:
        plan = preview_prompt(chat, conversation, options, draft, **kw)
    except ValueError as exc:
        return f"⚠️ {exc}"
    if plan is None:
        return f"prompt 0 / {info.context_length:,} tokens"
    return plan.summary()


# --------------------------------------------------------------------------- conversations as files


def export_conversation(store: HistoryStore, owner: str, conversation_id: str, folder: Path) -> Path:
    """Write the conversation's JSON into ``folder`` (for a download) and return the file."""
    path = folder / f"{store.path(owner, conversation_id).stem}.json"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(store.export(owner, conversation_id), encoding="utf-8")
    return path


def import_conversation(store: HistoryStore, owner: str, upload: Path) -> Conversation:
    """Import an uploaded file (our export or a text-generation-webui history). Raises HistoryError saying
    what is wrong with it; nothing is written then."""
    try:
        data = Path(upload).read_bytes()
    except OSError as exc:
        raise HistoryError(f"cannot read the uploaded file: {exc}") from None
    try:
        return store.import_text(data, owner)
    except UnsafeName as exc:
        raise HistoryError(str(exc)) from None
