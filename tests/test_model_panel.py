"""The Model tab's logic without a browser: dropdowns, the settings form, Load/Unload/Reload/Save, the info panel."""

from __future__ import annotations

from conftest import copy_default

from webui import model_panel as core
from webui.app import App
from webui.catalog import Catalog
from webui.model_settings import load_saved
from webui.settings import Settings


def test_choices_flow_from_model_to_quantization_to_loader_to_its_settings(request, models_dir, tmp_path):
    model = copy_default(models_dir, tmp_path / "m")
    app = App.create(Settings(models_dir=tmp_path / "m", user_data=tmp_path / "u", n_ctx=2048))
    request.addfinalizer(app.close)
    catalog = Catalog(tmp_path / "m")
    assert core.model_choices(catalog) == ["gemma-3-270m"]
    assert core.variant_choices(catalog, "gemma-3-270m") == [(f"Q4_K_M (gguf) — {model.name}", model.name)]
    labels, natural = core.loader_choices(app, catalog, model.name)
    assert labels == [("llama.cpp", "llama.cpp")] and natural == "llama.cpp"
    values = core.form_values(app, catalog, "llama.cpp", model.name)
    assert values["n_ctx"] == 2048 and values["use_mmap"] is True  # the app's --n-ctx, the loader's defaults
    assert "n_ctx" in core.all_fields(app)
    info = core.info_markdown(app, catalog, model.name, 1024)
    assert "quantization: Q4_K_M (7.36 bits/weight)" in info and "memory at 1024 tokens" in info


def test_load_with_the_forms_settings_then_save_reload_and_unload(request, models_dir, tmp_path):
    model = copy_default(models_dir, tmp_path / "m")
    app = App.create(Settings(models_dir=tmp_path / "m", user_data=tmp_path / "u", n_ctx=2048))
    request.addfinalizer(app.close)
    catalog = Catalog(tmp_path / "m")
    form = {**core.form_values(app, catalog, "llama.cpp", model.name), "n_ctx": 1024}
    status = core.load(app, catalog, "gemma-3-270m", model.name, "llama.cpp", form)
    assert status.startswith("Loaded gemma-3-270m") and "context 1024" in status
    assert core.current(app, catalog) == ("gemma-3-270m", model.name)
    assert core.save(app, catalog, model.name, "llama.cpp", {**form, "n_ctx": 768}).startswith("Saved")
    assert load_saved(app.settings.user_data, model.name).settings["n_ctx"] == 768
    assert core.form_values(app, catalog, "llama.cpp", model.name)["n_ctx"] == 768  # the form starts from it
    assert "context 512" in core.reload(app, "llama.cpp", {**form, "n_ctx": 512})
    assert core.unload(app).startswith("Unloaded") and app.engine.info is None
    assert core.reload(app, "llama.cpp", form).startswith("⚠️")
    app.load_model(model.name)  # a later load (UI or CLI) uses what was saved
    assert app.engine.info.context_length == 768


def test_bad_form_values_and_unknown_models_are_one_line_errors(request, models_dir, tmp_path):
    model = copy_default(models_dir, tmp_path / "m")
    app = App.create(Settings(models_dir=tmp_path / "m", user_data=tmp_path / "u", n_ctx=2048))
    request.addfinalizer(app.close)
    catalog = Catalog(tmp_path / "m")
    status = core.load(app, catalog, "gemma-3-270m", model.name, "llama.cpp", {"n_ctx": "lots"})
    assert status == "⚠️ setting n_ctx = 'lots' is not a valid int"
    assert core.load(app, catalog, "no-such-model", model.name, "llama.cpp", {}).startswith("⚠️ model not found")
    assert core.load(app, catalog, "../../etc/passwd", "", None, {}).startswith("⚠️")
    assert core.save(app, catalog, "", None, {}).startswith("⚠️")
