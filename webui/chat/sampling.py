"""The one sampling-defaults policy: which :class:`SamplingParams` a generation gets, for every face.

Layers, each over the one before::

    start → model rule (presets/models.yaml ``settings:``) → named preset → the conversation's changes
          → explicit fields (the Parameters sliders, the API request's fields, the CLI's flags)

``start`` is neutral when a preset is named (a preset is a whole starting point, as picking one in the
Parameters tab sets every slider); otherwise it is the face's own default: :func:`default_params` for the UI
and the CLI, neutral with a reply as long as the context for the API (OpenAI's semantics). So the same rule,
preset and fields give the same parameters in the UI, the API and ``inglenook run``.

A preset counts as its file's values (what differs from neutral), so a rule's setting survives a preset that
does not set that key. Every layer goes through :meth:`SamplingParams.from_dict`, the one coercer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from backends.base import ModelInfo, SamplingParams
from webui.presets import Preset, changed_values
from webui.templates.library import PRESETS_DIR
from webui.templates.render import TemplateError, select_template

KNOWN = frozenset(f.name for f in fields(SamplingParams))


def default_params(settings: Mapping[str, Any] | None = None) -> SamplingParams:
    """The chat default (the shipped Balanced preset): mild temperature, min-p, a light repetition penalty.

    ``settings`` (a ``presets/models.yaml`` rule's defaults for the loaded model) override them; names
    that are not sampling parameters are left out (:func:`unknown_settings` names them).
    """
    params = SamplingParams(
        max_new_tokens=512, temperature=0.7, top_p=0.9, top_k=40, min_p=0.05, repetition_penalty=1.1
    )
    return SamplingParams.from_dict(known_settings(settings), params)[0]


def known_settings(settings: Mapping[str, Any] | None) -> dict[str, Any]:
    """The sampling parameters among a models.yaml rule's ``settings:`` (the rest are typos, usually)."""
    return {k: v for k, v in (settings or {}).items() if k in KNOWN}


def unknown_settings(settings: Mapping[str, Any] | None) -> list[str]:
    """Names in a models.yaml rule's ``settings:`` that are not sampling parameters (a typo, usually)."""
    return sorted(k for k in (settings or {}) if k not in KNOWN)


def rule_settings(info: ModelInfo | None, choice: str | None = None, presets: Path = PRESETS_DIR) -> dict[str, Any]:
    """The sampling settings the ``presets/models.yaml`` rule for ``info``'s model brings ({} if none, or no
    model); ``choice`` is the user's template choice, which decides whether a rule applies at all."""
    if info is None:
        return {}
    try:
        return dict(select_template(info, choice, presets).settings or {})
    except TemplateError:
        return {}


@dataclass
class Resolved:
    """The parameters a generation gets, and what the layers held that is not a sampling parameter."""

    params: SamplingParams
    unknown: list[str] = field(default_factory=list)  # "rule: tempreature", "preset Foo: bar"


def resolve_params(
    *,
    start: SamplingParams | None = None,
    rule: Mapping[str, Any] | None = None,
    preset: Preset | None = None,
    conversation: Mapping[str, Any] | None = None,
    explicit: Mapping[str, Any] | None = None,
) -> Resolved:
    """Apply the layers in the policy's order (see the module docstring); ValueError naming a bad key.

    ``start``: the face's default, used only when no ``preset`` is named (default: :func:`default_params`).
    """
    params = SamplingParams() if preset is not None else (start if start is not None else default_params())
    unknown: list[str] = []
    layers: list[tuple[str, Mapping[str, Any]]] = [("rule", known_settings(rule))]
    unknown += [f"rule: {k}" for k in unknown_settings(rule)]
    if preset is not None:
        layers.append((f"preset {preset.name}", changed_values(preset.params)))
        unknown += [f"preset {preset.name}: {k}" for k in preset.unknown]
    layers += [("conversation", conversation or {}), ("request", explicit or {})]
    for name, values in layers:
        try:
            params, extra = SamplingParams.from_dict(values, params)
        except ValueError as exc:
            raise ValueError(f"{exc} (from the {name})" if name != "request" else str(exc)) from None
        unknown += [f"{name}: {k}" for k in extra]
    return Resolved(params, unknown)


def preset_params(info: ModelInfo | None, preset: Preset, choice: str | None = None) -> Resolved:
    """What the Parameters tab shows when ``preset`` is picked for ``info``'s model (template ``choice``): the
    policy with the named preset and no explicit fields yet (the user's slider moves are the explicit layer)."""
    return resolve_params(rule=rule_settings(info, choice), preset=preset)
