"""Load settings as form fields, and "save settings for this model": remembered, applied on the next load."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

import pytest
import yaml
from conftest import cli, copy_default

from backends.base import LoadSettings
from backends.llamacpp import LlamaCppSettings
from webui.models.settings import (
    build_settings,
    forget_settings,
    load_saved,
    save_settings,
    saved_path,
    setting_fields,
)
from webui.paths import UnsafeName


@dataclass
class DeviceSettings(LoadSettings):
    dtype: Literal["auto", "bfloat16", "float32"] = "auto"
    device: str = "cpu"
    temperature_scale: float = 1.0
    trust_remote_code: bool = False


def test_the_llama_cpp_settings_become_typed_fields_in_declaration_order():
    fields = {f.name: f for f in setting_fields(LlamaCppSettings)}
    assert list(fields) == [
        "n_ctx", "threads", "n_gpu_layers", "n_batch", "use_mmap", "use_mlock", "flash_attn", "extra_buffer_types",
        "parallel", "kv_cache_ram_mb", "kv_cache_disk_mb", "draft", "draft_tokens",
    ]  # fmt: skip
    assert (fields["n_ctx"].kind, fields["n_ctx"].default) == ("int", 4096)
    assert fields["n_ctx"].label == "Context length (tokens)"
    assert (fields["use_mmap"].kind, fields["use_mmap"].default) == ("bool", True)


def test_literal_float_and_str_fields():
    fields = {f.name: f for f in setting_fields(DeviceSettings)}
    assert (fields["dtype"].kind, fields["dtype"].choices) == ("choice", ["auto", "bfloat16", "float32"])
    assert fields["device"].kind == "str"
    assert fields["temperature_scale"].kind == "float"
    assert fields["trust_remote_code"].kind == "bool"


def test_form_values_become_the_loaders_settings_and_bad_ones_are_named():
    s = build_settings(LlamaCppSettings, {"n_ctx": 1024.0, "use_mlock": "true", "unknown": 1, "n_batch": None})
    assert s == LlamaCppSettings(n_ctx=1024, use_mlock=True)
    assert build_settings(DeviceSettings, {"dtype": "bfloat16"}).dtype == "bfloat16"
    with pytest.raises(ValueError, match=r"dtype = 'int3' is not a valid choice \(one of auto, bfloat16, float32\)"):
        build_settings(DeviceSettings, {"dtype": "int3"})
    with pytest.raises(ValueError, match="n_ctx = 'lots'"):
        build_settings(LlamaCppSettings, {"n_ctx": "lots"})
    with pytest.raises(ValueError, match="n_ctx = 1.5"):
        build_settings(LlamaCppSettings, {"n_ctx": 1.5})
    with pytest.raises(ValueError, match="too small"):
        build_settings(LlamaCppSettings, {"n_ctx": 0})


def test_saved_settings_round_trip_as_plain_yaml(tmp_path):
    path = save_settings(tmp_path, "foo.Q4_K_M.gguf", "llama.cpp", LlamaCppSettings(n_ctx=1024, n_batch=128))
    assert path == tmp_path / "model-settings" / "foo.Q4_K_M.gguf.yaml"
    data = yaml.safe_load(path.read_text())
    assert data["loader"] == "llama.cpp" and data["settings"]["n_ctx"] == 1024 and data["settings"]["n_batch"] == 128
    assert list(path.parent.iterdir()) == [path]  # written through a temporary file, nothing left behind
    saved = load_saved(tmp_path, "foo.Q4_K_M.gguf")
    assert build_settings(LlamaCppSettings, saved.settings) == LlamaCppSettings(n_ctx=1024, n_batch=128)
    assert load_saved(tmp_path, "bar.gguf") is None
    assert forget_settings(tmp_path, "foo.Q4_K_M.gguf") and load_saved(tmp_path, "foo.Q4_K_M.gguf") is None


@pytest.mark.parametrize("name", ["../escape.gguf", "a/b.gguf", "..", "", ".hidden", "/etc/passwd"])
def test_model_names_are_validated_before_they_reach_a_path(tmp_path, name):
    with pytest.raises(UnsafeName):
        saved_path(tmp_path, name)
    with pytest.raises(UnsafeName):
        save_settings(tmp_path, name, "llama.cpp", LlamaCppSettings())
    assert not (tmp_path / "escape.gguf.yaml").exists()


def test_a_damaged_settings_file_is_ignored_not_deleted(tmp_path):
    path = saved_path(tmp_path, "foo.gguf")
    path.parent.mkdir(parents=True)
    path.write_text("loader: [unclosed")
    assert load_saved(tmp_path, "foo.gguf") is None
    assert path.read_text() == "loader: [unclosed"


@pytest.mark.slow
def test_saved_settings_are_applied_when_the_model_is_loaded_again(make_app, gemma_path):
    app = make_app()
    save_settings(app.settings.user_data, gemma_path.name, "llama.cpp", LlamaCppSettings(n_ctx=1024, n_batch=64))
    info = app.load_model(gemma_path.name)
    assert info.context_length == 1024
    assert app.engine.loaded.settings == LlamaCppSettings(n_ctx=1024, n_batch=64)
    # settings given for this load win over the saved ones (the Model tab passes what its form shows)
    app.load_model(gemma_path.name, settings=LlamaCppSettings(n_ctx=512))
    assert app.engine.info.context_length == 512


@pytest.mark.slow
def test_explicit_command_line_options_win_over_saved_settings(make_app, gemma_path):
    app = make_app(load_overrides={"n_ctx": 768})
    save_settings(app.settings.user_data, gemma_path.name, "llama.cpp", LlamaCppSettings(n_ctx=1024, n_batch=64))
    app.load_model(gemma_path.name)
    assert app.engine.loaded.settings.n_ctx == 768 and app.engine.loaded.settings.n_batch == 64


@pytest.mark.slow
def test_a_saved_loader_that_is_not_installed_is_ignored(make_app, gemma_path):
    app = make_app()
    save_settings(app.settings.user_data, gemma_path.name, "long-gone", LlamaCppSettings(n_ctx=1024))
    assert app.load_model(gemma_path.name).loader == "llama.cpp"
    assert app.engine.loaded.settings.n_ctx == 2048  # the saved values belonged to the other loader


@pytest.mark.slow
def test_the_cli_applies_saved_settings_too(tmp_path, models_dir):
    """`inglenook run` with a user_data that saved a 64-token context for the model: the prompt no longer fits."""
    model = copy_default(models_dir, tmp_path / "models")
    save_settings(tmp_path / "user_data", model.name, "llama.cpp", LlamaCppSettings(n_ctx=64))
    prompt = "one two three four five six seven eight nine ten " * 12
    args = ("run", model.name, prompt, "--json", "--max-tokens", "2", "--models-dir", str(tmp_path / "models"),
            "--user-data", str(tmp_path / "user_data"))  # fmt: skip
    result = cli(*args)
    assert result.returncode == 1
    assert "the context holds 64" in json.loads(result.stdout)["error"]
    result = cli(*args, "--n-ctx", "256")  # an explicit option wins over the saved one
    assert result.returncode == 0, result.stderr
