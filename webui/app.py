"""The application object: settings, loaders, engine and the chat service, built once and passed around.

There is no module-level mutable state in Inglenook: the CLI builds one
:class:`App` and hands it to the server, the UI and the commands.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from backends.base import LoadSettings, ModelInfo, ModelLoadError
from backends.registry import LoaderRegistry
from webui import hardware
from webui.characters.store import CharacterStore
from webui.chat.history import HistoryStore
from webui.chat.service import Chat
from webui.engine import Engine
from webui.extensions.host import ExtensionHost
from webui.models.downloads import DownloadManager
from webui.models.folder import resolve_model
from webui.models.remotes import Remotes
from webui.models.settings import UNSAFE_SETTINGS, SavedSettings, build_settings, load_saved
from webui.paths import UnsafeName
from webui.presets import PresetStore
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
    downloads: DownloadManager = field(init=False)  # hub downloads into the models folder (UI and API share it)
    presets: PresetStore = field(init=False)  # <user_data>/presets, then the shipped presets/
    chat: Chat = field(init=False)  # every generation: the engine with the enabled extensions' hooks around it
    remotes: Remotes = field(init=False)  # <user_data>/remotes.yaml: OpenAI-compatible servers, models NAME/model-id

    def __post_init__(self) -> None:
        self.characters = CharacterStore(self.settings.user_data / "characters")
        self.presets = PresetStore(self.settings.user_data)
        self.chat = Chat(self.engine, self.history, self.extensions)
        self.downloads = DownloadManager(self.settings.models_dir, self.settings.user_data)
        self.remotes = Remotes(self.settings.user_data, self.registry)
        self.remotes.usable()  # hands the configured remotes to the openai-remote loader

    @classmethod
    def create(cls, settings: Settings, registry: LoaderRegistry | None = None) -> App:
        registry = registry or LoaderRegistry()
        hardware.attach(registry, settings.user_data)  # extra_buffer_types=auto: probe once per machine (AMX)
        engine, extensions = Engine(registry, settings.max_loaded_models), ExtensionHost(settings.user_data)
        extensions.start()  # never raises because of an extension
        return cls(settings, registry, engine, HistoryStore(settings.user_data), extensions)

    def load_settings_for(self, loader_name: str, saved: dict | None = None) -> LoadSettings:
        """The chosen loader's settings: its defaults, then the command line's (--n-ctx, --threads,
        --allow-pickle, --trust-remote-code), then what was saved for the model (``saved``), then the options
        given explicitly on the command line. Only the fields the loader declares are used.

        A saved file never switches on what can run code (trust_remote_code, allow_pickle): that stays the
        command line's decision (or a form's on this machine, for one load).
        """
        settings_type = self.registry.get(loader_name).settings_type
        given = {
            "n_ctx": self.settings.n_ctx,
            "threads": self.settings.threads,
            "allow_pickle": self.settings.allow_pickle,
            "trust_remote_code": self.settings.trust_remote_code,
        }
        kept = {k: v for k, v in (saved or {}).items() if k not in UNSAFE_SETTINGS}
        return build_settings(settings_type, {**given, **kept, **self.settings.load_overrides})

    def choose_loader(self, path: Path, loader: str | None = None) -> tuple[str, LoadSettings]:
        """The loader and settings ``path`` loads with when the caller gives no settings: the loader named,
        else the one saved for the model, else --loader, else the first that recognises it; its settings
        layered by :meth:`load_settings_for` (the saved ones only if they were saved for that loader)."""
        saved = self.saved_settings_for(path)
        if loader is None and saved is not None and saved.loader in self.registry.names():
            loader = saved.loader
        chosen = self.registry.pick(path, loader or self.settings.loader)
        use_saved = saved is not None and saved.loader == chosen.name
        try:
            return chosen.name, self.load_settings_for(chosen.name, saved.settings if use_saved else None)
        except ValueError as exc:
            raise ModelLoadError(f"the saved settings for {path.name} do not fit {chosen.name}: {exc}") from None

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
        # NAME/model-id of a configured remote first (a name, never a URL), then the models folder
        path = self.remotes.path_for(spec) or resolve_model(spec, self.settings.models_dir, allow_paths=allow_paths)
        if settings is None:
            loader, settings = self.choose_loader(path, loader)
        else:
            loader = self.registry.pick(path, loader or self.settings.loader).name
        return self.engine.load(path, loader, settings)

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
        self.extensions.stop()
        self.engine.unload()
