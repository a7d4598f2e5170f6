"""TavernAI / SillyTavern character cards in and out, and importing any character file people have.

A card is JSON: V1 (the fields at the top level), V2 (``spec: chara_card_v2``, fields under ``data``) or V3
(``spec: chara_card_v3``). In a PNG it sits base64-encoded in a ``tEXt`` chunk named ``chara`` (V3 also in
``ccv3``, which wins when both are there). We read the PNG's chunks ourselves, so a card is found without
decoding a single pixel, and a truncated or damaged file is named as such.

Everything is parsed and checked before anything is written: a bad file leaves the characters folder as it was.
Export writes a V2 card; the fields only Inglenook has (the text-generation-webui ``context``, the user's name)
travel in ``extensions.inglenook`` so that an exported card imports back identically.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import zlib
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw
from PIL.PngImagePlugin import PngInfo

from webui.characters.store import (
    MAX_PICTURE_BYTES,
    MAX_TEXT,
    Character,
    CharacterError,
    CharacterStore,
    check,
    from_dict,
    load_file,
    open_picture,
)
from webui.files import write_atomic

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CARD_KEYS = ("ccv3", "chara")  # preference order
MAX_CARD_JSON = MAX_TEXT * 2  # bytes of card JSON (before base64) we accept at all
OUR_EXTENSION = "inglenook"
# card field -> Character field, where the names differ
CARD_TO_OURS = {"first_mes": "greeting", "mes_example": "example_dialogue"}
CARD_TEXT = ("name", "description", "personality", "scenario", "first_mes", "mes_example", "creator_notes",
             "system_prompt", "post_history_instructions", "creator", "character_version")  # fmt: skip
CARD_LISTS = ("alternate_greetings", "tags")
V1_ALIASES = {"creatorcomment": "creator_notes"}  # SillyTavern's V1 name for creator notes


class CardError(CharacterError):
    """A card we cannot read: not a PNG, truncated, no card inside, not JSON, too big."""


# --------------------------------------------------------------------------- PNG chunks


def png_card_text(data: bytes, where: str = "PNG") -> bytes:
    """The base64 payload of the card in a PNG (``ccv3`` before ``chara``), read chunk by chunk."""
    if not data.startswith(PNG_SIGNATURE):
        raise CardError(f"{where}: not a PNG file")
    found: dict[str, bytes] = {}
    pos = len(PNG_SIGNATURE)
    while True:
        if pos + 8 > len(data):
            raise CardError(f"{where}: the PNG is truncated (it ends before its IEND chunk)")
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        end = pos + 12 + length
        if end > len(data):
            raise CardError(f"{where}: the PNG is truncated (chunk {kind.decode('latin-1')!r} is cut off)")
        body = data[pos + 8 : pos + 8 + length]
        if zlib.crc32(kind + body) != int.from_bytes(data[end - 4 : end], "big"):
            raise CardError(f"{where}: the PNG is damaged (bad checksum in chunk {kind.decode('latin-1')!r})")
        if kind in (b"tEXt", b"iTXt"):
            key, text = _text_chunk(kind, body, where)
            if key in CARD_KEYS:
                found[key] = text
        if kind == b"IEND":
            break
        pos = end
    for key in CARD_KEYS:
        if key in found:
            return found[key]
    raise CardError(f"{where}: this PNG holds no character card (no 'chara' or 'ccv3' text chunk)")


def _text_chunk(kind: bytes, body: bytes, where: str) -> tuple[str, bytes]:
    key, _, rest = body.partition(b"\0")
    name = key.decode("latin-1")
    if name not in CARD_KEYS:
        return name, b""
    if kind == b"iTXt":  # compression flag, method, language\0, translated keyword\0, text
        compressed = rest[:1] == b"\x01"
        text = rest[2:].split(b"\0", 2)[-1]
        if compressed:
            d = zlib.decompressobj()
            try:
                text = d.decompress(text, MAX_CARD_JSON * 2)
            except zlib.error as exc:
                raise CardError(f"{where}: the card chunk is damaged ({exc})") from None
            if d.unconsumed_tail:
                raise CardError(f"{where}: the card is more than {MAX_CARD_JSON // 2**20} MB of text")
        rest = text
    if len(rest) > MAX_CARD_JSON * 4 // 3 + 4:
        raise CardError(f"{where}: the card is more than {MAX_CARD_JSON // 2**20} MB of text")
    return name, rest


def decode_payload(payload: bytes, where: str = "card") -> Any:
    """base64 → JSON (SillyTavern writes base64; some tools write the JSON itself)."""
    text = payload.strip()
    if not text.startswith(b"{"):
        try:
            text = base64.b64decode(text, validate=False)
        except (binascii.Error, ValueError) as exc:
            raise CardError(f"{where}: the card is not valid base64 ({exc})") from None
    if len(text) > MAX_CARD_JSON:
        raise CardError(f"{where}: the card is more than {MAX_CARD_JSON // 2**20} MB of text")
    try:
        return json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CardError(f"{where}: the card's text is not JSON ({exc})") from None


# --------------------------------------------------------------------------- card JSON <-> Character


def is_card(data: Any) -> bool:
    return isinstance(data, dict) and (
        str(data.get("spec", "")).startswith("chara_card_") or "first_mes" in data or "mes_example" in data
    )


def card_version(data: dict) -> int:
    spec = str(data.get("spec", ""))
    return 3 if spec == "chara_card_v3" else 2 if spec == "chara_card_v2" else 1


def from_card(card: Any, where: str = "card") -> Character:
    """A character from card JSON (V1, V2 or V3)."""
    if not isinstance(card, dict):
        raise CardError(f"{where}: a card must be a JSON object")
    version = card_version(card)
    data = card.get("data") if version > 1 else card
    if not isinstance(data, dict):
        raise CardError(f"{where}: a V{version} card needs a 'data' object")
    data = dict(data)
    for old, new in V1_ALIASES.items():
        if old in data and not data.get(new):
            data[new] = data.pop(old)
    fields: dict[str, Any] = {}
    for key in CARD_TEXT:
        if data.get(key) is not None:
            fields[CARD_TO_OURS.get(key, key)] = data.pop(key)
        else:
            data.pop(key, None)
    for key in CARD_LISTS:
        value = data.pop(key, None)
        if value is not None:
            fields[key] = value
    fields["character_book"] = data.pop("character_book", None)
    extensions = data.pop("extensions", None) or {}
    if not isinstance(extensions, dict):
        raise CardError(f"{where}: 'extensions' must be a JSON object")
    extensions = dict(extensions)
    ours = extensions.pop(OUR_EXTENSION, None)
    fields["extensions"] = extensions
    fields["extra"] = data  # every other card field (V3 assets, nickname, dates…), kept for export
    if isinstance(ours, dict):
        fields["context"] = ours.get("context", "")
        fields["user_name"] = ours.get("user_name", "")
        if ours.get("description_is_context"):
            fields["description"] = ""
    return from_dict(fields, where)


def to_card(character: Character) -> dict:
    """A V2 card (with V1 fields at the top level too, as SillyTavern writes them)."""
    check(character)
    description = character.description or character.context
    ours = {k: v for k, v in (("context", character.context), ("user_name", character.user_name)) if v}
    if not character.description and character.context:
        ours["description_is_context"] = True
    extensions = dict(character.extensions)
    if ours:
        extensions[OUR_EXTENSION] = ours
    data: dict[str, Any] = {
        "name": character.name,
        "description": description,
        "personality": character.personality,
        "scenario": character.scenario,
        "first_mes": character.greeting,
        "mes_example": character.example_dialogue,
        "creator_notes": character.creator_notes,
        "system_prompt": character.system_prompt,
        "post_history_instructions": character.post_history_instructions,
        "alternate_greetings": list(character.alternate_greetings),
        "tags": list(character.tags),
        "creator": character.creator,
        "character_version": character.character_version,
        "extensions": extensions,
    }
    if character.character_book is not None:
        data["character_book"] = character.character_book
    for key, value in character.extra.items():
        data.setdefault(key, value)
    v1 = {k: data[k] for k in ("name", "description", "personality", "scenario", "first_mes", "mes_example")}
    return {**v1, "spec": "chara_card_v2", "spec_version": "2.0", "data": data}


# --------------------------------------------------------------------------- files


def read_card_png(data: bytes, where: str = "PNG") -> Character:
    return from_card(decode_payload(png_card_text(data, where), where), where)


def card_png(character: Character, picture: bytes | None) -> bytes:
    """The character as a V2 PNG card: its picture (or a plain placeholder) with the card in a ``chara`` chunk."""
    payload = base64.b64encode(json.dumps(to_card(character), ensure_ascii=False).encode("utf-8")).decode("ascii")
    image = open_picture(picture, "picture") if picture else placeholder_picture(character.name)
    image = image.convert("RGBA") if image.mode in ("RGBA", "LA", "P", "PA") else image.convert("RGB")
    info = PngInfo()
    info.add_text("chara", payload)
    out = io.BytesIO()
    image.save(out, "PNG", pnginfo=info)
    return out.getvalue()


def placeholder_picture(name: str) -> Image.Image:
    """A plain picture with the character's initial, for cards of characters that have none."""
    image = Image.new("RGB", (400, 600), (58, 74, 96))
    draw = ImageDraw.Draw(image)
    draw.ellipse((100, 150, 300, 350), fill=(222, 184, 135))
    draw.text((185, 230), (name.strip()[:1] or "?").upper(), fill=(58, 74, 96), font_size=60)
    return image


def read_any(path: Path) -> tuple[Character, bytes | None]:
    """A character and its picture from any file people have: a PNG card, a JSON card, a TGW YAML/JSON."""
    where = path.name
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise CardError(f"{where}: cannot be read ({exc.strerror or exc})") from None
    suffix = path.suffix.lower()
    if suffix == ".png":
        if size > MAX_PICTURE_BYTES + MAX_CARD_JSON * 2:
            raise CardError(f"{where}: {size / 2**20:.0f} MB is too big for a character card")
        data = path.read_bytes()
        character = read_card_png(data, where)
        open_picture(data, where)  # the picture must be safe to decode before anything is written
        return character, data
    if suffix == ".json":
        if size > MAX_CARD_JSON:
            raise CardError(f"{where}: the card is more than {MAX_CARD_JSON // 2**20} MB of text")
        card = decode_payload(path.read_bytes(), where)
        character = from_card(card, where) if is_card(card) else from_dict(card, where)
        return character, _sibling_picture(path)
    if suffix in (".yaml", ".yml"):
        return load_file(path), _sibling_picture(path)
    raise CardError(f"{where}: expected a .png card, a .json card or a text-generation-webui .yaml/.json character")


def _sibling_picture(path: Path) -> bytes | None:
    """text-generation-webui keeps ``NAME.png`` next to ``NAME.yaml``."""
    for ext in (".png", ".jpg", ".jpeg", ".webp"):
        candidate = path.with_suffix(ext)
        if candidate.is_file():
            data = candidate.read_bytes()
            open_picture(data, candidate.name)
            return data
    return None


def import_character(store: CharacterStore, path: Path, key: str | None = None) -> str:
    """Import ``path`` into ``store`` under ``key`` (default: a free name made from the character's name).

    Everything is read and checked first; only then are the character and its picture written.
    """
    character, picture = read_any(Path(path))
    key = key or store.unique_key(character.name)
    store.save(key, character, overwrite=False)
    if picture:
        store.set_picture(key, picture)
    return key


def export_character(store: CharacterStore, key: str, out: Path) -> Path:
    """Write ``key`` as a V2 PNG card to ``out`` (atomically)."""
    character = store.load(key)
    picture = store.picture(key)
    data = card_png(character, picture.read_bytes() if picture else None)
    out = Path(out)
    write_atomic(out, data)
    return out
