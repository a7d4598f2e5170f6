"""What this machine's CPU says it can do, read from ``/proc/cpuinfo`` (Linux) without loading any library.

Loaders use it to pick safe defaults (llama.cpp's AMX path faults on some virtual machines that advertise
AMX); ``inglenook doctor`` prints it. Nothing here imports ``webui``.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
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


class ThreadGovernor:
    """Picks llama.cpp's decode threads from the speed it sees, token by token.

    One thread per core is fastest on an idle machine; beside a busy process (a browser, an IDE, a build)
    it collapses, because every step waits at a barrier for a thread the OS has descheduled (2 threads on 2
    cores with one core busy: 2-3 tok/s; one thread: 26 tok/s). The load cannot be known in advance and
    changes mid-reply, so the governor measures. It runs the full count (one per usable core) and tries half
    of it for a few tokens: once early on, and whenever a token takes far longer than the full count's
    reference. Whichever count was faster per token stays. From the lower count it tries the full one again
    now and then, less often each time that try loses, so a machine that went quiet gets its speed back. A
    try that loses backs off too: on an idle machine the full count stays, at a cost of a few tokens per load.
    """

    SLOW = 2.5  # a token this many times slower than the full count's reference suggests contention
    TRIAL_TOKENS = 3  # tokens a try of the other count lasts before it is judged
    WIN = 0.9  # a try wins when its time per token is below this fraction of the count it is compared with
    FIRST_WAIT_S = 1.0  # the first retry after a lost try; doubles while tries lose
    LONGEST_WAIT_S = 16.0

    def __init__(self, most: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.most = max(1, most)
        self.fewer = max(1, self.most // 2)
        self.threads = self.most
        self._clock = clock
        self._recent: dict[int, float] = {}  # threads -> moving average of seconds per token
        self._reference = 0.0  # seconds per token at the full count when the machine was last found quiet
        self._trial: tuple[int, int, float] | None = None  # (threads tried, tokens so far, time to beat)
        self._waits = {self.most: self.FIRST_WAIT_S, self.fewer: self.FIRST_WAIT_S}  # retry wait per target
        self._not_before = {self.most: 0.0, self.fewer: 0.0}
        self._explored = False
        self._seen = 0  # tokens timed at the full count before the first try
        self.tokens_at: dict[int, int] = {}  # thread count -> tokens timed at it (what the governor chose, in sum)

    def observe(self, seconds: float) -> int:
        """Record one token's time at the current count; returns the count for the next token."""
        t = self.threads
        self.tokens_at[t] = self.tokens_at.get(t, 0) + 1
        avg = self._recent.get(t)
        self._recent[t] = seconds if avg is None else 0.7 * avg + 0.3 * seconds
        if self.most == self.fewer:
            return t
        now = self._clock()
        if self._trial is not None:
            self._judge(now, seconds)
        elif t == self.most:
            if not self._reference or seconds < self._reference:
                self._reference = seconds
            slow = seconds > self.SLOW * self._reference
            self._seen += 1
            explore = not self._explored and self._seen >= self.TRIAL_TOKENS
            if (explore or slow) and now >= self._not_before[self.fewer]:
                self._explored = True
                self._try(self.fewer)
        elif now >= self._not_before[self.most]:
            self._try(self.most)
        return self.threads

    def _try(self, threads: int) -> None:
        self._trial = (threads, 0, self._recent[self.threads])
        self.threads = threads
        self._recent.pop(threads, None)

    def _judge(self, now: float, seconds: float) -> None:
        tried, count, to_beat = self._trial  # type: ignore[misc]
        # a token twice as slow ends the try at once: beside a busy core, one full-count token can take 0.4 s
        if count + 1 < self.TRIAL_TOKENS and seconds < 2 * to_beat:
            self._trial = (tried, count + 1, to_beat)
            return
        self._trial = None
        won = seconds < 2 * to_beat and self._recent[tried] < self.WIN * to_beat
        if won:
            self._waits[tried] = self.FIRST_WAIT_S
        else:
            self._waits[tried] = min(self._waits[tried] * 2, self.LONGEST_WAIT_S)
            self.threads = self.fewer if tried == self.most else self.most
            if tried == self.fewer:
                # fewer threads were no faster: the slowness was the work (a longer context), not contention
                self._reference = to_beat
        if self.threads == self.most:
            self._reference = min(self._reference or to_beat, self._recent[self.most])
        # the next try of the other count waits for its own back-off
        other = self.fewer if self.threads == self.most else self.most
        self._not_before[other] = now + self._waits[other]
