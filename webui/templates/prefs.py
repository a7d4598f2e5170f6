"""The user's prompt-template choice per model, remembered in ``<user_data>/model_templates.json``.

A wrong prompt format is the most reported failure of the peers, so when the automatic choice is wrong
the user picks one once and it sticks to that model (by its name), across restarts. The file is a plain
JSON object ``{"schema_version": 1, "templates": {"<model name>": "<template name>"}}`` written atomically;
model and template names are validated, and a template that has left the library is forgotten, not fatal.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import datetime, timezone
from pathlib import Path

from webui.files import write_atomic
from webui.paths import safe_name
from webui.templates.library import PRESETS_DIR, TemplateFileError, get_template

log = logging.getLogger(__name__)

AUTO = "auto"  # the dropdown's "let Inglenook choose"
FILE_NAME = "model_templates.json"
SCHEMA_VERSION = 1


class TemplatePrefs:
    """Reads and writes the per-model choices; holds nothing but its paths."""

    def __init__(self, user_data: Path, presets: Path = PRESETS_DIR) -> None:
        self.path = Path(user_data) / FILE_NAME
        self.presets = presets

    def all(self) -> dict[str, str]:
        """Every remembered choice. A damaged file is moved aside (so the next save cannot overwrite it)."""
        try:
            data = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            self._move_aside(f"not valid JSON: {exc}")
            return {}
        choices = data.get("templates") if isinstance(data, dict) else None
        if not isinstance(choices, dict):
            self._move_aside("no 'templates' object")
            return {}
        return {k: v for k, v in choices.items() if isinstance(k, str) and isinstance(v, str)}

    def get(self, model: str) -> str | None:
        """The template chosen for ``model``, or None for automatic (also when it left the library)."""
        name = self.all().get(model)
        if name is None:
            return None
        try:
            return get_template(name, self.presets).name
        except (TemplateFileError, ValueError) as exc:
            log.warning("the template chosen for %s is no longer usable: %s", model, exc)
            return None

    def set(self, model: str, template: str | None) -> str | None:
        """Remember ``template`` for ``model`` (None or ``"auto"``: forget the choice). Returns the stored name.

        Raises ValueError (UnsafeName, TemplateFileError) for a bad model name or an unknown template;
        nothing is written then.
        """
        safe_name(model, "model name")
        choices = self.all()
        if template in (None, "", AUTO):
            stored = None
            choices.pop(model, None)
        else:
            stored = get_template(template, self.presets).name
            choices[model] = stored
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {"schema_version": SCHEMA_VERSION, "templates": dict(sorted(choices.items()))}
        write_atomic(self.path, json.dumps(data, ensure_ascii=False, indent=1).encode("utf-8"))
        return stored

    def _move_aside(self, reason: str) -> None:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        try:
            os.replace(self.path, target)
        except FileNotFoundError:
            return
        log.warning("damaged %s moved to %s: %s", self.path, target.name, reason)
