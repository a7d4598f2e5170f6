"""A loader's load settings as form fields, and the settings a user saved for one model.

The Model tab renders a loader's settings from its dataclass (:func:`setting_fields`) and turns what the
user typed back into that dataclass (:func:`build_settings`), checking every value. "Save settings for
this model" writes ``user_data/model-settings/<model file name>.yaml`` (``{loader: ..., settings: {...}}``)
atomically; the next load of that model, from the UI or the CLI, starts from it.
"""

from __future__ import annotations

import dataclasses
import logging
import typing
from dataclasses import dataclass
from pathlib import Path

import yaml

from backends.base import LoadSettings
from webui.files import write_atomic
from webui.paths import inside, safe_name

log = logging.getLogger(__name__)

FOLDER = "model-settings"
# settings that let a model run code: set on the command line, or in the form on this machine for one load;
# never saved, never taken from a saved file, never settable from a UI served beyond loopback or the API
UNSAFE_SETTINGS = ("trust_remote_code", "allow_pickle")
LABELS = {
    "n_ctx": "Context length (tokens)",
    "threads": "CPU threads (0 = all cores)",
    "n_gpu_layers": "GPU layers (0 = CPU only, -1 = all)",
    "n_batch": "Batch size",
    "use_mmap": "mmap (map the file instead of reading it)",
    "use_mlock": "mlock (keep the weights in RAM)",
    "flash_attn": "Flash attention",
    "extra_buffer_types": "Extra buffer types (weight repacking, AMX; auto: on unless an AMX probe crashed here)",
    "dtype": "dtype",
    "device": "Device",
    "trust_remote_code": "Trust remote code (runs the model folder's Python code)",
    "allow_pickle": "Allow pickle weights (*.bin, *.pt can run code)",
}


@dataclass
class SettingField:
    """One form field: its name, how to show it, and its default."""

    name: str
    kind: str  # "int", "float", "bool", "str" or "choice"
    default: object
    label: str
    choices: list = dataclasses.field(default_factory=list)  # for "choice" (a Literal)


def setting_fields(settings_type: type[LoadSettings]) -> list[SettingField]:
    """The fields of a loader's settings dataclass, in declaration order, as form fields."""
    hints = typing.get_type_hints(settings_type)
    found = []
    for f in dataclasses.fields(settings_type):
        hint = hints.get(f.name, str)
        default = f.default if f.default is not dataclasses.MISSING else _factory_default(f)
        label = LABELS.get(f.name, f.name.replace("_", " ").capitalize())
        if typing.get_origin(hint) is typing.Literal:
            found.append(SettingField(f.name, "choice", default, label, list(typing.get_args(hint))))
        elif hint is bool:
            found.append(SettingField(f.name, "bool", default, label))
        elif hint is int:
            found.append(SettingField(f.name, "int", default, label))
        elif hint is float:
            found.append(SettingField(f.name, "float", default, label))
        else:
            found.append(SettingField(f.name, "str", "" if default is None else default, label))
    return found


def _factory_default(f: dataclasses.Field) -> object:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None


def build_settings(settings_type: type[LoadSettings], values: dict[str, object]) -> LoadSettings:
    """``settings_type`` from form values (unknown names ignored); ValueError names a value that does not fit."""
    kwargs = {}
    for f in setting_fields(settings_type):
        if f.name not in values or values[f.name] is None:
            continue
        kwargs[f.name] = _coerce(f, values[f.name])
    if "n_ctx" in kwargs and kwargs["n_ctx"] < 16:
        raise ValueError(f"context length {kwargs['n_ctx']} is too small (at least 16 tokens)")
    if "threads" in kwargs and kwargs["threads"] < 0:
        raise ValueError("threads cannot be negative (0 = all cores)")
    return settings_type(**kwargs)


def _coerce(f: SettingField, value: object) -> object:
    try:
        if f.kind == "bool":
            if isinstance(value, str):
                return value.strip().lower() in ("1", "true", "yes", "on")
            return bool(value)
        if f.kind == "int":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if f.kind == "float":
            return float(value)
        if f.kind == "choice":
            if value not in f.choices:
                raise ValueError
            return value
        return str(value)
    except (TypeError, ValueError):
        allowed = f" (one of {', '.join(map(str, f.choices))})" if f.choices else ""
        raise ValueError(f"setting {f.name} = {value!r} is not a valid {f.kind}{allowed}") from None


def settings_values(settings: LoadSettings) -> dict[str, object]:
    return dataclasses.asdict(settings)


# -- saved per model -------------------------------------------------------------------------------------------
@dataclass
class SavedSettings:
    loader: str
    settings: dict[str, object]


def saved_path(user_data: Path, model: str) -> Path:
    """Where the settings of ``model`` (a file or folder name in the models folder) are kept; the name is validated."""
    return inside(user_data / FOLDER, f"{safe_name(model, 'model name')}.yaml", "model name")


def save_settings(user_data: Path, model: str, loader: str, settings: LoadSettings) -> Path:
    """Remember ``loader`` and ``settings`` for ``model`` (not the UNSAFE_SETTINGS); written atomically."""
    path = saved_path(user_data, model)
    path.parent.mkdir(parents=True, exist_ok=True)
    values = {k: v for k, v in settings_values(settings).items() if k not in UNSAFE_SETTINGS}
    data = {"loader": loader, "settings": values}
    write_atomic(path, yaml.safe_dump(data, sort_keys=False, allow_unicode=True).encode("utf-8"))
    return path


def load_saved(user_data: Path, model: str) -> SavedSettings | None:
    """What was saved for ``model``, or None. A damaged file is reported in the log and ignored (not deleted)."""
    path = saved_path(user_data, model)
    if not path.is_file():
        return None
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not isinstance(data.get("settings", {}), dict):
            raise ValueError("expected {loader: ..., settings: {...}}")
        return SavedSettings(str(data.get("loader") or ""), dict(data.get("settings") or {}))
    except (OSError, UnicodeDecodeError, yaml.YAMLError, ValueError) as exc:
        log.warning("ignoring the saved settings in %s: %s", path, exc)
        return None


def forget_settings(user_data: Path, model: str) -> bool:
    path = saved_path(user_data, model)
    if path.is_file():
        path.unlink()
        return True
    return False
