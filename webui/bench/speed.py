"""``inglenook bench --speed MODEL...``: llama-bench's columns for each model, one at a time.

Load time, peak resident memory, prompt processing (pp, default 512 tokens) and generation (tg, default 128
tokens, end-of-text banned so every run generates them all) per model, each in a fresh process of its own
(:mod:`webui.lab.compare` measures; here only the settings and the table differ).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from webui.lab.compare import CompareSettings, compare

SPEED_PROMPT = "The history of the city of Rome begins"
COLUMNS = [("model", "model"), ("quantization", "quant"), ("file_size_mb", "size MB"), ("load_s", "load s"),
           ("peak_rss_mb", "peak RSS MB"), ("pp_tokens_per_s", "pp{pp} tok/s"), ("tg_tokens_per_s", "tg{tg} tok/s"),
           ("ttft_ms", "TTFT ms")]  # fmt: skip


def bench_speed(
    models: list[Path], pp: int = 512, tg: int = 128, threads: int = 0, progress: Callable[[str], None] | None = None
) -> dict:
    """Each model's load time, peak RSS, pp and tg speed (raw text continuation, greedy, EOS banned)."""
    settings = CompareSettings(
        prompts=[SPEED_PROMPT], max_new_tokens=tg, n_ctx=pp + tg + 64, pp_tokens=pp, threads=threads,
        perplexity=False, chat=False,
    )  # fmt: skip
    result = compare(models, settings, progress)
    result["pp"], result["tg"] = pp, tg
    return result


def format_speed(result: dict) -> str:
    """A text table like llama-bench's."""
    labels = [label.format(pp=result["pp"], tg=result["tg"]) for _, label in COLUMNS]
    rows = [labels]
    for row in result["rows"]:
        if row.get("error"):
            rows.append([row.get("model", "?"), f"error: {row['error']}"] + [""] * (len(COLUMNS) - 2))
            continue
        rows.append(["" if row.get(key) is None else str(row.get(key)) for key, _ in COLUMNS])
    widths = [max(len(r[i]) for r in rows) for i in range(len(labels))]
    lines = [
        " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in rows
    ]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def _pad(cell: str, width: int, left: bool) -> str:
    return cell.ljust(width) if left else cell.rjust(width)
