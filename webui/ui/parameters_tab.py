"""The Parameters tab: every sampling parameter, presets and grammars, wired to :mod:`webui.presets`.

The widgets are created unrendered so that the Chat tab (built first, shown first) can take them as the
inputs of its ``/chat`` event; :meth:`ParametersTab.render` lays them out inside the tab.
"""

from __future__ import annotations

from dataclasses import fields

import gradio as gr

from backends.base import SamplingParams, field_kind, param_doc, param_range
from webui.app import App
from webui.chat.sampling import preset_params
from webui.paths import UnsafeName
from webui.presets import (
    DEFAULT_PRESET,
    PresetError,
    PresetStore,
    form_values,
    ignored_fields,
    neutralize,
    params_from_form,
    preset_state,
)
from webui.templates.prefs import TemplatePrefs

# The order the /chat API takes them in starts with the parameters it took before presets existed.
FIRST = ("max_new_tokens", "temperature", "top_p", "top_k", "min_p", "repetition_penalty", "seed")
NAMES = [*FIRST, *(f.name for f in fields(SamplingParams) if f.name not in FIRST and f.metadata.get("ui", True))]
GROUPS = {
    "Basics": [*FIRST[:6], "seed", "stop", "ban_eos_token", "do_sample"],
    "Penalties": ["repetition_penalty_range", "presence_penalty", "frequency_penalty", "encoder_repetition_penalty",
                  "no_repeat_ngram_size", "dry_multiplier", "dry_base", "dry_allowed_length", "dry_sequence_breakers"],
    "More samplers": ["typical_p", "tfs", "top_a", "top_n_sigma", "epsilon_cutoff", "eta_cutoff", "xtc_threshold",
                      "xtc_probability", "smoothing_factor", "smoothing_curve", "dynamic_temperature", "dynatemp_low",
                      "dynatemp_high", "dynatemp_exponent", "temperature_last", "mirostat_mode", "mirostat_tau",
                      "mirostat_eta", "penalty_alpha", "guidance_scale", "sampler_priority"],
}  # fmt: skip
LABELS = {"max_new_tokens": "Max new tokens", "temperature": "Temperature", "seed": "Seed (-1 = random)"}
# Slider ends for parameters the engine leaves unbounded (or bounded far beyond anything useful): (low, high, step)
UI_RANGE = {
    "max_new_tokens": (1, 8192, 1), "temperature": (0, 5, 0.01), "top_k": (0, 200, 1), "top_a": (0, 1, 0.01),
    "top_n_sigma": (0, 5, 0.01), "eta_cutoff": (0, 20, 0.01), "smoothing_factor": (0, 10, 0.01),
    "smoothing_curve": (1, 10, 0.01), "repetition_penalty": (0.5, 2, 0.01), "repetition_penalty_range": (0, 8192, 1),
    "encoder_repetition_penalty": (0.8, 1.5, 0.01), "no_repeat_ngram_size": (0, 20, 1), "dry_multiplier": (0, 5, 0.01),
    "dry_base": (1.01, 4, 0.01), "dry_allowed_length": (1, 20, 1), "dynatemp_low": (0, 5, 0.01),
    "dynatemp_high": (0, 5, 0.01), "dynatemp_exponent": (0.01, 5, 0.01), "mirostat_mode": (0, 2, 1),
    "mirostat_tau": (0, 10, 0.01), "mirostat_eta": (0, 1, 0.01), "penalty_alpha": (0, 5, 0.01),
    "guidance_scale": (-0.5, 2.5, 0.05), "typical_p": (0.01, 1, 0.01),
}  # fmt: skip
assert sorted(set(NAMES) - {"grammar"}) == sorted(n for g in GROUPS.values() for n in g), "every parameter has a place"


def _widget(name: str, value):
    f = next(f for f in fields(SamplingParams) if f.name == name)
    kind, label, info = field_kind(f.type), LABELS.get(name, name), param_doc(name)
    common = {"label": label, "info": info, "elem_id": f"param-{name}", "render": False}
    if kind is bool:
        return gr.Checkbox(value=value, **common)
    if name == "seed":
        return gr.Number(value=value, precision=0, **common)
    if kind in (int, float):
        lo, hi = param_range(name)
        low, high, step = UI_RANGE.get(name, (lo or 0, hi if hi is not None else 1, 1 if kind is int else 0.01))
        return gr.Slider(low, high, value=value, step=step, **common)
    lines = 6 if name == "sampler_priority" else 2
    return gr.Textbox(value=value, lines=lines, placeholder="one per line" if name in ("stop",) else None, **common)


def loader_marks(app: App, filtered: bool) -> list:
    """Per parameter (in NAMES order): hidden when filtering and the current loader ignores it, else labelled."""
    loaded = app.engine.loaded
    if loaded is None:
        return [gr.update(visible=True, label=LABELS.get(n, n)) for n in NAMES]
    ignored = ignored_fields(loaded.loader.supported_params)
    return [
        gr.update(
            visible=not (filtered and n in ignored),
            label=f"{LABELS.get(n, n)} (ignored by {loaded.loader.name})" if n in ignored else LABELS.get(n, n),
        )
        for n in NAMES
    ]


class ParametersTab:
    """The widgets of every parameter, the preset controls and the grammar box."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.store = PresetStore(app.settings.user_data)
        start = self._initial()
        values = form_values(start)
        self.widgets = {name: _widget(name, values[name]) for name in NAMES if name != "grammar"}
        self.grammar = gr.Code(
            value=values["grammar"], label="Grammar (GBNF)", lines=6, elem_id="param-grammar", render=False
        )
        # made here, laid out in render(): the chat keeps its name in each conversation (issue 13)
        self.preset = gr.Dropdown(
            choices=self.store.names(), value=DEFAULT_PRESET, label="Preset", scale=4, elem_id="preset-choice",
            render=False,
        )  # fmt: skip

    def _initial(self) -> SamplingParams:
        try:
            return self.store.load(DEFAULT_PRESET).params
        except (PresetError, UnsafeName):
            return SamplingParams()

    @property
    def inputs(self) -> dict:
        """Parameter name -> widget, in the /chat API's order."""
        return {name: self.widgets[name] if name != "grammar" else self.grammar for name in NAMES}

    def render(self) -> gr.Checkbox:
        """Lay the tab out (call inside ``gr.Tab``); returns the filter checkbox for the page's load event."""
        preset = self.preset
        with gr.Row():
            preset.render()
            new_name = gr.Textbox(label="Name for Save as / Rename", scale=3, elem_id="preset-new-name")
        # the active preset, marked "•modified" once a parameter differs from it (webui.presets.preset_state)
        state = gr.Markdown(f"Preset: **{DEFAULT_PRESET}**", elem_id="preset-state")
        with gr.Row():
            save = gr.Button("Save", elem_id="preset-save")
            save_as = gr.Button("Save as", elem_id="preset-save-as")
            rename = gr.Button("Rename", elem_id="preset-rename")
            delete = gr.Button("Delete", variant="stop", elem_id="preset-delete")
            neutral = gr.Button("Neutralize", elem_id="preset-neutralize")
        status = gr.Markdown("", elem_id="preset-status")
        filtered = gr.Checkbox(False, label="Filter by loader: hide what the loaded model's loader ignores",
                               elem_id="filter-by-loader")  # fmt: skip
        for title, names in GROUPS.items():
            with gr.Accordion(title, open=title == "Basics"):
                for start in range(0, len(names), 3):
                    with gr.Row():
                        for name in names[start : start + 3]:
                            self.widgets[name].render()
        with gr.Accordion("Grammar", open=False):
            grammar_file = gr.Dropdown(
                choices=["", *self.store.grammar_names()], value="", label="Grammar file", elem_id="grammar-choice"
            )
            self.grammar.render()

        order = list(self.inputs.values())  # NAMES order, the grammar box included

        def values_of(params: SamplingParams) -> list:
            shown = form_values(params)
            return [shown[n] for n in NAMES]

        def reference(name: str) -> tuple[SamplingParams, str]:
            """What picking preset ``name`` sets the form to (the model's rule under it), and a note."""
            loaded = self.store.load(name)  # PresetError, UnsafeName
            note = f"⚠️ {loaded.warning}" if loaded.warning else f"Loaded preset {name} ({loaded.source})."
            info = self.app.engine.info  # the model's models.yaml rule lies under the preset (webui.chat.sampling)
            choice = TemplatePrefs(self.app.settings.user_data).get(info.name) if info else None
            try:
                return preset_params(info, loaded, choice).params, note
            except ValueError as exc:  # a models.yaml rule with a bad value
                return loaded.params, f"⚠️ {exc}"

        def choose(name: str):
            try:
                params, note = reference(name)
            except (PresetError, UnsafeName) as exc:
                return [gr.skip()] * len(order) + [f"⚠️ {exc}"]
            return [*values_of(params), note]

        def show_state(name: str | None, *values):
            """The preset line: its name, and "•modified" when the form differs from what picking it sets."""
            if not name:
                return "Preset: (none)"
            try:
                params = reference(name)[0]
            except (PresetError, UnsafeName):
                params = None
            return f"Preset: **{preset_state(name, params, dict(zip(NAMES, values, strict=True)))}**"

        def current(values: list) -> SamplingParams:
            return params_from_form(dict(zip(NAMES, values, strict=True)))

        def write(name: str, values: list, what: str):
            try:
                self.store.save(name, current(values))
            except (ValueError, UnsafeName) as exc:  # PresetError is a ValueError
                return gr.skip(), f"⚠️ {exc}"
            return gr.update(choices=self.store.names(), value=name), f"{what} preset {name}."

        def do_save(name, *values):
            return write(name or DEFAULT_PRESET, list(values), "Saved")

        def do_save_as(new, *values):
            try:
                exists = self.store.source(new or "") is not None
            except UnsafeName as exc:
                return gr.skip(), f"⚠️ {exc}"
            if exists:
                return gr.skip(), f"⚠️ a preset named {new!r} already exists: pick it and press Save to overwrite"
            return write(new, list(values), "Saved")

        def do_rename(name, new):
            try:
                self.store.rename(name, new)
            except (ValueError, UnsafeName) as exc:
                return gr.skip(), f"⚠️ {exc}"
            return gr.update(choices=self.store.names(), value=new), f"Renamed {name} to {new}."

        def do_delete(name):
            try:
                self.store.delete(name)
            except (ValueError, UnsafeName) as exc:
                return gr.skip(), f"⚠️ {exc}"
            left = name if self.store.source(name) else DEFAULT_PRESET
            return gr.update(choices=self.store.names(), value=left), f"Deleted preset {name}."

        def do_neutralize(*values):
            try:
                params = current(list(values))
            except ValueError:
                params = SamplingParams()
            return [*values_of(neutralize(params)), "All samplers set to neutral (not saved)."]

        def pick_grammar(name: str):
            if not name:
                return gr.skip(), ""
            try:
                return self.store.grammar(name), f"Grammar {name} loaded into the box."
            except (PresetError, UnsafeName) as exc:
                return gr.skip(), f"⚠️ {exc}"

        preset.select(choose, preset, [*order, status], api_name=False)  # the same one again: its values back
        save.click(do_save, [preset, *order], [preset, status], api_name=False)
        save_as.click(do_save_as, [new_name, *order], [preset, status], api_name=False)
        rename.click(do_rename, [preset, new_name], [preset, status], api_name=False)
        delete.click(do_delete, preset, [preset, status], api_name=False)
        neutral.click(do_neutralize, order, [*order, status], api_name=False)
        grammar_file.input(pick_grammar, grammar_file, [self.grammar, status], api_name=False)
        filtered.change(lambda f: loader_marks(self.app, f), filtered, order, api_name=False)
        # any change of a value (typed, a preset picked, a conversation's saved values) re-marks the line;
        # "always_last" folds the burst of changes a preset pick makes into one check
        gr.on(
            [preset.change, *(w.change for w in order)], show_state, [preset, *order], state, api_name=False,
            trigger_mode="always_last", show_progress="hidden",
        )  # fmt: skip
        self.filtered = filtered
        # the same check as a step to chain after what sets the preset and the values together (a reload's
        # restore, a conversation picked): their .change may fire before the picker's new value is read
        self.state_refresh = (show_state, [preset, *order], state)
        return filtered

    def mark(self, filtered: bool) -> list:
        """Updates for every parameter widget after the loaded model changed (see :func:`loader_marks`)."""
        return loader_marks(self.app, filtered)
