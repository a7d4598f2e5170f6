"""One Settings object, built once by the CLI and passed to everything that needs it."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

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
    load_overrides: dict = field(default_factory=dict)  # load settings given explicitly (win over saved ones)
    stream_interval_s: float = 0.05  # the UI pushes at most 20 updates a second

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
