"""``user_data/extensions.json``: the extensions' enabled state, settings, install records and the error each
failed with at its last start (so ``inglenook extensions list``, which starts nothing, still shows it)."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from webui.files import write_atomic

log = logging.getLogger(__name__)


class StateFile:
    """``user_data/extensions.json``: which extensions are enabled, their settings, what was installed.

    Written atomically; a damaged file is moved aside (and reported), never a reason not to start.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self.problem = ""

    def read(self) -> dict[str, dict]:
        empty: dict[str, dict] = {"enabled": {}, "settings": {}, "installed": {}, "errors": {}}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return empty
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            aside = self.path.with_name(f"{self.path.name}.damaged-{int(time.time())}")
            self.problem = f"{self.path} could not be read ({exc}); moved aside to {aside.name}"
            log.error(self.problem)
            self.path.replace(aside)
            return empty
        if not isinstance(data, dict):
            return empty
        return {key: dict(data.get(key) or {}) for key in empty}

    def update(self, change: Callable[[dict[str, dict]], None]) -> dict[str, dict]:
        """Read, apply ``change`` and write back, as one step against other threads of this process."""
        with self._lock:
            data = self.read()
            change(data)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path, json.dumps(data, indent=2, ensure_ascii=False).encode("utf-8"))
            return data
