"""Memory: a note the model sees at the start of every chat, kept across conversations and restarts.

The note lives in this extension's data folder (``memory.txt``). It is put into the prompt by
``history_modifier`` (the saved chats stay as they were), so it acts in the UI, the API and
``inglenook run --chat`` alike. Edit it in the "Memory" box under the chat, or with
``GET``/``PUT /extensions/memory/note``.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from webui.extension_api import Context, Setting, hookimpl

NOTE_FILE = "memory.txt"
MAX_NOTE_CHARS = 20_000


class Note(BaseModel):
    note: str


def note_path(context: Context) -> Path:
    return context.data_dir / NOTE_FILE


def read_note(context: Context) -> str:
    try:
        return note_path(context).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return ""


def write_note(context: Context, text: str) -> str:
    """Save the note atomically (a temp file renamed over the old one); returns what was saved."""
    text = (text or "").strip()
    if len(text) > MAX_NOTE_CHARS:
        raise ValueError(f"the note is longer than {MAX_NOTE_CHARS:,} characters")
    path = note_path(context)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return text


def with_note(messages: list[dict], note: str, heading: str) -> list[dict]:
    """``messages`` with the note in the system message (merged into an existing one, else a new first one)."""
    if not note:
        return messages
    block = f"{heading}\n{note}" if heading else note
    if messages and messages[0].get("role") == "system":
        first = {**messages[0], "content": f"{messages[0]['content'].rstrip()}\n\n{block}"}
        return [first, *messages[1:]]
    return [{"role": "system", "content": block}, *messages]


@hookimpl
def settings() -> list[Setting]:
    return [Setting("heading", "Things to remember about the user and this work:", label="Heading above the note")]


@hookimpl
def history_modifier(messages: list[dict], context: Context) -> list[dict] | None:
    note = read_note(context)
    return with_note(messages, note, str(context.settings.get("heading", ""))) if note else None


@hookimpl
def ui(where: str, context: Context) -> None:
    if where != "chat":
        return
    import gradio as gr

    with gr.Accordion("Memory", open=False, elem_id="memory-extension"):
        box = gr.Textbox(value=lambda: read_note(context), label="The model sees this note in every chat", lines=4)
        save = gr.Button("Save memory", size="sm")
        status = gr.Markdown("")

    def on_save(text: str) -> str:
        try:
            return "Saved." if write_note(context, text) else "Cleared."
        except ValueError as exc:
            return f"⚠️ {exc}"

    save.click(on_save, box, status, api_name=False)


@hookimpl
def api_routes(router, context: Context) -> None:
    from fastapi import HTTPException

    @router.get("/note")
    def get_note() -> dict:
        return {"note": read_note(context)}

    @router.put("/note")
    def put_note(body: Note) -> dict:
        try:
            return {"note": write_note(context, body.note)}
        except ValueError as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from None
