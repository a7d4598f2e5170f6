"""``inglenook characters list|import FILE|export NAME OUT.png``: the characters folder from the terminal."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from webui.characters.cards import export_character, import_character
from webui.characters.store import CharacterStore


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("characters", help="list, import (PNG/JSON cards, text-generation-webui files) and export")
    p.add_argument(
        "--user-data", type=Path, default=Path("user_data"), help="folder holding characters/ (default: ./user_data)"
    )
    csub = p.add_subparsers(dest="characters_command", metavar="{list,import,export}", required=True)
    lst = csub.add_parser("list", help="the characters: yours and the shipped ones")
    lst.add_argument("--json", action="store_true", help="print JSON")
    imp = csub.add_parser("import", help="import a SillyTavern/TavernAI card (.png/.json) or a TGW character")
    imp.add_argument("file", type=Path)
    imp.add_argument("--name", default=None, help="file name to store it under (default: from the character)")
    exp = csub.add_parser("export", help="write a character as a V2 PNG card")
    exp.add_argument("name")
    exp.add_argument("out", type=Path)


def run(args: argparse.Namespace) -> int:
    store = CharacterStore(args.user_data / "characters")
    if args.characters_command == "list":
        entries = store.list()
        if args.json:
            found = [{"key": e.key, "name": e.name, "shipped": e.shipped, "picture": str(e.picture or "")}
                     for e in entries]  # fmt: skip
            print(json.dumps(found, ensure_ascii=False, indent=2))
        else:
            width = max((len(e.key) for e in entries), default=0)
            for e in entries:
                print(f"{e.key:<{width}}  {e.name}{'  (shipped)' if e.shipped else ''}")
        return 0
    if args.characters_command == "import":
        key = import_character(store, args.file, args.name)
        print(f"imported {args.file.name} as {key!r} into {store.folder}")
        return 0
    out = export_character(store, args.name, args.out)
    print(f"wrote {out}")
    return 0
