"""``inglenook bench --draft`` (issue 17 §5): prompt-lookup drafting against plain decoding, greedy, on a task that
repeats its prompt (copying code) and on one that does not (a story). Per task: the median tok/s without and with
drafting, the speed-up, the acceptance rate, and whether the texts are the same (they should be: see
``LlamaCppModel._drafted_tokens`` for the one way they may not)."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import replace

from backends.base import SamplingParams, Usage
from webui.app import App

CODE = (
    "def total(items):\n    result = 0\n    for item in items:\n        if item.price > 0:\n"
    "            result += item.price * item.count\n    return result\n\n"
    "def average(items):\n    if not items:\n        return 0\n    return total(items) / len(items)\n"
)
TASKS = {
    "repeats the prompt": f"Copy this code exactly:\n\n{CODE}\nCopy:\n\n",
    "does not": "Once upon a time, in a small village by the sea, there lived",
}


def _run(app: App, prompt: str, tokens: int) -> tuple[str, Usage]:
    text, usage = "", None
    for chunk in app.engine.generate(prompt, SamplingParams(temperature=0, max_new_tokens=tokens)):
        text += chunk.text
        usage = chunk.usage or usage
    if usage is None:
        raise RuntimeError("the generation ended without usage")
    return text, usage


def measure_draft(
    app: App, path: str, settings, draft_tokens: int, tokens: int, runs: int, progress: Callable[[str], None]
) -> dict:
    """Load ``path`` without and then with drafting; ``runs`` greedy runs of each task each time."""
    measured: dict[str, dict] = {name: {} for name in TASKS}
    for mode in ("off", "prompt-lookup"):
        progress(f"loading with draft={mode} ...")
        app.load_model(path, "llama.cpp", settings=replace(settings, draft=mode, draft_tokens=draft_tokens))
        for name, prompt in TASKS.items():
            rows = [_run(app, prompt, tokens) for _ in range(runs)]
            speeds = [u.tokens_per_s for _, u in rows]
            drafted = sum(u.draft_tokens for _, u in rows)
            accepted = sum(u.draft_accepted for _, u in rows)
            measured[name][mode] = {
                "tokens_per_s": round(statistics.median(speeds), 2),
                "text": rows[-1][0],
                "accepted_percent": round(100 * accepted / drafted, 1) if drafted else None,
            }
            progress(f"{name}, draft={mode}: {measured[name][mode]['tokens_per_s']} tok/s")
    result = {}
    for name, by_mode in measured.items():
        off, on = by_mode["off"], by_mode["prompt-lookup"]
        result[name] = {
            "off_tokens_per_s": off["tokens_per_s"],
            "draft_tokens_per_s": on["tokens_per_s"],
            "speedup": round(on["tokens_per_s"] / off["tokens_per_s"], 2) if off["tokens_per_s"] else None,
            "accepted_percent": on["accepted_percent"],
            "same_text": on["text"] == off["text"],
        }
    return {"draft_tokens": draft_tokens, "tokens": tokens, "runs": runs, "tasks": result}


def format_draft(result: dict) -> str:
    lines = [f"prompt-lookup drafting, {result['draft_tokens']} tokens a draft, {result['tokens']} tokens greedy, "
             f"median of {result['runs']} runs"]  # fmt: skip
    for name, r in result["tasks"].items():
        lines.append(
            f"task that {name}: {r['off_tokens_per_s']} tok/s plain, {r['draft_tokens_per_s']} tok/s drafting "
            f"({r['speedup']}×), draft accepted {r['accepted_percent']} %, "
            + ("same text" if r["same_text"] else "TEXT DIFFERS (a near tie went the other way in a batched decode)")
        )
    return "\n".join(lines)
