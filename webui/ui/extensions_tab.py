"""The Extensions tab, the extensions' own tabs and their blocks under the chat. Widgets only: the work is
done by :mod:`webui.extensions.host`, :mod:`webui.extensions.install` and :mod:`webui.restart`."""

from __future__ import annotations

import gradio as gr

from webui.access import NotAdmin, require_ui_admin
from webui.app import App
from webui.extensions.host import ExtensionError
from webui.extensions.install import RIGHTS_WARNING, install
from webui.hookspecs import Setting
from webui.restart import restart_later

COLUMNS = ["name", "version", "status", "source", "description", "error"]


def table(app: App) -> list[list[str]]:
    return [[str(row[c]) for c in COLUMNS] for row in app.extensions.rows()]


def build_extension_blocks(app: App) -> dict[str, gr.Column]:
    """Each active extension's ``ui(where="chat")`` block, under the chat (call inside the Chat tab)."""
    blocks = {}
    for ext in app.extensions.list():
        if app.extensions.has_hook(ext, "ui"):
            with gr.Column(elem_id=f"extension-block-{ext.name}") as column:
                app.extensions.run_ui(ext, "chat")
            if column.children:
                blocks[ext.name] = column
            else:
                column.visible = False
    return blocks


def toggle(app: App, name: str, on: bool) -> tuple[str, bool]:
    """Enable or disable ``name`` now; (message, whether a restart is needed to show its interface)."""
    if not name:
        return "Pick an extension first.", False
    try:
        ext = app.extensions.enable(name) if on else app.extensions.disable(name)
    except ExtensionError as exc:
        return f"⚠️ {exc}", False
    if on and ext.error:
        return f"⚠️ {name} cannot run: {ext.error}", False
    if not on:
        return f"Disabled {name}: its hooks have stopped and its interface is hidden.", False
    if app.extensions.has_hook(ext, "ui") and not ext.ui_built:
        return f"Enabled {name}: its hooks act now; restart to apply its interface.", True
    return f"Enabled {name}.", False


def build_extensions_tab(app: App, chat_blocks: dict[str, gr.Column]) -> None:
    """The extensions' own tabs, then the Extensions tab that manages them."""
    host = app.extensions
    tabs: dict[str, gr.Tab] = {}
    for ext in host.list():
        if host.has_hook(ext, "ui"):
            with gr.Tab(ext.name.replace("_", " ").title(), elem_id=f"extension-tab-{ext.name}") as tab:
                host.run_ui(ext, "tab")
            if tab.children:
                tabs[ext.name] = tab
            else:
                tab.visible = False
    shown = {**{f"tab:{n}": t for n, t in tabs.items()}, **{f"chat:{n}": b for n, b in chat_blocks.items()}}

    with gr.Tab("Extensions", elem_id="extensions-tab"):
        gr.Markdown(f"⚠️ {RIGHTS_WARNING}")
        listing = gr.Dataframe(
            value=lambda: table(app), headers=COLUMNS, interactive=False, wrap=True, elem_id="extensions-table"
        )
        problems = gr.Markdown(lambda: "\n".join(f"⚠️ {p}" for p in host.problems))
        with gr.Row():
            names = [e.name for e in host.list()]
            choice = gr.Dropdown(choices=names, value=None, label="Extension", scale=4, elem_id="extension-choice")
            enable = gr.Button("Enable", scale=1, elem_id="extension-enable")
            disable = gr.Button("Disable", scale=1, elem_id="extension-disable")
        message = gr.Markdown("", elem_id="extension-message")
        restart = gr.Button("Restart Inglenook", variant="stop", visible=False, elem_id="extension-restart")
        revision = gr.State(0)  # bumped by enable/disable: an enabled extension's settings become known

        # The form is emptied before another extension's is drawn: drawn over the old one, a widget of the old
        # form (a number box) was handed the new form's value (a text) first, and the browser warned.
        form_of = gr.Textbox(visible=False, elem_id="extension-form-of")  # the extension whose form is shown
        choice.change(lambda: "", None, form_of, api_name=False, queue=False).then(
            lambda name: name, choice, form_of, api_name=False, queue=False
        )

        @gr.render(inputs=[form_of, revision], triggers=[form_of.change, revision.change])
        def settings_form(name: str | None, _revision: int):
            ext = next((e for e in host.list() if e.name == name), None)
            if ext is None or not ext.setting_specs:
                return
            gr.Markdown(f"**Settings of {ext.name}**")
            widgets = [_widget(spec, ext.values.get(spec.name, spec.default)) for spec in ext.setting_specs]
            save = gr.Button("Save settings", size="sm", elem_id="extension-save-settings")

            def save_settings(request: gr.Request | None, *values):
                """Settings feed the extension's code and prompts: admins only, checked whatever the page showed."""
                try:
                    require_ui_admin(app.settings, getattr(request, "username", None), "changing extension settings")
                except NotAdmin as exc:
                    return f"⚠️ {exc}"
                specs = ext.setting_specs
                problems = host.set_settings(ext.name, {s.name: v for s, v in zip(specs, values, strict=True)})
                return "⚠️ " + "; ".join(problems) if problems else f"Saved the settings of {ext.name}."

            save.click(save_settings, widgets, message, api_name=False)

        with gr.Accordion("Install an extension", open=False):
            source = gr.Textbox(
                label="Git URL, folder or pip requirement", placeholder="https://github.com/…/my-extension.git",
                elem_id="extension-source",
            )  # fmt: skip
            ask = gr.Button("Install…", elem_id="extension-install")
            with gr.Group(visible=False) as confirm_box:
                gr.Markdown(f"**Install it?** {RIGHTS_WARNING}")
                with gr.Row():
                    confirm = gr.Button("Yes, install", variant="primary", elem_id="extension-install-confirm")
                    cancel = gr.Button("Cancel", elem_id="extension-install-cancel")

    visible_outputs = list(shown.values())

    def visibility() -> list:
        return [gr.update(visible=host.get(key.split(":", 1)[1]).active) for key in shown]

    def on_toggle(request: gr.Request | None, name: str, rev: int, on: bool):
        try:  # enabling runs the extension's code: admins only, checked here whatever the page showed
            require_ui_admin(app.settings, getattr(request, "username", None), "enabling or disabling extensions")
        except NotAdmin as exc:
            return table(app), f"⚠️ {exc}", gr.update(visible=False), rev, *visibility()
        text, needs_restart = toggle(app, name, on)
        return table(app), text, gr.update(visible=needs_restart), rev + 1, *visibility()

    def on_enable(request: gr.Request, name: str, rev: int):
        return on_toggle(request, name, rev, True)

    def on_disable(request: gr.Request, name: str, rev: int):
        return on_toggle(request, name, rev, False)

    outputs = [listing, message, restart, revision, *visible_outputs]
    enable.click(on_enable, [choice, revision], outputs, api_name=False)
    disable.click(on_disable, [choice, revision], outputs, api_name=False)

    def on_install(request: gr.Request, text: str):
        """The confirmation is only in the page: the admin check and the source's check happen here."""
        try:
            require_ui_admin(app.settings, getattr(request, "username", None), "installing extensions")
            if not isinstance(text, str) or not text.strip():
                raise ValueError("give a Git URL, a folder or a pip requirement to install")
            installed = install(host, text)
        except (NotAdmin, ValueError) as exc:  # InstallError, ManifestError: nothing was installed
            return gr.update(visible=False), f"⚠️ {exc}", gr.skip(), gr.skip(), gr.skip()
        for name in installed:
            host.enable(name)
        needs = any(host.has_hook(host.get(n), "ui") for n in installed)
        note = " Restart to apply its interface." if needs else ""
        names = [e.name for e in host.list()]
        return (
            gr.update(visible=False), f"Installed and enabled {', '.join(installed)}.{note}", table(app),
            gr.update(visible=needs), gr.update(choices=names, value=installed[0]),
        )  # fmt: skip

    ask.click(lambda t: gr.update(visible=bool((t or "").strip())), source, confirm_box, api_name=False)
    cancel.click(lambda: gr.update(visible=False), None, confirm_box, api_name=False)
    confirm.click(on_install, source, [confirm_box, message, listing, restart, choice], api_name=False)

    def on_restart(request: gr.Request):
        try:
            require_ui_admin(app.settings, getattr(request, "username", None), "restarting Inglenook")
        except NotAdmin as exc:
            return f"⚠️ {exc}"
        restart_later(app.close)
        return "Restarting… this page reconnects in a few seconds (reload it if it does not)."

    restart.click(on_restart, None, message, api_name=False).then(None, js=RECONNECT_JS)
    del problems


# After Restart: wait until the server has gone and answers again, then reload the page (a page built by the
# new process, with the extension's interface); gives up after two minutes and says so.
RECONNECT_JS = """async () => {
    const up = async () => { try { return (await fetch('healthz', {cache: 'no-store'})).ok; } catch { return false; } };
    const sleep = ms => new Promise(r => setTimeout(r, ms));
    const until = Date.now() + 120000;
    let seenDown = false;
    while (Date.now() < until) {
        const ok = await up();
        if (!ok) seenDown = true;
        else if (seenDown) { location.reload(); return; }
        await sleep(500);
    }
    alert('Inglenook did not come back within two minutes: reload this page when it runs again.');
}"""


def _widget(spec: Setting, value):
    label = spec.label or spec.name
    if spec.type is bool:
        return gr.Checkbox(value=value, label=label, info=spec.help or None, interactive=True)
    if spec.choices:
        return gr.Dropdown(list(spec.choices), value=value, label=label, info=spec.help or None, interactive=True)
    if spec.type in (int, float):
        if spec.minimum is not None and spec.maximum is not None:
            step = 1 if spec.type is int else (spec.maximum - spec.minimum) / 100
            return gr.Slider(spec.minimum, spec.maximum, value=value, step=step, label=label, interactive=True)
        return gr.Number(value=value, label=label, precision=0 if spec.type is int else None, interactive=True)
    return gr.Textbox(value=value, label=label, lines=spec.lines, info=spec.help or None, interactive=True)
