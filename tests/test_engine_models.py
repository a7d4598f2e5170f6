"""The engine with more than one model: switching per request, keeping up to N resident, and a
request that names its model getting that model even if another request switched in between."""

from __future__ import annotations

import pytest
from api_fixtures import COPY, GEMMA, two_model_folder
from conftest import collect, greedy

from backends.llamacpp import LlamaCppSettings
from webui.app import App
from webui.chat.service import TurnOptions
from webui.settings import Settings

pytestmark = pytest.mark.slow  # real models, servers or browsers


@pytest.fixture
def make_two(models_dir, tmp_path):
    """An App on a folder holding the embedded GGUF under two names; closed after the test."""
    apps = []

    def make(**settings) -> App:
        folder = two_model_folder(models_dir, tmp_path / "models")
        app = App.create(Settings(models_dir=folder, user_data=tmp_path / "ud", n_ctx=1024, **settings))
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()


def test_one_model_at_a_time_by_default(make_two):
    app = make_two()
    first = app.load_model(GEMMA)
    app.load_model(COPY)
    assert [m.model.info.name for m in app.engine.resident] == [COPY]
    # a request made for the first model gets it back (reloaded as it was loaded)
    final = list(app.chat.complete("Hello", greedy(2), TurnOptions(model=first)))[-1]
    assert final.error is None and final.usage.completion_tokens == 2
    assert app.engine.info.name == GEMMA
    assert [m.model.info.name for m in app.engine.resident] == [GEMMA]


def test_up_to_n_models_stay_resident_and_switching_back_reuses_them(make_two):
    app = make_two(max_loaded_models=2)
    app.load_model(GEMMA)
    kept = app.engine.loaded.model
    app.load_model(COPY)
    assert [m.model.info.name for m in app.engine.resident] == [COPY, GEMMA]
    app.load_model(GEMMA)
    assert app.engine.loaded.model is kept  # the same object: not loaded again
    text, last = collect(app.engine.generate("Hello", greedy(2)))
    assert last.usage.completion_tokens == 2
    app.engine.unload(app.engine.loaded.path)
    assert [m.model.info.name for m in app.engine.resident] == [COPY]
    app.engine.unload()
    assert app.engine.resident == []


def test_the_same_model_with_other_settings_is_loaded_again(make_two):
    app = make_two(max_loaded_models=2)
    info = app.load_model(GEMMA)
    app.engine.load(app.engine.loaded.path, "llama.cpp", LlamaCppSettings(n_ctx=512))
    assert app.engine.info.context_length == 512 != info.context_length
    assert len(app.engine.resident) == 1
