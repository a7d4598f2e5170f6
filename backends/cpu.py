"""What this machine's CPU says it can do, read from ``/proc/cpuinfo`` (Linux) without loading any library.

Loaders use it to pick safe defaults (llama.cpp's AMX path faults on some virtual machines that advertise
AMX); ``inglenook doctor`` prints it. Nothing here imports ``webui``.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from pathlib import Path

AMX_FLAGS = ("amx_tile", "amx_int8", "amx_bf16")
# the flags worth naming in a report, in the order a person reads them (x86 names from /proc/cpuinfo)
NOTABLE_FLAGS = (
    "sse4_2", "avx", "f16c", "fma", "avx2", "bmi2", "avx_vnni", "avx512f", "avx512bw", "avx512vl", "avx512vbmi",
    "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16", "asimd", "asimddp", "sve", "sve2", "i8mm",
)  # fmt: skip


@dataclass(frozen=True)
class CpuInfo:
    """The CPU's model name, architecture and feature flags."""

    model: str = ""
    arch: str = ""
    flags: frozenset[str] = field(default_factory=frozenset)

    @property
    def amx(self) -> bool:
        """Whether the CPU advertises AMX (tile registers): llama.cpp then uses its AMX buffer type by default."""
        return any(f in self.flags for f in AMX_FLAGS)

    def notable(self) -> list[str]:
        return [f for f in NOTABLE_FLAGS if f in self.flags]


def parse_cpuinfo(text: str, arch: str = "") -> CpuInfo:
    """The first processor's model name and flags (x86 ``flags``, arm64 ``Features``) from cpuinfo text."""
    model, flags = "", ""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip().lower()
        if key in ("model name", "cpu model", "hardware") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = value
    return CpuInfo(model=model, arch=arch, flags=frozenset(flags.split()))


def cpu_info(cpuinfo: Path = Path("/proc/cpuinfo")) -> CpuInfo:
    """This machine's CPU; empty model and flags where ``/proc/cpuinfo`` cannot be read (not Linux)."""
    arch = platform.machine()
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return CpuInfo(model=platform.processor(), arch=arch)
    return parse_cpuinfo(text, arch)
