"""llama.cpp's extra buffer types (AMX): the per-machine probe decision, the setting, and its way into llama.cpp.

The decision logic runs with fake probes (plain functions that count their calls and answer as a crashing or a
working machine would); the real probe and the real load run on the embedded model (slow tier).
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from backends.base import ModelLoadError
from backends.cpu import CpuInfo, cpu_info, parse_cpuinfo
from backends.llamacpp import LlamaCppLoader, LlamaCppSettings, decide_extra_buffers
from webui.cli.main import parse_args
from webui.cli.options import settings_from
from webui.hardware import ExtraBufferPolicy, ProbeResult, VerdictStore, decide, run_probe, verdict
from webui.models.settings import build_settings

XEON = CpuInfo("Intel(R) Xeon(R) Platinum 8481C", "x86_64", frozenset({"avx2", "avx512f", "amx_tile", "amx_int8"}))
EPYC = CpuInfo("AMD EPYC", "x86_64", frozenset({"avx2", "avx512f"}))


class FakeProbe:
    """Answers like the real probe would on a machine whose AMX works (or faults), and counts its runs."""

    def __init__(self, result: ProbeResult) -> None:
        self.result = result
        self.calls: list[Path] = []

    def __call__(self, path: Path) -> ProbeResult:
        self.calls.append(path)
        return self.result


CRASHES = ProbeResult(ok=False, crashed=True, detail="died with SIGSEGV")
WORKS = ProbeResult(ok=True, crashed=False, detail="decoded a token")
UNCLEAR = ProbeResult(ok=False, crashed=False, detail="exit 1: MemoryError")


def test_cpuinfo_flags_and_amx():
    text = "processor\t: 0\nmodel name\t: Intel Xeon\nflags\t\t: fpu avx2 amx_tile amx_int8 amx_bf16\n\nprocessor: 1\n"
    cpu = parse_cpuinfo(text, "x86_64")
    assert cpu.model == "Intel Xeon" and cpu.amx and "avx2" in cpu.notable()
    arm = parse_cpuinfo("processor\t: 0\nFeatures\t: fp asimd asimddp sve\nCPU part\t: 0xd0c\n", "aarch64")
    assert not arm.amx and arm.notable() == ["asimd", "asimddp", "sve"]
    assert not parse_cpuinfo("", "x86_64").amx


def test_no_amx_keeps_llama_cpp_default_without_probing(tmp_path: Path):
    probe = FakeProbe(CRASHES)
    use, why = decide(EPYC, VerdictStore(tmp_path), probe, Path("m.gguf"))
    assert use and "no AMX" in why and probe.calls == []
    assert not (tmp_path / "hardware.json").exists()


def test_amx_crash_is_probed_once_and_remembered(tmp_path: Path):
    probe = FakeProbe(CRASHES)
    store = VerdictStore(tmp_path)
    use, why = decide(XEON, store, probe, Path("a.gguf"))
    assert not use and "SIGSEGV" in why and probe.calls == [Path("a.gguf")]
    # later loads (any model, a new process: a new store object on the same folder) do not probe again
    use2, why2 = decide(XEON, VerdictStore(tmp_path), probe, Path("b.gguf"))
    assert not use2 and len(probe.calls) == 1 and "remembered" in why2
    saved = json.loads((tmp_path / "hardware.json").read_text())["extra_buffer_types"]
    (entry,) = saved.values()
    assert entry["verdict"] == "crashes" and entry["cpu"] == XEON.model
    assert verdict(tmp_path, XEON)["auto"] == "off"


def test_amx_that_works_stays_on(tmp_path: Path):
    probe = FakeProbe(WORKS)
    assert decide(XEON, VerdictStore(tmp_path), probe, Path("a.gguf"))[0]
    assert decide(XEON, VerdictStore(tmp_path), probe, Path("a.gguf"))[0] and len(probe.calls) == 1
    assert verdict(tmp_path, XEON)["auto"] == "on"


def test_inconclusive_probe_loads_off_and_is_not_remembered(tmp_path: Path):
    probe = FakeProbe(UNCLEAR)
    use, why = decide(XEON, VerdictStore(tmp_path), probe, Path("a.gguf"))
    assert not use and "could not tell" in why
    decide(XEON, VerdictStore(tmp_path), probe, Path("a.gguf"))
    assert len(probe.calls) == 2 and verdict(tmp_path, XEON)["auto"] == "probe"


def test_verdict_is_per_machine(tmp_path: Path):
    """Another CPU (other model or flags: another VM type) gets its own probe."""
    decide(XEON, VerdictStore(tmp_path), FakeProbe(CRASHES), Path("a.gguf"))
    other = CpuInfo(XEON.model, "x86_64", XEON.flags | {"amx_bf16"})
    probe = FakeProbe(WORKS)
    assert decide(other, VerdictStore(tmp_path), probe, Path("a.gguf"))[0] and len(probe.calls) == 1


def test_explicit_setting_wins_over_auto():
    policy = FakeProbe(CRASHES)  # never consulted
    assert decide_extra_buffers("on", Path("m.gguf"), policy, amx=True) == (True, "on (set explicitly)")
    assert decide_extra_buffers("off", Path("m.gguf"), policy, amx=False) == (False, "off (set explicitly)")
    assert policy.calls == []
    with pytest.raises(ModelLoadError, match="auto, on or off"):
        decide_extra_buffers("maybe", Path("m.gguf"), None)


def test_auto_in_the_loader(tmp_path: Path):
    """The backend alone (no app, no probe): on without AMX; off with AMX (the safe choice); else the policy's."""
    assert decide_extra_buffers("auto", Path("m.gguf"), None, amx=False)[0]
    use, why = decide_extra_buffers("auto", Path("m.gguf"), None, amx=True)
    assert not use and "no probe" in why
    calls: list[Path] = []

    def policy(path: Path) -> tuple[bool, str]:
        calls.append(path)
        return False, "off (auto: policy)"

    assert decide_extra_buffers("auto", Path("m.gguf"), policy, amx=True) == (False, "off (auto: policy)")
    assert calls == [Path("m.gguf")]


def test_policy_pickles_for_the_worker_process(tmp_path: Path):
    loader = LlamaCppLoader(ExtraBufferPolicy(tmp_path))
    copy = pickle.loads(pickle.dumps(loader))
    assert copy.auto_extra_buffers == ExtraBufferPolicy(tmp_path)


def test_set_option_reaches_the_llama_cpp_settings(tmp_path: Path):
    args = parse_args(["run", "default", "hi", "--set", "extra_buffer_types=off", "--set", "n_batch=64"])
    overrides = settings_from(args).load_overrides
    assert overrides == {"extra_buffer_types": "off", "n_batch": "64"}
    settings = build_settings(LlamaCppSettings, overrides)
    assert settings.extra_buffer_types == "off" and settings.n_batch == 64
    with pytest.raises(ValueError, match="extra_buffer_types"):
        build_settings(LlamaCppSettings, {"extra_buffer_types": "sometimes"})
    with pytest.raises(ValueError, match="NAME=VALUE"):
        settings_from(parse_args(["run", "default", "hi", "--set", "extra_buffer_types"]))


def test_this_machine(tmp_path: Path):
    """What `auto` does here: on a CPU without AMX (this project's AMD EPYC), on, with no probe."""
    cpu = cpu_info()
    report = verdict(tmp_path, cpu)
    assert report["amx"] == cpu.amx
    if not cpu.amx:
        assert report["auto"] == "on" and ExtraBufferPolicy(tmp_path)(Path("m.gguf"))[0]


@pytest.mark.slow
@pytest.mark.parametrize("choice", ["on", "off"])
def test_setting_reaches_llama_cpp_model_params(gemma_path: Path, choice: str):
    """The load passes use_extra_bufts to llama_model_load_from_file (read back from the params Llama used), and
    llama.cpp acts on it: with extra buffer types on, the weights are repacked (a CPU_REPACK buffer appears)."""
    code = (
        "import sys, llama_cpp\n"
        "from pathlib import Path\n"
        "from backends.llamacpp import LlamaCppLoader, LlamaCppSettings, model_params\n"
        f"m = LlamaCppLoader().load(Path(sys.argv[1]), LlamaCppSettings(n_ctx=256, extra_buffer_types={choice!r}))\n"
        "print(m._llm.model_params.use_extra_bufts, m.info.metadata['inglenook.extra_buffer_types'])\n"
        f"with model_params({choice == 'on'}):\n"
        "    llama_cpp.Llama(model_path=sys.argv[1], n_ctx=64, verbose=True)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(gemma_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == f"{choice == 'on'} {choice} (set explicitly)"
    if cpu_info().flags & {"avx2", "asimd"}:  # repacking needs AVX2 (x86) or NEON (arm64)
        assert ("CPU_REPACK" in done.stderr) == (choice == "on")


@pytest.mark.slow
def test_real_probe_runs_the_model(gemma_path: Path):
    """The probe process loads with extra buffer types on and decodes; here (no AMX fault) it comes back ok."""
    result = run_probe(gemma_path, timeout_s=300)
    assert result == ProbeResult(True, False, "decoded a token")
    broken = run_probe(gemma_path.with_name("missing.gguf"), timeout_s=300)
    assert not broken.ok and not broken.crashed and broken.detail.startswith("exit 1")


@pytest.mark.slow
def test_model_info_panel_says_what_the_load_chose(make_app, gemma_path: Path):
    """The Model tab's info panel, for the loaded model: the extra buffer types choice and its reason."""
    from webui.models import panel
    from webui.models.catalog import Catalog

    app = make_app(load_overrides={"extra_buffer_types": "off"})
    app.load_model(gemma_path.name)
    text = panel.info_markdown(app, Catalog(app.settings.models_dir), gemma_path.name, 2048)
    assert "- extra buffer types (this load): off (set explicitly)" in text
    app.engine.unload()
    assert "extra buffer types" not in panel.info_markdown(app, Catalog(app.settings.models_dir), gemma_path.name, 2048)


@pytest.mark.slow
def test_api_load_setting_overrides_auto(make_app, gemma_path: Path):
    """/v1/internal/model/load's settings set extra_buffer_types; model info reports the choice; a bad value is
    refused before anything is unloaded."""
    from fastapi.testclient import TestClient

    from webui.server import build_api_server

    app = make_app()
    client = TestClient(build_api_server(app))
    r = client.post(
        "/v1/internal/model/load", json={"model_name": gemma_path.name, "settings": {"extra_buffer_types": "off"}}
    )
    assert r.status_code == 200, r.text
    info = client.get("/v1/internal/model/info").json()["info"]
    assert info["metadata"]["inglenook.extra_buffer_types"] == "off (set explicitly)"
    bad = client.post(
        "/v1/internal/model/load", json={"model_name": gemma_path.name, "settings": {"extra_buffer_types": "x"}}
    )
    assert bad.status_code >= 400 and "auto, on or off" in bad.text
    assert client.get("/v1/internal/model/info").json()["model_name"] == info["name"]
