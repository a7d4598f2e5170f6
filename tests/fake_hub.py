"""A local Hugging Face hub for tests: real HTTP on 127.0.0.1, real files, the endpoints ``huggingface_hub`` uses.

Endpoints: ``GET /api/models`` (search), ``GET /api/models/{owner}/{name}[/revision/{rev}]`` (model info),
``GET /api/models/{owner}/{name}/tree/{rev}`` (files with sizes and LFS sha256), ``HEAD``/``GET
/{owner}/{name}/resolve/{rev}/{path}`` (HTTP Range, ETag, X-Repo-Commit; 401/403 with ``X-Error-Code:
GatedRepo`` for a gated repo without the right token). The server counts the bytes it serves per file, so a
test can see that a resumed download fetched only the rest; a repo may serve a file slowly (to kill a
download midway) or with one byte flipped (while its tree states the true sha256).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

CHUNK = 256 * 1024


@dataclass
class FakeFile:
    source: Path | bytes
    lfs: bool = True
    corrupt_at: int | None = None  # serve this byte flipped (the tree still states the true sha256)
    _sha: str | None = None

    @property
    def size(self) -> int:
        return len(self.source) if isinstance(self.source, bytes) else self.source.stat().st_size

    @property
    def sha256(self) -> str:
        if self._sha is None:
            digest = hashlib.sha256()
            if isinstance(self.source, bytes):
                digest.update(self.source)
            else:
                with self.source.open("rb") as f:
                    while chunk := f.read(4 * 2**20):
                        digest.update(chunk)
            self._sha = digest.hexdigest()
        return self._sha

    def read(self, start: int, end: int) -> Iterator[bytes]:
        """Bytes [start, end) in chunks, with the corrupted byte flipped."""
        pos = start
        handle = None if isinstance(self.source, bytes) else self.source.open("rb")
        try:
            if handle:
                handle.seek(start)
            while pos < end:
                n = min(CHUNK, end - pos)
                data = bytearray(self.source[pos : pos + n] if handle is None else handle.read(n))
                if self.corrupt_at is not None and pos <= self.corrupt_at < pos + n:
                    data[self.corrupt_at - pos] ^= 0xFF
                yield bytes(data)
                pos += n
        finally:
            if handle:
                handle.close()


@dataclass
class FakeRepo:
    id: str
    files: dict[str, FakeFile]
    tags: list[str] = field(default_factory=list)
    license: str = "apache-2.0"
    gated: bool = False
    downloads: int = 0
    likes: int = 0
    config: dict | None = None
    gguf: dict | None = None
    delay_per_chunk: float = 0.0  # seconds slept per served chunk (to kill a download midway)
    drop_once_at: int | None = None  # cut the connection once when a response reaches this byte (a network drop)
    commit: str = ""

    def __post_init__(self) -> None:
        self.commit = self.commit or hashlib.sha1(self.id.encode()).hexdigest()


@dataclass
class FakeHub:
    """The repos and what was served (bytes per (repo, path), and requests seen)."""

    repos: dict[str, FakeRepo] = field(default_factory=dict)
    tokens: set[str] = field(default_factory=set)  # tokens with access to gated repos
    served: dict[tuple[str, str], int] = field(default_factory=dict)
    auth_seen: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def add(self, repo: FakeRepo) -> FakeRepo:
        self.repos[repo.id] = repo
        return repo

    def bytes_served(self, repo: str, path: str) -> int:
        with self.lock:
            return self.served.get((repo, path), 0)

    def reset_counts(self) -> None:
        with self.lock:
            self.served.clear()


def _info(repo: FakeRepo) -> dict:
    return {
        "id": repo.id,
        "_id": repo.commit[:24],
        "modelId": repo.id,
        "author": repo.id.split("/")[0],
        "sha": repo.commit,
        "lastModified": "2025-01-02T03:04:05.000Z",
        "createdAt": "2025-01-01T00:00:00.000Z",
        "private": False,
        "gated": "manual" if repo.gated else False,
        "disabled": False,
        "downloads": repo.downloads,
        "likes": repo.likes,
        "tags": [*repo.tags, f"license:{repo.license}"],
        "cardData": {"license": repo.license},
        "config": repo.config or {},
        "gguf": repo.gguf,
        "library_name": "transformers" if "safetensors" in repo.tags else None,
        "siblings": [{"rfilename": p} for p in repo.files],
    }


def build_app(hub: FakeHub) -> FastAPI:
    api = FastAPI()

    def denied(repo: FakeRepo, request: Request) -> Response | None:
        auth = request.headers.get("authorization", "")
        with hub.lock:
            hub.auth_seen.append(auth)
        if not repo.gated:
            return None
        token = auth.removeprefix("Bearer ").strip()
        if token in hub.tokens:
            return None
        status = 403 if token else 401
        message = f"Access to model {repo.id} is restricted. You must have access to it and be authenticated."
        return JSONResponse({"error": message}, status, headers={"X-Error-Code": "GatedRepo",
                                                                  "X-Error-Message": message})  # fmt: skip

    def find(owner: str, name: str) -> FakeRepo | None:
        return hub.repos.get(f"{owner}/{name}")

    def not_found(what: str) -> JSONResponse:
        return JSONResponse({"error": f"{what} not found"}, 404, headers={"X-Error-Code": "RepoNotFound"})

    @api.get("/api/models")
    def search(request: Request) -> list[dict]:
        q = (request.query_params.get("search") or "").lower()
        sort = request.query_params.get("sort") or "downloads"
        limit = int(request.query_params.get("limit") or 20)
        found = [r for r in hub.repos.values() if q in r.id.lower()]
        key = {"likes": lambda r: r.likes, "lastModified": lambda r: r.id}.get(sort, lambda r: r.downloads)
        found.sort(key=key, reverse=True)
        return [_info(r) for r in found[:limit]]

    @api.get("/api/models/{owner}/{name}/tree/{rev}")
    def tree(owner: str, name: str, rev: str, request: Request):
        repo = find(owner, name)
        if repo is None:
            return not_found(f"{owner}/{name}")
        entries = []
        for path, f in repo.files.items():
            entry = {"type": "file", "path": path, "size": f.size,
                     "oid": hashlib.sha1(path.encode()).hexdigest()}  # fmt: skip
            if f.lfs:
                entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": 134}
            entries.append(entry)
        return entries

    @api.get("/api/models/{owner}/{name}")
    @api.get("/api/models/{owner}/{name}/revision/{rev}")
    def model_info(owner: str, name: str, rev: str = "main"):
        repo = find(owner, name)
        return _info(repo) if repo else not_found(f"{owner}/{name}")

    @api.api_route("/{owner}/{name}/resolve/{rev}/{path:path}", methods=["GET", "HEAD"])
    def resolve(owner: str, name: str, rev: str, path: str, request: Request):
        repo = find(owner, name)
        if repo is None:
            return not_found(f"{owner}/{name}")
        if (refused := denied(repo, request)) is not None:
            return refused
        f = repo.files.get(path)
        if f is None:
            return JSONResponse({"error": "entry not found"}, 404, headers={"X-Error-Code": "EntryNotFound"})
        size = f.size
        etag = f.sha256 if f.lfs else hashlib.sha1(path.encode()).hexdigest()
        headers = {"ETag": f'"{etag}"', "X-Repo-Commit": repo.commit, "Accept-Ranges": "bytes"}
        if f.lfs:
            headers.update({"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(size)})
        start, end, status = 0, size, 200
        ranged = request.headers.get("range", "")
        if ranged.startswith("bytes="):
            first, _, last = ranged[6:].partition("-")
            start = int(first or 0)
            end = min(size, int(last) + 1) if last else size
            if start >= size:
                return Response(status_code=416, headers={"Content-Range": f"bytes */{size}"})
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        headers["Content-Length"] = str(end - start)
        if request.method == "HEAD":
            return Response(status_code=status, headers=headers)

        def body() -> Iterator[bytes]:
            pos = start
            for chunk in f.read(start, end):
                if repo.delay_per_chunk:
                    time.sleep(repo.delay_per_chunk)
                if repo.drop_once_at is not None and pos <= repo.drop_once_at < pos + len(chunk):
                    repo.drop_once_at = None
                    raise ConnectionAbortedError("the fake hub drops this connection (a network drop)")
                with hub.lock:
                    hub.served[(repo.id, path)] = hub.served.get((repo.id, path), 0) + len(chunk)
                pos += len(chunk)
                yield chunk

        return StreamingResponse(body(), status_code=status, headers=headers, media_type="application/octet-stream")

    return api


@contextlib.contextmanager
def serve_hub(hub: FakeHub) -> Iterator[FakeHub]:
    """Run the fake hub on a free port in a thread of this process; ``hub.url`` is its endpoint."""
    config = uvicorn.Config(build_app(hub), host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="fake-hub", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the fake hub did not start")
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    hub.url = f"http://127.0.0.1:{port}"
    try:
        yield hub
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def card(repo: str, license: str) -> bytes:
    return f"---\nlicense: {license}\n---\n# {repo}\n\nA model card for tests.\n".encode()


def gguf_repo(repo_id: str, gguf: Path, **kw) -> FakeRepo:
    """A GGUF repo serving the real embedded model under a Q4_K_M name, plus a README card and a licence."""
    files = {
        "README.md": FakeFile(card(repo_id, kw.get("license", "gemma")), lfs=False),
        "LICENSE": FakeFile(b"Gemma Terms of Use (test copy)\n", lfs=False),
        f"{repo_id.split('/')[1]}-Q4_K_M.gguf": FakeFile(gguf),
    }
    files.update(kw.pop("extra_files", {}))
    kw.setdefault("license", "gemma")
    return FakeRepo(repo_id, files, tags=["gguf", "text-generation"], gguf={"total": 268098176,
                    "architecture": "gemma3", "context_length": 32768}, **kw)  # fmt: skip


def folder_repo(repo_id: str, folder: Path, **kw) -> FakeRepo:
    """A safetensors repo serving every file of a model folder (config.json, *.safetensors, tokenizer)."""
    files = {p.relative_to(folder).as_posix(): FakeFile(p, lfs=p.suffix in (".safetensors", ".bin"))
             for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip
    files.setdefault("README.md", FakeFile(card(repo_id, kw.get("license", "apache-2.0")), lfs=False))
    config = json.loads((folder / "config.json").read_text())
    return FakeRepo(repo_id, files, tags=["safetensors", "text-generation"], config=config, **kw)
