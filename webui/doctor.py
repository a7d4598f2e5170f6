"""``inglenook doctor``: what this machine offers and what Inglenook makes of it, in one report.

The CPU's features, the ggml CPU backend in use (its library, the features it was built with, its extra
buffer types), what ``extra_buffer_types: auto`` does here (webui/hardware.py's probe verdict), GPUs and CUDA,
free disk in the models folder, whether Chromium is there (the browser tests), and the loaders.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
from pathlib import Path

from backends.cpu import cpu_info
from backends.registry import LoaderRegistry
from webui.hardware import verdict

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def gpu_report() -> dict:
    """NVIDIA GPUs (nvidia-smi), whether this llama.cpp build can offload, and torch's version (not imported)."""
    gpus: list[str] = []
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=name,memory.total", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=10)  # fmt: skip
            gpus = [line.strip() for line in out.stdout.splitlines() if line.strip()]
        except (OSError, subprocess.TimeoutExpired):
            pass
    offload = None
    try:
        import llama_cpp

        offload = bool(llama_cpp.llama_supports_gpu_offload())
    except Exception:
        pass
    return {"nvidia_gpus": gpus, "llama_cpp_gpu_offload": offload, "torch": _version("torch")}


def disk_report(models_dir: Path) -> dict:
    where = models_dir
    while not where.exists() and where != where.parent:
        where = where.parent
    usage = shutil.disk_usage(where)
    return {"path": str(models_dir), "free_bytes": usage.free, "total_bytes": usage.total}


def chromium() -> str | None:
    return next((found for name in CHROMIUM_NAMES if (found := shutil.which(name))), None)


def report(models_dir: Path, user_data: Path) -> dict:
    cpu = cpu_info()
    try:
        from backends.llamacpp import ggml_cpu_report

        ggml = ggml_cpu_report()
    except Exception as exc:  # llama-cpp-python missing or unloadable: the rest of the report still helps
        ggml = {"error": f"{type(exc).__name__}: {exc}"}
    registry = LoaderRegistry()
    loaders = {n: registry.get(n).available() for n in registry.names()}
    return {
        "cpu": {"model": cpu.model, "arch": cpu.arch, "features": cpu.notable(), "amx": cpu.amx},
        "llama_cpp": {"version": _version("llama-cpp-python"), **ggml},
        "extra_buffer_types": verdict(user_data, cpu),
        "gpu": gpu_report(),
        "disk": disk_report(models_dir),
        "chromium": chromium(),
        "loaders": {n: {"available": p is None, "problem": p} for n, p in loaders.items()},
    }


def format_report(r: dict) -> str:
    cpu, ggml, ebt, gpu, disk = r["cpu"], r["llama_cpp"], r["extra_buffer_types"], r["gpu"], r["disk"]
    lines = [
        f"CPU: {cpu['model'] or '?'} ({cpu['arch']}); features: {' '.join(cpu['features']) or '-'}",
        f"  AMX advertised: {'yes' if cpu['amx'] else 'no'}",
        f"llama-cpp-python {ggml.get('version') or 'not installed'}",
    ]
    if "error" in ggml:
        lines.append(f"  ggml: {ggml['error']}")
    else:
        build = "portable (a CPU variant chosen at run time)" if ggml["portable"] else "native (this host's CPU)"
        built = " ".join(k for k, v in ggml["features"].items() if v == "1")
        lines += [
            f"  ggml CPU backend: {ggml['library'] or '?'}, {build}",
            f"  built with: {built or '-'}",
            f"  extra buffer types offered: {', '.join(ggml['buffer_types']) or 'none'}",
        ]
    lines.append(f"extra_buffer_types=auto here: {ebt['auto']} ({ebt['why']})")
    gpus = ", ".join(gpu["nvidia_gpus"]) or "no NVIDIA GPU found"
    lines.append(f"GPU: {gpus}; llama.cpp GPU offload: {gpu['llama_cpp_gpu_offload']}; torch: {gpu['torch'] or '-'}")
    lines.append(
        f"Disk: {disk['free_bytes'] / 1e9:.1f} GB free of {disk['total_bytes'] / 1e9:.1f} GB at {disk['path']}"
    )
    lines.append(f"Chromium: {r['chromium'] or 'not found (browser tests are skipped)'}")
    for name, state in r["loaders"].items():
        lines.append(f"loader {name}: {'available' if state['available'] else 'UNAVAILABLE: ' + state['problem']}")
    return "\n".join(lines)
