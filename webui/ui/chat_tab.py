"""The Chat tab: widgets wired to :mod:`webui.chat`. No logic a test would want lives here."""

from __future__ import annotations

import gradio as gr

from backends.base import CancelToken
from webui.app import App
from webui.chat import Reply, chat_turn, throttle
from webui.history import INSTRUCT_OWNER, Conversation, HistoryError
from webui.presets import params_from_form


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


def ignored_note(app: App, ignored: list[str]) -> str:
    """The line under the chat when the loader did not honour some parameters the user set."""
    if not ignored:
        return ""
    loader = app.engine.info.loader if app.engine.info else "the loader"
    return f"ℹ️ {loader} ignored: {', '.join(ignored)}"


# (Send, Stop) while a reply streams and while idle: only the button that can act is enabled
BUSY = (gr.update(interactive=False), gr.update(interactive=True))
IDLE = (gr.update(interactive=True), gr.update(interactive=False))


OWNER = INSTRUCT_OWNER  # conversations without a character (characters arrive later)


def conversation_choices(app: App) -> list[tuple[str, str]]:
    """(title, id) pairs for the conversation picker, newest first."""
    listing = app.history.list(OWNER)
    return [(c.title or "(empty)", c.id) for c in listing.conversations]


def open_conversation(app: App, conversation_id: str) -> Conversation:
    """The conversation ``conversation_id`` if it can be read, else the newest one, else a new one."""
    if conversation_id:
        try:
            return app.history.load(OWNER, conversation_id)
        except HistoryError:
            pass
    return app.history.latest(OWNER) or app.history.new(OWNER)


def continue_conversation(app: App, conversation_id: str) -> Conversation:
    """The conversation a message goes to: ``conversation_id`` if it still exists, else a new one
    (never another conversation: a message must not land in a chat the user is not looking at)."""
    if conversation_id:
        try:
            return app.history.load(OWNER, conversation_id)
        except HistoryError:
            pass
    return app.history.new(OWNER)


def build_chat_tab(app: App, params_inputs: dict) -> tuple:
    """``params_inputs``: parameter name -> the Parameters tab's widget; their values reach ``/chat`` by name."""
    cancels: dict[str, CancelToken] = {}  # session -> its generation in flight (per UI, not module-level)

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
    with gr.Accordion("System prompt", open=False):  # sampling parameters: the Parameters tab
        system = gr.Textbox(label="System prompt", lines=2)

    def show(conv: Conversation, note: str = ""):
        """Picker, id, chatbot and note for ``conv``."""
        choices = conversation_choices(app)
        value = conv.id if any(cid == conv.id for _, cid in choices) else None
        return gr.update(choices=choices, value=value), conv.id, display_messages(conv.ui_history()), note

    def restore(conversation_id: str):
        problems = app.history.list(OWNER).problems
        note = "⚠️ " + "; ".join(str(p) for p in problems) if problems else ""
        return show(open_conversation(app, conversation_id), note)

    def respond(text, conv_id, system_text, request: gr.Request, **sampling):
        text = (text or "").strip()
        if request.session_hash in cancels:  # Enter pressed again while this tab's reply still streams
            note = "A reply is still streaming: wait for it or press Stop."
            yield gr.skip(), gr.skip(), gr.skip(), note, *BUSY, gr.skip()
            return
        if not text:
            yield gr.skip(), gr.skip(), gr.skip(), "Type a message first.", gr.skip(), gr.skip(), gr.skip()
            return
        try:
            params = params_from_form(sampling)
        except (ValueError, TypeError) as exc:
            yield gr.skip(), gr.skip(), gr.skip(), f"⚠️ {exc}", gr.skip(), gr.skip(), gr.skip()
            return
        conv = continue_conversation(app, conv_id)
        cancel = cancels[request.session_hash] = CancelToken()
        final = Reply(done=True)
        try:
            turn = chat_turn(app.engine, app.history, conv, text, params, system_text or "", cancel)
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
        picker_update, cid, shown, _ = show(conv)
        note = f"⚠️ {final.error}" if final.error else ignored_note(app, final.ignored_params)
        keep = text if final.error and not final.text else gr.skip()  # a failed message goes back to the box
        yield keep, cid, shown, note, *IDLE, picker_update

    def stop_generation(request: gr.Request):
        token = cancels.get(request.session_hash)
        if token is not None:
            token.cancel()

    def new_chat():
        return show(app.history.new(OWNER))

    def pick(conversation_id: str):
        return show(open_conversation(app, conversation_id or ""))

    def delete_chat(conversation_id: str):
        if conversation_id and app.history.exists(OWNER, conversation_id):
            app.history.delete(OWNER, conversation_id)
        return show(open_conversation(app, ""), "Deleted (moved to the trash folder).")

    shown = [picker, conversation_id, chatbot, error]
    inputs = [message, conversation_id, system]
    outputs = [message, conversation_id, chatbot, error, send, stop, picker]
    message.submit(respond, inputs, outputs, api_name="chat", concurrency_limit=None, inputs_kwargs=params_inputs)
    send.click(respond, inputs, outputs, api_name=False, concurrency_limit=None, inputs_kwargs=params_inputs)
    stop.click(stop_generation, None, None, api_name="stop", concurrency_limit=None, queue=False)
    new.click(new_chat, None, shown, api_name=False)
    chatbot.clear(new_chat, None, shown, api_name=False)  # the chatbot's own bin icon starts afresh too
    picker.input(pick, picker, shown, api_name=False)
    delete.click(delete_chat, conversation_id, shown, api_name=False)
    return restore, conversation_id, shown  # the page's load event restores the conversation
