"""The Gradio Blocks for the whole UI: a header about the loaded model, the model picker, the Chat tab."""

from __future__ import annotations

import html

import gradio as gr

from backends.base import ModelInfo
from webui.app import App
from webui.models.folder import DEFAULT_NOTE, default_model_license, is_default_model
from webui.ui.characters_tab import build_characters_tab
from webui.ui.chat_tab import build_chat_tab
from webui.ui.compare_tab import build_compare_tab
from webui.ui.extensions_tab import build_extension_blocks, build_extensions_tab
from webui.ui.model_tab import build_model_tab
from webui.ui.notebook_tab import build_notebook_tab
from webui.ui.parameters_tab import ParametersTab

CSS = """
.inglenook-stats { font-size: 0.8em; opacity: 0.7; }
#model-status p { margin: 0; }
"""


def describe(info: ModelInfo | None) -> str:
    """One line about the loaded model for the header."""
    if info is None:
        return "**No model loaded.** Pick one below and press Load."
    size = f"{info.file_size / 2**20:.0f} MB" if info.file_size else ""
    facts = ", ".join(x for x in (info.architecture, info.quantization, size, f"context {info.context_length}") if x)
    return f"**Model:** {html.escape(info.name)} — {info.loader} ({facts})"


def build_ui(app: App) -> gr.Blocks:
    with gr.Blocks(title="Inglenook", analytics_enabled=False) as blocks:  # nothing leaves the machine
        gr.Markdown("# Inglenook")
        header = gr.Markdown(describe(app.engine.info), elem_id="model-header")
        default_note = gr.Markdown(DEFAULT_NOTE, visible=_is_default(app), elem_id="default-note")
        with gr.Accordion(
            "Licence of the embedded default model (Gemma terms)", open=False, visible=_is_default(app)
        ) as lic:
            gr.Textbox(_licence_text(), show_label=False, interactive=False, lines=12, max_lines=12)
        status, load, unload, reload, save, model_choice = build_model_tab(app, lambda a: _header_updates(a))
        parameters = ParametersTab(app)
        with gr.Tab("Chat"):
            chat = build_chat_tab(app, parameters.inputs)
            extension_blocks = build_extension_blocks(app)
        with gr.Tab("Parameters"):
            filtered = parameters.render()
        with gr.Tab("Characters"):
            build_characters_tab(app)
        with gr.Tab("Notebook"):
            notebook_restore = build_notebook_tab(app, parameters.inputs)
        with gr.Tab("Compare"):
            build_compare_tab(app)
        build_extensions_tab(app, extension_blocks)
        # a refreshed page (or one reopened after a restart) shows its conversation again
        blocks.load(chat.restore, chat.restore_inputs, chat.restore_outputs, api_name=False)
        blocks.load(*notebook_restore, api_name=False)  # the notebook's saved text
        after = [header, default_note, lic, model_choice, status]
        changed = (chat.model_changed, None, chat.model_outputs)  # the chat's template and rule defaults follow
        marked = (parameters.mark, filtered, list(parameters.inputs.values()))  # what the new loader ignores
        load[0].click(load[1], load[2], after, api_name="load_model").then(*changed, api_name=False).then(
            *marked, api_name=False
        )
        unload[0].click(unload[1], None, after, api_name="unload_model").then(*changed, api_name=False)
        reload[0].click(reload[1], reload[2], after, api_name="reload_model").then(*changed, api_name=False).then(
            *marked, api_name=False
        )
        save[0].click(save[1], save[2], status, api_name="save_model_settings")
        blocks.load(*marked, api_name=False)
    return blocks


def _header_updates(app: App) -> list:
    default = _is_default(app)
    return [describe(app.engine.info), gr.update(visible=default), gr.update(visible=default)]


def _is_default(app: App) -> bool:
    loaded = app.engine.loaded
    return loaded is not None and is_default_model(loaded.path)


def _licence_text() -> str:
    try:
        return default_model_license()
    except (ImportError, OSError) as exc:
        return f"(licence text unavailable: {exc})"
