"""The Gradio Blocks for the whole UI: a header about the loaded model, the model picker, the Chat tab."""

from __future__ import annotations

import html

import gradio as gr

from backends.base import ModelInfo, ModelLoadError
from webui.app import App
from webui.models import DEFAULT_NOTE, default_model_license, is_default_model, list_models
from webui.paths import UnsafeName
from webui.ui.characters_tab import build_characters_tab
from webui.ui.chat_tab import build_chat_tab
from webui.ui.extensions_tab import build_extension_blocks, build_extensions_tab
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
        with gr.Row():
            model_choice = gr.Dropdown(
                choices=_model_names(app), value=_current_name(app), label="Model", allow_custom_value=True,
                scale=6, elem_id="model-choice",
            )  # fmt: skip
            load = gr.Button("Load", scale=1, elem_id="load-model")
        status = gr.Markdown("", elem_id="model-status")
        parameters = ParametersTab(app)
        with gr.Tab("Chat"):
            chat = build_chat_tab(app, parameters.inputs)
            extension_blocks = build_extension_blocks(app)
        with gr.Tab("Parameters"):
            filtered = parameters.render()
        with gr.Tab("Characters"):
            build_characters_tab(app)
        with gr.Tab("Notebook"):
            build_notebook_tab(app, parameters.inputs)
        build_extensions_tab(app, extension_blocks)
        # a refreshed page (or one reopened after a restart) shows its conversation again
        blocks.load(chat.restore, chat.restore_inputs, chat.restore_outputs, api_name=False)

        def load_model(name: str):
            try:
                app.load_model(name or None, allow_paths=app.settings.loopback)
                message = f"Loaded {app.engine.info.name}."
            except (ModelLoadError, UnsafeName) as exc:
                message = f"⚠️ {exc}"
            default = _is_default(app)
            return (
                describe(app.engine.info), gr.update(visible=default), gr.update(visible=default),
                gr.update(choices=_model_names(app), value=_current_name(app)), message,
            )  # fmt: skip

        load.click(
            load_model, model_choice, [header, default_note, lic, model_choice, status], api_name="load_model"
        ).then(chat.model_changed, None, chat.model_outputs, api_name=False).then(  # its template and rule defaults
            parameters.mark, filtered, list(parameters.inputs.values()), api_name=False
        )
        blocks.load(parameters.mark, filtered, list(parameters.inputs.values()), api_name=False)
    return blocks


def _is_default(app: App) -> bool:
    loaded = app.engine.loaded
    return loaded is not None and is_default_model(loaded.path)


def _current_name(app: App) -> str | None:
    loaded = app.engine.loaded
    return loaded.path.name if loaded else None


def _model_names(app: App) -> list[str]:
    return [entry.name for entry in list_models(app.settings.models_dir)]


def _licence_text() -> str:
    try:
        return default_model_license()
    except (ImportError, OSError) as exc:
        return f"(licence text unavailable: {exc})"
