"""The Model tab's logic without a browser: dropdowns, the settings form, Load/Unload/Reload/Save, the info panel."""

from __future__ import annotations

import pytest
from conftest import copy_default

from webui.app import App
from webui.models import panel as core
from webui.models.catalog import Catalog
from webui.models.settings import load_saved, saved_path
from webui.settings import Settings


def test_choices_flow_from_model_to_quantization_to_loader_to_its_settings(request, models_dir, tmp_path):
    model = copy_default(models_dir, tmp_path / "m")
    app = App.create(Settings(models_dir=tmp_path / "m", user_data=tmp_path / "u", n_ctx=2048))
    request.addfinalizer(app.close)
    catalog = Catalog(tmp_path / "m")
    assert core.model_choices(catalog) == ["gemma-3-270m"]
    assert core.variant_choices(catalog, "gemma-3-270m") == [(f"Q4_K_M (gguf) — {model.name}", model.name)]
    labels, natural = core.loader_choices(app, catalog, model.name)
    assert labels == [("llama.cpp", "llama.cpp"), ("transformers", "transformers")] and natural == "llama.cpp"
    hf = core.form_values(app, catalog, "transformers", model.name)  # the transformers loader reads GGUF too
    assert {"dtype", "device", "trust_remote_code", "allow_pickle"} <= set(hf) and "use_mmap" not in hf
    assert hf["trust_remote_code"] is False and hf["allow_pickle"] is False
    values = core.form_values(app, catalog, "llama.cpp", model.name)
    assert values["n_ctx"] == 2048 and values["use_mmap"] is True  # the app's --n-ctx, the loader's defaults
    assert "n_ctx" in core.all_fields(app)
    info = core.info_markdown(app, catalog, model.name, 1024)
    assert "quantization: Q4_K_M (7.36 bits/weight)" in info and "memory at 1024 tokens" in info


@pytest.mark.slow
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
    # while it runs, the form (a new tab's too) shows the settings it runs with, not the start-up ones
    assert core.form_values(app, catalog, "llama.cpp", model.name)["n_ctx"] == 1024
    assert "context 512" in core.reload(app, "llama.cpp", {**form, "n_ctx": 512})
    assert core.panel_state(app, catalog).values["n_ctx"] == 512
    assert core.unload(app).startswith("Unloaded") and app.engine.info is None
    assert core.form_values(app, catalog, "llama.cpp", model.name)["n_ctx"] == 768  # unloaded: what was saved
    kept = core.panel_state(app, catalog, keep=("gemma-3-270m", model.name))  # the page's choice after Unload
    assert (kept.model, kept.variant, kept.values["n_ctx"]) == ("gemma-3-270m", model.name, 768)
    assert core.panel_state(app, catalog).model is None  # a new tab: nothing loaded, nothing chosen
    status = core.load(app, catalog, "", model.name, "llama.cpp", {**form, "n_ctx": 640})  # empty model box
    assert "context 640" in status, status
    assert core.unload(app).startswith("Unloaded")
    assert core.reload(app, "llama.cpp", form).startswith("⚠️")
    app.load_model(model.name)  # a later load (UI or CLI) uses what was saved
    assert app.engine.info.context_length == 768


def test_the_status_line_names_model_loader_context_and_memory(fake_app):
    line = core.status_line(fake_app)
    assert "hello" in line and "context" in line and "·" in line
    fake_app.engine.unload()
    assert core.status_line(fake_app).startswith("**No model loaded**")


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


@pytest.mark.slow
def test_a_tiny_hf_folder_is_offered_transformers_loads_and_saves_without_the_code_flags(request, tiny_llama, tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "tiny-llama").symlink_to(tiny_llama, target_is_directory=True)
    app = App.create(Settings(models_dir=tmp_path / "m", user_data=tmp_path / "u", n_ctx=512))
    request.addfinalizer(app.close)
    catalog = Catalog(tmp_path / "m")
    labels, natural = core.loader_choices(app, catalog, "tiny-llama")
    assert labels == [("transformers", "transformers")] and natural == "transformers"
    form = {**core.form_values(app, catalog, "transformers", "tiny-llama"), "dtype": "float32", "device": "cpu"}
    status = core.load(app, catalog, "tiny-llama", "tiny-llama", "transformers", form)
    assert status.startswith("Loaded tiny-llama with transformers"), status
    assert app.engine.loaded.settings.dtype == "float32"
    assert core.save(app, catalog, "tiny-llama", "transformers", {**form, "trust_remote_code": True}).startswith(
        "Saved"
    )
    saved = load_saved(app.settings.user_data, "tiny-llama")
    assert saved.loader == "transformers" and saved.settings["dtype"] == "float32"
    assert "trust_remote_code" not in saved.settings and "allow_pickle" not in saved.settings


def test_code_running_settings_cannot_be_switched_from_a_ui_served_beyond_this_machine(tmp_path):
    wide = App.create(Settings(host="0.0.0.0", models_dir=tmp_path / "m", user_data=tmp_path / "u"))
    local = App.create(Settings(models_dir=tmp_path / "m", user_data=tmp_path / "u"))
    asked = {"trust_remote_code": True, "allow_pickle": True, "dtype": "float32"}
    remote = core.settings_from_form(wide, "transformers", asked)
    assert (remote.trust_remote_code, remote.allow_pickle, remote.dtype) == (False, False, "float32")
    assert core.locked(wide, "trust_remote_code") and core.locked(wide, "allow_pickle")
    here = core.settings_from_form(local, "transformers", asked)
    assert (here.trust_remote_code, here.allow_pickle) == (True, True), "on this machine the form may, for one load"
    assert not core.locked(local, "trust_remote_code") and not core.locked(wide, "dtype")


def test_a_hand_edited_saved_file_cannot_switch_on_remote_code(tmp_path):
    app = App.create(Settings(models_dir=tmp_path / "m", user_data=tmp_path / "u"))
    path = saved_path(app.settings.user_data, "tiny-llama")
    path.parent.mkdir(parents=True)
    path.write_text("loader: transformers\nsettings: {trust_remote_code: true, allow_pickle: true, dtype: float32}\n")
    settings = app.load_settings_for("transformers", load_saved(app.settings.user_data, "tiny-llama").settings)
    assert (settings.trust_remote_code, settings.allow_pickle, settings.dtype) == (False, False, "float32")
    cli = App.create(Settings(models_dir=tmp_path / "m", user_data=tmp_path / "u", trust_remote_code=True))
    assert cli.load_settings_for("transformers").trust_remote_code is True, "the command line decides"
