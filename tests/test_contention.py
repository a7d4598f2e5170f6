"""Issue 17 §3: a busy machine must not collapse the decode. llama.cpp's OpenMP threads spin at every barrier
unless ``OMP_WAIT_POLICY=PASSIVE``; libgomp reads it once when it loads, so the worker must be *started* with
it. These tests read the policy inside a real worker process (through the protocol and /proc)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from backends.llamacpp import decode_threads, usable_cores
from backends.registry import LoaderRegistry
from webui.engine import Engine
from webui.worker import WAIT_POLICY_ENV, WorkerModel, worker_environment


def fake(folder: Path) -> Path:
    path = folder / "plain.fake"
    path.write_text(json.dumps({"reply": "one two"}), encoding="utf-8")
    return path


def proc_environ(pid: int) -> dict[str, str]:
    """The environment the kernel started ``pid`` with (what libgomp saw at load)."""
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


@pytest.fixture
def engine():
    engine = Engine(LoaderRegistry())
    yield engine
    engine.unload()


def test_the_worker_starts_with_a_passive_openmp_wait_policy(engine, tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv(WAIT_POLICY_ENV, raising=False)
    engine.load(fake(tmp_path))
    model = engine.loaded.model
    assert isinstance(model, WorkerModel)
    assert model.call("openmp_environment")["OMP_WAIT_POLICY"] == "PASSIVE"  # os.environ inside the worker
    assert proc_environ(model.pid)["OMP_WAIT_POLICY"] == "PASSIVE"  # and from its start
    assert "OMP_WAIT_POLICY" not in os.environ, "only the worker gets it; the server's own process is untouched"


def test_the_wait_policy_can_be_overridden(engine, tmp_path, monkeypatch):
    monkeypatch.setenv(WAIT_POLICY_ENV, "active")
    engine.load(fake(tmp_path))
    assert engine.loaded.model.call("openmp_environment")["OMP_WAIT_POLICY"] == "ACTIVE"


def test_the_environment_rule():
    """Our variable wins, then the user's own OMP_WAIT_POLICY, then PASSIVE; everything else passes through."""
    assert worker_environment({"PATH": "/bin"}) == {"PATH": "/bin", "OMP_WAIT_POLICY": "PASSIVE"}
    assert worker_environment({"OMP_WAIT_POLICY": "active"})["OMP_WAIT_POLICY"] == "ACTIVE"
    both = {"OMP_WAIT_POLICY": "ACTIVE", WAIT_POLICY_ENV: "passive"}
    assert worker_environment(both)["OMP_WAIT_POLICY"] == "PASSIVE"


def test_decode_threads_are_one_per_usable_core_unless_asked():
    assert decode_threads(0, 2) == 2
    assert decode_threads(0, 0) == 1
    assert decode_threads(3, 2) == 3  # an explicit --threads is obeyed
    assert 1 <= usable_cores() <= (os.cpu_count() or 1)
