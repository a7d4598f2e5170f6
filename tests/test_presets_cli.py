"""``inglenook presets list|show`` and ``inglenook run --preset``, run for real in a subprocess."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import cli

PROMPT = "The capital of France is"


def run_json(models_dir: Path, user_data: Path, *args: str) -> tuple[dict, str]:
    result = cli(
        "run", "default", PROMPT, "--json", "--models-dir", str(models_dir), "--user-data", str(user_data), *args
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1]), result.stderr


def test_presets_list_shows_shipped_and_user_presets(tmp_path: Path):
    (tmp_path / "presets").mkdir()
    (tmp_path / "presets" / "Mine.yaml").write_text("temperature: 0.4\n")
    result = cli("presets", "list", "--json", "--user-data", str(tmp_path))
    assert result.returncode == 0, result.stderr
    found = {p["name"]: p["source"] for p in json.loads(result.stdout)}
    assert found["Balanced"] == "shipped" and found["Deterministic"] == "shipped" and found["Mine"] == "user"
    assert "models" not in found, "presets/models.yaml holds template rules, not a preset"


def test_presets_show_prints_the_values_and_warns_about_unknown_keys(tmp_path: Path):
    shown = cli("presets", "show", "Precise", "--user-data", str(tmp_path))
    assert shown.returncode == 0 and "temperature: 0.3" in shown.stdout
    (tmp_path / "presets").mkdir()
    (tmp_path / "presets" / "Odd.yaml").write_text("top_k: 5\nwarp_factor: 9\n")
    odd = cli("presets", "show", "Odd", "--user-data", str(tmp_path))
    assert odd.returncode == 0 and odd.stdout == "top_k: 5\n"
    assert "warning" in odd.stderr and "warp_factor" in odd.stderr


def test_presets_show_refuses_a_bad_name_or_a_bad_value_in_one_line(tmp_path: Path):
    escape = cli("presets", "show", "../../etc/passwd", "--user-data", str(tmp_path))
    assert escape.returncode == 1 and escape.stderr.startswith("error: ") and "Traceback" not in escape.stderr
    (tmp_path / "presets").mkdir()
    (tmp_path / "presets" / "Hot.yaml").write_text("temperature: -1\n")
    bad = cli("presets", "show", "Hot", "--user-data", str(tmp_path))
    assert bad.returncode == 1 and "temperature" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.slow
def test_run_with_a_preset_uses_it_and_explicit_flags_override_it(models_dir: Path, tmp_path: Path):
    (tmp_path / "presets").mkdir()
    (tmp_path / "presets" / "Greedy-ish.yaml").write_text("temperature: 0\ntfs: 0.9\nmax_new_tokens: 6\n")
    preset, stderr = run_json(models_dir, tmp_path, "--preset", "Greedy-ish")
    assert preset["usage"]["completion_tokens"] == 6  # max_new_tokens came from the preset
    assert preset["ignored_params"] == ["tfs"], "llama.cpp has no tail-free sampling: said, not dropped"
    assert "tfs" in stderr
    flags, _ = run_json(models_dir, tmp_path, "--temperature", "0", "--repetition-penalty", "1", "--max-tokens", "6")
    assert preset["text"] == flags["text"], "the preset's temperature 0 is greedy decoding"
    overridden, _ = run_json(models_dir, tmp_path, "--preset", "Greedy-ish", "--max-tokens", "3")
    assert overridden["usage"]["completion_tokens"] == 3
