"""The Characters tab: pick, create, edit, duplicate, delete, import a card, export, upload a picture.

Widgets only: every action is a function of :mod:`webui.characters.store` / :mod:`webui.characters.cards`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import gradio as gr
from PIL import Image

from webui.app import App
from webui.characters.cards import export_character, import_character
from webui.characters.store import EDITABLE, Character, CharacterError, open_picture, save_edit
from webui.chat.modes import move_conversations
from webui.paths import UnsafeName

LABELS = {
    "name": "Name (shown in the chat)", "user_name": "Your name in this character's chats (empty = You)",
    "greeting": "Greeting (the first message of a new chat)", "context": "Context / persona",
    "scenario": "Scenario", "example_dialogue": "Example dialogue ({{user}}: … / {{char}}: …)",
    "description": "Description (SillyTavern)", "personality": "Personality (SillyTavern)",
    "system_prompt": "System prompt (SillyTavern)",
    "post_history_instructions": "Post-history instructions (sent after the newest message)",
    "creator_notes": "Creator's notes",
}  # fmt: skip
LINES = {"greeting": 3, "context": 6, "example_dialogue": 5, "description": 4, "scenario": 2, "system_prompt": 2}


def build_characters_tab(app: App) -> tuple:
    """The tab; returns (fill, inputs, outputs) for the page load to fill the form with the picked character."""
    store = app.characters
    keys = store.keys()
    with gr.Row():
        pick = gr.Dropdown(choices=keys, value=keys[0] if keys else None, label="Character", scale=5,
                           elem_id="characters-pick")  # fmt: skip
        new = gr.Button("New", scale=1, elem_id="characters-new")
        duplicate = gr.Button("Duplicate", scale=1, elem_id="characters-duplicate")
        delete = gr.Button("Delete", scale=1, variant="stop", elem_id="characters-delete")
    status = gr.Markdown("", elem_id="characters-status")
    with gr.Row():
        with gr.Column(scale=3):
            key = gr.Textbox(label="File name (characters/NAME.yaml)", elem_id="characters-key")
            boxes = {f: gr.Textbox(label=LABELS[f], lines=LINES.get(f, 1), elem_id=f"characters-{f}") for f in EDITABLE}
            tags = gr.Textbox(label="Tags (comma separated)", elem_id="characters-tags")
            save = gr.Button("Save", variant="primary", elem_id="characters-save")
        with gr.Column(scale=2):
            picture = gr.Image(label="Picture", type="pil", interactive=False, height=320, elem_id="characters-picture")
            upload = gr.File(
                label="Upload a picture", file_types=["image"], type="filepath", elem_id="characters-upload"
            )
            card = gr.File(
                label="Import a character (PNG/JSON card, text-generation-webui YAML/JSON)",
                file_types=[".png", ".json", ".yaml", ".yml"], type="filepath", elem_id="characters-import",
            )  # fmt: skip
            export = gr.Button("Export as PNG card", elem_id="characters-export")
            exported = gr.File(label="Exported card", interactive=False, elem_id="characters-exported")

    fields = [key, *boxes.values(), tags]

    def fill(selected: str | None, note: str = ""):
        """Every widget for ``selected`` (an empty form when None)."""
        choices = store.keys()
        try:
            c = store.load(selected) if selected else Character()
        except (CharacterError, UnsafeName) as exc:
            c, note = Character(), f"⚠️ {exc}"
        pic = store.picture(selected) if selected and store.exists(selected) else None
        shipped = (
            " (ships with Inglenook: saving makes your own copy)" if selected and store.is_shipped(selected) else ""
        )
        return (
            gr.update(choices=choices, value=selected if selected in choices else None),
            selected or "", *(getattr(c, f) for f in EDITABLE), ", ".join(c.tags),
            _show_picture(pic),
            note or (f"Editing **{selected}**{shipped}." if selected else "A new character."),
        )  # fmt: skip

    outputs = [pick, *fields, picture, status]

    def on_save(selected, new_key, *values):
        *texts, tag_text = values
        try:
            saved = save_edit(
                store,
                selected or None,
                (new_key or "").strip(),
                {**dict(zip(EDITABLE, texts, strict=True)), "tags": tag_text},
            )
        except (CharacterError, UnsafeName) as exc:
            return (gr.skip(),) * (len(outputs) - 1) + (f"⚠️ {exc}",)
        if selected and saved != selected:
            move_conversations(app.history, selected, saved)
        return fill(saved, f"Saved **{saved}**.")

    def on_duplicate(selected):
        if not selected:
            return fill(None, "⚠️ Pick a character to duplicate.")
        try:
            copy = store.unique_key(f"{selected} copy")
            store.duplicate(selected, copy)
        except (CharacterError, UnsafeName) as exc:
            return fill(selected, f"⚠️ {exc}")
        return fill(copy, f"Duplicated **{selected}** as **{copy}**.")

    def on_delete(selected):
        try:
            store.delete(selected or "")
        except (CharacterError, UnsafeName) as exc:
            return fill(selected, f"⚠️ {exc}")
        rest = store.keys()
        return fill(
            rest[0] if rest else None, f"Deleted **{selected}** (moved to characters/.trash; its chats are kept)."
        )

    def on_picture(selected, path):
        if not path:
            return gr.skip(), gr.skip()
        try:
            if not selected:
                raise CharacterError("save the character first, then add its picture")
            saved = store.set_picture(selected, Path(path).read_bytes())
        except (CharacterError, UnsafeName, OSError) as exc:
            return gr.skip(), f"⚠️ {exc}"
        return _show_picture(saved), "Picture saved (resized; thumbnail made)."

    def on_import(path):
        if not path:
            return (gr.skip(),) * len(outputs)
        try:
            imported = import_character(store, Path(path))
        except (CharacterError, UnsafeName) as exc:
            return (gr.skip(),) * (len(outputs) - 1) + (f"⚠️ {exc}",)
        return fill(imported, f"Imported **{imported}**.")

    def on_export(selected):
        if not selected:
            return None, "⚠️ Pick a character to export."
        try:
            out = export_character(
                store, selected, Path(tempfile.mkdtemp(prefix="inglenook-card-")) / f"{selected}.png"
            )
        except (CharacterError, UnsafeName, OSError) as exc:
            return None, f"⚠️ {exc}"
        return str(out), f"Exported **{selected}** as a V2 PNG card."

    pick.input(fill, pick, outputs, api_name=False)
    new.click(lambda: fill(None), None, outputs, api_name=False)
    save.click(on_save, [pick, *fields], outputs, api_name=False)
    duplicate.click(on_duplicate, pick, outputs, api_name=False)
    delete.click(on_delete, pick, outputs, api_name=False)
    # once read, the upload boxes empty again (the next import must not show the previous file)
    upload.upload(on_picture, [pick, upload], [picture, status], api_name=False).then(
        lambda: None, None, upload, api_name=False, queue=False
    )
    card.upload(on_import, card, outputs, api_name=False).then(lambda: None, None, card, api_name=False, queue=False)
    export.click(on_export, pick, [exported, status], api_name=False)
    return fill, [pick], outputs


def _show_picture(path: Path | None) -> Image.Image | None:
    """The picture as an image object: Gradio then serves its own copy, wherever the characters folder is."""
    if path is None:
        return None
    try:
        return open_picture(path.read_bytes(), path.name)
    except (CharacterError, OSError):
        return None
