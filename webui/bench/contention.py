"""``inglenook bench --contention``: decode speed on an idle machine and beside a CPU hog (issue 17 §3).

A hog is a busy-loop process pinned to one usable core (a browser tab, an IDE, a build), bounded in time
by itself and stopped at the end. Contenders: raw llama-cpp-python as a user runs it (libgomp's default
wait policy unless the bench's own environment sets one), raw llama-cpp-python with ``OMP_WAIT_POLICY=PASSIVE``, and our
engine (its worker's policy, :mod:`webui.worker`). Each runs the same greedy prompt idle, then under load.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterator

from webui.bench.measure import Contender, run_interleaved

HOG_LIMIT_S = 1800  # the hog ends itself after this even if the bench is killed


def hog_core() -> int | None:
    """The core the hog is pinned to: the last usable one (None where affinity is unknown)."""
    try:
        return max(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


@contextlib.contextmanager
def cpu_hog(limit_s: float = HOG_LIMIT_S) -> Iterator[subprocess.Popen]:
    """One busy-loop subprocess on one core while the block runs; killed at the end (and ends by itself)."""
    core = hog_core()
    code = (
        "import os, time\n"
        + (f"os.sched_setaffinity(0, {{{core}}})\n" if core is not None else "")
        + f"end = time.monotonic() + {float(limit_s)}\n"
        "while time.monotonic() < end:\n    pass\n"
    )
    process = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL)
    try:
        yield process
    finally:
        process.kill()
        process.wait(timeout=10)


def measure_contention(
    contenders: list[Contender], runs: int, progress: Callable[[str], None], limit_s: float = HOG_LIMIT_S
) -> dict:
    """Each contender idle, then beside the hog: median tok/s and TTFT, and the fraction kept under load."""
    progress("idle machine:")
    run_interleaved(contenders, runs, progress)
    idle = {c.name: list(c.samples) for c in contenders}
    for c in contenders:
        c.samples.clear()
    progress("beside a busy-loop on one core:")
    with cpu_hog(limit_s):
        run_interleaved(contenders, runs, progress)
    loaded = {c.name: list(c.samples) for c in contenders}
    out: dict[str, dict] = {}
    for c in contenders:
        row = {}
        for phase, samples in (("idle", idle[c.name]), ("load", loaded[c.name])):
            row[f"{phase}_tokens_per_s"] = round(statistics.median([s.tokens_per_s for s in samples]), 2)
            row[f"{phase}_ttft_ms"] = round(statistics.median([s.ttft_s for s in samples]) * 1000, 1)
            row[f"{phase}_runs"] = [round(s.tokens_per_s, 2) for s in samples]
        row["kept_under_load"] = (
            round(row["load_tokens_per_s"] / row["idle_tokens_per_s"], 3) if row["idle_tokens_per_s"] else 0.0
        )
        out[c.name] = row
    return {"hog_core": hog_core(), "contenders": out}


def format_contention(result: dict) -> str:
    """The table: tok/s idle and under load per contender, and the engine's idle speed against raw's."""
    head = ("idle tok/s", "load tok/s", "kept", "idle TTFT ms", "load TTFT ms")
    lines = [f"{'contender':<14}" + "".join(f"{h:>14}" for h in head)]
    for name, row in result["contenders"].items():
        lines.append(
            f"{name:<14}{row['idle_tokens_per_s']:>14.1f}{row['load_tokens_per_s']:>14.1f}"
            f"{row['kept_under_load']:>14.0%}{row['idle_ttft_ms']:>14.1f}{row['load_ttft_ms']:>14.1f}"
        )
    rows = result["contenders"]
    if "raw" in rows and "engine" in rows and rows["raw"]["idle_tokens_per_s"]:
        ratio = rows["engine"]["idle_tokens_per_s"] / rows["raw"]["idle_tokens_per_s"]
        lines.append(f"engine idle / raw idle: {ratio:.3f} (goal: loses < 5 %)")
    return "\n".join(lines)
