"""The Download panel of the Model tab: search the hub, pick a quantization that fits, download with progress.

Widgets and formatting only: searching, planning and downloading are :mod:`webui.models.hub` and
:mod:`webui.models.downloads` (the same code as ``inglenook models search|download`` and the API). The app's
one :class:`~webui.models.downloads.DownloadManager` runs downloads on threads of their own; a timer redraws
the progress bar and the list every second, and refreshes the Model dropdown when a download finishes.
"""

from __future__ import annotations

import html
import re

import gradio as gr

from webui.access import NotAdmin, is_ui_admin, require_ui_admin
from webui.app import App
from webui.models import panel as core
from webui.models.catalog import Catalog
from webui.models.hub import HubConfig, HubError, HubOffline, Memory, RepoFiles, repo_files, search

RESULT_HEADERS = ["Repo", "Downloads", "Likes", "Licence", "Gated", "Updated", "Architecture", "Params", "Formats"]
FILE_HEADERS = ["Quantization", "Size", "Fit", "File"]
MAX_CARD_CHARS = 6000


def _size(n: float | None) -> str:
    if not n:
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def _status_line(config: HubConfig) -> str:
    if config.offline:
        return "⚠️ Offline (HF_HUB_OFFLINE is set): search and downloads are off; your local models work as usual."
    login = "logged in (token set)" if config.token else "not logged in (gated repos need `inglenook hub login`)"
    return f"Hub: {html.escape(config.endpoint)} · {login}"


def result_rows(results: list[dict]) -> list[list]:
    return [[r["repo"], r["downloads"], r["likes"], r["license"] or "—", "yes" if r["gated"] else "",
             (r["last_modified"] or "")[:10], r["architecture"] or "", f"{r['parameters'] / 1e9:.2f}B"
             if r["parameters"] else "", ", ".join(r["formats"])] for r in results]  # fmt: skip


def file_rows(files: RepoFiles) -> tuple[list[list], list[tuple[str, str]]]:
    """Table rows and dropdown choices (label, value) for a repo's downloadable choices."""
    rows, choices = [], []
    for c in files.gguf:
        names = c.files[0].path + (f" (+{len(c.files) - 1} parts)" if len(c.files) > 1 else "")
        rows.append([c.quant, _size(c.size), c.fit.get("label", ""), names])
        choices.append((f"{c.quant} · {_size(c.size)} · {c.fit.get('label', '')}", c.quant))
    for m in files.mmproj:
        rows.append(["mmproj (vision)", _size(m.size), "downloaded beside the model", m.path])
    if files.folder:
        f = files.folder
        quant = (f.get("quantization_config") or {}).get("quant_method", "") if f.get("quantization_config") else ""
        label = f"{f['kind']} folder · {f.get('dtype') or '?'}{' · ' + quant if quant else ''}"
        rows.append([label, _size(f["size"]), f["fit"].get("label", ""), "all weights + tokenizer"])
        choices.append((f"{label} · {_size(f['size'])} · {f['fit'].get('label', '')}", ""))
    for path in files.unsafe:
        rows.append(["refused", "", "⛔ the name would leave the models folder", path])
    return rows, choices


def card_markdown(files: RepoFiles, config: HubConfig) -> str:
    url = config.repo_url(files.repo)
    gated = f" · 🔒 gated: accept its terms at [{url}]({url}) and log in" if files.gated else ""
    head = f"**Licence: {files.license or 'not stated'}** · [{files.repo}]({url}){gated}"
    card = files.card.strip()
    if card.startswith("---"):
        card = card.split("\n---", 1)[-1].lstrip("-\n")  # the front matter is shown above
    card = re.sub(r"^#{1,3} ", "#### ", card, flags=re.MULTILINE)  # the card's headings below the panel's
    return head + ("\n\n---\n\n" + card[:MAX_CARD_CHARS] if card else "\n\n(no model card)")


def progress_html(job: dict | None) -> str:
    if job is None:
        return ""
    pct = job["percent"]
    eta = f" · ETA {job['eta_s']:.0f} s" if job.get("eta_s") is not None else ""
    state = {"done": "✅ done", "failed": "⚠️ failed", "cancelled": "cancelled"}.get(job["state"], job["state"])
    error = f"<div class='hub-error'>{html.escape(job['error'])}</div>" if job.get("error") else ""
    return (f"<div id='hub-progress-box'><b>{html.escape(job['target'])}</b> — {state}<br>"
            f"<progress max='100' value='{pct}' style='width:100%'></progress><br>"
            f"<span class='hub-progress-text'>{pct:.1f}% · {_size(job['bytes'])} of {_size(job['total'])} · "
            f"{_size(job['speed'])}/s{eta}</span>{error}</div>")  # fmt: skip


def downloads_markdown(jobs: list[dict]) -> str:
    """Running and finished downloads, one line each (a list, not a table: it reads on a phone too)."""
    if not jobs:
        return "No downloads yet."
    lines = ["**Downloads**"]
    for j in jobs:
        state = j["state"] + (f": {j['error']}" if j.get("error") else "")
        lines.append(f"- `{j['target']}` — {state} · {j['percent']:.0f}% of {_size(j['total'])} · "
                     f"licence {j['license'] or 'not stated'}")  # fmt: skip
    return "\n".join(lines)


def build_download_panel(app: App, model_dropdown: gr.Dropdown) -> None:
    """The panel, wired; ``model_dropdown`` gets the new model in its choices when a download finishes."""
    catalog = Catalog(app.settings.models_dir, app.remotes)
    config0 = HubConfig.load(app.settings.user_data)
    with gr.Accordion("Download models from Hugging Face", open=False, elem_id="download-panel"):
        status = gr.Markdown(_status_line(config0), elem_id="hub-status")
        with gr.Row(equal_height=True):
            query = gr.Textbox(label="Search the hub", placeholder="e.g. gemma gguf", scale=4, elem_id="hub-query")
            sort = gr.Dropdown(["downloads", "likes", "recent"], value="downloads", label="Sort by", scale=1,
                               elem_id="hub-sort")  # fmt: skip
            go = gr.Button("Search", scale=1, elem_id="hub-search")
        results = gr.Dataframe(headers=RESULT_HEADERS, interactive=False, wrap=True, elem_id="hub-results",
                               max_height=260)  # fmt: skip
        repo = gr.Dropdown([], label="Repo", allow_custom_value=True, elem_id="hub-repo")
        files = gr.Dataframe(headers=FILE_HEADERS, interactive=False, wrap=True, elem_id="hub-files", max_height=260)
        with gr.Accordion("Licence and model card", open=True, elem_id="hub-card-box"):
            card = gr.Markdown("", elem_id="hub-card")
        with gr.Row(equal_height=True):
            choice = gr.Dropdown([], label="Quantization to download", scale=4, min_width=280, elem_id="hub-choice")
            pickle = gr.Checkbox(False, label="allow pickle weights (*.bin: can run code)", scale=1,
                                 interactive=app.settings.loopback, elem_id="hub-allow-pickle")  # fmt: skip
            download = gr.Button("Download", variant="primary", scale=1, elem_id="hub-download")
            cancel = gr.Button("Cancel", scale=1, elem_id="hub-cancel")
        progress = gr.HTML("", elem_id="hub-progress")
        listing = gr.Markdown(downloads_markdown([j.as_dict() for j in app.downloads.jobs()]), elem_id="hub-downloads")
        current = gr.State(None)  # this page's last download id
        seen_done = gr.State(0)  # finished downloads the Model dropdown already knows
        timer = gr.Timer(1.0)

    def do_search(text: str, order: str):
        config = HubConfig.load(app.settings.user_data)
        try:
            found = [r.as_dict() for r in search(config, text or "", order or "downloads")]
        except HubOffline as exc:
            return f"⚠️ {exc}", gr.update(value=[]), gr.update(choices=[], value=None)
        except (HubError, ValueError) as exc:
            return f"⚠️ {exc}", gr.update(value=[]), gr.update(choices=[], value=None)
        line = _status_line(config) + f" · {len(found)} result(s)"
        repos = [r["repo"] for r in found]
        return line, result_rows(found), gr.update(choices=repos, value=repos[0] if repos else None)

    def show_repo(name: str):
        if not name:
            return gr.update(value=[]), "", gr.update(choices=[], value=None)
        config = HubConfig.load(app.settings.user_data)
        try:
            found = repo_files(config, name, int(app.settings.n_ctx), Memory.now())
        except (HubError, ValueError) as exc:
            return gr.update(value=[]), f"⚠️ {exc}", gr.update(choices=[], value=None)
        rows, choices = file_rows(found)
        values = [v for _, v in choices]
        default = next((q for q in ("Q4_K_M", "Q4_K_S", "Q5_K_M", "IQ4_XS", "Q8_0") if q in values), None)
        return rows, card_markdown(found, config), gr.update(choices=choices, value=default or (values or [None])[0])

    def pick_row(evt: gr.SelectData, table):
        row = evt.index[0] if isinstance(evt.index, list | tuple) else evt.index
        try:
            return gr.update(value=table.iloc[row, 0])
        except (AttributeError, IndexError, KeyError):
            return gr.update()

    def start(request: gr.Request, name: str, pick: str | None, allow_pickle: bool):
        try:  # downloads write into the models folder: admins only, checked here whatever the page showed
            require_ui_admin(app.settings, getattr(request, "username", None), "downloading models")
        except NotAdmin as exc:
            return None, f"<div class='hub-error'>⚠️ {html.escape(str(exc))}</div>"
        if not name:
            return None, progress_html(None) + "⚠️ search and pick a repo first"
        spec = f"{name}:{pick}" if pick else name
        try:
            job = app.downloads.prepare(spec, allow_pickle=bool(allow_pickle) and app.settings.loopback,
                                        n_ctx=int(app.settings.n_ctx))  # fmt: skip
        except (HubError, ValueError) as exc:
            return None, f"<div class='hub-error'>⚠️ {html.escape(str(exc))}</div>"
        app.downloads.start(job)
        return job.id, progress_html(job.as_dict())

    def stop(request: gr.Request, job_id: str | None):
        if job_id and is_ui_admin(app.settings, getattr(request, "username", None)):
            app.downloads.cancel(job_id)
        return tick(job_id, None)[0]

    def tick(job_id: str | None, done_before: int | None):
        jobs = app.downloads.jobs()
        mine = app.downloads.get(job_id) if job_id else None
        done = sum(1 for j in jobs if j.state == "done")
        update = gr.update()
        if done_before is not None and done != done_before:
            update = gr.update(choices=core.model_choices(catalog))
        shown = mine or (jobs[0] if jobs else None)
        return (progress_html(shown.as_dict() if shown else None), downloads_markdown([j.as_dict() for j in jobs]),
                update, done)  # fmt: skip

    go.click(do_search, [query, sort], [status, results, repo], api_name=False)
    query.submit(do_search, [query, sort], [status, results, repo], api_name=False)
    repo.change(show_repo, repo, [files, card, choice], api_name=False)
    results.select(pick_row, results, repo, api_name=False)
    download.click(start, [repo, choice, pickle], [current, progress], api_name=False)
    cancel.click(stop, current, progress, api_name=False)
    timer.tick(tick, [current, seen_done], [progress, listing, model_dropdown, seen_done], api_name=False,
               show_progress="hidden")  # fmt: skip
