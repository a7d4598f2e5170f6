"""The Chat tab: widgets wired to :mod:`webui.chat`. No logic a test would want lives here."""

from __future__ import annotations

import gradio as gr

from backends.base import CancelToken, SamplingParams
from webui.app import App
from webui.chat import Reply, default_params, format_stats, stream_chat, throttle


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


def build_chat_tab(app: App) -> None:
    cancels: dict[str, CancelToken] = {}  # session -> its generation in flight (per UI, not module-level)
    defaults = default_params()

    history = gr.State([])
    chatbot = gr.Chatbot(label="Chat", height=520, elem_id="chatbot", buttons=["copy"], feedback_options=None)
    error = gr.Markdown("", elem_id="chat-error")
    with gr.Row():
        message = gr.Textbox(
            placeholder="Type a message and press Enter", show_label=False, scale=8, elem_id="chat-input", lines=1
        )
        send = gr.Button("Send", variant="primary", scale=1, elem_id="send")
        stop = gr.Button("Stop", variant="stop", scale=1, elem_id="stop", interactive=False)
    clear = gr.Button("New chat", size="sm", elem_id="new-chat")
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

    def respond(text, hist, system_text, n, temp, tp, tk, mp, rp, sd, request: gr.Request):
        text = (text or "").strip()
        if request.session_hash in cancels:  # Enter pressed again while this tab's reply still streams
            yield gr.skip(), gr.skip(), gr.skip(), "A reply is still streaming: wait for it or press Stop.", *BUSY
            return
        if not text:
            yield gr.skip(), hist, display_messages(hist), "Type a message first.", gr.skip(), gr.skip()
            return
        params = SamplingParams(
            max_new_tokens=int(n), temperature=temp, top_p=tp, top_k=int(tk), min_p=mp,
            repetition_penalty=rp, seed=int(sd if sd is not None else -1),
        )  # fmt: skip
        hist = [*hist, {"role": "user", "content": text}]
        messages = ([{"role": "system", "content": system_text}] if (system_text or "").strip() else []) + [
            {"role": m["role"], "content": m["content"]} for m in hist
        ]
        cancel = cancels[request.session_hash] = CancelToken()
        final = Reply(done=True)
        try:
            yield "", hist, display_messages(hist, Reply()), "", *BUSY
            replies = stream_chat(app.engine, messages, params, cancel)
            for reply in throttle(replies, app.settings.stream_interval_s):
                final = reply
                if not reply.done:
                    yield gr.skip(), hist, display_messages(hist, reply), gr.skip(), gr.skip(), gr.skip()
        finally:  # also when the page goes away mid-reply: stop generating for nobody
            cancels.pop(request.session_hash, None)
            if not final.done:
                cancel.cancel()
        if final.error and not final.text:
            yield text, hist[:-1], display_messages(hist[:-1]), f"⚠️ {final.error}", *IDLE
            return
        hist = [
            *hist,
            {"role": "assistant", "content": final.text, "stats": format_stats(final.usage, final.finish_reason)},
        ]
        note = f"⚠️ {final.error}" if final.error else ""
        yield gr.skip(), hist, display_messages(hist), note, *IDLE

    def stop_generation(request: gr.Request):
        token = cancels.get(request.session_hash)
        if token is not None:
            token.cancel()

    def new_chat():
        return [], [], ""

    inputs = [message, history, system, max_tokens, temperature, top_p, top_k, min_p, rep, seed]
    outputs = [message, history, chatbot, error, send, stop]
    message.submit(respond, inputs, outputs, api_name="chat", concurrency_limit=None)
    send.click(respond, inputs, outputs, api_name=False, concurrency_limit=None)
    stop.click(stop_generation, None, None, api_name="stop", concurrency_limit=None, queue=False)
    clear.click(new_chat, None, [history, chatbot, error], api_name=False)
    chatbot.clear(new_chat, None, [history, chatbot, error], api_name=False)  # the chatbot's own bin icon
