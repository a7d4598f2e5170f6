"""Sampling presets: files people already have load unchanged and reach llama.cpp as the sampler chain they describe."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from conftest import generate

from backends.base import CancelToken, SamplingParams
from backends.llamacpp import LlamaCppLoader, sampler_plan
from webui.chat.reply import default_params
from webui.paths import UnsafeName
from webui.presets import DEFAULT_PRESET, SHIPPED_DIR, PresetError, PresetStore, params_from, parse_preset

TGW_PRESETS = Path(__file__).resolve().parents[3] / "shared/compat/text-generation-webui/presets"
SHIPPED = sorted(p for p in SHIPPED_DIR.glob("*.yaml") if p.stem != "models")
COMPAT = sorted(TGW_PRESETS.glob("*.yaml")) if TGW_PRESETS.is_dir() else []
needs_compat = pytest.mark.skipif(not COMPAT, reason=f"no text-generation-webui presets in {TGW_PRESETS}")
JSON_PROMPT = 'Animals as JSON.\nCat: {"name": "Tom", "legs": 4}\nBird: {"name": "Tweety", "legs": 2}\nDog:'


@pytest.fixture
def store(tmp_path: Path) -> PresetStore:
    return PresetStore(tmp_path / "user_data")


def chain_names(model, plan) -> list[str]:
    """The names llama.cpp itself reports for the samplers of the chain the loader builds from ``plan``."""
    lib = model._lib
    chain = model.build_sampler(plan)
    n = lib.llama_sampler_chain_n(chain.sampler)
    return [lib.llama_sampler_name(lib.llama_sampler_chain_get(chain.sampler, i)).decode() for i in range(n)]


def test_shipped_presets_hold_only_values_that_differ_from_neutral():
    assert {p.stem for p in SHIPPED} >= {"Balanced", "Deterministic", "Creative", "Precise"}
    for path in SHIPPED:
        written = yaml.safe_load(path.read_text())
        params, unknown = parse_preset(path.read_text(), path.name)
        assert unknown == []
        assert set(written) == params.changed(), f"{path.name} restates a neutral value"


def test_the_default_preset_is_the_chat_default():
    store = PresetStore(Path("/nonexistent"))
    assert store.names()[0] == DEFAULT_PRESET
    assert store.load(DEFAULT_PRESET).params == default_params()


@pytest.mark.slow
@pytest.mark.parametrize("path", SHIPPED + COMPAT, ids=lambda p: p.stem)
def test_every_shipped_and_compat_preset_reaches_llama_cpp_as_written(path: Path, gemma):
    """Each value the file sets is either in the sampler chain llama.cpp runs, or reported as ignored."""
    written = yaml.safe_load(path.read_text()) or {}
    params, unknown = parse_preset(path.read_text(), path.name)
    assert unknown == []
    plan = sampler_plan(params, seed=42, n_ctx=2048, eog_tokens=[1])
    steps = dict(plan)
    ignored = LlamaCppLoader().ignored_params(params)
    greedy = written.get("temperature") == 0 or written.get("do_sample") is False
    if greedy:
        assert plan[-1] == ("greedy", {})
    elif params.mirostat_mode == 2:
        assert steps["mirostat_v2"] == {"seed": 42, "tau": 5.0, "eta": 0.1}
    else:
        assert plan[-1] == ("dist", {"seed": 42})
        for key, sampler, arg in [
            ("temperature", "temp", "temp"), ("top_k", "top_k", "k"), ("top_p", "top_p", "p"),
            ("min_p", "min_p", "p"), ("typical_p", "typical", "p"), ("xtc_probability", "xtc", "p"),
        ]:  # fmt: skip
            if key in written and written[key] != getattr(SamplingParams(), key):
                assert steps[sampler][arg] == pytest.approx(written[key]), key
    if written.get("repetition_penalty", 1) != 1:
        assert steps["penalties"]["penalty_repeat"] == pytest.approx(written["repetition_penalty"])
        assert steps["penalties"]["penalty_last_n"] == 1024  # text-generation-webui's default range
    if written.get("dry_multiplier"):
        assert steps["dry"]["dry_multiplier"] == written["dry_multiplier"]
        assert steps["dry"]["seq_breakers"] == ["\n", ":", '"', "*"]
    for key in ("tfs", "penalty_alpha"):
        if key in written and written[key] != getattr(SamplingParams(), key):
            assert key in ignored, f"{key} is not implemented by llama.cpp and must be reported"
    # the chain llama.cpp actually holds, by the names it gives its own samplers
    names = chain_names(gemma, plan)
    assert len(names) == len(plan)
    assert names[-1] in ("greedy", "dist", "mirostat-v2")


@pytest.mark.slow
def test_the_sampler_order_follows_sampler_priority_and_temperature_last(gemma):
    params, _ = params_from({"temperature": 0.8, "top_k": 40, "min_p": 0.1, "repetition_penalty": 1.1})
    default = chain_names(gemma, sampler_plan(params, 1, 2048, []))
    assert default == ["penalties", "temp", "top-k", "min-p", "dist"]  # text-generation-webui's default order
    last = chain_names(gemma, sampler_plan(params_from({"temperature_last": True}, params)[0], 1, 2048, []))
    assert last == ["penalties", "top-k", "min-p", "temp", "dist"]
    custom, _ = params_from({"sampler_priority": "min_p\ntop_k\ntemperature\nrepetition_penalty"}, params)
    assert chain_names(gemma, sampler_plan(custom, 1, 2048, [])) == ["min-p", "top-k", "temp", "penalties", "dist"]


@pytest.mark.slow
def test_dynamic_temperature_dry_xtc_and_banned_eos_are_real_llama_cpp_samplers(gemma):
    params, _ = params_from(
        {"dynamic_temperature": True, "dynatemp_low": 0.5, "dynatemp_high": 1.5, "dry_multiplier": 0.8,
         "xtc_probability": 0.5, "top_n_sigma": 1.5, "ban_eos_token": True}
    )  # fmt: skip
    plan = sampler_plan(params, 3, 2048, [1, 106])
    assert dict(plan)["temp_ext"] == {"t": 1.0, "delta": 0.5, "exponent": 1.0}
    assert dict(plan)["logit_bias"] == {"logit_bias": {1: -math.inf, 106: -math.inf}}
    assert chain_names(gemma, plan) == ["logit-bias", "dry", "temp-ext", "top-n-sigma", "xtc", "dist"]
    with_grammar = sampler_plan(params_from({"grammar": 'root ::= "x"'}, params)[0], 3, 2048, [1, 106])
    assert "logit_bias" not in dict(with_grammar), "a grammar must be able to end the reply"
    text, last = generate(gemma, "Once upon a time", SamplingParams(**{**params.__dict__, "max_new_tokens": 12}))
    assert text and last.usage.completion_tokens == 12


@pytest.mark.slow
def test_a_seed_reproduces_a_preset_reply_and_another_seed_differs(gemma):
    creative = PresetStore(Path("/nonexistent")).load("Creative").params

    def sample(seed: int) -> str:
        params, _ = params_from({"seed": seed, "max_new_tokens": 24}, creative)
        return generate(gemma, "Once upon a time", params)[0]

    first = sample(1234)
    assert sample(1234) == first
    assert any(sample(seed) != first for seed in (1, 2, 3))


@pytest.mark.slow
def test_the_json_grammar_makes_the_model_answer_in_json(gemma):
    grammar = PresetStore(Path("/nonexistent")).grammar("json")
    free, _ = generate(gemma, JSON_PROMPT, SamplingParams(temperature=0, max_new_tokens=40))
    with pytest.raises(json.JSONDecodeError):  # without the grammar, this model just keeps listing animals
        json.loads(free)
    text, last = generate(gemma, JSON_PROMPT, SamplingParams(temperature=0, max_new_tokens=60, grammar=grammar))
    assert last.finish_reason == "stop", "the grammar ends the reply when the object closes"
    assert isinstance(json.loads(text), dict)


@pytest.mark.parametrize(
    "text, key",
    [
        ("temperature: -1", "temperature"),
        ("top_p: 2", "top_p"),
        ("top_k: many", "top_k"),
        ("min_p: [0.1]", "min_p"),
        ("mirostat_mode: 3", "mirostat_mode"),
        ("do_sample: 'no'", "do_sample"),
        ("sampler_priority: [top_k, warp_drive]", "sampler_priority"),
    ],
)
def test_a_bad_value_is_an_error_naming_the_key(text: str, key: str):
    with pytest.raises(PresetError, match=key):
        parse_preset(text, "bad.yaml")


def test_unknown_keys_are_loaded_around_and_named_in_a_warning(store: PresetStore):
    store.user.mkdir(parents=True)
    (store.user / "Odd.yaml").write_text("temperature: 0.5\nwarp_factor: 9\nflux: 1\n")
    preset = store.load("Odd")
    assert preset.params.temperature == 0.5
    assert preset.unknown == ["warp_factor", "flux"]
    assert "warp_factor" in preset.warning and "flux" in preset.warning


def test_save_writes_only_what_differs_and_loads_back_identically(store: PresetStore):
    params, _ = params_from({"temperature": 0.9, "top_k": 30, "stop": ["###"], "grammar": 'root ::= "x"'})
    path = store.save("Mine", params)
    assert yaml.safe_load(path.read_text()) == {
        "temperature": 0.9,
        "top_k": 30,
        "stop": ["###"],
        "grammar": 'root ::= "x"',
    }
    loaded = store.load("Mine")
    assert (loaded.source, loaded.params) == ("user", params)
    assert "Mine" in store.names()
    assert list(store.user.iterdir()) == [path], "no temporary file is left behind"


def test_a_user_preset_shadows_a_shipped_one_and_deleting_it_brings_the_shipped_one_back(store: PresetStore):
    store.save("Precise", SamplingParams(temperature=0.1))
    assert store.load("Precise").params.temperature == 0.1
    store.delete("Precise")
    assert store.load("Precise").source == "shipped"
    with pytest.raises(PresetError, match="shipped"):
        store.delete("Precise")
    with pytest.raises(PresetError, match="shipped"):
        store.rename("Precise", "Mine")


def test_rename_moves_a_user_preset_and_never_overwrites(store: PresetStore):
    store.save("A", SamplingParams(temperature=0.2))
    store.save("B", SamplingParams(temperature=0.3))
    with pytest.raises(PresetError, match="already exists"):
        store.rename("A", "B")
    with pytest.raises(PresetError, match="already exists"):
        store.rename("A", "Balanced")
    store.rename("A", "C")
    assert store.load("C").params.temperature == 0.2 and store.source("A") is None
    assert store.load("B").params.temperature == 0.3


@pytest.mark.parametrize("name", ["../evil", "/etc/passwd", "a/b", "..", ".hidden", "con", "x\x00y"])
def test_preset_and_grammar_names_that_could_escape_their_folder_are_rejected(store: PresetStore, name: str):
    for action in (
        lambda: store.save(name, SamplingParams()),
        lambda: store.load(name),
        lambda: store.delete(name),
        lambda: store.rename("Balanced", name),
        lambda: store.grammar(name),
    ):
        with pytest.raises((UnsafeName, PresetError)):
            action()
    assert not any((store.user.parent.parent).rglob("evil*"))


def test_a_broken_file_is_an_error_naming_it_and_the_others_still_load(store: PresetStore):
    store.user.mkdir(parents=True)
    (store.user / "Broken.yaml").write_text("temperature: [unclosed\n")
    with pytest.raises(PresetError, match="Broken"):
        store.load("Broken")
    assert store.load("Balanced").params == default_params()


@pytest.mark.slow
def test_a_bad_grammar_from_a_preset_is_an_error_and_the_model_keeps_working(gemma):
    from backends.base import GenerationError

    with pytest.raises(GenerationError, match="grammar"):
        generate(gemma, "Hi", SamplingParams(grammar="root ::= ( oops", max_new_tokens=4))
    text, _ = generate(gemma, "Hi", SamplingParams(temperature=0, max_new_tokens=4), CancelToken())
    assert text


def test_the_parameters_form_round_trips_a_preset_and_names_a_bad_field():
    from webui.presets import form_values, neutralize, params_from_form

    creative = PresetStore(Path("/nonexistent")).load("Creative").params
    shown = form_values(creative)
    assert shown["sampler_priority"].splitlines()[:2] == ["repetition_penalty", "presence_penalty"]
    assert params_from_form(shown) == creative
    assert params_from_form({**shown, "stop": "###\nUser:", "top_k": 40.0, "seed": None}).stop == ["###", "User:"]
    with pytest.raises(ValueError, match="top_p"):
        params_from_form({**shown, "top_p": 1.5})
    kept = neutralize(params_from({"temperature": 2.0, "max_new_tokens": 99, "seed": 7, "stop": ["x"]})[0])
    assert kept == SamplingParams(max_new_tokens=99, seed=7, stop=["x"])


@pytest.mark.slow
def test_the_ui_marks_what_the_loaded_loader_ignores_and_hides_it_when_filtering(make_app):
    from webui.ui.parameters_tab import NAMES, loader_marks

    app = make_app()
    app.start()
    marks = dict(zip(NAMES, loader_marks(app, filtered=False), strict=True))
    assert marks["tfs"]["label"] == "tfs (ignored by llama.cpp)" and marks["tfs"]["visible"] is True
    assert marks["dry_multiplier"]["label"] == "dry_multiplier"
    hidden = {n for n, u in zip(NAMES, loader_marks(app, filtered=True), strict=True) if not u["visible"]}
    assert hidden == set(LlamaCppLoader().ignored_params(SamplingParams(**{n: _changed(n) for n in hidden})))
    assert "tfs" in hidden and "temperature" not in hidden and "max_new_tokens" not in hidden


def _changed(name: str):
    value = getattr(SamplingParams(), name)
    return not value if isinstance(value, bool) else value + 1 if isinstance(value, int | float) else value + "x"


def test_the_preset_line_marks_a_form_that_differs_from_its_preset():
    """Issue 13: "Balanced •modified" once any parameter differs; the same values (as the form holds them,
    floats off by a rounding, lists one per line) are not a change."""
    from webui.presets import differing_fields, form_values, preset_state

    preset = SamplingParams(temperature=0.7, top_p=0.9, stop=["END", "###"], seed=-1)
    form = form_values(preset)
    assert preset_state("Balanced", preset, form) == "Balanced"
    form["temperature"] = 0.7000000000001  # a slider's float
    form["seed"] = -1.0  # gr.Number gives floats
    assert differing_fields(preset, form) == []
    form["top_p"] = 0.85
    assert preset_state("Balanced", preset, form) == "Balanced •modified"
    assert differing_fields(preset, form) == ["top_p"]
    form["top_p"], form["stop"] = 0.9, "END"
    assert differing_fields(preset, form) == ["stop"]
    form["temperature"] = "warm"
    assert differing_fields(preset, form) == ["(form)"]
    assert preset_state("Balanced", None, form) == "Balanced"  # unreadable preset: the name alone
