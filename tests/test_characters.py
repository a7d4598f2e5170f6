"""Characters on disk: text-generation-webui's YAML plus SillyTavern's fields, placeholders, pictures, names."""

from __future__ import annotations

import io
import zlib
from pathlib import Path

import pytest
import yaml
from PIL import Image

from webui.characters.store import (
    MAX_PIXELS,
    PICTURE_SIZE,
    SHIPPED_DIR,
    Character,
    CharacterError,
    CharacterStore,
    fill_placeholders,
    load_file,
)
from webui.paths import UnsafeName

COMPAT = Path(__file__).resolve().parent.parent.parent / "shared" / "compat" / "text-generation-webui" / "characters"
COMPAT = COMPAT if COMPAT.is_dir() else Path("/work/shared/compat/text-generation-webui/characters")


@pytest.fixture
def store(tmp_path: Path) -> CharacterStore:
    return CharacterStore(tmp_path / "characters")


def png_bytes(size=(64, 48), color=(200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, "PNG")
    return out.getvalue()


def files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


# ---------------------------------------------------------------- placeholders


def test_placeholders_in_every_spelling_become_the_names():
    text = "{{char}} greets {{user}}. {{Char}} and {{USER}} again; <BOT> waves at <USER>."
    assert fill_placeholders(text, "Wren", "Ann") == "Wren greets Ann. Wren and Ann again; Wren waves at Ann."


def test_the_greeting_and_persona_fill_placeholders_with_the_characters_user_name():
    c = Character(name="Wren", greeting="Evening, {{user}}.", context="{{char}} keeps an inn.", user_name="Ann")
    assert c.first_message() == "Evening, Ann."
    assert c.persona() == "Wren keeps an inn."
    assert Character(name="Wren", greeting="Hi {{user}}").first_message() == "Hi You"  # the default user name


def test_the_persona_joins_the_card_fields_and_drops_start_markers():
    c = Character(
        name="Wren", description="An innkeeper.", personality="dry", scenario="A rainy night.",
        example_dialogue="<START>\n{{user}}: Hi\n{{char}}: Evening.\n<START>\n{{user}}: Tea?",
    )  # fmt: skip
    assert c.persona() == (
        "An innkeeper.\n\nWren's personality: dry\n\nScenario: A rainy night.\n\nYou: Hi\nWren: Evening.\nYou: Tea?"
    )


# ---------------------------------------------------------------- files


def test_shipped_characters_load_and_wren_has_a_picture(store):
    keys = [e.key for e in store.list()]
    assert {"Assistant", "Wren"} <= set(keys)
    wren = store.load("Wren")
    assert wren.name == "Wren" and wren.greeting and wren.user == "Traveller"
    assert "Traveller" in wren.first_message() and "{{" not in wren.persona()
    assert store.picture("Wren") == SHIPPED_DIR / "Wren.png"
    assert store.is_shipped("Wren")


@pytest.mark.skipif(not COMPAT.is_dir(), reason="text-generation-webui compat characters are not available")
@pytest.mark.parametrize("name", ["Assistant.yaml", "Example.yaml"])
def test_text_generation_webui_characters_load_as_they_are(name):
    c = load_file(COMPAT / name)
    raw = yaml.safe_load((COMPAT / name).read_text())
    assert (c.name, c.greeting, c.context) == (raw["name"], raw.get("greeting", ""), raw["context"])
    assert "{{" not in c.persona() and c.persona().strip()


def test_old_pygmalion_json_keys_are_read(tmp_path):
    path = tmp_path / "old.json"
    path.write_text(
        '{"char_name": "Bo", "char_persona": "A sailor.", "char_greeting": "Ahoy!", "world_scenario": "A ship.",'
        ' "example_dialogue": "{{user}}: Hi\\n{{char}}: Ahoy."}'
    )
    c = load_file(path)
    assert (c.name, c.context, c.greeting, c.scenario) == ("Bo", "A sailor.", "Ahoy!", "A ship.")
    assert c.example_dialogue.startswith("{{user}}")


def test_save_writes_yaml_text_generation_webui_can_read_and_only_non_empty_fields(store):
    c = Character(name="Ann", greeting="Hi", context="A test.", tags=["x"], character_book={"entries": []})
    path = store.save("Ann", c)
    data = yaml.safe_load(path.read_text())
    assert list(data)[:3] == ["name", "greeting", "context"]
    assert "scenario" not in data and data["tags"] == ["x"] and data["character_book"] == {"entries": []}
    assert store.load("Ann") == c
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]  # written atomically, no leftovers


def test_duplicate_rename_delete(store):
    store.save("Ann", Character(name="Ann", greeting="Hi"))
    store.set_picture("Ann", png_bytes())
    store.duplicate("Ann", "Ann copy")
    assert store.load("Ann copy") == store.load("Ann") and store.picture("Ann copy").is_file()
    with pytest.raises(CharacterError, match="already exists"):
        store.duplicate("Ann", "Ann copy")
    store.rename("Ann copy", "Bea")
    assert not store.exists("Ann copy") and store.load("Bea").name == "Ann" and store.picture("Bea").is_file()
    trash = store.delete("Bea")
    assert not store.exists("Bea") and sorted(p.name for p in trash.iterdir()) == ["Bea.png", "Bea.yaml"]


def test_shipped_characters_cannot_be_deleted_or_renamed_but_an_edit_makes_a_users_copy(store):
    with pytest.raises(CharacterError, match="ships with Inglenook"):
        store.delete("Wren")
    with pytest.raises(CharacterError, match="ships with Inglenook"):
        store.rename("Wren", "Robin")
    edited = store.load("Wren")
    edited.greeting = "Hello."
    store.save("Wren", edited)
    assert store.load("Wren").greeting == "Hello." and not store.is_shipped("Wren")
    assert "Hello." not in (SHIPPED_DIR / "Wren.yaml").read_text()


def test_a_picture_is_resized_and_gets_a_thumbnail(store):
    store.save("Ann", Character(name="Ann"))
    store.set_picture("Ann", png_bytes((3000, 1500)))
    with Image.open(store.picture("Ann")) as im:
        assert im.size == (PICTURE_SIZE, PICTURE_SIZE // 2)
    with Image.open(store.thumbnail("Ann")) as im:
        assert max(im.size) <= 160


# ---------------------------------------------------------------- bad input


def bomb_png(width: int, height: int) -> bytes:
    """A real 1-bit PNG of width×height white pixels: a few hundred KB that would decode to gigabytes."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([1, 0, 0, 0, 0])
    row = b"\0" + b"\0" * ((width + 7) // 8)
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row * 1000) for _ in range(height // 1000)) + z.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_a_decompression_bomb_picture_is_refused_before_decoding_and_nothing_is_written(store):
    store.save("Ann", Character(name="Ann"))
    before = files(store.folder)
    bomb = bomb_png(20_000, 20_000)
    assert 20_000 * 20_000 > MAX_PIXELS and len(bomb) < 2**20
    with pytest.raises(CharacterError, match="decompression bomb"):
        store.set_picture("Ann", bomb)
    assert files(store.folder) == before


def test_a_file_that_is_not_a_picture_is_refused(store):
    store.save("Ann", Character(name="Ann"))
    with pytest.raises(CharacterError, match="not a readable picture"):
        store.set_picture("Ann", b"GIF89a not really")
    with pytest.raises(CharacterError, match="not a readable picture"):
        store.set_picture("Ann", png_bytes()[:60])  # truncated


@pytest.mark.parametrize(
    "name", ["../evil", "/etc/passwd", "a/b", "a\\b", "x\x00y", ".hidden", "CON", "trailing.", "", "x" * 190]
)
def test_dangerous_character_names_are_rejected_by_the_one_validator(store, name):
    with pytest.raises(UnsafeName):
        store.save(name, Character(name="Ann"))
    with pytest.raises(UnsafeName):
        store.load(name)
    assert files(store.folder) == []


def test_a_character_with_no_name_or_ten_megabytes_of_text_is_refused(store):
    with pytest.raises(CharacterError, match="no name"):
        store.save("Ann", Character(name=" "))
    with pytest.raises(CharacterError, match="more than"):
        store.save("Ann", Character(name="Ann", context="x" * 10_000_000))
    assert files(store.folder) == []


def test_wrong_types_in_a_character_file_name_the_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: Ann\ngreeting: [1, 2]\n")
    with pytest.raises(CharacterError, match="'greeting' should be text"):
        load_file(path)
    path.write_text("just a string")
    with pytest.raises(CharacterError, match="expected a mapping"):
        load_file(path)


def test_an_edit_from_the_characters_tab_keeps_the_fields_it_does_not_show_and_can_rename(store):
    from webui.characters.store import save_edit

    store.save("Ann", Character(name="Ann", character_book={"entries": [1]}, extensions={"x": 1}, tags=["a"]))
    key = save_edit(store, "Ann", "Anna", {"name": "Anna", "greeting": "Hi {{user}}", "tags": "b, c"})
    assert key == "Anna" and not store.exists("Ann")
    c = store.load("Anna")
    assert (c.name, c.greeting, c.tags) == ("Anna", "Hi {{user}}", ["b", "c"])
    assert c.character_book == {"entries": [1]} and c.extensions == {"x": 1}
    with pytest.raises(CharacterError, match="already exists"):
        save_edit(store, None, "Anna", {"name": "Other"})  # a new character may not overwrite one
    with pytest.raises(UnsafeName):
        save_edit(store, "Anna", "../Anna", {"name": "Anna"})
    with pytest.raises(CharacterError, match="cannot be renamed"):
        save_edit(store, "Wren", "Robin", {"name": "Robin"})
    assert store.load("Anna") == c and store.is_shipped("Wren")
