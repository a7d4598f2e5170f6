"""What the API's routes depend on, as FastAPI dependencies: the App a server serves, the record of finished
generations, and the admin check for routes that load or unload models."""

from __future__ import annotations

from fastapi import Request

from webui.api.auth import is_admin
from webui.api.stream import Generations
from webui.api.types import ApiError
from webui.app import App


def get_app(request: Request) -> App:
    """The App this server serves (set by :func:`webui.api.routes.install_api`)."""
    return request.app.state.inglenook_app


def generations(request: Request) -> Generations:
    """This server's record of finished API generations."""
    return request.app.state.inglenook_generations


def require_admin(request: Request) -> None:
    """403 unless the request may load and unload models (everyone, unless an admin key is configured)."""
    headers = {k.lower(): v for k, v in request.headers.items()}
    if not is_admin(headers, get_app(request).settings):
        raise ApiError(403, "loading and unloading models needs the admin key", "admin_key_required")
