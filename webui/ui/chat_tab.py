"""The Chat tab: widgets wired to :mod:`webui.chat`. No logic a test would want lives here."""

from __future__ import annotations

import gradio as gr

from backends.base import CancelToken, SamplingParams
from webui.app import App
from webui.characters import CharacterError
from webui.chat import Reply, chat_turn, default_params, throttle
from webui.chat_modes import INSTRUCT, character_of, owner_for, start_conversation
from webui.history import INSTRUCT_OWNER, MODES, Conversation, HistoryError
from webui.paths import UnsafeName


def display_messages(history: list[dict], pending: Reply | None = None) -> list[dict]:
    """What the chatbot shows: the history, each reply followed by its stats line, then the reply in flight."""
    shown = []
    for m in history:
        content = m["content"]
        if m.get("stats"):
            content = f"{content}\n\n<span class='inglenook-stats'>{m['stats']}</span>"
        shown.append({"role": m["role"], "content": content})
    if pending is not None:
        shown.append({"role": "assistant", "content": pending.text or "…"})
    return shown


# (Send, Stop) while a reply streams and while idle: only the button that can act is enabled
BUSY = (gr.update(interactive=False), gr.update(interactive=True))
IDLE = (gr.update(interactive=True), gr.update(interactive=False))


OWNER = INSTRUCT_OWNER  # conversations without a character (characters arrive later)


def conversation_choices(app: App, owner: str = OWNER) -> list[tuple[str, str]]:
    """(title, id) pairs for the conversation picker, newest first."""
    listing = app.history.list(owner)
    return [(c.title or "(empty)", c.id) for c in listing.conversations]


def open_conversation(app: App, conversation_id: str, owner: str = OWNER) -> Conversation:
    """The conversation ``conversation_id`` if it can be read, else the newest one, else a new one
    (a character's new one opens with its greeting)."""
    if conversation_id:
        try:
            return app.history.load(owner, conversation_id)
        except HistoryError:
            pass
    return app.history.latest(owner) or start_conversation(app.history, app.characters, *mode_of(owner))


def continue_conversation(app: App, conversation_id: str, owner: str = OWNER) -> Conversation:
    """The conversation a message goes to: ``conversation_id`` if it still exists, else a new one
    (never another conversation: a message must not land in a chat the user is not looking at)."""
    if conversation_id:
        try:
            return app.history.load(owner, conversation_id)
        except HistoryError:
            pass
    return start_conversation(app.history, app.characters, *mode_of(owner))


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


def build_chat_tab(app: App) -> tuple:
    cancels: dict[str, CancelToken] = {}  # session -> its generation in flight (per UI, not module-level)
    defaults = default_params()

    characters = app.characters.keys()
    with gr.Row():
        mode = gr.Radio(
            ["chat", "chat-instruct", "instruct"], value=INSTRUCT, label="Mode", scale=3, elem_id="chat-mode"
        )
        character = gr.Dropdown(
            choices=characters, value="Assistant" if "Assistant" in characters else None, label="Character",
            scale=3, elem_id="chat-character",
        )  # fmt: skip
    with gr.Row():
        picker = gr.Dropdown(choices=[], label="Conversation", scale=6, elem_id="conversation-choice")
        new = gr.Button("New chat", scale=1, elem_id="new-chat")
        delete = gr.Button("Delete", scale=1, variant="secondary", elem_id="delete-chat")
    # The id lives in the page, not in server memory, so a restarted server continues the same file.
    conversation_id = gr.Textbox(visible=False, elem_id="conversation-id")
    chatbot = gr.Chatbot(label="Chat", height=520, elem_id="chatbot", buttons=["copy"], feedback_options=None)
    error = gr.Markdown("", elem_id="chat-error")
    with gr.Row():
        message = gr.Textbox(
            placeholder="Type a message and press Enter", show_label=False, scale=8, elem_id="chat-input", lines=1
        )
        send = gr.Button("Send", variant="primary", scale=1, elem_id="send")
        stop = gr.Button("Stop", variant="stop", scale=1, elem_id="stop", interactive=False)
    with gr.Accordion("Generation settings", open=False):
        system = gr.Textbox(label="System prompt", lines=2)
        with gr.Row():
            max_tokens = gr.Slider(1, 4096, value=defaults.max_new_tokens, step=1, label="Max new tokens")
            temperature = gr.Slider(0, 2, value=defaults.temperature, step=0.01, label="Temperature")
            top_p = gr.Slider(0, 1, value=defaults.top_p, step=0.01, label="top_p")
        with gr.Row():
            top_k = gr.Slider(0, 200, value=defaults.top_k, step=1, label="top_k")
            min_p = gr.Slider(0, 1, value=defaults.min_p, step=0.01, label="min_p")
            rep = gr.Slider(1, 1.5, value=defaults.repetition_penalty, step=0.01, label="Repetition penalty")
            seed = gr.Number(value=-1, precision=0, label="Seed (-1 = random)")

    def show(conv: Conversation, note: str = "", chosen_mode: str | None = None):
        """Picker, id, chatbot (with the character's picture), note, mode and character for ``conv``."""
        choices = conversation_choices(app, conv.owner)
        value = conv.id if any(cid == conv.id for _, cid in choices) else None
        key = character_of(conv.owner)
        thumb = app.characters.thumbnail(key) if key and app.characters.exists(key) else None
        shown = gr.update(
            value=display_messages(conv.ui_history()), avatar_images=(None, str(thumb) if thumb else None)
        )
        keys = app.characters.keys()
        return (
            gr.update(choices=choices, value=value), conv.id, shown, note, chosen_mode or conv.mode,
            gr.update(choices=keys, value=key) if key else gr.update(choices=keys),
        )  # fmt: skip

    def restore(conversation_id: str):
        owner = next((o for o in app.history.owners() if conversation_id and _exists(o, conversation_id)), OWNER)
        problems = app.history.list(owner).problems
        note = "⚠️ " + "; ".join(str(p) for p in problems) if problems else ""
        return show(open_conversation(app, conversation_id, owner), note)

    def _exists(owner: str, conversation_id: str) -> bool:
        try:
            return app.history.exists(owner, conversation_id)
        except UnsafeName:
            return False

    def respond(text, conv_id, system_text, n, temp, tp, tk, mp, rp, sd, chosen_mode, key, request: gr.Request):
        text = (text or "").strip()
        if request.session_hash in cancels:  # Enter pressed again while this tab's reply still streams
            note = "A reply is still streaming: wait for it or press Stop."
            yield gr.skip(), gr.skip(), gr.skip(), note, *BUSY, gr.skip()
            return
        if not text:
            yield gr.skip(), gr.skip(), gr.skip(), "Type a message first.", gr.skip(), gr.skip(), gr.skip()
            return
        params = SamplingParams(
            max_new_tokens=int(n), temperature=temp, top_p=tp, top_k=int(tk), min_p=mp,
            repetition_penalty=rp, seed=int(sd if sd is not None else -1),
        )  # fmt: skip
        owner = chat_owner(app, chosen_mode, key)
        conv = continue_conversation(app, conv_id, owner)
        speaker = None
        if owner != INSTRUCT_OWNER:
            conv.mode, speaker = chosen_mode, app.characters.load(key)
        cancel = cancels[request.session_hash] = CancelToken()
        final = Reply(done=True)
        try:
            turn = chat_turn(app.engine, app.history, conv, text, params, system_text or "", cancel, speaker)
            pending = [*conv.ui_history(), {"role": "user", "content": text}]  # the turn saves it on its first step
            yield "", conv.id, display_messages(pending, Reply()), "", *BUSY, gr.skip()
            for reply in throttle(turn, app.settings.stream_interval_s):
                final = reply
                if not reply.done:
                    yield (
                        gr.skip(),
                        gr.skip(),
                        display_messages(conv.ui_history(), reply),
                        gr.skip(),
                        gr.skip(),
                        gr.skip(),
                        gr.skip(),
                    )
        finally:  # also when the page goes away mid-reply: stop generating for nobody
            cancels.pop(request.session_hash, None)
            if not final.done:
                cancel.cancel()
        picker_update, cid, shown, *_ = show(conv)
        note = f"⚠️ {final.error}" if final.error else ""
        keep = text if final.error and not final.text else gr.skip()  # a failed message goes back to the box
        yield keep, cid, shown, note, *IDLE, picker_update

    def stop_generation(request: gr.Request):
        token = cancels.get(request.session_hash)
        if token is not None:
            token.cancel()

    def new_chat(chosen_mode: str = INSTRUCT, key: str | None = None):
        owner = chat_owner(app, chosen_mode, key)
        return show(start_conversation(app.history, app.characters, *mode_of(owner)), "", chosen_mode)

    def pick(conversation_id: str, chosen_mode: str = INSTRUCT, key: str | None = None):
        return show(open_conversation(app, conversation_id or "", chat_owner(app, chosen_mode, key)), "", chosen_mode)

    def switch(chosen_mode: str, key: str | None):
        """Another mode or character: its newest conversation (a new one, greeting first, if it has none)."""
        return show(open_conversation(app, "", chat_owner(app, chosen_mode, key)), "", chosen_mode)

    def delete_chat(conversation_id: str, chosen_mode: str = INSTRUCT, key: str | None = None):
        owner = chat_owner(app, chosen_mode, key)
        if conversation_id and app.history.exists(owner, conversation_id):
            app.history.delete(owner, conversation_id)
        return show(open_conversation(app, "", owner), "Deleted (moved to the trash folder).", chosen_mode)

    shown = [picker, conversation_id, chatbot, error, mode, character]
    who = [mode, character]
    inputs = [message, conversation_id, system, max_tokens, temperature, top_p, top_k, min_p, rep, seed, *who]
    outputs = [message, conversation_id, chatbot, error, send, stop, picker]
    message.submit(respond, inputs, outputs, api_name="chat", concurrency_limit=None)
    send.click(respond, inputs, outputs, api_name=False, concurrency_limit=None)
    stop.click(stop_generation, None, None, api_name="stop", concurrency_limit=None, queue=False)
    new.click(new_chat, who, shown, api_name=False)
    chatbot.clear(new_chat, who, shown, api_name=False)  # the chatbot's own bin icon starts afresh too
    picker.input(pick, [picker, *who], shown, api_name=False)
    delete.click(delete_chat, [conversation_id, *who], shown, api_name=False)
    mode.input(switch, who, shown, api_name=False)
    character.input(switch, who, shown, api_name=False)
    character.focus(lambda: gr.update(choices=app.characters.keys()), None, character, api_name=False)
    return restore, conversation_id, shown  # the page's load event restores the conversation
