"""How much memory a model needs at a context length (weights + KV cache + buffers), against what is free now."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from webui.models.facts import Facts

COMPUTE_ALLOWANCE = 0.10  # compute buffers and runtime, as a fraction of the weights
FITS_BELOW = 0.75  # of available memory; up to 100 % is "tight"


@dataclass
class MemoryEstimate:
    weights: int
    kv_cache: int
    overhead: int
    available: int | None
    n_ctx: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.overhead

    @property
    def verdict(self) -> str:
        """One of: fits, tight, won't fit (against the memory available now), or unknown."""
        if not self.available:
            return "unknown"
        if self.total <= FITS_BELOW * self.available:
            return "fits"
        return "tight" if self.total <= self.available else "won't fit"

    def as_dict(self) -> dict:
        return {**asdict(self), "total": self.total, "verdict": self.verdict}


def available_memory(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """Bytes of memory the system could give a new process now (MemAvailable), or None if unknown."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def estimate_memory(facts: Facts, n_ctx: int, kv_bytes_per_value: float = 2.0, available: int | None = None,
                    weights: int | None = None) -> MemoryEstimate:  # fmt: skip
    """Weights + KV cache for ``n_ctx`` tokens + an allowance for compute buffers, against ``available``.

    ``kv_bytes_per_value`` is the cache's element size (llama.cpp keeps f16 by default: 2). ``weights``
    overrides the on-disk size (a loader that converts dtype, e.g. F32 weights loaded as BF16).
    """
    w = (facts.weights_bytes or facts.file_size) if weights is None else weights
    kv = facts.kv_bytes_per_token(kv_bytes_per_value) * max(0, n_ctx)
    return MemoryEstimate(w, kv, int(w * COMPUTE_ALLOWANCE), available, n_ctx)


def process_rss(status: Path = Path("/proc/self/status")) -> int | None:
    """This process's resident memory in bytes (VmRSS), or None where /proc is not there."""
    try:
        for line in status.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None
