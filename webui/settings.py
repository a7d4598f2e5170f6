"""One Settings object, built once by the CLI and passed to everything that needs it."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

API_KEY_ENV = "INGLENOOK_API_KEY"  # where `serve` reads the API key when no flag gives it
LOOPBACK_NAMES = {"localhost", "localhost.localdomain"}


@dataclass
class Settings:
    host: str = "127.0.0.1"
    port: int = 7860
    models_dir: Path = field(default_factory=lambda: Path("models"))
    user_data: Path = field(default_factory=lambda: Path("user_data"))
    model: str | None = None  # a path, a name in models_dir, or "default"
    loader: str | None = None  # None = the first loader that recognises the model
    threads: int = 0  # 0 = all cores
    n_ctx: int = 4096
    allow_pickle: bool = False  # pickle weights (*.bin, *.pt) can run code when loaded: refused unless asked
    trust_remote_code: bool = False  # Python code shipped inside a model folder never runs unless asked
    load_overrides: dict = field(default_factory=dict)  # load settings given explicitly (win over saved ones)
    stream_interval_s: float = 0.05  # the UI and API streams push at most 20 updates a second (0 = every token)
    # serving and the OpenAI-compatible API (webui/api/auth.py checks and explains these)
    api_key: str | None = None  # Bearer key for /v1/*; None = open (loopback only, unless --insecure-no-auth)
    admin_key: str | None = None  # when set, loading/unloading models through the API needs this key
    ui_auth: list[tuple[str, str]] = field(default_factory=list)  # Gradio login (user, password) pairs
    admin_auth: list[tuple[str, str]] = field(default_factory=list)  # UI logins with admin rights (webui/access.py)
    insecure_no_auth: bool = False  # allow a non-loopback bind without an API key and a login
    cors_origins: list[str] = field(default_factory=list)  # other browser origins allowed to call us; none by default
    allowed_hosts: list[str] = field(default_factory=list)  # extra Host header names accepted (DNS rebinding)
    api_port: int | None = None  # also serve the API alone on this port
    max_loaded_models: int = 1  # models kept in memory at once (API model switching)
    api_max_body_bytes: int = 8 * 2**20  # larger request bodies get 413
    require_model: bool = False  # API requests without "model" get 400 (as OpenAI) instead of the active model

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
