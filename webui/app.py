"""The application object: settings, loaders and engine, built once and passed around.

There is no module-level mutable state in Inglenook: the CLI builds one
:class:`App` and hands it to the server, the UI and the commands.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields

from backends.base import LoadSettings, ModelInfo
from backends.registry import LoaderRegistry
from webui.characters import CharacterStore
from webui.engine import Engine
from webui.extensions import ExtensionHost
from webui.history import HistoryStore
from webui.models import resolve_model
from webui.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class App:
    settings: Settings
    registry: LoaderRegistry
    engine: Engine
    history: HistoryStore
    extensions: ExtensionHost
    characters: CharacterStore = field(init=False)  # <user_data>/characters, then the shipped characters/

    def __post_init__(self) -> None:
        self.characters = CharacterStore(self.settings.user_data / "characters")

    @classmethod
    def create(cls, settings: Settings, registry: LoaderRegistry | None = None) -> App:
        registry = registry or LoaderRegistry()
        engine, extensions = Engine(registry, settings.max_loaded_models), ExtensionHost(settings.user_data)
        engine.extensions = extensions  # every generation through webui.chat runs the enabled hooks
        extensions.start()  # never raises because of an extension
        return cls(settings, registry, engine, HistoryStore(settings.user_data), extensions)

    def load_settings_for(self, loader_name: str) -> LoadSettings:
        """The chosen loader's settings, filled from the command line (--n-ctx, --threads, --allow-pickle, ...).

        Only the fields the loader's settings type declares are passed, so every loader gets what it knows.
        """
        settings_type = self.registry.get(loader_name).settings_type
        given = {
            "n_ctx": self.settings.n_ctx,
            "threads": self.settings.threads,
            "allow_pickle": self.settings.allow_pickle,
            "trust_remote_code": self.settings.trust_remote_code,
        }
        known = {f.name for f in fields(settings_type)}
        return settings_type(**{k: v for k, v in given.items() if k in known})

    def load_model(self, spec: str | None = None, loader: str | None = None, allow_paths: bool = True) -> ModelInfo:
        """Load a model by path, by name in the models folder, or the embedded default.

        ``allow_paths=False`` (the UI when it listens beyond this machine) accepts only names inside the
        models folder, so a remote user cannot probe or load arbitrary files.
        Raises ModelLoadError with a one-line message; the previous model stays loaded.
        """
        path = resolve_model(spec, self.settings.models_dir, allow_paths=allow_paths)
        chosen = self.registry.pick(path, loader or self.settings.loader)
        return self.engine.load(path, chosen.name, self.load_settings_for(chosen.name))

    def start(self) -> ModelInfo:
        """Load the model named in the settings, or the embedded default."""
        return self.load_model(self.settings.model, self.settings.loader)

    def close(self) -> None:
        self.extensions.stop()
        self.engine.unload()
