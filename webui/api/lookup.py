"""What a generation request names, found for every endpoint (OpenAI, Anthropic Messages, Responses): the model
(loaded if needed, waiting its turn; admins only when an admin key is set), its load settings, and the preset.

Shared by :mod:`webui.api.routes`, :mod:`webui.api.anthropic` and :mod:`webui.api.responses`, so a ``model`` or
``preset`` field means the same on each.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from backends.base import LoadSettings, ModelInfo, ModelLoadError
from webui.api.auth import is_admin
from webui.api.types import ApiError
from webui.app import App
from webui.models.folder import list_models
from webui.paths import UnsafeName, safe_name
from webui.presets import Preset, PresetError

# load settings the API may never set (trust_remote_code, allow_pickle, file locations, ...)
NOT_SETTABLE = ("remote_code", "pickle", "safetensors", "unsafe", "path", "dir", "file")


def catalog(app: App) -> dict[str, Path]:
    """Model id → path: every model in the models folder (loaded or not), and any loaded from elsewhere."""
    ids = {model_id(e.name): e.path for e in list_models(app.settings.models_dir)}
    ids.update(app.remotes.models())  # NAME/model-id of the user's remotes (webui/models/remotes.py)
    for loaded in app.engine.resident:
        ids.setdefault(loaded.model.info.name, loaded.path)
    return ids


def resolve(app: App, name: str | None) -> Path | None:
    """The path of the model ``name`` (None: no name given); 404 if there is none."""
    if name is None or not name.strip():
        return None
    ids = catalog(app)
    if name in ids and "/" in name:  # a remote's NAME/model-id, exactly as listed (never a path or a URL)
        return ids[name]
    try:
        safe_name(name, "model")
    except UnsafeName as exc:
        raise ApiError(400, str(exc), "invalid_model_name", "model") from None
    path = ids.get(name) or ids.get(model_id(name))
    if path is None:
        names = ", ".join(sorted(ids)) or "none"
        raise ApiError(404, f"model {name!r} not found; available: {names}", "model_not_found", "model")
    return path


def require_model_name(app: App, name: str | None) -> str | None:
    """``name``, or a 400 as OpenAI answers when it is missing and ``--require-model`` is on (by default a request
    without ``model`` uses the active model)."""
    if app.settings.require_model and (name is None or not name.strip()):
        raise ApiError(400, "you must provide a model parameter (this server runs with --require-model)",
                       "model_required", "model")  # fmt: skip
    return name


async def use_model(app: App, name: str | None, request: Request) -> ModelInfo:
    """The model a request names, loaded if needed (waiting its turn; admins only when a key is set)."""
    path = resolve(app, require_model_name(app, name))
    if path is None:
        if app.engine.info is None:
            raise ApiError(503, "no model is loaded; name one in the model field", "model_not_loaded")
        return app.engine.info
    info = app.engine.resident_info(path)
    if info is None:
        if not is_admin(request_headers(request), app.settings):
            raise ApiError(403, f"model {name!r} is not loaded and loading models needs the admin key",
                           "admin_key_required", "model")  # fmt: skip
        info = await load(app, path, None, {})
    if info.metadata.get("embedding_only"):  # refused before it would become the active model
        raise ApiError(400, f"{info.name} is an embedding model: use /v1/embeddings", param="model")
    return info


async def load(app: App, path: Path, loader_name: str | None, overrides: dict) -> ModelInfo:
    try:
        loader, settings = load_settings(app, path, loader_name, overrides)
        return await run_in_threadpool(
            app.engine.load, path, loader, settings, preempt=False, reuse=not overrides and not loader_name
        )
    except ModelLoadError as exc:
        raise ApiError(500, str(exc), "model_load_failed") from None


def find_preset(app: App, name: str | None) -> Preset | None:
    """The preset a request names (None if it names none); 404 if there is no such preset."""
    if name is None:
        return None
    try:
        return app.presets.load(name)
    except UnsafeName as exc:
        raise ApiError(400, str(exc), param="preset") from None
    except PresetError as exc:
        missing = app.presets.source(name) is None
        raise ApiError(404 if missing else 400, str(exc), "preset_not_found" if missing else None, "preset") from None


def load_settings(app: App, path: Path, loader_name: str | None, overrides: dict) -> tuple[str, LoadSettings]:
    """The loader and its settings as the UI would load ``path`` (saved for the model, layered over the command
    line's: App.choose_loader), with ``overrides`` from the request (never unsafe ones)."""
    loader_name, settings = app.choose_loader(path, loader_name)
    known = {f.name: f for f in fields(settings)}
    for key, value in overrides.items():
        if any(word in key.lower() for word in NOT_SETTABLE):
            raise ApiError(403, f"setting {key!r} cannot be set through the API", "setting_not_allowed", key)
        if key not in known:
            raise ApiError(400, f"{loader_name} has no setting {key!r} (it has: {', '.join(known)})", param=key)
        default = getattr(settings, key)
        if type(value) is not type(default) and not (isinstance(default, float) and type(value) is int):
            raise ApiError(400, f"setting {key!r} must be a {type(default).__name__}", param=key)
        setattr(settings, key, value)
    return loader_name, settings


def request_headers(request: Request) -> dict[str, str]:
    return {k.lower(): v for k, v in request.headers.items()}


def model_id(name: str) -> str:
    return name[: -len(".gguf")] if name.lower().endswith(".gguf") else name
