"""What the Model tab shows and does, as plain functions (the Gradio layer in webui/ui/model_tab.py only wires them).

Model → its quantizations → the loaders that can load the chosen one → that loader's settings form, filled
from its defaults, the command line and what was saved for the model; Load / Unload / Reload / Save.
"""

from __future__ import annotations

import html
import queue
import threading
from dataclasses import dataclass
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from backends.base import LoadSettings, ModelLoadError
from backends.remote import parse_remote_path
from webui.access import ADMIN_REFUSAL, is_ui_admin, logins_configured
from webui.models.catalog import Catalog, Variant, loader_options, natural_loader, variant_report
from webui.models.memory import available_memory
from webui.models.hub import provenance
from webui.models.install import EXTRAS, install
from webui.models.report import panel_lines
from webui.models.settings import (
    UNSAFE_SETTINGS,
    SettingField,
    build_settings,
    save_settings,
    setting_fields,
    settings_values,
)
from webui.paths import UnsafeName

if TYPE_CHECKING:
    from webui.app import App


def model_choices(catalog: Catalog) -> list[str]:
    return [m.name for m in catalog.models()]


def variant_choices(catalog: Catalog, model: str) -> list[tuple[str, str]]:
    """(label, variant name) for a model's quantizations; the label leads with what the file says it is."""
    found = [m for m in catalog.models() if m.name == model]
    if not found:
        return []
    return [(_variant_label(v), v.name) for v in found[0].variants]


def _variant_label(v: Variant) -> str:
    if v.error:
        return f"⚠️ unreadable — {v.name}"
    return f"{v.quantization or '?'} ({v.kind}) — {v.name}"


def loader_choices(app: App, catalog: Catalog, variant: str) -> tuple[list[tuple[str, str]], str | None]:
    """(label, loader name) for every loader that recognises the variant, and the one to pick by default
    (the one saved for this model if it is still usable, else the natural one)."""
    hit = catalog.find(variant) if variant else None
    if hit is None:
        return [], None
    options = loader_options(app.registry, hit[1].path)
    labels = [(o.name if not o.unavailable else f"{o.name} (unavailable: {o.unavailable})", o.name) for o in options]
    saved = app.saved_settings_for(hit[1].path)
    usable = {o.name for o in options if not o.unavailable}
    if saved is not None and saved.loader in usable:
        return labels, saved.loader
    return labels, natural_loader(hit[1], options)


def all_fields(app: App) -> dict[str, SettingField]:
    """Every settings field of every registered loader, by name (the tab makes one widget per name)."""
    found: dict[str, SettingField] = {}
    for name in app.registry.names():
        for f in setting_fields(app.registry.get(name).settings_type):
            found.setdefault(f.name, f)
    return found


def form_values(app: App, catalog: Catalog, loader: str | None, variant: str) -> dict[str, object]:
    """The chosen loader's fields, filled: the settings the variant is loaded with now (if it is the loaded
    one, with this loader), else loader defaults, then --n-ctx/--threads, then what was saved."""
    if not loader or loader not in app.registry.names():
        return {}
    hit = catalog.find(variant) if variant else None
    loaded = app.engine.loaded
    if hit is not None and loaded is not None and loaded.path == hit[1].path and loaded.loader.name == loader:
        return settings_values(loaded.settings)  # a new tab shows what runs now, not what the server started with
    saved = app.saved_settings_for(hit[1].path) if hit else None
    use = saved.settings if saved is not None and saved.loader == loader else None
    try:
        return settings_values(app.load_settings_for(loader, use))
    except ValueError:
        return settings_values(app.load_settings_for(loader))


def _admin(app: App, admin: bool | None) -> bool:
    """The caller's word (the UI handler knows who asked), else what an anonymous request would be."""
    return is_ui_admin(app.settings, None) if admin is None else admin


def settings_from_form(app: App, loader: str, values: dict[str, object], admin: bool | None = None) -> LoadSettings:
    """The loader's settings from the form. Unless an admin asks (webui/access.py), the settings that let a
    model run code (UNSAFE_SETTINGS) are the command line's whatever the form sends."""
    fields = {f.name for f in setting_fields(app.registry.get(loader).settings_type)}
    chosen = {k: v for k, v in values.items() if k in fields}
    if not _admin(app, admin):
        chosen.update({k: getattr(app.settings, k) for k in UNSAFE_SETTINGS if k in fields})
    return build_settings(app.registry.get(loader).settings_type, chosen)


def locked(app: App, name: str) -> bool:
    """Whether the form shows ``name`` read-only (a code-running setting, unless every user is an admin)."""
    return name in UNSAFE_SETTINGS and not (app.settings.loopback and not logins_configured(app.settings))


def info_markdown(app: App, catalog: Catalog, variant: str, n_ctx: int | None) -> str:
    hit = catalog.find(variant) if variant else None
    if hit is None:
        return ""
    if hit[1].kind == "remote":
        return remote_markdown(app, hit[1])
    report = variant_report(hit[1], app.registry, int(n_ctx or app.settings.n_ctx), available_memory())
    if report["error"]:
        return f"⚠️ **{hit[1].name}** cannot be read: {report['error']}"
    lines = panel_lines(report)
    loaded = app.engine.resident_info(hit[1].path)
    if loaded is not None and "inglenook.extra_buffer_types" in loaded.metadata:
        # what the load chose for llama.cpp's extra buffer types (AMX, repacking) and why (webui/hardware.py)
        lines.append(f"extra buffer types (this load): {loaded.metadata['inglenook.extra_buffer_types']}")
    return "\n".join(f"- {line}" for line in lines) + provenance_markdown(hit[1].path)


def remote_markdown(app: App, variant: Variant) -> str:
    """A remote model's panel: where it is served (never the key) and, once loaded, what the server said."""
    name = variant.name.split("/", 1)[0]
    try:
        remote = app.remotes.get(name)
    except ValueError as exc:
        return f"⚠️ {exc}"
    lines = [f"{variant.name} — served by remote **{remote.name}** at `{remote.url}`",
             f"kind: {remote.kind}; prompts: {'the server’s chat template' if remote.chat else 'rendered here'}",
             f"API key: {'yes' if remote.api_key else 'no'}", "runs on the remote server: no local memory needed"]
    loaded = app.engine.resident_info(variant.path)
    if loaded is not None:
        lines.append(f"loaded: context {loaded.context_length}, kind {loaded.metadata.get('remote.kind', '?')}")
    return "\n".join(f"- {line}" for line in lines)


def provenance_markdown(path: Path) -> str:
    """For a model downloaded from the hub: where from, its licence and its card (kept beside it)."""
    source = provenance(path)
    if not source:
        return ""
    card = source.get("card", "").strip()
    if card.startswith("---"):
        card = card.split("\n---", 1)[-1].lstrip("-\n")
    licence_file = " (full text in its `.hub/LICENSE`)" if source.get("license_file") else ""
    return (f"\n\n**Downloaded from [{source.get('repo')}]({source.get('url')})** · licence: "
            f"**{source.get('license') or 'not stated'}**{licence_file}\n\n<details><summary>Model card</summary>"
            f"\n\n{card[:6000] or '(none)'}\n\n</details>")  # fmt: skip


def load(
    app: App, catalog: Catalog, typed: str, variant: str, loader: str | None, values: dict, admin: bool | None = None
) -> str:
    """Load the chosen variant (or what was typed in the model box) with the form's settings; a status line.
    Only an admin may name a path outside the models folder."""
    hit = catalog.find(variant) if variant else None
    # the chosen quantization wins when the model box names its model or is empty (after an Unload)
    spec = variant if hit is not None and (not typed or hit[0].name == typed) else typed
    admin = _admin(app, admin)
    try:
        settings = settings_from_form(app, loader, values, admin) if loader and spec == variant else None
        app.load_model(spec or None, loader=loader if spec == variant else None,
                       allow_paths=admin, settings=settings)  # fmt: skip
    except (ModelLoadError, UnsafeName, ValueError) as exc:
        return f"⚠️ {exc}"
    info = app.engine.info
    return f"Loaded {info.name} with {info.loader} in {app.engine.loaded.load_s:.1f} s (context {info.context_length})."


def unload(app: App) -> str:
    if app.engine.info is None:
        return "No model is loaded."
    name = app.engine.info.name
    app.engine.unload()
    return f"Unloaded {name}; its memory is free."


def reload(app: App, loader: str | None, values: dict, admin: bool | None = None) -> str:
    loaded = app.engine.loaded
    if loaded is None:
        return "⚠️ no model is loaded, so there is nothing to reload"
    try:
        same = loader == loaded.loader.name
        settings = settings_from_form(app, loaded.loader.name, values, _admin(app, admin)) if same else None
        info = app.engine.reload(settings)
    except (ModelLoadError, ValueError) as exc:
        return f"⚠️ {exc}"
    return f"Reloaded {info.name} (context {info.context_length})."


def save(app: App, catalog: Catalog, variant: str, loader: str | None, values: dict, admin: bool | None = None) -> str:
    hit = catalog.find(variant) if variant else None
    if hit is None or not loader:
        return "⚠️ pick a model, a quantization and a loader first"
    try:
        path = save_settings(
            app.settings.user_data, hit[1].name, loader, settings_from_form(app, loader, values, admin)
        )
    except (UnsafeName, ValueError, OSError) as exc:
        return f"⚠️ {exc}"
    return f"Saved: {hit[1].name} will load with {loader} and these settings ({path.name})."


@dataclass
class PanelState:
    """What the model controls show for the server's state now (a new tab, a refresh, after a load)."""

    model: str | None
    models: list[str]
    variant: str | None
    variants: list[tuple[str, str]]
    loader: str | None
    loaders: list[tuple[str, str]]
    values: dict[str, object]
    info: str


def panel_state(app: App, catalog: Catalog, keep: tuple[str | None, str | None] = (None, None)) -> PanelState:
    """The model, quantization, loader, settings form and info of what is loaded now; with nothing loaded, the
    (model, variant) in ``keep`` stay chosen (so Load after Unload loads what the form shows)."""
    model, variant = current(app, catalog)
    if model is None:
        model, variant = keep
        if variant and catalog.find(variant) is None:
            model, variant = None, None
    loaders, loader = loader_choices(app, catalog, variant or "")
    values = form_values(app, catalog, loader, variant or "")
    return PanelState(
        model=model, models=model_choices(catalog), variant=variant,
        variants=variant_choices(catalog, model or ""), loader=loader, loaders=loaders, values=values,
        info=info_markdown(app, catalog, variant or "", values.get("n_ctx")),
    )  # fmt: skip


def current(app: App, catalog: Catalog) -> tuple[str | None, str | None]:
    """(model, variant) of what is loaded now, for the dropdowns."""
    loaded = app.engine.loaded
    if loaded is None:
        return None, None
    remote = parse_remote_path(loaded.path)  # a remote model goes by NAME/model-id, not by its path's last part
    hit = catalog.find(loaded.model.info.name if remote else loaded.path.name)
    return (hit[0].name, hit[1].name) if hit else (loaded.path.name, None)


# -- loaders whose packages are missing ----------------------------------------------------------------------


def missing_loaders(app: App) -> list[tuple[str, str]]:
    """(name, why unavailable) of every registered loader the Install button can install."""
    found = []
    for name in app.registry.names():
        problem = app.registry.get(name).available()
        if problem is not None and name in EXTRAS:
            found.append((name, problem))
    return found


def loaders_markdown(app: App) -> str:
    missing = missing_loaders(app)
    if not missing:
        return "Every loader Inglenook ships is installed."
    lines = [f"- **{name}** is not installed: {problem}" for name, problem in missing]
    return "\n".join(lines)


def install_loader(app: App, name: str, admin: bool | None = None) -> Iterator[str]:
    """Install ``name``'s packages, yielding pip's output so far (the last lines) as it runs; the loader is usable
    at the end, without a restart. Admins only (webui/access.py): an install runs pip as the server's user."""
    if not _admin(app, admin):
        yield f"⚠️ installing loaders is refused: {ADMIN_REFUSAL}"
        return
    if name not in EXTRAS:
        yield f"⚠️ no install is known for {name!r}"
        return
    lines: queue.Queue[str | None] = queue.Queue()
    result: list[str | None] = []

    def work() -> None:
        try:
            result.append(install(name, app.registry, lines.put))
        except Exception as exc:  # shown to the user, not raised into Gradio
            result.append(f"{type(exc).__name__}: {exc}")
        lines.put(None)

    threading.Thread(target=work, name=f"install-{name}", daemon=True).start()
    shown: list[str] = []
    while (line := lines.get()) is not None:
        shown = [*shown[-30:], line]
        yield "```\n" + "\n".join(shown) + "\n```"
    problem = result[0] if result else "the install ended without a result"
    tail = "```\n" + "\n".join(shown[-10:]) + "\n```\n"
    yield tail + (f"⚠️ {name} is still unavailable: {problem}" if problem else f"✅ {name} is installed and ready.")


def status_line(app: App) -> str:
    """The page's one compact line about the loaded model: name · loader · context · memory."""
    info = app.engine.info
    if info is None:
        return "**No model loaded** · open the Model tab to load one"
    rss = app.engine.rss()
    parts = [f"**{html.escape(info.name)}**", info.loader, info.quantization or "",
             f"context {info.context_length}", f"memory {rss / 2**30:.1f} GiB" if rss else ""]  # fmt: skip
    return " · ".join(p for p in parts if p)


def load_progress_text(fraction: float | None) -> str:
    """The load bar's words: "Loading… 42 %" once the loader reported how far it is, else "Loading…"."""
    if fraction is None:
        return "Loading…"
    return f"Loading… {round(min(max(fraction, 0.0), 1.0) * 100)} %"
