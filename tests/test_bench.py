"""``inglenook bench`` end to end on the embedded model: the shape of its report, never its timings."""

from __future__ import annotations

import json

import pytest
from conftest import cli

pytestmark = pytest.mark.slow  # real models, servers or browsers


def bench_json(models_dir, *extra: str) -> dict:
    result = cli("bench", "--runs", "1", "--tokens", "8", "--json", "--models-dir", str(models_dir), *extra)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def check_row(row: dict) -> None:
    for key in ("tokens_per_s", "ttft_ms", "tokens", "ratio_tokens_per_s", "extra_ttft_ms", "runs", "finish_reasons"):
        assert key in row, key
    assert row["tokens"] > 0
    assert row["tokens_per_s"] > 0
    assert row["ttft_ms"] > 0
    assert len(row["runs"]) == 1


def test_bench_reports_raw_engine_ui_and_the_page(models_dir):
    report = bench_json(models_dir)
    contenders = report["contenders"]
    assert list(contenders) == ["raw", "engine", "ui", "page"]  # the page: our chat in headless Chromium
    for row in contenders.values():
        check_row(row)
    assert contenders["raw"]["tokens"] == 8
    assert contenders["engine"]["tokens"] == 8
    assert contenders["raw"]["ratio_tokens_per_s"] == 1.0
    assert contenders["raw"]["extra_ttft_ms"] == 0.0
    assert contenders["page"]["server_reported"]["ttft_ms"] > 0  # the reply's own stats line, read in the page
    for name in ("engine", "ui", "page"):
        assert contenders[name]["goal_tokens_per_s"] in ("PASS", "MISS")
        assert contenders[name]["goal_ttft"] in ("PASS", "MISS")
    assert report["engine_text_matches_raw"] is True  # greedy, same prompt, same model: same tokens
    assert report["tokens_requested"] == 8
    assert report["runs"] == 1


def test_bench_without_ui_starts_no_server(models_dir):
    report = bench_json(models_dir, "--no-ui")
    assert list(report["contenders"]) == ["raw", "engine"]
    assert report["contenders"]["engine"]["tokens"] == 8


def test_bench_table_output(models_dir):
    result = cli("bench", "--runs", "1", "--tokens", "4", "--no-ui", "--models-dir", str(models_dir))
    assert result.returncode == 0, result.stderr
    assert "contender" in result.stdout and "raw" in result.stdout and "engine" in result.stdout
    assert "goals:" in result.stdout


def test_bench_rejects_bad_arguments(models_dir):
    result = cli("bench", "--tokens", "1", "--models-dir", str(models_dir))
    assert result.returncode != 0
    assert "--tokens" in result.stderr
    result = cli("bench", "no-such-model", "--no-ui", "--models-dir", str(models_dir))
    assert result.returncode != 0
    assert "error:" in result.stderr and "no-such-model" in result.stderr


def test_bench_switch_reports_load_time_and_rss_per_cycle(models_dir):
    result = cli("bench", "--switch", "--runs", "2", "--json", "--n-ctx", "512", "--models-dir", str(models_dir))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert [c["cycle"] for c in report["cycles"]] == [1, 2]
    for c in report["cycles"]:
        assert c["load_s"] > 0
        assert c["rss_loaded_mb"] > c["rss_unloaded_mb"]  # the unload gave memory back
    assert report["loader"] == "llama.cpp"
