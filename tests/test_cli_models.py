"""`inglenook models list|inspect --json`: the catalog's facts from the terminal, the same the Model tab shows."""

from __future__ import annotations

import json
import os
import struct

import pytest
from conftest import cli


@pytest.mark.slow
def test_models_list_and_inspect_json(tmp_path, gemma_path):
    folder = tmp_path / "models"
    folder.mkdir()
    os.link(gemma_path, folder / "gemma-3-270m.Q4_K_M.gguf")
    (folder / "hostile.gguf").write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 2**62, 0) + b"\0" * 64)
    (folder / "broken").mkdir()
    (folder / "broken" / "config.json").write_text("{not json")
    result = cli("models", "list", "--json", "--n-ctx", "2048", "--models-dir", str(folder))
    assert result.returncode == 0, result.stderr
    listing = {m["name"]: m for m in json.loads(result.stdout)["models"]}
    assert set(listing) == {"gemma-3-270m", "hostile", "broken"}
    [gemma] = listing["gemma-3-270m"]["variants"]
    assert gemma["quantization"] == "Q4_K_M" and gemma["loader"] == "llama.cpp"
    assert gemma["facts"]["parameter_count"] == 268_098_176
    assert gemma["memory"]["kv_cache"] == 2048 * 18_432 and gemma["memory"]["n_ctx"] == 2048
    assert "tensors" in listing["hostile"]["variants"][0]["error"]
    assert "not valid JSON" in listing["broken"]["variants"][0]["error"]

    result = cli("models", "inspect", "gemma-3-270m", "--json", "--models-dir", str(folder))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["name"] == "gemma-3-270m.Q4_K_M.gguf" and report["facts"]["license"] == "gemma"
    assert report["memory"]["verdict"] in ("fits", "tight", "won't fit")

    result = cli("models", "inspect", "hostile.gguf", "--models-dir", str(folder))
    assert result.returncode == 1 and "error:" in result.stderr and "tensors" in result.stderr
    result = cli("models", "inspect", "no-such", "--models-dir", str(folder))
    assert result.returncode == 1 and "not found" in result.stderr
