"""Sampling presets and GBNF grammars: plain files people already have, read and written safely.

A preset is a YAML mapping of :class:`~backends.base.SamplingParams` field
names to values, holding only what differs from neutral; text-generation-webui
preset files use the same names and load as they are. Shipped presets live in
``presets/*.yaml`` (read-only); the user's live in ``user_data/presets/`` (the
folder text-generation-webui uses too) and shadow a shipped one of the same name.
Grammars: ``presets/grammars/*.gbnf`` shipped, ``user_data/grammars/*.gbnf`` the user's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from backends.base import SamplingParams
from webui.files import write_atomic
from webui.paths import inside, safe_name

SHIPPED_DIR = Path(__file__).resolve().parent.parent / "presets"
NOT_PRESETS = {"models"}  # presets/models.yaml holds the template rules, not sampling values
DEFAULT_PRESET = "Balanced"
MAX_FILE_BYTES = 1_000_000
FIELDS = {f.name: f for f in fields(SamplingParams)}


class PresetError(ValueError):
    """A preset or grammar that cannot be used or written; the message names the file and the key."""


@dataclass
class Preset:
    """A preset as loaded: its name, where it came from, its parameters and the keys we did not know."""

    name: str
    source: str  # "shipped" or "user"
    params: SamplingParams
    unknown: list[str] = field(default_factory=list)

    @property
    def warning(self) -> str:
        """What to show next to a preset with keys we do not know ("" if none)."""
        if not self.unknown:
            return ""
        return f"preset {self.name!r}: unknown keys ignored: {', '.join(self.unknown)}"


def params_from(values: Mapping[str, Any], base: SamplingParams | None = None) -> tuple[SamplingParams, list[str]]:
    """``base`` (default: neutral) with ``values`` applied, checked; and the keys that are not parameters.

    :meth:`SamplingParams.from_dict` (the one coercer) with a preset's error type: PresetError naming the
    first bad key.
    """
    try:
        return SamplingParams.from_dict(values, base)
    except ValueError as exc:
        raise PresetError(str(exc)) from None


def changed_values(params: SamplingParams) -> dict[str, Any]:
    """The values of ``params`` that differ from neutral, in field order: what a preset file holds."""
    neutral = SamplingParams()
    return {
        f.name: getattr(params, f.name) for f in fields(params) if getattr(params, f.name) != getattr(neutral, f.name)
    }


def to_yaml(params: SamplingParams) -> str:
    return yaml.safe_dump(changed_values(params), sort_keys=False, allow_unicode=True, width=1000)


def _as_dict(params: SamplingParams) -> dict[str, Any]:
    return {f.name: getattr(params, f.name) for f in fields(params)}


def parse_preset(text: str, name: str = "preset") -> tuple[SamplingParams, list[str]]:
    """Parameters and unknown keys from a preset's YAML text; PresetError naming ``name`` and the key."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PresetError(f"{name} is not valid YAML: {exc}") from None
    try:
        return params_from(data if data is not None else {})
    except ValueError as exc:
        raise PresetError(f"{name}: {exc}") from None


class PresetStore:
    """The presets and grammars on disk: shipped ones read-only, the user's read and written atomically."""

    def __init__(self, user_data: Path, shipped: Path = SHIPPED_DIR) -> None:
        self.shipped = shipped
        self.user = user_data / "presets"
        self.user_grammars = user_data / "grammars"
        self.shipped_grammars = shipped / "grammars"

    # -- presets ----------------------------------------------------------------------
    def names(self) -> list[str]:
        """Every preset name, the default first, then alphabetically (a user file shadows a shipped one)."""
        found = set(self._stems(self.shipped)) - NOT_PRESETS | set(self._stems(self.user))
        return sorted(found, key=lambda n: (n != DEFAULT_PRESET, n.lower()))

    def source(self, name: str) -> str | None:
        """ "user", "shipped", or None if there is no such preset."""
        if self._user_path(name).is_file():
            return "user"
        if name not in NOT_PRESETS and inside(self.shipped, f"{safe_name(name, 'preset name')}.yaml").is_file():
            return "shipped"
        return None

    def load(self, name: str) -> Preset:
        source = self.source(name)
        if source is None:
            raise PresetError(f"no preset named {name!r}; presets: {', '.join(self.names())}")
        path = self._user_path(name) if source == "user" else inside(self.shipped, f"{name}.yaml")
        params, unknown = parse_preset(_read(path), f"preset {name!r} ({path})")
        return Preset(name, source, params, unknown)

    def save(self, name: str, params: SamplingParams) -> Path:
        """Write ``params`` (only what differs from neutral) as the user's preset ``name``."""
        params.validate()
        path = self._user_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, to_yaml(params).encode("utf-8"))
        return path

    def delete(self, name: str) -> str:
        """Delete the user's preset ``name``; a shipped one of the same name (if any) shows again."""
        path = self._user_path(name)
        if not path.is_file():
            if self.source(name) == "shipped":
                raise PresetError(f"{name!r} is shipped with Inglenook and cannot be deleted")
            raise PresetError(f"no preset named {name!r}")
        path.unlink()
        return name

    def rename(self, old: str, new: str) -> Path:
        """Rename the user's preset ``old`` to ``new``; never overwrites an existing preset."""
        source = self.source(old)
        if source != "user":
            what = "is shipped with Inglenook and cannot be renamed (use Save as)" if source else "does not exist"
            raise PresetError(f"preset {old!r} {what}")
        target = self._user_path(new)
        if self.source(new) is not None:
            raise PresetError(f"a preset named {new!r} already exists")
        self._user_path(old).rename(target)
        return target

    def _user_path(self, name: str) -> Path:
        return inside(self.user, f"{safe_name(name, 'preset name')}.yaml")

    # -- grammars ---------------------------------------------------------------------
    def grammar_names(self) -> list[str]:
        return sorted(set(self._stems(self.shipped_grammars, ".gbnf")) | set(self._stems(self.user_grammars, ".gbnf")))

    def grammar(self, name: str) -> str:
        """The text of grammar ``name`` (the user's copy first)."""
        file = f"{safe_name(name, 'grammar name')}.gbnf"
        for folder in (self.user_grammars, self.shipped_grammars):
            path = inside(folder, file)
            if path.is_file():
                return _read(path)
        raise PresetError(f"no grammar named {name!r}; grammars: {', '.join(self.grammar_names())}")

    @staticmethod
    def _stems(folder: Path, suffix: str = ".yaml") -> list[str]:
        if not folder.is_dir():
            return []
        return [p.stem for p in folder.iterdir() if p.suffix == suffix and p.is_file() and not p.name.startswith(".")]


def _read(path: Path) -> str:
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise PresetError(f"{path} is larger than {MAX_FILE_BYTES:,} bytes")
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PresetError(f"cannot read {path}: {exc}") from None


def describe(params: SamplingParams) -> str:
    """A preset's values as one YAML block, or a note that it is neutral."""
    text = to_yaml(params)
    return "(neutral: every parameter at its default)\n" if text.strip() == "{}" else text


# -- the Parameters form: what widgets hold <-> SamplingParams -------------------------------
LINE_FIELDS = ("stop", "sampler_priority")  # lists shown one item per line
KEEP_ON_NEUTRALIZE = ("max_new_tokens", "seed", "stop", "grammar")  # not samplers: "neutralize" leaves them


def form_values(params: SamplingParams) -> dict[str, Any]:
    """What each widget of the Parameters form shows for ``params``."""
    values = _as_dict(params)
    for name in LINE_FIELDS:
        values[name] = "\n".join(values[name])
    return values


def params_from_form(values: Mapping[str, Any]) -> SamplingParams:
    """SamplingParams from the Parameters form's widget values; ValueError naming the bad key."""
    cleaned = dict(values)
    for name in LINE_FIELDS:
        if isinstance(cleaned.get(name), str):
            cleaned[name] = [line for line in cleaned[name].splitlines() if line]
    if cleaned.get("seed") is None:
        cleaned["seed"] = -1
    params, unknown = params_from(cleaned)
    if unknown:
        raise PresetError(f"not sampling parameters: {', '.join(unknown)}")
    return params


def neutralize(params: SamplingParams) -> SamplingParams:
    """Every sampler back to neutral; the reply length, seed, stop strings and grammar stay."""
    return SamplingParams(**{name: getattr(params, name) for name in KEEP_ON_NEUTRALIZE})


def ignored_fields(supported: frozenset[str]) -> set[str]:
    """The fields a loader that honours ``supported`` would ignore (length and stop strings every loader honours)."""
    return set(FIELDS) - supported - {"max_new_tokens", "stop"}


# -- which preset the form shows, and whether it was changed since -------------------------
MODIFIED = "•modified"


def differing_fields(reference: SamplingParams, form: Mapping[str, Any]) -> list[str]:
    """The parameters whose form values differ from ``reference`` (a slider's 0.7000001 is still 0.7).

    A form that cannot be read (a bad value typed) differs as a whole: ``["(form)"]``.
    """
    try:
        shown = params_from_form(form)
    except ValueError:
        return ["(form)"]
    return [name for name in FIELDS if not _same(getattr(shown, name), getattr(reference, name))]


def preset_state(name: str, reference: SamplingParams | None, form: Mapping[str, Any]) -> str:
    """What the page shows about the active preset: "Balanced", or "Balanced •modified" once any parameter
    differs from it (issue 13); just the name when the preset cannot be read to compare."""
    if reference is None or not differing_fields(reference, form):
        return name
    return f"{name} {MODIFIED}"


def _same(a: object, b: object) -> bool:
    if isinstance(a, float | int) and isinstance(b, float | int) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-9)
    return a == b
