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
from webui.lab import quantize
from webui.lab.perplexity import default_text, perplexity_in_child
from webui.lab.quantize import quant_types
from webui.models.folder import list_models, resolve_model

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

    def gguf_names() -> list[str]:
        return [e.name for e in list_models(models_dir) if e.kind == "gguf"]

    def model_names() -> list[str]:
        """Every file or folder in the models folder that some loader (a plugin's too) can load."""
        if not models_dir.is_dir():
            return []
        found = sorted(models_dir.iterdir(), key=lambda p: p.name.lower())
        return [p.name for p in found if not p.name.startswith(".") and app.registry.candidates(p)]

    with gr.Accordion("Make a quant (llama.cpp)", open=False, elem_id="quantize-panel"):
        with gr.Row():
            q_source = gr.Dropdown(choices=gguf_names(), label="GGUF to quantize", scale=3, elem_id="quantize-source")
            q_type = gr.Dropdown(choices=_types(), value="Q4_K_M", label="Type", elem_id="quantize-type")
            q_out = gr.Textbox(label="Output name (optional)", placeholder="NAME-TYPE.gguf", elem_id="quantize-out")
        with gr.Row():
            q_run = gr.Button("Quantize", variant="primary", elem_id="quantize-run")
            q_stop = gr.Button("Cancel", elem_id="quantize-stop")
        q_status = gr.Markdown("", elem_id="quantize-status")
    with gr.Accordion("Perplexity", open=False, elem_id="perplexity-panel"):
        with gr.Row():
            p_model = gr.Dropdown(choices=model_names(), label="Model", scale=3, elem_id="perplexity-model")
            p_ctx = gr.Number(value=512, precision=0, label="Window (tokens)", elem_id="perplexity-ctx")
            p_chunks = gr.Number(value=0, precision=0, label="Windows (0 = all)", elem_id="perplexity-chunks")
            p_run = gr.Button("Measure", elem_id="perplexity-run")
        p_status = gr.Markdown("", elem_id="perplexity-status")
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
    q_cancel = gr.State(None)

    def on_quantize(source, qtype, out):
        cancel = CancelToken()
        if not source:
            yield "Pick a GGUF file.", cancel, gr.update(), gr.update(), gr.update()
            return
        try:
            job = quantize.plan(resolve_model(source, models_dir, allow_paths=False), qtype or "", models_dir,
                                (out or "").strip() or None)  # fmt: skip
        except (quantize.QuantizeError, ModelLoadError) as exc:
            yield f"**Cannot quantize:** {exc}", cancel, gr.update(), gr.update(), gr.update()
            return
        warn = "".join(f"\n\n⚠ {w}" for w in job.warnings)
        seen: dict = {}
        worker = threading.Thread(
            target=lambda: seen.update(result=_quantize_safely(job, seen, cancel)), name="quantize", daemon=True
        )
        worker.start()
        while worker.is_alive():
            step = seen.get("step")
            text = f"tensor {step[0]}/{step[1]} `{step[2]}`" if step else "starting…"
            yield f"Quantizing {job.source.name} → {job.target.name}: {text}{warn}", cancel, *[gr.update()] * 3
            worker.join(timeout=0.5)
        result = seen.get("result")
        if isinstance(result, str):
            yield f"**{result}**", cancel, *[gr.update()] * 3
            return
        names = model_names()
        yield (
            f"Made **{result.target.name}** ({result.size / 2**20:.0f} MiB, {result.seconds:.1f} s); it is in the "
            f"model list.{warn}", cancel, gr.update(choices=names), gr.update(choices=gguf_names()),
            gr.update(choices=names),
        )  # fmt: skip

    def on_perplexity(name, ctx, chunks):
        if not name:
            return "Pick a model."
        try:
            path = resolve_model(name, models_dir, allow_paths=False)
            text_name, text = default_text()
            found = perplexity_in_child(path, text, int(ctx or 512), int(chunks or 0), text_name=text_name)
        except (ValueError, ModelLoadError) as exc:
            return f"**Cannot measure:** {exc}"
        return f"**{found['model']}**: {found['line']} on {text_name}"

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

    q_outputs = [q_status, q_cancel, models, q_source, p_model]
    q_run.click(on_quantize, [q_source, q_type, q_out], q_outputs, api_name=False)
    q_stop.click(lambda c: c.cancel() if c is not None else None, q_cancel, None, api_name=False)
    p_run.click(on_perplexity, [p_model, p_ctx, p_chunks], p_status, api_name=False, concurrency_limit=1)
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


def _quantize_safely(job, seen: dict, cancel: CancelToken):
    """Run the quantization (in its child process); the result, or the error's text for the page."""
    try:
        return quantize.run(job, lambda i, n, name: seen.update(step=(i, n, name)), cancel)
    except quantize.QuantizeError as exc:
        return str(exc)


def _types() -> list[str]:
    """llama.cpp's quantization types; none when llama-cpp-python is missing (the panel then says why on use)."""
    try:
        return list(quant_types())
    except ImportError:
        return []
