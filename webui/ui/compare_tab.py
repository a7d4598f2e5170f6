"""The Compare tab: run several models or quants on the same prompts and see one table, two charts (tok/s
bars, perplexity against file size) and the answers in columns; load saved results and export them.

Widgets only: the work is :mod:`webui.lab.compare` (each model in a child process of its own).
"""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path

import gradio as gr

from backends.base import CancelToken, ModelLoadError
from webui.app import App
from webui.lab import compare as lab
from webui.models.folder import resolve_model

EMPTY_TABLE = {"headers": [label for _, label in lab.COLUMNS], "data": []}


def _frames(result: dict | None):
    """(table, speed bars, ppl-vs-size points, answers) as pandas DataFrames for the Gradio widgets."""
    import pandas as pd

    if not result:  # plots start empty with None: one given an empty frame first never draws later data
        return pd.DataFrame(columns=EMPTY_TABLE["headers"]), None, None, pd.DataFrame({"prompt": []})
    headers, rows = lab.table(result)
    table = pd.DataFrame(rows, columns=headers)
    ok = [r for r in result["rows"] if not r.get("error")]
    bars = pd.DataFrame(
        [
            {"bar": f"{r['model']} {kind}", "tok/s": r.get(key) or 0.0, "kind": kind}
            for r in ok
            for key, kind in (("tg_tokens_per_s", "tg"), ("pp_tokens_per_s", "pp"))
        ]  # fmt: skip
        or {"bar": [], "tok/s": [], "kind": []}
    )
    points = pd.DataFrame(
        [{"model": r["model"], "size MB": r.get("file_size_mb"), "PPL": r.get("ppl")} for r in ok if r.get("ppl")]
        or {"model": [], "size MB": [], "PPL": []}
    )
    a_headers, a_rows = lab.answers(result)
    return table, bars, points, pd.DataFrame(a_rows, columns=a_headers)


def build_compare_tab(app: App) -> None:
    """The tab's widgets and their events (called inside ``gr.Tab("Compare")``)."""
    user_data = app.settings.user_data
    models_dir = app.settings.models_dir

    def model_names() -> list[str]:
        """Every file or folder in the models folder that some loader (a plugin's too) can load."""
        if not models_dir.is_dir():
            return []
        found = sorted(models_dir.iterdir(), key=lambda p: p.name.lower())
        return [p.name for p in found if not p.name.startswith(".") and app.registry.candidates(p)]

    with gr.Row():
        models = gr.Dropdown(
            choices=model_names(), multiselect=True, label="Models or quants to compare", scale=4,
            elem_id="compare-models",
        )  # fmt: skip
        refresh = gr.Button("↻", scale=0, min_width=40, elem_id="compare-refresh")
    prompts = gr.Textbox(
        value="\n".join(lab.DEFAULT_PROMPTS), lines=3, label="Prompts (one per line)", elem_id="compare-prompts"
    )
    with gr.Row():
        max_tokens = gr.Number(value=48, precision=0, label="New tokens per answer", elem_id="compare-max-tokens")
        pp_tokens = gr.Number(value=512, precision=0, label="Prompt tokens for pp", elem_id="compare-pp")
        n_ctx = gr.Number(value=1024, precision=0, label="Context", elem_id="compare-ctx")
        with_ppl = gr.Checkbox(value=True, label="Perplexity", elem_id="compare-ppl")
        ppl_ctx = gr.Number(value=512, precision=0, label="Perplexity window", elem_id="compare-ppl-ctx")
        seed = gr.Number(value=0, precision=0, label="Seed", elem_id="compare-seed")
    with gr.Row():
        run = gr.Button("Compare", variant="primary", elem_id="compare-run")
        stop = gr.Button("Stop", elem_id="compare-stop")
        saved = gr.Dropdown(choices=lab.saved(user_data), label="Saved results", scale=3, elem_id="compare-saved")
        show = gr.Button("Show saved", elem_id="compare-show")
    status = gr.Markdown("", elem_id="compare-status")
    table = gr.Dataframe(value=_frames(None)[0], label="Results", interactive=False, elem_id="compare-table")
    with gr.Row():
        speed = gr.BarPlot(
            value=_frames(None)[1], x="bar", y="tok/s", color="kind",
            title="Tokens per second (tg: generation, pp: prompt)", elem_id="compare-speed",
        )  # fmt: skip
        quality = gr.ScatterPlot(
            value=_frames(None)[2], x="size MB", y="PPL", color="model",
            title="Perplexity vs file size (lower is better)", elem_id="compare-ppl-plot",
        )  # fmt: skip
    answers = gr.Dataframe(value=_frames(None)[3], label="Answers", interactive=False, wrap=True,
                           elem_id="compare-answers")  # fmt: skip
    with gr.Row():
        export_kind = gr.Radio(["CSV", "Markdown", "PNG"], value="CSV", label="Export as", elem_id="compare-format")
        export = gr.Button("Export", elem_id="compare-export")
        exported = gr.File(label="Exported file", interactive=False, elem_id="compare-file")
    current = gr.State(None)
    cancel_state = gr.State(None)

    def on_run(names, prompt_text, new_tokens, pp, ctx, ppl, window, seed_value):
        cancel = CancelToken()
        outputs = _frames(None)
        if not names:
            yield "Pick at least one model.", *outputs, None, cancel, gr.update()
            return
        try:
            paths = [resolve_model(n, models_dir, allow_paths=False) for n in names]
            settings = lab.CompareSettings(
                prompts=[p.strip() for p in (prompt_text or "").splitlines() if p.strip()],
                max_new_tokens=int(new_tokens or 48), seed=int(seed_value or 0), n_ctx=int(ctx or 1024),
                pp_tokens=int(pp or 512), perplexity=bool(ppl), ppl_ctx=int(window or 512),
            )  # fmt: skip
            settings.validate()
        except (ValueError, ModelLoadError) as exc:  # CompareError is a ValueError: shown, not raised
            yield f"**Cannot compare:** {exc}", *outputs, None, cancel, gr.update()
            return
        lines: list[str] = []
        found: dict = {}
        worker = threading.Thread(
            target=lambda: found.update(result=lab.compare(paths, settings, lines.append, cancel)),
            name="compare", daemon=True,
        )  # fmt: skip
        worker.start()
        unchanged = [gr.update()] * 6
        while worker.is_alive():
            yield (lines[-1] if lines else "Starting…"), *unchanged[:5], None, cancel, gr.update()
            worker.join(timeout=0.5)
        result = found.get("result")
        if result is None:
            yield "**The comparison failed** (see the server log).", *outputs, None, cancel, gr.update()
            return
        path = lab.save(result, user_data)
        note = "Stopped. " if cancel.cancelled else ""
        failed = [r["model"] for r in result["rows"] if r.get("error")]
        if failed:
            note += f"Failed: {', '.join(failed)}. "
        yield (
            f"{note}Saved as `{path.stem}`.", *_frames(result), result, cancel,
            gr.update(choices=lab.saved(user_data), value=path.stem),
        )  # fmt: skip

    def on_stop(cancel):
        if cancel is not None:
            cancel.cancel()
        return "Stopping after the current step…"

    def on_show(name):
        if not name:
            return "Pick a saved result.", *_frames(None), None
        try:
            result = lab.load(user_data, name)
        except lab.CompareError as exc:
            return f"**{exc}**", *_frames(None), None
        return f"Saved result `{name}` ({result.get('created', '')}).", *_frames(result), result

    def on_export(result, kind):
        if not result:
            return None
        folder = Path(tempfile.mkdtemp(prefix="inglenook-compare-"))
        if kind == "PNG":
            return str(lab.to_png(result, folder / "compare.png"))
        target = folder / ("compare.csv" if kind == "CSV" else "compare.md")
        target.write_text(lab.to_csv(result) if kind == "CSV" else lab.to_markdown(result), encoding="utf-8")
        return str(target)

    shown = [status, table, speed, quality, answers, current]
    run.click(
        on_run, [models, prompts, max_tokens, pp_tokens, n_ctx, with_ppl, ppl_ctx, seed],
        [*shown, cancel_state, saved], api_name=False,
    )  # fmt: skip
    stop.click(on_stop, cancel_state, status, api_name=False)
    show.click(on_show, saved, shown, api_name=False)
    export.click(on_export, [current, export_kind], exported, api_name=False)
    refresh.click(
        lambda: (gr.update(choices=model_names()), gr.update(choices=lab.saved(user_data))), None, [models, saved],
        api_name=False,
    )  # fmt: skip
