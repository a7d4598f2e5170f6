"""SillyTavern / TavernAI cards: PNG and JSON, V1 / V2 / V3 in, V2 PNG out, round trips, and bad cards."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from webui.characters.cards import CardError, card_png, export_character, import_character, read_any
from webui.characters.store import Character, CharacterStore

BOOK = {"name": "Fen lore", "entries": [{"keys": ["bittern"], "content": "A heron that booms.", "enabled": True}]}
V2_DATA = {
    "name": "Wren",
    "description": "{{char}} keeps an inn.",
    "personality": "dry",
    "scenario": "A rainy night.",
    "first_mes": "Evening, {{user}}.",
    "mes_example": "<START>\n{{user}}: Hi\n{{char}}: Evening.",
    "creator_notes": "Made for a test.",
    "system_prompt": "Write as {{char}}.",
    "post_history_instructions": "Stay in character.",
    "alternate_greetings": ["Back again?", "Shut the door, {{user}}."],
    "tags": ["cozy", "test"],
    "creator": "us",
    "character_version": "1.2",
    "character_book": BOOK,
    "extensions": {"talkativeness": "0.5", "depth_prompt": {"prompt": "x", "depth": 4}, "someone_elses": [1, 2]},
}


@pytest.fixture
def store(tmp_path: Path) -> CharacterStore:
    return CharacterStore(tmp_path / "characters", shipped=None)


def card_file(tmp_path: Path, card: dict | None, chunk: str = "chara", raw: bytes | None = None, name="card.png"):
    """A real PNG made with Pillow holding ``card`` base64-encoded in a tEXt chunk (or ``raw`` as the text)."""
    info = PngInfo()
    if card is not None or raw is not None:
        payload = raw if raw is not None else base64.b64encode(json.dumps(card).encode())
        info.add_text(chunk, payload.decode("latin-1"))
    out = io.BytesIO()
    Image.new("RGB", (120, 180), (40, 90, 160)).save(out, "PNG", pnginfo=info)
    path = tmp_path / name
    path.write_bytes(out.getvalue())
    return path


def listing(store: CharacterStore) -> list[str]:
    return sorted(p.name for p in store.folder.rglob("*")) if store.folder.exists() else []


def test_a_v2_png_card_maps_every_field_and_keeps_the_lorebook_and_unknown_extensions(tmp_path, store):
    path = card_file(tmp_path, {"spec": "chara_card_v2", "spec_version": "2.0", "data": V2_DATA})
    key = import_character(store, path)
    c = store.load(key)
    assert key == "Wren"
    assert (c.name, c.description, c.personality, c.scenario) == (
        "Wren",
        "{{char}} keeps an inn.",
        "dry",
        "A rainy night.",
    )
    assert (c.greeting, c.example_dialogue) == ("Evening, {{user}}.", "<START>\n{{user}}: Hi\n{{char}}: Evening.")
    assert c.alternate_greetings == ["Back again?", "Shut the door, {{user}}."] and c.tags == ["cozy", "test"]
    assert (c.system_prompt, c.post_history_instructions, c.creator_notes) == (
        "Write as {{char}}.", "Stay in character.", "Made for a test.",
    )  # fmt: skip
    assert c.character_book == BOOK and c.extensions == V2_DATA["extensions"]
    assert store.picture(key).is_file()  # the card's image is the character's picture
    assert c.first_message() == "Evening, You."


def test_a_v1_png_card_imports(tmp_path, store):
    v1 = {k: V2_DATA[k] for k in ("name", "description", "personality", "scenario", "first_mes", "mes_example")}
    c = store.load(import_character(store, card_file(tmp_path, {**v1, "creatorcomment": "old notes"})))
    assert (c.name, c.greeting, c.scenario, c.creator_notes) == (
        "Wren",
        "Evening, {{user}}.",
        "A rainy night.",
        "old notes",
    )


def test_a_v3_card_is_read_from_ccv3_in_preference_to_chara_and_keeps_v3_fields(tmp_path, store):
    v3 = {"spec": "chara_card_v3", "spec_version": "3.0",
          "data": {**V2_DATA, "name": "Wren v3", "nickname": "Wrennie", "group_only_greetings": ["All of you!"],
                   "assets": [{"type": "icon", "uri": "ccdefault:", "name": "main", "ext": "png"}]}}  # fmt: skip
    path = card_file(tmp_path, v3, chunk="ccv3")
    # a PNG with both chunks: add an older 'chara' V2 too
    im = Image.open(path)
    info = PngInfo()
    info.add_text("chara", base64.b64encode(json.dumps({"spec": "chara_card_v2", "data": V2_DATA}).encode()).decode())
    info.add_text("ccv3", im.text["ccv3"])
    im.save(path, pnginfo=info)
    c = store.load(import_character(store, path))
    assert c.name == "Wren v3"
    assert c.extra["nickname"] == "Wrennie" and c.extra["group_only_greetings"] == ["All of you!"]
    assert c.extra["assets"][0]["type"] == "icon"


def test_plain_json_cards_import(tmp_path, store):
    path = tmp_path / "wren.json"
    path.write_text(json.dumps({"spec": "chara_card_v2", "spec_version": "2.0", "data": V2_DATA}))
    assert store.load(import_character(store, path)).character_book == BOOK


@pytest.mark.parametrize("version", ["v1", "v2", "v3"])
def test_an_exported_v2_png_card_imports_back_identically(tmp_path, store, version):
    data = {**V2_DATA, "nickname": "W"} if version == "v3" else V2_DATA
    card = {"v1": {k: v for k, v in V2_DATA.items() if k in ("name", "description", "first_mes", "mes_example")},
            "v2": {"spec": "chara_card_v2", "spec_version": "2.0", "data": data},
            "v3": {"spec": "chara_card_v3", "spec_version": "3.0", "data": data}}[version]  # fmt: skip
    key = import_character(store, card_file(tmp_path, card))
    original = store.load(key)
    out = export_character(store, key, tmp_path / "out.png")
    with Image.open(out) as im:
        exported = json.loads(base64.b64decode(im.text["chara"]))
    assert exported["spec"] == "chara_card_v2" and exported["data"]["name"] == "Wren"
    assert exported["data"]["extensions"].get("depth_prompt", None) == original.extensions.get("depth_prompt")
    again = store.load(import_character(store, out))
    assert again == original


def test_our_own_fields_survive_a_card_round_trip_and_sillytavern_still_sees_a_description(tmp_path, store):
    c = Character(name="Ann", greeting="Hi {{user}}", context="{{char}} is a TGW-style persona.", user_name="Bo")
    store.save("Ann", c)
    out = export_character(store, "Ann", tmp_path / "ann.png")
    with Image.open(out) as im:
        card = json.loads(base64.b64decode(im.text["chara"]))
    assert card["data"]["description"] == c.context  # what SillyTavern shows
    assert card["description"] == c.context and card["first_mes"] == "Hi {{user}}"  # V1 readers too
    assert store.load(import_character(store, out)) == c


def test_an_exported_card_keeps_the_characters_picture(tmp_path, store):
    store.save("Ann", Character(name="Ann"))
    pic = io.BytesIO()
    Image.new("RGB", (50, 70), (1, 2, 3)).save(pic, "PNG")
    store.set_picture("Ann", pic.getvalue())
    with Image.open(export_character(store, "Ann", tmp_path / "ann.png")) as im:
        assert im.size == (50, 70) and im.convert("RGB").getpixel((5, 5)) == (1, 2, 3)
    assert card_png(Character(name="Zed"), None).startswith(b"\x89PNG")  # no picture: a placeholder


# ---------------------------------------------------------------- bad cards: clear errors, nothing written


def test_a_png_without_a_card_is_refused(tmp_path, store):
    with pytest.raises(CardError, match="holds no character card"):
        import_character(store, card_file(tmp_path, None))
    assert listing(store) == []


def test_a_truncated_png_is_refused(tmp_path, store):
    path = card_file(tmp_path, {"spec": "chara_card_v2", "data": V2_DATA})
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(CardError, match="truncated"):
        import_character(store, path)
    assert listing(store) == []


def test_base64_that_is_not_json_is_refused(tmp_path, store):
    with pytest.raises(CardError, match="not JSON"):
        import_character(store, card_file(tmp_path, None, raw=base64.b64encode(b"this is not json at all")))
    assert listing(store) == []


def test_a_card_with_ten_megabytes_of_text_is_refused(tmp_path, store):
    huge = {"spec": "chara_card_v2", "data": {**V2_DATA, "description": "lorem ipsum " * 900_000}}
    path = card_file(tmp_path, huge)
    assert path.stat().st_size > 10_000_000
    with pytest.raises(CardError, match="MB of text"):
        import_character(store, path)
    assert listing(store) == []


def test_not_a_png_and_unknown_file_types_are_refused(tmp_path, store):
    (tmp_path / "fake.png").write_bytes(b"GIF89a....")
    with pytest.raises(CardError, match="not a PNG"):
        read_any(tmp_path / "fake.png")
    (tmp_path / "card.txt").write_text("hello")
    with pytest.raises(CardError, match="expected a .png card"):
        read_any(tmp_path / "card.txt")
    with pytest.raises(CardError, match="cannot be read"):
        read_any(tmp_path / "missing.png")


def test_a_card_whose_name_is_a_path_is_stored_under_a_safe_file_name(tmp_path, store):
    card = {"spec": "chara_card_v2", "data": {**V2_DATA, "name": "../../etc/passwd"}}
    key = import_character(store, card_file(tmp_path, card))
    assert "/" not in key and store.file(key).parent == store.folder
    assert store.load(key).name == "../../etc/passwd"  # the display name is kept; only the file name is made safe
