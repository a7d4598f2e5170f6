"""What a model in a worker process costs per token and to the first chunk (README, "Speed").

The fake test loader with no token delay generates 2,000 tokens, 30 times, through ``Engine(workers=True)``
and through ``Engine(workers=False)`` (the model in this process); the difference is the process boundary.
Run: ``PYTHONPATH=. python tests/measure_worker_ipc.py`` (needs tests/plugins/fake_loader installed).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

from backends.base import SamplingParams
from backends.registry import LoaderRegistry
from webui.engine import Engine

TOKENS, RUNS = 2000, 30


def measure(path: Path, workers: bool) -> tuple[float, float]:
    """(seconds to the first chunk, seconds per token), medians over RUNS."""
    engine = Engine(LoaderRegistry(), workers=workers)
    engine.load(path)
    firsts, per_token = [], []
    try:
        for _ in range(RUNS):
            start = time.perf_counter()
            stream = engine.generate("x", SamplingParams(max_new_tokens=TOKENS))
            next(stream)
            firsts.append(time.perf_counter() - start)
            n = 1 + sum(1 for chunk in stream if chunk.text)
            per_token.append((time.perf_counter() - start) / n)
    finally:
        engine.unload()
    return statistics.median(firsts), statistics.median(per_token)


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "ipc.fake"
        path.write_text(json.dumps({"reply": " ".join(["w"] * TOKENS)}), encoding="utf-8")
        worker, local = measure(path, True), measure(path, False)
    for name, (first, per) in (("worker", worker), ("in-process", local)):
        print(f"{name:>10}: first chunk {first * 1e3:.2f} ms, {per * 1e6:.1f} us/token")
    print(f"the worker adds {(worker[0] - local[0]) * 1e3:.2f} ms to the first chunk "
          f"and {(worker[1] - local[1]) * 1e6:.1f} us per token")  # fmt: skip


if __name__ == "__main__":
    main()
