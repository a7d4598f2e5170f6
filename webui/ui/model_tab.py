"""The Model tab: model, quantization, loader, the loader's settings, Load/Unload/Reload/Save and the info panel.

Widgets only: every decision is a function of :mod:`webui.models.panel`, tested without a browser. One widget
per settings field name across all registered loaders; choosing a loader shows its fields and hides the rest.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass

import gradio as gr

from webui.access import is_ui_admin
from webui.app import App
from webui.models import panel as core
from webui.models.catalog import Catalog
from webui.ui.download_panel import build_download_panel


def _widget(field, interactive: bool):
    if field.kind == "bool":
        return gr.Checkbox(
            value=field.default, label=field.label, interactive=interactive, elem_id=f"setting-{field.name}"
        )
    if field.kind == "choice":
        return gr.Dropdown(
            choices=field.choices, value=field.default, label=field.label, elem_id=f"setting-{field.name}"
        )
    if field.kind in ("int", "float"):
        return gr.Number(value=field.default, label=field.label, precision=0 if field.kind == "int" else None,
                         elem_id=f"setting-{field.name}")  # fmt: skip
    return gr.Textbox(value=field.default, label=field.label, elem_id=f"setting-{field.name}")


def loading_bar(fraction: float | None = None) -> str:
    """The load bar: how far the load is ("Loading… 42 %", as the loader reports it through the worker), or
    a sliding bar until the loader has said anything."""
    text = html.escape(core.load_progress_text(fraction))
    if fraction is None:
        inner, value = '<div class="inglenook-loading-bar"></div>', ""
    else:
        percent = round(min(max(fraction, 0.0), 1.0) * 100)
        inner = f'<div class="inglenook-loading-done" style="width: {percent}%"></div>'
        value = f' aria-valuemin="0" aria-valuemax="100" aria-valuenow="{percent}"'
    return (
        f'<div class="inglenook-loading" role="progressbar" aria-label="Loading the model" aria-busy="true"{value}>'
        f'{inner}</div><div class="inglenook-loading-text">{text}</div>'
    )


LOADING_BAR = loading_bar()


@dataclass
class ModelTab:
    """What the page wires to the model controls: the buttons' (button, handler, inputs) and a refresh."""

    status: gr.Markdown
    model: gr.Dropdown
    progress: gr.HTML
    progress_timer: gr.Timer  # active while a load runs: the bar follows the engine's load progress
    load: tuple
    unload: tuple
    reload: tuple
    save: tuple
    refresh: Callable
    refresh_outputs: list


def build_model_tab(app: App, on_change) -> ModelTab:
    """The model controls. ``on_change(app)`` gives the header updates after a load/unload."""
    catalog = Catalog(app.settings.models_dir, app.remotes)
    fields = core.all_fields(app)
    state0 = core.panel_state(app, catalog)
    model0, variant0, loader0, values0 = state0.model, state0.variant, state0.loader, state0.values
    with gr.Row():
        model = gr.Dropdown(choices=state0.models, value=model0, label="Model", allow_custom_value=True,
                            scale=4, elem_id="model-choice")  # fmt: skip
        variant = gr.Dropdown(
            choices=state0.variants, value=variant0, label="Quantization",
            allow_custom_value=True, scale=4, elem_id="variant-choice",
        )  # fmt: skip
        loader = gr.Dropdown(
            choices=state0.loaders, value=loader0, label="Loader", scale=2, allow_custom_value=True,
            elem_id="loader-choice",
        )  # fmt: skip
    with gr.Row():
        load = gr.Button("Load", variant="primary", scale=1, elem_id="load-model")
        unload = gr.Button("Unload", scale=1, elem_id="unload-model")
        reload = gr.Button("Reload", scale=1, elem_id="reload-model")
        save = gr.Button("Save settings for this model", scale=2, elem_id="save-model-settings")
    progress = gr.HTML("", visible=False, elem_id="model-progress")
    progress_timer = gr.Timer(0.5, active=False)
    status = gr.Markdown("", elem_id="model-status")
    with gr.Accordion("Load settings", open=False, elem_id="load-settings"):
        widgets = {}
        with gr.Row():
            for name, f in fields.items():
                w = _widget(f, not core.locked(app, name))
                if name in values0:
                    w.value = values0[name]
                w.visible = name in values0 or not values0
                widgets[name] = w
    with gr.Accordion("Model info", open=False, elem_id="model-info-box"):
        info = gr.Markdown(state0.info, elem_id="model-info")
    missing0 = [name for name, _ in core.missing_loaders(app)]
    with gr.Accordion("Install loaders", open=False, visible=bool(missing0), elem_id="install-loaders"):
        missing_md = gr.Markdown(core.loaders_markdown(app), elem_id="missing-loaders")
        with gr.Row():
            to_install = gr.Dropdown(choices=missing0, value=missing0[0] if missing0 else None, label="Loader",
                                     scale=3, elem_id="install-loader-choice")  # fmt: skip
            install = gr.Button("Install", scale=1, elem_id="install-loader")
        install_log = gr.Markdown("", elem_id="install-loader-log")
    names = list(widgets)
    inputs = [model, variant, loader, *widgets.values()]

    def values_of(args) -> dict:
        return dict(zip(names, args, strict=True))

    def form_updates(loader_name, variant_name) -> list:
        values = core.form_values(app, catalog, loader_name, variant_name or "")
        return [gr.update(visible=n in values, value=values.get(n)) if n in values else gr.update(visible=False)
                for n in names]  # fmt: skip

    def pick_model(model_name):
        choices = core.variant_choices(catalog, model_name or "")
        first = choices[0][1] if choices else None
        return gr.update(choices=choices, value=first)

    def pick_variant(variant_name):
        labels, natural = core.loader_choices(app, catalog, variant_name or "")
        n_ctx = core.form_values(app, catalog, natural, variant_name or "").get("n_ctx")
        # the info follows the variant even when the loader stays the same (its change event does not fire)
        return gr.update(choices=labels, value=natural), core.info_markdown(app, catalog, variant_name or "", n_ctx)

    def pick_loader(loader_name, variant_name):
        values = core.form_values(app, catalog, loader_name, variant_name or "")
        return [*form_updates(loader_name, variant_name), core.info_markdown(app, catalog, variant_name or "",
                                                                             values.get("n_ctx"))]  # fmt: skip

    def after(message):
        m, v = core.current(app, catalog)
        # with nothing loaded (an Unload, a failed first load) the picker keeps its choice for the next Load
        return [*on_change(app), gr.update(value=m) if m is not None else gr.skip(), message]

    def refresh(model_name, variant_name):
        """The controls for the server's state now: a new tab or a refresh shows the current model and the
        settings it runs with, not the page as it was built at start-up."""
        state = core.panel_state(app, catalog, keep=(model_name, variant_name))
        shown = [gr.update(visible=n in state.values, value=state.values.get(n)) if n in state.values
                 else gr.update(visible=not state.values) for n in names]  # fmt: skip
        return [
            gr.update(choices=state.models, value=state.model), gr.update(choices=state.variants, value=state.variant),
            gr.update(choices=state.loaders, value=state.loader), *shown, state.info,
        ]  # fmt: skip

    def admin(request: gr.Request | None) -> bool:
        """Decided server-side for whoever sent the event (``request`` first: Gradio fills it in)."""
        return is_ui_admin(app.settings, getattr(request, "username", None))

    def do_load(request: gr.Request, model_name, variant_name, loader_name, *args):
        return after(core.load(app, catalog, model_name or "", variant_name or "", loader_name, values_of(args),
                               admin=admin(request)))  # fmt: skip

    def do_unload():
        return after(core.unload(app))

    def do_reload(request: gr.Request, model_name, variant_name, loader_name, *args):
        return after(core.reload(app, loader_name, values_of(args), admin=admin(request)))

    def do_save(request: gr.Request, model_name, variant_name, loader_name, *args):
        return core.save(app, catalog, variant_name or "", loader_name, values_of(args), admin=admin(request))

    def refresh_info(variant_name, n_ctx):
        return core.info_markdown(app, catalog, variant_name or "", n_ctx)

    def do_install(request: gr.Request, name, variant_name):
        for text in core.install_loader(app, name or "", admin=admin(request)):
            yield text, gr.update(), gr.update(), gr.update()
        missing = [n for n, _ in core.missing_loaders(app)]
        labels, natural = core.loader_choices(app, catalog, variant_name or "")
        yield (text, core.loaders_markdown(app), gr.update(choices=missing, value=missing[0] if missing else None),
               gr.update(choices=labels, value=natural))  # fmt: skip

    install.click(do_install, [to_install, variant], [install_log, missing_md, to_install, loader], api_name=False)
    model.input(pick_model, model, variant, api_name=False)
    model.focus(lambda: gr.update(choices=core.model_choices(catalog)), None, model, api_name=False)  # new files
    build_download_panel(app, model)
    variant.change(pick_variant, variant, [loader, info], api_name=False)
    loader.change(pick_loader, [loader, variant], [*widgets.values(), info], api_name=False)
    if "n_ctx" in widgets:
        widgets["n_ctx"].change(refresh_info, [variant, widgets["n_ctx"]], info, api_name=False)
        # after a load/unload/reload (each sets the status line) the panel says what the load chose
        status.change(refresh_info, [variant, widgets["n_ctx"]], info, api_name=False)
    return ModelTab(
        status=status, model=model, progress=progress, progress_timer=progress_timer, load=(load, do_load, inputs),
        unload=(unload, do_unload),
        reload=(reload, do_reload, inputs), save=(save, do_save, inputs),
        refresh=refresh,
        refresh_outputs=[model, variant, loader, *widgets.values(), info],
    )  # fmt: skip
