"""The Notebook tab: a big text box a (base) model continues raw. Widgets wired to :mod:`webui.chat.notebook`."""

from __future__ import annotations

import gradio as gr

from backends.base import CancelToken
from webui.app import App
from webui.chat.notebook import NotebookStore, generate, token_count
from webui.chat.reply import Reply, format_stats, throttle
from webui.presets import PresetError, params_from_form

# (Generate, Stop) while the model writes and while idle
BUSY = (gr.update(interactive=False), gr.update(interactive=True))
IDLE = (gr.update(interactive=True), gr.update(interactive=False))


def build_notebook_tab(app: App, params_inputs: dict) -> tuple:
    """``params_inputs``: the Parameters tab's widgets by name, so chat and notebook sample alike.

    Returns the page-load event (function, inputs, outputs) that brings the saved text back.
    """
    store = NotebookStore(app.settings.user_data)
    cancels: dict[str, CancelToken] = {}  # session -> its generation in flight

    # A fixed height (it scrolls inside): a box that grew while the text streams would move Stop away from
    # under the pointer at the moment it is clicked. It opens locked: the page-load event unlocks it with the
    # saved text, so nothing typed before that (on a busy machine, seconds) is overwritten by the restore.
    text = gr.Textbox(
        value="", interactive=False, lines=22, max_lines=22, autoscroll=True, show_label=False, elem_id="notebook-text",
        placeholder="Write the beginning of a text; the model continues it (no chat format is added).",
    )  # fmt: skip
    with gr.Row():
        run = gr.Button("Generate", variant="primary", scale=1, elem_id="notebook-generate")
        stop = gr.Button("Stop", variant="stop", scale=1, interactive=False, elem_id="notebook-stop")
        tokens = gr.Markdown("", elem_id="notebook-tokens")
    stats = gr.Markdown("", elem_id="notebook-stats")

    def write(current: str, request: gr.Request, **sampling):
        if request.session_hash in cancels:
            yield gr.skip(), gr.skip(), "The model is still writing: wait or press Stop.", *BUSY
            return
        try:
            params = params_from_form(sampling)
        except (PresetError, TypeError) as exc:
            yield gr.skip(), gr.skip(), f"⚠️ {exc}", gr.skip(), gr.skip()
            return
        cancel = cancels[request.session_hash] = CancelToken()
        final = Reply(done=True)
        try:
            yield gr.skip(), gr.skip(), "", *BUSY
            for reply in throttle(
                generate(app.chat, store, current or "", params, cancel), app.settings.stream_interval_s
            ):
                final = reply
                if not reply.done:
                    yield reply.text, gr.skip(), gr.skip(), gr.skip(), gr.skip()
        finally:
            cancels.pop(request.session_hash, None)
            if not final.done:
                cancel.cancel()
        line = f"⚠️ {final.error}" if final.error else format_stats(final.usage, final.finish_reason)
        yield final.text, token_count(app.engine, final.text), line, *IDLE

    def stop_writing(request: gr.Request):
        token = cancels.get(request.session_hash)
        if token is not None:
            token.cancel()

    def restore():
        """The saved text, and the box unlocked for typing."""
        return gr.update(value=store.load(), interactive=True)

    def keep(current: str):
        store.save(current or "")
        return token_count(app.engine, current or "")

    run.click(
        write, [text], [text, tokens, stats, run, stop], api_name="notebook", concurrency_limit=None,
        inputs_kwargs=params_inputs,
    )  # fmt: skip
    stop.click(stop_writing, None, None, api_name="notebook_stop", queue=False, concurrency_limit=None)
    text.blur(keep, text, tokens, api_name=False)
    return restore, None, [text]
