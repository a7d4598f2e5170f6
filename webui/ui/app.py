"""The Gradio Blocks for the whole UI, chat first: a sidebar of conversations, one compact line about the loaded
model, then the Chat tab filling the window (the input at the bottom, focused), and the Model tab holding the
full model controls."""

from __future__ import annotations

from datetime import datetime

import gradio as gr

from webui.app import App
from webui.chat.modes import character_of
from webui.chat.session import ChatSessions
from webui.chat.sidebar import GROUPS, avatar_style, sidebar_groups
from webui.models import panel as core
from webui.models.folder import DEFAULT_NOTE, default_model_license, is_default_model
from webui.ui.characters_tab import build_characters_tab
from webui.ui.chat_tab import FOLLOWS_ID, ChatTab, build_chat_tab, chat_owner
from webui.ui.compare_tab import build_compare_tab
from webui.ui.extensions_tab import build_extension_blocks, build_extensions_tab
from webui.ui.model_tab import LOADING_BAR, build_model_tab, loading_bar
from webui.ui.notebook_tab import build_notebook_tab
from webui.ui.parameters_tab import ParametersTab

CSS = """
.inglenook-stats { font-size: 0.8em; opacity: 0.7; }
#model-status p { margin: 0; }
#topbar { align-items: center; gap: 0.75rem; flex-wrap: nowrap; min-height: 0; }
#topbar .prose, #topbar p { margin: 0; }
#topbar > #app-title { flex: 0 0 auto !important; width: auto !important; min-width: 0 !important; }
#topbar > #model-header { flex: 1 1 0% !important; }
#app-title h1 { margin: 0; font-size: 1.25rem; }
#model-header { font-size: 0.9em; min-width: 0 !important; }
#model-header p { white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
/* chat first: the chat takes the window's height, the input stays on the first screen */
#chatbot { height: calc(100dvh - 320px) !important; min-height: 220px; }
.inglenook-loading { height: 6px; border-radius: 3px; overflow: hidden; background: var(--border-color-primary); }
.inglenook-loading-done { height: 100%; background: var(--color-accent); transition: width 0.3s; }
.inglenook-loading-text { font-size: 0.85em; margin-top: 2px; }
.inglenook-loading-bar { height: 100%; width: 35%; background: var(--color-accent);
  animation: inglenook-slide 1.2s ease-in-out infinite; }
@keyframes inglenook-slide { from { margin-left: -35%; } to { margin-left: 100%; } }
#conversation-list .wrap { flex-direction: column; gap: 2px; }
#conversation-list label { width: 100%; }
.conversation-group label { display: flex; align-items: center; gap: 0.4rem; width: 100%; }
#sidebar-rename { align-items: end; }
#undo-delete-row { align-items: center; }
@media (max-width: 640px) {
  #app-title { display: none; }
  #topbar { padding-left: 1.75rem; }  /* clear of the sidebar's toggle */
  #chatbot { height: calc(100dvh - 300px) !important; min-height: 200px; }
}
"""

# Once the page has loaded (Gradio mounts its parts after the document's own load): the chat input takes the
# focus, a narrow screen starts with the sidebar closed (the chat first), and buttons showing only a sign get
# a name for screen readers.
# Gradio 6.31's status tracker counts a pending event's seconds in a requestAnimationFrame loop, and a tracker
# removed while pending (the page's own "Loading…" one, at every load) never ends its loop: an idle page drew
# 60 frames a second (measured: 0.07 CPU-seconds a second of Chromium, idle; every frame is also taken from
# llama.cpp while a reply streams). The tracker shows tenths of a second, so such callbacks (they read
# performance.now() and divide by 1e3) run on a 100 ms timer instead, which draws no frame for a lost one;
# every other callback is the browser's as before. In <head>: it must be in place before Gradio's modules load.
PAGE_HEAD = r"""<script>
(() => {
    const frame = window.requestAnimationFrame.bind(window), unframe = window.cancelAnimationFrame.bind(window);
    const timers = new Set(), counter = /performance\.now\(\)\s*-[^;]*\/\s*1e3/;
    window.requestAnimationFrame = (callback) => {
        if (typeof callback !== 'function' || !counter.test(String(callback))) return frame(callback);
        const id = setTimeout(() => { timers.delete(id); callback(performance.now()); }, 100);
        timers.add(id);
        return id;
    };
    window.cancelAnimationFrame = (id) => (timers.delete(id) ? clearTimeout(id) : unframe(id));
})();
</script>"""

PAGE_JS = """() => {
    const names = {'version-prev': 'Previous version', 'version-next': 'Next version'};
    for (const [id, name] of Object.entries(names)) {
        const b = document.querySelector('#' + id); if (b) b.setAttribute('aria-label', name);
    }
    const side = document.querySelector('#sidebar');
    if (side && side.classList.contains('open') && window.innerWidth < 768) {
        side.querySelector('.toggle-button')?.click();
    }
    const box = document.querySelector('#chat-input textarea'); if (box) box.focus();
}"""


def describe(app: App) -> str:
    """The compact status line about the loaded model (model · loader · quantization · context · memory)."""
    return core.status_line(app)


def build_ui(app: App, sessions: ChatSessions) -> gr.Blocks:
    """The page. ``sessions``: the chat's replies in flight, shared with the server's live channel."""
    with gr.Blocks(title="Inglenook", analytics_enabled=False, fill_height=True) as blocks:  # nothing leaves
        sidebar = gr.Sidebar(label="Conversations", elem_id="sidebar")  # the chat tab puts its pickers first
        with gr.Row(elem_id="topbar"):
            gr.Markdown("# Inglenook", elem_id="app-title", scale=0)
            header = gr.Markdown(describe(app), elem_id="model-header")
        parameters = ParametersTab(app)
        with gr.Tab("Chat", elem_id="chat-tab"):
            chat = build_chat_tab(app, parameters.inputs, sessions, sidebar, parameters.preset)
            extension_blocks = build_extension_blocks(app)
        with sidebar:  # below the chat's mode, character and conversation pickers
            search = gr.Textbox(
                label="Search conversations", placeholder="Search titles…", lines=1, elem_id="conversation-search"
            )
            lists = {
                g: gr.Radio([], label=g, visible=False, elem_id=f"conversations-{g.lower()}",
                            elem_classes="conversation-group")
                for g in GROUPS
            }  # fmt: skip
            avatar = gr.HTML("", elem_id="conversation-avatar", padding=False)  # each row's picture (a style)
        with gr.Tab("Model", elem_id="model-tab"):
            default_note = gr.Markdown(DEFAULT_NOTE, visible=_is_default(app), elem_id="default-note")
            with gr.Accordion(
                "Licence of the embedded default model (Gemma terms)", open=False, visible=_is_default(app)
            ) as lic:
                gr.Textbox(_licence_text(), show_label=False, interactive=False, lines=12, max_lines=12)
            model = build_model_tab(app, lambda a: _header_updates(a))
        # mounted (hidden) with the page: values a reload or a picked conversation sets land on drawn widgets,
        # and what reads them (the preset line) reads those, not the page's values as built
        with gr.Tab("Parameters", render_children=True) as parameters_tab:
            filtered = parameters.render()
        with gr.Tab("Characters"):
            characters_fill = build_characters_tab(app)
        with gr.Tab("Notebook"):
            notebook_restore = build_notebook_tab(app, parameters.inputs)
        with gr.Tab("Compare"):
            build_compare_tab(app)
        build_extensions_tab(app, extension_blocks)
        # a refreshed page (or one reopened after a restart) shows its conversation again
        quiet = {"api_name": False, "show_progress": "hidden"}
        blocks.load(chat.restore, chat.restore_inputs, chat.restore_outputs, api_name=False).then(
            *parameters.state_refresh, **quiet
        )
        blocks.load(*notebook_restore, api_name=False)  # the notebook's saved text
        blocks.load(*characters_fill, api_name=False)  # the picked character's form, filled
        heads = [header, default_note, lic]
        # ... and the model as it is now, with the settings it runs with (not the page as built at start-up)
        blocks.load(lambda: _header_updates(app), None, heads, api_name=False, queue=False)
        blocks.load(model.refresh, model.refresh_outputs[:2], model.refresh_outputs, api_name=False)
        blocks.load(None, js=PAGE_JS)
        # from now on the page reads growing replies from the live channel
        blocks.load(None, None, chat.channel, js="() => 'live'", api_name=False)
        after = [*heads, model.model, model.status]
        changed = (chat.model_changed, None, chat.model_outputs)  # the chat's template and rule defaults follow
        marked = (parameters.mark, filtered, list(parameters.inputs.values()))  # what the new loader ignores
        bars = [model.progress, model.progress_timer]  # the bar, and the timer that follows the load with it
        bar_on = (lambda: (gr.update(visible=True, value=LOADING_BAR), gr.update(active=True)), None, bars)
        bar_off = (lambda: (gr.update(visible=False, value=""), gr.update(active=False)), None, bars)
        model.progress_timer.tick(lambda: loading_bar(app.engine.load_progress), None, model.progress,
                                  api_name=False, show_progress="hidden")  # fmt: skip
        (load, do_load, load_inputs), (reload, do_reload, reload_inputs) = model.load, model.reload
        load.click(*bar_on, api_name=False, queue=False).then(do_load, load_inputs, after, api_name="load_model").then(
            *bar_off, api_name=False, queue=False
        ).then(*changed, api_name=False).then(*marked, api_name=False)
        model.unload[0].click(model.unload[1], None, after, api_name="unload_model").then(*changed, api_name=False)
        reload.click(*bar_on, api_name=False, queue=False).then(
            do_reload, reload_inputs, after, api_name="reload_model"
        ).then(*bar_off, api_name=False, queue=False).then(*changed, api_name=False).then(*marked, api_name=False)
        model.save[0].click(model.save[1], model.save[2], model.status, api_name="save_model_settings")
        blocks.load(*marked, api_name=False)
        _wire_sidebar(app, chat, search, lists, avatar, parameters.state_refresh)
        parameters_tab.select(*parameters.state_refresh, **quiet)  # the line as the tab shows it, at the latest
    return blocks


def _wire_sidebar(
    app: App, chat: ChatTab, search: gr.Textbox, lists: dict[str, gr.Radio], avatar: gr.HTML, state_refresh: tuple
) -> None:
    """The grouped list follows the chat's conversation (its rows with the character's picture and message
    count, the title box with its title); picking an entry opens it with its saved settings."""
    radios = list(lists.values())
    mode, character = chat.context[3], chat.context[4]

    def listing(query: str, current: str, chosen_mode: str, key: str | None) -> list:
        owner = chat_owner(app, chosen_mode, key)
        summaries = app.history.list(owner).conversations
        groups = sidebar_groups(summaries, datetime.now().astimezone(), query or "")
        shown = next((s for s in summaries if s.id == current), None)
        picture = character_of(owner)
        thumb = app.characters.thumbnail(picture) if picture else None
        return [
            *(gr.update(choices=items, value=current if any(cid == current for _, cid in items) else None,
                        visible=bool(items))
              for items in groups.values()),
            shown.title if shown is not None else "",
            avatar_style(thumb.read_bytes() if thumb else None),
        ]  # fmt: skip

    inputs = [search, chat.conversation_id, mode, character]
    outputs = [*radios, chat.title, avatar]
    for trigger in (search.change, chat.listed.change):
        trigger(listing, inputs, outputs, api_name=False, queue=False, show_progress="hidden")
    chat.conversation_id.change(listing, inputs, outputs, api_name=False, queue=False, show_progress="hidden",
                                trigger_mode=FOLLOWS_ID)  # fmt: skip
    for radio in radios:  # .select, not .input: a Radio also sends .input when the list is redrawn under it, and
        # a redraw landing after Clear (the list still marking the old conversation) reopened it (a message sent
        # then went into the conversation just cleared)
        radio.select(chat.pick, [radio, *chat.context], chat.shown, api_name=False).then(
            *chat.settings_applied, api_name=False
        ).then(*state_refresh, api_name=False, show_progress="hidden")


def _header_updates(app: App) -> list:
    default = _is_default(app)
    return [describe(app), gr.update(visible=default), gr.update(visible=default)]


def _is_default(app: App) -> bool:
    loaded = app.engine.loaded
    return loaded is not None and is_default_model(loaded.path)


def _licence_text() -> str:
    try:
        return default_model_license()
    except (ImportError, OSError) as exc:
        return f"(licence text unavailable: {exc})"
