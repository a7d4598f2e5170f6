"""A real API server for the API tests: our FastAPI app on the real embedded model, served by uvicorn
on a free loopback port in a thread of the test process (so a test can look at the engine too).

The models folder holds the embedded GGUF twice (a hard link under another name), so switching models
through the ``model`` field really unloads one file and loads the other.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import uvicorn
from conftest import free_port

from webui.app import App
from webui.models.folder import ensure_default_model
from webui.server import build_server
from webui.settings import Settings

GEMMA = "gemma-3-270m-q4_k_m"
COPY = "gemma-copy"


def two_model_folder(models_dir: Path, into: Path) -> Path:
    """A models folder with the embedded GGUF and a hard-linked copy named ``gemma-copy.gguf``."""
    into.mkdir(parents=True, exist_ok=True)
    source = ensure_default_model(models_dir)
    for name in (source.name, f"{COPY}.gguf"):
        target = into / name
        if not target.exists():
            try:
                os.link(source, target)
            except OSError:
                shutil.copy(source, target)
    return into


@dataclass
class Served:
    app: App
    url: str  # http://127.0.0.1:PORT

    def client(self, api_key: str = "unused", **kw) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0, timeout=300, **kw)


@contextlib.contextmanager
def serve(models: Path, user_data: Path, load: bool = True, **settings) -> Iterator[Served]:
    """Build an App on ``models``, load the default model, and serve it (API + UI) until the block ends."""
    port = free_port()
    app = App.create(
        Settings(models_dir=models, user_data=user_data, n_ctx=1024, host="127.0.0.1", port=port, **settings)
    )
    if load:
        app.load_model(GEMMA)
    config = uvicorn.Config(build_server(app), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="test-api-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test API server did not start")
        time.sleep(0.05)
    try:
        yield Served(app, f"http://127.0.0.1:{port}")
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        app.close()
