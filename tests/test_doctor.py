"""`inglenook doctor [--json]`: the fields a person (or a bug report) needs, checked against the machine itself."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from backends.cpu import CpuInfo, cpu_info
from webui.doctor import format_report
from webui.hardware import ProbeResult, VerdictStore, decide, verdict

REPO = Path(__file__).resolve().parent.parent


def _doctor(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "webui", "doctor", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)


@pytest.mark.slow  # a subprocess that loads llama.cpp's libraries and probes Chromium
def test_doctor_json_fields(tmp_path: Path):
    models = tmp_path / "models"
    done = _doctor("--json", "--models-dir", str(models), "--user-data", str(tmp_path / "ud"))
    assert done.returncode == 0, done.stderr[-2000:]
    r = json.loads(done.stdout)
    cpu = cpu_info()
    assert r["cpu"]["model"] == cpu.model and r["cpu"]["amx"] == cpu.amx
    assert set(r["cpu"]["features"]) <= cpu.flags
    ggml = r["llama_cpp"]
    assert ggml["version"] == "0.3.36" and ggml["library"].startswith("libggml-cpu")
    assert ggml["portable"] == ("libggml-cpu-" in ggml["library"])  # a variant library only in a portable build
    if "avx2" in cpu.flags:
        assert ggml["features"].get("AVX2") == "1" and "CPU_REPACK" in ggml["buffer_types"]
    assert r["extra_buffer_types"]["auto"] == ("probe" if cpu.amx else "on")
    assert set(r["gpu"]) == {"nvidia_gpus", "llama_cpp_gpu_offload", "torch"}
    assert r["disk"]["path"] == str(models) and 0 < r["disk"]["free_bytes"] <= r["disk"]["total_bytes"]
    assert "chromium" in r and r["loaders"]["llama.cpp"] == {"available": True, "problem": None}


def test_doctor_text_names_the_probe_verdict(tmp_path: Path):
    """On an AMX machine whose probe crashed, the text report says auto = off and why (an AMX CPU stands in)."""
    xeon = CpuInfo("Intel Xeon", "x86_64", frozenset({"avx2", "amx_tile", "amx_int8"}))
    assert verdict(tmp_path, xeon)["auto"] == "probe"
    decide(xeon, VerdictStore(tmp_path), lambda p: ProbeResult(False, True, "died with SIGSEGV"), Path("m.gguf"))
    r = {
        "cpu": {"model": xeon.model, "arch": xeon.arch, "features": xeon.notable(), "amx": True},
        "llama_cpp": {"version": "0.3.36", "error": "not loaded in this test"},
        "extra_buffer_types": verdict(tmp_path, xeon),
        "gpu": {"nvidia_gpus": [], "llama_cpp_gpu_offload": False, "torch": None},
        "disk": {"path": "models", "free_bytes": 2e9, "total_bytes": 4e9},
        "chromium": None,
        "loaders": {"transformers": {"available": False, "problem": "No module named 'torch'"}},
    }
    text = format_report(r)
    assert "AMX advertised: yes" in text and "extra_buffer_types=auto here: off (died with SIGSEGV)" in text
    assert "loader transformers: UNAVAILABLE: No module named 'torch'" in text
