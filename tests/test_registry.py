"""Loaders are found with pluggy: built-ins, plus entry points ``inglenook.backends`` of installed packages.

The third-party plugins here are real installed distributions: a package folder
and its ``.dist-info`` (with ``entry_points.txt``) on ``sys.path``, found by
``importlib.metadata`` exactly as a pip-installed package would be.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from backends.base import ModelLoadError
from backends.registry import LoaderRegistry

ECHO_PLUGIN = '''
from collections.abc import Iterator
from pathlib import Path

from backends.base import Chunk, Loader, Model, ModelInfo, Stopwatch
from backends.hookspecs import hookimpl


class EchoModel(Model):
    """Repeats the prompt back: a real (if simple) third-party backend."""

    def __init__(self, path):
        self.info = ModelInfo(name=path.stem, loader="echo", path=str(path))

    def tokenize(self, text, add_special=True):
        return [ord(c) for c in text]

    def detokenize(self, tokens):
        return "".join(map(chr, tokens))

    def generate(self, prompt, params, cancel) -> Iterator[Chunk]:
        watch = Stopwatch()
        n = 0
        for word in prompt.split()[: params.max_new_tokens]:
            watch.mark_token()
            n += 1
            yield Chunk(word + " ")
        yield Chunk(finish_reason="length", usage=watch.usage(len(prompt), n))

    def close(self):
        pass


class EchoLoader(Loader):
    name = "echo"
    supported_params = frozenset()

    def can_load(self, path: Path) -> bool:
        return path.suffix == ".echo"

    def load(self, path, settings):
        return EchoModel(path)


@hookimpl
def register_loaders(register):
    register(EchoLoader())
'''


def install_fake_distribution(site: Path, dist: str, module: str, source: str, entry: str | None = None) -> None:
    """Write ``module.py`` and ``dist-0.1.dist-info`` declaring an ``inglenook.backends`` entry point."""
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[inglenook.backends]\n{dist} = {entry or module}\n")


@pytest.fixture
def site(tmp_path, monkeypatch):
    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    yield folder
    for name in [m for m in sys.modules if m.startswith("inglenook_test_")]:
        del sys.modules[name]


def test_builtin_llamacpp_loader_is_registered():
    registry = LoaderRegistry(load_entry_points=False)
    assert "llama.cpp" in registry.names()
    assert registry.errors == []


def test_an_installed_package_adds_a_loader_through_its_entry_point(site, tmp_path):
    install_fake_distribution(site, "inglenook-echo", "inglenook_test_echo", ECHO_PLUGIN)
    registry = LoaderRegistry()
    assert registry.names()[0] == "llama.cpp"  # built-ins come first
    assert "echo" in registry.names()
    model_file = tmp_path / "parrot.echo"
    model_file.write_text("")
    loader = registry.pick(model_file)
    assert loader.name == "echo"
    model = loader.load(model_file, loader.settings_type())
    from backends.base import CancelToken, SamplingParams

    chunks = list(model.generate("hello plugin world", SamplingParams(max_new_tokens=2), CancelToken()))
    assert "".join(c.text for c in chunks) == "hello plugin "
    assert chunks[-1].usage.completion_tokens == 2


def test_a_plugin_that_fails_to_import_is_reported_not_fatal(site):
    install_fake_distribution(site, "inglenook-broken", "inglenook_test_broken", "raise ImportError('needs libfoo')")
    registry = LoaderRegistry()
    assert "llama.cpp" in registry.names()
    [error] = registry.errors
    assert "inglenook-broken" in error.source
    assert "needs libfoo" in error.error


def test_a_plugin_that_raises_while_registering_is_reported(site):
    source = """
    from backends.hookspecs import hookimpl

    @hookimpl
    def register_loaders(register):
        raise RuntimeError("cannot find CUDA")
    """
    install_fake_distribution(site, "inglenook-raiser", "inglenook_test_raiser", source)
    registry = LoaderRegistry()
    assert "llama.cpp" in registry.names()
    assert any("cannot find CUDA" in e.error for e in registry.errors)


def test_a_plugin_may_not_take_a_builtin_name_or_register_junk(site):
    source = """
    from backends.hookspecs import hookimpl
    from backends.llamacpp import LlamaCppLoader

    @hookimpl
    def register_loaders(register):
        register(LlamaCppLoader())
        register("not a loader")
    """
    install_fake_distribution(site, "inglenook-clash", "inglenook_test_clash", source)
    registry = LoaderRegistry()
    messages = " ".join(e.error for e in registry.errors)
    assert "already taken" in messages
    assert "is not a Loader" in messages
    assert registry.names().count("llama.cpp") == 1


def test_unknown_loader_and_unrecognised_file_are_clear_errors(tmp_path):
    registry = LoaderRegistry(load_entry_points=False)
    with pytest.raises(ModelLoadError, match="unknown loader 'nope'.*llama.cpp"):
        registry.get("nope")
    with pytest.raises(ModelLoadError, match="no loader recognises"):
        registry.pick(tmp_path)
