"""``inglenook bench --api`` end to end on the embedded model: the shape of its report, never its timings."""

from __future__ import annotations

import json

import pytest
from conftest import cli

pytestmark = pytest.mark.slow  # real models, servers or browsers


def test_bench_api_compares_raw_with_our_api_stream_and_runs_a_bounded_load_test(models_dir):
    result = cli(
        "bench", "--api", "--runs", "1", "--tokens", "6", "--clients", "2", "--duration", "3", "--json",
        "--models-dir", str(models_dir), "--set", "parallel=2", "--set", "extra_buffer_types=off",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    rows = report["contenders"]
    assert list(rows)[:2] == ["raw", "api"]
    # llama-cpp-python's own server runs too, on a portable build as well (it loads no CPU backend by itself)
    assert set(rows) == {"raw", "api", "llama-cpp-server"}, report["skipped"]
    assert rows["raw"]["tokens"] == rows["api"]["tokens"] == 6
    assert rows["api"]["goal_tokens_per_s"] in ("PASS", "MISS") and rows["api"]["goal_ttft"] in ("PASS", "MISS")
    # greedy, same prompt, same model and kernels: the same tokens, decoded in the engine's batch or alone
    assert report["api_text_matches_raw"] is True
    load = report["load_test"]
    assert load["clients"] == 2 and load["errors"] == 0 and load["completed"] >= 1
    # the same load with 1 client first, and raw llama-cpp-python's batch of 2 as the ceiling
    assert report["parallel"] == 2 and report["load_test_single"]["clients"] == 1
    assert report["load_test_single"]["errors"] == 0 and load["ttft_ms_median"] > 0
    assert report["raw_batch"]["clients"] == 2 and report["raw_batch"]["batch_tokens_per_s"] > 0


def test_bench_api_refuses_a_load_test_over_a_minute(models_dir):
    result = cli("bench", "--api", "--clients", "2", "--duration", "120", "--models-dir", str(models_dir))
    assert result.returncode == 2 and "--duration" in result.stderr
