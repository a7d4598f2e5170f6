"""The models folder: what MODEL means, the embedded default, and what the UI may load."""

from __future__ import annotations

import pytest
from conftest import copy_default

from backends.base import ModelLoadError
from webui.models.folder import default_model_license, ensure_default_model, list_models, resolve_model


def test_default_is_placed_into_an_empty_models_folder_once(tmp_path, gemma_path):
    folder = tmp_path / "models"
    placed = resolve_model("default", folder)
    assert placed == folder / gemma_path.name
    assert placed.stat().st_size == gemma_path.stat().st_size
    assert not list(folder.glob(".*partial"))  # assembled under a temporary name, then renamed
    mtime = placed.stat().st_mtime_ns
    assert resolve_model(None, folder) == placed
    assert placed.stat().st_mtime_ns == mtime  # not rewritten on the next start


def test_a_half_written_default_is_replaced(tmp_path, gemma_path):
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / gemma_path.name).write_bytes(b"GGUF" + b"\0" * 100)  # an interrupted copy from elsewhere
    assert ensure_default_model(folder).stat().st_size == gemma_path.stat().st_size


def test_names_resolve_inside_the_models_folder_with_or_without_extension(tmp_path, models_dir):
    model = copy_default(models_dir, tmp_path / "m")
    assert resolve_model(model.name, tmp_path / "m") == model
    assert resolve_model(model.stem, tmp_path / "m") == model
    assert [e.name for e in list_models(tmp_path / "m")] == [model.name]


def test_unknown_names_list_what_is_available(tmp_path, models_dir):
    model = copy_default(models_dir, tmp_path / "m")
    with pytest.raises(ModelLoadError, match=f"no 'llama-9000' in .*available: {model.name}"):
        resolve_model("llama-9000", tmp_path / "m")


def test_the_ui_on_a_network_address_accepts_names_only(tmp_path, gemma_path):
    """Listening beyond loopback, a typed path must not probe or load arbitrary files."""
    with pytest.raises(ModelLoadError, match="only names"):
        resolve_model(str(gemma_path), tmp_path, allow_paths=False)
    with pytest.raises(ModelLoadError, match="only names"):
        resolve_model("../../etc/passwd", tmp_path, allow_paths=False)
    assert resolve_model(str(gemma_path), tmp_path) == gemma_path  # the local user may type a path


def test_a_folder_with_one_gguf_resolves_to_it_and_an_empty_one_is_refused(tmp_path, models_dir):
    model = copy_default(models_dir, tmp_path / "one")
    assert resolve_model(str(tmp_path / "one"), tmp_path) == model
    (tmp_path / "none").mkdir()
    with pytest.raises(ModelLoadError, match="holds no model"):
        resolve_model(str(tmp_path / "none"), tmp_path)


def test_the_default_models_licence_ships_with_it():
    text = default_model_license()
    assert text.startswith("Gemma Terms of Use")
    assert "Model Derivatives" in text
    assert "<" not in text and "function(" not in text  # readable text, not markup or scripts
    assert "thumb-up" not in text  # without the web page's feedback widget
