"""``inglenook bench --switch``: load and unload a model in cycles; load time and resident memory per cycle."""

from __future__ import annotations

import time

from webui.app import App


def bench_switch(app: App, model: str, cycles: int) -> dict:
    """Load and unload ``model`` ``cycles`` times: load time, and the RSS of this process and its model workers,
    loaded and unloaded."""
    rows = []
    baseline = app.engine.rss()
    for i in range(cycles):
        start = time.perf_counter()
        info = app.load_model(model)
        load_s = time.perf_counter() - start
        loaded = app.engine.rss()
        app.engine.unload()
        rows.append({"cycle": i + 1, "load_s": round(load_s, 3), "rss_loaded_mb": _mb(loaded),
                     "rss_unloaded_mb": _mb(app.engine.rss())})  # fmt: skip
    first, last = rows[0]["rss_loaded_mb"], rows[-1]["rss_loaded_mb"]
    return {
        "model": info.name,
        "loader": info.loader,
        "rss_before_mb": _mb(baseline),
        "cycles": rows,
        "rss_growth_percent": round(100 * (last - first) / first, 1) if first else None,
    }


def _mb(n: int | None) -> float | None:
    return round(n / 2**20, 1) if n else None
