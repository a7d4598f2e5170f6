"""Generation stats: every finished reply (UI, API or ``inglenook run``) is recorded, and a tab of its own
charts tokens per second, time to first token and reply length across replies.

``output_modifier`` only observes (it returns ``None``, so the reply is unchanged); rows go to
``stats.jsonl`` in this extension's data folder, one JSON object per line, the oldest dropped past
the ``keep`` setting.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from webui.extension_api import Context, ReplyInfo, Setting, hookimpl

STATS_FILE = "stats.jsonl"
FIELDS = ("n", "time", "model", "mode", "prompt_tokens", "completion_tokens", "ttft_ms", "tokens_per_s")
_write_lock = threading.Lock()  # one writer at a time within the process (replies may finish together)


def stats_path(context: Context) -> Path:
    return context.data_dir / STATS_FILE


def read_rows(context: Context) -> list[dict]:
    """The recorded replies, oldest first, numbered from 1; lines that cannot be read are skipped."""
    try:
        lines = stats_path(context).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    rows = []
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append({**row, "n": len(rows) + 1})
    return rows


def record(context: Context, reply: ReplyInfo, keep: int) -> dict:
    row = {
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        "model": context.model or "",
        "mode": context.mode,
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens,
        "ttft_ms": round(reply.ttft_s * 1000, 1),
        "tokens_per_s": round(reply.tokens_per_s, 2),
    }
    path = stats_path(context)
    with _write_lock:
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = [{k: v for k, v in r.items() if k != "n"} for r in read_rows(context)][-(keep - 1) :] if keep > 1 else []
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in [*rows, row]), encoding="utf-8")
        tmp.replace(path)
    return row


def summary(rows: list[dict]) -> str:
    if not rows:
        return "No replies recorded yet: chat a little, then press Refresh."
    speeds = [r["tokens_per_s"] for r in rows if r.get("tokens_per_s")]
    ttfts = [r["ttft_ms"] for r in rows if r.get("ttft_ms")]
    mean = lambda xs: sum(xs) / len(xs) if xs else 0.0  # noqa: E731
    return (
        f"**{len(rows)} replies** · mean speed {mean(speeds):.1f} tok/s · mean time to first token "
        f"{mean(ttfts):.0f} ms · {sum(r.get('completion_tokens', 0) for r in rows)} tokens in all"
    )


@hookimpl
def settings() -> list[Setting]:
    return [Setting("keep", 500, label="Replies kept", minimum=10, maximum=100_000)]


@hookimpl
def output_modifier(reply: ReplyInfo, context: Context) -> None:
    if reply.completion_tokens:
        record(context, reply, int(context.settings.get("keep", 500)))


@hookimpl
def ui(where: str, context: Context) -> None:
    if where != "tab":
        return
    import gradio as gr
    import pandas as pd

    def frame():
        return pd.DataFrame(read_rows(context), columns=list(FIELDS))

    def frames():
        table = frame()
        return summary(read_rows(context)), table, table, table

    gr.Markdown("Speed and latency of every reply, whichever front end asked for it.")
    heading = gr.Markdown(lambda: summary(read_rows(context)), elem_id="generation-stats-summary")
    with gr.Row():
        speed = gr.LinePlot(frame, x="n", y="tokens_per_s", title="Tokens per second", x_title="reply", y_title="tok/s")
        ttft = gr.LinePlot(frame, x="n", y="ttft_ms", title="Time to first token", x_title="reply", y_title="ms")
    table = gr.Dataframe(frame, interactive=False, label="Replies")
    refresh = gr.Button("Refresh", elem_id="generation-stats-refresh")
    refresh.click(frames, None, [heading, speed, ttft, table], api_name=False)
