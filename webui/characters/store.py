"""Characters: ``characters/NAME.yaml`` (+ ``NAME.png``/``.jpg``), compatible with text-generation-webui and
SillyTavern.

A character file is text-generation-webui's format (``name``, ``greeting``, ``context``) plus the fields of a
SillyTavern card (description, personality, scenario, example dialogue, alternate greetings, system prompt,
lorebook, …) under their card names where ours has none. Only non-empty fields are written, so a file stays
as small as what the user typed. Reading and writing cards (PNG/JSON) lives in :mod:`webui.characters.cards`.

Two folders are read: the user's (``<user_data>/characters``, where everything is written) and the shipped
one (``characters/`` in the repository; read-only, a user's file of the same name takes precedence). Every
name goes through :func:`webui.paths.safe_name`; every write is atomic.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import time
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml
from PIL import Image

from webui.files import write_atomic
from webui.paths import UnsafeName, inside, safe_name

SHIPPED_DIR = Path(__file__).resolve().parents[2] / "characters"
PICTURE_EXTS = (".png", ".jpg", ".jpeg", ".webp")
MAX_NAME = 180  # the history folder adds a prefix; the whole must stay under paths.MAX_NAME
MAX_TEXT = 4_000_000  # characters of text in one character (a big lorebook is ~1 MB; 10 MB is not a card)
MAX_PICTURE_BYTES = 20 * 2**20
MAX_PIXELS = 40_000_000  # checked from the header before any pixel is decoded (decompression bombs)
PICTURE_SIZE = 1024  # longest side of a stored picture
THUMB_SIZE = 160
DEFAULT_USER = "You"


class CharacterError(ValueError):
    """A character, file or picture we refuse; the message says what is wrong, on one line."""


@dataclass
class Character:
    """One character. Our names for the core fields (text-generation-webui's), card names for the rest."""

    name: str = ""
    greeting: str = ""  # card: first_mes
    context: str = ""  # text-generation-webui's persona text
    scenario: str = ""
    example_dialogue: str = ""  # card: mes_example
    user_name: str = ""  # the user's name in this character's chats ("" = You)
    description: str = ""
    personality: str = ""
    alternate_greetings: list[str] = field(default_factory=list)
    system_prompt: str = ""
    post_history_instructions: str = ""
    creator_notes: str = ""
    tags: list[str] = field(default_factory=list)
    creator: str = ""
    character_version: str = ""
    character_book: dict | None = None
    extensions: dict = field(default_factory=dict)  # card extensions, unknown keys kept as they are
    extra: dict = field(default_factory=dict)  # other card fields we do not use (V3 assets, nickname, …)

    @property
    def user(self) -> str:
        return self.user_name.strip() or DEFAULT_USER

    def fill(self, text: str, user: str | None = None) -> str:
        """``text`` with ``{{char}}``/``{{user}}`` (any case) and ``<BOT>``/``<USER>`` replaced."""
        return fill_placeholders(text, self.name, user or self.user)

    def first_message(self, user: str | None = None) -> str:
        """The greeting a new chat starts with, placeholders filled."""
        return self.fill(self.greeting, user).strip()

    def greetings(self, user: str | None = None) -> list[str]:
        """The greeting, then the card's alternate greetings: versions of the first message to page through,
        as SillyTavern offers them as swipes."""
        texts = [self.first_message(user), *(self.fill(g, user).strip() for g in self.alternate_greetings)]
        return [t for t in texts if t]

    def after_history(self, user: str | None = None) -> str:
        """A card's ``post_history_instructions``, placeholders filled; ``{{original}}`` (SillyTavern's own
        default instruction) has no counterpart here and is dropped."""
        text = re.sub(r"\{\{original\}\}", "", self.post_history_instructions, flags=re.IGNORECASE)
        return self.fill(text, user).strip()

    def persona(self, user: str | None = None) -> str:
        """The character's part of the prompt: context, description, personality, scenario, example dialogue."""
        parts = [self.system_prompt, self.context]
        if self.description.strip() and self.description.strip() != self.context.strip():
            parts.append(self.description)
        if self.personality.strip():
            parts.append(f"{self.name}'s personality: {self.personality.strip()}")
        if self.scenario.strip():
            parts.append(f"Scenario: {self.scenario.strip()}")
        if self.example_dialogue.strip():
            parts.append(_example_lines(self.example_dialogue))
        return self.fill("\n\n".join(p.strip() for p in parts if p and p.strip()), user)

    def to_dict(self) -> dict[str, Any]:
        """The YAML file's content: text-generation-webui's keys first, then only the non-empty others."""
        out: dict[str, Any] = {"name": self.name, "greeting": self.greeting, "context": self.context}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name not in out and value not in ("", None, [], {}):
                out[f.name] = value
        return out


def fill_placeholders(text: str, char: str, user: str) -> str:
    text = re.sub(r"\{\{char\}\}|<BOT>", lambda _: char, text, flags=re.IGNORECASE)
    return re.sub(r"\{\{user\}\}|<USER>", lambda _: user, text, flags=re.IGNORECASE)


def _example_lines(example: str) -> str:
    """SillyTavern separates example chats with ``<START>`` lines; in a prompt they are blank lines."""
    lines = [line for line in example.strip().splitlines() if line.strip().upper() != "<START>"]
    return "\n".join(lines).strip()


# --------------------------------------------------------------------------- from data


_STRINGS = [f.name for f in fields(Character) if f.type == "str"]


def from_dict(data: Any, where: str = "character") -> Character:
    """A character from a text-generation-webui character mapping (ours is a superset).

    Also reads the old Pygmalion/text-generation-webui JSON keys (``char_name``, ``char_persona``,
    ``char_greeting``, ``world_scenario``, ``example_dialogue``).
    """
    if not isinstance(data, dict):
        raise CharacterError(f"{where}: expected a mapping of fields, found {type(data).__name__}")
    data = dict(data)
    for old, new in (("char_name", "name"), ("char_persona", "context"), ("char_greeting", "greeting"),
                     ("world_scenario", "scenario")):  # fmt: skip
        if old in data and not data.get(new):
            data[new] = data.pop(old)
    c = Character()
    for key in _STRINGS:
        value = data.get(key)
        if value is None:
            continue
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise CharacterError(f"{where}: field {key!r} should be text, found {type(value).__name__}")
        setattr(c, key, str(value))
    for key in ("alternate_greetings", "tags"):
        value = data.get(key) or []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise CharacterError(f"{where}: field {key!r} should be a list of text")
        setattr(c, key, list(value))
    for key in ("extensions", "extra"):
        value = data.get(key) or {}
        if not isinstance(value, dict):
            raise CharacterError(f"{where}: field {key!r} should be a mapping")
        setattr(c, key, value)
    book = data.get("character_book")
    if book is not None and not isinstance(book, dict):
        raise CharacterError(f"{where}: field 'character_book' should be a mapping")
    c.character_book = book
    check(c, where)
    return c


def check(character: Character, where: str = "character") -> None:
    """Refuse a character without a name or with an absurd amount of text (nothing is written)."""
    if not character.name.strip():
        raise CharacterError(f"{where}: the character has no name")
    size = sum(len(getattr(character, k)) for k in _STRINGS) + sum(map(len, character.alternate_greetings))
    for blob in (character.character_book, character.extensions, character.extra):
        size += len(json.dumps(blob, ensure_ascii=False, default=str)) if blob else 0
    if size > MAX_TEXT:
        raise CharacterError(f"{where}: {size:,} characters of text is more than the {MAX_TEXT:,} a character may hold")


def file_name_for(name: str) -> str:
    """A safe file stem made from a display name (a card's name may hold any character)."""
    stem = re.sub(r'[\x00-\x1f<>:"/\\|?*]', "_", name).strip().strip(".").strip()[:MAX_NAME].strip()
    try:
        return valid_name(stem or "Character")
    except UnsafeName:
        return "Character " + stem.replace(".", "_")[: MAX_NAME - 10]


def valid_name(name: str) -> str:
    """A character's file name, through the one validator (plus our shorter length limit)."""
    safe_name(name, "character name")
    if len(name) > MAX_NAME:
        raise UnsafeName(f"character name is longer than {MAX_NAME} characters")
    return name


# --------------------------------------------------------------------------- pictures


def open_picture(data: bytes, where: str = "picture") -> Image.Image:
    """Decode a picture safely: size and pixel count are checked from the header before decoding."""
    if len(data) > MAX_PICTURE_BYTES:
        raise CharacterError(f"{where}: {len(data) / 2**20:.0f} MB is more than {MAX_PICTURE_BYTES // 2**20} MB")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.width * image.height > MAX_PIXELS:
                raise CharacterError(
                    f"{where}: {image.width}×{image.height} pixels is more than {MAX_PIXELS:,} "
                    "(refused before decoding: a 'decompression bomb')"
                )
            image.load()
    except CharacterError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise CharacterError(f"{where}: refused, too many pixels ({exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:  # Pillow's errors for unreadable/truncated files
        raise CharacterError(f"{where}: not a readable picture ({exc})") from None
    return image


def picture_png(image: Image.Image, size: int) -> bytes:
    """``image`` fitted into ``size``×``size`` and encoded as PNG."""
    image = image.convert("RGBA") if image.mode in ("RGBA", "LA", "P", "PA") else image.convert("RGB")
    image.thumbnail((size, size))
    out = io.BytesIO()
    image.save(out, "PNG", optimize=True)
    return out.getvalue()


# --------------------------------------------------------------------------- the store


@dataclass
class Entry:
    """A character as listed: its file name (the key), display name, whether it ships with Inglenook."""

    key: str
    name: str
    shipped: bool
    picture: Path | None


class CharacterStore:
    """The characters in the user's folder and the shipped folder; holds no state but its folders."""

    def __init__(self, folder: Path, shipped: Path | None = SHIPPED_DIR) -> None:
        self.folder = Path(folder)
        self.shipped = Path(shipped) if shipped else None
        self.thumbs = self.folder / "thumbnails"
        self.trash = self.folder / ".trash"

    # -- finding

    def _folders(self) -> list[Path]:
        return [self.folder] + ([self.shipped] if self.shipped and self.shipped != self.folder else [])

    def file(self, key: str) -> Path | None:
        """The YAML/JSON file of ``key``: the user's first, then the shipped one."""
        valid_name(key)
        for folder in self._folders():
            for ext in (".yaml", ".yml", ".json"):
                path = inside(folder, key + ext, "character name")
                if path.is_file():
                    return path
        return None

    def exists(self, key: str) -> bool:
        return self.file(key) is not None

    def is_shipped(self, key: str) -> bool:
        path = self.file(key)
        return path is not None and path.parent != self.folder

    def picture(self, key: str) -> Path | None:
        """The picture next to the character's file, if there is one."""
        path = self.file(key)
        if path is None:
            return None
        for ext in PICTURE_EXTS:
            candidate = inside(path.parent, key + ext, "character name")
            if candidate.is_file():
                return candidate
        return None

    def thumbnail(self, key: str) -> Path | None:
        """A small copy of the picture (made on demand, kept in ``thumbnails/``)."""
        picture = self.picture(key)
        if picture is None:
            return None
        thumb = inside(self.thumbs, key + ".png", "character name")
        if not thumb.is_file() or thumb.stat().st_mtime < picture.stat().st_mtime:
            try:
                data = picture_png(open_picture(picture.read_bytes(), picture.name), THUMB_SIZE)
            except CharacterError:
                return None
            thumb.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(thumb, data)
        return thumb

    def keys(self) -> list[str]:
        found: set[str] = set()
        for folder in self._folders():
            if not folder.is_dir():
                continue
            for path in folder.iterdir():
                if path.suffix in (".yaml", ".yml", ".json") and path.is_file():
                    try:
                        found.add(valid_name(path.stem))
                    except UnsafeName:
                        continue
        return sorted(found, key=str.lower)

    def list(self) -> list[Entry]:
        """Every character that can be read, sorted by file name (unreadable files are skipped)."""
        entries = []
        for key in self.keys():
            try:
                c = self.load(key)
            except CharacterError:
                continue
            entries.append(Entry(key, c.name, self.is_shipped(key), self.picture(key)))
        return entries

    # -- reading and writing

    def load(self, key: str) -> Character:
        path = self.file(key)
        if path is None:
            raise CharacterError(f"no character {key!r}")
        return load_file(path)

    def save(self, key: str, character: Character, overwrite: bool = True) -> Path:
        """Write ``characters/KEY.yaml`` atomically (always into the user's folder)."""
        valid_name(key)
        check(character, key)
        path = inside(self.folder, key + ".yaml", "character name")
        if not overwrite and self.exists(key):
            raise CharacterError(f"a character named {key!r} already exists")
        self.folder.mkdir(parents=True, exist_ok=True)
        text = yaml.safe_dump(character.to_dict(), allow_unicode=True, sort_keys=False, width=120)
        write_atomic(path, text.encode("utf-8"))
        for ext in (".yml", ".json"):  # the YAML file is now the character; an older twin would confuse
            twin = path.with_suffix(ext)
            if twin.is_file():
                twin.unlink()
        return path

    def set_picture(self, key: str, data: bytes) -> Path:
        """Store a picture for ``key``: checked, resized to at most PICTURE_SIZE, saved as PNG; thumbnail made."""
        if self.file(key) is None:
            raise CharacterError(f"no character {key!r}")
        if self.is_shipped(key):
            self.save(key, self.load(key))  # the user's copy gets the picture; the shipped one stays
        png = picture_png(open_picture(data), PICTURE_SIZE)
        path = inside(self.folder, key + ".png", "character name")
        write_atomic(path, png)
        for ext in PICTURE_EXTS[1:]:
            other = inside(self.folder, key + ext, "character name")
            if other.is_file():
                other.unlink()
        self.thumbnail(key)
        return path

    def duplicate(self, key: str, new_key: str) -> Character:
        """A copy under ``new_key`` (picture included); refuses to overwrite."""
        valid_name(new_key)
        if self.exists(new_key):
            raise CharacterError(f"a character named {new_key!r} already exists")
        character = self.load(key)
        picture = self.picture(key)
        self.save(new_key, character, overwrite=False)
        if picture is not None:
            write_atomic(inside(self.folder, new_key + picture.suffix.lower(), "character name"), picture.read_bytes())
        return character

    def rename(self, key: str, new_key: str) -> None:
        """Rename the user's character files (the shipped ones cannot be renamed: duplicate them)."""
        valid_name(new_key)
        if self.file(key) is None:
            raise CharacterError(f"no character {key!r}")
        if self.is_shipped(key):
            raise CharacterError(f"{key!r} ships with Inglenook and cannot be renamed; duplicate it instead")
        if new_key != key and self.exists(new_key) and new_key.lower() != key.lower():
            raise CharacterError(f"a character named {new_key!r} already exists")
        for path in self._own_files(key):
            path.rename(inside(self.folder, new_key + path.suffix, "character name"))
        thumb = inside(self.thumbs, key + ".png", "character name")
        if thumb.is_file():
            thumb.unlink()

    def delete(self, key: str) -> Path:
        """Move the user's character (and picture) to ``.trash/``; shipped characters cannot be deleted."""
        if self.file(key) is None:
            raise CharacterError(f"no character {key!r}")
        if self.is_shipped(key):
            raise CharacterError(f"{key!r} ships with Inglenook and cannot be deleted")
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target = self.trash / f"{key}-{stamp}"
        target.mkdir(parents=True, exist_ok=True)
        for path in self._own_files(key):
            shutil.move(str(path), str(target / path.name))
        thumb = inside(self.thumbs, key + ".png", "character name")
        if thumb.is_file():
            thumb.unlink()
        return target

    def _own_files(self, key: str) -> list[Path]:
        valid_name(key)
        return [p for ext in (".yaml", ".yml", ".json", *PICTURE_EXTS) if (p := self.folder / (key + ext)).is_file()]

    def unique_key(self, name: str) -> str:
        """A free file name for a character called ``name`` (``Name``, ``Name (2)``, …)."""
        base = file_name_for(name)
        key, n = base, 2
        while self.exists(key):
            key, n = f"{base[: MAX_NAME - 6]} ({n})", n + 1
        return key


def load_file(path: Path) -> Character:
    """A character from a text-generation-webui (or our) YAML/JSON file."""
    try:
        if path.stat().st_size > MAX_TEXT * 2:
            raise CharacterError(f"{path.name}: the file is too big to be a character")
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, json.JSONDecodeError) as exc:
        raise CharacterError(f"{path.name}: cannot be read ({str(exc).splitlines()[0]})") from None
    return from_dict(data, path.name)


EDITABLE = ("name", "user_name", "greeting", "context", "scenario", "example_dialogue", "description",
            "personality", "system_prompt", "post_history_instructions", "creator_notes")  # fmt: skip


def save_edit(store: CharacterStore, selected: str | None, key: str, values: dict[str, Any]) -> str:
    """Save what the Characters tab edits: ``values`` over the selected character (the fields it does not
    show, such as a lorebook, stay as they were); a changed file name renames the character first.
    Returns the key it was saved under. Everything is checked before anything is written."""
    valid_name(key)
    base = store.load(selected) if selected and store.exists(selected) else Character()
    unknown = set(values) - set(EDITABLE) - {"tags"}
    if unknown:
        raise CharacterError(f"cannot edit {', '.join(sorted(unknown))}")
    for name, value in values.items():
        if name == "tags":
            value = [t.strip() for t in (value or "").split(",") if t.strip()] if isinstance(value, str) else value
        setattr(base, name, value if value is not None else "")
    check(base, key)
    if selected and key != selected and store.exists(selected):
        if store.is_shipped(selected):
            raise CharacterError(f"{selected!r} ships with Inglenook and cannot be renamed; duplicate it instead")
        if store.exists(key):
            raise CharacterError(f"a character named {key!r} already exists")
        store.rename(selected, key)
    elif not selected and store.exists(key):
        raise CharacterError(f"a character named {key!r} already exists")
    store.save(key, base)
    return key
