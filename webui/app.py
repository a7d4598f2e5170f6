"""The application object: settings, loaders and engine, built once and passed around.

There is no module-level mutable state in Inglenook: the CLI builds one
:class:`App` and hands it to the server, the UI and the commands.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from backends.base import LoadSettings, ModelInfo, ModelLoadError
from backends.registry import LoaderRegistry
from webui.engine import Engine
from webui.history import HistoryStore
from webui.model_settings import SavedSettings, build_settings, load_saved
from webui.models import resolve_model
from webui.paths import UnsafeName
from webui.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class App:
    settings: Settings
    registry: LoaderRegistry
    engine: Engine
    history: HistoryStore

    @classmethod
    def create(cls, settings: Settings, registry: LoaderRegistry | None = None) -> App:
        registry = registry or LoaderRegistry()
        return cls(settings, registry, Engine(registry), HistoryStore(settings.user_data))

    def load_settings_for(self, loader_name: str, saved: dict | None = None) -> LoadSettings:
        """The chosen loader's settings: its defaults, then --n-ctx/--threads, then what was saved for the
        model (``saved``), then the options given explicitly on the command line."""
        settings_type = self.registry.get(loader_name).settings_type
        values = {"n_ctx": self.settings.n_ctx, "threads": self.settings.threads, **(saved or {})}
        return build_settings(settings_type, {**values, **self.settings.load_overrides})

    def load_model(
        self,
        spec: str | None = None,
        loader: str | None = None,
        allow_paths: bool = True,
        settings: LoadSettings | None = None,
    ) -> ModelInfo:
        """Load a model by path, by name in the models folder, or the embedded default.

        Without ``loader``/``settings``, the ones saved for this model (Model tab, "save settings for this
        model") are used. ``allow_paths=False`` (the UI when it listens beyond this machine) accepts only
        names inside the models folder, so a remote user cannot probe or load arbitrary files.
        Raises ModelLoadError with a one-line message; the previous model stays loaded.
        """
        path = resolve_model(spec, self.settings.models_dir, allow_paths=allow_paths)
        saved = self.saved_settings_for(path)
        if loader is None and saved is not None and saved.loader in self.registry.names():
            loader = saved.loader
        chosen = self.registry.pick(path, loader or self.settings.loader)
        if settings is None:
            use_saved = saved is not None and saved.loader == chosen.name
            try:
                settings = self.load_settings_for(chosen.name, saved.settings if use_saved else None)
            except ValueError as exc:
                raise ModelLoadError(f"the saved settings for {path.name} do not fit {chosen.name}: {exc}") from None
        return self.engine.load(path, chosen.name, settings)

    def saved_settings_for(self, path: Path) -> SavedSettings | None:
        """The settings saved for a model in the models folder (none for paths elsewhere)."""
        if path.parent.resolve() != self.settings.models_dir.resolve():
            return None
        try:
            return load_saved(self.settings.user_data, path.name)
        except UnsafeName:
            return None

    def start(self) -> ModelInfo:
        """Load the model named in the settings, or the embedded default."""
        return self.load_model(self.settings.model, self.settings.loader)

    def close(self) -> None:
        self.engine.unload()
