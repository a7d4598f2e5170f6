"""``/v1/internal/models/download(s)``: start a hub download (SSE progress), list downloads, cancel one.

Starting and cancelling need the admin key when one is configured (like loading a model); the repo comes
from the request but the hub is the server's own configuration (``HF_ENDPOINT``), so no URL from a request
reaches the network. A client that goes away stops receiving progress; the download goes on (DELETE cancels).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from webui.api.auth import error_body, is_admin
from webui.app import App
from webui.models.downloads import DiskFull, DownloadError
from webui.models.hub import BadRepoId, GatedRepo, HubError, HubOffline, RepoNotFound, UnsafeRepoPath

PROGRESS_EVERY_S = 0.5


class DownloadRequest(BaseModel):
    model: str  # REPO[:QUANT|:FILE]
    allow_pickle: bool = False
    stream: bool = True


def _status(exc: Exception) -> tuple[int, str]:
    for kind, status, code in ((GatedRepo, 403, "gated_repo"), (HubOffline, 503, "hub_offline"),
                               (DiskFull, 507, "disk_full"), (UnsafeRepoPath, 400, "unsafe_path"),
                               (BadRepoId, 400, "invalid_repo"), (RepoNotFound, 404, "repo_not_found"),
                               (DownloadError, 400, "download_error")):  # fmt: skip
        if isinstance(exc, kind):
            return status, code
    return 502, "hub_error"


def _error(status: int, message: str, code: str) -> JSONResponse:
    return JSONResponse(error_body(status, message, code), status_code=status)


def hub_router(app: App) -> APIRouter:
    """The download routes for one App (its DownloadManager is shared with the Model tab's panel)."""
    router = APIRouter(prefix="/v1/internal/models")

    def admin(request: Request) -> bool:
        return is_admin({k.lower(): v for k, v in request.headers.items()}, app.settings)

    @router.post("/download")
    async def download(body: DownloadRequest, request: Request):
        if not admin(request):
            return _error(403, "downloading models needs the admin key", "admin_key_required")
        try:
            job = await run_in_threadpool(app.downloads.prepare, body.model, body.allow_pickle, app.settings.n_ctx)
        except (HubError, ValueError) as exc:
            status, code = _status(exc)
            return _error(status, str(exc), code)
        app.downloads.start(job)
        if not body.stream:
            return JSONResponse(job.as_dict(), status_code=202)

        async def events() -> AsyncIterator[bytes]:
            while True:
                yield f"data: {json.dumps(job.as_dict())}\n\n".encode()
                if job.finished is not None:
                    break
                if await request.is_disconnected():
                    return
                await asyncio.sleep(PROGRESS_EVERY_S)
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @router.get("/downloads")
    async def downloads() -> dict:
        return {"object": "list", "data": [j.as_dict() for j in app.downloads.jobs()]}

    @router.get("/downloads/{job_id}")
    async def one(job_id: str):
        job = app.downloads.get(job_id)
        return job.as_dict() if job else _error(404, f"no download {job_id!r}", "download_not_found")

    @router.delete("/downloads/{job_id}")
    async def cancel(job_id: str, request: Request):
        if not admin(request):
            return _error(403, "cancelling downloads needs the admin key", "admin_key_required")
        job = app.downloads.cancel(job_id)
        return job.as_dict() if job else _error(404, f"no download {job_id!r}", "download_not_found")

    return router
