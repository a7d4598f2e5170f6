"""``inglenook remotes add|list|remove``: the OpenAI-compatible servers whose models Inglenook lists as
``NAME/model-id`` (the only way a remote URL gets into Inglenook: it never comes from a request)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from backends.remote import KINDS
from webui.models.remotes import Remotes, read_key_file


def add_parser(subparsers) -> None:
    remotes = subparsers.add_parser("remotes", help="OpenAI-compatible servers whose models appear as NAME/model-id")
    rsub = remotes.add_subparsers(dest="remotes_command", metavar="{add,list,remove}", required=True)
    add = rsub.add_parser("add", help="add (or replace) a remote")
    add.add_argument("name", help="a short name: its models are listed as NAME/model-id")
    add.add_argument("url", help="the server's base URL, e.g. http://gpu-box:8000 (with or without /v1)")
    add.add_argument("--api-key-file", type=Path, default=None,
                     help="a file whose first line is the server's API key (copied into user_data, 0600)")  # fmt: skip
    add.add_argument("--kind", choices=KINDS, default="auto",
                     help="which sampling fields the server takes (auto: guessed from its /v1/models)")  # fmt: skip
    add.add_argument("--completions-only", action="store_true",
                     help="no chat template on the server: render prompts here, use its /v1/completions")  # fmt: skip
    lst = rsub.add_parser("list", help="the remotes, whether each answers, and the models it serves")
    lst.add_argument("--json", action="store_true", help="print JSON")
    rm = rsub.add_parser("remove", help="forget a remote and its key")
    rm.add_argument("name")
    for p in (add, lst, rm):
        p.add_argument("--user-data", type=Path, default=Path("user_data"),
                       help="folder of your settings (default: ./user_data)")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    remotes = Remotes(args.user_data)
    if args.remotes_command == "add":
        key = read_key_file(args.api_key_file) if args.api_key_file else None
        remote = remotes.add(args.name, args.url, key, args.kind, chat=not args.completions_only)
        listing = remotes.model_ids(remote, fresh=True)
        print(f"added remote {remote.name} ({remote.url}{', with an API key' if key else ''})")
        if listing.error:
            print(f"warning: it does not answer now: {listing.error}")
        else:
            print(f"its models: {', '.join(f'{remote.name}/{i}' for i in listing.ids) or 'none'}")
        return 0
    if args.remotes_command == "remove":
        if not remotes.remove(args.name):
            print(f"error: no remote named {args.name!r}")
            return 1
        print(f"removed remote {args.name}")
        return 0
    rows = remotes.status()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no remotes (add one: inglenook remotes add NAME URL [--api-key-file PATH])")
    for row in rows:
        key = "key" if row["api_key"] else "no key"
        state = f"unreachable: {row['error']}" if row["error"] else f"{len(row['models'])} model(s)"
        print(f"{row['name']}  {row['url']}  ({row['kind']}, {'chat' if row['chat'] else 'completions only'}, {key})"
              f"  {state}")  # fmt: skip
        for model_id in row["models"]:
            print(f"  {row['name']}/{model_id}")
    return 0
