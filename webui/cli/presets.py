"""``inglenook presets list|show NAME``: the sampling presets on disk, as the UI and ``run --preset`` see them."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from webui.presets import PresetStore, changed_values, describe


def add_parser(subparsers) -> None:
    presets = subparsers.add_parser("presets", help="list sampling presets, or show what one sets")
    psub = presets.add_subparsers(dest="presets_command", metavar="{list,show}", required=True)
    for name, text in (("list", "every preset and where it comes from"), ("show", "the values a preset sets")):
        p = psub.add_parser(name, help=text)
        if name == "show":
            p.add_argument("name", help="preset name (see 'presets list')")
        p.add_argument(
            "--user-data", type=Path, default=Path("user_data"), help="folder of your presets (default: ./user_data)"
        )
        p.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    store = PresetStore(args.user_data)
    if args.presets_command == "list":
        found = [{"name": n, "source": store.source(n)} for n in store.names()]
        if args.json:
            print(json.dumps(found, ensure_ascii=False, indent=2))
        else:
            width = max((len(p["name"]) for p in found), default=0)
            print("\n".join(f"{p['name']:<{width}}  {p['source']}" for p in found))
        return 0
    preset = store.load(args.name)
    if preset.warning:
        print(f"warning: {preset.warning}", file=sys.stderr)
    if args.json:
        print(json.dumps({"name": preset.name, "source": preset.source, "values": changed_values(preset.params)}))
    else:
        sys.stdout.write(describe(preset.params))
    return 0
