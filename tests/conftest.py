"""Shared fixtures: the real embedded model, apps built on it, a real server process, and the fake models
of the fast tier (`.fake` files loaded by the test loader plugin in tests/plugins/fake_loader)."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from backends.base import CancelToken, Chunk, SamplingParams
from backends.llamacpp import LlamaCppLoader, LlamaCppSettings
from backends.registry import LoaderRegistry
from webui.app import App
from webui.models.folder import ensure_default_model
from webui.serve import free_port, process_server
from webui.settings import Settings

REPO = Path(__file__).resolve().parent.parent
INGLENOOK = [sys.executable, "-m", "webui"]
REAL_MODEL_FIXTURES = {"gemma", "tiny_llama", "tiny_gptq"}  # real weights, or torch models built on the spot


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Keep the fast tier fast: a test that uses a real-model fixture must carry ``@pytest.mark.slow``."""
    real = REAL_MODEL_FIXTURES & set(getattr(item, "fixturenames", ()))
    if real and item.get_closest_marker("slow") is None:
        pytest.fail(f"{item.nodeid} uses {', '.join(sorted(real))}: mark it @pytest.mark.slow", pytrace=False)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    """A models folder holding the embedded default GGUF (assembled once per test session)."""
    folder = tmp_path_factory.mktemp("models")
    ensure_default_model(folder)
    return folder


@pytest.fixture(scope="session")
def gemma_path(models_dir: Path) -> Path:
    return ensure_default_model(models_dir)


@pytest.fixture(scope="session")
def gemma(gemma_path: Path):
    """The embedded model loaded once through the llama.cpp loader (do not close it in a test)."""
    model = LlamaCppLoader().load(gemma_path, LlamaCppSettings(n_ctx=2048))
    yield model
    model.close()


@pytest.fixture
def make_app(models_dir: Path, tmp_path: Path):
    """Build an App on the shared models folder; everything it loaded is closed after the test."""
    apps: list[App] = []

    def make(**overrides) -> App:
        settings = Settings(models_dir=models_dir, user_data=tmp_path / "user_data", n_ctx=2048, **overrides)
        app = App.create(settings)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()


# -- the fast tier: scripted fake models ----------------------------------------------------------------

FAKE_HELLO = "Hello there, friend."
SLOW_WORDS = 400  # words of slow.fake: long enough to cancel, stop or switch in the middle


@pytest.fixture(scope="module")
def browser():
    """Headless Debian Chromium for a browser test module (one per module: playwright's sync API cannot run
    beside another module's instance)."""
    from playwright.sync_api import sync_playwright
    from test_browser import CHROMIUM, CHROMIUM_ARGS

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def write_fake(folder: Path, name: str, **script) -> Path:
    """A ``NAME.fake`` model in ``folder`` (keys as in the fake loader's docstring: reply, replies, ...)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.fake"
    path.write_text(json.dumps(script), encoding="utf-8")
    return path


@pytest.fixture
def fake_models(tmp_path: Path) -> Path:
    """A models folder of scripted models: ``hello`` (a fixed reply), ``echo`` (repeats the prompt's last line),
    ``seeded`` (picks one of several replies by seed) and ``slow`` (400 words at 5 ms a word)."""
    if "fake" not in LoaderRegistry().names():
        pytest.fail(
            "the fake loader plugin is not installed: pip install -e tests/plugins/fake_loader (tests/run.sh does)"
        )
    folder = tmp_path / "fake-models"
    write_fake(folder, "hello", reply=FAKE_HELLO)
    write_fake(folder, "echo")
    write_fake(folder, "seeded", replies=[f"reply number {i}" for i in range(20)])
    write_fake(folder, "slow", reply=" ".join(f"w{i}" for i in range(SLOW_WORDS)), token_delay_ms=5)
    return folder


@pytest.fixture
def make_fake_app(fake_models: Path, tmp_path: Path):
    """Build an App on the fake models folder (``hello.fake`` loaded unless ``model=None``); closed after the test."""
    apps: list[App] = []

    def make(model: str | None = "hello.fake", **overrides) -> App:
        settings = Settings(
            models_dir=fake_models, user_data=tmp_path / "user_data", model=model, stream_interval_s=0, **overrides
        )
        app = App.create(settings)
        apps.append(app)
        if model:
            app.start()
        return app

    yield make
    for app in apps:
        app.close()


@pytest.fixture
def fake_app(make_fake_app) -> App:
    """An App on the fake models with ``hello`` loaded: the engine, chat core, API and UI core without weights."""
    return make_fake_app()


def collect(chunks: Iterator[Chunk]) -> tuple[str, Chunk]:
    """All text of a stream and its final chunk."""
    text, last = "", Chunk()
    for chunk in chunks:
        text += chunk.text
        if chunk.finish_reason:
            last = chunk
    return text, last


def greedy(max_new_tokens: int = 24, **kw) -> SamplingParams:
    return SamplingParams(temperature=0, max_new_tokens=max_new_tokens, **kw)


def generate(model, prompt: str, params: SamplingParams, cancel: CancelToken | None = None) -> tuple[str, Chunk]:
    return collect(model.generate(prompt, params, cancel or CancelToken()))


def cli(*args: str, timeout: float = 300, input: str | None = None, cwd: Path | None = None):
    """Run the real ``inglenook`` command line in a subprocess."""
    return subprocess.run(
        [*INGLENOOK, *args], capture_output=True, text=True, timeout=timeout, input=input, cwd=cwd or REPO
    )


@contextlib.contextmanager
def running_server(*args: str, port: int | None = None, timeout: float = 120) -> Iterator[tuple[str, subprocess.Popen]]:
    """Start ``inglenook serve`` as its own process; yield its base URL once /healthz answers. ``proc.output()``
    is what it has printed."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile("w+") as log:

        def output() -> str:
            log.seek(0)
            return log.read()

        command = [*INGLENOOK, "serve", "--port", str(port), *args]
        with process_server(command, url, log, timeout_s=timeout, cwd=REPO, explain=output) as proc:
            proc.output = output  # type: ignore[attr-defined]
            yield url, proc


def copy_default(models_dir: Path, into: Path) -> Path:
    """A models folder of its own that holds (a link to) the default model, for tests that change the folder."""
    into.mkdir(parents=True, exist_ok=True)
    source = ensure_default_model(models_dir)
    target = into / source.name
    try:
        target.symlink_to(source)
    except OSError:
        shutil.copy(source, target)
    return target


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, gemma_path: Path) -> Path:
    """A random-weight 2-layer Llama folder (config.json + safetensors) with the Gemma tokenizer, built once."""
    from tiny_models import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), gemma_path)


@pytest.fixture(scope="session")
def tiny_gptq(tmp_path_factory, tiny_llama: Path) -> Path:
    """``tiny_llama`` quantized to 4-bit GPTQ (group 32) on the CPU with GPTQModel, built once."""
    from tiny_models import quantize_gptq

    return quantize_gptq(tiny_llama, tmp_path_factory.mktemp("tiny-llama-gptq"))


def rss_mb() -> float:
    """This process's resident memory in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")
