"""What this machine can run, found out once and remembered: llama.cpp's extra buffer types on AMX CPUs.

Some virtual machines advertise AMX (``amx_tile amx_int8 amx_bf16``) yet fault on the tile instructions:
llama.cpp's AMX buffer type then kills the process on the first decode. With ``extra_buffer_types: auto`` on
such a CPU, the first load runs a throwaway process (:func:`run_probe`: load the model with extra buffer types
on, decode one token). If it dies, the verdict is kept in ``user_data/hardware.json`` under a key made of the
CPU's model name and flags, and every later load on this machine goes with extra buffer types off, without
probing again. ``on``/``off`` (``--set extra_buffer_types=off``, the Model tab's form, the API's load
settings) skip all of this. A CPU without AMX never probes: llama.cpp's default (on) is kept.

Run as ``python -m webui.hardware probe MODEL.gguf`` it *is* the probe.
"""

from __future__ import annotations

import hashlib
import json
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from backends.cpu import CpuInfo, cpu_info
from webui.files import write_atomic

log = logging.getLogger(__name__)

FILE = "hardware.json"
PROBE_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class ProbeResult:
    """How the probe process ended: ``crashed`` (killed by a signal), ``ok`` (decoded a token), or neither."""

    ok: bool
    crashed: bool
    detail: str  # e.g. "died with SIGSEGV", "decoded a token", "exit 1: <last stderr line>"


Probe = Callable[[Path], ProbeResult]


def cpu_key(cpu: CpuInfo) -> str:
    """The per-machine key of a verdict: the CPU model and its flags (a VM with other flags is another machine)."""
    text = cpu.model + "|" + " ".join(sorted(cpu.flags))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


class VerdictStore:
    """``user_data/hardware.json``: probe verdicts by CPU key (written atomically)."""

    def __init__(self, user_data: Path) -> None:
        self.path = user_data / FILE

    def read(self) -> dict:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            log.warning("%s cannot be read (%s); probing again", self.path, exc)
            return {}
        return data if isinstance(data, dict) else {}

    def get(self, cpu: CpuInfo) -> dict | None:
        entry = self.read().get("extra_buffer_types", {}).get(cpu_key(cpu))
        return entry if isinstance(entry, dict) and entry.get("verdict") in ("works", "crashes") else None

    def put(self, cpu: CpuInfo, verdict: str, detail: str) -> dict:
        data = self.read()
        entry = {"verdict": verdict, "detail": detail, "cpu": cpu.model, "when": time.strftime("%Y-%m-%d %H:%M:%S")}
        data.setdefault("extra_buffer_types", {})[cpu_key(cpu)] = entry
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, (json.dumps(data, indent=2) + "\n").encode("utf-8"))
        return entry


def decide(cpu: CpuInfo, store: VerdictStore, probe: Probe, path: Path) -> tuple[bool, str]:
    """``auto`` for a load of ``path``: (use extra buffer types, why). Probes at most once per machine."""
    if not cpu.amx:
        return True, "on (auto: this CPU advertises no AMX; llama.cpp's default)"
    entry = store.get(cpu)
    if entry is None:
        log.info("this CPU advertises AMX: probing llama.cpp's extra buffer types once with %s", path.name)
        result = probe(path)
        if not result.ok and not result.crashed:
            return False, f"off (auto: this CPU advertises AMX and the probe could not tell: {result.detail})"
        entry = store.put(cpu, "works" if result.ok else "crashes", result.detail)
        log.warning("extra buffer types probe: %s (%s); kept in %s", entry["verdict"], result.detail, store.path)
    if entry["verdict"] == "works":
        return True, f"on (auto: this CPU advertises AMX; the probe of {entry['when']} decoded fine)"
    return False, (
        f"off (auto: this CPU advertises AMX, but with extra buffer types on the probe process "
        f"{entry['detail']} ({entry['when']}); remembered in {FILE})"
    )


@dataclass
class ExtraBufferPolicy:
    """The llama.cpp loader's ``auto_extra_buffers``: :func:`decide` for this machine. Pickles (plain fields and
    a module-level probe function), so it travels with the loader into a worker process."""

    user_data: Path
    probe: Probe | None = None

    def __call__(self, path: Path) -> tuple[bool, str]:
        return decide(cpu_info(), VerdictStore(self.user_data), self.probe or run_probe, path)


def attach(registry, user_data: Path) -> None:
    """Give the registry's llama.cpp loader this machine's policy and the KV cache's disk folder,
    ``user_data/cache/kv`` (a loader without the attributes is left alone)."""
    if "llama.cpp" in registry.names():
        loader = registry.get("llama.cpp")
        if hasattr(loader, "auto_extra_buffers") and loader.auto_extra_buffers is None:
            loader.auto_extra_buffers = ExtraBufferPolicy(user_data)
        if hasattr(loader, "cache_dir") and loader.cache_dir is None:
            loader.cache_dir = user_data / "cache" / "kv"


def verdict(user_data: Path, cpu: CpuInfo | None = None) -> dict:
    """What ``auto`` does on this machine, without probing (for ``inglenook doctor``)."""
    cpu = cpu or cpu_info()
    if not cpu.amx:
        return {"amx": False, "verdict": None, "auto": "on", "why": "this CPU advertises no AMX"}
    entry = VerdictStore(user_data).get(cpu)
    if entry is None:
        return {"amx": True, "verdict": None, "auto": "probe", "why": "not probed yet: the first llama.cpp load will"}
    auto = "on" if entry["verdict"] == "works" else "off"
    return {"amx": True, "verdict": entry["verdict"], "auto": auto, "why": entry["detail"], "when": entry["when"]}


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"died with {signal.Signals(-code).name}"
        except ValueError:
            return f"died with signal {-code}"
    return f"exit {code}"


def run_probe(path: Path, timeout_s: float = PROBE_TIMEOUT_S) -> ProbeResult:
    """Load ``path`` with extra buffer types on and decode one token, in a throwaway process."""
    cmd = [sys.executable, "-m", "webui.hardware", "probe", str(path)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return ProbeResult(False, False, f"did not finish in {timeout_s:.0f} s")
    if done.returncode == 0:
        return ProbeResult(True, False, "decoded a token")
    if done.returncode < 0:
        return ProbeResult(False, True, describe_exit(done.returncode))
    last = (done.stderr.strip().splitlines() or [""])[-1][:200]
    return ProbeResult(False, False, f"{describe_exit(done.returncode)}: {last}")


def _probe_main(path: str) -> int:
    """The probe itself: a load with extra buffer types on and a one-token decode (a fault kills this process)."""
    import llama_cpp

    from backends.llamacpp import ensure_backends, model_params

    ensure_backends()  # a portable build's CPU backend
    with model_params(True):
        llm = llama_cpp.Llama(model_path=path, n_ctx=64, n_batch=64, verbose=False)
    tokens = llm.tokenize(b"Hello", add_bos=True)
    llm.eval(tokens)  # the prompt: a batched matrix multiply
    llm.eval(tokens[-1:])  # one token: the decode path a reply takes
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "probe":
        sys.exit(_probe_main(sys.argv[2]))
    print("usage: python -m webui.hardware probe MODEL.gguf", file=sys.stderr)
    sys.exit(2)
