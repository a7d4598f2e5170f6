"""One coercer, one sampling-defaults policy for every face, and failures told apart by type.

The faces are driven for real on the fake loader (a ``.fake`` model with ``echo_params`` replies with the
sampling parameters it received): the API through FastAPI's test client, ``inglenook run`` in a subprocess,
and the UI's core (what the Parameters tab shows for a preset, read back as the form, sent through the
notebook). The model is named ``alpaca-…`` so the shipped presets/models.yaml rule (temperature 0.7) applies.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import cli
from fastapi import FastAPI
from fastapi.testclient import TestClient

from backends.base import (
    BadRequest,
    Busy,
    GenerationError,
    ModelLoadError,
    ModelNotFound,
    ModelNotLoaded,
    PromptTooLong,
    SamplingParams,
)
from webui.api.errors import status_of
from webui.api.routes import install_api
from webui.api.types import ApiError, CompletionRequest, request_values
from webui.app import App
from webui.chat.notebook import NotebookStore, generate
from webui.chat.sampling import default_params, preset_params, resolve_params
from webui.extensions.tgw import params_from_state
from webui.presets import Preset, PresetError, form_values, params_from, params_from_form
from webui.settings import Settings

ECHO = "alpaca-echo"  # matches the shipped alpaca rule: template alpaca, temperature 0.7
# rule temperature 0.7 (neutral would be 1.0) → preset Mirostat (mirostat_mode 2 only) → explicit top_k 7
EXPECTED = {"mirostat_mode": 2, "temperature": 0.7, "top_k": 7}


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    models, user_data = tmp_path / "models", tmp_path / "user_data"
    models.mkdir()
    user_data.mkdir()
    (models / f"{ECHO}.fake").write_text(json.dumps({"echo_params": True}))
    (models / "tiny.fake").write_text(json.dumps({"reply": "Hi.", "context_length": 64}))
    return models, user_data


@pytest.fixture
def app(folders):
    models, user_data = folders
    app = App.create(Settings(models_dir=models, user_data=user_data, n_ctx=4096, max_loaded_models=2))
    app.load_model("tiny.fake")
    app.load_model(f"{ECHO}.fake")  # the active one
    yield app
    app.close()


@pytest.fixture
def api(app: App) -> TestClient:
    server = FastAPI()
    install_api(server, app)
    return TestClient(server)


def echoed(text: str) -> dict:
    return json.loads(text)


# -- one coercer ----------------------------------------------------------------------------------------------


def test_every_face_coerces_a_dict_the_same_way_and_names_the_bad_key():
    params, unknown = SamplingParams.from_dict({"max_tokens": 9.0, "temperature": 1, "warp": 3, "stop": "###"})
    assert (params.max_new_tokens, params.temperature, params.stop, unknown) == (9, 1.0, ["###"], ["warp"])
    assert isinstance(params.temperature, float) and isinstance(params.max_new_tokens, int)
    # a preset file, an API body's extra field and a text-generation-webui state_modifier: one coercer, one message
    with pytest.raises(ValueError) as direct:
        SamplingParams.from_dict({"top_k": "many"})
    with pytest.raises(PresetError) as preset:
        params_from({"top_k": "many"})
    with pytest.raises(ValueError) as state:
        params_from_state({"top_k": "many"}, SamplingParams())
    body = CompletionRequest(prompt="x", top_k="many")
    with pytest.raises(ValueError) as api:
        resolve_params(explicit=request_values(body)[0])
    assert str(direct.value) == str(preset.value) == str(state.value) == str(api.value)
    assert "top_k" in str(direct.value)
    assert params_from_state({"top_k": 5.0, "mode": "chat"}, SamplingParams()).top_k == 5


def test_grammar_sent_as_a_field_is_a_sampling_value_not_ignored():
    values, ignored = request_values(CompletionRequest(prompt="x", grammar='root ::= "y"', flux=1))
    assert values["grammar"] == 'root ::= "y"' and ignored == ["flux"]
    with pytest.raises(ApiError):  # both ways at once: which one would win is not obvious, so neither does
        request_values(CompletionRequest(prompt="x", grammar="g", response_format={"type": "json_object"}))


# -- one policy ----------------------------------------------------------------------------------------------


def test_the_layers_apply_in_order_rule_preset_conversation_request():
    precise = Preset("Precise", "shipped", SamplingParams(temperature=0.3, top_k=20))
    assert resolve_params(rule={"temperature": 0.5}).params == default_params({"temperature": 0.5})
    with_preset = resolve_params(rule={"temperature": 0.5, "min_p": 0.2}, preset=precise).params
    assert (with_preset.temperature, with_preset.min_p, with_preset.top_p) == (0.3, 0.2, 1.0), (
        "the preset wins over the rule; the rule's other keys stay; a named preset starts from neutral"
    )
    layered = resolve_params(
        rule={"temperature": 0.5, "typo_k": 1}, preset=precise, conversation={"top_k": 30, "seed": 4},
        explicit={"top_k": 35},
    )  # fmt: skip
    assert (layered.params.top_k, layered.params.seed) == (35, 4)
    assert layered.unknown == ["rule: typo_k"]
    start = SamplingParams(max_new_tokens=16)
    assert resolve_params(start=start, rule={"temperature": 0.5}).params == SamplingParams(16, temperature=0.5)
    with pytest.raises(ValueError, match="from the rule"):
        resolve_params(rule={"temperature": -1})


def test_the_same_rule_preset_and_field_give_the_same_params_in_the_api_the_cli_and_the_ui(app, api, folders):
    models, user_data = folders
    # the API: a preset by name, a field by name
    r = api.post("/v1/completions", json={"model": ECHO, "prompt": "Hi", "preset": "Mirostat", "top_k": 7})
    assert r.status_code == 200, r.text
    assert echoed(r.json()["choices"][0]["text"]) == EXPECTED
    # the CLI: --preset and a flag
    run = cli("run", f"{ECHO}.fake", "Hi", "--preset", "Mirostat", "--top-k", "7", "--json",
              "--models-dir", str(models), "--user-data", str(user_data))  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert echoed(json.loads(run.stdout.strip().splitlines()[-1])["text"]) == EXPECTED
    # the UI: the Parameters tab shows the preset for this model; the user moves top_k; the notebook sends it
    shown = form_values(preset_params(app.engine.info, app.presets.load("Mirostat")).params)
    params = params_from_form({**shown, "top_k": 7})
    final = list(generate(app.chat, NotebookStore(user_data), "Hi", params))[-1]
    assert final.error is None and echoed(final.text[len("Hi") :]) == EXPECTED


def test_the_model_rule_reaches_the_api_and_the_cli_without_a_preset(api, folders):
    models, user_data = folders
    r = api.post("/v1/completions", json={"model": ECHO, "prompt": "Hi"})
    assert echoed(r.json()["choices"][0]["text"]) == {"max_new_tokens": 16, "temperature": 0.7}, (
        "OpenAI's neutral defaults, with the rule's temperature"
    )
    run = cli("run", f"{ECHO}.fake", "Hi", "--json", "--models-dir", str(models), "--user-data", str(user_data))
    assert run.returncode == 0, run.stderr
    got = echoed(json.loads(run.stdout.strip().splitlines()[-1])["text"])
    assert got == {k: v for k, v in vars(default_params({"temperature": 0.7})).items() if k in got}
    assert got["temperature"] == 0.7 and got["top_k"] == 40


def test_a_preset_the_api_does_not_have_is_404_and_grammar_is_not_listed_as_ignored(api):
    r = api.post("/v1/completions", json={"model": ECHO, "prompt": "Hi", "preset": "No Such Preset"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "preset_not_found"
    r = api.post("/v1/completions", json={"model": ECHO, "prompt": "Hi", "grammar": 'root ::= "x"', "max_tokens": 99})
    body = r.json()
    assert echoed(body["choices"][0]["text"])["grammar"] == 'root ::= "x"', "it reached the model"
    assert "grammar" not in body["ignored"]["fields"]
    assert "grammar" in body["ignored"]["params_the_loader_ignores"], "the fake loader has no grammar: said so"


# -- typed errors -----------------------------------------------------------------------------------------------


def test_each_failure_type_has_one_status():
    cases = {
        PromptTooLong("x"): (400, "context_length_exceeded"),
        ModelNotFound("x"): (404, "model_not_found"),
        ModelNotLoaded("x"): (503, "model_not_loaded"),
        Busy("x"): (503, "busy"),
        BadRequest("x"): (400, None),
        ModelLoadError("x"): (500, "model_load_failed"),
        GenerationError("x"): (400, None),
        RuntimeError("x"): (500, None),
        None: (400, None),
    }
    assert {repr(k): status_of(k) for k in cases} == {repr(k): v for k, v in cases.items()}


def test_a_prompt_too_long_is_400_context_length_exceeded_by_type_with_its_message(api):
    r = api.post("/v1/chat/completions", json={"model": "tiny", "messages": [{"role": "user", "content": "x" * 500}]})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "context_length_exceeded"
    assert "the context holds 64" in r.json()["error"]["message"], "the user-facing message is kept"
