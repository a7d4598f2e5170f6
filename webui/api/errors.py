"""Failures as HTTP: the one place a typed error becomes a status code and OpenAI's error JSON.

The chat core and the loaders raise typed errors (:mod:`backends.base`: ``ModelNotFound``, ``ModelNotLoaded``,
``PromptTooLong``, ``Busy``, ``BadRequest`` …); a reply that failed carries its exception in
``Reply.failure``. The status is chosen by the exception's type, never by the wording of its message, and the
message reaches the client unchanged.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from backends.base import (
    BadRequest,
    Busy,
    GenerationError,
    ModelCrashed,
    ModelLoadError,
    ModelNotFound,
    ModelNotLoaded,
    PromptTooLong,
)
from webui.api.auth import error_body_for
from webui.api.types import ApiError

# Most specific first: the first class the failure is an instance of decides (status, OpenAI error code).
STATUS: tuple[tuple[type[BaseException], int, str | None], ...] = (
    (PromptTooLong, 400, "context_length_exceeded"),
    (ModelNotFound, 404, "model_not_found"),
    (ModelNotLoaded, 503, "model_not_loaded"),
    (Busy, 503, "busy"),
    (BadRequest, 400, None),
    (ModelCrashed, 500, "model_crashed"),
    (ModelLoadError, 500, "model_load_failed"),
    (GenerationError, 400, None),  # a loader's refusal of what was asked (a grammar that does not parse …)
    (ValueError, 400, None),  # a template that cannot render, a value out of range …
)


def status_of(failure: BaseException | None) -> tuple[int, str | None]:
    """(HTTP status, OpenAI error code) for a failure; an untyped one (None) is the request's fault (400),
    anything unexpected is ours (500)."""
    if failure is None:
        return 400, None
    if isinstance(failure, ApiError):
        return failure.status, failure.code
    for kind, status, code in STATUS:
        if isinstance(failure, kind):
            return status, code
    return 500, None


def error_response(
    status: int, message: str, code: str | None = None, param: str | None = None, path: str = ""
) -> JSONResponse:
    """The error as JSON in the shape ``path``'s clients read (Anthropic's under /v1/messages, else OpenAI's)."""
    return JSONResponse(error_body_for(path, status, message, code, param), status_code=status)


def install_error_handlers(server: FastAPI) -> None:
    """OpenAI-shaped errors (Anthropic-shaped under /v1/messages) for what the routes raise and for bodies FastAPI
    cannot read."""

    @server.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        response = error_response(exc.status, exc.message, exc.code, exc.param, request.url.path)
        response.headers.update(exc.headers)
        return response

    @server.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors, path = exc.errors(), request.url.path
        if any(e.get("type") == "json_invalid" for e in errors):
            return error_response(400, "the request body is not valid JSON", "invalid_json", path=path)
        first = errors[0] if errors else {}
        if tuple(first.get("loc", ())) == ("body",):
            return error_response(400, "the request body must be a JSON object", "invalid_request", path=path)
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = f"{where}: {first.get('msg', 'invalid value')}" if where else first.get("msg", "invalid request")
        return error_response(400, message, "invalid_request", where or None, path)
