"""Finds loaders: the built-ins, then plugins from installed packages.

A plugin that fails to import or to register is recorded in
:attr:`LoaderRegistry.errors` and skipped; it never stops the app.
"""

from __future__ import annotations

import importlib.metadata
import logging
from dataclasses import dataclass
from pathlib import Path

import pluggy

from backends import hookspecs
from backends.base import Loader, ModelLoadError

log = logging.getLogger(__name__)

# Registration order is pick order: .gguf -> llama.cpp; a GPTQ folder -> gptq; any other HF folder -> transformers;
# remote:NAME/MODEL (a configured OpenAI-compatible server) -> openai-remote.
BUILTIN_MODULES = ("backends.llamacpp", "backends.gptq", "backends.transformers", "backends.remote")


@dataclass
class PluginError:
    source: str
    error: str


class LoaderRegistry:
    """Every loader known to this process, by name."""

    def __init__(self, load_entry_points: bool = True, builtins: tuple[str, ...] = BUILTIN_MODULES) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.errors: list[PluginError] = []
        self._loaders: dict[str, Loader] = {}
        for module_name in builtins:
            self._add_module(module_name, module_name)
        if load_entry_points:
            self._add_entry_points()
        self._collect()

    def _add_module(self, source: str, module_name: str) -> None:
        try:
            module = importlib.import_module(module_name)
            self.pm.register(module, name=source)
        except Exception as exc:  # a broken plugin is reported, never fatal
            self._fail(source, exc)

    def _add_entry_points(self) -> None:
        for ep in importlib.metadata.entry_points(group=hookspecs.PROJECT):
            source = f"{ep.name} ({ep.value})"
            if self.pm.has_plugin(ep.name):
                continue
            try:
                self.pm.register(ep.load(), name=ep.name)
            except Exception as exc:
                self._fail(source, exc)

    def _collect(self) -> None:
        for impl in self.pm.hook.register_loaders.get_hookimpls():
            found: list[Loader] = []
            try:
                impl.function(register=found.append)
            except Exception as exc:
                self._fail(impl.plugin_name, exc)
                continue
            for loader in found:
                if not isinstance(loader, Loader):
                    self._fail(impl.plugin_name, TypeError(f"{loader!r} is not a Loader"))
                elif loader.name in self._loaders:
                    self._fail(impl.plugin_name, ValueError(f"loader name {loader.name!r} is already taken"))
                else:
                    self._loaders[loader.name] = loader

    def refresh(self, load_entry_points: bool = True) -> list[str]:
        """Pick up plugins installed since this registry was built (e.g. by ``inglenook loaders install``);
        the loaders already known stay as they are. Returns the names of the new loaders."""
        before = set(self._loaders)
        if load_entry_points:
            importlib.invalidate_caches()
            self._add_entry_points()
        known = dict(self._loaders)
        self._loaders = {}
        self._collect()
        self._loaders = {**known, **{k: v for k, v in self._loaders.items() if k not in known}}
        self.errors = list({(e.source, e.error): e for e in self.errors}.values())  # a plugin failing again
        return [name for name in self._loaders if name not in before]

    def _fail(self, source: str, exc: BaseException) -> None:
        message = f"{type(exc).__name__}: {exc}"
        log.warning("loader plugin %s is disabled: %s", source, message)
        self.errors.append(PluginError(source, message))

    def names(self) -> list[str]:
        return list(self._loaders)

    def get(self, name: str) -> Loader:
        try:
            return self._loaders[name]
        except KeyError:
            raise ModelLoadError(f"unknown loader {name!r}; known loaders: {', '.join(self._loaders)}") from None

    def candidates(self, path: Path) -> list[Loader]:
        """Loaders that recognise ``path``, in registration order (built-ins first)."""
        return [loader for loader in self._loaders.values() if loader.can_load(path)]

    def pick(self, path: Path, name: str | None = None) -> Loader:
        """The named loader, or the first one that recognises ``path``."""
        if name:
            return self.get(name)
        found = self.candidates(path)
        if not found:
            raise ModelLoadError(f"no loader recognises {path}: expected a .gguf file or a model folder")
        return found[0]
