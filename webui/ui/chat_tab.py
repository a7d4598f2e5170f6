"""The Chat tab: widgets wired to :mod:`webui.chat.session` (the replies in flight, as named updates),
:class:`webui.chat.service.Chat` and :mod:`webui.chat.actions`. No logic a test would want lives here."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import gradio as gr

from webui.app import App
from webui.characters.store import Character, CharacterError
from webui.chat.actions import (
    edit_message,
    export_conversation,
    import_conversation,
    page_version,
    preview_prompt,
    prompt_summary,
    remove_last,
    set_tools,
    template_status,
    version_label,
)
from webui.chat.conversation import INSTRUCT_OWNER, MODES, Conversation, HistoryError
from webui.chat.history import is_new_id
from webui.chat.live import LIVE_MARK, LiveSplit
from webui.chat.modes import INSTRUCT, character_of, owner_for, start_conversation
from webui.chat.service import TurnOptions
from webui.chat.session import PRESET, ChatSessions, ChatUpdate, asked_sampling, display_messages, without_stats
from webui.chat.toolbox import auto_approve, call_text, tools_enabled
from webui.paths import UnsafeName
from webui.presets import PresetStore
from webui.templates.library import template_names
from webui.templates.prefs import AUTO, TemplatePrefs
from webui.ui.arena_panel import ArenaWiring, build_arena_panel

# (Send, Stop, Regenerate, Continue) while a reply streams and while idle: only what can act is enabled
BUSY = (gr.update(interactive=False), gr.update(interactive=True), gr.update(interactive=False),
        gr.update(interactive=False))  # fmt: skip
IDLE = (gr.update(interactive=True), gr.update(interactive=False), gr.update(interactive=True),
        gr.update(interactive=True))  # fmt: skip
SKIP_BUTTONS = (gr.skip(),) * len(BUSY)


OWNER = INSTRUCT_OWNER  # conversations without a character
UNDO_SECONDS = 10.0  # how long "Undo" stays after a conversation is deleted
# the trigger mode of every handler of the conversation id's .change: each runs for each change, none is
# deferred (a deferred one re-sends the event to all of them when it ends, and they can defer each other)
FOLLOWS_ID = "multiple"
LIVE = "live_channel"  # rides with the sampling values by name: "live" when the page reads the reply from the channel

# Draws each reply's stats line (the message's metadata.log, see webui.chat.session.display_messages) under
# its bubble, outside the message text, so Copy and Edit give the text alone. Runs in the page on every change
# of the chatbot; an observer draws again when Gradio re-renders a bubble.
STATS_JS = """(value) => {
    window.__inglenookStats = (value || []).filter(m => m.role === 'assistant')
        .map(m => (m.metadata && m.metadata.log) || '');
    const draw = () => {
        const stats = window.__inglenookStats || [];
        document.querySelectorAll('#chatbot [data-testid="bot"]').forEach((bot, i) => {
            let line = bot.querySelector(':scope > .inglenook-stats');
            const text = stats[i] || '';
            if (!text) { if (line) line.remove(); return; }
            if (!line) {
                line = document.createElement('div');
                line.className = 'inglenook-stats';
                bot.appendChild(line);
            }
            if (line.textContent !== text) line.textContent = text;
        });
        const live = document.querySelector('#chatbot .inglenook-live');
        if (live && !window.__inglenookLive) live.remove();  // the chatbot shows the whole reply now
    };
    const root = document.querySelector('#chatbot');
    if (root && !root.__inglenookObserved) {
        root.__inglenookObserved = true;
        new MutationObserver(draw).observe(root, {subtree: true, childList: true});
    }
    requestAnimationFrame(draw);
    if (!window.__inglenookKeys) { window.__inglenookKeys = true; (KEYS_INSTALL)(); }
}"""

# The chat's keys, in the capture phase so Gradio's own Enter (send) does not also fire: Enter sends (Gradio),
# Shift+Enter a new line, Escape stops, Ctrl+Enter regenerates, Alt+Enter continues, and ↑ in an empty box
# opens the last message of the user's for editing. Buttons that are disabled (a reply streams) do nothing.
KEYS_JS = """() => {
    const click = (id) => {
        const button = document.getElementById(id);
        if (button && !button.disabled) button.click();
    };
    const editLast = () => {
        const users = document.querySelectorAll('#chatbot .message-row.user-row');
        const row = users[users.length - 1];
        if (!row) return false;
        const rows = [...document.querySelectorAll('#chatbot .message-row')];
        const next = rows[rows.indexOf(row) + 1];
        const edit = [...document.querySelectorAll('#chatbot button[aria-label="Edit"]')].find(b =>
            (row.compareDocumentPosition(b) & Node.DOCUMENT_POSITION_FOLLOWING) &&
            (!next || (b.compareDocumentPosition(next) & Node.DOCUMENT_POSITION_FOLLOWING)));
        if (edit) edit.click();
        return !!edit;
    };
    document.addEventListener('keydown', (e) => {
        const box = e.target && e.target.closest && e.target.closest('#chat-input');
        if (e.key === 'Escape' && document.getElementById('stop') && !document.getElementById('stop').disabled) {
            e.preventDefault();
            click('stop');
            return;
        }
        if (!box) return;
        if (e.key === 'Enter' && (e.ctrlKey || e.metaKey || e.altKey) && !e.shiftKey) {
            e.preventDefault();
            e.stopImmediatePropagation();
            click(e.altKey ? 'continue' : 'regenerate');
        } else if (e.key === 'ArrowUp' && e.target.value === '' && editLast()) {
            e.preventDefault();
        }
    }, true);
}"""
CHAT_JS = STATS_JS.replace("KEYS_INSTALL", KEYS_JS)  # what the page runs on every change of the chatbot

# The growing reply, from the live carrier (the reply's text so far; "" once the chatbot holds it whole, see
# webui.chat.live): shown as plain text in the last bubble, in place of the chatbot's own content, by appending
# what is new, so an update costs the page one text append instead of a re-rendered chat. The bubble may not
# be drawn yet when the first text comes (the chat with it arrived in the same breath): it is tried again.
LIVE_JS = """(text) => {
    text = text || '';
    const channel = window.__inglenookChannel || (window.__inglenookChannel = {source: null, text: ''});
    if (!document.getElementById('inglenook-live-style')) {
        const style = document.createElement('style');
        style.id = 'inglenook-live-style';
        style.textContent = '#chatbot [data-testid="bot"]:has(> .inglenook-live) > .message-content'
            + ' { display: none; } #chatbot .inglenook-live { white-space: pre-wrap; overflow-wrap: anywhere; }';
        document.head.appendChild(style);
    }
    const show = (tries) => {
        const want = window.__inglenookLive;
        const root = document.querySelector('#chatbot');
        let live = root && root.querySelector('.inglenook-live');
        if (!want) { if (live) live.remove(); return; }
        const turns = root ? root.querySelectorAll('[data-testid="bot"], [data-testid="user"]') : [];
        const bot = turns[turns.length - 1];
        if (!bot || bot.dataset.testid !== 'bot') {  // the pending reply's bubble is not drawn yet
            if (tries > 0) setTimeout(() => show(tries - 1), 16);
            return;
        }
        if (live && live.parentElement !== bot) { live.remove(); live = null; }
        const box = bot.closest('[role="log"]') || bot.parentElement;
        const pinned = box && box.scrollHeight - box.scrollTop - box.clientHeight < 48;
        if (!live) {
            live = document.createElement('div');
            live.className = 'inglenook-live md prose chatbot';
            live.appendChild(document.createTextNode(''));
            bot.insertBefore(live, bot.querySelector(':scope > .inglenook-stats'));
        }
        const node = live.firstChild;
        if (want.startsWith(node.data)) node.appendData(want.slice(node.data.length));
        else node.data = want;
        if (pinned) box.scrollTop = box.scrollHeight;
    };
    if (channel.source) { channel.source.close(); channel.source = null; }  // a reply ended, or another begins
    if (text.startsWith('\\u0000live:')) {  // read the reply from the live channel (webui.chat.live)
        const source = channel.source = new EventSource('inglenook/live/' + encodeURIComponent(text.slice(6)));
        channel.text = '';
        source.onmessage = (event) => {
            if (channel.source !== source) return;
            const part = JSON.parse(event.data);
            channel.text = channel.text.slice(0, part.at) + part.text;
            window.__inglenookLive = channel.text;
            show(30);
        };
        source.addEventListener('end', () => source.close());
        source.onerror = () => source.close();  // no reconnecting: the reply's end comes with the whole chat
        return;
    }
    window.__inglenookLive = text;
    show(30);
}"""  # what the page runs on every change of the carrier


def live_wanted(sampling: dict) -> bool:
    """Whether the page that sent ``sampling`` reads a growing reply from the live channel; takes the flag out
    (it rides with the sampling values by name, and is no parameter)."""
    return sampling.pop(LIVE, "") == "live"


def listing_stamp(conv: Conversation) -> str:
    """What the sidebar's list depends on for the shown conversation (which one, its title, its size): when it
    changes, the list is drawn again."""
    return f"{conv.owner}/{conv.id}/{len(conv.messages)}/{conv.updated}/{conv.title}"


def open_conversation(app: App, conversation_id: str, owner: str = OWNER) -> Conversation:
    """The conversation ``conversation_id`` if it can be read, else the newest one, else a new one
    (a character's new one opens with its greeting)."""
    if conversation_id:
        try:
            return app.history.load(owner, conversation_id)
        except (HistoryError, UnsafeName):  # gone, damaged, or not a name we would ever have made
            pass
    return app.history.latest(owner) or start_conversation(app.history, app.characters, *mode_of(owner))


def continue_conversation(app: App, conversation_id: str, owner: str = OWNER) -> Conversation:
    """The conversation a message goes to: ``conversation_id`` if it still exists, else a new one
    (never another conversation: a message must not land in a chat the user is not looking at).

    The new one keeps ``conversation_id`` when it has the shape of our ids (it is the new chat the page
    shows, not saved yet): whatever acts on it first (a message, the Tools box) saves it under the id the
    page already holds, so an action sent before that answer lands still finds it."""
    if conversation_id:
        try:
            return app.history.load(owner, conversation_id)
        except (HistoryError, UnsafeName):  # gone, damaged, or not a name we would ever have made
            pass
    conv = start_conversation(app.history, app.characters, *mode_of(owner))
    if is_new_id(conversation_id) and not app.history.known(owner, conversation_id):  # never a deleted one's
        conv.id = conversation_id
    return conv


def mode_of(owner: str) -> tuple[str, str | None]:
    """(mode, character) a new conversation of ``owner`` gets: chat for a character, else instruct."""
    key = character_of(owner)
    return ("chat", key) if key else (INSTRUCT, None)


def chat_owner(app: App, mode: str, character: str | None) -> str:
    """The history owner for the mode and character picked in the chat tab (instruct if it is unusable)."""
    try:
        if mode in MODES and character and app.characters.exists(character):
            app.characters.load(character)  # a damaged character file: chat without it rather than fail
            return owner_for(mode, character)
    except (UnsafeName, CharacterError):
        pass
    return INSTRUCT_OWNER


def startup_problems(app: App) -> list[str]:
    """History files found damaged (and moved aside) when the UI was built: shown as a notice on the page."""
    found = []
    for owner in app.history.owners():
        found += [f"{owner}/{p}" for p in app.history.list(owner).problems]
    return found


@dataclass
class ChatTab:
    """What the page wires to the chat tab: restore on load, refresh after a model load, shared sampling."""

    restore: Callable
    restore_inputs: list
    restore_outputs: list
    model_changed: Callable
    model_outputs: list
    pick: Callable  # open a conversation by id with its saved mode: pick(id, *context) -> the `shown` updates
    context: list  # system, start reply with, max tokens, mode, character
    shown: list
    listed: gr.Textbox  # changes when the sidebar's list should be drawn again (see listing_stamp)
    conversation_id: gr.Textbox
    title: gr.Textbox  # the sidebar's editable title of the shown conversation
    settings_applied: tuple  # (fn, inputs, outputs): the shown conversation's saved settings back in the form
    channel: gr.Textbox  # the page's load script sets it to "live" (see LIVE)


def build_chat_tab(
    app: App,
    params_inputs: dict,
    sessions: ChatSessions,
    sidebar: gr.Sidebar | None = None,
    preset: gr.Dropdown | None = None,
) -> ChatTab:
    """``params_inputs``: parameter name -> the Parameters tab's widget; every generation reads them by name.
    ``sessions``: the replies in flight (per UI, not module-level), shared with the server's live channel
    (:data:`webui.chat.live.LIVE_PATH`). ``sidebar``: where the mode, character and conversation pickers go
    (else above the chat). ``preset``: the Parameters tab's preset picker, whose name each conversation keeps
    and brings back."""
    rule_knobs = list(params_inputs)  # a models.yaml rule may set any of them
    prefs = TemplatePrefs(app.settings.user_data)
    presets = PresetStore(app.settings.user_data)
    notices = startup_problems(app)
    exports = Path(tempfile.mkdtemp(prefix="inglenook-exports-"))

    characters = app.characters.keys()
    with sidebar if sidebar is not None else contextlib.nullcontext():  # the page's conversations sidebar
        with gr.Row():
            mode = gr.Radio(
                ["chat", "chat-instruct", "instruct"], value=INSTRUCT, label="Mode", scale=3, elem_id="chat-mode"
            )
            character = gr.Dropdown(
                choices=characters, value="Assistant" if "Assistant" in characters else None, label="Character",
                scale=3, elem_id="chat-character",
            )  # fmt: skip
        with gr.Row():
            new = gr.Button("New chat", scale=1, elem_id="new-chat")
            delete = gr.Button("Delete", scale=1, variant="secondary", elem_id="delete-chat")
        # a deletion asks nothing and offers Undo for a while (the file waits in user_data/trash until then)
        with gr.Row(visible=False, elem_id="undo-delete-row") as undo_row:
            undo_note = gr.Markdown("", elem_id="undo-delete-note")
            undo = gr.Button("Undo", size="sm", scale=0, min_width=80, elem_id="undo-delete")
        deleted = gr.State(None)  # (owner, id) of the conversation Undo brings back
        undo_timer = gr.Timer(UNDO_SECONDS, active=False)
        with gr.Row(elem_id="sidebar-rename"):  # the shown conversation's title, editable (Enter or Rename saves it)
            title = gr.Textbox(label="Title", scale=4, elem_id="rename-title", lines=1, max_lines=1)
            rename = gr.Button("Rename", size="sm", scale=0, min_width=70, elem_id="rename-chat")
    # The id lives in the page, not in server memory, so a restarted server continues the same file.
    conversation_id = gr.Textbox(visible=False, elem_id="conversation-id")
    listed = gr.Textbox(visible=False, elem_id="conversation-listed")  # see listing_stamp
    chatbot = gr.Chatbot(
        label="Chat", height=520, elem_id="chatbot", buttons=["copy"], feedback_options=None, editable="all"
    )
    # the reply while it streams, alone (webui.chat.live): LIVE_JS shows it in the last bubble
    live_reply = gr.Textbox("", visible="hidden", interactive=False, show_label=False, elem_id="chat-live")
    # "live" once the page's load script sets it (ChatTab.channel): the page then reads a growing reply from the
    # server's live channel; "" (an API client of /chat, or the page before that script ran): from the carrier
    channel = gr.Textbox("", visible=False, elem_id="chat-channel")
    with gr.Row(equal_height=True):
        prev_version = gr.Button("‹", size="sm", scale=0, min_width=40, elem_id="version-prev")
        versions = gr.Markdown("", elem_id="version-label")
        next_version = gr.Button("›", size="sm", scale=0, min_width=40, elem_id="version-next")
        tokens = gr.Markdown("", elem_id="prompt-tokens")
    error = gr.Markdown("", elem_id="chat-error")
    with gr.Group(visible=False, elem_id="tool-approval") as approval:  # a tool call waits for the user's word
        approval_text = gr.Markdown("", elem_id="tool-approval-text")
        with gr.Row():
            approve = gr.Button("Approve", variant="primary", size="sm", elem_id="tool-approve")
            deny = gr.Button("Deny", variant="stop", size="sm", elem_id="tool-deny")
    with gr.Row():
        message = gr.Textbox(
            placeholder="Type a message and press Enter (Shift+Enter: new line)", label="Message", show_label=False,
            scale=8, elem_id="chat-input", lines=1, max_lines=12,
        )  # fmt: skip
        send = gr.Button("Send", variant="primary", scale=1, elem_id="send")
        stop = gr.Button("Stop", variant="stop", scale=1, elem_id="stop", interactive=False)
    with gr.Row():
        regen = gr.Button("Regenerate", size="sm", elem_id="regenerate")
        cont = gr.Button("Continue", size="sm", elem_id="continue")
        imper = gr.Button("Impersonate", size="sm", elem_id="impersonate")
        remove = gr.Button("Remove last", size="sm", elem_id="remove-last")
        start_with = gr.Textbox(
            placeholder="Start reply with…", label="Start reply with", show_label=False, scale=3,
            elem_id="start-reply-with", lines=1,
        )  # fmt: skip
    with gr.Accordion("Prompt template", open=False):
        with gr.Row():
            template = gr.Dropdown(
                choices=[AUTO, *template_names()], value=AUTO, label="Template for this model", scale=2,
                elem_id="template-choice",
            )  # fmt: skip
            template_info = gr.Markdown("", elem_id="template-source")
        with gr.Accordion("Show prompt", open=False):
            show_prompt = gr.Button("Show the prompt the next message sends", size="sm", elem_id="show-prompt")
            preview = gr.Textbox(show_label=False, lines=12, max_lines=30, interactive=False, elem_id="prompt-preview")
    with gr.Accordion("Conversation", open=False):
        with gr.Row():
            branch_at = gr.Number(label="Branch from message # (click a message)", precision=0, value=None, scale=4)
            branch = gr.Button("Branch", scale=1, elem_id="branch-chat")
        with gr.Row():
            export = gr.Button("Export JSON", scale=1, elem_id="export-chat")
            upload = gr.UploadButton("Import JSON", file_types=[".json"], scale=1, elem_id="import-chat")
        download = gr.File(label="Exported conversation", visible=False, interactive=False, elem_id="export-file")
    with gr.Row(elem_id="chat-tools-row"):  # per conversation, saved with it
        use_tools = gr.Checkbox(
            label="Tools (the enabled extensions' functions)", value=False, elem_id="chat-tools", scale=2,
        )  # fmt: skip
        auto_tools = gr.Checkbox(label="Run tool calls without asking", value=False, elem_id="chat-tools-auto")
    with gr.Accordion("System prompt", open=False):  # sampling parameters: the Parameters tab
        system = gr.Textbox(label="System prompt", lines=2)
    arena_slot = gr.Column()  # filled once the handlers it borrows exist
    max_tokens = params_inputs["max_new_tokens"]  # the reply's room in the context (token count line)

    # ------------------------------------------------------------------ helpers

    def chosen_template() -> str | None:
        info = app.engine.info
        return prefs.get(info.name) if info else None

    def speaker_for(conv: Conversation, chosen_mode: str | None = None) -> Character | None:
        """The character speaking in ``conv`` (None in instruct); ``conv`` takes the picked character mode."""
        key = character_of(conv.owner)
        if not key:
            return None
        try:
            speaker = app.characters.load(key)
        except (CharacterError, UnsafeName):  # a damaged or vanished character: its chat goes on without it
            return None
        if chosen_mode in MODES and chosen_mode != INSTRUCT:
            conv.mode = chosen_mode
        return speaker

    def locate_conv(conv_id: str, chosen_mode: str, key: str | None) -> tuple[Conversation, Character | None]:
        """The conversation an action acts on (of the picked mode and character) and who speaks in it."""
        conv = continue_conversation(app, conv_id or "", chat_owner(app, chosen_mode, key))
        return conv, speaker_for(conv, chosen_mode)

    def show(
        conv: Conversation, note: str = "", system_text: str = "", prefix: str = "", n: float = 0,
        chosen_mode: str | None = None, _key: str | None = None,
    ):  # fmt: skip
        """The sidebar list's stamp, id, chatbot (with the character's picture), note, version label, token
        count, mode and character for ``conv``."""
        key = character_of(conv.owner)
        speaker = speaker_for(conv, chosen_mode)
        options = TurnOptions(
            system=system_text or "", template=chosen_template(), start_with=prefix or "", character=speaker
        )
        count = prompt_summary(app.chat, conv, options, max_new_tokens=int(n or 0))
        thumb = app.characters.thumbnail(key) if speaker is not None else None
        shown = gr.update(
            value=display_messages(conv.ui_history()), avatar_images=(None, str(thumb) if thumb else None)
        )
        keys = app.characters.keys()
        return (
            listing_stamp(conv), conv.id, shown, note, version_label(conv), count,
            chosen_mode or conv.mode, gr.update(choices=keys, value=key) if key else gr.update(choices=keys),
        )  # fmt: skip

    def template_view():
        """Template dropdown, where it came from, and the settings a models.yaml rule brings for the model.

        Only the rule's own settings are set: a slider the user moved (while the page loaded, or before a
        model load, failed or not) is left as it is.
        """
        choice = chosen_template()
        status = template_status(app.engine.info, choice)
        values = [getattr(status.defaults, name) if name in status.settings else gr.skip() for name in rule_knobs]
        return (gr.update(value=choice or AUTO), status.describe(), *values)

    def _exists(owner: str, conversation_id: str) -> bool:
        try:
            return app.history.exists(owner, conversation_id)
        except UnsafeName:
            return False

    def saved_settings(conv: Conversation) -> list:
        """The preset picker, the system prompt box and the Parameters widgets as the conversation was last
        asked with. With the name of a preset that still exists, the whole form comes back (the defaults and
        what differed from them); without one (older files), only the values it changed."""
        system_value = conv.settings.get("system", "") if conv.settings or conv.messages else gr.skip()
        sampling = conv.settings.get("sampling", {})
        name = conv.settings.get(PRESET)
        if isinstance(name, str) and name in presets.names():
            try:
                whole = asked_sampling(sampling)
            except ValueError:  # a hand-edited file: fall back to what can be read of it
                whole = None
            if whole is not None:
                return [name, system_value, *(whole[knob] for knob in rule_knobs)]
        return [gr.skip(), system_value, *(sampling[knob] if knob in sampling else gr.skip() for knob in rule_knobs)]

    def restore(conversation_id: str, system_text: str):
        found = next((o for o in app.history.owners() if conversation_id and _exists(o, conversation_id)), None)
        owner = found or (app.history.newest_owner() if not conversation_id else None) or OWNER
        problems = app.history.list(owner).problems
        lines = [*(f"moved aside at start: {p}" for p in notices), *(str(p) for p in problems)]
        note = "⚠️ Damaged history files: " + "; ".join(lines) if lines else ""
        conv = open_conversation(app, conversation_id, owner)
        template_dropdown, template_note, *rule_values = template_view()
        preset_value, system_value, *saved = saved_settings(conv)
        values = [rule if isinstance(mine, dict) and mine.get("__type__") == "update" else mine
                  for rule, mine in zip(rule_values, saved, strict=True)]  # fmt: skip
        shown_system = system_value if isinstance(system_value, str) else system_text
        return (*show(conv, note, shown_system), template_dropdown, template_note, *values, system_value,
                *([preset_value] if preset is not None else []))  # fmt: skip

    def apply_settings(conv_id: str, chosen_mode: str, key: str | None):
        """After a conversation is picked: its system prompt and changed parameters come back with it."""
        conv, _ = locate_conv(conv_id, chosen_mode, key)
        picked, *rest = saved_settings(conv)
        return (*([picked] if preset is not None else []), *rest)

    def busy(request: gr.Request) -> bool:
        return sessions.busy(request.session_hash)

    def outputs(update: ChatUpdate, ctx) -> tuple:
        """A ChatUpdate as the streaming handlers' outputs (message, id, chatbot, note, Send, Stop, the sidebar
        list's stamp, version label, token count)."""
        picker_update = label = count = gr.skip()
        if update.shown is not None:
            picker_update, _, _, _, label, count, *_ = show(update.shown, "", *ctx)
        buttons = SKIP_BUTTONS if update.busy is None else (BUSY if update.busy else IDLE)
        head = (update.message, update.conversation_id, update.chat, update.note)
        return (*(gr.skip() if v is None else v for v in head), *buttons, picker_update, label, count)

    def relay(updates: Iterator[ChatUpdate], ctx, live: bool = False, shown_id: str = ""):
        """Each update as outputs, the growing reply through the live carrier or, when the page has the live
        channel (``live``), through that channel alone (webui.chat.live): the carrier then only tells the page
        which conversation's reply to read (``shown_id``: the conversation a followed reply is written into) and
        when it ends. Closing the handler (the page went away) closes the session's stream."""
        split = LiveSplit()
        opened = False
        try:
            for update in updates:
                if not live and update.busy is False and (whole := split.finishing(update.chat)) is not None:
                    yield (*(gr.skip() for _ in range(len(stream_outputs) - 1)), whole)  # the end, at once
                chat, text = split.split(update.chat, update.busy is True)
                if not live:
                    carrier = gr.skip() if text is None else text
                elif chat is None and text is not None and opened:
                    continue  # only the reply's text grew: the page reads it from the channel
                elif update.busy is False:
                    carrier = ""
                elif update.busy is True and not opened and (cid := update.conversation_id or shown_id):
                    carrier, opened = LIVE_MARK + cid, True
                else:
                    carrier = gr.skip()
                yield (*outputs(replace(update, chat=chat), ctx), carrier)
        finally:
            updates.close()

    def locator(conv_id, system_text, prefix, chosen_mode, key):
        """Finds the conversation and the turn's options, once the session has checked the action can go ahead."""

        def locate() -> tuple[Conversation, TurnOptions]:
            conv, speaker = locate_conv(conv_id, chosen_mode, key)
            options = TurnOptions(
                system=system_text or "", template=chosen_template(), start_with=prefix or "", character=speaker
            )
            return conv, options

        return locate

    def generation(action, request, conv_id, system_text, prefix, sampling, chosen_mode, key):
        """Regenerate or continue the conversation ``conv_id`` (streaming)."""
        live = live_wanted(sampling)
        ctx = (system_text, prefix, sampling.get("max_new_tokens"), chosen_mode, key)
        where = locator(conv_id, system_text, prefix, chosen_mode, key)
        yield from relay(sessions.again(request.session_hash, action, sampling, where), ctx, live)

    # ------------------------------------------------------------------ handlers

    def respond(text, conv_id, system_text, prefix, chosen_mode, key, request: gr.Request, **sampling):
        live = live_wanted(sampling)
        ctx = (system_text, prefix, sampling.get("max_new_tokens"), chosen_mode, key)
        where = locator(conv_id, system_text, prefix, chosen_mode, key)
        yield from relay(sessions.send(request.session_hash, text, sampling, where), ctx, live)

    # (Gradio fills in ``request``/``data`` only for named parameters; the sampling values come by name.)
    def regenerate_reply(conv_id, system_text, prefix, chosen_mode, key, request: gr.Request, **sampling):
        yield from generation("regenerate", request, conv_id, system_text, prefix, sampling, chosen_mode, key)

    def continue_last(conv_id, system_text, prefix, chosen_mode, key, request: gr.Request, **sampling):
        yield from generation("continue", request, conv_id, system_text, prefix, sampling, chosen_mode, key)

    def impersonate_user(draft, conv_id, system_text, chosen_mode, key, request: gr.Request, **sampling):
        live_wanted(sampling)  # the draft streams into the message box, never over the live channel
        where = locator(conv_id, system_text, draft, chosen_mode, key)
        updates = sessions.impersonate(request.session_hash, sampling, where)
        try:
            for u in updates:
                buttons = SKIP_BUTTONS if u.busy is None else (BUSY if u.busy else IDLE)
                yield (
                    (gr.skip() if u.message is None else u.message),
                    (gr.skip() if u.note is None else u.note),
                    *buttons,
                )
        finally:
            updates.close()

    def remove_exchange(conv_id, system_text, prefix, n, chosen_mode, key, request: gr.Request):
        ctx = (system_text, prefix, n, chosen_mode, key)
        conv, _ = locate_conv(conv_id, chosen_mode, key)
        if busy(request):
            return gr.skip(), *show(conv, "Wait for the reply or press Stop.", *ctx)
        try:
            removed = remove_last(app.history, conv)
        except HistoryError as exc:
            return gr.skip(), *show(conv, f"⚠️ {exc}", *ctx)
        back = next((m.content for m in removed if m.role == "user"), None)
        return (back if back is not None else gr.skip()), *show(conv, "", *ctx)

    def page(step: int):
        def handler(conv_id, *ctx):
            conv, _ = locate_conv(conv_id, *ctx[3:])
            try:
                page_version(app.history, conv, step)
            except HistoryError as exc:
                return show(conv, f"⚠️ {exc}", *ctx)
            return show(conv, "", *ctx)

        return handler

    def on_edit(conv_id, system_text, prefix, chosen_mode, key, data: gr.EditData, request: gr.Request, **sampling):
        ctx = (system_text, prefix, sampling.get("max_new_tokens"), chosen_mode, key)
        conv, _ = locate_conv(conv_id, chosen_mode, key)
        index = data.index if isinstance(data.index, int) else data.index[0]
        try:
            edited = edit_message(app.history, conv, index, without_stats(data.value))
        except (HistoryError, IndexError) as exc:
            picker_update, cid, shown, note, label, count, *_ = show(conv, f"⚠️ {exc}", *ctx)
            yield gr.skip(), cid, shown, note, *SKIP_BUTTONS, picker_update, label, count, gr.skip()
            return
        if edited.role != "user":  # an edited reply is a new version of it: nothing to generate
            picker_update, cid, shown, note, label, count, *_ = show(conv, "", *ctx)
            yield gr.skip(), cid, shown, note, *SKIP_BUTTONS, picker_update, label, count, gr.skip()
            return
        yield from generation("regenerate", request, conv_id, system_text, prefix, sampling, chosen_mode, key)

    def tool_view(conv_id, chosen_mode, key):
        """The approval box (shown while calls wait in the conversation) and its tool settings."""
        conv, _ = locate_conv(conv_id, chosen_mode, key)
        waiting = conv.pending_calls()
        calls = ", ".join(f"`{call_text(m.tool['name'], m.tool['arguments'])}`" for m in waiting)
        text = f"Run {calls}?" if waiting else ""
        return gr.update(visible=bool(waiting)), text, tools_enabled(conv), auto_approve(conv)

    def toggle_tools(conv_id, enabled, approve_all, chosen_mode, key):
        """Save the choice with the conversation (a new one is saved now, under the id the page holds next)."""
        conv, _ = locate_conv(conv_id, chosen_mode, key)
        try:
            set_tools(app.history, conv, enabled, approve_all)
        except (HistoryError, UnsafeName) as exc:
            return f"⚠️ {exc}", gr.skip()
        note = ""
        if enabled and not app.extensions.tools():
            note = "ℹ️ No enabled extension offers tools: enable one (e.g. calculator) in the Extensions tab."
        return note, conv.id

    def resolve(approved: bool):
        def handler(conv_id, system_text, prefix, chosen_mode, key, request: gr.Request, **sampling):
            live = live_wanted(sampling)
            ctx = (system_text, prefix, sampling.get("max_new_tokens"), chosen_mode, key)
            where = locator(conv_id, system_text, prefix, chosen_mode, key)
            yield from relay(sessions.resolve(request.session_hash, approved, sampling, where), ctx, live)

        return handler

    def stop_generation(request: gr.Request):
        sessions.stop(request.session_hash)

    def stop_shown(conv_id: str, request: gr.Request):
        """Stop also stops a reply this page follows but did not start (another tab's, or before a reload)."""
        sessions.stop(request.session_hash, conv_id or "")

    def follow_reply(conv_id, system_text, prefix, n, chosen_mode, key, channel_flag, request: gr.Request):
        """A reply another tab (or this one before a reload) is writing into the conversation now shown."""
        ctx = (system_text, prefix, n, chosen_mode, key)
        load = lambda: locate_conv(conv_id, chosen_mode, key)[0]  # noqa: E731
        followed = False
        updates = sessions.follow(request.session_hash, conv_id or "", load)
        for out in relay(updates, ctx, channel_flag == "live", conv_id or ""):
            followed = True
            yield out
        if not followed:  # a generator that yields nothing would blank every output
            yield tuple(gr.skip() for _ in stream_outputs)

    def new_chat(system_text, prefix, n, chosen_mode=INSTRUCT, key=None, request: gr.Request = None):
        if request is not None:
            sessions.unfollow(request.session_hash)
        owner = chat_owner(app, chosen_mode, key)
        conv = start_conversation(app.history, app.characters, *mode_of(owner))
        return show(conv, "", system_text, prefix, n, chosen_mode)

    def pick(conversation_id: str, system_text, prefix, n, chosen_mode=INSTRUCT, key=None,
             request: gr.Request = None):  # fmt: skip
        if request is not None:
            sessions.unfollow(request.session_hash)
        conv = open_conversation(app, conversation_id or "", chat_owner(app, chosen_mode, key))
        return show(conv, "", system_text, prefix, n, chosen_mode)

    def pick_with_mode(conversation_id: str, system_text, prefix, n, chosen_mode=INSTRUCT, key=None,
                       request: gr.Request = None):  # fmt: skip
        """Open a conversation from the sidebar as it was left: a character's chat in its saved mode."""
        if request is not None:
            sessions.unfollow(request.session_hash)
        conv = open_conversation(app, conversation_id or "", chat_owner(app, chosen_mode, key))
        if character_of(conv.owner) and conv.mode in MODES and conv.mode != INSTRUCT:
            chosen_mode = conv.mode
        return show(conv, "", system_text, prefix, n, chosen_mode)

    def switch(system_text, prefix, n, chosen_mode, key, request: gr.Request):
        """Another mode or character: its newest conversation (a new one, greeting first, if it has none)."""
        return pick("", system_text, prefix, n, chosen_mode, key, request)

    def delete_chat(conversation_id: str, system_text, prefix, n, chosen_mode=INSTRUCT, key=None):
        """Delete at once (into the trash) and offer Undo: the shown updates, the Undo row, what to undo, timer."""
        owner = chat_owner(app, chosen_mode, key)
        ctx = (system_text, prefix, n, chosen_mode)
        hidden = (gr.update(visible=False), gr.skip(), gr.update(active=False))
        try:
            if not (conversation_id and app.history.exists(owner, conversation_id)):
                shown_now = show(open_conversation(app, conversation_id or "", owner), "Nothing saved to delete.", *ctx)
                return *shown_now, *hidden
            title = app.history.load(owner, conversation_id).title or "the conversation"
            app.history.delete(owner, conversation_id)
        except (HistoryError, UnsafeName) as exc:
            return *show(open_conversation(app, "", owner), f"⚠️ {exc}", *ctx), *hidden
        return (
            *show(open_conversation(app, "", owner), "", *ctx), gr.update(visible=True),
            (owner, conversation_id), gr.update(active=True), f"Deleted “{title}”.",
        )  # fmt: skip

    def undo_delete(what, system_text, prefix, n, chosen_mode=INSTRUCT, key=None):
        """Bring the deleted conversation back (the same file) and show it."""
        hide = (gr.update(visible=False), None, gr.update(active=False))
        owner, ctx = chat_owner(app, chosen_mode, key), (system_text, prefix, n, chosen_mode)
        if not what:
            return *show(open_conversation(app, "", owner), "Nothing to undo.", *ctx), *hide
        was_owner, conversation_id = what
        try:
            app.history.undelete(was_owner, conversation_id)
        except (HistoryError, UnsafeName) as exc:
            return *show(open_conversation(app, "", owner), f"⚠️ {exc}", *ctx), *hide
        conv = open_conversation(app, conversation_id, was_owner)
        return *show(conv, "Restored.", *ctx), *hide

    def rename_chat(conv_id, new_title, *ctx):
        conv, _ = locate_conv(conv_id, *ctx[3:])
        try:
            conv.title = app.history.rename(conv.owner, conv.id, new_title).title if conv.messages else conv.title
        except (HistoryError, UnsafeName) as exc:
            return show(conv, f"⚠️ {exc}", *ctx)
        note = "" if conv.messages else "Say something first: an empty chat is not saved yet."
        return show(conv, note or f"Renamed to “{conv.title}”.", *ctx)

    def branch_chat(conv_id, number, *ctx):
        conv, _ = locate_conv(conv_id, *ctx[3:])
        try:
            upto = int(number) - 1 if number else len(conv.messages) - 1
            if upto < 0:
                raise HistoryError("message numbers start at 1")
            twin = app.history.branch(conv, upto)
        except (HistoryError, UnsafeName) as exc:
            return show(conv, f"⚠️ {exc}", *ctx)
        return show(twin, f"Branched at message {upto + 1}: this is the copy.", *ctx)

    def select_message(data: gr.SelectData):
        index = data.index if isinstance(data.index, int) else data.index[0]
        return index + 1

    def export_chat(conv_id, chosen_mode, key):
        try:
            path = export_conversation(app.history, chat_owner(app, chosen_mode, key), conv_id, exports)
        except (HistoryError, UnsafeName) as exc:
            return gr.update(visible=False), f"⚠️ {exc}"
        return gr.update(value=str(path), visible=True), ""

    def import_chat(file, conv_id, *ctx):
        path = file if isinstance(file, str) else getattr(file, "name", "")
        try:
            conv = import_conversation(app.history, chat_owner(app, *ctx[3:]), Path(path))
        except HistoryError as exc:  # stay on the conversation the user was looking at
            note = f"⚠️ Import failed, nothing was saved: {exc}"
            return show(locate_conv(conv_id, *ctx[3:])[0], note, *ctx)
        return show(conv, f"Imported “{conv.title or conv.id}”.", *ctx)

    def choose_template(choice):
        info = app.engine.info
        if info is None:
            return gr.update(value=AUTO), "No model is loaded."
        try:
            prefs.set(info.name, choice)
        except ValueError as exc:
            return gr.update(value=chosen_template() or AUTO), f"⚠️ {exc}"
        return gr.update(), template_status(info, chosen_template()).describe()

    def show_the_prompt(draft, conv_id, system_text, prefix, n, chosen_mode, key):
        conv, speaker = locate_conv(conv_id, chosen_mode, key)
        try:
            options = TurnOptions(
                system=system_text or "", template=chosen_template(), start_with=prefix or "", character=speaker
            )
            plan = preview_prompt(app.chat, conv, options, draft or "", max_new_tokens=int(n or 0))
        except ValueError as exc:
            return f"⚠️ {exc}", gr.skip()
        if plan is None:
            return "(nothing to send yet: type a message)", gr.skip()
        return plan.text, plan.summary()

    # ------------------------------------------------------------------ wiring

    who = [mode, character]
    ctx = [system, start_with, max_tokens, *who]
    shown = [listed, conversation_id, chatbot, error, versions, tokens, *who]
    buttons = [send, stop, regen, cont]  # BUSY / IDLE
    stream_outputs = [message, conversation_id, chatbot, error, *buttons, listed, versions, tokens, live_reply]
    # /chat's inputs: message, conversation id, system, start reply with, mode, character; then every
    # sampling parameter by name (unset ones take the Parameters tab's values)
    inputs = [message, conversation_id, system, start_with, *who]
    # the preset's name comes along by name too (a conversation keeps it), though it is not a parameter
    sampling_inputs = {**params_inputs, **({PRESET: preset} if preset is not None else {}), LIVE: channel}
    knobs = {"concurrency_limit": None, "inputs_kwargs": sampling_inputs}
    tool_outputs = [approval, approval_text, use_tools, auto_tools]
    tool_inputs = [conversation_id, *who]
    quiet = {"api_name": False, "show_progress": "hidden"}  # bookkeeping: no "processing" over the chat
    # Several handlers follow the conversation id; Gradio's default for .change ("always_last") re-sends the
    # whole event when a deferred one ends, which starts the others again: under load they kept deferring
    # each other (a loop of ~10 requests a second that reset the sidebar's title box). See FOLLOWS_ID.
    follows_id = {"trigger_mode": FOLLOWS_ID}
    message.submit(respond, inputs, stream_outputs, api_name="chat", **knobs).then(
        tool_view, tool_inputs, tool_outputs, **quiet
    )
    send.click(respond, inputs, stream_outputs, api_name=False, **knobs).then(
        tool_view, tool_inputs, tool_outputs, **quiet
    )
    # a page opened (or reloaded) while a reply is written into its conversation follows it to its end; after
    # the tool card, as a step of its own: the page runs an event's handlers one by one, each to its end, and
    # the sidebar's (the next one) would wait for the whole reply
    conversation_id.change(tool_view, tool_inputs, tool_outputs, **quiet, **follows_id).then(
        follow_reply, [conversation_id, *ctx, channel], stream_outputs, concurrency_limit=None, **quiet, **follows_id
    )
    for box in (use_tools, auto_tools):
        box.input(toggle_tools, [conversation_id, use_tools, auto_tools, *who], [error, conversation_id],
                  api_name=False)  # fmt: skip
    stop.click(stop_generation, None, None, api_name="stop", concurrency_limit=None, queue=False)
    stop.click(stop_shown, conversation_id, None, api_name=False, concurrency_limit=None, queue=False)
    gen_inputs = [conversation_id, system, start_with, *who]
    for button, approved in ((approve, True), (deny, False)):  # the call runs (or is refused), the model goes on
        button.click(lambda: gr.update(visible=False), None, approval, api_name=False, queue=False)
        button.click(resolve(approved), gen_inputs, stream_outputs, api_name="approve_tool" if approved else
                     "deny_tool", **knobs).then(tool_view, tool_inputs, tool_outputs, api_name=False)  # fmt: skip
    regen.click(regenerate_reply, gen_inputs, stream_outputs, api_name="regenerate", **knobs)
    chatbot.retry(regenerate_reply, gen_inputs, stream_outputs, api_name=False, **knobs)
    cont.click(continue_last, gen_inputs, stream_outputs, api_name="continue", **knobs)
    chatbot.edit(on_edit, gen_inputs, stream_outputs, api_name=False, **knobs)
    imper.click(
        impersonate_user, [message, conversation_id, system, *who], [message, error, *buttons],
        api_name="impersonate", **knobs,
    )  # fmt: skip
    remove_inputs = [conversation_id, *ctx]
    remove.click(remove_exchange, remove_inputs, [message, *shown], api_name=False)
    chatbot.undo(remove_exchange, remove_inputs, [message, *shown], api_name=False)
    prev_version.click(page(-1), [conversation_id, *ctx], shown, api_name=False)
    next_version.click(page(+1), [conversation_id, *ctx], shown, api_name=False)
    # New chat, and the chatbot's own bin icon, start afresh at once in the page (the id emptied: a message sent
    # before new_chat answers starts a conversation of its own, never the one left), then on the server. In
    # this order: the page runs an event's handlers one after another, each to its end.
    for fresh in (new.click, chatbot.clear):
        fresh(None, None, conversation_id, js="() => ''", api_name=False, queue=False)
        fresh(new_chat, ctx, shown, api_name=False)
    # .select, not .input: a dropdown's blur sends .input with its value, and after New chat that value (no
    # saved conversation yet) opened the newest old one (issue 13, bug 1)
    settings_outputs = [*([preset] if preset is not None else []), system, *(params_inputs[n] for n in rule_knobs)]
    settings_applied = (apply_settings, [conversation_id, *who], settings_outputs)
    delete.click(
        delete_chat, [conversation_id, *ctx], [*shown, undo_row, deleted, undo_timer, undo_note], api_name=False
    ).then(*settings_applied, api_name=False)
    undo.click(undo_delete, [deleted, *ctx], [*shown, undo_row, deleted, undo_timer], api_name=False).then(
        *settings_applied, api_name=False
    )
    undo_timer.tick(lambda: (gr.update(visible=False), None, gr.update(active=False)), None,
                    [undo_row, deleted, undo_timer], api_name=False)  # fmt: skip
    mode.input(switch, ctx, shown, api_name=False)
    character.select(switch, ctx, shown, api_name=False).then(*settings_applied, api_name=False)
    character.focus(lambda: gr.update(choices=app.characters.keys()), None, character, api_name=False)
    rename.click(rename_chat, [conversation_id, title, *ctx], shown, api_name=False)
    title.submit(rename_chat, [conversation_id, title, *ctx], shown, api_name=False)
    branch.click(branch_chat, [conversation_id, branch_at, *ctx], shown, api_name=False)
    chatbot.select(select_message, None, branch_at, api_name=False)
    chatbot.change(None, chatbot, None, js=CHAT_JS, api_name=False)
    live_reply.change(None, live_reply, None, js=LIVE_JS, api_name=False)
    export.click(export_chat, [conversation_id, *who], [download, error], api_name=False)
    upload.upload(import_chat, [upload, conversation_id, *ctx], shown, api_name=False)
    template.input(choose_template, template, [template, template_info], api_name=False)
    show_prompt.click(show_the_prompt, [message, conversation_id, *ctx], [preview, tokens], api_name=False)
    with arena_slot:  # "Ask two models": the same message to two models, keep one reply (webui.chat.arena)
        locate = lambda *args: locator(*args)()  # noqa: E731
        build_arena_panel(app, ArenaWiring(message, gen_inputs, locate, show, shown, params_inputs))

    template_outputs = [template, template_info, *(params_inputs[name] for name in rule_knobs)]
    return ChatTab(
        restore=restore,
        restore_inputs=[conversation_id, system],
        restore_outputs=[*shown, *template_outputs, system, *([preset] if preset is not None else [])],
        model_changed=template_view,
        model_outputs=template_outputs,
        pick=pick_with_mode,
        context=ctx,
        shown=shown,
        listed=listed,
        conversation_id=conversation_id,
        title=title,
        settings_applied=settings_applied,
        channel=channel,
    )
