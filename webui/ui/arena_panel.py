"""The chat tab's "Ask two models" accordion: widgets wired to :mod:`webui.chat.arena` (the logic lives there)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import gradio as gr

from backends.base import CancelToken
from webui.access import is_ui_admin
from webui.app import App
from webui.chat import arena
from webui.chat.conversation import HistoryError
from webui.chat.reply import format_stats
from webui.chat.session import form_params


@dataclass
class ArenaWiring:
    """What the panel borrows from the chat tab: the message box, the turn's context widgets
    (conversation id, system prompt, start reply with, mode, character), a function that finds the
    conversation and the turn's options from them, and how the chat shows a conversation (``show``, whose
    values go to ``shown``)."""

    message: gr.Textbox
    context: list
    locate: Callable  # (conv_id, system, prefix, mode, character) -> (Conversation, TurnOptions)
    show: Callable  # (conversation, note, system, prefix, n, mode, character) -> values for ``shown``
    shown: list
    params_inputs: dict


def _side(contender: arena.Contender | None, label: str) -> tuple[str, str]:
    """A side's reply (with its model as a heading) and its stats line, as Markdown."""
    if contender is None:
        return f"**{label}**", ""
    head = f"**{label}: {contender.model}**\n\n"
    if contender.error:
        return head + f"⚠️ {contender.error}", ""
    stats = format_stats(contender.usage, contender.finish_reason) if contender.done else "…"
    return head + (contender.text or "…"), stats


def build_arena_panel(app: App, wiring: ArenaWiring) -> None:
    """The accordion: two model pickers, "Ask both", Stop, the replies side by side with stats, Keep A / Keep B."""
    names = arena.choices(app)
    running: dict[str, CancelToken] = {}  # browser session -> the round it runs, for Stop (this page's, not global)
    with gr.Accordion("Ask two models", open=False, elem_id="arena"):
        gr.Markdown(
            "Sends the message in the box to model A, then to model B (one at a time: each is loaded in turn, "
            "then the model loaded now comes back). Both replies are saved as versions of one reply; keep one.",
        )
        with gr.Row():
            model_a = gr.Dropdown(names, value=names[0] if names else None, label="Model A", elem_id="arena-a",
                                  allow_custom_value=True)  # fmt: skip
            model_b = gr.Dropdown(names, value=names[1] if len(names) > 1 else None, label="Model B",
                                  elem_id="arena-b", allow_custom_value=True)  # fmt: skip
            ask = gr.Button("Ask both", variant="primary", elem_id="arena-ask")
            stop = gr.Button("Stop", variant="stop", elem_id="arena-stop")
        status = gr.Markdown("", elem_id="arena-status")
        with gr.Row(equal_height=True):
            with gr.Column():
                reply_a = gr.Markdown("**A**", elem_id="arena-reply-a")
                stats_a = gr.Markdown("", elem_id="arena-stats-a")
                keep_a = gr.Button("Keep A", interactive=False, elem_id="arena-keep-a")
            with gr.Column():
                reply_b = gr.Markdown("**B**", elem_id="arena-reply-b")
                stats_b = gr.Markdown("", elem_id="arena-stats-b")
                keep_b = gr.Button("Keep B", interactive=False, elem_id="arena-keep-b")
        last = gr.State(None)  # the finished round (per browser session), for Keep A / Keep B

    def view(current: arena.Round) -> tuple:
        sides = [*current.sides, None, None][:2]
        (ra, sa), (rb, sb) = _side(sides[0], "A"), _side(sides[1], "B")
        note = f"⚠️ {current.error}" if current.error else current.status
        can = [bool(current.done and s is not None and s.version is not None) for s in sides]
        return note, ra, sa, rb, sb, gr.update(interactive=can[0]), gr.update(interactive=can[1])

    def ask_both(text, a, b, conv_id, system_text, prefix, chosen_mode, key, request: gr.Request, **sampling):
        keep_shown = tuple(gr.skip() for _ in wiring.shown)
        if not (text or "").strip() or not a or not b:
            yield "Type a message and pick two models.", *(gr.skip(),) * 6, None, gr.skip(), *keep_shown
            return
        try:
            params = form_params(sampling)
        except ValueError as exc:
            yield f"⚠️ {exc}", *(gr.skip(),) * 6, None, gr.skip(), *keep_shown
            return
        conv, options = wiring.locate(conv_id, system_text, prefix, chosen_mode, key)
        admin = is_ui_admin(app.settings, getattr(request, "username", None))
        token = running[request.session_hash] = CancelToken()
        current = arena.Round()
        try:
            rounds = arena.ask_two(app, conv, text, (a, b), params, replace(options, cancel=token), allow_paths=admin)
            for current in rounds:
                if not current.done:
                    yield *view(current), None, gr.skip(), *keep_shown
        finally:
            if running.get(request.session_hash) is token:
                del running[request.session_hash]
        n = sampling.get("max_new_tokens")
        shown = wiring.show(conv, "", system_text, prefix, n, chosen_mode, key)
        yield *view(current), current, "" if current.saved else gr.skip(), *shown

    def keeper(index: int):
        def keep(current, conv_id, system_text, prefix, chosen_mode, key, n):
            if current is None or current.sides[index].version is None:
                return "Nothing to keep: ask both first.", *(gr.skip() for _ in wiring.shown)
            conv, _ = wiring.locate(conv_id, system_text, prefix, chosen_mode, key)
            try:
                arena.keep(app, conv, current.sides[index])
            except HistoryError as exc:
                return f"⚠️ {exc}", *(gr.skip() for _ in wiring.shown)
            kept = current.sides[index]
            return f"Kept {'AB'[index]} ({kept.model}).", *wiring.show(
                conv, "", system_text, prefix, n, chosen_mode, key
            )

        return keep

    sides = [status, reply_a, stats_a, reply_b, stats_b, keep_a, keep_b]
    ask.click(
        ask_both, [wiring.message, model_a, model_b, *wiring.context], [*sides, last, wiring.message, *wiring.shown],
        api_name=False, inputs_kwargs=wiring.params_inputs,
    )  # fmt: skip

    def stop_round(request: gr.Request) -> str | dict:
        """Stop the reply streaming now and skip the side not asked yet; what came is kept as that side's reply."""
        token = running.get(request.session_hash)
        if token is None:
            return gr.skip()
        token.cancel()
        return "stopping…"

    stop.click(stop_round, None, status, api_name=False)
    for picker in (model_a, model_b):  # models added since the page was built (a quantize, a download)
        picker.focus(lambda: gr.update(choices=arena.choices(app)), None, picker, api_name=False)
    max_tokens = wiring.params_inputs["max_new_tokens"]
    for index, button in enumerate((keep_a, keep_b)):
        button.click(keeper(index), [last, *wiring.context, max_tokens], [status, *wiring.shown], api_name=False)
