"""A real API server for the API tests: our FastAPI app on the real embedded model, served by uvicorn
on a free loopback port in a thread of the test process (so a test can look at the engine too).

The models folder holds the embedded GGUF twice (a hard link under another name), so switching models
through the ``model`` field really unloads one file and loads the other.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
from conftest import free_port, write_fake

from webui.app import App
from webui.models.folder import ensure_default_model
from webui.serve import thread_server
from webui.server import build_server
from webui.settings import Settings

GEMMA = "gemma-3-270m-q4_k_m"
COPY = "gemma-copy"

# -- tool calling on the fake loader: the same tools, question and scripted models for every API's tests ------

WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["city"],
}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
                                           "parameters": WEATHER_SCHEMA}}]  # fmt: skip
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
CALL = '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}]}'
# a template that ends the prompt with the last message on its own line, so the echo model repeats it
LAST_LINE = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
QWEN_REPLY = 'Checking.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'


def write_tool_fakes(folder: Path) -> None:
    """Fake models in ``folder`` that answer with a call (``caller``), a call whose arguments fail the schema
    (``badcaller``), and echo the prompt's last line (``lastline``: how the history reached the prompt)."""
    write_fake(folder, "caller", reply=CALL)
    write_fake(folder, "badcaller", reply='{"tool_calls": [{"name": "get_weather", "arguments": {"city": 5}}]}')
    write_fake(folder, "lastline", chat_template=LAST_LINE)


def write_qwenish(folder: Path) -> None:
    """``qwenish``: a model whose own template renders the tools (Qwen's) and whose reply is text then a
    ``<tool_call>``."""
    from test_tools import QWEN_NATIVE

    write_fake(folder, "qwenish", reply=QWEN_REPLY, chat_template=QWEN_NATIVE)


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
    try:
        with thread_server(build_server(app), port) as url:
            yield Served(app, url)
    finally:
        app.close()
